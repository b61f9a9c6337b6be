//! Encryption at rest, with the original DWBase's configuration, key variables and scheme.
//!
//! `[node.storage] encryption_enabled = true, key_id = "K"` makes the store encrypt every atom
//! body and world record. The 32-byte master key is read, as 64 hex digits, from
//! `DWBASE_KEY_<K upper-cased, '-' → '_'>` ([`MasterKey::from_env`]); it is never written
//! anywhere. Each value gets a fresh random 96-bit nonce, its own data key
//! `sha256(master ‖ key_id ‖ nonce)` (the original's derivation) and AES-256-GCM; the sled key
//! of the value is the associated data, so a value moved under another key does not decrypt.
//!
//! Stored form ([`Cipher::seal`]): `DWE1` ‖ key id length (u8) ‖ key id ‖ nonce (12) ‖
//! ciphertext with its 16-byte tag. The key id is in clear so that a store names the key it
//! needs; nothing else is.
//!
//! The original's own form (`ENC1` then a bincode blob, no associated data) is read by
//! [`decrypt_parts`] for migration ([`crate::legacy`]).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

use crate::config::StorageConfig;

/// First bytes of a value this build encrypted.
pub const MAGIC: &[u8] = b"DWE1";
/// Length of a nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag at the end of a ciphertext.
pub const TAG_LEN: usize = 16;

/// Why a master key could not be used. Each variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The variable is not set.
    #[error(
        "encryption at rest needs the master key of key_id {key_id:?} in the environment \
         variable {var} (64 hex digits = 32 bytes, e.g. {var}=$(openssl rand -hex 32) for a new \
         store); it is not set"
    )]
    Missing {
        /// The variable.
        var: String,
        /// The key id.
        key_id: String,
    },
    /// The value is not hex.
    #[error("{var} is not hex: {message} (expected 64 hex digits = a 32-byte AES-256 key)")]
    NotHex {
        /// The variable.
        var: String,
        /// The decoder's message.
        message: String,
    },
    /// The value is hex but not 32 bytes.
    #[error("{var} holds {len} bytes; AES-256-GCM needs exactly 32 (64 hex digits)")]
    WrongLength {
        /// The variable.
        var: String,
        /// Bytes found.
        len: usize,
    },
}

/// A failed decryption or a value that is not in the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not an encrypted value of this build (no `DWE1`, or cut short).
    #[error("not an encrypted value ({0})")]
    Malformed(&'static str),
    /// Encrypted under another key id than the one configured.
    #[error("encrypted with key id {found:?}, but the configured key id is {expected:?}")]
    OtherKey {
        /// The key id in the value.
        found: String,
        /// The configured key id.
        expected: String,
    },
    /// The tag does not verify: another master key, or damaged data.
    #[error("does not decrypt with the master key in {var} (wrong key, or damaged data)")]
    Authentication {
        /// The variable the key came from.
        var: String,
    },
}

/// A master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    key_id: String,
    var: String,
    bytes: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("MasterKey").field("key_id", &self.key_id).field("var", &self.var).finish()
    }
}

impl MasterKey {
    /// Reads the key of `key_id` from its variable ([`StorageConfig::key_env_var`]).
    pub fn from_env(key_id: &str) -> Result<Self, KeyError> {
        let var = StorageConfig::key_env_var(key_id);
        match std::env::var(&var) {
            Ok(value) => Self::from_hex(key_id, &var, &value),
            Err(_) => Err(KeyError::Missing { var, key_id: key_id.to_owned() }),
        }
    }

    /// Parses `hex` (surrounding whitespace ignored) as the key of `key_id`, read from `var`.
    pub fn from_hex(key_id: &str, var: &str, hex: &str) -> Result<Self, KeyError> {
        let raw = hex::decode(hex.trim())
            .map_err(|e| KeyError::NotHex { var: var.to_owned(), message: e.to_string() })?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength { var: var.to_owned(), len: raw.len() })?;
        Ok(Self { key_id: key_id.to_owned(), var: var.to_owned(), bytes })
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The variable the key was read from.
    pub fn var(&self) -> &str {
        &self.var
    }
}

/// The original's data key: `sha256(master ‖ key_id ‖ nonce)`.
fn data_key(master: &[u8; 32], key_id: &str, nonce: &[u8]) -> Aes256Gcm {
    let digest = Sha256::new().chain_update(master).chain_update(key_id).chain_update(nonce);
    Aes256Gcm::new(&digest.finalize())
}

/// Decrypts `cipher` (ciphertext with its tag) made with `master`, `key_id` and `nonce` and
/// associated data `aad` (empty for the original's values).
pub fn decrypt_parts(
    master: &MasterKey,
    key_id: &str,
    nonce: &[u8; NONCE_LEN],
    cipher: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    data_key(&master.bytes, key_id, nonce)
        .decrypt(Nonce::from_slice(nonce), Payload { msg: cipher, aad })
        .map_err(|_| CryptoError::Authentication { var: master.var.clone() })
}

/// Seals and opens values with one master key.
#[derive(Debug, Clone)]
pub struct Cipher {
    key: MasterKey,
}

impl Cipher {
    /// A cipher for `key`.
    pub fn new(key: MasterKey) -> Self {
        Self { key }
    }

    /// The master key's id.
    pub fn key_id(&self) -> &str {
        &self.key.key_id
    }

    /// The variable the master key came from.
    pub fn var(&self) -> &str {
        &self.key.var
    }

    /// Encrypts `plain`, bound to `aad` (the sled key it is stored under).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let id = self.key.key_id.as_bytes();
        let mut out =
            Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        // Key ids longer than 255 bytes are cut in the header only; the full id is in the data
        // key, so a cut id never opens another key's values.
        let shown = &id[..id.len().min(255)];
        out.push(shown.len() as u8);
        out.extend_from_slice(shown);
        out.extend_from_slice(&nonce);
        let sealed = data_key(&self.key.bytes, &self.key.key_id, &nonce)
            .encrypt(&nonce, Payload { msg: plain, aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value [`Cipher::seal`] made under the sled key `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (key_id, nonce, cipher) = parse(sealed)?;
        let expected = &self.key.key_id.as_bytes()[..self.key.key_id.len().min(255)];
        if key_id != expected {
            return Err(CryptoError::OtherKey {
                found: String::from_utf8_lossy(key_id).into_owned(),
                expected: self.key.key_id.clone(),
            });
        }
        decrypt_parts(&self.key, &self.key.key_id, nonce, cipher, aad)
    }
}

/// The key id a sealed value names, if it is one.
pub fn sealed_key_id(value: &[u8]) -> Option<String> {
    parse(value).ok().map(|(id, _, _)| String::from_utf8_lossy(id).into_owned())
}

/// The parts of a sealed value: key id, nonce, ciphertext with tag.
type Parts<'a> = (&'a [u8], &'a [u8; NONCE_LEN], &'a [u8]);

fn parse(sealed: &[u8]) -> Result<Parts<'_>, CryptoError> {
    let rest = sealed.strip_prefix(MAGIC).ok_or(CryptoError::Malformed("no DWE1 header"))?;
    let (&len, rest) = rest.split_first().ok_or(CryptoError::Malformed("cut short"))?;
    let len = len as usize;
    if rest.len() < len + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("cut short"));
    }
    let (key_id, rest) = rest.split_at(len);
    let (nonce, cipher) = rest.split_at(NONCE_LEN);
    Ok((key_id, nonce.try_into().expect("split at NONCE_LEN"), cipher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> MasterKey {
        MasterKey::from_hex(id, "DWBASE_KEY_T", &hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let c = Cipher::new(key("k1", 7));
        let sealed = c.seal(b"a/1", b"the secret payload");
        assert!(sealed.starts_with(b"DWE1\x02k1"));
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plain text");
        assert_eq!(c.open(b"a/1", &sealed).unwrap(), b"the secret payload");
        assert_ne!(sealed, c.seal(b"a/1", b"the secret payload"), "fresh nonce every time");
        // Moved under another key, or opened with another master key: refused.
        assert!(matches!(c.open(b"a/2", &sealed), Err(CryptoError::Authentication { .. })));
        let other = Cipher::new(key("k1", 8));
        let err = other.open(b"a/1", &sealed).unwrap_err();
        assert!(err.to_string().contains("DWBASE_KEY_T"), "{err}");
        let renamed = Cipher::new(key("k2", 7));
        assert!(matches!(renamed.open(b"a/1", &sealed), Err(CryptoError::OtherKey { .. })));
        assert_eq!(sealed_key_id(&sealed).as_deref(), Some("k1"));
        assert!(matches!(c.open(b"a/1", b"{\"json\":1}"), Err(CryptoError::Malformed(_))));
        assert!(matches!(c.open(b"a/1", &sealed[..20]), Err(CryptoError::Malformed(_))));
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        let err = MasterKey::from_hex("k", "DWBASE_KEY_K", "zz").unwrap_err();
        assert!(matches!(err, KeyError::NotHex { .. }) && err.to_string().contains("DWBASE_KEY_K"));
        let err = MasterKey::from_hex("k", "DWBASE_KEY_K", "abcd").unwrap_err();
        assert_eq!(err, KeyError::WrongLength { var: "DWBASE_KEY_K".into(), len: 2 });
        let k = key("k", 0xab);
        assert!(!format!("{k:?}").contains("abab"), "{k:?}");
        let err = MasterKey::from_env("surely-unset-key-id-4711").unwrap_err();
        assert!(err.to_string().contains("DWBASE_KEY_SURELY_UNSET_KEY_ID_4711"), "{err}");
    }
}
