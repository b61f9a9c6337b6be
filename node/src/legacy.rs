//! Reading a store written by the original DWBase (greentic-ai/greentic-dwbase 0.1.x), so that
//! it is recognised (never served as empty) and can be converted ([`crate::migrate`]).
//!
//! Its sled layout (one tree; values are bincode 2 with `config::standard()` through serde):
//!
//! | key | value |
//! |---|---|
//! | `world/{w}/atoms/{id}` | the atom (plain, or `ENC1` + an encrypted blob) |
//! | `world/{w}/log/{seq, 20 digits}` | `{atom_id, checksum: crc32 of the stored atom bytes, len}` |
//! | `idx/atom/{id}` | `{world, seq}`: where `GET /atoms/{id}` looks first |
//!
//! The decoder below reads exactly those four shapes. bincode itself is kept to the control
//! protocol's codec (one file, by the project's rule), and the format is small and fixed: LEB-free
//! "varint" integers (< 251 in one byte, else a marker byte 251/252/253 and 2/4/8 bytes little
//! endian), strings and sequences as a varint length then their items, `Option` as a 0/1 byte,
//! unit enum variants as a varint index, `f32` as 4 bytes little endian, `[u8; 12]` as 12 raw
//! bytes.
//!
//! Replay follows the original's own rule: a world's log is read in `seq` order and stops at the
//! first frame that does not decode, whose atom is missing or whose checksum does not match (the
//! original truncates its log there on every start). Atoms no log frame reaches are reported as
//! orphans.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::crypto::{self, MasterKey};
use crate::model::{Atom, AtomKind, Link, LinkKind};

/// Key prefix of the original's per-world data.
pub const WORLD_PREFIX: &[u8] = b"world/";
/// Key prefix of the original's atom id index.
pub const INDEX_PREFIX: &[u8] = b"idx/atom/";
/// First bytes of the original's encrypted atoms.
pub const ENC_MAGIC: &[u8] = b"ENC1";
/// Digits of the original's log sequence numbers.
const SEQ_WIDTH: usize = 20;

/// Reading an original store failed.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// sled failed.
    #[error("reading the original store in {}: {source}", dir.display())]
    Sled {
        /// The data dir.
        dir: PathBuf,
        /// The cause.
        source: sled::Error,
    },
    /// An encrypted atom needs a key that is not available.
    #[error(
        "{} holds atoms encrypted by the original DWBase with key id {key_id:?}: {source}",
        dir.display()
    )]
    Key {
        /// The data dir.
        dir: PathBuf,
        /// The key id the atoms name.
        key_id: String,
        /// Why the key is not usable (names the variable).
        source: crypto::KeyError,
    },
    /// An encrypted atom does not decrypt with its key.
    #[error("{key}: {source}")]
    Decrypt {
        /// The sled key.
        key: String,
        /// The failure (names the variable).
        source: crypto::CryptoError,
    },
}

/// A value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// A cursor over bincode-2 (standard config) bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!(
                "cut short: {n} bytes wanted, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        Ok(match self.u8()? {
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"))),
            252 => u64::from(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            253 => u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")),
            b => return Err(DecodeError(format!("integer marker {b} is not supported"))),
        })
    }

    /// A length, bounded by what is left (so a damaged length never allocates gigabytes).
    fn len(&mut self, item_min: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n.saturating_mul(item_min as u64) > self.buf.len() as u64 {
            return Err(DecodeError(format!("length {n} is past the end of the value")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| DecodeError(e.to_string()))
    }

    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.len(1)?;
        (0..n).map(|_| self.string()).collect()
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn variant<T: Copy>(&mut self, names: &[T]) -> Result<T, DecodeError> {
        let i = self.varint()?;
        names.get(i as usize).copied().ok_or_else(|| DecodeError(format!("enum variant {i}")))
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} bytes left over", self.buf.len())))
        }
    }
}

const KINDS: [AtomKind; 5] = [
    AtomKind::Observation,
    AtomKind::Reflection,
    AtomKind::Plan,
    AtomKind::Action,
    AtomKind::Message,
];
const LINK_KINDS: [LinkKind; 4] =
    [LinkKind::Supersedes, LinkKind::References, LinkKind::Confirms, LinkKind::Contradicts];

/// An f32 as the f64 of its shortest decimal form (0.1f32 → 0.1, not 0.10000000149…), which is
/// what the original printed in its JSON.
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Decodes the original's plain atom bytes.
pub fn decode_atom(bytes: &[u8]) -> Result<Atom, DecodeError> {
    let mut r = Reader { buf: bytes };
    let id = r.string()?;
    let world = r.string()?;
    let worker = r.string()?;
    let kind = r.variant(&KINDS)?;
    let timestamp = r.string()?;
    let importance = widen(r.f32()?);
    let payload_json = r.string()?;
    let vector = match r.u8()? {
        0 => None,
        1 => {
            let n = r.len(4)?;
            Some((0..n).map(|_| r.f32()).collect::<Result<Vec<_>, _>>()?)
        }
        t => return Err(DecodeError(format!("option tag {t}"))),
    };
    let flags = r.strings()?;
    let labels = r.strings()?;
    let n = r.len(2)?;
    let mut links = Vec::with_capacity(n);
    for _ in 0..n {
        let target = r.string()?;
        let kind = r.variant(&LINK_KINDS)?;
        links.push(Link { target, kind });
    }
    r.done()?;
    Ok(Atom {
        id,
        world,
        worker,
        kind,
        timestamp,
        importance,
        payload_json,
        vector,
        flags,
        labels,
        links,
    })
}

/// The original's log frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    /// The atom it points to.
    pub atom_id: String,
    /// crc32 of the stored atom bytes.
    pub checksum: u32,
    /// Their length.
    pub len: u64,
}

/// Decodes a log frame.
pub fn decode_frame(bytes: &[u8]) -> Result<LogFrame, DecodeError> {
    let mut r = Reader { buf: bytes };
    let atom_id = r.string()?;
    let checksum = u32::try_from(r.varint()?).map_err(|_| DecodeError("checksum > u32".into()))?;
    let len = r.varint()?;
    r.done()?;
    Ok(LogFrame { atom_id, checksum, len })
}

/// Decodes an `idx/atom/{id}` entry: (world, seq).
pub fn decode_index(bytes: &[u8]) -> Result<(String, u64), DecodeError> {
    let mut r = Reader { buf: bytes };
    let world = r.string()?;
    let seq = r.varint()?;
    r.done()?;
    Ok((world, seq))
}

/// An encrypted atom body (after `ENC1`): key id, nonce, ciphertext.
pub fn decode_blob(bytes: &[u8]) -> Result<(String, [u8; 12], Vec<u8>), DecodeError> {
    let mut r = Reader { buf: bytes };
    let key_id = r.string()?;
    let nonce: [u8; 12] = r.take(12)?.try_into().expect("12 bytes");
    let n = r.len(1)?;
    let cipher = r.take(n)?.to_vec();
    r.done()?;
    Ok((key_id, nonce, cipher))
}

/// Whether `db` holds the original's keys and none of ours: such a store must never be served
/// as empty.
pub fn is_original(db: &sled::Db) -> sled::Result<bool> {
    if db.get(b"m/format")?.is_some() {
        return Ok(false);
    }
    Ok(db.scan_prefix(WORLD_PREFIX).next().transpose()?.is_some()
        || db.scan_prefix(INDEX_PREFIX).next().transpose()?.is_some())
}

/// Log entries and worlds of an original store (quick: keys only).
pub fn count(db: &sled::Db) -> sled::Result<(u64, usize)> {
    let mut entries = 0;
    let mut worlds = BTreeSet::new();
    for item in db.scan_prefix(WORLD_PREFIX) {
        let (key, _) = item?;
        if let Some((world, _)) = parse_log_key(&key) {
            entries += 1;
            worlds.insert(world.to_owned());
        }
    }
    Ok((entries, worlds.len()))
}

/// `world/{w}/log/{seq}` → (w, seq).
fn parse_log_key(key: &[u8]) -> Option<(&str, u64)> {
    let s = std::str::from_utf8(key.strip_prefix(WORLD_PREFIX)?).ok()?;
    let (world, seq) = s.rsplit_once("/log/")?;
    (seq.len() == SEQ_WIDTH && seq.bytes().all(|b| b.is_ascii_digit()))
        .then(|| seq.parse().ok().map(|n| (world, n)))
        .flatten()
}

fn atom_key(world: &str, id: &str) -> Vec<u8> {
    format!("world/{world}/atoms/{id}").into_bytes()
}

/// A log entry the original's replay stops at, with everything after it in its world.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Truncated {
    /// The world.
    pub world: String,
    /// The first bad entry's sequence number.
    pub seq: u64,
    /// Entries from it on that replay never reaches.
    pub entries: u64,
    /// Why it is bad.
    pub reason: String,
}

/// One world of an original store, in replay order.
#[derive(Debug, Clone)]
pub struct World {
    /// Its name.
    pub name: String,
    /// Its atoms as the original's `/replay` returns them.
    pub atoms: Vec<Atom>,
}

/// Everything an original store holds, as its own replay would show it.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Worlds by name.
    pub worlds: Vec<World>,
    /// `idx/atom/{id}` → world: which atom `GET /atoms/{id}` answered.
    pub index: BTreeMap<String, String>,
    /// Logs cut short by a bad entry.
    pub truncated: Vec<Truncated>,
    /// Atoms no log entry reaches (world, id).
    pub orphans: Vec<Atom>,
    /// Keys of atoms that do not decode at all (reported, not migrated).
    pub undecodable: Vec<String>,
    /// Key ids of encrypted atoms, with their counts.
    pub key_ids: BTreeMap<String, u64>,
}

/// Decodes a stored atom value, decrypting `ENC1` bodies with the key of the id they name
/// (looked up once per id through `keys`).
fn decode_value(
    dir: &Path,
    key: &[u8],
    value: &[u8],
    keys: &mut BTreeMap<String, MasterKey>,
    key_ids: &mut BTreeMap<String, u64>,
) -> Result<Result<Atom, DecodeError>, LegacyError> {
    let Some(blob) = value.strip_prefix(ENC_MAGIC) else {
        return Ok(decode_atom(value));
    };
    let (key_id, nonce, cipher) = match decode_blob(blob) {
        Ok(parts) => parts,
        Err(e) => return Ok(Err(e)),
    };
    *key_ids.entry(key_id.clone()).or_default() += 1;
    if !keys.contains_key(&key_id) {
        let master = MasterKey::from_env(&key_id).map_err(|source| LegacyError::Key {
            dir: dir.to_path_buf(),
            key_id: key_id.clone(),
            source,
        })?;
        keys.insert(key_id.clone(), master);
    }
    let master = &keys[&key_id];
    let plain = crypto::decrypt_parts(master, &key_id, &nonce, &cipher, &[]).map_err(|source| {
        LegacyError::Decrypt { key: String::from_utf8_lossy(key).into_owned(), source }
    })?;
    Ok(decode_atom(&plain))
}

/// Reads every world of the original store `db` (in `dir`) the way its own replay would.
/// Encrypted atoms are decrypted with keys from `DWBASE_KEY_<KEY_ID>`.
pub fn read(db: &sled::Db, dir: &Path) -> Result<Contents, LegacyError> {
    let sled = |source| LegacyError::Sled { dir: dir.to_path_buf(), source };
    let mut out = Contents::default();
    let mut keys = BTreeMap::new();
    // World names from the log keys (sled keys are sorted, so each log is in seq order).
    let mut logs: BTreeMap<String, Vec<(u64, sled::IVec)>> = BTreeMap::new();
    for item in db.scan_prefix(WORLD_PREFIX) {
        let (key, value) = item.map_err(sled)?;
        if let Some((world, seq)) = parse_log_key(&key) {
            logs.entry(world.to_owned()).or_default().push((seq, value));
        }
    }
    let mut reached: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (world, frames) in logs {
        let mut atoms = Vec::new();
        for (i, (seq, frame)) in frames.iter().enumerate() {
            let bad = |reason: String| Truncated {
                world: world.clone(),
                seq: *seq,
                entries: (frames.len() - i) as u64,
                reason,
            };
            let frame = match decode_frame(frame) {
                Ok(f) => f,
                Err(e) => {
                    out.truncated.push(bad(format!("log entry does not decode: {e}")));
                    break;
                }
            };
            let key = atom_key(&world, &frame.atom_id);
            let Some(value) = db.get(&key).map_err(sled)? else {
                out.truncated.push(bad(format!("atom {} is missing", frame.atom_id)));
                break;
            };
            if crc32fast::hash(&value) != frame.checksum {
                out.truncated.push(bad(format!(
                    "atom {} does not match its log entry's checksum (overwritten by a later run)",
                    frame.atom_id
                )));
                break;
            }
            match decode_value(dir, &key, &value, &mut keys, &mut out.key_ids)? {
                Ok(atom) => atoms.push(atom),
                Err(e) => {
                    out.truncated.push(bad(format!("atom {} does not decode: {e}", frame.atom_id)));
                    break;
                }
            }
            reached.insert(key);
        }
        out.worlds.push(World { name: world, atoms });
    }
    for item in db.scan_prefix(WORLD_PREFIX) {
        let (key, value) = item.map_err(sled)?;
        let is_atom = std::str::from_utf8(&key).is_ok_and(|k| k.contains("/atoms/"));
        if !is_atom || reached.contains(key.as_ref()) || parse_log_key(&key).is_some() {
            continue;
        }
        match decode_value(dir, &key, &value, &mut keys, &mut out.key_ids)? {
            Ok(atom) => out.orphans.push(atom),
            Err(_) => out.undecodable.push(String::from_utf8_lossy(&key).into_owned()),
        }
    }
    for item in db.scan_prefix(INDEX_PREFIX) {
        let (key, value) = item.map_err(sled)?;
        if let (Ok(id), Ok((world, _))) =
            (std::str::from_utf8(&key[INDEX_PREFIX.len()..]), decode_index(&value))
        {
            out.index.insert(id.to_owned(), world);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_shapes() {
        let mut r =
            Reader { buf: &[7, 251, 0x34, 0x12, 252, 1, 0, 0, 0, 253, 1, 0, 0, 0, 0, 0, 0, 0] };
        assert_eq!(r.varint().unwrap(), 7);
        assert_eq!(r.varint().unwrap(), 0x1234);
        assert_eq!(r.varint().unwrap(), 1);
        assert_eq!(r.varint().unwrap(), 1);
        assert!(r.done().is_ok());
        // A frame: "atom-1", crc 300 (251 + u16), len 5.
        let mut bytes = vec![6];
        bytes.extend_from_slice(b"atom-1");
        bytes.extend_from_slice(&[251, 0x2c, 0x01, 5]);
        let f = decode_frame(&bytes).unwrap();
        assert_eq!((f.atom_id.as_str(), f.checksum, f.len), ("atom-1", 300, 5));
        assert!(decode_frame(&bytes[..4]).is_err(), "cut short");
        assert!(decode_frame(b"\xfa").is_err(), "length past the end");
        assert_eq!(widen(0.13f32), 0.13);
        assert_eq!(parse_log_key(b"world/a/log/b/log/00000000000000000003"), Some(("a/log/b", 3)));
        assert_eq!(parse_log_key(b"world/a/atoms/atom-1"), None);
    }
}
