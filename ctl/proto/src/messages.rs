//! Requests and responses. One enum per direction, one struct per variant.
//!
//! **Append only.** bincode encodes the variant index and the fields by position, so the order
//! of variants and fields *is* the protocol: add new variants at the end, never reorder, and
//! bump [`crate::PROTOCOL_VERSION`] for anything else. `tests/golden.rs` pins the bytes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request from a client to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Who are you? Answered with [`Response::Pong`].
    Ping,
    /// The status of every node. Answered with [`Response::Status`].
    Status,
    /// Start (or extend) the devnet. Answered with [`Response::Status`] once every node is
    /// spawned (not yet ready: clients poll `Status` to watch readiness).
    DeployDevnet(DevnetSpec),
    /// Start the single local node. Answered like [`Request::DeployDevnet`].
    DeployLocal(LocalSpec),
    /// Restart one node; clears a crash loop. Answered with [`Response::Done`].
    Restart(NodeRef),
    /// Stop nodes and wait for them to exit. Answered with [`Response::Done`].
    Stop(StopSpec),
    /// Exit the supervisor, stopping the nodes first or leaving them running for the next
    /// supervisor to adopt. Answered with [`Response::Done`] before it exits.
    Shutdown(ShutdownSpec),
    /// Node log lines: a stream of [`Response::LogLine`] closed by [`Response::EndOfStream`].
    Logs(LogsSpec),
}

/// A response from the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Identity of the supervisor.
    Pong(SupervisorInfo),
    /// Status of the supervisor and its nodes.
    Status(StatusReport),
    /// The request was carried out.
    Done(Done),
    /// The request was refused or failed.
    Error(ErrorReply),
    /// One line of a node's log (streams only).
    LogLine(LogLine),
    /// The stream is over; the reason says why.
    EndOfStream(EndOfStream),
}

/// Which deployment a node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// `<root>/devnet/`, nodes node-a, node-b, …
    Devnet,
    /// `<root>/local/`, one node.
    Local,
}

impl Group {
    /// The folder name under the state root.
    pub fn dir_name(self) -> &'static str {
        match self {
            Group::Devnet => "devnet",
            Group::Local => "local",
        }
    }
}

/// When a node is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit, restart.
    #[default]
    Always,
    /// Restart unless it exited with code 0.
    OnFailure,
    /// Never restart.
    Never,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown restart policy {other:?} (expected always, on-failure or never)"
            )),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        })
    }
}

/// What the supervisor should make of a devnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevnetSpec {
    /// How many nodes (≥ 1).
    pub nodes: u32,
    /// Port of node-a; node-b gets base_port + 1, and so on.
    pub base_port: u16,
    /// Give every node the others as swarm peers.
    pub swarm: bool,
    /// Base node config that is rewritten per node; `None` means the built-in devnet template.
    pub template: Option<PathBuf>,
    /// Restart policy of every node.
    pub restart_policy: RestartPolicy,
    /// Environment overrides passed on to every node (DWBASE_MAX_RAM_MB, …).
    pub env: Vec<(String, String)>,
    /// How long `stop` waits after SIGTERM before SIGKILL, in milliseconds.
    pub stop_timeout_ms: u64,
}

/// What the supervisor should make of the local node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSpec {
    /// The node config (absolute path); `None` means the built-in local template.
    pub config: Option<PathBuf>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Environment overrides passed on to the node.
    pub env: Vec<(String, String)>,
    /// How long `stop` waits after SIGTERM before SIGKILL, in milliseconds.
    pub stop_timeout_ms: u64,
}

/// Names one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node's name (node-a, …, or the local node's id).
    pub node: String,
}

/// Which nodes to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSpec {
    /// Node names; empty means every node of the groups below.
    pub nodes: Vec<String>,
    /// Restrict to one group; `None` means every group.
    pub group: Option<Group>,
    /// SIGTERM → SIGKILL grace, in milliseconds; `None` uses each node's own.
    pub timeout_ms: Option<u64>,
}

/// How the supervisor should exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownSpec {
    /// Stop every node first (`deploy stop`), or leave them for the next supervisor to adopt
    /// (`supervisor restart`).
    pub stop_nodes: bool,
}

/// Which log lines to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsSpec {
    /// One node, or `None` for every node interleaved.
    pub node: Option<String>,
    /// The last N lines (per node) before following; `None` means all that are kept.
    pub tail: Option<u32>,
    /// Keep the stream open and send new lines as they are written.
    pub follow: bool,
    /// Only lines written at or after this time (Unix milliseconds).
    pub since_unix_ms: Option<i64>,
}

/// Identity of a running supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    /// Its process id.
    pub pid: u32,
    /// Its build version.
    pub version: String,
    /// The state root it owns.
    pub root: PathBuf,
    /// The control socket it listens on.
    pub socket: PathBuf,
    /// Its Prometheus endpoint, if enabled (e.g. "http://127.0.0.1:9464/metrics").
    pub metrics_url: Option<String>,
    /// When it started (Unix milliseconds).
    pub started_unix_ms: i64,
}

/// The supervisor and every node it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The supervisor.
    pub supervisor: SupervisorInfo,
    /// Every node, devnet first in name order, then local.
    pub nodes: Vec<NodeStatus>,
}

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Spawned, `/readyz` not yet 200.
    Starting,
    /// `/readyz` answers 200.
    Ready,
    /// Was ready, now `/readyz` answers 503 (disk, index, …).
    Degraded,
    /// Running but `/readyz` does not answer.
    Unready,
    /// Exited; waiting out the backoff before the next restart.
    Backoff,
    /// Exited too often in a short window; restarts slowed to the cap.
    CrashLoop,
    /// Being stopped (SIGTERM sent).
    Stopping,
    /// Stopped on request, or exited and not to be restarted.
    Stopped,
}

impl NodeState {
    /// The word status prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unready => "unready",
            Self::Backoff => "backoff",
            Self::CrashLoop => "crash-loop",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// Ended, but how is unknown: the process was not the supervisor's own child (it was
    /// adopted from an earlier supervisor, or died while no supervisor ran), so its exit
    /// status could not be collected.
    Unknown,
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit {c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
            Self::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// The last exit of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Code or signal.
    pub kind: ExitKind,
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
}

/// One node, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name (node-a, … or the local node's id).
    pub name: String,
    /// Node id (what the node reports in /health).
    pub id: String,
    /// Devnet or local.
    pub group: Group,
    /// Current process id, if running.
    pub pid: Option<u32>,
    /// HTTP port.
    pub port: u16,
    /// What it is doing.
    pub state: NodeState,
    /// `/readyz` answered 200 at the last probe.
    pub ready: bool,
    /// Restarts since it was deployed (or since `restart` cleared a crash loop).
    pub restarts: u32,
    /// Time since the current process started, in milliseconds.
    pub uptime_ms: Option<u64>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// The last exit, if any.
    pub last_exit: Option<LastExit>,
    /// The node's folder (holds data/, logs/, summaries/, config.toml).
    pub dir: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its current log file.
    pub log_path: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    /// Why it is not ready, or what went wrong last (spawn error, probe error).
    pub message: Option<String>,
    /// The last log lines, filled in when the node is in a crash loop or failed to start.
    pub last_log_lines: Vec<String>,
}

/// Success with a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// What was done.
    pub message: String,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request was malformed or asked for something impossible (`--nodes 0`).
    BadRequest,
    /// No such node.
    UnknownNode,
    /// A port is already taken.
    PortInUse,
    /// A node config is invalid.
    BadConfig,
    /// Spawning or stopping failed.
    Process,
    /// Something else failed inside the supervisor.
    Internal,
    /// The request needs a state the nodes are not in (e.g. deploying over a running devnet
    /// of another size).
    Conflict,
}

/// A refusal or failure, with a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Which kind.
    pub kind: ErrorKind,
    /// What went wrong, naming the node, port or file.
    pub message: String,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Which node wrote it.
    pub node: String,
    /// When it was written (Unix milliseconds), from the line's timestamp.
    pub at_unix_ms: i64,
    /// The line as written by the node, without the timestamp prefix or newline.
    pub text: String,
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndOfStream {
    /// Everything asked for was sent (no follow).
    Done,
    /// The followed node(s) were stopped.
    NodeStopped,
    /// The supervisor is shutting down.
    SupervisorShutdown,
    /// The stream failed; the message says why.
    Failed(String),
}

/// The one wording of "no such node", used by the supervisor's `UnknownNode` replies and by
/// the CLI when it works from state.json: names the node asked for and the ones that exist.
pub fn unknown_node_message(node: &str, known: &[&str]) -> String {
    if known.is_empty() {
        format!("no node named {node:?}: nothing is deployed")
    } else {
        format!("no node named {node:?} (known nodes: {})", known.join(", "))
    }
}
