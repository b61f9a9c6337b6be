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
//! next group's writes go on. A lone writer (no other write announced, nothing queued on that
//! thread, the last group a single writer) flushes on its own blocking thread instead, saving
//! the hand-off to the flusher thread and back; the blocking thread answers its request through
//! a bell ([`Bells`]: a byte on a socket pair, heard by the runtime's I/O driver), which wakes
//! one async worker where a join handle woke two. The flush itself writes and syncs sled's log
//! buffer on the thread that asked for it (our sled copy, node/vendor/README.md: upstream hands
//! that write to its I/O pool and wakes all seven of the pool's idle threads for it). Ids are
//! ULIDs (time + 80 random bits) and are checked against the store before use, so ids never
//! repeat across restarts; `seq` comes from sled's persisted id generator, which never goes
//! backwards either.
//!
//! # When the disk fills up or fails
//!
//! sled stops for good at its first I/O error (it answers every later write with that error
//! until it is reopened). So an I/O error on the write path puts the store in a *failed*
//! state: writes are refused at once, 507 for "no space left" and 503 for other errors, while
//! reads, `/healthz`, `/readyz` and `/metrics` keep answering; [`Store::try_recover`] (run by
//! the node's disk watch) reopens sled once there is room again, so writes resume by
//! themselves, without a restart. Acknowledged writes were flushed before their answer, so a
//! reopen keeps every one of them. sled runs on blocking threads, never on the async workers,
//! and a write that is not durable within [`COMMIT_TIMEOUT`] is answered 503. A commit path
//! stuck for [`COMMIT_STALL`] makes [`Store::stalled`] (and so `/healthz`) fail, so that
//! liveness restarts the node. See [`crate::disk`] for the free-space reserve checked before
//! every write and the ballast kept for sled's reopen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::crypto::{self, Cipher, CryptoError, KeyError};
use crate::disk::{self, DiskGuard, NoRoom};
use crate::health;
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
    #[error("flushing to disk: {message}")]
    Flush {
        /// The cause.
        message: String,
        /// Whether it was "no space left on device".
        no_space: bool,
    },
    /// An earlier I/O error stopped the store; writes are refused until it is reopened.
    #[error("{message}")]
    Failed {
        /// What happened, and what brings writes back.
        message: String,
        /// Whether the cause is "no space left on device" (507 rather than 503).
        no_space: bool,
    },
    /// Not enough free space for the write (the reserve, see [`crate::disk`]).
    #[error("{}", .0.message)]
    NoRoom(NoRoom),
    /// The write did not become durable within [`COMMIT_TIMEOUT`].
    #[error(
        "the store did not confirm the write within {}s (disk stalled or very slow); it was not \
         acknowledged and may or may not be stored",
        COMMIT_TIMEOUT.as_secs()
    )]
    CommitTimeout,
    /// The write waited [`LOCK_WAIT`] for its turn.
    #[error(
        "the write waited {}s for its turn (a snapshot or a stuck write holds the store); it \
         was not stored",
        LOCK_WAIT.as_secs()
    )]
    LockTimeout,
    /// sled could not open the data dir for lack of space.
    #[error(
        "opening sled store in {dir}: no space left on its filesystem ({free} free, {ballast}): \
         free space on that filesystem (or grow it) and start the node again"
    )]
    OpenNoSpace {
        /// The data dir.
        dir: PathBuf,
        /// Free space then.
        free: String,
        /// Whether a ballast was released.
        ballast: &'static str,
    },
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

impl StorageError {
    /// Whether the cause is "no space left on device" (or a full quota): 507, not 503.
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Open { source, .. } | StorageError::Sled { source, .. } => {
                matches!(source, sled::Error::Io(e) if disk::is_no_space(e))
            }
            StorageError::Flush { no_space, .. } | StorageError::Failed { no_space, .. } => {
                *no_space
            }
            StorageError::NoRoom(_) | StorageError::OpenNoSpace { .. } => true,
            _ => false,
        }
    }

    /// Whether this error from a write means sled has stopped (it refuses every write after
    /// its first I/O error until reopened).
    fn stops_store(&self) -> bool {
        matches!(self, StorageError::Sled { .. } | StorageError::Flush { .. })
    }
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

/// A failed group commit: the message, and whether it was "no space left".
#[derive(Debug, Clone)]
struct FlushFailure {
    message: String,
    no_space: bool,
}

type FlushReply = oneshot::Sender<Result<(), FlushFailure>>;

/// Outcome of [`Store::insert_new`].
#[derive(Debug)]
pub enum Inserted {
    /// Stored and durable.
    Stored,
    /// An atom with this id already exists (nothing written).
    Exists,
}

/// How long a write may take from its turn at the write lock to its durable answer.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Free space (beyond reserve and ballast, counted twice as a write would be) a store stopped
/// by "no space left" waits for before it reopens.
pub const RECOVERY_HEADROOM: u64 = 1 << 20;
/// How long a write waits for its turn at the write lock (a snapshot holds it while it copies
/// the store; writers wait rather than being refused) before it is answered 503.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);
/// A batch apply or flush running this long means the commit path is stuck: `/healthz` fails.
pub const COMMIT_STALL: Duration = Duration::from_secs(15);
/// A read inside one sled call this long is answered 503 (it goes on in the background; if it
/// stays stuck for [`COMMIT_STALL`] the store counts as stuck).
pub const READ_STALL: Duration = Duration::from_secs(5);
/// How long [`Store::probe`] waits for its read before answering that the store does not
/// answer (the read goes on in the background, one at a time).
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// A step of the store that has been stuck: what, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// What is stuck ("flushing", "a read", …).
    pub what: &'static str,
    /// Since when it made no progress.
    pub stuck_for: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the store is stuck: {} has made no progress for {:.0}s (more than {}s)",
            self.what,
            self.stuck_for.as_secs_f64(),
            COMMIT_STALL.as_secs()
        )
    }
}

/// Reads of the API in flight, each with the time its current call into sled started (ms
/// since the epoch + 1; 0 while it is not inside sled), so that a read stuck inside sled is
/// seen ([`Store::stalled`]) and answered ([`ReadOp::stuck_for`]). Only time inside sled
/// counts: a read waiting for the index lock or a blocking thread is not stuck in the store.
#[derive(Debug)]
struct ReadOps {
    epoch: Instant,
    next: AtomicU64,
    ops: Mutex<std::collections::HashMap<u64, Arc<AtomicU64>>>,
}

impl ReadOps {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn stuck_for(&self, since: &AtomicU64) -> Option<Duration> {
        let since = since.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(since - 1)))
    }

    /// The longest time any read in flight has been inside one sled call.
    fn longest(&self) -> Option<Duration> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.values().filter_map(|t| self.stuck_for(t)).max()
    }
}

thread_local! {
    /// The read op the store's sled calls on this thread are timed for ([`ReadOp::run`]).
    static CURRENT_READ: std::cell::RefCell<Option<(Arc<ReadOps>, Arc<AtomicU64>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs one call into sled, timed for the read op running on this thread (if any).
fn in_sled<T>(f: impl FnOnce() -> T) -> T {
    let current = CURRENT_READ.with(|c| c.borrow().clone());
    match current {
        None => f(),
        Some((ops, since)) => {
            since.store(ops.now_ms().saturating_add(1), Ordering::Relaxed);
            let out = f();
            since.store(0, Ordering::Relaxed);
            out
        }
    }
}

/// One read of the API (ask, replay, get), registered from its creation until its last clone
/// is dropped; see [`Store::read_op`].
#[derive(Debug, Clone)]
pub struct ReadOp {
    ops: Arc<ReadOps>,
    since: Arc<AtomicU64>,
    _registered: Arc<ReadOpEntry>,
}

/// Removes a [`ReadOp`] from the registry when its last clone is dropped.
#[derive(Debug)]
struct ReadOpEntry {
    ops: Arc<ReadOps>,
    id: u64,
}

impl Drop for ReadOpEntry {
    fn drop(&mut self) {
        self.ops.ops.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl ReadOp {
    /// Runs `f` (blocking) with the store's sled calls on this thread timed for this op.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        CURRENT_READ.with(|c| *c.borrow_mut() = Some((self.ops.clone(), self.since.clone())));
        let out = f();
        CURRENT_READ.with(|c| *c.borrow_mut() = None);
        out
    }

    /// How long this read has been inside its current sled call (zero when outside sled).
    pub fn stuck_for(&self) -> Duration {
        self.ops.stuck_for(&self.since).unwrap_or_default()
    }
}

/// [`Store::probe`]'s background read.
#[derive(Debug, Default)]
struct ProbeState {
    /// When the read in flight started (`None`: none in flight).
    running_since: Option<Instant>,
}

/// The sled database, replaced when the store is reopened after an I/O error.
#[derive(Default)]
struct DbSlot(RwLock<Option<sled::Db>>);

impl DbSlot {
    fn get(&self) -> Option<sled::Db> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why the store stopped accepting writes.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    no_space: bool,
    since: Instant,
    /// Whether sled has been reopened since (reads work again; after "no space left",
    /// writes wait for room).
    reopened: bool,
    /// Atoms counted when it stopped.
    atoms: u64,
}

/// When a step of the commit path started (ms since the store's epoch + 1; 0 = not running).
#[derive(Debug)]
struct Busy {
    epoch: Instant,
    since: AtomicU64,
}

impl Busy {
    fn new(epoch: Instant) -> Self {
        Self { epoch, since: AtomicU64::new(0) }
    }
    fn start(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since.store(ms.saturating_add(1), Ordering::Relaxed);
    }
    fn stop(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
    fn running_for(&self) -> Option<Duration> {
        let since = self.since.load(Ordering::Relaxed);
        (since != 0).then(|| {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(now.saturating_sub(since - 1))
        })
    }
}

/// The node's durable store.
pub struct Store {
    db: Arc<DbSlot>,
    dir: PathBuf,
    cache_bytes: u64,
    /// Serializes "check id is free, apply batch" so ids and log order stay consistent. An
    /// async mutex: while a snapshot holds it (from a blocking thread), waiting writers park
    /// their tasks instead of blocking the runtime's few worker threads, so reads and probes
    /// keep being served.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// `None` only while dropping.
    flush_tx: Option<mpsc::Sender<FlushReply>>,
    /// Writers that have started a write but not yet asked for its flush (group-commit hint).
    pending: Arc<AtomicU64>,
    /// The flush step, shared with the flusher thread (a lone writer runs it inline).
    commit: Arc<FlushStep>,
    flusher: Option<std::thread::JoinHandle<()>>,
    worlds: Arc<RwLock<BTreeMap<String, WorldState>>>,
    atoms: AtomicU64,
    bytes_written: AtomicU64,
    failure: Mutex<Option<Failure>>,
    /// Set by [`Store::note`] so readers of [`Store::health`] need no lock.
    failed: AtomicBool,
    flushes: Arc<AtomicU64>,
    at_rest: AtRest,
    /// The free-space guard (live nodes; offline tools have none).
    disk: Option<Arc<DiskGuard>>,
    applying: Arc<Busy>,
    flushing: Arc<Busy>,
    /// I/O errors seen on the write path, and how many were "no space left".
    io_errors: AtomicU64,
    no_space_errors: AtomicU64,
    recoveries: AtomicU64,
    /// A [`Store::nudge`] thread is running.
    nudging: Arc<AtomicBool>,
    /// [`Store::try_recover`] swapping sled (dropping the old one, opening the new one).
    reopening: Busy,
    /// Reads of the API in flight.
    reads: Arc<ReadOps>,
    /// [`Store::probe`]'s background read.
    probing: Arc<Mutex<ProbeState>>,
    /// Bells for writes waiting on their blocking thread (see [`Bells`]).
    bells: Bells,
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

/// Removes the snapshot files sled left half written (`snap.<lsn>.generating`): when writing
/// one fails (ENOSPC on a full disk) the file stays, and sled 0.34 then takes it for the
/// newest snapshot and refuses to open ("Read corrupted data"). It is only ever a copy being
/// made: the complete snapshot before it and the log stay, and sled rebuilds from them.
fn remove_incomplete_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(file = %entry.path().display(), "removed a snapshot file sled left half written")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a half-written snapshot file")
                }
            }
        }
    }
}

/// Opens sled in `dir`, retrying a held lock for [`LOCK_RETRY`] (then [`StorageError::Locked`]).
pub fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    remove_incomplete_snapshots(dir);
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

/// Opens sled in `dir` and checks and loads what the store needs in memory: the format, the
/// encryption, the world records and atom counts.
fn open_db(
    dir: &Path,
    cache_bytes: u64,
    at_rest: &AtRest,
) -> Result<(sled::Db, BTreeMap<String, WorldState>, u64), StorageError> {
    let db = open_sled(dir, cache_bytes)?;
    if crate::legacy::is_original(&db).map_err(sled_err("checking the store's format"))? {
        let (entries, worlds) =
            crate::legacy::count(&db).map_err(sled_err("counting the original's atoms"))?;
        return Err(StorageError::Original { dir: dir.to_path_buf(), entries, worlds });
    }
    check_at_rest(&db, dir, at_rest)?;
    if db.get(FORMAT_KEY).map_err(sled_err("reading format"))?.is_none() {
        db.insert(FORMAT_KEY, FORMAT_VERSION).map_err(sled_err("writing format"))?;
        db.flush().map_err(sled_err("flushing format"))?;
    }

    // Load world records and count atoms per world from the log.
    let mut worlds = BTreeMap::new();
    for item in db.scan_prefix(WORLD_PREFIX) {
        let (key, value) = item.map_err(sled_err("loading worlds"))?;
        let record: WorldRecord = match at_rest {
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
    if !matches!(at_rest, AtRest::Opaque) {
        total -= drop_torn_tail(&db, &mut worlds)?;
    }
    Ok((db, worlds, total))
}

/// What [`Store::try_recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Atoms counted when the store stopped.
    pub atoms_before: u64,
    /// Atoms found in the reopened store (more when writes applied but not acknowledged
    /// before the failure made it to disk).
    pub atoms_after: u64,
}

impl Store {
    /// Opens (or creates) the store in `opts.dir`. Fails at once, naming the dir, when another
    /// process holds it.
    pub fn open(opts: &StoreOptions) -> Result<Self, StorageError> {
        Self::open_with(opts, None)
    }

    /// [`Store::open`] for a live node: writes are checked against `disk`'s reserve, its
    /// figure is refreshed after group commits (see [`DiskGuard::refresh_after_commit`]), and
    /// when sled cannot open for lack of space its ballast is released and the open tried
    /// again.
    pub fn open_with(
        opts: &StoreOptions,
        disk: Option<Arc<DiskGuard>>,
    ) -> Result<Self, StorageError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::Open { dir: dir.clone(), source: sled::Error::Io(e) })?;
        let opened = match open_db(&dir, opts.cache_bytes, &opts.at_rest) {
            Err(e) if e.is_no_space() => {
                let released = disk.as_ref().is_some_and(|d| d.release_ballast());
                let retried = if released {
                    tracing::warn!(dir = %dir.display(), error = %e, "no space to open the store; trying again with the ballast's room");
                    open_db(&dir, opts.cache_bytes, &opts.at_rest)
                } else {
                    Err(e)
                };
                retried.map_err(|e| {
                    if e.is_no_space() {
                        StorageError::OpenNoSpace {
                            dir: dir.clone(),
                            free: disk::mib(
                                health::disk_usage(&dir).map_or(0, |u| u.available_bytes),
                            ),
                            ballast: if released {
                                "even after releasing the ballast"
                            } else {
                                "no ballast to release"
                            },
                        }
                    } else {
                        e
                    }
                })
            }
            other => other,
        };
        let (db, worlds, total) = opened?;

        let slot = Arc::new(DbSlot(RwLock::new(Some(db))));
        let epoch = Instant::now();
        let flushing = Arc::new(Busy::new(epoch));
        let (flush_tx, flush_rx) = mpsc::channel();
        let flushes = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicU64::new(0));
        let step = Arc::new(FlushStep {
            slot: slot.clone(),
            count: flushes.clone(),
            busy: flushing.clone(),
            inline_busy: Busy::new(epoch),
            disk: disk.clone(),
            queued: AtomicU64::new(0),
            last_group: AtomicU64::new(1),
            served: AtomicU64::new(0),
        });
        let commit = GroupCommit { step: step.clone(), rx: flush_rx, pending: pending.clone() };
        let flusher = std::thread::Builder::new()
            .name("dwbase-flush".into())
            .spawn(move || commit.run())
            .map_err(|e| StorageError::Open { dir: dir.clone(), source: sled::Error::Io(e) })?;

        Ok(Store {
            db: slot,
            dir,
            cache_bytes: opts.cache_bytes,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            flush_tx: Some(flush_tx),
            pending,
            commit: step,
            flusher: Some(flusher),
            worlds: Arc::new(RwLock::new(worlds)),
            atoms: AtomicU64::new(total),
            bytes_written: AtomicU64::new(0),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            flushes,
            at_rest: opts.at_rest.clone(),
            disk,
            applying: Arc::new(Busy::new(epoch)),
            flushing,
            io_errors: AtomicU64::new(0),
            no_space_errors: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            nudging: Arc::new(AtomicBool::new(false)),
            reopening: Busy::new(epoch),
            reads: Arc::new(ReadOps { epoch, next: AtomicU64::new(0), ops: Mutex::default() }),
            probing: Arc::default(),
            bells: Bells::default(),
        })
    }

    /// The sled database (`Err` while it is being reopened).
    fn db(&self) -> Result<sled::Db, StorageError> {
        self.db.get().ok_or_else(|| StorageError::Failed {
            message: "the store is being reopened after an I/O error; retry in a moment".into(),
            no_space: false,
        })
    }

    /// `Err` when an earlier I/O error stopped the store (writes wait for [`Store::try_recover`]).
    fn writable(&self) -> Result<(), StorageError> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match failure {
            None => Ok(()),
            Some(f) => Err(StorageError::Failed {
                message: format!(
                    "writes are refused since the store stopped {:.0}s ago: {}; {}",
                    f.since.elapsed().as_secs_f64(),
                    f.message,
                    if f.no_space {
                        "they resume by themselves once space is freed on its filesystem"
                    } else {
                        "the node reopens it by itself; if this persists, check the disk and \
                         the node's log"
                    }
                ),
                no_space: f.no_space,
            }),
        }
    }

    /// Records a write-path failure: sled stops at its first I/O error, so the store refuses
    /// writes until [`Store::try_recover`] reopens it. After "no space left", the ballast is
    /// released for the reopen.
    fn fail(&self, e: &StorageError) {
        let no_space = e.is_no_space();
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = failure.as_mut() {
            if f.reopened {
                // The reopened sled stopped too (its own housekeeping met the full disk).
                f.reopened = false;
                self.io_errors.fetch_add(1, Ordering::Relaxed);
                if no_space {
                    self.no_space_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        if no_space {
            self.no_space_errors.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(error = %e, no_space, "the store stopped after a write error; writes are refused until it is reopened");
        *failure = Some(Failure {
            message: e.to_string(),
            no_space,
            since: Instant::now(),
            reopened: false,
            atoms: self.atom_count(),
        });
        self.failed.store(true, Ordering::Release);
        drop(failure);
        if no_space {
            if let Some(d) = &self.disk {
                d.release_ballast();
            }
        }
    }

    /// Waits for this write's turn at the write lock, giving up (rather than queueing behind
    /// it) as soon as the store stops, or the write holding the lock has been applying for
    /// [`COMMIT_TIMEOUT`] (a stuck disk), and after [`LOCK_WAIT`] in any case (a long snapshot).
    async fn turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, StorageError> {
        let started = tokio::time::Instant::now();
        loop {
            let lock = self.write_lock.clone().lock_owned();
            if let Ok(guard) = tokio::time::timeout(Duration::from_millis(100), lock).await {
                return Ok(guard);
            }
            self.writable()?;
            if self.applying.running_for().is_some_and(|d| d >= COMMIT_TIMEOUT) {
                return Err(StorageError::CommitTimeout);
            }
            if started.elapsed() >= LOCK_WAIT {
                return Err(StorageError::LockTimeout);
            }
        }
    }

    /// Flushes the stopped sled once on a thread of its own: with sled's error set it returns
    /// at once and wakes every thread waiting in a flush.
    fn nudge(&self) {
        if self.nudging.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(db) = self.db.get() else {
            self.nudging.store(false, Ordering::Release);
            return;
        };
        let done = self.nudging.clone();
        let spawned = std::thread::Builder::new().name("dwbase-nudge".into()).spawn(move || {
            let _ = db.flush();
            done.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.nudging.store(false, Ordering::Release);
        }
    }

    /// I/O errors the write path has met since start: (all, "no space left" among them).
    pub fn io_error_counts(&self) -> (u64, u64) {
        (self.io_errors.load(Ordering::Relaxed), self.no_space_errors.load(Ordering::Relaxed))
    }

    /// Times the store was reopened after a failure.
    pub fn recovery_count(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Whether an I/O error has stopped writes, and whether it was "no space left".
    pub fn failed(&self) -> Option<bool> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.no_space)
    }

    /// `Some(_)` when a step of the store has made no progress for [`COMMIT_STALL`]: a batch
    /// apply, a group-commit flush, a reopen, a read of the API or the health probe's read.
    /// The store library is stuck (sled 0.34 can wedge after "no space left"), and only a
    /// restart helps: `/healthz` fails, and the node exits after
    /// `node.limits.stall_exit_secs` (see [`crate::cli`]). Never blocks: atomics and two
    /// short locks.
    pub fn stalled(&self) -> Option<Stall> {
        let probe = self
            .probing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running_since
            .map(|t| t.elapsed());
        [
            ("applying a write batch", self.applying.running_for()),
            ("a group-commit flush", self.flushing.running_for()),
            ("a lone writer's flush", self.commit.inline_busy.running_for()),
            ("reopening the store", self.reopening.running_for()),
            ("a read", self.reads.longest()),
            ("the health probe's read", probe),
        ]
        .into_iter()
        .filter_map(|(what, d)| d.filter(|d| *d >= COMMIT_STALL).map(|d| (what, d)))
        .max_by_key(|(_, d)| *d)
        .map(|(what, stuck_for)| Stall { what, stuck_for })
    }

    /// Registers a read of the API (see [`ReadOp`]): run it with [`ReadOp::run`] on a blocking
    /// thread and answer 503 when [`ReadOp::stuck_for`] reaches [`READ_STALL`].
    pub fn read_op(&self) -> ReadOp {
        let id = self.reads.next.fetch_add(1, Ordering::Relaxed);
        let since = Arc::new(AtomicU64::new(0));
        self.reads.ops.lock().unwrap_or_else(|p| p.into_inner()).insert(id, since.clone());
        ReadOp {
            ops: self.reads.clone(),
            since,
            _registered: Arc::new(ReadOpEntry { ops: self.reads.clone(), id }),
        }
    }

    /// How long the read stuck the longest has been inside one sled call (`None`: no read is).
    pub fn reads_stuck_for(&self) -> Option<Duration> {
        self.reads.longest()
    }

    /// Brings a stopped store back (the node's disk watch calls it every
    /// [`crate::disk::WATCH_INTERVAL`]; blocking, up to [`LOCK_RETRY`] while sled lets go of
    /// its files). In two steps:
    /// 1. sled is reopened at once (reads work again; a stopped sled may fail them), unless a
    ///    commit step is stuck;
    /// 2. after "no space left", writes stay refused until the free space is back above
    ///    reserve + ballast + [`RECOVERY_HEADROOM`] (so they never eat the room released for
    ///    the store); after another I/O error they resume with the reopen.
    ///
    /// `Ok(None)`: nothing to do or not yet; `Ok(Some(_))` when writes were let back in.
    pub fn try_recover(&self) -> Result<Option<Recovered>, StorageError> {
        let Some((no_space, reopened)) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| (f.no_space, f.reopened))
        else {
            return Ok(None);
        };
        if !reopened {
            if [&*self.flushing, &self.commit.inline_busy, &*self.applying]
                .iter()
                .any(|b| b.running_for().is_some())
            {
                // sled 0.34 can miss the wake-up of a flush waiting when its I/O fails: that
                // thread then waits for ever (holding sled, so no reopen). Any later flush
                // finds the error and wakes every waiter; if one stays stuck past
                // COMMIT_STALL, /healthz fails and liveness restarts the node.
                self.nudge();
                return Ok(None);
            }
            // No writer in the middle of a batch while sled is swapped.
            let Ok(_guard) = self.write_lock.try_lock() else { return Ok(None) };
            self.reopening.start();
            let old = self.db.0.write().unwrap_or_else(|p| p.into_inner()).take();
            drop(old);
            let reopened = open_db(&self.dir, self.cache_bytes, &self.at_rest);
            self.reopening.stop();
            let (db, worlds, total) = match reopened {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the store failed; trying again shortly");
                    if let Some(f) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
                    {
                        f.no_space = f.no_space || e.is_no_space();
                    }
                    return Err(e);
                }
            };
            *self.worlds.write().unwrap_or_else(|p| p.into_inner()) = worlds;
            self.atoms.store(total, Ordering::Relaxed);
            *self.db.0.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
            if let Some(f) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                f.reopened = true;
            }
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(atoms = total, "store reopened after the I/O error; reads served again");
        }
        if no_space {
            if let Some(d) = &self.disk {
                d.refresh();
                if d.room(RECOVERY_HEADROOM).is_err() {
                    return Ok(None);
                }
            }
        }
        let Some(failure) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(None);
        };
        self.failed.store(false, Ordering::Release);
        tracing::info!(down_for = ?failure.since.elapsed(), "writes accepted again");
        Ok(Some(Recovered { atoms_before: failure.atoms, atoms_after: self.atom_count() }))
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

    /// `Err(why)` while an I/O error keeps writes stopped.
    pub fn health(&self) -> Result<(), String> {
        match self.writable() {
            Ok(()) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A cheap read that proves the store answers (and [`Store::health`]). Never waits more
    /// than [`PROBE_WAIT`]: the read runs on a thread of its own (one at a time), and a read
    /// still running is reported, so `/readyz`, `/health` and `/metrics` answer even when sled
    /// is stuck.
    pub fn probe(&self) -> Result<(), String> {
        let db = self.db().map_err(|e| e.to_string())?;
        {
            let mut state = self.probing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(since) = state.running_since {
                return Err(format!(
                    "the store has not answered a read for {:.0}s",
                    since.elapsed().as_secs_f64()
                ));
            }
            state.running_since = Some(Instant::now());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let probing = self.probing.clone();
        let read = move || {
            let r = db.get(FORMAT_KEY);
            probing.lock().unwrap_or_else(|p| p.into_inner()).running_since = None;
            let _ = tx.send(r);
        };
        if let Err(e) = std::thread::Builder::new().name("dwbase-probe".into()).spawn(read) {
            self.probing.lock().unwrap_or_else(|p| p.into_inner()).running_since = None;
            return Err(format!("cannot start the probe's read: {e}"));
        }
        match rx.recv_timeout(PROBE_WAIT) {
            Ok(Ok(Some(_))) => self.health(),
            Ok(Ok(None)) => Err("format marker missing".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the store did not answer a read within {}s (disk stalled or store stuck)",
                PROBE_WAIT.as_secs()
            )),
        }
    }

    /// Passes `result` on; a write-path error stops the store (see [`Store::fail`]).
    fn note<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &result {
            if e.stops_store() {
                self.fail(e);
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
    ///
    /// Refused at once when the store is stopped or the disk is below its reserve; answered
    /// within [`COMMIT_TIMEOUT`] of its turn otherwise. sled runs on a blocking thread, so a
    /// stuck disk never stalls the async workers that serve reads and probes.
    pub async fn insert_new_announced(
        &self,
        atom: &Atom,
        pending: PendingWrite<'_>,
    ) -> Result<Inserted, StorageError> {
        self.writable()?;
        let key = atom_key(&atom.id);
        let json = serde_json::to_vec(atom)
            .map_err(|e| StorageError::Corrupt { key: atom.id.clone(), message: e.to_string() })?;
        let bytes = self.seal(&key, json)?;
        let written = bytes.len() as u64 + 64;
        if let Some(d) = &self.disk {
            d.admit(written).map_err(StorageError::NoRoom)?;
        }
        let guard = self.turn().await?;
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        self.writable()?;
        let db = self.db()?;
        let (worlds, applying) = (self.worlds.clone(), self.applying.clone());
        let new_world = {
            let worlds = worlds.read().unwrap_or_else(|p| p.into_inner());
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
        let (world, id) = (atom.world.clone(), atom.id.clone());
        let (step, writers) = (self.commit.clone(), self.pending.clone());
        let apply = move || {
            applying.start();
            let result = (|| {
                if db.contains_key(&key).map_err(sled_err("checking id"))? {
                    return Ok(false);
                }
                let seq = db.generate_id().map_err(sled_err("generating seq"))?;
                // Log entry, atom, world record: the order recovery relies on (module docs).
                let lkey = log_key(&world, seq);
                db.insert(&lkey, id.as_bytes()).map_err(sled_err("writing log"))?;
                if let Err(e) = db.insert(&key, bytes) {
                    // Withdraw the entry so it does not point at nothing (best effort: sled
                    // is failing).
                    let _ = db.remove(&lkey);
                    return Err(sled_err("writing atom")(e));
                }
                if let Some((wkey, json)) = world_json {
                    db.insert(wkey, json).map_err(sled_err("writing world"))?;
                }
                if let Some(record) = new_world {
                    // Known in memory before the lock is released, so the next writer does
                    // not write the record again.
                    let mut worlds = worlds.write().unwrap_or_else(|p| p.into_inner());
                    worlds.entry(world).or_insert(WorldState { record, atoms: 0, stored: true });
                }
                Ok(true)
            })();
            applying.stop();
            drop(guard);
            // A lone writer (no other write announced, no flush queued or running on the
            // flusher) flushes here, saving the round trip through the flusher thread; the
            // flush covers this write as the flusher's would (the write lock is released, so
            // the next writer applies meanwhile and joins the flusher's queue).
            let inline = matches!(result, Ok(true))
                && writers.load(Ordering::SeqCst) <= 1
                && step.queued.load(Ordering::SeqCst) == 0
                && step.last_group.load(Ordering::Relaxed) <= 1;
            result.map(|applied| (applied, inline.then(|| step.flush_once(&step.inline_busy))))
        };
        // (A `block_in_place` variant, which also saved the hop to the blocking thread, was
        // faster on a loaded machine but could not time out: a wedged flush would hang its
        // request. Every write stays under `COMMIT_TIMEOUT`.)
        let applied = match self.bells.run(deadline, apply).await {
            None => return Err(StorageError::CommitTimeout),
            Some(Err(failed)) => {
                return Err(StorageError::Flush {
                    message: format!("the write task failed: {failed}"),
                    no_space: false,
                })
            }
            Some(Ok(result)) => self.note(result)?,
        };
        let (applied, flushed) = applied;
        if !applied {
            return Ok(Inserted::Exists);
        }
        // Stop counting as pending first, then ask: a flusher lingering for us sees the request.
        drop(pending);
        match flushed {
            Some(result) => self.note(result.map_err(StorageError::from))?,
            None => tokio::time::timeout_at(deadline, self.flush())
                .await
                .map_err(|_| StorageError::CommitTimeout)??,
        }
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
        self.bytes_written.fetch_add(written, Ordering::Relaxed);
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
        // Counted before it is sent, so a lone writer never flushes inline past a queued request
        // it cannot see yet (the flusher counts it down once answered).
        self.commit.queued.fetch_add(1, Ordering::SeqCst);
        if sender.send(tx).is_err() {
            self.commit.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(StorageError::Closed);
        }
        Ok(async move {
            let result = match rx.await {
                Ok(result) => result.map_err(StorageError::from),
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
        self.writable()?;
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::new();
        let mut per_world: BTreeMap<&str, u64> = BTreeMap::new();
        let mut bytes_total = 0u64;
        for atom in atoms {
            let key = atom_key(&atom.id);
            if !seen.insert(atom.id.as_str())
                || db.contains_key(&key).map_err(sled_err("checking id"))?
            {
                continue;
            }
            let json = serde_json::to_vec(atom).map_err(|e| corrupt(&key, e))?;
            let sealed = self.seal(&key, json)?;
            bytes_total += sealed.len() as u64 + 64;
            let seq = db.generate_id().map_err(sled_err("generating seq"))?;
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
        self.note(db.apply_batch(batch).map_err(sled_err("importing atoms")))?;
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
        let db = self.db()?;
        let mut scan = LogScan::default();
        let mut logged = std::collections::HashSet::new();
        let mut dangling_keys = Vec::new();
        for item in db.scan_prefix(LOG_PREFIX) {
            let (key, id) = item.map_err(sled_err("reading log"))?;
            scan.log_entries += 1;
            if db.contains_key([ATOM_PREFIX, &id].concat()).map_err(sled_err("reading atom"))? {
                logged.insert(id.to_vec());
            } else {
                scan.dangling.push(String::from_utf8_lossy(&id).into_owned());
                dangling_keys.push(key);
            }
        }
        let mut unlogged = Vec::new();
        for item in db.scan_prefix(ATOM_PREFIX) {
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
                let seq = db.generate_id().map_err(sled_err("generating seq"))?;
                batch.insert(log_key(&atom.world, seq), atom.id.as_bytes());
            }
            self.note(db.apply_batch(batch).map_err(sled_err("repairing the log")))?;
            self.flush_blocking()?;
            scan.repaired = true;
        }
        Ok(scan)
    }

    /// Flushes synchronously (shutdown path).
    pub fn flush_blocking(&self) -> Result<(), StorageError> {
        self.db()?.flush().map(|_| ()).map_err(sled_err("flushing"))
    }

    /// A read's error: a stopped sled (it may refuse reads after an I/O error) is reopened by
    /// [`Store::try_recover`]; meanwhile the read is a 503 "reopening", never a 507.
    fn read_err(&self, e: StorageError) -> StorageError {
        if e.stops_store() {
            self.fail(&e);
            return StorageError::Failed {
                message: format!(
                    "the store is being reopened after an I/O error ({e}); retry in a moment"
                ),
                no_space: false,
            };
        }
        e
    }

    /// The atom with `id`, if stored.
    pub fn get(&self, id: &str) -> Result<Option<Atom>, StorageError> {
        let key = atom_key(id);
        let db = self.db()?;
        let found = in_sled(|| db.get(&key)).map_err(sled_err("reading atom"));
        match found.map_err(|e| self.read_err(e))? {
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
        let db = self.db()?;
        let mut log = in_sled(|| db.scan_prefix(log_prefix(world)));
        while let Some(item) = in_sled(|| log.next()) {
            let (_, id) = item.map_err(sled_err("reading log")).map_err(|e| self.read_err(e))?;
            let key = [ATOM_PREFIX, &id].concat();
            let found = in_sled(|| db.get(&key)).map_err(sled_err("reading atom"));
            let Some(bytes) = found.map_err(|e| self.read_err(e))? else {
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
        for item in self.db()?.scan_prefix(ATOM_PREFIX) {
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
        self.writable()?;
        if let Some(d) = &self.disk {
            d.admit(1024).map_err(StorageError::NoRoom)?;
        }
        let (record, created) = {
            let _guard = self.turn().await?;
            self.writable()?;
            let db = self.db()?;
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
            self.note(db.insert(wkey, json).map_err(sled_err("writing world")))?;
            let state = worlds.entry(name.to_owned()).or_insert_with(|| WorldState {
                record: record.clone(),
                atoms: 0,
                stored: true,
            });
            state.record = record.clone();
            state.stored = true;
            (record, created)
        };
        tokio::time::timeout(COMMIT_TIMEOUT, self.flush())
            .await
            .map_err(|_| StorageError::CommitTimeout)??;
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
        self.db.get().and_then(|db| db.size_on_disk().ok()).unwrap_or(0)
    }

    /// Runs `f` on the sled database with every writer paused (the lock each write holds to
    /// apply its batch), for consistent snapshots ([`crate::snapshot`]): `f` sees exactly the
    /// writes applied before it started — every acknowledged one — and none half applied.
    /// Writers wait (they are not refused) until `f` returns; reads go on. Blocking.
    pub fn with_writes_paused<T>(&self, f: impl FnOnce(&sled::Db) -> T) -> Result<T, StorageError> {
        // Called from a blocking thread (or outside any runtime): never from async code.
        let _guard = self.write_lock.blocking_lock();
        Ok(f(&self.db()?))
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
        if let Some(db) = self.db.get() {
            let _ = db.flush();
        }
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

/// Bells on which a write's blocking thread tells its request that it is done.
///
/// A task woken from a thread outside the runtime (a `spawn_blocking` join handle, a oneshot
/// sent from the blocking pool) is queued on the runtime's injection queue and a parked worker
/// is woken to search for it; the worker that finds it wakes one more to keep searching, which
/// finds nothing and parks again: two workers woken, and two more context switches, for every
/// remember. A byte written to a socket pair instead reaches the request through the runtime's
/// I/O driver, like a client's next request does: the worker polling it runs the request at
/// once, and wakes no other. The result itself goes through a oneshot that the request reads
/// only after the bell rang (so it never waits on it). Bells are kept for reuse; one whose
/// write outlived its deadline is dropped (its late byte must not ring for the next write).
/// At most [`BELLS_MAX`] exist (two file descriptors each, out of the few the node keeps
/// besides its connections); writes beyond them, and writes when no socket pair can be had,
/// wait on the join handle as before.
#[derive(Default)]
struct Bells {
    kept: Mutex<Vec<Bell>>,
    /// Bells in existence (kept or in use).
    live: std::sync::atomic::AtomicUsize,
}

/// Most bells in existence at once: concurrent writes beyond it share a group commit anyway.
const BELLS_MAX: usize = 32;

struct Bell {
    rx: tokio::net::UnixStream,
    tx: Arc<std::os::unix::net::UnixStream>,
}

impl Bell {
    fn new() -> std::io::Result<Bell> {
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        Ok(Bell { rx: tokio::net::UnixStream::from_std(rx)?, tx: Arc::new(tx) })
    }
}

/// Rings its bell when dropped: once the work's result is sent, or when the work panicked.
struct Ringer(Arc<std::os::unix::net::UnixStream>);

impl Drop for Ringer {
    fn drop(&mut self) {
        use std::io::Write as _;
        // One byte into an empty socket buffer: never blocks. Fails only once the request
        // gave up and closed its end (SIGPIPE is ignored in Rust programs).
        let _ = (&*self.0).write(&[1]);
    }
}

impl Bells {
    /// Runs `work` on a blocking thread and waits for it until `deadline`: `None` once the
    /// deadline has passed (the work goes on), `Some(Err(_))` when it panicked.
    async fn run<T: Send + 'static>(
        &self,
        deadline: tokio::time::Instant,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Result<T, String>> {
        let pooled = self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(bell) = pooled.or_else(|| self.new_bell()) else {
            // No socket pair to be had (out of file descriptors): the join handle.
            return match tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(work)).await
            {
                Err(_) => None,
                Ok(joined) => Some(joined.map_err(|e| e.to_string())),
            };
        };
        let (tx, mut rx) = oneshot::channel();
        let ringer = Ringer(bell.tx.clone());
        // Back to the pool only once it rang; dropped (and no longer counted) otherwise, also
        // when this future is dropped mid-wait (a client that went away).
        let mut held = Held { bells: self, bell: Some(bell) };
        // Dropping the join handle detaches the task: the bell is how it reports back.
        drop(tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: the result is sent (or, on a panic, its sender
            // dropped) before the bell rings.
            let _ringer = ringer;
            let tx = tx;
            let _ = tx.send(work());
        }));
        let mut byte = [0u8; 8];
        let rang = tokio::time::timeout_at(deadline, async {
            use tokio::io::AsyncReadExt as _;
            match held.bell.as_mut() {
                Some(bell) => bell.rx.read(&mut byte).await,
                None => Ok(0),
            }
        })
        .await;
        match rang {
            Ok(Ok(n)) if n > 0 => {
                let result = rx.try_recv().map_err(|_| "it panicked".to_owned());
                if let Some(bell) = held.bell.take() {
                    self.kept.lock().unwrap_or_else(|p| p.into_inner()).push(bell);
                }
                Some(result)
            }
            Err(_) => None,
            // The bell broke (it cannot while its sender lives): wait on the result itself.
            Ok(_) => {
                drop(held);
                match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => None,
                    Ok(result) => Some(result.map_err(|_| "it panicked".to_owned())),
                }
            }
        }
    }

    /// A new bell, unless [`BELLS_MAX`] exist or no socket pair can be had.
    fn new_bell(&self) -> Option<Bell> {
        let live = &self.live;
        if live.fetch_add(1, Ordering::AcqRel) >= BELLS_MAX {
            live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let bell = Bell::new().ok();
        if bell.is_none() {
            live.fetch_sub(1, Ordering::AcqRel);
        }
        bell
    }
}

/// A bell in use: closed and no longer counted when dropped still holding it.
struct Held<'a> {
    bells: &'a Bells,
    bell: Option<Bell>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bell.take().is_some() {
            self.bells.live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Longest a flush waits for writers that are about to ask for one.
const LINGER_MAX: Duration = Duration::from_micros(300);

/// One group-commit flush: done by the flusher thread for a group, or inline by a lone writer
/// (see [`Store::insert_new_announced`]).
struct FlushStep {
    slot: Arc<DbSlot>,
    /// Flushes done.
    count: Arc<AtomicU64>,
    /// The flusher thread's flush.
    busy: Arc<Busy>,
    /// A lone writer's flush (one at a time: the writer stays announced until it is done).
    inline_busy: Busy,
    disk: Option<Arc<DiskGuard>>,
    /// Flush requests sent to the flusher thread and not yet answered.
    queued: AtomicU64,
    /// Writers the flusher thread's last flush served: while they come in groups, even one
    /// that finds itself alone for a moment joins the next group instead of flushing alone.
    last_group: AtomicU64,
    /// Flush requests the flusher thread has answered.
    served: AtomicU64,
}

impl FlushStep {
    /// Flushes sled (its log write and sync): every write applied before the call is durable
    /// when it returns `Ok`. `busy` records it for [`Store::stalled`].
    fn flush_once(&self, busy: &Busy) -> Result<(), FlushFailure> {
        // Hold sled only for the flush, so a reopen never waits for this thread.
        let result = match self.slot.get() {
            Some(db) => {
                busy.start();
                let r = db.flush();
                busy.stop();
                r.map(drop).map_err(|e| FlushFailure {
                    no_space: matches!(&e, sled::Error::Io(io) if disk::is_no_space(io)),
                    message: e.to_string(),
                })
            }
            None => {
                Err(FlushFailure { message: "the store is being reopened".into(), no_space: false })
            }
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        // The free-space figure the next writers are admitted against: after a flush, unless
        // it is fresh and far above the reserve (see `DiskGuard::refresh_after_commit`).
        if let Some(d) = &self.disk {
            if result.is_ok() {
                d.refresh_after_commit();
            } else {
                d.refresh();
            }
        }
        result
    }
}

impl From<FlushFailure> for StorageError {
    fn from(f: FlushFailure) -> Self {
        StorageError::Flush { message: f.message, no_space: f.no_space }
    }
}

/// The group-commit loop: take every queued flush request, do one flush, answer them all.
///
/// When other writers are mid-write (they will ask for a flush within microseconds) the
/// flusher lingers up to [`LINGER_MAX`] for them, so one `fsync` serves the whole group. A lone
/// writer never waits: with nothing pending the flush starts at once.
struct GroupCommit {
    step: Arc<FlushStep>,
    rx: mpsc::Receiver<FlushReply>,
    pending: Arc<AtomicU64>,
}

impl GroupCommit {
    fn run(self) {
        let mut waiting = Vec::new();
        while let Ok(first) = self.rx.recv() {
            waiting.push(first);
            let linger_until = Instant::now() + LINGER_MAX;
            loop {
                while let Ok(more) = self.rx.try_recv() {
                    waiting.push(more);
                }
                let now = Instant::now();
                if self.pending.load(Ordering::SeqCst) == 0 || now >= linger_until {
                    break;
                }
                match self.rx.recv_timeout(linger_until - now) {
                    Ok(more) => waiting.push(more),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.step.flush_once(&self.step.busy);
            tracing::trace!(writers = waiting.len(), elapsed = ?started.elapsed(), "group commit");
            self.step.queued.fetch_sub(waiting.len() as u64, Ordering::SeqCst);
            self.step.last_group.store(waiting.len() as u64, Ordering::Relaxed);
            self.step.served.fetch_add(waiting.len() as u64, Ordering::Relaxed);
            for reply in waiting.drain(..) {
                let _ = reply.send(result.clone());
            }
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

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stopped_store_refuses_writes_keeps_reads_and_reopens_with_every_acknowledged_atom() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&opts(dir.path())).unwrap();
        for i in 0..20 {
            store.insert_new(&atom(&format!("a{i:02}"), "w", "x")).await.unwrap();
        }
        // What an I/O error on the write path does (sled stops at its first one).
        store.fail(&StorageError::Flush {
            message: "No space left on device".into(),
            no_space: true,
        });
        assert_eq!(store.failed(), Some(true));
        let err = store.insert_new(&atom("b", "w", "y")).await.unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(err.to_string().contains("resume by themselves"), "{err}");
        assert!(store.health().is_err());
        assert_eq!(store.get("a05").unwrap().unwrap().payload_json, "x", "reads go on");
        assert!(store.stalled().is_none(), "refused at once, nothing stuck");
        // No disk guard here: nothing to wait for, the reopen happens at once.
        let recovered = tokio::task::block_in_place(|| store.try_recover()).unwrap().unwrap();
        assert_eq!(recovered, Recovered { atoms_before: 20, atoms_after: 20 });
        assert!(store.health().is_ok());
        assert_eq!(store.recovery_count(), 1);
        store.insert_new(&atom("b", "w", "y")).await.unwrap();
        assert_eq!(store.replay("w", &all()).unwrap().len(), 21);
        assert!(tokio::task::block_in_place(|| store.try_recover()).unwrap().is_none());
    }

    #[test]
    fn a_commit_step_running_too_long_is_reported_as_stuck() {
        let busy = Busy::new(Instant::now() - COMMIT_STALL * 2);
        assert!(busy.running_for().is_none());
        busy.since.store(1, Ordering::Relaxed); // started at the epoch
        assert!(busy.running_for().unwrap() >= COMMIT_STALL);
        busy.stop();
        assert!(busy.running_for().is_none());
    }

    #[test]
    fn a_read_stuck_inside_sled_is_timed_reported_and_forgotten_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&opts(dir.path())).unwrap();
        let op = store.read_op();
        // Outside sled (waiting for a thread or the index lock) is not stuck.
        assert_eq!(op.stuck_for(), Duration::ZERO);
        assert!(store.reads_stuck_for().is_none());
        // Inside a sled call, this op is timed; outside again, not.
        let seen = op.run(|| in_sled(|| store.reads_stuck_for()));
        assert!(seen.is_some_and(|d| d < COMMIT_STALL), "{seen:?}");
        assert!(store.reads_stuck_for().is_none());
        assert!(store.stalled().is_none());
        // A call that entered sled long ago: reported (as the watchdog sees it).
        let old = ReadOps {
            epoch: Instant::now() - COMMIT_STALL * 2,
            next: AtomicU64::new(0),
            ops: Mutex::default(),
        };
        let since = Arc::new(AtomicU64::new(1));
        old.ops.lock().unwrap().insert(0, since.clone());
        assert!(old.longest().unwrap() >= COMMIT_STALL);
        since.store(0, Ordering::Relaxed);
        assert!(old.longest().is_none());
        // Dropping the last clone unregisters the op.
        let clone = op.clone();
        drop(op);
        assert_eq!(store.reads.ops.lock().unwrap().len(), 1);
        drop(clone);
        assert!(store.reads.ops.lock().unwrap().is_empty());
        assert!(store.probe().is_ok());
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

    /// On the node's (multi-thread) runtime a lone writer flushes on its own thread, one flush
    /// per write, every write durable; writers arriving together still share the flusher's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_writer_flushes_itself_and_a_group_still_shares() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&opts(dir.path())).unwrap());
        let (flushes, served) = (store.flush_count(), store.commit.served.load(Ordering::Relaxed));
        for i in 0..20 {
            store.insert_new(&atom(&format!("lone{i}"), "w", "x")).await.unwrap();
        }
        assert_eq!(store.flush_count() - flushes, 20, "one flush per lone write");
        assert_eq!(store.commit.served.load(Ordering::Relaxed), served, "none via the flusher");

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
        let flushes = store.flush_count() - before;
        assert!(flushes < 16, "{flushes} flushes for 16 writers announced together");
        assert!(store.commit.served.load(Ordering::Relaxed) > served, "the group used the flusher");
        drop(store);
        let store = Store::open(&opts(dir.path())).unwrap();
        assert_eq!(store.atom_count(), 36);
        assert_eq!(store.replay("w", &all()).unwrap().len(), 36);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bells_answer_results_panics_and_deadlines_and_a_late_ring_is_never_heard() {
        let bells = Bells::default();
        let far = || tokio::time::Instant::now() + Duration::from_secs(30);
        for i in 0..100u32 {
            assert_eq!(bells.run(far(), move || i * 2).await, Some(Ok(i * 2)));
        }
        assert_eq!(bells.live.load(Ordering::Relaxed), 1, "one bell, reused");
        let panicked = bells.run(far(), || -> u32 { panic!("boom") }).await;
        assert!(matches!(panicked, Some(Err(_))), "{panicked:?}");
        assert_eq!(bells.live.load(Ordering::Relaxed), 1, "a panic still rings: kept");

        // A write past its deadline: answered None, its bell closed; its late ring (once it is
        // let go) reaches no later write.
        let (go, wait) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel::<()>();
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        let late = bells.run(soon, move || {
            let _ = wait.recv();
            let _ = done_tx.send(());
            7u32
        });
        assert_eq!(late.await, None);
        assert_eq!(bells.live.load(Ordering::Relaxed), 0, "the late write's bell is closed");
        go.send(()).unwrap();
        tokio::task::spawn_blocking(move || done.recv()).await.unwrap().unwrap();
        for i in 0..10u32 {
            assert_eq!(bells.run(far(), move || i + 1000).await, Some(Ok(i + 1000)));
        }

        // Concurrent writes: at most BELLS_MAX bells; the others wait on their join handle.
        let runs = (0..(BELLS_MAX as u32 * 2))
            .map(|i| {
                let b = &bells;
                async move { b.run(far(), move || i).await }
            })
            .collect::<Vec<_>>();
        let answers = futures::future::join_all(runs).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Some(Ok(i as u32)));
        }
        assert!(bells.live.load(Ordering::Relaxed) <= BELLS_MAX);

        // A request dropped while it waits (its client went away): its bell is not counted
        // any more, so bells never run out.
        let before = bells.live.load(Ordering::Relaxed);
        let (go, wait) = mpsc::channel::<()>();
        let dropped = tokio::time::timeout(
            Duration::from_millis(20),
            bells.run(far(), move || {
                let _ = wait.recv();
            }),
        )
        .await;
        assert!(dropped.is_err(), "still waiting when dropped");
        go.send(()).unwrap();
        let after = bells.live.load(Ordering::Relaxed);
        assert!(
            after < before.max(1),
            "the dropped request's bell still counted: {before} -> {after}"
        );
    }
}
