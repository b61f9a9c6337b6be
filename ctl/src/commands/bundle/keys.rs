//! minisign keys: generating a pair, loading a secret key (asking for its password only when
//! it is encrypted), loading a public key from a file or from its base64 text.
//!
//! The files are minisign's own formats, so `minisign -G` keys work here and ours work with
//! `minisign -S` / `minisign -V`.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox};

/// The environment variable holding the secret key's password (for CI; people get a prompt).
pub const PASSWORD_ENV: &str = "DWBASE_BUNDLE_PASSWORD";

/// The key id as minisign prints it: 16 uppercase hex digits of the little-endian key number.
pub fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct Generated {
    /// The secret key file (mode 0600).
    pub secret: PathBuf,
    /// The public key file.
    pub public: PathBuf,
    /// The key id.
    pub id: String,
    /// Whether the secret key is password-protected.
    pub encrypted: bool,
}

/// Generates a key pair and writes both files; refuses to overwrite either unless `force`.
/// The password comes from [`PASSWORD_ENV`] or a prompt on the terminal, unless `unencrypted`.
pub fn generate(secret: &Path, public: &Path, unencrypted: bool, force: bool) -> Result<Generated> {
    if !force {
        for p in [secret, public] {
            if p.exists() {
                bail!("{} exists; pass --force to replace it (and every bundle signed with the old key stops verifying with the new one)", p.display());
            }
        }
    }
    let pair = if unencrypted {
        KeyPair::generate_unencrypted_keypair()
    } else {
        let password = new_password(secret)?;
        KeyPair::generate_encrypted_keypair(Some(password))
    }
    .map_err(|e| anyhow::anyhow!("generating a key pair: {e}"))?;
    let id = key_id(pair.pk.keynum());
    let sk_text = pair
        .sk
        .to_box(Some(&format!("dwbase bundle secret key {id}")))
        .map_err(|e| anyhow::anyhow!("encoding the secret key: {e}"))?
        .into_string();
    let pk_text = pair
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?
        .into_string();
    write_new(secret, sk_text.as_bytes(), 0o600, force)?;
    write_new(public, pk_text.as_bytes(), 0o644, force)?;
    Ok(Generated {
        secret: secret.to_owned(),
        public: public.to_owned(),
        id,
        encrypted: !unencrypted,
    })
}

/// Writes `bytes` to `path` with `mode` from the first byte on (a secret key is never
/// readable by others, not even for a moment), replacing an existing file only if `force`.
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
        }
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(mode);
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn new_password(secret: &Path) -> Result<String> {
    if let Some(pw) = env_password() {
        return Ok(pw);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "a password for {} is needed: set {PASSWORD_ENV}, run on a terminal, or pass --unencrypted (CI keys kept in a secret store)",
            secret.display()
        );
    }
    let a = rpassword::prompt_password(format!("password for {}: ", secret.display()))
        .context("reading the password")?;
    let b =
        rpassword::prompt_password("the same password again: ").context("reading the password")?;
    if a != b {
        bail!("the two passwords differ; nothing written");
    }
    if a.is_empty() {
        bail!("an empty password; pass --unencrypted for a key without one");
    }
    Ok(a)
}

fn env_password() -> Option<String> {
    std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty())
}

/// Loads a secret key, decrypting it with [`PASSWORD_ENV`] or a prompt when it is encrypted.
/// Returns the key and its public half (for a check after signing).
pub fn load_secret(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret key {}", path.display()))?;
    let encrypted = secret_key_encrypted(&text).with_context(|| {
        format!(
            "{} is not a minisign secret key (from `dwbase bundle keygen` or `minisign -G`)",
            path.display()
        )
    })?;
    let bx = SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("reading the secret key {}: {e}", path.display()))?;
    if !encrypted {
        let bx = SecretKeyBox::from_string(&with_checksum(&text)?)
            .map_err(|e| anyhow::anyhow!("reading the secret key {}: {e}", path.display()))?;
        return SecretKey::from_unencrypted_box(bx)
            .map_err(|e| anyhow::anyhow!("reading the secret key {}: {e}", path.display()));
    }
    let password = match env_password() {
        Some(pw) => pw,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("password for {}: ", path.display()))
                .context("reading the password")?
        }
        None => bail!(
            "the secret key {} is encrypted: set {PASSWORD_ENV} or run on a terminal",
            path.display()
        ),
    };
    SecretKey::from_box(bx, Some(password))
        .map_err(|e| anyhow::anyhow!("decrypting the secret key {}: {e}", path.display()))
}

/// Whether a minisign secret key file's key is password-protected (its KDF algorithm, bytes
/// 2..4 of the decoded key, is not zero). An error if the text is not a secret key at all.
pub fn secret_key_encrypted(text: &str) -> Result<bool> {
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or_default();
    if !comment.starts_with("untrusted comment:") {
        bail!("no `untrusted comment:` line");
    }
    let b64 = lines.next().unwrap_or_default().trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("the key line is not base64")?;
    if raw.len() != SK_LEN || &raw[..2] != b"Ed" {
        bail!("the key line is not an Ed25519 secret key ({} bytes)", raw.len());
    }
    Ok(raw[2..4] != [0, 0])
}

/// Layout of a decoded secret key: sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) opslimit(8)
/// memlimit(8) keynum(8) sk(64) chk(32).
const SK_LEN: usize = 158;
const KEYNUM_AT: usize = 54;
const CHK_AT: usize = 126;

/// The key text with its checksum filled in when it is all zeros: Debian's minisign (0.11)
/// writes unencrypted keys (`minisign -G -W`) that way and skips the check for them, while the
/// minisign crate insists on it. The checksum is BLAKE2b-256 of sig_alg ‖ keynum ‖ sk.
fn with_checksum(text: &str) -> Result<String> {
    use base64::engine::general_purpose::STANDARD;
    use blake2::digest::consts::U32;
    use blake2::Digest as _;
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or_default();
    let mut raw = STANDARD
        .decode(lines.next().unwrap_or_default().trim())
        .context("the key line is not base64")?;
    if raw.len() != SK_LEN || raw[CHK_AT..].iter().any(|&b| b != 0) {
        return Ok(text.to_owned());
    }
    let mut h = blake2::Blake2b::<U32>::new();
    h.update(&raw[..2]);
    h.update(&raw[KEYNUM_AT..CHK_AT]);
    raw[CHK_AT..].copy_from_slice(&h.finalize());
    Ok(format!("{comment}\n{}\n", STANDARD.encode(raw)))
}

/// Loads a public key from a file (`.pub` as minisign writes it) or, when `key` is not a file,
/// from its base64 text (the second line of the file, as `minisign -P` takes it).
pub fn load_public(key: &str) -> Result<PublicKey> {
    let path = Path::new(key);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key {}", path.display()))?;
        return PublicKey::from_box(
            PublicKeyBox::from_string(&text)
                .map_err(|e| anyhow::anyhow!("reading the public key {}: {e}", path.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{} is not a minisign public key: {e}", path.display()));
    }
    PublicKey::from_base64(key.trim()).map_err(|_| {
        anyhow::anyhow!(
            "--pubkey {key:?} is neither a file nor a minisign public key (56 base64 characters, the second line of the .pub file)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_minisign_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = (dir.path().join("k.key"), dir.path().join("k.pub"));
        let g = generate(&sk, &pk, true, false).unwrap();
        assert!(!g.encrypted);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&sk).unwrap();
        assert!(!secret_key_encrypted(&text).unwrap());
        load_secret(&sk).unwrap();
        let pub_text = std::fs::read_to_string(&pk).unwrap();
        assert!(pub_text.contains(&g.id), "{pub_text}");
        let b64 = pub_text.lines().nth(1).unwrap();
        assert_eq!(key_id(load_public(b64).unwrap().keynum()), g.id);
        assert_eq!(key_id(load_public(pk.to_str().unwrap()).unwrap().keynum()), g.id);

        let err = generate(&sk, &pk, true, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        let g2 = generate(&sk, &pk, true, true).unwrap();
        assert_ne!(g2.id, g.id);
    }

    #[test]
    fn not_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("notes.txt");
        std::fs::write(&f, "hello\nworld\n").unwrap();
        let err = format!("{:#}", load_secret(&f).unwrap_err());
        assert!(err.contains("notes.txt") && err.contains("not a minisign secret key"), "{err}");
        let err = format!("{:#}", load_public("nonsense").unwrap_err());
        assert!(err.contains("neither a file nor"), "{err}");
    }
}
