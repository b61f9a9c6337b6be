//! TLS: the node's HTTPS listener (rustls, ring; no OpenSSL) and the HTTPS clients of the swarm
//! and the CLI.
//!
//! Server side, [`TlsServer`] holds the rustls configuration built from `[node.tls]` behind an
//! [`ArcSwap`]: every new connection takes the current one, and [`TlsServer::reload`] (SIGHUP)
//! builds a new one from the files and swaps it in. Connections already open keep the
//! certificate they were made with; a reload that fails (a half-written secret, a key that
//! does not match) keeps the previous configuration and says why, so a rotation never takes
//! the node down. A plain-HTTP request on the TLS port gets a short `400` naming `https://`
//! instead of a handshake error the client cannot read. The handshake runs in each
//! connection's task of [`crate::connections::serve`], under the header timeout.
//!
//! Client side, [`ClientTls`] turns a CA file (else the system's roots) and an optional client
//! certificate into a [`reqwest::ClientBuilder`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP client gets on the TLS port (then the connection is closed).
const PLAIN_HTTP_ANSWER: &str = "{\"error\":\"tls_required\",\"message\":\"this port speaks \
                                 HTTPS: use https:// (and --cacert with a private CA)\"}";

/// A TLS file that cannot be used, named with what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        /// Which setting named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable PEM block of the expected kind, or a broken one.
    #[error("{key} {}: {message}", path.display())]
    Pem {
        /// Which setting named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key does not belong to the certificate, or rustls refuses the pair.
    #[error("{key} {} does not fit the certificate in {}: {message}", key_path.display(), cert_path.display())]
    Mismatch {
        /// Which setting named the key.
        key: &'static str,
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// rustls's reason.
        message: String,
    },
    /// The CA file holds certificates rustls cannot use as trust anchors.
    #[error("{key} {}: {message}", path.display())]
    Ca {
        /// Which setting named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_owned(), source })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let bad = |message: String| TlsError::Pem { key, path: path.to_owned(), message };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no \"-----BEGIN CERTIFICATE-----\" block".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (\"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \
                 \"EC PRIVATE KEY\" block)"
                    .into()
            }
            e => format!("not a PEM private key ({e})"),
        },
    })
}

/// A certificate chain and its key, checked to belong together.
fn load_certified_key(
    (cert_key, cert_path): (&'static str, &Path),
    (key_key, key_path): (&'static str, &Path),
) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert_key, cert_path)?;
    let key = load_key(key_key, key_path)?;
    let provider = rustls::crypto::ring::default_provider();
    let mismatch = |message: String| TlsError::Mismatch {
        key: key_key,
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        message,
    };
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            mismatch("the key's public half is not the certificate's".into())
        }
        e => mismatch(e.to_string()),
    })?;
    Ok(certified)
}

fn load_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            key,
            path: path.to_owned(),
            message: format!("not usable as a CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The node's TLS files, and the rustls configuration built from them.
pub struct TlsServer {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    current: ArcSwap<ServerConfig>,
    loaded_at: Mutex<String>,
    reloads: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish_non_exhaustive()
    }
}

/// What `/health` shows of TLS.
#[derive(Debug, Clone)]
pub struct TlsStatus {
    /// When the configuration in use was read (RFC 3339).
    pub loaded_at: String,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Whether clients must present a certificate.
    pub client_auth: bool,
    /// Why the last reload failed, when it did (the previous certificate is still served).
    pub last_error: Option<String>,
    /// The certificate file.
    pub cert_file: PathBuf,
}

impl TlsServer {
    /// Reads `[node.tls]`'s files: `None` when TLS is not configured, an error naming the file
    /// when one cannot be read, holds no certificate or key, or the key does not match.
    pub fn from_config(cfg: &TlsConfig) -> Result<Option<TlsServer>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&cfg.cert_file, &cfg.key_file) else {
            return Ok(None);
        };
        let server = TlsServer {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: cfg.client_ca_file.clone(),
            current: ArcSwap::from_pointee(build(
                cert_file,
                key_file,
                cfg.client_ca_file.as_deref(),
            )?),
            loaded_at: Mutex::new(crate::model::now_rfc3339()),
            reloads: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        Ok(Some(server))
    }

    /// Reads the files again and, when they make a valid configuration, serves new
    /// connections with it. On error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build(&self.cert_file, &self.key_file, self.client_ca_file.as_deref()) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                *lock(&self.loaded_at) = crate::model::now_rfc3339();
                *lock(&self.last_error) = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                *lock(&self.last_error) = Some(e.to_string());
                tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
                Err(e)
            }
        }
    }

    /// Whether clients must present a certificate.
    pub fn client_auth(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// For `/health`.
    pub fn status(&self) -> TlsStatus {
        TlsStatus {
            loaded_at: lock(&self.loaded_at).clone(),
            reloads: self.reloads.load(Ordering::Relaxed),
            client_auth: self.client_auth(),
            last_error: lock(&self.last_error).clone(),
            cert_file: self.cert_file.clone(),
        }
    }

    /// Completes the TLS handshake of an accepted connection within `timeout`, with the
    /// configuration in use now. A client that speaks plain HTTP gets a `400` saying to use
    /// `https://` and is closed.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, AcceptError> {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let handshake = async {
            let mut first = [0u8; 1];
            let n = stream.peek(&mut first).await.map_err(AcceptError::Io)?;
            if n == 0 {
                return Err(AcceptError::Closed);
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                answer_plain_http(stream).await;
                return Err(AcceptError::PlainHttp);
            }
            acceptor.accept(stream).await.map_err(AcceptError::Handshake)
        };
        tokio::time::timeout(timeout, handshake).await.unwrap_or(Err(AcceptError::Timeout))
    }
}

/// Checks every TLS file a configuration names (`[node.tls]`, `[node.swarm]`'s CA and client
/// certificate), for a start-up error that names the file before anything is opened.
pub fn check_files(config: &crate::config::Config) -> Result<(), TlsError> {
    TlsServer::from_config(&config.node.tls)?;
    let _ = ClientTls::swarm(&config.node.swarm).apply(reqwest::Client::builder(), SWARM_KEYS)?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a connection on the TLS port was not served.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client sent a plain-HTTP request (it got a 400).
    #[error("the client spoke plain HTTP on the TLS port")]
    PlainHttp,
    /// The handshake failed (unknown CA, no client certificate, bad protocol...).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The client closed before sending anything.
    #[error("the client closed the connection before the handshake")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the connection: {0}")]
    Io(std::io::Error),
}

async fn answer_plain_http(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{PLAIN_HTTP_ANSWER}",
        PLAIN_HTTP_ANSWER.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn build(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let certified =
        load_certified_key(("node.tls.cert_file", cert_file), ("node.tls.key_file", key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let key = "node.tls.client_ca_file";
            let roots = load_roots(key, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Ca { key, path: ca.to_owned(), message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How an HTTPS client verifies servers and whether it shows a certificate of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust only the CA certificate(s) in this PEM file; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for servers that require one, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// The settings [`ClientTls::swarm`] comes from, for error messages.
pub const SWARM_KEYS: (&str, &str, &str) =
    ("node.swarm.ca_file", "node.swarm.cert_file", "node.swarm.key_file");

impl ClientTls {
    /// What the swarm's pushers use: `[node.swarm] ca_file`, `cert_file`, `key_file`.
    pub fn swarm(cfg: &crate::config::SwarmConfig) -> ClientTls {
        ClientTls {
            ca_file: cfg.ca_file.clone(),
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
        }
    }

    /// The names of the settings, for error messages: (CA, certificate, key).
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        keys: (&'static str, &'static str, &'static str),
    ) -> Result<reqwest::ClientBuilder, TlsError> {
        let (ca_key, cert_key, key_key) = keys;
        let mut builder = builder.use_rustls_tls();
        if let Some(ca) = &self.ca_file {
            // Checked here so that a bad file is named; reqwest takes them as DER.
            let certs = load_certs(ca_key, ca)?;
            load_roots(ca_key, ca)?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                let cert = reqwest::Certificate::from_der(&cert).map_err(|e| TlsError::Ca {
                    key: ca_key,
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                load_certified_key((cert_key, cert), (key_key, key))?;
                let mut pem = read(cert_key, cert)?;
                pem.push(b'\n');
                pem.extend(read(key_key, key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| TlsError::Pem {
                    key: key_key,
                    path: key.clone(),
                    message: e.to_string(),
                })?;
                builder = builder.identity(identity);
            }
            (Some(cert), None) => {
                return Err(TlsError::Pem {
                    key: cert_key,
                    path: cert.clone(),
                    message: format!("a client certificate needs its key ({key_key})"),
                })
            }
            (None, Some(key)) => {
                return Err(TlsError::Pem {
                    key: key_key,
                    path: key.clone(),
                    message: format!("a client key needs its certificate ({cert_key})"),
                })
            }
            (None, None) => {}
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pair(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (
            write(dir, &format!("{prefix}.crt"), &cert.cert.pem()),
            write(dir, &format!("{prefix}.key"), &cert.signing_key.serialize_pem()),
        )
    }

    fn cfg(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: Some(cert.to_owned()),
            key_file: Some(key.to_owned()),
            client_ca_file: None,
        }
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        assert!(TlsServer::from_config(&TlsConfig::default()).unwrap().is_none());
        assert!(TlsServer::from_config(&cfg(&cert, &key)).unwrap().is_some());

        let missing = dir.path().join("missing.crt");
        let e = TlsServer::from_config(&cfg(&missing, &key)).unwrap_err().to_string();
        assert!(e.contains("node.tls.cert_file") && e.contains("missing.crt"), "{e}");

        let e = TlsServer::from_config(&cfg(&cert, &other_key)).unwrap_err().to_string();
        assert!(e.contains("b.key") && e.contains("a.crt") && e.contains("does not fit"), "{e}");

        let e = TlsServer::from_config(&cfg(&key, &key)).unwrap_err().to_string();
        assert!(e.contains("a.key") && e.contains("BEGIN CERTIFICATE"), "{e}");
        let e = TlsServer::from_config(&cfg(&cert, &cert)).unwrap_err().to_string();
        assert!(e.contains("node.tls.key_file") && e.contains("no private key"), "{e}");

        let mut with_ca = cfg(&cert, &key);
        with_ca.client_ca_file = Some(key.clone());
        let e = TlsServer::from_config(&with_ca).unwrap_err().to_string();
        assert!(e.contains("node.tls.client_ca_file") && e.contains("a.key"), "{e}");
    }

    #[test]
    fn a_failed_reload_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let tls = TlsServer::from_config(&cfg(&cert, &key)).unwrap().unwrap();
        let before = tls.current.load_full();
        std::fs::write(&key, "half a secret").unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("a.key"), "{e}");
        assert!(Arc::ptr_eq(&before, &tls.current.load_full()));
        assert_eq!(tls.status().last_error.as_deref(), Some(e.as_str()));
        let (_, _) = pair(dir.path(), "a");
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.current.load_full()));
        let status = tls.status();
        assert_eq!((status.reloads, status.last_error), (1, None));
    }

    #[test]
    fn client_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "c");
        let keys = ("--cacert", "--cert", "--key");
        let ok = ClientTls {
            ca_file: Some(cert.clone()),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
        };
        ok.apply(reqwest::Client::builder(), keys).unwrap().build().unwrap();
        let e = ClientTls { ca_file: Some(key.clone()), ..Default::default() }
            .apply(reqwest::Client::builder(), keys)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--cacert") && e.contains("c.key"), "{e}");
        let e = ClientTls { cert_file: Some(cert), ..Default::default() }
            .apply(reqwest::Client::builder(), keys)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--key"), "{e}");
    }
}
