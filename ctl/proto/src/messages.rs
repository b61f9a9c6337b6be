//! Requests and responses. One enum per direction, one struct per variant.
//!
//! **Append only.** bincode encodes the variant index and the fields by position, so the order
//! of variants and fields *is* the protocol: add new variants at the end, never reorder, and
//! bump [`crate::PROTOCOL_VERSION`] for anything else. `tests/golden.rs` pins the bytes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::state::Desired;

/// A request from a client to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Who are you? Answered with [`Response::Pong`].
    Ping,
    /// The status of every node. Answered with [`Response::Status`].
    Status,
    /// Make the devnet match this spec (declarative: the supervisor diffs it against what runs
    /// and applies the plan). Answered with a stream: [`Response::Plan`] first, then
    /// [`Response::Event`]s of the group while the plan is carried out, then
    /// [`Response::Deployed`] once every node the plan touched is ready, or
    /// [`Response::Error`] (kind `RolloutFailed` names the node that halted it). With
    /// `options.dry_run` the stream is `Plan` then `Done`, and nothing changes.
    DeployDevnet(DevnetSpec),
    /// Make the local node match this spec. Answered like [`Request::DeployDevnet`].
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
    /// Supervisor notices: [`Response::Status`] (the snapshot to start from), then one
    /// [`Response::Event`] per change, closed by [`Response::EndOfStream`].
    Events(EventsSpec),
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
    /// What a deploy will do (first frame of a deploy stream).
    Plan(Plan),
    /// Something happened to a node (streams only).
    Event(Event),
    /// A deploy finished: every node it touched is ready (last frame of a deploy stream).
    Deployed(DeployReport),
}

/// Which deployment a node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
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

/// A node config template as the CLI read it: its contents travel with the spec, so the
/// supervisor applies exactly what the operator had on disk when they ran the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Where it was read from (absolute): names it in messages, and relative paths inside it
    /// (`api_key_file`) resolve against its folder.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// How the supervisor decides that a running node is hung: `GET /healthz` every `period_ms`,
/// each with `timeout_ms`; `failures` failures in a row stop the node's group and restart it
/// per policy (reason `liveness`). Readiness (`/readyz`) never restarts a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessSpec {
    /// Time between probes, in milliseconds (0 turns liveness probing off).
    pub period_ms: u64,
    /// Timeout of one probe, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that restart the node.
    pub failures: u32,
}

impl LivenessSpec {
    /// The defaults: 5 s period, 2 s timeout, 3 failures — a hung node is restarted within
    /// about 20 s, a node busy for a few seconds is not.
    pub const DEFAULT: Self = Self { period_ms: 5_000, timeout_ms: 2_000, failures: 3 };

    /// Whether probing is on.
    pub fn enabled(&self) -> bool {
        self.period_ms > 0 && self.failures > 0
    }
}

impl Default for LivenessSpec {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a deploy is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOptions {
    /// Only compute and return the plan; change nothing.
    pub dry_run: bool,
    /// Delete the data of nodes the spec removes (default: stop them, keep their folders).
    pub prune: bool,
    /// How long each started or replaced node has to become ready before the rollout halts.
    pub ready_timeout_ms: u64,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self { dry_run: false, prune: false, ready_timeout_ms: 30_000 }
    }
}

/// What the devnet should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevnetSpec {
    /// How many nodes (≥ 1).
    pub nodes: u32,
    /// Port of node-a; node-b gets base_port + 1, and so on.
    pub base_port: u16,
    /// Give every node the others as swarm peers.
    pub swarm: bool,
    /// Serve HTTPS: the supervisor keeps a throwaway CA and one certificate per node under
    /// `<root>/devnet/tls/` (made on first use), and the peers are `https://` URLs.
    pub tls: bool,
    /// Base node config that is rewritten per node; `None` means the built-in devnet template.
    pub template: Option<Template>,
    /// Restart policy of every node.
    pub restart_policy: RestartPolicy,
    /// Environment overrides passed on to every node (DWBASE_MAX_DISK_MB, …).
    pub env: Vec<(String, String)>,
    /// How long `stop` waits after SIGTERM before SIGKILL, in milliseconds.
    pub stop_timeout_ms: u64,
    /// Liveness probing; `None` takes the template's `[liveness]` table, else the defaults.
    pub liveness: Option<LivenessSpec>,
    /// How to carry it out.
    pub options: DeployOptions,
}

/// What the local node should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSpec {
    /// The node config; `None` means the built-in local template.
    pub config: Option<Template>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Environment overrides passed on to the node.
    pub env: Vec<(String, String)>,
    /// How long `stop` waits after SIGTERM before SIGKILL, in milliseconds.
    pub stop_timeout_ms: u64,
    /// Liveness probing; `None` takes the config's `[liveness]` table, else the defaults.
    pub liveness: Option<LivenessSpec>,
    /// How to carry it out.
    pub options: DeployOptions,
}

/// Which notices an [`Request::Events`] stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsSpec {
    /// Only this group's nodes; `None` for all.
    pub group: Option<Group>,
}

/// What a deploy does to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanAction {
    /// Matches the spec and runs: left alone (same pid).
    Unchanged,
    /// New: created and started.
    Add,
    /// Its config or environment changed: stopped and started again with the new one, one
    /// node at a time.
    Replace,
    /// Only supervision settings changed (restart policy, stop timeout, liveness): applied in
    /// place, the process keeps running.
    Update,
    /// Matches the spec but is stopped (`deploy stop NODE`): started.
    Start,
    /// Not in the spec any more: stopped and forgotten; its folder is kept.
    Remove,
    /// Not in the spec any more: stopped, forgotten and its folder deleted (`--prune`).
    Prune,
}

impl PlanAction {
    /// The word the plan prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Add => "add",
            Self::Replace => "replace",
            Self::Update => "update",
            Self::Start => "start",
            Self::Remove => "remove",
            Self::Prune => "prune",
        }
    }
}

/// One node's line of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// The node.
    pub node: String,
    /// What happens to it.
    pub action: PlanAction,
    /// Its port after the deploy (before, for a removal).
    pub port: u16,
    /// What differs, for people ("config: node.listen 127.0.0.1:7000 → 127.0.0.1:7100",
    /// "env: DWBASE_MAX_DISK_MB unset → 8192").
    pub changes: Vec<String>,
}

/// What a deploy will do, node by node, in the order it does it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The group deployed.
    pub group: Group,
    /// One step per node of the spec and per node the spec removes.
    pub steps: Vec<PlanStep>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.steps.iter().all(|s| s.action == PlanAction::Unchanged)
    }
}

/// The end of a successful deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// What was done.
    pub plan: Plan,
    /// Everything, after the deploy.
    pub status: StatusReport,
    /// Things the operator should know that did not fail the deploy (e.g. a node the plan
    /// left alone is in crash-loop).
    pub warnings: Vec<String>,
}

/// What happened to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The node was added to the supervisor's set (deploy, or found at start-up).
    Added,
    /// A process was spawned for it.
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// A process of an earlier supervisor was taken over.
    Adopted {
        /// Its pid.
        pid: u32,
    },
    /// Its state word changed (starting → ready, ready → degraded, … → crash-loop).
    State {
        /// Before.
        from: NodeState,
        /// After.
        to: NodeState,
    },
    /// Its process exited.
    Exited(LastExit),
    /// A liveness probe failed (the count is of failures in a row).
    LivenessFailed {
        /// Failures in a row so far.
        failures: u32,
        /// What the probe saw.
        reason: String,
    },
    /// A deploy is working on it (e.g. "replacing (2/3)").
    Rollout(String),
    /// It was removed from the supervisor's set.
    Removed,
}

/// A notice of the supervisor, with the node's status after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
    /// Which node.
    pub node: String,
    /// Its group.
    pub group: Group,
    /// What happened.
    pub kind: EventKind,
    /// The node's status afterwards (`None` once removed).
    pub status: Option<NodeStatus>,
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
    /// What it found and did when it started.
    pub startup: StartupReport,
}

/// What a supervisor found when it started on a root, and what it did about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupReport {
    /// Nodes of an earlier supervisor that still ran and were taken over.
    pub adopted: Vec<String>,
    /// Recorded nodes that had died while no supervisor ran, restarted per policy.
    pub restarted: Vec<String>,
    /// Running nodes that no state file listed (lost or corrupt state.json), found through
    /// their folders or command lines and adopted.
    pub recovered: Vec<String>,
    /// Problems with the state files (moved aside, unreadable, not writable).
    pub warnings: Vec<String>,
}

impl StartupReport {
    /// One line for people: "adopted 3 nodes, restarted node-a", or `None` when there is
    /// nothing to say.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        let list = |v: &[String]| {
            if v.len() > 4 {
                format!("{} nodes", v.len())
            } else {
                v.join(", ")
            }
        };
        if !self.adopted.is_empty() {
            parts.push(format!("adopted {}", list(&self.adopted)));
        }
        if !self.recovered.is_empty() {
            parts.push(format!("recovered {} (not in state.json)", list(&self.recovered)));
        }
        if !self.restarted.is_empty() {
            parts.push(format!("restarted {}", list(&self.restarted)));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// The supervisor and every node it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The supervisor.
    pub supervisor: SupervisorInfo,
    /// Every node, devnet first in name order, then local.
    pub nodes: Vec<NodeStatus>,
    /// Problems the operator should see (e.g. state.json cannot be written).
    pub warnings: Vec<String>,
}

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Why a process ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ExitCause {
    /// By itself (a crash, or an exit nobody asked for).
    #[default]
    Unexpected,
    /// It was asked to: stop, restart, or a deploy replacing it.
    Requested,
    /// Its liveness probe failed too often, so the supervisor stopped it.
    Liveness,
}

impl ExitCause {
    /// The word status prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unexpected => "crash",
            Self::Requested => "requested",
            Self::Liveness => "liveness",
        }
    }
}

/// The last exit of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Code or signal.
    pub kind: ExitKind,
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
    /// Why.
    #[serde(default)]
    pub cause: ExitCause,
    /// What the node said about it right before it exited ([`crate::notify`]), e.g. why its
    /// store did not open.
    #[serde(default)]
    pub reason: Option<String>,
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
    /// Restarts since it was deployed: after exits, manual `restart`s and liveness restarts.
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
    /// Whether the operator wants it running.
    pub desired: Desired,
    /// Its liveness probing.
    pub liveness: LivenessSpec,
    /// Liveness probes failed in a row right now.
    pub liveness_failures: u32,
    /// The base URL of its API on this machine (`http://127.0.0.1:7000`, or `https://…` when
    /// its config serves TLS).
    pub url: String,
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
    /// The request needs a state the nodes are not in.
    Conflict,
    /// A deploy's rollout halted at a node that did not become ready; the nodes of the
    /// reply show which and why. Every other node was left running.
    RolloutFailed,
    /// The supervisor has too many connections and none could be freed.
    Busy,
}

/// A refusal or failure, with a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Which kind.
    pub kind: ErrorKind,
    /// What went wrong, naming the node, port or file.
    pub message: String,
    /// The nodes concerned, with their state and last log lines (a failed rollout).
    pub nodes: Vec<NodeStatus>,
}

impl ErrorReply {
    /// A reply without node details.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), nodes: Vec::new() }
    }
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
    /// The supervisor closed this stream to make room for a new connection (it was the
    /// oldest, at the connection limit).
    Evicted,
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
