//! state.json: the durable record of a deployment, written by the supervisor after every
//! change and read by the CLI when no supervisor runs.
//!
//! Machine-written, so: versioned, every field added after version 1 is `#[serde(default)]`,
//! unknown fields are ignored, and a fixture of each released format lives under
//! `tests/fixtures/`. Version 0 is the original DWBase tool's file (`{"nodes":[{id, port, pid,
//! data_dir, log_path, config_path}]}`), which still loads.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::messages::{Group, LastExit, LivenessSpec, RestartPolicy};

/// The format version this build writes.
pub const STATE_VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version; 0 (absent) is the original DWBase tool's file.
    #[serde(default)]
    pub version: u32,
    /// The supervisor that owns these nodes, if one was running when this was written.
    #[serde(default)]
    pub supervisor: Option<SupervisorRecord>,
    /// Every node of this group.
    #[serde(default)]
    pub nodes: Vec<NodeRecord>,
}

/// The supervisor, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorRecord {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (see [`crate::process::start_time`]).
    #[serde(default)]
    pub start_time: Option<u64>,
    /// The socket it listens on (may be the short runtime fallback).
    pub socket: PathBuf,
    /// Its build version.
    #[serde(default)]
    pub version: String,
    /// When it started (Unix milliseconds).
    #[serde(default)]
    pub started_unix_ms: i64,
}

/// Whether a node should be running.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    /// Keep it running.
    #[default]
    Running,
    /// Leave it stopped.
    Stopped,
}

/// One node, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (what the node reports).
    pub id: String,
    /// Name (node-a, …); defaults to the id.
    #[serde(default)]
    pub name: String,
    /// Devnet or local.
    #[serde(default = "default_group")]
    pub group: Group,
    /// HTTP port.
    pub port: u16,
    /// Process id, if running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time of that process (clock ticks since boot).
    #[serde(default)]
    pub start_time: Option<u64>,
    /// Node folder.
    #[serde(default)]
    pub dir: PathBuf,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Current log file.
    pub log_path: PathBuf,
    /// Config file.
    pub config_path: PathBuf,
    /// Should it run.
    #[serde(default)]
    pub desired: Desired,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Last exit.
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    /// SIGTERM → SIGKILL grace in milliseconds.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Environment overrides given at deploy time.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Liveness probing.
    #[serde(default)]
    pub liveness: LivenessSpec,
    /// Fingerprint of what the process was started from (rendered config and environment):
    /// a deploy replaces the node when the new spec's fingerprint differs. Absent in files of
    /// older builds: then the config file on disk is compared.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The file in every node's folder that records the node itself (the same record as in
/// state.json, written when it is spawned or changed), so that a supervisor finds and adopts
/// its nodes even when state.json is lost or corrupt.
pub const NODE_RECORD_FILE: &str = "node.json";

impl NodeRecord {
    /// `<dir>/node.json`.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(NODE_RECORD_FILE)
    }

    /// Writes `<dir>/node.json` atomically.
    pub fn save_beside(&self) -> Result<(), StateError> {
        let path = self.record_path();
        let bytes = self.record_bytes()?;
        crate::fsutil::atomic_write(&path, &bytes, 0o600)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Writes `<dir>/node.json` into `batch` (durable at its next sync; a record lost to a
    /// crash before then reads as missing, which [`NodeRecord::load_from`] tolerates).
    pub fn save_beside_in(&self, batch: &mut crate::fsutil::SyncBatch) -> Result<(), StateError> {
        let path = self.record_path();
        let bytes = self.record_bytes()?;
        batch.write(&path, &bytes, 0o600).map_err(|source| StateError::Write { path, source })
    }

    fn record_bytes(&self) -> Result<Vec<u8>, StateError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| StateError::Write {
            path: self.record_path(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads a node folder's record; `None` when missing or unreadable (a damaged record is
    /// no worse than a missing one: the node is then found by its command line).
    pub fn load_from(dir: &Path) -> Option<Self> {
        let text = fs::read(dir.join(NODE_RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

fn default_group() -> Group {
    Group::Devnet
}

/// Default SIGTERM → SIGKILL grace.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;

fn default_stop_timeout_ms() -> u64 {
    DEFAULT_STOP_TIMEOUT_MS
}

/// Loading state.json went wrong in a way the caller must tell the operator about.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is from a newer dwbase.
    #[error("{path} has format version {found}, newer than this dwbase understands ({STATE_VERSION}); use the newer dwbase")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

/// What [`StateFile::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: nothing was deployed.
    Missing,
    /// A good file.
    Ok(StateFile),
    /// The file did not parse and must be reported loudly. [`StateFile::load`] (the owner's
    /// read) moved it to `moved_to`; [`StateFile::read`] (a reader's) left it in place.
    Corrupt {
        /// Where the unreadable file now is, if it was moved.
        moved_to: Option<PathBuf>,
        /// Why it did not parse.
        reason: String,
    },
}

impl StateFile {
    /// Reads `path` without changing anything (for readers: the CLI without the root lock).
    pub fn read(path: &Path) -> Result<Loaded, StateError> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => return Err(StateError::Read { path: path.to_owned(), source }),
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(state) if state.version > STATE_VERSION => {
                Err(StateError::TooNew { path: path.to_owned(), found: state.version })
            }
            Ok(mut state) => {
                for n in &mut state.nodes {
                    if n.name.is_empty() {
                        n.name = n.id.clone();
                    }
                }
                Ok(Loaded::Ok(state))
            }
            Err(e) => Ok(Loaded::Corrupt { moved_to: None, reason: e.to_string() }),
        }
    }

    /// Loads `path` as its owner (the supervisor, or the CLI holding the root lock): a file
    /// that does not parse is moved aside (never silently dropped) and reported as
    /// [`Loaded::Corrupt`] with where it went.
    pub fn load(path: &Path) -> Result<Loaded, StateError> {
        match Self::read(path)? {
            Loaded::Corrupt { reason, .. } => {
                let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
                let moved_to = path.with_extension(format!("json.corrupt-{stamp}"));
                fs::rename(path, &moved_to)
                    .map_err(|source| StateError::Write { path: moved_to.clone(), source })?;
                Ok(Loaded::Corrupt { moved_to: Some(moved_to), reason })
            }
            other => Ok(other),
        }
    }

    /// Writes `path` atomically ([`crate::fsutil::atomic_write`]: `state.json.partial`
    /// created exclusively without following links, fsync, rename, fsync the folder). A crash
    /// at any point leaves either the old file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: path.to_owned(), source };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let mut doc = self.clone();
        doc.version = STATE_VERSION;
        let mut bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| err(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        crate::fsutil::atomic_write(path, &bytes, 0o600).map_err(err)
    }
}
