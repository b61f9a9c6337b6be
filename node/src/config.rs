//! Node configuration: the TOML schema, its defaults, validation and environment overrides.
//!
//! The file keeps every key of the original DWBase (`[node] listen`, `data_dir`, `embedder`,
//! `[node.security]`, `[node.health]` with `index_rebuild_warn_seconds`, `[node.storage]` with
//! `encryption_enabled` and `key_id`) with their meaning, and adds ours (`id`, `log_dir`,
//! `summaries_dir`, `api_key`, `[node.limits]`, `[node.swarm]`). Every section and key is
//! optional; unknown keys are errors.
//!
//! One difference is on purpose: a relative `data_dir` resolves against the config file's folder
//! (the original resolved it against the working directory, so the same command found a
//! different store depending on where it ran). [`Config::original_data_dir`] finds the store the
//! original would have used, so a start that would serve an empty store is refused instead.
//!
//! Loading is split in three steps so that other programs (the supervisor, tests) can reuse the
//! parser without picking up the environment of the process that reads the file:
//!
//! 1. [`Config::load`] / [`Config::from_toml_str`]: the file alone. Every problem is reported at
//!    once as `path:line:col: key: message`.
//! 2. [`Config::apply_env`] / [`Config::apply_env_from`]: `DWBASE_*` variables win over the file.
//! 3. Command-line flags (see [`crate::cli`]) win over both.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable that overrides `node.data_dir`.
pub const ENV_DATA_DIR: &str = "DWBASE_DATA_DIR";
/// Environment variable that overrides `node.limits.max_ram_mb`.
pub const ENV_MAX_RAM_MB: &str = "DWBASE_MAX_RAM_MB";
/// Environment variable that overrides `node.limits.max_disk_mb`.
pub const ENV_MAX_DISK_MB: &str = "DWBASE_MAX_DISK_MB";
/// Environment variable that overrides `node.listen`.
pub const ENV_LISTEN: &str = "DWBASE_LISTEN";
/// Environment variable that overrides `node.id`.
pub const ENV_NODE_ID: &str = "DWBASE_NODE_ID";
/// Environment variable that overrides `node.security.api_key` (and clears `api_key_file`).
pub const ENV_API_KEY: &str = "DWBASE_API_KEY";
/// Environment variable that overrides `node.swarm.peers` (comma-separated base URLs).
pub const ENV_SWARM_PEERS: &str = "DWBASE_SWARM_PEERS";
/// Environment variable that overrides `node.swarm.enabled` (`true`/`false`/`1`/`0`).
pub const ENV_SWARM_ENABLED: &str = "DWBASE_SWARM_ENABLED";
/// Environment variable that overrides `node.swarm.ca_file` (PEM CA of `https://` peers).
pub const ENV_SWARM_CA: &str = "DWBASE_SWARM_CA";
/// Environment variable that overrides `node.tls.cert_file` (PEM certificate chain).
pub const ENV_TLS_CERT: &str = "DWBASE_TLS_CERT";
/// Environment variable that overrides `node.tls.key_file` (PEM private key).
pub const ENV_TLS_KEY: &str = "DWBASE_TLS_KEY";
/// Environment variable that overrides `node.tls.client_ca_file` (PEM CA: clients need a
/// certificate it signed).
pub const ENV_TLS_CLIENT_CA: &str = "DWBASE_TLS_CLIENT_CA";

/// Prefix of the variable holding the encryption master key: `DWBASE_KEY_<KEY_ID>` with the key
/// id upper-cased and `-` turned into `_` (the original's rule; see [`StorageConfig::key_env_var`]).
pub const ENV_KEY_PREFIX: &str = "DWBASE_KEY_";

/// All environment variables the node reads, in the order they are applied.
pub const ENV_VARS: &[&str] = &[
    ENV_DATA_DIR,
    ENV_MAX_RAM_MB,
    ENV_MAX_DISK_MB,
    ENV_LISTEN,
    ENV_NODE_ID,
    ENV_API_KEY,
    ENV_SWARM_PEERS,
    ENV_SWARM_ENABLED,
    ENV_SWARM_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_CLIENT_CA,
];

/// Default `node.id`.
pub const DEFAULT_NODE_ID: &str = "local";
/// Default `node.listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `node.data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default `node.log_dir`.
pub const DEFAULT_LOG_DIR: &str = "./logs";
/// Default `node.summaries_dir`.
pub const DEFAULT_SUMMARIES_DIR: &str = "./summaries";
/// Default `node.security.importance_cap`.
pub const DEFAULT_IMPORTANCE_CAP: f64 = 1.0;
/// Default `node.security.remember_per_sec` (per worker).
pub const DEFAULT_REMEMBER_PER_SEC: f64 = 10.0;
/// Default `node.security.ask_per_min` (per worker or client).
pub const DEFAULT_ASK_PER_MIN: f64 = 60.0;
/// Default `node.security.max_body_bytes` (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Shortest API key accepted, in bytes: a shorter key can be guessed or brute-forced.
pub const MIN_API_KEY_BYTES: usize = 16;

/// Why a key is refused, or `None` when it is long enough. Names no part of the key.
pub fn api_key_problem(key: &str) -> Option<String> {
    let len = key.len();
    (len < MIN_API_KEY_BYTES).then(|| {
        format!(
            "the API key is {len} byte{} long; it must be at least {MIN_API_KEY_BYTES} bytes. \
             Generate one with `openssl rand -hex 32`",
            if len == 1 { "" } else { "s" }
        )
    })
}

/// Default `node.health.disk_usage_degraded` (fraction of the filesystem).
pub const DEFAULT_DISK_USAGE_DEGRADED: f64 = 0.9;
/// Default `node.health.index_rebuild_warn_seconds`.
pub const DEFAULT_INDEX_REBUILD_WARN_SECONDS: u64 = 60;
/// The only `node.embedder` there is (the original's too): it computes no vectors.
pub const EMBEDDER_DUMMY: &str = "dummy";

/// The whole configuration file: everything lives under `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[node]` table.
    #[serde(default)]
    pub node: NodeConfig,
}

/// `[node]`: identity, addresses and directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node id shown in logs, `/health` and metrics (ours; default `"local"`).
    pub id: String,
    /// `IP:port` to listen on; port 0 picks any free port.
    pub listen: SocketAddr,
    /// Where sled keeps its files. Relative paths resolve against the config file's folder.
    pub data_dir: PathBuf,
    /// The original's embedder choice; `"dummy"` is the only one (no vectors are computed, asks
    /// rank by text relevance).
    pub embedder: String,
    /// Where the node writes diagnostics; the supervisor puts stdout/stderr logs here (ours).
    pub log_dir: PathBuf,
    /// Where the node writes run summaries (ours).
    pub summaries_dir: PathBuf,
    /// `[node.security]`.
    pub security: SecurityConfig,
    /// `[node.health]`.
    pub health: HealthConfig,
    /// `[node.limits]`.
    pub limits: LimitsConfig,
    /// `[node.swarm]`.
    pub swarm: SwarmConfig,
    /// `[node.storage]`: encryption at rest.
    pub storage: StorageConfig,
    /// `[node.tls]`: HTTPS (ours).
    pub tls: TlsConfig,
    /// `data_dir` as the file wrote it, when it was relative (for [`Config::original_data_dir`]).
    #[serde(skip)]
    pub data_dir_as_written: WrittenPath,
}

/// A path as a config file wrote it, before resolution. Not part of the configuration's value:
/// two configs that differ only in it compare equal.
#[derive(Debug, Clone, Default)]
pub struct WrittenPath(pub Option<PathBuf>);

impl PartialEq for WrittenPath {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: DEFAULT_NODE_ID.to_owned(),
            listen: DEFAULT_LISTEN.parse().expect("default listen address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            embedder: EMBEDDER_DUMMY.to_owned(),
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            summaries_dir: PathBuf::from(DEFAULT_SUMMARIES_DIR),
            security: SecurityConfig::default(),
            health: HealthConfig::default(),
            limits: LimitsConfig::default(),
            swarm: SwarmConfig::default(),
            storage: StorageConfig::default(),
            tls: TlsConfig::default(),
            data_dir_as_written: WrittenPath::default(),
        }
    }
}

/// `[node.security]`: world allow-lists, rate limits, authentication, body size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Worlds that may be read (ask, replay, get); empty means all.
    pub read_worlds: Vec<String>,
    /// Worlds that may be written (remember); empty means all.
    pub write_worlds: Vec<String>,
    /// Importance above the cap is clamped to it on remember (not refused).
    pub importance_cap: f64,
    /// Remembers per second per worker; 0 means unlimited. Fractions are allowed (0.5 = one
    /// every two seconds).
    pub remember_per_sec: f64,
    /// Asks per minute per worker (the `x-dwbase-worker` header) or else per client address;
    /// 0 means unlimited.
    pub ask_per_min: f64,
    /// Bearer token every route but `/healthz`, `/readyz` and `/metrics` requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// File holding the bearer token (trimmed); mutually exclusive with `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Allow a non-loopback `listen` without an API key.
    pub allow_insecure: bool,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: u64,
    /// The key read from `api_key_file` at load time.
    #[serde(skip)]
    key_from_file: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            read_worlds: Vec::new(),
            write_worlds: Vec::new(),
            importance_cap: DEFAULT_IMPORTANCE_CAP,
            remember_per_sec: DEFAULT_REMEMBER_PER_SEC,
            ask_per_min: DEFAULT_ASK_PER_MIN,
            api_key: None,
            api_key_file: None,
            allow_insecure: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            key_from_file: None,
        }
    }
}

impl SecurityConfig {
    /// The effective API key: `api_key`, or the contents of `api_key_file` read at load time.
    pub fn effective_api_key(&self) -> Option<&str> {
        self.api_key.as_deref().or(self.key_from_file.as_deref()).filter(|k| !k.is_empty())
    }
}

/// `[node.health]`: thresholds for degraded status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Fraction (0..1) of the data dir's filesystem in use at which the node is degraded and
    /// `/readyz` answers 503.
    pub disk_usage_degraded: f64,
    /// `/health` reports `degraded` once an index rebuild has run longer than this (the
    /// original's key and meaning); `/readyz` is not affected by it.
    pub index_rebuild_warn_seconds: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            disk_usage_degraded: DEFAULT_DISK_USAGE_DEGRADED,
            index_rebuild_warn_seconds: DEFAULT_INDEX_REBUILD_WARN_SECONDS,
        }
    }
}

/// `[node.storage]`: encryption at rest (the original's keys and meaning).
///
/// With `encryption_enabled`, every atom body and world record is stored encrypted with
/// AES-256-GCM; the 32-byte master key is read, as 64 hex digits, from the variable named by
/// [`StorageConfig::key_env_var`] (never from the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Encrypt stored atoms and world records.
    pub encryption_enabled: bool,
    /// Names the master key: it is read from `DWBASE_KEY_<KEY_ID>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl StorageConfig {
    /// The variable holding the master key of `key_id`: `DWBASE_KEY_` + the id upper-cased with
    /// `-` turned into `_` (`fixture-key` → `DWBASE_KEY_FIXTURE_KEY`).
    pub fn key_env_var(key_id: &str) -> String {
        format!("{ENV_KEY_PREFIX}{}", key_id.to_ascii_uppercase().replace('-', "_"))
    }
}

/// `[node.limits]`: resource caps (ours; the original read them but never enforced them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Memory cap in MiB; 0 = no cap. sled's cache gets a quarter, the text index half.
    pub max_ram_mb: u64,
    /// Data dir size cap in MiB; 0 = no cap. Past it remember answers 507 and `/readyz` 503.
    pub max_disk_mb: u64,
    /// Most client connections open at once (kept below the open-file limit); past it new
    /// clients get 503 at once.
    pub max_connections: u64,
    /// Seconds a connection has to send a complete request head, counted from the accept and
    /// again after each response on a keep-alive connection (so idle connections close too).
    pub header_timeout_secs: u64,
    /// Seconds a request has to send its whole body; past it the answer is 408.
    pub body_timeout_secs: u64,
    /// MiB that must stay free on the filesystem holding data_dir (`df`'s "Avail"): below
    /// it writes are refused with 507 and `/readyz` answers 503 (reason `disk_reserve`),
    /// checked by the write path itself once per commit batch; writes resume by themselves
    /// once space is back. Unset: 5 % of the filesystem, at least 8 and at most 64 MiB (and
    /// at most a quarter of it). 0: no reserve (writes go on until the filesystem is full
    /// and the store meets "no space left" itself: 507, then a reopen once space is back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_mb: Option<u64>,
    /// MiB of the ballast file (`dwbase.ballast` in data_dir) kept for the store: deleted
    /// when the store hits "no space left" so it can reopen (and at start on a full disk),
    /// re-created once space is back. Unset: half the reserve, at most 16 MiB. 0: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ballast_mb: Option<u64>,
    /// Seconds a step of the store (a flush, a write, a read, a reopen) may make no progress
    /// before the node exits (status 3, the reason on stderr) so that its supervisor restarts
    /// it: sled 0.34 can wedge after "no space left", and only a new process reopens it.
    /// `/healthz` fails from 15 s on. 0: never exit (rely on `/healthz` and liveness).
    pub stall_exit_secs: u64,
}

/// Default `node.limits.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Default `node.limits.header_timeout_secs`.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default `node.limits.body_timeout_secs`.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default `node.limits.stall_exit_secs`.
pub const DEFAULT_STALL_EXIT_SECS: u64 = 60;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_ram_mb: 0,
            max_disk_mb: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            min_free_mb: None,
            ballast_mb: None,
            stall_exit_secs: DEFAULT_STALL_EXIT_SECS,
        }
    }
}

/// `[node.swarm]`: push remembered atoms to peers (off by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// Whether to push atoms to `peers`.
    pub enabled: bool,
    /// Peer base URLs, e.g. `http://127.0.0.1:7001` or `https://node-b.lan:7001`.
    pub peers: Vec<String>,
    /// PEM CA certificate(s) that `https://` peers' certificates must chain to; without it,
    /// the system's roots. Relative paths resolve against the config file's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate presented to peers that require client certificates (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[node.tls]`: serve HTTPS (rustls) instead of plain HTTP (ours). Both files are PEM; the
/// certificates are read again on SIGHUP, so a renewed certificate takes effect without a
/// restart. Relative paths resolve against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (`tls.crt` of a Kubernetes TLS secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1; `tls.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificate(s): when set, every client must present a certificate signed by one
    /// of them (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the node serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// What is wrong with the combination of keys: `(dotted key, message)`.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => out.push((
                "node.tls.key_file",
                format!("cert_file is set but key_file is not; set both (or {ENV_TLS_KEY})"),
            )),
            (None, Some(_)) => out.push((
                "node.tls.cert_file",
                format!("key_file is set but cert_file is not; set both (or {ENV_TLS_CERT})"),
            )),
            _ => {}
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() && self.key_file.is_none() {
            out.push((
                "node.tls.client_ca_file",
                "client certificates need TLS: set cert_file and key_file too".into(),
            ));
        }
        for (key, path) in [
            ("node.tls.cert_file", &self.cert_file),
            ("node.tls.key_file", &self.key_file),
            ("node.tls.client_ca_file", &self.client_ca_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                out.push((key, "must not be empty (remove the key instead)".into()));
            }
        }
        out
    }
}

/// One configuration problem, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file path, or `env VAR` for an environment variable.
    pub origin: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// Dotted key path (`node.security.importance_cap`), when the problem has one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found while loading a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order where possible.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "invalid configuration ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for (i, issue) in self.issues.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  {issue}")?;
            } else {
                write!(f, "  {issue}")?;
            }
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(origin: impl Into<String>, key: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                origin: origin.into(),
                position: None,
                key: key.map(str::to_owned),
                message: message.into(),
            }],
        }
    }
}

/// Expected TOML type of a leaf key, for the schema walk.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// Non-negative integer.
    UInt,
    /// Integer or float.
    Number,
    StrArray,
    Table,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::UInt => "a non-negative integer",
            Kind::Number => "a number",
            Kind::StrArray => "an array of strings",
            Kind::Table => "a table",
        }
    }
}

/// The schema: every accepted key path and its type.
const SCHEMA: &[(&str, Kind)] = &[
    ("node", Kind::Table),
    ("node.id", Kind::Str),
    ("node.listen", Kind::Str),
    ("node.data_dir", Kind::Str),
    ("node.embedder", Kind::Str),
    ("node.log_dir", Kind::Str),
    ("node.summaries_dir", Kind::Str),
    ("node.security", Kind::Table),
    ("node.security.read_worlds", Kind::StrArray),
    ("node.security.write_worlds", Kind::StrArray),
    ("node.security.importance_cap", Kind::Number),
    ("node.security.remember_per_sec", Kind::Number),
    ("node.security.ask_per_min", Kind::Number),
    ("node.security.api_key", Kind::Str),
    ("node.security.api_key_file", Kind::Str),
    ("node.security.allow_insecure", Kind::Bool),
    ("node.security.max_body_bytes", Kind::UInt),
    ("node.health", Kind::Table),
    ("node.health.disk_usage_degraded", Kind::Number),
    ("node.health.index_rebuild_warn_seconds", Kind::UInt),
    ("node.storage", Kind::Table),
    ("node.storage.encryption_enabled", Kind::Bool),
    ("node.storage.key_id", Kind::Str),
    ("node.limits", Kind::Table),
    ("node.limits.max_ram_mb", Kind::UInt),
    ("node.limits.max_disk_mb", Kind::UInt),
    ("node.limits.max_connections", Kind::UInt),
    ("node.limits.header_timeout_secs", Kind::UInt),
    ("node.limits.body_timeout_secs", Kind::UInt),
    ("node.limits.min_free_mb", Kind::UInt),
    ("node.limits.ballast_mb", Kind::UInt),
    ("node.limits.stall_exit_secs", Kind::UInt),
    ("node.swarm", Kind::Table),
    ("node.swarm.enabled", Kind::Bool),
    ("node.swarm.peers", Kind::StrArray),
    ("node.swarm.ca_file", Kind::Str),
    ("node.swarm.cert_file", Kind::Str),
    ("node.swarm.key_file", Kind::Str),
    ("node.tls", Kind::Table),
    ("node.tls.cert_file", Kind::Str),
    ("node.tls.key_file", Kind::Str),
    ("node.tls.client_ca_file", Kind::Str),
];

fn schema_kind(path: &str) -> Option<Kind> {
    SCHEMA.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

fn children_of(path: &str) -> Vec<&'static str> {
    SCHEMA
        .iter()
        .filter_map(|(p, _)| {
            let rest =
                if path.is_empty() { Some(*p) } else { p.strip_prefix(path)?.strip_prefix('.') };
            rest.filter(|r| !r.contains('.'))
        })
        .collect()
}

/// Maps dotted key paths to the byte span of the key (and of its value) in the source.
#[derive(Default)]
struct Spans {
    keys: BTreeMap<String, Range<usize>>,
    values: BTreeMap<String, Range<usize>>,
}

impl Spans {
    fn collect(text: &str) -> Self {
        let mut spans = Spans::default();
        let (doc, _errors) = toml::de::DeTable::parse_recoverable(text);
        spans.walk("", doc.get_ref());
        spans
    }

    fn walk(&mut self, prefix: &str, table: &toml::de::DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.keys.insert(path.clone(), key.span());
            self.values.insert(path.clone(), value.span());
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                self.walk(&path, inner);
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Collects issues for one source text.
struct Issues<'a> {
    origin: String,
    text: &'a str,
    spans: Spans,
    issues: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn at_key(&mut self, key: &str, message: impl Into<String>) {
        let position = self.spans.keys.get(key).map(|span| line_col(self.text, span.start));
        self.issues.push(ConfigIssue {
            origin: self.origin.clone(),
            position,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn at_value(&mut self, key: &str, message: impl Into<String>) {
        let position = self
            .spans
            .values
            .get(key)
            .or_else(|| self.spans.keys.get(key))
            .map(|span| line_col(self.text, span.start));
        self.issues.push(ConfigIssue {
            origin: self.origin.clone(),
            position,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn at_span(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let position = span.map(|s| line_col(self.text, s.start));
        self.issues.push(ConfigIssue {
            origin: self.origin.clone(),
            position,
            key: None,
            message: message.into(),
        });
    }

    /// Checks keys and types of a table against the schema, recursing into sub-tables.
    /// Reports unknown keys and wrong types, and removes them from `table` so that the rest
    /// can still be deserialized and checked (every problem is then reported in one go).
    fn check_table(&mut self, prefix: &str, table: &mut toml::Table) {
        let mut bad = Vec::new();
        for (key, value) in table.iter_mut() {
            let path = join(prefix, key);
            let Some(kind) = schema_kind(&path) else {
                let expected = children_of(prefix);
                let place = if prefix.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in [{prefix}]")
                };
                self.at_key(
                    &path,
                    format!(
                        "unknown key `{key}` {place}; expected one of: {}",
                        expected.join(", ")
                    ),
                );
                bad.push(key.clone());
                continue;
            };
            let ok = match (kind, &mut *value) {
                (Kind::Str, toml::Value::String(_)) => true,
                (Kind::Bool, toml::Value::Boolean(_)) => true,
                (Kind::UInt, toml::Value::Integer(i)) => *i >= 0,
                (Kind::Number, toml::Value::Integer(_) | toml::Value::Float(_)) => true,
                (Kind::StrArray, toml::Value::Array(items)) => {
                    items.iter().all(|item| matches!(item, toml::Value::String(_)))
                }
                (Kind::Table, toml::Value::Table(inner)) => {
                    self.check_table(&path, inner);
                    true
                }
                _ => false,
            };
            if !ok {
                self.at_value(
                    &path,
                    format!("expected {}, found {}", kind.describe(), describe_value(value)),
                );
                bad.push(key.clone());
            }
        }
        for key in bad {
            table.remove(&key);
        }
    }
}

fn describe_value(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
        toml::Value::Array(_) => "an array (of the wrong element type)".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

impl Config {
    /// Reads and validates a configuration file (the file alone, no environment).
    ///
    /// Relative paths in it resolve against the file's folder; `api_key_file` is read now.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(path.display().to_string(), None, format!("cannot read: {e}"))
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates configuration text. `origin` names the source in errors and, when it
    /// has a parent folder, is where relative paths resolve (as if the text were that file).
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let origin = origin.as_ref();
        let mut issues = Issues {
            origin: origin.display().to_string(),
            text,
            spans: Spans::default(),
            issues: Vec::new(),
        };

        // 1. Syntax: report every syntax error the recovering parser finds.
        let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for e in syntax {
                issues.at_span(e.span(), e.message().trim().to_owned());
            }
            return Err(ConfigError { issues: issues.issues });
        }
        issues.spans = Spans::collect(text);
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                issues.at_span(e.span(), e.message().trim().to_owned());
                return Err(ConfigError { issues: issues.issues });
            }
        };

        // 2. Schema: unknown keys and wrong types, all at once. They are dropped from the table
        //    so that the checks below still run on everything else.
        let mut table = table;
        issues.check_table("", &mut table);

        // 3. Values that need parsing (listen) are checked here; a bad one is replaced by a
        //    placeholder so that the semantic checks below still run and every problem is
        //    reported together.
        if let Some(node) = table.get_mut("node").and_then(toml::Value::as_table_mut) {
            if let Some(listen) = node.get("listen").and_then(toml::Value::as_str) {
                if let Err(e) = listen.parse::<SocketAddr>() {
                    issues.at_value(
                        "node.listen",
                        format!(
                            "{listen:?} is not an IP:port address ({e}); e.g. \"127.0.0.1:8080\""
                        ),
                    );
                    node.insert("listen".into(), toml::Value::String(DEFAULT_LISTEN.into()));
                }
            }
        }
        let mut config = match toml::Value::Table(table).try_into::<Config>() {
            Ok(config) => Some(config),
            Err(e) => {
                // The schema walk should have caught everything; keep serde as a backstop.
                issues.at_span(e.span(), e.message().trim().to_owned());
                None
            }
        };

        // 4. Semantic checks on the typed values.
        if let Some(config) = config.as_mut() {
            config.resolve_paths(origin.parent());
            for (key, message) in config.semantic_problems() {
                issues.at_value(&key, message);
            }
            if let Err((key, message)) = config.read_key_file() {
                issues.at_value(&key, message);
            }
        }
        if !issues.issues.is_empty() {
            issues.issues.sort_by_key(|i| i.position);
            return Err(ConfigError { issues: issues.issues });
        }
        Ok(config.expect("config is set when there are no issues"))
    }

    /// Resolves relative directories (and the key file) against `base`.
    fn resolve_paths(&mut self, base: Option<&Path>) {
        let Some(base) = base.filter(|b| !b.as_os_str().is_empty()) else { return };
        let node = &mut self.node;
        if node.data_dir.is_relative() {
            node.data_dir_as_written = WrittenPath(Some(node.data_dir.clone()));
        }
        for dir in [&mut node.data_dir, &mut node.log_dir, &mut node.summaries_dir] {
            if dir.is_relative() {
                *dir = clean_join(base, dir);
            }
        }
        let files = [
            node.security.api_key_file.as_mut(),
            node.tls.cert_file.as_mut(),
            node.tls.key_file.as_mut(),
            node.tls.client_ca_file.as_mut(),
            node.swarm.ca_file.as_mut(),
            node.swarm.cert_file.as_mut(),
            node.swarm.key_file.as_mut(),
        ];
        for file in files.into_iter().flatten() {
            if file.is_relative() && !file.as_os_str().is_empty() {
                *file = clean_join(base, file);
            }
        }
    }

    fn read_key_file(&mut self) -> Result<(), (String, String)> {
        let security = &mut self.node.security;
        let Some(file) = &security.api_key_file else { return Ok(()) };
        if security.api_key.is_some() {
            return Ok(()); // reported by semantic_problems
        }
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let key = text.trim().to_owned();
                if key.is_empty() {
                    return Err((
                        "node.security.api_key_file".into(),
                        format!("{} is empty", file.display()),
                    ));
                }
                if let Some(problem) = api_key_problem(&key) {
                    return Err((
                        "node.security.api_key_file".into(),
                        format!("{}: {problem}", file.display()),
                    ));
                }
                security.key_from_file = Some(key);
                Ok(())
            }
            Err(e) => Err((
                "node.security.api_key_file".into(),
                format!("cannot read {}: {e}", file.display()),
            )),
        }
    }

    /// Checks value ranges and combinations; returns `(dotted key, message)` pairs.
    fn semantic_problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let node = &self.node;
        let mut push = |key: &str, msg: String| out.push((key.to_owned(), msg));
        if node.id.trim().is_empty() {
            push("node.id", "must not be empty".into());
        }
        if node.data_dir.as_os_str().is_empty() {
            push("node.data_dir", "must not be empty".into());
        }
        if node.embedder != EMBEDDER_DUMMY {
            push(
                "node.embedder",
                format!(
                    "{:?} is not supported; the only embedder is \"{EMBEDDER_DUMMY}\" (it computes \
                     no vectors: asks rank by text relevance)",
                    node.embedder
                ),
            );
        }
        let storage = &node.storage;
        match storage.key_id.as_deref() {
            Some(id) if id.trim().is_empty() || id.contains(['=', '\0']) => push(
                "node.storage.key_id",
                format!("{id:?} cannot name a key (it is used in the variable {ENV_KEY_PREFIX}<KEY_ID>)"),
            ),
            None if storage.encryption_enabled => push(
                "node.storage.key_id",
                format!(
                    "encryption_enabled = true needs a key_id; the 32-byte master key is then read \
                     as hex from {ENV_KEY_PREFIX}<KEY_ID> (e.g. key_id = \"primary\" and \
                     {}=$(openssl rand -hex 32))",
                    StorageConfig::key_env_var("primary")
                ),
            ),
            _ => {}
        }
        let sec = &node.security;
        if !(0.0..=1.0).contains(&sec.importance_cap) {
            push("node.security.importance_cap", format!("{} is outside 0..1", sec.importance_cap));
        }
        if !sec.remember_per_sec.is_finite() || sec.remember_per_sec < 0.0 {
            push(
                "node.security.remember_per_sec",
                format!("{} must be >= 0 (0 = unlimited)", sec.remember_per_sec),
            );
        }
        if !sec.ask_per_min.is_finite() || sec.ask_per_min < 0.0 {
            push(
                "node.security.ask_per_min",
                format!("{} must be >= 0 (0 = unlimited)", sec.ask_per_min),
            );
        }
        if sec.api_key.is_some() && sec.api_key_file.is_some() {
            push(
                "node.security.api_key_file",
                "api_key and api_key_file are both set; keep one".into(),
            );
        }
        match sec.api_key.as_deref() {
            Some(k) if k.trim().is_empty() => {
                push("node.security.api_key", "must not be empty (remove the key instead)".into())
            }
            Some(k) => {
                if let Some(problem) = api_key_problem(k) {
                    push("node.security.api_key", problem);
                }
            }
            None => {}
        }
        if sec.max_body_bytes == 0 {
            push("node.security.max_body_bytes", "must be > 0".into());
        }
        let limits = &node.limits;
        for (key, value) in [
            ("node.limits.max_connections", limits.max_connections),
            ("node.limits.header_timeout_secs", limits.header_timeout_secs),
            ("node.limits.body_timeout_secs", limits.body_timeout_secs),
        ] {
            if value == 0 {
                push(key, "must be > 0".into());
            }
        }
        let degraded = node.health.disk_usage_degraded;
        if !(0.0..=1.0).contains(&degraded) {
            push("node.health.disk_usage_degraded", format!("{degraded} is outside 0..1"));
        }
        for (i, peer) in node.swarm.peers.iter().enumerate() {
            if let Err(msg) = check_peer_url(peer) {
                push("node.swarm.peers", format!("entry {i} {peer:?}: {msg}"));
            }
        }
        match (&node.swarm.cert_file, &node.swarm.key_file) {
            (Some(_), None) => {
                push("node.swarm.key_file", "cert_file is set; set key_file too".into())
            }
            (None, Some(_)) => {
                push("node.swarm.cert_file", "key_file is set; set cert_file too".into())
            }
            _ => {}
        }
        for (key, msg) in node.tls.problems() {
            push(key, msg);
        }
        out
    }

    /// Applies the `DWBASE_*` environment variables of this process (see [`ENV_VARS`]).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        let vars: Vec<(String, String)> = ENV_VARS
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_owned(), v)))
            .collect();
        self.apply_env_from(vars)
    }

    /// Applies overrides from `(name, value)` pairs (testable form of [`Config::apply_env`]).
    /// Unknown names are ignored; every bad value is reported, naming its variable.
    pub fn apply_env_from<I, K, V>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut issues = Vec::new();
        let mut tls_from_env: Vec<String> = Vec::new();
        let mut bad = |name: &str, message: String| {
            issues.push(ConfigIssue {
                origin: format!("env {name}"),
                position: None,
                key: None,
                message,
            })
        };
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref().trim());
            let node = &mut self.node;
            match name {
                ENV_DATA_DIR => {
                    if value.is_empty() {
                        bad(name, "must not be empty".into());
                    } else {
                        node.data_dir = PathBuf::from(value);
                        node.data_dir_as_written = WrittenPath::default();
                    }
                }
                ENV_MAX_RAM_MB | ENV_MAX_DISK_MB => match value.parse::<u64>() {
                    Ok(v) if name == ENV_MAX_RAM_MB => node.limits.max_ram_mb = v,
                    Ok(v) => node.limits.max_disk_mb = v,
                    Err(_) => {
                        bad(name, format!("{value:?} is not a whole number of MiB (0 = no cap)"))
                    }
                },
                ENV_LISTEN => match value.parse::<SocketAddr>() {
                    Ok(addr) => node.listen = addr,
                    Err(e) => bad(name, format!("{value:?} is not an IP:port address ({e})")),
                },
                ENV_NODE_ID => {
                    if value.is_empty() {
                        bad(name, "must not be empty".into());
                    } else {
                        node.id = value.to_owned();
                    }
                }
                ENV_API_KEY => {
                    if value.is_empty() {
                        bad(name, "must not be empty".into());
                    } else if let Some(problem) = api_key_problem(value) {
                        bad(name, problem);
                    } else {
                        node.security.api_key = Some(value.to_owned());
                        node.security.api_key_file = None;
                        node.security.key_from_file = None;
                    }
                }
                ENV_SWARM_PEERS => {
                    let peers: Vec<String> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let mut ok = true;
                    for peer in &peers {
                        if let Err(msg) = check_peer_url(peer) {
                            bad(name, format!("{peer:?}: {msg}"));
                            ok = false;
                        }
                    }
                    if ok {
                        node.swarm.peers = peers;
                    }
                }
                ENV_SWARM_ENABLED => match value.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => node.swarm.enabled = true,
                    "0" | "false" | "no" | "off" | "" => node.swarm.enabled = false,
                    _ => bad(name, format!("{value:?} is not a boolean (true/false/1/0)")),
                },
                ENV_SWARM_CA => {
                    if value.is_empty() {
                        bad(name, "must not be empty (a PEM file)".into());
                    } else {
                        node.swarm.ca_file = Some(PathBuf::from(value));
                    }
                }
                ENV_TLS_CERT | ENV_TLS_KEY | ENV_TLS_CLIENT_CA => {
                    if value.is_empty() {
                        bad(name, "must not be empty (a PEM file)".into());
                        continue;
                    }
                    let file = Some(PathBuf::from(value));
                    match name {
                        ENV_TLS_CERT => node.tls.cert_file = file,
                        ENV_TLS_KEY => node.tls.key_file = file,
                        _ => node.tls.client_ca_file = file,
                    }
                    tls_from_env.push(name.to_owned());
                }
                _ => {}
            }
        }
        if !tls_from_env.is_empty() {
            for (_, message) in self.node.tls.problems() {
                bad(&tls_from_env.join(", "), message);
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Refuses a non-loopback address without an API key unless `allow_insecure` is set.
    pub fn check_listen_security(&self, addr: SocketAddr) -> Result<(), String> {
        let sec = &self.node.security;
        if addr.ip().is_loopback() || sec.effective_api_key().is_some() || sec.allow_insecure {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {addr} (not a loopback address) without an API key. Add a key: \
             (umask 077; openssl rand -hex 32 > node.key), then set node.security.api_key_file = \
             \"node.key\" (relative to the config file) or node.security.api_key, or export \
             {ENV_API_KEY}; clients then send \"Authorization: Bearer <key>\". Or opt out: set \
             node.security.allow_insecure = true to accept unauthenticated access, or listen on \
             127.0.0.1"
        ))
    }

    /// Where the original DWBase would have found this config's store, when that is not where we
    /// look and a store is there: the original resolved a relative `data_dir` against the working
    /// directory `cwd`, we resolve it against the config file's folder. `None` when `data_dir`
    /// was absolute (or set by flag or environment), when both resolve to the same folder, or
    /// when no store is at the original's location.
    pub fn original_data_dir(&self, cwd: &Path) -> Option<PathBuf> {
        let written = self.node.data_dir_as_written.0.as_ref()?;
        let theirs = clean_join(cwd, written);
        let same =
            match (std::fs::canonicalize(&theirs), std::fs::canonicalize(&self.node.data_dir)) {
                (Ok(a), Ok(b)) => a == b,
                _ => theirs == self.node.data_dir,
            };
        (!same && holds_store(&theirs)).then_some(theirs)
    }

    /// Renders the configuration as TOML (the key read from `api_key_file` is not written).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }
}

/// Whether `dir` holds a sled store (ours or the original's): its `conf` and `db` files.
pub fn holds_store(dir: &Path) -> bool {
    dir.join("db").is_file() && dir.join("conf").is_file()
}

/// Joins `rel` onto `base`, dropping a leading `./` for tidier paths.
fn clean_join(base: &Path, rel: &Path) -> PathBuf {
    let rel = rel.strip_prefix(".").unwrap_or(rel);
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// A peer must be an `http://host:port` or `https://host:port` base URL.
fn check_peer_url(peer: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(peer).map_err(|e| format!("not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {:?} is not supported; use http:// or https://", url.scheme()));
    }
    if url.host_str().is_none() {
        return Err("has no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let c = Config::from_toml_str("", "mem.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.node.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.node.security.remember_per_sec, 10.0);
    }

    #[test]
    fn full_example_parses_and_resolves_paths() {
        let text = r#"
[node]
id = "node-a"
listen = "127.0.0.1:0"
data_dir = "./data"
log_dir = "logs"
summaries_dir = "/abs/summaries"
[node.security]
read_worlds = ["a"]
write_worlds = []
importance_cap = 0.8
remember_per_sec = 2
ask_per_min = 30.5
api_key = "secret-secret-secret"
allow_insecure = false
max_body_bytes = 1000
[node.health]
disk_usage_degraded = 0.85
[node.limits]
max_ram_mb = 64
max_disk_mb = 100
[node.swarm]
enabled = true
peers = ["http://127.0.0.1:7001"]
"#;
        let c = Config::from_toml_str(text, "/etc/dwbase/node.toml").unwrap();
        assert_eq!(c.node.id, "node-a");
        assert_eq!(c.node.data_dir, PathBuf::from("/etc/dwbase/data"));
        assert_eq!(c.node.log_dir, PathBuf::from("/etc/dwbase/logs"));
        assert_eq!(c.node.summaries_dir, PathBuf::from("/abs/summaries"));
        assert_eq!(c.node.security.remember_per_sec, 2.0);
        assert_eq!(c.node.security.effective_api_key(), Some("secret-secret-secret"));
        assert_eq!(c.node.limits.max_disk_mb, 100);
        assert!(c.node.swarm.enabled);
        // Round trip through our own renderer.
        let again = Config::from_toml_str(&c.to_toml_string(), "x.toml").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[node]\nlisten = \"127.0.0.1:1\"\n\n[node.security]\nimportance_kap = 0.5\n";
        let err = Config::from_toml_str(text, "conf/node.toml").unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        let issue = &err.issues[0];
        assert_eq!(issue.origin, "conf/node.toml");
        assert_eq!(issue.position, Some((5, 1)));
        assert_eq!(issue.key.as_deref(), Some("node.security.importance_kap"));
        let shown = issue.to_string();
        assert!(shown.starts_with("conf/node.toml:5:1: node.security.importance_kap:"), "{shown}");
        assert!(shown.contains("importance_cap"), "lists the expected keys: {shown}");
    }

    #[test]
    fn several_errors_reported_at_once() {
        let text = r#"
[node]
listen = "localhost"
colour = "blue"
[node.security]
importance_cap = 1.5
api_key = "0123456789abcdef"
api_key_file = "/nonexistent/key"
remember_per_sec = "fast"
[node.health]
disk_usage_degraded = 2
[node.limits]
max_ram_mb = -1
"#;
        let err = Config::from_toml_str(text, "bad.toml").unwrap_err();
        let keys: Vec<_> = err.issues.iter().filter_map(|i| i.key.clone()).collect();
        // Unknown keys, wrong types and bad values are all reported together, in file order.
        assert_eq!(
            keys,
            [
                "node.listen",
                "node.colour",
                "node.security.importance_cap",
                "node.security.api_key_file",
                "node.security.remember_per_sec",
                "node.health.disk_usage_degraded",
                "node.limits.max_ram_mb",
            ],
            "{err}"
        );
        for issue in &err.issues {
            assert!(issue.to_string().starts_with("bad.toml:"), "{issue}");
            assert!(issue.position.is_some(), "{issue}");
        }
        // Once the shape is right, the semantic problems are all reported together too.
        let text = r#"
[node]
listen = "localhost"
[node.security]
importance_cap = 1.5
api_key = "0123456789abcdef"
api_key_file = "/nonexistent/key"
[node.health]
disk_usage_degraded = 2
"#;
        let err = Config::from_toml_str(text, "bad.toml").unwrap_err();
        let keys: Vec<_> = err.issues.iter().filter_map(|i| i.key.clone()).collect();
        assert_eq!(
            keys,
            [
                "node.listen",
                "node.security.importance_cap",
                "node.security.api_key_file",
                "node.health.disk_usage_degraded"
            ],
            "{err}"
        );
        assert_eq!(err.issues[0].position, Some((3, 10)));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = Config::from_toml_str("[node\nlisten = 1", "s.toml").unwrap_err();
        assert!(err.issues[0].position.is_some(), "{err}");
        assert!(err.to_string().contains("s.toml:1:"), "{err}");
    }

    #[test]
    fn key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "  s3cret-s3cret-s3cret\n").unwrap();
        let text = "[node.security]\napi_key_file = \"key\"\n";
        let c = Config::from_toml_str(text, dir.path().join("n.toml")).unwrap();
        assert_eq!(c.node.security.effective_api_key(), Some("s3cret-s3cret-s3cret"));
        let err = Config::from_toml_str(
            "[node.security]\napi_key_file = \"missing\"\n",
            dir.path().join("n.toml"),
        )
        .unwrap_err();
        assert_eq!(err.issues[0].key.as_deref(), Some("node.security.api_key_file"));
        assert_eq!(err.issues[0].position, Some((2, 16)));
    }

    #[test]
    fn env_overrides_win_and_bad_values_name_the_variable() {
        let mut c = Config::from_toml_str("[node]\nid = \"file\"\n", "f.toml").unwrap();
        c.apply_env_from([
            (ENV_NODE_ID, "env-node"),
            (ENV_LISTEN, "0.0.0.0:9000"),
            (ENV_DATA_DIR, "/var/lib/dwbase"),
            (ENV_MAX_RAM_MB, "128"),
            (ENV_MAX_DISK_MB, "256"),
            (ENV_API_KEY, "0123456789abcdef"),
            (ENV_SWARM_PEERS, "http://a:1, http://b:2,"),
            (ENV_SWARM_ENABLED, "true"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        assert_eq!(c.node.id, "env-node");
        assert_eq!(c.node.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/dwbase"));
        assert_eq!(c.node.limits.max_ram_mb, 128);
        assert_eq!(c.node.limits.max_disk_mb, 256);
        assert_eq!(c.node.security.effective_api_key(), Some("0123456789abcdef"));
        assert_eq!(c.node.swarm.peers, ["http://a:1", "http://b:2"]);
        assert!(c.node.swarm.enabled);

        let err = c
            .apply_env_from([
                (ENV_MAX_RAM_MB, "lots"),
                (ENV_LISTEN, "nowhere"),
                (ENV_SWARM_PEERS, "ftp://x"),
            ])
            .unwrap_err();
        let origins: Vec<_> = err.issues.iter().map(|i| i.origin.as_str()).collect();
        assert_eq!(
            origins,
            ["env DWBASE_MAX_RAM_MB", "env DWBASE_LISTEN", "env DWBASE_SWARM_PEERS"]
        );
    }

    #[test]
    fn tls_keys_resolve_pair_up_and_have_env_overrides() {
        let text = "[node.tls]\ncert_file = \"tls/node.crt\"\nkey_file = \"/abs/node.key\"\n\
                    client_ca_file = \"ca.crt\"\n[node.swarm]\npeers = [\"https://b:7001\"]\n\
                    ca_file = \"ca.crt\"\n";
        let c = Config::from_toml_str(text, "/etc/dwbase/node.toml").unwrap();
        assert!(c.node.tls.enabled());
        assert_eq!(c.node.tls.cert_file, Some(PathBuf::from("/etc/dwbase/tls/node.crt")));
        assert_eq!(c.node.tls.key_file, Some(PathBuf::from("/abs/node.key")));
        assert_eq!(c.node.tls.client_ca_file, Some(PathBuf::from("/etc/dwbase/ca.crt")));
        assert_eq!(c.node.swarm.ca_file, Some(PathBuf::from("/etc/dwbase/ca.crt")));
        assert!(!Config::default().node.tls.enabled());

        let err = Config::from_toml_str("[node.tls]\ncert_file = \"a.crt\"\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.tls.key_file") && err.contains("DWBASE_TLS_KEY"), "{err}");
        let err = Config::from_toml_str("[node.tls]\nclient_ca_file = \"ca.crt\"\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.tls.client_ca_file"), "{err}");
        let err = Config::from_toml_str("[node.swarm]\npeers = [\"ftp://x:1\"]\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://"), "{err}");

        let mut c = Config::default();
        c.apply_env_from([
            (ENV_TLS_CERT, "/run/tls/tls.crt"),
            (ENV_TLS_KEY, "/run/tls/tls.key"),
            (ENV_SWARM_CA, "/run/tls/ca.crt"),
        ])
        .unwrap();
        assert!(c.node.tls.enabled());
        assert_eq!(c.node.swarm.ca_file, Some(PathBuf::from("/run/tls/ca.crt")));
        let err = Config::default().apply_env_from([(ENV_TLS_KEY, "/k")]).unwrap_err();
        assert_eq!(err.issues[0].origin, "env DWBASE_TLS_KEY");
        assert!(err.issues[0].message.contains("cert_file"), "{err}");
    }

    #[test]
    fn short_api_keys_are_refused_everywhere_with_a_way_to_make_one() {
        let err =
            Config::from_toml_str("[node.security]\napi_key = \"abc\"\n", "k.toml").unwrap_err();
        let issue = &err.issues[0];
        assert_eq!(issue.key.as_deref(), Some("node.security.api_key"));
        assert!(issue.message.contains("3 bytes") && issue.message.contains("16"), "{issue}");
        assert!(issue.message.contains("openssl rand -hex 32"), "{issue}");
        assert!(!issue.message.contains("abc"), "the key itself is never echoed: {issue}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "x\n").unwrap();
        let err = Config::from_toml_str(
            "[node.security]\napi_key_file = \"key\"\n",
            dir.path().join("n.toml"),
        )
        .unwrap_err();
        assert_eq!(err.issues[0].key.as_deref(), Some("node.security.api_key_file"));
        assert!(err.issues[0].message.contains("1 byte long"), "{err}");

        let err = Config::default().apply_env_from([(ENV_API_KEY, "short")]).unwrap_err();
        assert_eq!(err.issues[0].origin, "env DWBASE_API_KEY");
        assert!(err.issues[0].message.contains("openssl rand -hex 32"), "{err}");
        // Exactly the minimum is fine.
        let ok = "0123456789abcdef";
        assert_eq!(ok.len(), MIN_API_KEY_BYTES);
        assert!(api_key_problem(ok).is_none());
    }

    #[test]
    fn non_loopback_needs_a_key() {
        let mut c = Config::default();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let msg = c.check_listen_security(public).unwrap_err();
        assert!(msg.contains("0.0.0.0:8080") && msg.contains("api_key"), "{msg}");
        assert!(c.check_listen_security("127.0.0.1:1".parse().unwrap()).is_ok());
        c.node.security.api_key = Some("0123456789abcdef".into());
        assert!(c.check_listen_security(public).is_ok());
        c.node.security.api_key = None;
        c.node.security.allow_insecure = true;
        assert!(c.check_listen_security(public).is_ok());
    }

    #[test]
    fn original_keys_keep_their_meaning() {
        let text = "[node]\nembedder = \"dummy\"\n[node.storage]\nencryption_enabled = true\n\
                    key_id = \"fixture-key\"\n[node.health]\nindex_rebuild_warn_seconds = 5\n";
        let c = Config::from_toml_str(text, "o.toml").unwrap();
        assert!(c.node.storage.encryption_enabled);
        assert_eq!(c.node.health.index_rebuild_warn_seconds, 5);
        assert_eq!(StorageConfig::key_env_var("fixture-key"), "DWBASE_KEY_FIXTURE_KEY");
        assert_eq!(Config::from_toml_str(&c.to_toml_string(), "x.toml").unwrap(), c);

        let err = Config::from_toml_str("[node]\nembedder = \"bert\"\n", "e.toml").unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("e.toml:2:12: node.embedder:") && shown.contains("\"dummy\""),
            "{shown}"
        );
        let err = Config::from_toml_str("[node.storage]\nencryption_enabled = true\n", "k.toml")
            .unwrap_err();
        assert_eq!(err.issues[0].key.as_deref(), Some("node.storage.key_id"), "{err}");
        assert!(err.to_string().contains("DWBASE_KEY_PRIMARY"), "{err}");
    }

    #[test]
    fn original_data_dir_is_found_only_when_it_differs_and_holds_a_store() {
        let tmp = tempfile::tempdir().unwrap();
        let (etc, cwd) = (tmp.path().join("etc"), tmp.path().join("cwd"));
        let c =
            Config::from_toml_str("[node]\ndata_dir = \"./data\"\n", etc.join("n.toml")).unwrap();
        assert_eq!(c.node.data_dir, etc.join("data"));
        assert_eq!(c.original_data_dir(&cwd), None, "no store at the original's location");
        std::fs::create_dir_all(cwd.join("data")).unwrap();
        for f in ["db", "conf"] {
            std::fs::write(cwd.join("data").join(f), "x").unwrap();
        }
        assert_eq!(c.original_data_dir(&cwd), Some(cwd.join("data")));
        assert_eq!(c.original_data_dir(&etc), None, "same folder either way");
        let abs = Config::from_toml_str(
            &format!("[node]\ndata_dir = {:?}\n", etc.join("data")),
            etc.join("n.toml"),
        )
        .unwrap();
        assert_eq!(abs.original_data_dir(&cwd), None, "absolute paths mean the same to both");
        let mut env = c.clone();
        env.apply_env_from([(ENV_DATA_DIR, "/elsewhere")]).unwrap();
        assert_eq!(env.original_data_dir(&cwd), None, "set by environment");
    }
}
