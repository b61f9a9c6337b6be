//! Durable storage over sled.
//!
//! One sled tree holds everything, under key prefixes:
//!
//! | key | value |
//! |---|---|
//! | `a/<id>` | the atom as JSON |
//! | `l/<world len u16 BE><world><seq u64 BE>` | the atom id (append order per world) |
//! | `w/<world>` | the [`WorldRecord`] as JSON |
//! | `m/format` | storage format version |
//! | `m/encryption` | with encryption at rest: a value sealed with the master key (key check) |
//!
//! With encryption at rest ([`AtRest::Encrypted`], see [`crate::crypto`]) the values of `a/` and
//! `w/` keys are sealed, each bound to its key; log values (atom ids) and keys (world names, ids)
//! stay in clear. A store and its configuration must agree: an encrypted store is refused without
//! its key (naming the variable), with a wrong key, or under another key id, and a store holding
//! plain records is refused when encryption is asked for (it would mix both; migrating it into an
//! encrypted copy is the way).
//!
//! A remember writes, under one lock and in this order, the log entry, the atom and (for a new
//! world) the world record, as three single-key inserts. sled applies each atomically and
//! recovers a prefix of the log after a crash, so a crash mid-atom leaves at most a log entry
//! whose atom is missing, and only as its world's last entry: [`Store::open`] removes it. (A
//! `sled::Batch` would make the three atomic together, but sled seals and writes an I/O buffer
//! of its own for every batch and applies it under its exclusive lock, which waits for any flush
//! in progress: two disk writes per remember, and writers queued behind each flush.) A write is
//! acknowledged only after a flush that covers it: writers queue on a group-commit thread, and
//! one flush (one log write and sync) serves every write queued before it started, while the
//! next group's writes go on. Ids are ULIDs (time + 80 random bits) and are checked against the
//! store before use, so ids never repeat across restarts; `seq` comes from sled's persisted id
//! generator, which never goes backwards either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::crypto::{self, Cipher, CryptoError, KeyError};
use crate::model::{now_rfc3339, Atom, CompiledFilter, WorldPolicy, WorldRecord};

const ATOM_PREFIX: &[u8] = b"a/";
const LOG_PREFIX: &[u8] = b"l/";
const WORLD_PREFIX: &[u8] = b"w/";
const FORMAT_KEY: &[u8] = b"m/format";
const FORMAT_VERSION: &[u8] = b"1";
/// The key check of an encrypted store.
pub const ENCRYPTION_KEY: &[u8] = b"m/encryption";
const KEY_CHECK: &[u8] = b"dwbase key check v1";

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data dir is locked by another process (a second node on the same dir).
    #[error(
        "data dir {dir} is already in use by another process (sled lock held); \
         stop the other node or choose another data_dir"
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// sled could not open the data dir.
    #[error("opening sled store in {dir}: {source}")]
    Open {
        /// The data dir.
        dir: PathBuf,
        /// The cause.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("storage {action}: {source}")]
    Sled {
        /// What we were doing.
        action: &'static str,
        /// The cause.
        source: sled::Error,
    },
    /// The flush that makes a write durable failed.
    #[error("flushing to disk: {0}")]
    Flush(String),
    /// A stored value could not be decoded.
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decode error.
        message: String,
    },
    /// The storage is shutting down.
    #[error("storage is shutting down")]
    Closed,
    /// The master key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store is encrypted and no key was configured.
    #[error(
        "data dir {dir} is encrypted (key id {key_id:?}): set [node.storage] encryption_enabled = \
         true and key_id = {key_id:?}, with its master key in {var}"
    )]
    Encrypted {
        /// The data dir.
        dir: PathBuf,
        /// The key id the store names.
        key_id: String,
        /// The variable its key is read from.
        var: String,
    },
    /// The configured key does not open the store.
    #[error("data dir {dir}: the store's key check {source}")]
    WrongKey {
        /// The data dir.
        dir: PathBuf,
        /// What failed (names the variable or the key ids).
        source: CryptoError,
    },
    /// Encryption is configured but the store already holds plain records.
    #[error(
        "data dir {dir} holds {records} unencrypted records but node.storage.encryption_enabled \
         = true: encrypt them into a new folder with `dwbase storage migrate --from {dir} --to \
         NEW_DIR --key-id {key_id}` and point data_dir at NEW_DIR (or set encryption_enabled = \
         false)"
    )]
    PlainWithKey {
        /// The data dir.
        dir: PathBuf,
        /// Atom and world records found.
        records: u64,
        /// The configured key id.
        key_id: String,
    },
    /// The data dir holds a store written by the original DWBase.
    #[error(
        "data dir {dir} holds a store written by the original DWBase (0.1.x): {entries} atoms in \
         {worlds} worlds, in a layout this node does not serve (starting on it would show an empty \
         store). Convert it into a new folder, leaving this one untouched: dwbase storage migrate \
         --from {dir} --to NEW_DIR, then point node.data_dir at NEW_DIR"
    )]
    Original {
        /// The data dir.
        dir: PathBuf,
        /// Log entries found.
        entries: u64,
        /// Worlds found.
        worlds: usize,
    },
    /// A write or decode on a store opened with [`AtRest::Opaque`].
    #[error("the store in {dir} was opened for copying only")]
    Opaque {
        /// The data dir.
        dir: PathBuf,
    },
}

/// How stored values are protected.
#[derive(Debug, Clone, Default)]
pub enum AtRest {
    /// Values in clear; an encrypted store is refused, naming its key.
    #[default]
    Plain,
    /// Values sealed with this cipher.
    Encrypted(Arc<Cipher>),
    /// Copy-only access (backups): values are never decoded and nothing is written, so an
    /// encrypted store is copied as it is, without its key.
    Opaque,
}

/// Opening options.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data dir.
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Encryption at rest.
    pub at_rest: AtRest,
}

type FlushReply = oneshot::Sender<Result<(), String>>;

/// Outcome of [`Store::insert_new`].
#[derive(Debug)]
pub enum Inserted {
    /// Stored and durable.
    Stored,
    /// An atom with this id already exists (nothing written).
    Exists,
}

/// The node's durable store.
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    /// Serializes "check id is free, apply batch" so ids and log order stay consistent. An
    /// async mutex: while a snapshot holds it (from a blocking thread), waiting writers park
    /// their tasks instead of blocking the runtime's few worker threads, so reads and probes
    /// keep being served.
    write_lock: tokio::sync::Mutex<()>,
    /// `None` only while dropping.
    flush_tx: Option<mpsc::Sender<FlushReply>>,
    /// Writers that have started a write but not yet asked for its flush (group-commit hint).
    pending: Arc<AtomicU64>,
    flusher: Option<std::thread::JoinHandle<()>>,
    worlds: RwLock<BTreeMap<String, WorldState>>,
    atoms: AtomicU64,
    bytes_written: AtomicU64,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    flushes: Arc<AtomicU64>,
    at_rest: AtRest,
}

/// A world's record plus its atom count.
#[derive(Debug, Clone)]
struct WorldState {
    record: WorldRecord,
    atoms: u64,
    /// Whether the record is stored (at open, a world may be known from its log only).
    stored: bool,
}

/// Removes what a crash in the middle of a remember can leave (see the module docs): a log entry
/// whose atom was never written, as the last entry of its world. Returns how many were removed
/// (and flushes the removal). Runs at open, before any write.
fn drop_torn_tail(
    db: &sled::Db,
    worlds: &mut BTreeMap<String, WorldState>,
) -> Result<u64, StorageError> {
    let mut removed = 0u64;
    let mut emptied = Vec::new();
    for (name, state) in worlds.iter_mut() {
        while let Some(item) = db.scan_prefix(log_prefix(name)).next_back() {
            let (key, id) = item.map_err(sled_err("reading log"))?;
            if db.contains_key([ATOM_PREFIX, &id].concat()).map_err(sled_err("reading atom"))? {
                break;
            }
            tracing::warn!(
                world = %name,
                id = %String::from_utf8_lossy(&id),
                "removing the log entry of an atom a crash interrupted before it was written \
                 (it was never acknowledged)"
            );
            db.remove(&key).map_err(sled_err("removing a torn log entry"))?;
            state.atoms = state.atoms.saturating_sub(1);
            removed += 1;
        }
        if state.atoms == 0 && !state.stored {
            emptied.push(name.clone());
        }
    }
    for name in emptied {
        worlds.remove(&name);
    }
    if removed > 0 {
        db.flush().map_err(sled_err("flushing the log repair"))?;
    }
    Ok(removed)
}

fn log_prefix(world: &str) -> Vec<u8> {
    let len = u16::try_from(world.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(LOG_PREFIX.len() + 2 + world.len() + 8);
    key.extend_from_slice(LOG_PREFIX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(world.as_bytes());
    key
}

fn log_key(world: &str, seq: u64) -> Vec<u8> {
    let mut key = log_prefix(world);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn world_of_log_key(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(LOG_PREFIX)?;
    let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    std::str::from_utf8(rest.get(2..2 + len)?).ok()
}

fn atom_key(id: &str) -> Vec<u8> {
    [ATOM_PREFIX, id.as_bytes()].concat()
}

fn world_key(world: &str) -> Vec<u8> {
    [WORLD_PREFIX, world.as_bytes()].concat()
}

fn corrupt(key: &[u8], message: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.to_string(),
    }
}

/// Checks the store's encryption against the configuration before anything is read or
/// written; marks a new, empty store as encrypted.
fn check_at_rest(db: &sled::Db, dir: &Path, at_rest: &AtRest) -> Result<(), StorageError> {
    let marker = db.get(ENCRYPTION_KEY).map_err(sled_err("reading the key check"))?;
    match (marker, at_rest) {
        (_, AtRest::Opaque) => Ok(()),
        (None, AtRest::Plain) => Ok(()),
        (Some(m), AtRest::Plain) => {
            let key_id = crypto::sealed_key_id(&m).unwrap_or_else(|| "?".into());
            let var = crate::config::StorageConfig::key_env_var(&key_id);
            Err(StorageError::Encrypted { dir: dir.to_path_buf(), key_id, var })
        }
        (Some(m), AtRest::Encrypted(c)) => match c.open(ENCRYPTION_KEY, &m) {
            Ok(check) if check == KEY_CHECK => Ok(()),
            Ok(_) => Err(corrupt(ENCRYPTION_KEY, "unexpected key check content")),
            Err(source) => Err(StorageError::WrongKey { dir: dir.to_path_buf(), source }),
        },
        (None, AtRest::Encrypted(c)) => {
            let mut records = 0u64;
            for prefix in [ATOM_PREFIX, WORLD_PREFIX] {
                for item in db.scan_prefix(prefix) {
                    item.map_err(sled_err("checking for plain records"))?;
                    records += 1;
                }
            }
            if records > 0 {
                return Err(StorageError::PlainWithKey {
                    dir: dir.to_path_buf(),
                    records,
                    key_id: c.key_id().to_owned(),
                });
            }
            db.insert(ENCRYPTION_KEY, c.seal(ENCRYPTION_KEY, KEY_CHECK))
                .map_err(sled_err("writing the key check"))?;
            db.flush().map_err(sled_err("flushing the key check"))?;
            Ok(())
        }
    }
}

/// The plain form of a stored value.
fn unseal<'a>(
    at_rest: &AtRest,
    key: &[u8],
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, StorageError> {
    match at_rest {
        AtRest::Plain => Ok(bytes.into()),
        AtRest::Encrypted(c) => c.open(key, bytes).map(Into::into).map_err(|e| corrupt(key, e)),
        AtRest::Opaque => Err(StorageError::Opaque { dir: PathBuf::new() }),
    }
}

/// How long [`Store::open`] retries a held lock. sled releases its lock file only when its
/// background threads let go of the database, a moment after the last handle is dropped, so a
/// reopen in the same process can briefly see the lock; another process's lock outlasts this
/// and is reported as [`StorageError::Locked`].
pub const LOCK_RETRY: Duration = Duration::from_secs(2);

/// Opens sled in `dir`, retrying a held lock for [`LOCK_RETRY`] (then [`StorageError::Locked`]).
pub fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    let started = Instant::now();
    loop {
        let result = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                if started.elapsed() >= LOCK_RETRY {
                    return Err(StorageError::Locked { dir: dir.to_path_buf() });
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(source) => return Err(StorageError::Open { dir: dir.to_path_buf(), source }),
        }
    }
}

fn sled_err(action: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |source| StorageError::Sled { action, source }
}

impl Store {
    /// Opens (or creates) the store in `opts.dir`. Fails at once, naming the dir, when another
    /// process holds it.
    pub fn open(opts: &StoreOptions) -> Result<Self, StorageError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::Open { dir: dir.clone(), source: sled::Error::Io(e) })?;
        let db = open_sled(&dir, opts.cache_bytes)?;
        if crate::legacy::is_original(&db).map_err(sled_err("checking the store's format"))? {
            let (entries, worlds) =
                crate::legacy::count(&db).map_err(sled_err("counting the original's atoms"))?;
            return Err(StorageError::Original { dir, entries, worlds });
        }
        check_at_rest(&db, &dir, &opts.at_rest)?;
        if db.get(FORMAT_KEY).map_err(sled_err("reading format"))?.is_none() {
            db.insert(FORMAT_KEY, FORMAT_VERSION).map_err(sled_err("writing format"))?;
            db.flush().map_err(sled_err("flushing format"))?;
        }

        // Load world records and count atoms per world from the log.
        let mut worlds = BTreeMap::new();
        for item in db.scan_prefix(WORLD_PREFIX) {
            let (key, value) = item.map_err(sled_err("loading worlds"))?;
            let record: WorldRecord = match &opts.at_rest {
                // Copy-only: the name is in the key; the record itself is not needed.
                AtRest::Opaque => {
                    new_world_record(&String::from_utf8_lossy(&key[WORLD_PREFIX.len()..]))
                }
                at_rest => {
                    let plain = unseal(at_rest, &key, &value)?;
                    serde_json::from_slice(&plain).map_err(|e| corrupt(&key, e))?
                }
            };
            worlds.insert(record.world.clone(), WorldState { record, atoms: 0, stored: true });
        }
        let mut total = 0u64;
        for item in db.scan_prefix(LOG_PREFIX) {
            let (key, _) = item.map_err(sled_err("counting atoms"))?;
            if let Some(world) = world_of_log_key(&key) {
                total += 1;
                let state = worlds.entry(world.to_owned()).or_insert_with(|| WorldState {
                    record: new_world_record(world),
                    atoms: 0,
                    stored: false,
                });
                state.atoms += 1;
            }
        }

        if !matches!(opts.at_rest, AtRest::Opaque) {
            total -= drop_torn_tail(&db, &mut worlds)?;
        }

        let (flush_tx, flush_rx) = mpsc::channel();
        let flusher_db = db.clone();
        let flushes = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicU64::new(0));
        let (flusher_count, flusher_pending) = (flushes.clone(), pending.clone());
        let flusher = std::thread::Builder::new()
            .name("dwbase-flush".into())
            .spawn(move || group_commit(flusher_db, flush_rx, flusher_count, flusher_pending))
            .map_err(|e| StorageError::Open { dir: dir.clone(), source: sled::Error::Io(e) })?;

        Ok(Store {
            db,
            dir,
            write_lock: tokio::sync::Mutex::new(()),
            flush_tx: Some(flush_tx),
            pending,
            flusher: Some(flusher),
            worlds: RwLock::new(worlds),
            atoms: AtomicU64::new(total),
            bytes_written: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            flushes,
            at_rest: opts.at_rest.clone(),
        })
    }

    /// Whether values are encrypted, and under which key id.
    pub fn encryption_key_id(&self) -> Option<&str> {
        match &self.at_rest {
            AtRest::Encrypted(c) => Some(c.key_id()),
            _ => None,
        }
    }

    /// The stored form of `plain` under `key`.
    fn seal(&self, key: &[u8], plain: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        match &self.at_rest {
            AtRest::Plain => Ok(plain),
            AtRest::Encrypted(c) => Ok(c.seal(key, &plain)),
            AtRest::Opaque => Err(StorageError::Opaque { dir: self.dir.clone() }),
        }
    }

    fn decode_atom(&self, key: &[u8], bytes: &[u8]) -> Result<Atom, StorageError> {
        let plain = unseal(&self.at_rest, key, bytes).map_err(|e| match e {
            StorageError::Opaque { .. } => StorageError::Opaque { dir: self.dir.clone() },
            e => e,
        })?;
        serde_json::from_slice(&plain).map_err(|e| corrupt(key, e))
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Atoms stored.
    pub fn atom_count(&self) -> u64 {
        self.atoms.load(Ordering::Relaxed)
    }

    /// Bytes of atom data written since start (for disk-cap estimates between samples).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Group-commit flushes done since start.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Whether the last storage operation succeeded, and the last error if not.
    pub fn health(&self) -> Result<(), String> {
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(self
            .last_error
            .lock()
            .map(|e| e.clone().unwrap_or_default())
            .unwrap_or_else(|_| "unknown".into()))
    }

    /// A cheap read that proves the store answers.
    pub fn probe(&self) -> Result<(), String> {
        match self.db.get(FORMAT_KEY) {
            Ok(Some(_)) => self.health(),
            Ok(None) => Err("format marker missing".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn note<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        match &result {
            Ok(_) => {}
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
        result
    }

    /// Stores `atom` if its id is free, then waits until it is durable. A world seen for the
    /// first time gets its record in the same batch (so replicated worlds show up too).
    pub async fn insert_new(&self, atom: &Atom) -> Result<Inserted, StorageError> {
        self.insert_new_announced(atom, self.announce_write()).await
    }

    /// Announces a write that is about to happen: while any announced write has not yet asked
    /// for its flush, the group-commit flusher lingers (briefly) so one `fsync` covers it too.
    /// Take it as early as possible (the remember route takes it before validation) and hand it
    /// to [`Store::insert_new_announced`]; dropping it withdraws the announcement.
    pub fn announce_write(&self) -> PendingWrite<'_> {
        PendingWrite::start(&self.pending)
    }

    /// [`Store::insert_new`] for a write announced with [`Store::announce_write`].
    pub async fn insert_new_announced(
        &self,
        atom: &Atom,
        pending: PendingWrite<'_>,
    ) -> Result<Inserted, StorageError> {
        let key = atom_key(&atom.id);
        let json = serde_json::to_vec(atom)
            .map_err(|e| StorageError::Corrupt { key: atom.id.clone(), message: e.to_string() })?;
        let bytes = self.seal(&key, json)?;
        {
            let _guard = self.write_lock.lock().await;
            if self.db.contains_key(&key).map_err(sled_err("checking id"))? {
                return Ok(Inserted::Exists);
            }
            let seq = self.note(self.db.generate_id().map_err(sled_err("generating seq")))?;
            let new_world = {
                let worlds = self.worlds.read().unwrap_or_else(|p| p.into_inner());
                (!worlds.contains_key(&atom.world)).then(|| new_world_record(&atom.world))
            };
            let world_json = match &new_world {
                Some(record) => {
                    let wkey = world_key(&atom.world);
                    let json = self.seal(&wkey, serde_json::to_vec(record).unwrap_or_default())?;
                    Some((wkey, json))
                }
                None => None,
            };
            // Log entry, atom, world record: the order recovery relies on (module docs).
            let lkey = log_key(&atom.world, seq);
            self.note(self.db.insert(&lkey, atom.id.as_bytes()).map_err(sled_err("writing log")))?;
            if let Err(e) = self.db.insert(&key, bytes.as_slice()) {
                // Withdraw the entry so it does not point at nothing (best effort: sled is failing).
                let _ = self.db.remove(&lkey);
                return self.note(Err(sled_err("writing atom")(e)));
            }
            if let Some((wkey, json)) = world_json {
                self.note(self.db.insert(wkey, json).map_err(sled_err("writing world")))?;
            }
            if let Some(record) = new_world {
                // Known in memory at once, so the next writer does not write the record again.
                let mut worlds = self.worlds.write().unwrap_or_else(|p| p.into_inner());
                worlds.entry(atom.world.clone()).or_insert(WorldState {
                    record,
                    atoms: 0,
                    stored: true,
                });
            }
        };
        // Stop counting as pending first, then ask: a flusher lingering for us sees the request.
        drop(pending);
        self.flush().await?;
        {
            let mut worlds = self.worlds.write().unwrap_or_else(|p| p.into_inner());
            let state = worlds.entry(atom.world.clone()).or_insert_with(|| WorldState {
                record: new_world_record(&atom.world),
                atoms: 0,
                stored: false,
            });
            state.atoms += 1;
        }
        self.atoms.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes.len() as u64 + 64, Ordering::Relaxed);
        Ok(Inserted::Stored)
    }

    /// Waits for a flush that covers every write applied before this call (group commit).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.request_flush()?.await
    }

    /// Queues a flush request now; the returned future resolves when it is done.
    fn request_flush(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<(), StorageError>> + '_, StorageError>
    {
        let (tx, rx) = oneshot::channel();
        let sender = self.flush_tx.as_ref().ok_or(StorageError::Closed)?;
        sender.send(tx).map_err(|_| StorageError::Closed)?;
        Ok(async move {
            let result = match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StorageError::Flush(e)),
                Err(_) => Err(StorageError::Closed),
            };
            self.note(result)
        })
    }

    /// Bulk conversion ([`crate::migrate`]): appends `atoms` in order (each after the previous in
    /// its world's log; ids already stored are skipped) and writes `records` (replacing the
    /// worlds' records), all in one batch, without waiting for a flush: call
    /// [`Store::flush_blocking`] once at the end. Returns how many atoms were stored. Blocking.
    pub fn import_blocking(
        &self,
        atoms: &[Atom],
        records: &[WorldRecord],
    ) -> Result<u64, StorageError> {
        let _guard = self.write_lock.blocking_lock();
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::new();
        let mut per_world: BTreeMap<&str, u64> = BTreeMap::new();
        let mut bytes_total = 0u64;
        for atom in atoms {
            let key = atom_key(&atom.id);
            if !seen.insert(atom.id.as_str())
                || self.db.contains_key(&key).map_err(sled_err("checking id"))?
            {
                continue;
            }
            let json = serde_json::to_vec(atom).map_err(|e| corrupt(&key, e))?;
            let sealed = self.seal(&key, json)?;
            bytes_total += sealed.len() as u64 + 64;
            let seq = self.db.generate_id().map_err(sled_err("generating seq"))?;
            batch.insert(key, sealed);
            batch.insert(log_key(&atom.world, seq), atom.id.as_bytes());
            *per_world.entry(atom.world.as_str()).or_default() += 1;
        }
        let mut worlds = self.worlds.write().unwrap_or_else(|p| p.into_inner());
        let mut new_records: Vec<WorldRecord> = records.to_vec();
        for world in per_world.keys() {
            if !worlds.contains_key(*world) && !records.iter().any(|r| r.world == *world) {
                new_records.push(new_world_record(world));
            }
        }
        for record in &new_records {
            let wkey = world_key(&record.world);
            let json = self.seal(&wkey, serde_json::to_vec(record).unwrap_or_default())?;
            batch.insert(wkey, json);
        }
        self.note(self.db.apply_batch(batch).map_err(sled_err("importing atoms")))?;
        for record in new_records {
            match worlds.get_mut(&record.world) {
                Some(state) => {
                    state.record = record;
                    state.stored = true;
                }
                None => {
                    worlds.insert(
                        record.world.clone(),
                        WorldState { record, atoms: 0, stored: true },
                    );
                }
            }
        }
        let mut stored = 0;
        for (world, n) in per_world {
            if let Some(state) = worlds.get_mut(world) {
                state.atoms += n;
            }
            stored += n;
        }
        self.atoms.fetch_add(stored, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes_total, Ordering::Relaxed);
        Ok(stored)
    }

    /// Checks that every log entry reaches a stored atom and every atom is in a log, and that
    /// every atom decodes; with `repair`, removes the dangling entries and appends each unlogged
    /// atom to its world's log (oldest first). Blocking; writers wait meanwhile.
    pub fn check_log(&self, repair: bool) -> Result<LogScan, StorageError> {
        let _guard = self.write_lock.blocking_lock();
        let mut scan = LogScan::default();
        let mut logged = std::collections::HashSet::new();
        let mut dangling_keys = Vec::new();
        for item in self.db.scan_prefix(LOG_PREFIX) {
            let (key, id) = item.map_err(sled_err("reading log"))?;
            scan.log_entries += 1;
            if self
                .db
                .contains_key([ATOM_PREFIX, &id].concat())
                .map_err(sled_err("reading atom"))?
            {
                logged.insert(id.to_vec());
            } else {
                scan.dangling.push(String::from_utf8_lossy(&id).into_owned());
                dangling_keys.push(key);
            }
        }
        let mut unlogged = Vec::new();
        for item in self.db.scan_prefix(ATOM_PREFIX) {
            let (key, bytes) = item.map_err(sled_err("scanning atoms"))?;
            scan.atoms += 1;
            match self.decode_atom(&key, &bytes) {
                Ok(atom) if !logged.contains(atom.id.as_bytes()) => unlogged.push(atom),
                Ok(_) => {}
                Err(_) => scan.undecodable.push(String::from_utf8_lossy(&key).into_owned()),
            }
        }
        unlogged.sort_by_key(Atom::timestamp_ms);
        scan.unlogged = unlogged.iter().map(|a| a.id.clone()).collect();
        if repair && (!dangling_keys.is_empty() || !unlogged.is_empty()) {
            let mut batch = sled::Batch::default();
            for key in dangling_keys {
                batch.remove(key);
            }
            for atom in &unlogged {
                let seq = self.db.generate_id().map_err(sled_err("generating seq"))?;
                batch.insert(log_key(&atom.world, seq), atom.id.as_bytes());
            }
            self.note(self.db.apply_batch(batch).map_err(sled_err("repairing the log")))?;
            self.flush_blocking()?;
            scan.repaired = true;
        }
        Ok(scan)
    }

    /// Flushes synchronously (shutdown path).
    pub fn flush_blocking(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(sled_err("flushing"))
    }

    /// The atom with `id`, if stored.
    pub fn get(&self, id: &str) -> Result<Option<Atom>, StorageError> {
        let key = atom_key(id);
        match self.db.get(&key).map_err(sled_err("reading atom"))? {
            Some(bytes) => self.decode_atom(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Atoms of `world` in append order that pass `filter`, up to `filter.limit`.
    pub fn replay(&self, world: &str, filter: &CompiledFilter) -> Result<Vec<Atom>, StorageError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.db.scan_prefix(log_prefix(world)) {
            let (_, id) = item.map_err(sled_err("reading log"))?;
            let key = [ATOM_PREFIX, &id].concat();
            let Some(bytes) = self.db.get(&key).map_err(sled_err("reading atom"))? else {
                continue;
            };
            let atom = self.decode_atom(&key, &bytes)?;
            if filter.matches_atom(&atom) {
                out.push(atom);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every stored atom, in id order, in chunks (index rebuild). `f` returns false to stop.
    pub fn for_each_atom(
        &self,
        chunk: usize,
        mut f: impl FnMut(Vec<Atom>) -> bool,
    ) -> Result<(), StorageError> {
        let mut buf = Vec::with_capacity(chunk);
        for item in self.db.scan_prefix(ATOM_PREFIX) {
            let (key, bytes) = item.map_err(sled_err("scanning atoms"))?;
            match self.decode_atom(&key, &bytes) {
                Ok(atom) => buf.push(atom),
                Err(e) => tracing::warn!(error = %e, "skipping undecodable atom"),
            }
            if buf.len() >= chunk && !f(std::mem::replace(&mut buf, Vec::with_capacity(chunk))) {
                return Ok(());
            }
        }
        if !buf.is_empty() {
            f(buf);
        }
        Ok(())
    }

    /// All world records with their atom counts, sorted by name.
    pub fn worlds(&self) -> Vec<(WorldRecord, u64)> {
        let worlds = self.worlds.read().unwrap_or_else(|p| p.into_inner());
        worlds.values().map(|s| (s.record.clone(), s.atoms)).collect()
    }

    /// One world's record.
    pub fn world(&self, name: &str) -> Option<WorldRecord> {
        let worlds = self.worlds.read().unwrap_or_else(|p| p.into_inner());
        worlds.get(name).map(|s| s.record.clone())
    }

    /// Applies `change` to the world's record (creating it when `create`), then persists it
    /// durably. Returns the new record and whether it was created, or `None` when the world is
    /// unknown and `create` is false.
    pub async fn update_world(
        &self,
        name: &str,
        create: bool,
        change: impl FnOnce(&mut WorldRecord),
    ) -> Result<Option<(WorldRecord, bool)>, StorageError> {
        let (record, created) = {
            let _guard = self.write_lock.lock().await;
            let mut worlds = self.worlds.write().unwrap_or_else(|p| p.into_inner());
            let created = !worlds.contains_key(name);
            if created && !create {
                return Ok(None);
            }
            let mut record =
                worlds.get(name).map_or_else(|| new_world_record(name), |s| s.record.clone());
            change(&mut record);
            let wkey = world_key(name);
            let json = self.seal(&wkey, serde_json::to_vec(&record).unwrap_or_default())?;
            self.note(self.db.insert(wkey, json).map_err(sled_err("writing world")))?;
            let state = worlds.entry(name.to_owned()).or_insert_with(|| WorldState {
                record: record.clone(),
                atoms: 0,
                stored: true,
            });
            state.record = record.clone();
            state.stored = true;
            (record, created)
        };
        self.flush().await?;
        Ok(Some((record, created)))
    }

    /// Stores a world policy (creating the world record if needed).
    pub async fn set_policy(&self, policy: WorldPolicy) -> Result<WorldRecord, StorageError> {
        let name = policy.world.clone();
        let (record, _) = self
            .update_world(&name, true, |r| r.policy = Some(policy))
            .await?
            .expect("create=true always yields a record");
        Ok(record)
    }

    /// Size sled reports for its files.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Runs `f` on the sled database with every writer paused (the lock each write holds to
    /// apply its batch), for consistent snapshots ([`crate::snapshot`]): `f` sees exactly the
    /// writes applied before it started — every acknowledged one — and none half applied.
    /// Writers wait (they are not refused) until `f` returns; reads go on. Blocking.
    pub fn with_writes_paused<T>(&self, f: impl FnOnce(&sled::Db) -> T) -> T {
        // Called from a blocking thread (or outside any runtime): never from async code.
        let _guard = self.write_lock.blocking_lock();
        f(&self.db)
    }
}

impl Drop for Store {
    /// Stops the flusher thread and waits for it, so that the sled lock is released when the
    /// store is gone (a reopen in the same process then succeeds).
    fn drop(&mut self) {
        drop(self.flush_tx.take());
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
        let _ = self.db.flush();
    }
}

fn new_world_record(world: &str) -> WorldRecord {
    WorldRecord {
        world: world.to_owned(),
        description: None,
        labels: Vec::new(),
        archived: false,
        created_at: now_rfc3339(),
        policy: None,
    }
}

/// What [`Store::check_log`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogScan {
    /// Atoms stored.
    pub atoms: u64,
    /// Log entries.
    pub log_entries: u64,
    /// Ids of log entries whose atom is missing.
    pub dangling: Vec<String>,
    /// Ids of atoms no log entry reaches.
    pub unlogged: Vec<String>,
    /// Keys of atoms that do not decode.
    pub undecodable: Vec<String>,
    /// Whether the log was repaired.
    pub repaired: bool,
}

/// An announced write (see [`Store::announce_write`]): counted from its start until its flush
/// request, so the group-commit flusher can wait for it.
pub struct PendingWrite<'a>(&'a AtomicU64);

impl<'a> PendingWrite<'a> {
    fn start(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        PendingWrite(counter)
    }
}

impl Drop for PendingWrite<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest a flush waits for writers that are about to ask for one.
const LINGER_MAX: Duration = Duration::from_micros(300);

/// The group-commit loop: take every queued flush request, do one flush, answer them all.
///
/// When other writers are mid-write (they will ask for a flush within microseconds) the
/// flusher lingers up to [`LINGER_MAX`] for them, so one `fsync` serves the whole group. A lone
/// writer never waits: with nothing pending the flush starts at once.
fn group_commit(
    db: sled::Db,
    rx: mpsc::Receiver<FlushReply>,
    count: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
) {
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        let linger_until = Instant::now() + LINGER_MAX;
        loop {
            while let Ok(more) = rx.try_recv() {
                waiting.push(more);
            }
            let now = Instant::now();
            if pending.load(Ordering::SeqCst) == 0 || now >= linger_until {
                break;
            }
            match rx.recv_timeout(linger_until - now) {
                Ok(more) => waiting.push(more),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        count.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(writers = waiting.len(), elapsed = ?started.elapsed(), "group commit");
        for reply in waiting.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AtomFilter, AtomKind};

    fn opts(dir: &Path) -> StoreOptions {
        StoreOptions { dir: dir.to_path_buf(), cache_bytes: 8 << 20, at_rest: AtRest::Plain }
    }

    fn atom(id: &str, world: &str, text: &str) -> Atom {
        Atom {
            id: id.into(),
            world: world.into(),
            worker: "w".into(),
            kind: AtomKind::Observation,
            timestamp: now_rfc3339(),
            importance: 0.5,
            payload_json: text.into(),
            vector: None,
            flags: vec![],
            labels: vec![],
            links: vec![],
        }
    }

    fn all() -> CompiledFilter {
        AtomFilter::default().compile().unwrap()
    }

    #[tokio::test]
    async fn insert_get_replay_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&opts(dir.path())).unwrap();
            for (i, id) in ["c", "a", "b"].iter().enumerate() {
                let r = store.insert_new(&atom(id, "w1", &format!("t{i}"))).await.unwrap();
                assert!(matches!(r, Inserted::Stored));
            }
            store.insert_new(&atom("z", "w2", "other")).await.unwrap();
            // Same id again: nothing written.
            let again = store.insert_new(&atom("a", "w1", "dup")).await.unwrap();
            assert!(matches!(again, Inserted::Exists));
            assert_eq!(store.get("a").unwrap().unwrap().payload_json, "t1");
            assert!(store.get("nope").unwrap().is_none());
        }
        let store = Store::open(&opts(dir.path())).unwrap();
        assert_eq!(store.atom_count(), 4);
        let ids: Vec<_> = store.replay("w1", &all()).unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["c", "a", "b"], "append order, not id order");
        let worlds: Vec<_> = store.worlds().into_iter().map(|(r, n)| (r.world, n)).collect();
        assert_eq!(worlds, [("w1".to_owned(), 3), ("w2".to_owned(), 1)]);
        let mut limited = all();
        limited.limit = Some(2);
        assert_eq!(store.replay("w1", &limited).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn world_prefixes_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&opts(dir.path())).unwrap();
        store.insert_new(&atom("1", "ab", "x")).await.unwrap();
        store.insert_new(&atom("2", "abc", "y")).await.unwrap();
        assert_eq!(store.replay("ab", &all()).unwrap().len(), 1);
        assert_eq!(store.replay("abc", &all()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn second_open_fails_with_the_dir_named() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(&opts(dir.path())).unwrap();
        let started = Instant::now();
        let err = Store::open(&opts(dir.path())).err().expect("second open must fail");
        assert!(started.elapsed().as_secs() < 5, "must not hang");
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(matches!(err, StorageError::Locked { .. }), "{msg}");
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&opts(dir.path())).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.insert_new(&atom(&format!("id{i}"), "w", "x")).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.atom_count(), 64);
        assert!(store.flush_count() <= 64);
    }

    /// What a crash between a remember's first and second insert leaves (module docs): a log
    /// entry, last in its world, whose atom was never written. The next open removes it.
    #[tokio::test]
    async fn a_torn_last_remember_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&opts(dir.path())).unwrap();
            for id in ["a", "b", "c"] {
                store.insert_new(&atom(id, "w1", id)).await.unwrap();
            }
        }
        {
            let db = open_sled(dir.path(), 8 << 20).unwrap();
            let seq = db.generate_id().unwrap();
            db.insert(log_key("w1", seq), b"torn".as_slice()).unwrap();
            // The first atom of a new world, torn the same way: no record, no atom.
            db.insert(log_key("ghost", seq + 1), b"torn2".as_slice()).unwrap();
            db.flush().unwrap();
        }
        {
            let store = Store::open(&opts(dir.path())).unwrap();
            assert_eq!(store.atom_count(), 3);
            let ids: Vec<_> =
                store.replay("w1", &all()).unwrap().into_iter().map(|a| a.id).collect();
            assert_eq!(ids, ["a", "b", "c"]);
            let worlds: Vec<_> = store.worlds().into_iter().map(|(r, n)| (r.world, n)).collect();
            assert_eq!(worlds, [("w1".to_owned(), 3)]);
            // check_log blocks (it takes the write lock): off the runtime's thread.
            let scan =
                std::thread::scope(|s| s.spawn(|| store.check_log(false)).join()).unwrap().unwrap();
            assert!(scan.dangling.is_empty() && scan.unlogged.is_empty(), "{scan:?}");
            store.insert_new(&atom("d", "w1", "d")).await.unwrap();
        }
        let store = Store::open(&opts(dir.path())).unwrap();
        assert_eq!(store.atom_count(), 4, "the repair was durable and writes go on");
    }

    #[tokio::test]
    async fn a_group_of_writers_shares_one_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&opts(dir.path())).unwrap());
        // Every writer announced before any asks for a flush: the flusher lingers for all.
        let announced: Vec<_> = (0..16).map(|_| store.announce_write()).collect();
        let before = store.flush_count();
        let writes = announced.into_iter().enumerate().map(|(i, a)| {
            let store = store.clone();
            async move {
                let atom = atom(&format!("g{i}"), "w", "x");
                store.insert_new_announced(&atom, a).await.unwrap();
            }
        });
        futures::future::join_all(writes).await;
        assert_eq!(store.atom_count(), 16);
        let flushes = store.flush_count() - before;
        assert!(flushes < 16, "{flushes} flushes for 16 writers announced together");
    }

    #[tokio::test]
    async fn world_updates_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&opts(dir.path())).unwrap();
            assert!(store.update_world("w", false, |_| {}).await.unwrap().is_none());
            let (rec, created) = store
                .update_world("w", true, |r| r.description = Some("d".into()))
                .await
                .unwrap()
                .unwrap();
            assert!(created && rec.description.as_deref() == Some("d"));
            store.update_world("w", false, |r| r.archived = true).await.unwrap().unwrap();
        }
        let store = Store::open(&opts(dir.path())).unwrap();
        assert!(store.world("w").unwrap().archived);
    }
}
