//! `deploy devnet --tls`: a throwaway certificate authority and one certificate per node,
//! kept under `<root>/devnet/tls/`, so that a devnet exercises HTTPS end to end (API, swarm,
//! the CLI's node commands, soak) without an operator-supplied PKI.
//!
//! - `ca.crt` / `ca.key`: the CA, made on first use and kept (so re-deploys and scaling up
//!   sign new nodes with the same CA every running node already trusts).
//! - `node-X.crt` / `node-X.key`: a node's certificate for `127.0.0.1`, `::1`, `localhost`
//!   and its name, usable as a server and as a client certificate, made when missing.
//!
//! Keys are written 0600 and the folder is 0700. A CA that has to be made anew (its files
//! were deleted) takes the old node certificates with it: they would not chain to it.
//! The CLI finds `ca.crt` itself (`--node NAME`, backups, soak): nothing to pass.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dwbase_proto::fsutil::atomic_write;
use dwbase_proto::{Group, Paths};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The folder of a devnet's certificates: `<root>/devnet/tls`.
pub fn dir(paths: &Paths) -> PathBuf {
    paths.group_dir(Group::Devnet).join("tls")
}

/// The files of one node, and of the CA, in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The CA certificate (what clients and peers trust).
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Files {
    /// The files of node `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// The CA's parameters. They are the same every time, so that the CA's certificate can be
/// signed again from its key alone (the issuer name and key identifier of a node
/// certificate come from these and the key).
fn ca_params(dir: &Path) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::OrganizationName, "dwbase devnet");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("dwbase devnet CA ({})", dir.display()));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write_key(path: &Path, pem: &str) -> Result<()> {
    atomic_write(path, pem.as_bytes(), 0o600).with_context(|| format!("writing {}", path.display()))
}

fn write_cert(path: &Path, pem: &str) -> Result<()> {
    atomic_write(path, pem.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

/// The devnet's CA: read from `dir`, or made there (removing node certificates it did not
/// sign).
fn ca(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.is_file() && key.is_file() {
        let pem =
            std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
        let key_pair = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM private key", key.display()))?;
        return Ok(Issuer::new(ca_params(dir)?, key_pair));
    }
    // A new CA: node certificates of an older one would not chain to it.
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("crt" | "key")) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let key_pair = KeyPair::generate()?;
    let cert = ca_params(dir)?.self_signed(&key_pair)?;
    write_key(&key, &key_pair.serialize_pem())?;
    write_cert(&crt, &cert.pem())?;
    tracing::info!(ca = %crt.display(), "made a certificate authority for the devnet's TLS");
    Ok(Issuer::new(ca_params(dir)?, key_pair))
}

/// Makes sure `dir` holds the CA and node `name`'s certificate and key.
pub fn ensure(dir: &Path, name: &str) -> Result<Files> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    let issuer = ca(dir)?;
    let files = Files::new(dir, name);
    if files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    let sans =
        vec!["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned(), name.to_owned()];
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::OrganizationName, "dwbase devnet");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key_pair = KeyPair::generate()?;
    let cert = params.signed_by(&key_pair, &issuer)?;
    write_key(&files.key, &key_pair.serialize_pem())?;
    write_cert(&files.cert, &cert.pem())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifies `leaf` against `ca` with rustls' own verifier, as a node's peers do.
    fn chains(ca: &Path, leaf: &Path, name: &str) -> Result<(), String> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let chain: Vec<CertificateDer> =
            CertificateDer::pem_file_iter(leaf).unwrap().map(|c| c.unwrap()).collect();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn node_certificates_chain_to_the_kept_ca_and_keys_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let a = ensure(&dir, "node-a").unwrap();
        let ca_before = std::fs::read(&a.ca).unwrap();
        // A second node later (scale up) is signed by the same CA, which is not remade.
        let b = ensure(&dir, "node-b").unwrap();
        assert_eq!(std::fs::read(&b.ca).unwrap(), ca_before);
        for (files, name) in [(&a, "node-a"), (&b, "node-b")] {
            for host in ["127.0.0.1", "localhost", name] {
                chains(&files.ca, &files.cert, host).unwrap_or_else(|e| panic!("{host}: {e}"));
            }
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", files.key.display());
        }
        assert!(chains(&a.ca, &a.cert, "example.com").is_err());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // An existing certificate is kept as it is.
        let cert_a = std::fs::read(&a.cert).unwrap();
        ensure(&dir, "node-a").unwrap();
        assert_eq!(std::fs::read(&a.cert).unwrap(), cert_a);
    }

    #[test]
    fn a_lost_ca_is_remade_and_takes_the_old_node_certificates_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let a = ensure(&dir, "node-a").unwrap();
        ensure(&dir, "node-b").unwrap();
        let old_ca = tmp.path().join("old-ca.crt");
        std::fs::copy(&a.ca, &old_ca).unwrap();
        std::fs::remove_file(dir.join("ca.key")).unwrap();
        let a2 = ensure(&dir, "node-a").unwrap();
        chains(&a2.ca, &a2.cert, "127.0.0.1").unwrap();
        assert!(chains(&old_ca, &a2.cert, "127.0.0.1").is_err(), "node-a was re-issued");
        assert!(!Files::new(&dir, "node-b").cert.exists(), "node-b's stale certificate is gone");
    }

    #[test]
    fn a_corrupt_ca_key_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        ensure(&dir, "node-a").unwrap();
        std::fs::write(dir.join("ca.key"), "not a key").unwrap();
        let e = format!("{:#}", ensure(&dir, "node-b").unwrap_err());
        assert!(e.contains("ca.key") && e.contains("not a PEM private key"), "{e}");
    }
}
