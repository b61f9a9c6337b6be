//! The status documents: what `dwbase deploy status --json` prints and the supervisor's
//! `GET /v1/status` answers ([`StatusJson`], one shape for both, built by
//! [`StatusJson::from_report`]), and what `GET /v1/events` streams ([`EventJson`] and the
//! stream's own notices). Their JSON Schemas, generated from these types by schemars, are
//! `docs/status.schema.json` and `docs/events.schema.json`; a test keeps the files in step.
//!
//! Stable keys: new keys may be added (with [`STATUS_DOC_VERSION`] unchanged, so a reader
//! ignores what it does not know), none renamed or removed without a new version.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Desired, Event, EventKind, ExitCause, ExitKind, Group, LastExit, NodeState, NodeStatus,
    RestartPolicy, StatusReport, SupervisorInfo,
};

/// The `"version"` of the status document this build writes.
pub const STATUS_DOC_VERSION: u32 = 1;

/// The status of a state root: its supervisor and every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "dwbase status",
    description = "What `dwbase deploy status --json` prints and the supervisor's GET /v1/status answers."
)]
pub struct StatusJson {
    /// Version of this document's format (1). Readers refuse a higher one.
    pub version: u32,
    /// The state root (absolute).
    pub root: PathBuf,
    /// The supervisor.
    pub supervisor: SupervisorJson,
    /// Every node, devnet first in name order, then local.
    pub nodes: Vec<NodeJson>,
    /// What the operator should know (e.g. a state file that cannot be written).
    pub warnings: Vec<String>,
}

impl StatusJson {
    /// A document of the current version.
    pub fn new(
        root: PathBuf,
        supervisor: SupervisorJson,
        nodes: Vec<NodeJson>,
        warnings: Vec<String>,
    ) -> Self {
        Self { version: STATUS_DOC_VERSION, root, supervisor, nodes, warnings }
    }

    /// From a running supervisor's report: the one way both the CLI and the supervisor's
    /// `GET /v1/status` build the document.
    pub fn from_report(root: PathBuf, report: &StatusReport) -> Self {
        Self::new(
            root,
            SupervisorJson::from_info(&report.supervisor),
            report.nodes.iter().map(NodeJson::from_status).collect(),
            report.warnings.clone(),
        )
    }

    /// Whether every node that should run is ready, under a running supervisor: what
    /// `deploy status` exits 0 for (3 otherwise).
    pub fn all_desired_ready(&self) -> bool {
        self.supervisor.running
            && self.nodes.iter().filter(|n| n.desired == Desired::Running).all(|n| n.ready)
    }
}

/// The supervisor part of the status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SupervisorJson {
    /// Whether a supervisor answered; false means the document was read from state.json.
    pub running: bool,
    /// Its pid (null when not running).
    pub pid: Option<u32>,
    /// Its build version (when not running: the one recorded in state.json, if any).
    pub version: Option<String>,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its Prometheus endpoint, e.g. "http://127.0.0.1:9464/metrics", or null.
    pub metrics_url: Option<String>,
    /// When it started (Unix milliseconds), or null.
    pub started_unix_ms: Option<i64>,
    /// How long it has run (milliseconds), or null.
    pub uptime_ms: Option<u64>,
    /// The state files read when it is not running (empty when it is).
    pub state_files: Vec<PathBuf>,
}

impl SupervisorJson {
    /// From a running supervisor.
    pub fn from_info(info: &SupervisorInfo) -> Self {
        Self {
            running: true,
            pid: Some(info.pid),
            version: Some(info.version.clone()),
            socket: info.socket.clone(),
            metrics_url: info.metrics_url.clone(),
            started_unix_ms: Some(info.started_unix_ms),
            uptime_ms: Some(now_ms().saturating_sub(info.started_unix_ms).max(0) as u64),
            state_files: Vec::new(),
        }
    }
}

/// A node's last exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LastExitJson {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if it was killed by one (both null: how it ended is unknown).
    pub signal: Option<i32>,
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
    /// Why: "unexpected" (it crashed or was killed by someone else), "requested" (a stop,
    /// restart or deploy), "liveness" (stopped by the supervisor after failed probes).
    pub cause: ExitCause,
    /// What the node said about it right before it exited (e.g. why its store did not open);
    /// null when it said nothing.
    #[serde(default)]
    pub reason: Option<String>,
}

impl From<&LastExit> for LastExitJson {
    fn from(e: &LastExit) -> Self {
        let (code, signal) = match e.kind {
            ExitKind::Code(c) => (Some(c), None),
            ExitKind::Signal(s) => (None, Some(s)),
            ExitKind::Unknown => (None, None),
        };
        Self { code, signal, at_unix_ms: e.at_unix_ms, cause: e.cause, reason: e.reason.clone() }
    }
}

/// A node's liveness probing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LivenessJson {
    /// Probe period in milliseconds (0: off).
    pub period_ms: u64,
    /// Timeout of one probe in milliseconds.
    pub timeout_ms: u64,
    /// Failures in a row that restart the node.
    pub failures: u32,
    /// Failures in a row so far.
    pub failing: u32,
}

/// One node of the status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeJson {
    /// The name commands take: node-a, node-b, … in the devnet, the id of the local node.
    pub name: String,
    /// The id the node reports in its /health.
    pub id: String,
    /// "devnet" or "local".
    pub group: Group,
    /// The pid of its process, null while none runs.
    pub pid: Option<u32>,
    /// The port of its HTTP API.
    pub port: u16,
    /// Base URL of its API on this machine: `http://127.0.0.1:7000`, or `https://…` when its
    /// config serves TLS.
    pub url: String,
    /// What it is doing: the supervisor's state word while one runs, a state.json word
    /// (alive, dead, pid-reused, stopped) when the document was read from state.json.
    #[schemars(schema_with = "state_schema")]
    pub state: String,
    /// `/readyz` answered 200 at the last probe (false when not supervised).
    pub ready: bool,
    /// Restarts since it was deployed (after exits, `restart`s and liveness restarts).
    pub restarts: u32,
    /// Time since the current process started (milliseconds), or null.
    pub uptime_ms: Option<u64>,
    /// "always", "on-failure" or "never": whether it is restarted after an exit.
    pub restart_policy: RestartPolicy,
    /// How its last process ended, or null if none did.
    pub last_exit: Option<LastExitJson>,
    /// Absolute path of the node's folder (holds data/, logs/, summaries/, config.toml).
    pub dir: PathBuf,
    /// Absolute path of the data dir (sled files).
    pub data_dir: PathBuf,
    /// Absolute path of the log file written now (rotated ones sit beside it).
    pub log_path: PathBuf,
    /// Absolute path of the node config the supervisor rendered.
    pub config_path: PathBuf,
    /// For people: why it is not ready, or what went wrong last (spawn or probe error); null
    /// when there is nothing to say.
    pub message: Option<String>,
    /// Whether it should run ("running") or was stopped on purpose ("stopped").
    pub desired: Desired,
    /// Liveness probing (null when read from state.json).
    pub liveness: Option<LivenessJson>,
}

impl NodeJson {
    /// From a supervised node.
    pub fn from_status(n: &NodeStatus) -> Self {
        Self {
            name: n.name.clone(),
            id: n.id.clone(),
            group: n.group,
            pid: n.pid,
            port: n.port,
            url: n.url.clone(),
            state: n.state.as_str().to_owned(),
            ready: n.ready,
            restarts: n.restarts,
            uptime_ms: n.uptime_ms,
            restart_policy: n.restart_policy,
            last_exit: n.last_exit.as_ref().map(LastExitJson::from),
            dir: n.dir.clone(),
            data_dir: n.data_dir.clone(),
            log_path: n.log_path.clone(),
            config_path: n.config_path.clone(),
            message: n.message.clone(),
            desired: n.desired,
            liveness: Some(LivenessJson {
                period_ms: n.liveness.period_ms,
                timeout_ms: n.liveness.timeout_ms,
                failures: n.liveness.failures,
                failing: n.liveness_failures,
            }),
        }
    }
}

/// A node's state word in a document read from state.json, when no supervisor answered
/// (`stopped` is also a supervised state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackState {
    /// The recorded process runs.
    Alive,
    /// The recorded process is gone.
    Dead,
    /// The recorded pid now belongs to another process.
    PidReused,
    /// Stopped on request.
    Stopped,
}

impl FallbackState {
    /// The word the document carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::PidReused => "pid-reused",
            Self::Stopped => "stopped",
        }
    }
}

/// A node's state word: a [`NodeState`] while a supervisor runs, a [`FallbackState`] word when
/// the document was read from state.json.
fn state_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let supervised = g.subschema_for::<NodeState>();
    let fallback = g.subschema_for::<FallbackState>();
    schemars::json_schema!({ "anyOf": [supervised, fallback] })
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One supervisor notice about a node, as `GET /v1/events` sends it: the `data:` of an event
/// whose `event:` field is this object's `"event"` word. The same notices as the control
/// socket's `Events` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventJson {
    /// What happened; names the event.
    #[serde(flatten)]
    pub what: EventWhat,
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
    /// Which node.
    pub node: String,
    /// Its group.
    pub group: Group,
    /// The node's status right after the event, as in the status document (null once removed).
    pub status: Option<NodeJson>,
}

/// What happened to a node: the `"event"` word and its own keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventWhat {
    /// The node was added to the supervisor's set (a deploy, or found at start-up).
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
    Exited {
        /// How and why.
        exit: LastExitJson,
    },
    /// A liveness probe failed.
    LivenessFailed {
        /// Failures in a row so far.
        failures: u32,
        /// What the probe saw.
        reason: String,
    },
    /// A deploy is working on it (e.g. "replacing (2/3)").
    Rollout {
        /// What it does.
        message: String,
    },
    /// It was removed from the supervisor's set.
    Removed,
}

impl EventWhat {
    /// The event's name: the `event:` field of its server-sent event.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Spawned { .. } => "spawned",
            Self::Adopted { .. } => "adopted",
            Self::State { .. } => "state",
            Self::Exited { .. } => "exited",
            Self::LivenessFailed { .. } => "liveness-failed",
            Self::Rollout { .. } => "rollout",
            Self::Removed => "removed",
        }
    }
}

impl From<&Event> for EventJson {
    fn from(e: &Event) -> Self {
        let what = match &e.kind {
            EventKind::Added => EventWhat::Added,
            EventKind::Spawned { pid } => EventWhat::Spawned { pid: *pid },
            EventKind::Adopted { pid } => EventWhat::Adopted { pid: *pid },
            EventKind::State { from, to } => EventWhat::State { from: *from, to: *to },
            EventKind::Exited(x) => EventWhat::Exited { exit: x.into() },
            EventKind::LivenessFailed { failures, reason } => {
                EventWhat::LivenessFailed { failures: *failures, reason: reason.clone() }
            }
            EventKind::Rollout(message) => EventWhat::Rollout { message: message.clone() },
            EventKind::Removed => EventWhat::Removed,
        };
        Self {
            what,
            at_unix_ms: e.at_unix_ms,
            node: e.node.clone(),
            group: e.group,
            status: e.status.as_ref().map(NodeJson::from_status),
        }
    }
}

/// `event: dropped`: the stream could not keep up (the client read too slowly) and left
/// events out; a `status` event with the current document follows at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DroppedJson {
    /// How many events were left out.
    pub dropped: u64,
    /// The same, for people.
    pub message: String,
}

/// `event: end`: the last event of a stream, sent when the supervisor shuts down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EndJson {
    /// Why the stream ends ("supervisor-shutdown").
    pub reason: String,
}

/// The `data:` of any event of `GET /v1/events`, by its `event:` name: `status` carries a
/// [`StatusJson`] (first, and again after `dropped`), `dropped` a [`DroppedJson`], `end` an
/// [`EndJson`], every other name an [`EventJson`]. For the schema only.
#[derive(JsonSchema)]
#[schemars(
    title = "dwbase events",
    description = "The data of each event of the supervisor's GET /v1/events (text/event-stream), by its event name: status, dropped, end, or a node event (added, spawned, adopted, state, exited, liveness-failed, rollout, removed)."
)]
#[serde(untagged)]
// Never built: it only describes the stream for the schema, so variant sizes do not matter.
#[allow(dead_code, clippy::large_enum_variant)]
enum EventsStreamData {
    /// `event: status`.
    Status(StatusJson),
    /// `event: dropped`.
    Dropped(DroppedJson),
    /// `event: end`.
    End(EndJson),
    /// A node event.
    Node(EventJson),
}

fn pretty(schema: schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema always serialises");
    s.push('\n');
    s
}

/// The JSON Schema of [`StatusJson`], pretty-printed with a final newline: what
/// `docs/status.schema.json` holds.
pub fn status_schema_json() -> String {
    pretty(schemars::schema_for!(StatusJson))
}

/// The JSON Schema of the data of `GET /v1/events`' events: what `docs/events.schema.json`
/// holds.
pub fn events_schema_json() -> String {
    pretty(schemars::schema_for!(EventsStreamData))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped schema files are what these types generate. To update them after changing
    /// the types: `DWBASE_UPDATE_SCHEMA=1 cargo test -p dwbase-proto status_doc`.
    #[test]
    fn the_schemas_in_docs_match_the_types() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        for (file, generated) in [
            ("status.schema.json", status_schema_json()),
            ("events.schema.json", events_schema_json()),
        ] {
            let path = docs.join(file);
            if std::env::var_os("DWBASE_UPDATE_SCHEMA").is_some() {
                std::fs::write(&path, &generated).unwrap();
            }
            let shipped = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            assert!(
                shipped == generated,
                "{} is out of date: run DWBASE_UPDATE_SCHEMA=1 cargo test -p dwbase-proto status_doc",
                path.display()
            );
        }
    }

    #[test]
    fn every_serde_word_is_in_the_schema() {
        let text = status_schema_json();
        let words = [Group::Devnet, Group::Local]
            .map(|g| serde_json::to_value(g).unwrap())
            .into_iter()
            .chain(
                [RestartPolicy::Always, RestartPolicy::OnFailure, RestartPolicy::Never]
                    .map(|p| serde_json::to_value(p).unwrap()),
            )
            .chain(
                [ExitCause::Unexpected, ExitCause::Requested, ExitCause::Liveness]
                    .map(|c| serde_json::to_value(c).unwrap()),
            )
            .chain([Desired::Running, Desired::Stopped].map(|d| serde_json::to_value(d).unwrap()))
            .chain(
                [
                    FallbackState::Alive,
                    FallbackState::Dead,
                    FallbackState::PidReused,
                    FallbackState::Stopped,
                ]
                .map(|s| {
                    assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
                    serde_json::to_value(s).unwrap()
                }),
            );
        for word in words {
            assert!(text.contains(&word.to_string()), "{word} missing from the status schema");
        }
        for s in [NodeState::CrashLoop, NodeState::Backoff, NodeState::Ready] {
            assert!(text.contains(&format!("\"{}\"", s.as_str())), "{s}");
        }
    }

    fn status(name: &str) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            id: name.into(),
            group: Group::Devnet,
            pid: Some(42),
            port: 7000,
            url: "http://127.0.0.1:7000".into(),
            state: NodeState::Ready,
            ready: true,
            restarts: 1,
            uptime_ms: Some(5),
            restart_policy: RestartPolicy::Always,
            last_exit: None,
            dir: "/r/devnet/node-a".into(),
            data_dir: "/r/devnet/node-a/data".into(),
            log_path: "/r/devnet/node-a/logs/node.log".into(),
            config_path: "/r/devnet/node-a/config.toml".into(),
            message: None,
            last_log_lines: vec![],
            desired: Desired::Running,
            liveness: crate::LivenessSpec::DEFAULT,
            liveness_failures: 0,
        }
    }

    #[test]
    fn events_name_themselves_and_round_trip() {
        let exit = LastExit {
            kind: ExitKind::Signal(9),
            at_unix_ms: 7,
            cause: ExitCause::Unexpected,
            reason: Some("opening the store: no space".into()),
        };
        let kinds = [
            (EventKind::Added, "added"),
            (EventKind::Spawned { pid: 1 }, "spawned"),
            (EventKind::Adopted { pid: 1 }, "adopted"),
            (EventKind::State { from: NodeState::Starting, to: NodeState::Ready }, "state"),
            (EventKind::Exited(exit.clone()), "exited"),
            (
                EventKind::LivenessFailed { failures: 2, reason: "timeout".into() },
                "liveness-failed",
            ),
            (EventKind::Rollout("replacing (1/2)".into()), "rollout"),
            (EventKind::Removed, "removed"),
        ];
        for (kind, name) in kinds {
            let ev = Event {
                at_unix_ms: 9,
                node: "node-a".into(),
                group: Group::Devnet,
                kind,
                status: Some(status("node-a")),
            };
            let json = EventJson::from(&ev);
            assert_eq!(json.what.name(), name);
            let value = serde_json::to_value(&json).unwrap();
            assert_eq!(value["event"], name, "{value}");
            assert_eq!(value["status"]["restarts"], 1, "{value}");
            assert_eq!(serde_json::from_value::<EventJson>(value).unwrap(), json);
        }
        let exited = serde_json::to_value(EventJson::from(&Event {
            at_unix_ms: 9,
            node: "node-a".into(),
            group: Group::Devnet,
            kind: EventKind::Exited(exit),
            status: None,
        }))
        .unwrap();
        assert_eq!(exited["exit"]["signal"], 9, "{exited}");
        assert_eq!(exited["exit"]["cause"], "unexpected", "{exited}");
        assert!(exited["status"].is_null(), "{exited}");
    }

    #[test]
    fn version_comes_first_and_round_trips() {
        let report = StatusReport {
            supervisor: SupervisorInfo {
                pid: 1,
                version: "0.2.0".into(),
                root: "/r".into(),
                socket: "/r/supervisor.sock".into(),
                metrics_url: None,
                started_unix_ms: 0,
                startup: Default::default(),
            },
            nodes: vec![status("node-a")],
            warnings: vec!["w".into()],
        };
        let doc = StatusJson::from_report("/r".into(), &report);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.starts_with("{\"version\":1,"), "{text}");
        assert_eq!(serde_json::from_str::<StatusJson>(&text).unwrap(), doc);
        assert!(doc.all_desired_ready());
        assert_eq!(doc.warnings, ["w"]);
    }
}
