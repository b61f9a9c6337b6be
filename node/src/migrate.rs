//! `dwbase storage migrate --from OLD --to NEW`: converts a store into this build's format.
//!
//! The source is read, never written: a store of the original DWBase ([`crate::legacy`]) or one of
//! ours (to encrypt it, decrypt it, or change its key). The target is a new folder.
//!
//! From an original store, every atom its own replay returns is kept with all its fields (world,
//! worker, kind, timestamp, importance, payload, vector, flags, labels, links) and its id, in the
//! same order per world. The original's ids restarted at `atom-1` in every process, so one id
//! can name atoms in several worlds: the oldest of them keeps the id, each other one becomes
//! `{id}@{world}`, links from its
//! world to that id are rewritten to match, and the report lists every renamed id. The world
//! lifecycle atoms (`world_meta`, `world_status:*`) stay atoms of their world and also become the
//! world's record (description, labels, archived); `policy:{world}` atoms become that world's
//! policy. The target is then reopened and every world replayed and compared with what was read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::holds_store;
use crate::crypto::{self, Cipher, MasterKey};
use crate::legacy::{self, LegacyError, Truncated};
use crate::model::{parse_timestamp, Atom, AtomFilter, WorldPolicy, WorldRecord};
use crate::storage::{open_sled, AtRest, StorageError, Store, StoreOptions, ENCRYPTION_KEY};

/// sled cache for a conversion.
const CACHE_BYTES: u64 = 64 << 20;
/// Atoms per import batch.
const CHUNK: usize = 2048;

/// How the target is protected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TargetKey {
    /// As the source: encrypted with the same key id (key from its variable), or plain.
    #[default]
    SameAsSource,
    /// Encrypted with this key id (key from `DWBASE_KEY_<ID>`).
    KeyId(String),
    /// Plain.
    Plain,
}

/// What to convert.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The source data dir.
    pub from: PathBuf,
    /// The target data dir (must not exist, or be empty).
    pub to: PathBuf,
    /// Encryption of the target.
    pub key: TargetKey,
    /// Also convert atoms of an original store that no log entry reaches.
    pub include_orphans: bool,
}

/// A conversion failed; nothing usable was left at the target.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Bad arguments (names the folder).
    #[error("{0}")]
    Usage(String),
    /// Reading the original store failed.
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// Opening or writing a store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A key could not be read.
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
    /// The converted store does not replay what was read.
    #[error("verifying {}: {message}", to.display())]
    Verify {
        /// The target.
        to: PathBuf,
        /// What differs.
        message: String,
    },
}

/// An atom whose id was taken by an atom of another world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renamed {
    /// Its world.
    pub world: String,
    /// The original id.
    pub from: String,
    /// Its id now.
    pub to: String,
    /// The world whose atom kept the id.
    pub kept_by: String,
}

/// One converted world.
#[derive(Debug, Clone, Serialize)]
pub struct WorldReport {
    /// Its name.
    pub world: String,
    /// Atoms converted.
    pub atoms: u64,
    /// Whether it is archived.
    pub archived: bool,
    /// Whether a policy was carried over.
    pub policy: bool,
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The source.
    pub from: PathBuf,
    /// The target.
    pub to: PathBuf,
    /// `original` (DWBase 0.1.x) or `dwbase` (this build's).
    pub source_format: &'static str,
    /// Key id(s) the source was encrypted with.
    pub source_key_ids: Vec<String>,
    /// Key id the target is encrypted with.
    pub target_key_id: Option<String>,
    /// Atoms converted (and verified by a replay of the target).
    pub atoms: u64,
    /// Per world.
    pub worlds: Vec<WorldReport>,
    /// Every atom whose id changed.
    pub renamed: Vec<Renamed>,
    /// Links pointed at a renamed atom.
    pub links_rewritten: u64,
    /// Logs the original's replay stops short in (their tails are not converted).
    pub truncated: Vec<Truncated>,
    /// Atoms of an original store no log entry reaches, by id (converted only on request).
    pub orphans: Vec<String>,
    /// Whether the orphans were converted.
    pub orphans_converted: bool,
    /// Atoms whose timestamp is not RFC 3339 (kept as written; they sort as 1970).
    pub unparsed_timestamps: u64,
}

/// Converts `opts.from` into a new store at `opts.to` (see the module docs). Blocking.
pub fn migrate(opts: &MigrateOptions) -> Result<Report, MigrateError> {
    let (from, to) = (&opts.from, &opts.to);
    if !holds_store(from) {
        return Err(MigrateError::Usage(format!(
            "--from {}: no sled store there (no conf and db files)",
            from.display()
        )));
    }
    if to.exists() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(MigrateError::Usage(format!(
            "--to {} exists and is not empty; name a new folder (the source is never changed)",
            to.display()
        )));
    }
    if same_dir(from, to) {
        return Err(MigrateError::Usage("--from and --to are the same folder".into()));
    }
    let source = read_source(from, opts.include_orphans)?;
    let target_key = match (&opts.key, &source.key) {
        (TargetKey::Plain, _) | (TargetKey::SameAsSource, None) => None,
        (TargetKey::KeyId(id), _) | (TargetKey::SameAsSource, Some(id)) => {
            Some(MasterKey::from_env(id)?)
        }
    };
    let result = write_target(to, &source, target_key.as_ref());
    if result.is_err() {
        // A half-written target must not be mistaken for a converted store.
        let _ = std::fs::remove_dir_all(to);
    }
    let atoms = result?;
    Ok(Report {
        from: from.clone(),
        to: to.clone(),
        source_format: source.format,
        source_key_ids: source.key_ids,
        target_key_id: target_key.map(|k| k.key_id().to_owned()),
        atoms,
        worlds: source
            .worlds
            .iter()
            .map(|(name, atoms)| {
                let record = source.records.get(name);
                WorldReport {
                    world: name.clone(),
                    atoms: atoms.len() as u64,
                    archived: record.is_some_and(|r| r.archived),
                    policy: record.is_some_and(|r| r.policy.is_some()),
                }
            })
            .collect(),
        renamed: source.renamed,
        links_rewritten: source.links_rewritten,
        truncated: source.truncated,
        orphans: source.orphans,
        orphans_converted: opts.include_orphans,
        unparsed_timestamps: source
            .worlds
            .values()
            .flatten()
            .filter(|a| parse_timestamp(&a.timestamp).is_none())
            .count() as u64,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

/// What was read from the source, ready to write.
#[derive(Debug, Default)]
struct Source {
    format: &'static str,
    /// Key id the target gets by default.
    key: Option<String>,
    key_ids: Vec<String>,
    /// Per world, in replay order (ids already resolved).
    worlds: BTreeMap<String, Vec<Atom>>,
    records: BTreeMap<String, WorldRecord>,
    renamed: Vec<Renamed>,
    links_rewritten: u64,
    truncated: Vec<Truncated>,
    orphans: Vec<String>,
}

fn read_source(from: &Path, include_orphans: bool) -> Result<Source, MigrateError> {
    let db = open_sled(from, CACHE_BYTES)?;
    let original = legacy::is_original(&db)
        .map_err(|source| StorageError::Sled { action: "reading", source })?;
    if original {
        let contents = legacy::read(&db, from)?;
        drop(db);
        return Ok(from_original(contents, include_orphans));
    }
    // One of ours: open it as a node would, with its key when it is encrypted.
    let marker = db
        .get(ENCRYPTION_KEY)
        .map_err(|source| StorageError::Sled { action: "reading", source })?;
    drop(db);
    let key_id = marker.as_deref().and_then(crypto::sealed_key_id);
    let at_rest = match &key_id {
        Some(id) => AtRest::Encrypted(Arc::new(Cipher::new(MasterKey::from_env(id)?))),
        None => AtRest::Plain,
    };
    let store =
        Store::open(&StoreOptions { dir: from.to_path_buf(), cache_bytes: CACHE_BYTES, at_rest })?;
    let all = AtomFilter::default().compile().expect("the empty filter compiles");
    let mut out = Source {
        format: "dwbase",
        key: key_id.clone(),
        key_ids: key_id.into_iter().collect(),
        ..Source::default()
    };
    for (record, _) in store.worlds() {
        let atoms = store.replay(&record.world, &all)?;
        out.worlds.insert(record.world.clone(), atoms);
        out.records.insert(record.world.clone(), record);
    }
    Ok(out)
}

/// Resolves the original's colliding ids and derives world records (see the module docs).
fn from_original(contents: legacy::Contents, include_orphans: bool) -> Source {
    let mut worlds: BTreeMap<String, Vec<Atom>> = BTreeMap::new();
    for w in contents.worlds {
        worlds.insert(w.name, w.atoms);
    }
    let orphans: Vec<String> = contents.orphans.iter().map(|a| a.id.clone()).collect();
    if include_orphans {
        for atom in contents.orphans {
            worlds.entry(atom.world.clone()).or_default().push(atom);
        }
    }
    // Which worlds use each id.
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (world, atoms) in &worlds {
        for a in atoms {
            let list = owners.entry(a.id.clone()).or_default();
            if !list.contains(world) {
                list.push(world.clone());
            }
        }
    }
    let mut taken: BTreeSet<String> = owners.keys().cloned().collect();
    let mut renames: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut renamed = Vec::new();
    for (id, list) in &owners {
        if list.len() < 2 {
            continue;
        }
        // The oldest atom had the id first (later runs reused it); ties go to the world the
        // original's `idx/atom/{id}` names, then to the first world by name. (The original's
        // own GET answered whichever world its index rebuild at start-up visited last, which
        // varies from one start to the next.)
        let first_ts = |world: &String| {
            worlds[world].iter().find(|a| a.id == *id).map_or(i64::MAX, Atom::timestamp_ms)
        };
        let keeper = list
            .iter()
            .min_by_key(|w| (first_ts(w), contents.index.get(id) != Some(*w), (*w).clone()))
            .cloned()
            .expect("at least two owners");
        for world in list.iter().filter(|w| **w != keeper) {
            let mut new_id = format!("{id}@{world}");
            let mut n = 2;
            while taken.contains(&new_id) {
                new_id = format!("{id}@{world}~{n}");
                n += 1;
            }
            taken.insert(new_id.clone());
            renames.insert((world.clone(), id.clone()), new_id.clone());
            renamed.push(Renamed {
                world: world.clone(),
                from: id.clone(),
                to: new_id,
                kept_by: keeper.clone(),
            });
        }
    }
    let mut links_rewritten = 0;
    for (world, atoms) in worlds.iter_mut() {
        let mut seen = BTreeSet::new();
        // The same atom twice in one log (an id reused within a world) is converted once.
        atoms.retain(|a| seen.insert(a.id.clone()));
        for atom in atoms.iter_mut() {
            if let Some(new) = renames.get(&(world.clone(), atom.id.clone())) {
                atom.id = new.clone();
            }
            for link in &mut atom.links {
                if let Some(new) = renames.get(&(world.clone(), link.target.clone())) {
                    link.target = new.clone();
                    links_rewritten += 1;
                }
            }
        }
    }
    let records = original_records(&worlds);
    let mut key_ids: Vec<(String, u64)> = contents.key_ids.into_iter().collect();
    key_ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Source {
        format: "original",
        key: key_ids.first().map(|(k, _)| k.clone()),
        key_ids: key_ids.into_iter().map(|(k, _)| k).collect(),
        worlds,
        records,
        renamed,
        links_rewritten,
        truncated: contents.truncated,
        orphans,
    }
}

/// The original kept a world's lifecycle as atoms (labels `world_meta`, `world_status:*`,
/// payload `{action, description?, labels?}`) and policies as atoms of `policy:{world}` (labels
/// `policy:key=value`). Our world records say the same.
fn original_records(worlds: &BTreeMap<String, Vec<Atom>>) -> BTreeMap<String, WorldRecord> {
    let mut records = BTreeMap::new();
    for (name, atoms) in worlds {
        let mut record = WorldRecord {
            world: name.clone(),
            description: None,
            labels: Vec::new(),
            archived: false,
            created_at: atoms.first().map(|a| a.timestamp.clone()).unwrap_or_default(),
            policy: None,
        };
        let mut meta: Vec<&Atom> =
            atoms.iter().filter(|a| a.labels.iter().any(|l| l == "world_meta")).collect();
        // As the original: the latest status by timestamp wins (stable for equal times).
        meta.sort_by_key(|a| a.timestamp_ms());
        for atom in meta {
            if let Some(status) = atom.labels.iter().find_map(|l| l.strip_prefix("world_status:")) {
                record.archived = status == "archived";
            }
            let payload: serde_json::Value =
                serde_json::from_str(&atom.payload_json).unwrap_or_default();
            if let Some(d) = payload.get("description").and_then(|d| d.as_str()) {
                record.description = Some(d.to_owned());
            }
            if let Some(labels) = payload.get("labels").and_then(|l| l.as_array()) {
                record.labels =
                    labels.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect();
            }
        }
        records.insert(name.clone(), record);
    }
    for (name, atoms) in worlds {
        let Some(target) = name.strip_prefix("policy:") else { continue };
        let mut policy = WorldPolicy { world: target.to_owned(), ..WorldPolicy::default() };
        let mut any = false;
        for label in atoms.iter().flat_map(|a| &a.labels) {
            let Some((key, value)) =
                label.strip_prefix("policy:").and_then(|kv| kv.split_once('='))
            else {
                continue;
            };
            any = true;
            match key {
                "retention_days" => policy.retention_days = value.parse().ok(),
                "min_importance" => policy.min_importance = value.parse().ok(),
                "replication_allow" if !value.is_empty() => {
                    policy.replication_allow.push(value.to_owned())
                }
                "replication_deny" if !value.is_empty() => {
                    policy.replication_deny.push(value.to_owned())
                }
                _ => {}
            }
        }
        if any {
            let record = records.entry(target.to_owned()).or_insert_with(|| WorldRecord {
                world: target.to_owned(),
                description: None,
                labels: Vec::new(),
                archived: false,
                created_at: String::new(),
                policy: None,
            });
            record.policy = Some(policy);
        }
    }
    records
}

fn write_target(to: &Path, source: &Source, key: Option<&MasterKey>) -> Result<u64, MigrateError> {
    let at_rest = match key {
        Some(k) => AtRest::Encrypted(Arc::new(Cipher::new(k.clone()))),
        None => AtRest::Plain,
    };
    let store =
        Store::open(&StoreOptions { dir: to.to_path_buf(), cache_bytes: CACHE_BYTES, at_rest })?;
    let records: Vec<WorldRecord> = source.records.values().cloned().collect();
    store.import_blocking(&[], &records)?;
    let mut stored = 0;
    for atoms in source.worlds.values() {
        for chunk in atoms.chunks(CHUNK) {
            stored += store.import_blocking(chunk, &[])?;
        }
    }
    store.flush_blocking()?;
    let all = AtomFilter::default().compile().expect("the empty filter compiles");
    let verify = |message: String| MigrateError::Verify { to: to.to_path_buf(), message };
    for (world, atoms) in &source.worlds {
        let got = store.replay(world, &all)?;
        if got != *atoms {
            let first = got.iter().zip(atoms).position(|(a, b)| a != b).unwrap_or(got.len());
            return Err(verify(format!(
                "world {world:?} replays {} atoms where {} were read (first difference at {first})",
                got.len(),
                atoms.len()
            )));
        }
    }
    let expected: u64 = source.worlds.values().map(|a| a.len() as u64).sum();
    if stored != expected {
        return Err(verify(format!("{stored} atoms stored where {expected} were read")));
    }
    drop(store);
    Ok(stored)
}
