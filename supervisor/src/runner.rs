//! The runner: one task that owns every node's state (the single writer).
//!
//! It receives [`Command`]s from connection handlers (each with a oneshot for the answer) and
//! facts from the tasks it starts — a process exited, a probe answered, a timer ran out — all
//! over one channel. Each fact or request becomes an [`crate::fsm::Event`]; the actions that
//! [`crate::fsm::next`] returns are performed here, and state.json is saved after every change.
//!
//! Tasks it starts per running node: a watcher (`Child::wait` for our children, a pidfd for
//! adopted ones) and a readiness prober (GET /readyz every 250 ms while starting, every few
//! seconds once ready). None of them touches node state; they only send messages.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dwbase_proto::process::{self as pc, Signal};
use dwbase_proto::state::{Desired, Loaded, NodeRecord, StateFile, SupervisorRecord};
use dwbase_proto::{
    DevnetSpec, ErrorKind, ErrorReply, ExitKind, Group, LastExit, LocalSpec, NodeState, NodeStatus,
    Paths, Response, StatusReport, StopSpec, SupervisorInfo,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::fsm::{Action, Event, NodeFsm, Phase, RestartRules};
use crate::process::{self, Invocation, LogSink, SpawnSpec};
use crate::render::{self, RenderedNode};

/// How many log lines `status` shows for a failing node.
pub const LAST_LOG_LINES: usize = 20;

/// Everything the runner needs to know up front.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The state root.
    pub paths: Paths,
    /// The node program.
    pub node: Invocation,
    /// Where node output goes.
    pub sink: LogSink,
    /// Restart rules.
    pub rules: RestartRules,
    /// Who we are (for status and state.json).
    pub supervisor: SupervisorInfo,
    /// Our start time in clock ticks (for state.json).
    pub supervisor_start_time: Option<u64>,
    /// Probe period while a node is not ready.
    pub probe_fast: Duration,
    /// Probe period once a node is ready.
    pub probe_slow: Duration,
    /// Timeout of one probe.
    pub probe_timeout: Duration,
}

/// Where to read one node's log, for `logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// Node name.
    pub name: String,
    /// Its current log file.
    pub log_path: PathBuf,
    /// A process runs (or is about to be restarted).
    pub running: bool,
}

/// Something log followers care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeNotice {
    /// The node was (re)spawned.
    Spawned(String),
    /// The node is stopped and will not be restarted.
    Stopped(String),
}

/// A request for the runner.
#[derive(Debug)]
pub enum Command {
    /// The status report.
    Status(oneshot::Sender<StatusReport>),
    /// Deploy a devnet: answered with `Status` or `Error`.
    DeployDevnet(DevnetSpec, oneshot::Sender<Response>),
    /// Deploy the local node: answered with `Status` or `Error`.
    DeployLocal(LocalSpec, oneshot::Sender<Response>),
    /// Restart one node; the inner receiver resolves with the new pid once spawned.
    Restart(String, oneshot::Sender<Result<oneshot::Receiver<Result<u32, String>>, ErrorReply>>),
    /// Stop nodes; the receivers resolve as each process is gone.
    Stop(StopSpec, oneshot::Sender<Result<StopTicket, ErrorReply>>),
    /// Log files of one node or all.
    LogTargets(Option<String>, oneshot::Sender<Result<Vec<LogTarget>, ErrorReply>>),
    /// Save the final state (supervisor record cleared) and end the runner.
    Finish(oneshot::Sender<()>),
}

/// What a stop request set in motion.
#[derive(Debug)]
pub struct StopTicket {
    /// Names of the nodes asked to stop.
    pub nodes: Vec<String>,
    /// One receiver per node that still had a process; each resolves when it is gone.
    pub waits: Vec<oneshot::Receiver<()>>,
    /// How long to wait at most: the longest stop timeout involved plus a margin for the
    /// SIGKILL and the exit to be noticed.
    pub limit: Duration,
}

/// Added to a stop timeout to get the longest wait for a stop to complete.
pub const STOP_MARGIN: Duration = Duration::from_secs(30);

enum Msg {
    Cmd(Command),
    Exited { name: String, instance: u64, kind: Option<ExitKind> },
    Probe { name: String, instance: u64, outcome: ProbeOutcome },
    Timer { name: String, instance: Option<u64>, event: Event },
}

#[derive(Debug)]
enum ProbeOutcome {
    Ready,
    NotReady(String),
    Failed(String),
}

/// The cheap, cloneable way to talk to the runner.
#[derive(Debug, Clone)]
pub struct RunnerHandle {
    tx: mpsc::UnboundedSender<Msg>,
    notices: broadcast::Sender<NodeNotice>,
    status: watch::Receiver<Arc<Vec<NodeStatus>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Cmd(c) => write!(f, "Cmd({c:?})"),
            Msg::Exited { name, instance, kind } => {
                write!(f, "Exited({name}#{instance}, {kind:?})")
            }
            Msg::Probe { name, instance, outcome } => {
                write!(f, "Probe({name}#{instance}, {outcome:?})")
            }
            Msg::Timer { name, event, .. } => write!(f, "Timer({name}, {event:?})"),
        }
    }
}

/// The runner has ended (the supervisor is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the supervisor is shutting down")]
pub struct Gone;

impl RunnerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Cmd(make(tx))).map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// The status report.
    pub async fn status(&self) -> Result<StatusReport, Gone> {
        self.ask(Command::Status).await
    }

    /// Deploys a devnet.
    pub async fn deploy_devnet(&self, spec: DevnetSpec) -> Result<Response, Gone> {
        self.ask(|tx| Command::DeployDevnet(spec, tx)).await
    }

    /// Deploys the local node.
    pub async fn deploy_local(&self, spec: LocalSpec) -> Result<Response, Gone> {
        self.ask(|tx| Command::DeployLocal(spec, tx)).await
    }

    /// Asks for a restart; the receiver resolves once the new process is spawned.
    pub async fn restart(
        &self,
        node: String,
    ) -> Result<Result<oneshot::Receiver<Result<u32, String>>, ErrorReply>, Gone> {
        self.ask(|tx| Command::Restart(node, tx)).await
    }

    /// Asks nodes to stop.
    pub async fn stop(&self, spec: StopSpec) -> Result<Result<StopTicket, ErrorReply>, Gone> {
        self.ask(|tx| Command::Stop(spec, tx)).await
    }

    /// Stops nodes and waits until every process is gone (at most the ticket's limit).
    pub async fn stop_and_wait(
        &self,
        spec: StopSpec,
    ) -> Result<Result<Vec<String>, ErrorReply>, Gone> {
        match self.stop(spec).await? {
            Err(e) => Ok(Err(e)),
            Ok(ticket) => {
                let limit = ticket.limit;
                let all = futures::future::join_all(ticket.waits);
                if tokio::time::timeout(limit, all).await.is_err() {
                    return Ok(Err(ErrorReply {
                        kind: ErrorKind::Process,
                        message: format!("nodes did not exit within {limit:?}"),
                    }));
                }
                Ok(Ok(ticket.nodes))
            }
        }
    }

    /// Log files of one node (or every node).
    pub async fn log_targets(
        &self,
        node: Option<String>,
    ) -> Result<Result<Vec<LogTarget>, ErrorReply>, Gone> {
        self.ask(|tx| Command::LogTargets(node, tx)).await
    }

    /// Subscribes to spawn/stop notices (for log followers).
    pub fn notices(&self) -> broadcast::Receiver<NodeNotice> {
        self.notices.subscribe()
    }

    /// A view of every node's status, updated after every change (for metrics).
    pub fn status_watch(&self) -> watch::Receiver<Arc<Vec<NodeStatus>>> {
        self.status.clone()
    }

    /// Saves the final state and ends the runner.
    pub async fn finish(&self) -> Result<(), Gone> {
        self.ask(Command::Finish).await
    }
}

struct Node {
    rec: NodeRecord,
    fsm: NodeFsm,
    instance: u64,
    pid: Option<u32>,
    start_time: Option<u64>,
    probe_addr: SocketAddr,
    probe: Option<CancellationToken>,
    stop_timeout_override: Option<u64>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    spawn_waiters: Vec<oneshot::Sender<Result<u32, String>>>,
    last_log_lines: Vec<String>,
}

impl Node {
    fn new(rec: NodeRecord, probe_addr: SocketAddr, rules: RestartRules) -> Self {
        let mut fsm = NodeFsm::new(rec.restart_policy, rules);
        fsm.restarts = rec.restarts;
        fsm.desired = rec.desired;
        Self {
            rec,
            fsm,
            instance: 0,
            pid: None,
            start_time: None,
            probe_addr,
            probe: None,
            stop_timeout_override: None,
            stop_waiters: vec![],
            spawn_waiters: vec![],
            last_log_lines: vec![],
        }
    }

    fn record(&self) -> NodeRecord {
        let mut r = self.rec.clone();
        r.pid = self.pid;
        r.start_time = if self.pid.is_some() { self.start_time } else { None };
        r.desired = self.fsm.desired;
        r.restarts = self.fsm.restarts;
        r
    }

    fn failing(&self) -> bool {
        match self.fsm.node_state() {
            NodeState::CrashLoop | NodeState::Backoff => true,
            NodeState::Stopped => self.fsm.desired == Desired::Running,
            NodeState::Starting => self.fsm.restarts > 0,
            _ => false,
        }
    }

    fn status(&self, with_logs: bool) -> NodeStatus {
        let state = self.fsm.node_state();
        let last_log_lines = if !with_logs {
            vec![]
        } else if !self.last_log_lines.is_empty() && state == NodeState::CrashLoop {
            self.last_log_lines.clone()
        } else if self.failing() {
            process::tail_lines(&self.rec.log_path, LAST_LOG_LINES)
        } else {
            vec![]
        };
        NodeStatus {
            name: self.rec.name.clone(),
            id: self.rec.id.clone(),
            group: self.rec.group,
            pid: self.pid,
            port: self.rec.port,
            state,
            ready: state == NodeState::Ready,
            restarts: self.fsm.restarts,
            uptime_ms: self.fsm.running_since().map(|t| t.elapsed().as_millis() as u64),
            restart_policy: self.rec.restart_policy,
            last_exit: self.rec.last_exit,
            dir: self.rec.dir.clone(),
            data_dir: self.rec.data_dir.clone(),
            log_path: self.rec.log_path.clone(),
            config_path: self.rec.config_path.clone(),
            message: self.fsm.message.clone(),
            last_log_lines,
        }
    }
}

/// The runner itself; build with [`Runner::new`], then `tokio::spawn(runner.run())`.
pub struct Runner {
    cfg: RunnerConfig,
    nodes: BTreeMap<String, Node>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    http: reqwest::Client,
    cancel: CancellationToken,
    dirty: bool,
    notices: broadcast::Sender<NodeNotice>,
    status_tx: watch::Sender<Arc<Vec<NodeStatus>>>,
    finishing: bool,
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
}

/// Sort key: devnet first in name order (node-b before node-aa), then local.
fn order(n: &Node) -> (u8, usize, String) {
    let g = match n.rec.group {
        Group::Devnet => 0,
        Group::Local => 1,
    };
    (g, n.rec.name.len(), n.rec.name.clone())
}

/// Reads a config's `node.listen`, for the probe address of a node found in state.json.
fn listen_of(config: &std::path::Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    doc.get("node")?.get("listen")?.as_str()?.parse().ok()
}

impl Runner {
    /// Builds the runner and its handle, loading both state files and adopting the nodes
    /// that still run. Fails only when a state file cannot be read at all or is too new.
    pub fn new(cfg: RunnerConfig) -> anyhow::Result<(Self, RunnerHandle)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (notices, _) = broadcast::channel(256);
        let (status_tx, status_rx) = watch::channel(Arc::new(Vec::new()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(cfg.probe_timeout)
            .connect_timeout(cfg.probe_timeout)
            .pool_max_idle_per_host(1)
            .build()?;
        let handle = RunnerHandle { tx: tx.clone(), notices: notices.clone(), status: status_rx };
        let mut runner = Self {
            cfg,
            nodes: BTreeMap::new(),
            tx,
            rx,
            http,
            cancel: CancellationToken::new(),
            dirty: true,
            notices,
            status_tx,
            finishing: false,
        };
        runner.load()?;
        Ok((runner, handle))
    }

    fn load(&mut self) -> anyhow::Result<()> {
        let mut records = vec![];
        for group in [Group::Devnet, Group::Local] {
            let path = self.cfg.paths.state_file(group);
            match StateFile::load(&path)? {
                Loaded::Missing => {}
                Loaded::Corrupt { moved_to, reason } => {
                    error!(
                        file = %path.display(), moved_to = %moved_to.display(),
                        "state file was unreadable ({reason}); moved it aside — nodes it listed are no longer tracked"
                    );
                    eprintln!(
                        "dwbase-supervisor: WARNING: {} was unreadable ({reason}); moved to {}",
                        path.display(),
                        moved_to.display()
                    );
                }
                Loaded::Ok(state) => {
                    for mut r in state.nodes {
                        if r.name.is_empty() {
                            r.name = r.id.clone();
                        }
                        // Version-0 files (the original tool) have no group field; trust the
                        // file they were in.
                        r.group = group;
                        records.push(r);
                    }
                }
            }
        }
        let now = Instant::now();
        for rec in records {
            if self.nodes.contains_key(&rec.name) {
                warn!(node = %rec.name, "listed twice in the state files; keeping the first");
                continue;
            }
            let liveness = match rec.pid {
                Some(pid) => dwbase_proto::process::liveness(pid, rec.start_time),
                None => dwbase_proto::process::Liveness::Dead,
            };
            let listen = listen_of(&rec.config_path)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], rec.port)));
            let name = rec.name.clone();
            let mut node = Node::new(rec, render::probe_addr(listen), self.cfg.rules);
            match liveness {
                dwbase_proto::process::Liveness::Alive => {
                    let pid = node.rec.pid.unwrap_or(0);
                    info!(node = %name, pid, "adopting a node that still runs");
                    node.pid = Some(pid);
                    node.start_time = node.rec.start_time;
                    self.nodes.insert(name.clone(), node);
                    self.watch_adopted(&name);
                    self.drive(&name, Event::Adopted { pid });
                }
                other if node.rec.desired == Desired::Running => {
                    if let Some(pid) = node.rec.pid {
                        info!(node = %name, pid, "recorded process is {}; restarting per policy", other.as_str());
                    }
                    // It was running and died while nobody watched: treat it as an exit of
                    // unknown status.
                    node.fsm.phase = Phase::Spawning;
                    node.fsm.message = Some("exited while no supervisor was running".into());
                    if node.rec.pid.take().is_some() {
                        node.rec.last_exit =
                            Some(LastExit { kind: ExitKind::Unknown, at_unix_ms: unix_ms_now() });
                    }
                    self.nodes.insert(name.clone(), node);
                    self.drive(&name, Event::Exited { kind: Some(ExitKind::Unknown) });
                    if self.nodes.get(&name).is_some_and(|n| n.fsm.phase == Phase::Stopped) {
                        debug!(node = %name, "policy says no restart; pruning");
                        self.nodes.remove(&name);
                    }
                }
                _ => debug!(node = %name, "stopped and not running; pruning"),
            }
        }
        let _ = now;
        self.dirty = true;
        Ok(())
    }

    /// Runs until [`RunnerHandle::finish`].
    pub async fn run(mut self) {
        self.save();
        self.publish();
        while let Some(msg) = self.rx.recv().await {
            let finish = self.handle(msg);
            if self.dirty {
                self.save();
            }
            self.publish();
            if let Some(reply) = finish {
                self.cancel.cancel();
                let _ = reply.send(());
                break;
            }
        }
    }

    fn publish(&mut self) {
        let snapshot: Vec<NodeStatus> = self.sorted().iter().map(|n| n.status(false)).collect();
        self.status_tx.send_if_modified(|cur| {
            if **cur == snapshot {
                false
            } else {
                *cur = Arc::new(snapshot);
                true
            }
        });
    }

    fn sorted(&self) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.nodes.values().collect();
        v.sort_by_key(|n| order(n));
        v
    }

    fn supervisor_record(&self) -> SupervisorRecord {
        SupervisorRecord {
            pid: self.cfg.supervisor.pid,
            start_time: self.cfg.supervisor_start_time,
            socket: self.cfg.supervisor.socket.clone(),
            version: self.cfg.supervisor.version.clone(),
            started_unix_ms: self.cfg.supervisor.started_unix_ms,
        }
    }

    fn save(&mut self) {
        self.dirty = false;
        for group in [Group::Devnet, Group::Local] {
            let nodes: Vec<NodeRecord> = self
                .sorted()
                .into_iter()
                .filter(|n| n.rec.group == group)
                .map(Node::record)
                .collect();
            let path = self.cfg.paths.state_file(group);
            if nodes.is_empty() && !path.exists() && !path.parent().is_some_and(|p| p.exists()) {
                continue;
            }
            let file = StateFile {
                version: dwbase_proto::state::STATE_VERSION,
                supervisor: if self.finishing { None } else { Some(self.supervisor_record()) },
                nodes,
            };
            if let Err(e) = file.save(&path) {
                error!("saving state: {e}");
            }
        }
    }

    fn status(&self) -> StatusReport {
        StatusReport {
            supervisor: self.cfg.supervisor.clone(),
            nodes: self.sorted().iter().map(|n| n.status(true)).collect(),
        }
    }

    fn handle(&mut self, msg: Msg) -> Option<oneshot::Sender<()>> {
        match msg {
            Msg::Cmd(cmd) => return self.command(cmd),
            Msg::Exited { name, instance, kind } => self.on_exit(&name, instance, kind),
            Msg::Probe { name, instance, outcome } => {
                let node = self.nodes.get(&name)?;
                if node.instance != instance || node.pid.is_none() {
                    return None;
                }
                let event = match outcome {
                    ProbeOutcome::Ready => Event::ProbeReady,
                    ProbeOutcome::NotReady(r) => Event::ProbeNotReady(r),
                    ProbeOutcome::Failed(r) => Event::ProbeFailed(r),
                };
                let before = node.fsm.node_state();
                self.drive(&name, event);
                if let Some(node) = self.nodes.get(&name) {
                    let after = node.fsm.node_state();
                    if after != before {
                        info!(node = %name, pid = ?node.pid, "{before} → {after}");
                    }
                }
            }
            Msg::Timer { name, instance, event } => {
                let node = self.nodes.get(&name)?;
                if instance.is_some_and(|i| i != node.instance) {
                    return None;
                }
                self.drive(&name, event);
            }
        }
        None
    }

    fn command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::DeployDevnet(spec, reply) => {
                let r = match self.deploy_devnet(spec) {
                    Ok(()) => Response::Status(self.status()),
                    Err(e) => Response::Error(e),
                };
                let _ = reply.send(r);
            }
            Command::DeployLocal(spec, reply) => {
                let r = match self.deploy_local(spec) {
                    Ok(()) => Response::Status(self.status()),
                    Err(e) => Response::Error(e),
                };
                let _ = reply.send(r);
            }
            Command::Restart(name, reply) => {
                let r = self.restart(&name);
                let _ = reply.send(r);
            }
            Command::Stop(spec, reply) => {
                let r = self.stop(&spec);
                let _ = reply.send(r);
            }
            Command::LogTargets(node, reply) => {
                let r = self.log_targets(node.as_deref());
                let _ = reply.send(r);
            }
            Command::Finish(reply) => {
                self.finishing = true;
                self.dirty = true;
                return Some(reply);
            }
        }
        None
    }

    fn unknown_node(&self, name: &str) -> ErrorReply {
        let known: Vec<&str> = self.sorted().iter().map(|n| n.rec.name.as_str()).collect();
        err(ErrorKind::UnknownNode, dwbase_proto::unknown_node_message(name, &known))
    }

    fn log_targets(&self, node: Option<&str>) -> Result<Vec<LogTarget>, ErrorReply> {
        let pick = |n: &Node| LogTarget {
            name: n.rec.name.clone(),
            log_path: n.rec.log_path.clone(),
            running: n.fsm.node_state() != NodeState::Stopped,
        };
        match node {
            Some(name) => {
                self.nodes.get(name).map(|n| vec![pick(n)]).ok_or_else(|| self.unknown_node(name))
            }
            None => Ok(self.sorted().into_iter().map(pick).collect()),
        }
    }

    fn restart(
        &mut self,
        name: &str,
    ) -> Result<oneshot::Receiver<Result<u32, String>>, ErrorReply> {
        if !self.nodes.contains_key(name) {
            return Err(self.unknown_node(name));
        }
        let (tx, rx) = oneshot::channel();
        if let Some(n) = self.nodes.get_mut(name) {
            n.spawn_waiters.push(tx);
            n.last_log_lines.clear();
        }
        info!(node = %name, "restart requested");
        self.drive(name, Event::RestartRequested);
        Ok(rx)
    }

    fn stop(&mut self, spec: &StopSpec) -> Result<StopTicket, ErrorReply> {
        let in_group = |n: &Node| spec.group.is_none_or(|g| g == n.rec.group);
        let names: Vec<String> = if spec.nodes.is_empty() {
            self.sorted().into_iter().filter(|n| in_group(n)).map(|n| n.rec.name.clone()).collect()
        } else {
            for name in &spec.nodes {
                match self.nodes.get(name) {
                    Some(n) if in_group(n) => {}
                    _ => return Err(self.unknown_node(name)),
                }
            }
            spec.nodes.clone()
        };
        let mut waits = vec![];
        let mut longest = 0;
        for name in &names {
            let Some(n) = self.nodes.get_mut(name) else { continue };
            n.stop_timeout_override = spec.timeout_ms;
            longest = longest.max(spec.timeout_ms.unwrap_or(n.rec.stop_timeout_ms));
            if n.pid.is_some() {
                let (tx, rx) = oneshot::channel();
                n.stop_waiters.push(tx);
                waits.push(rx);
            }
            info!(node = %name, "stop requested");
            self.drive(name, Event::StopRequested);
            if let Some(n) = self.nodes.get(name) {
                if n.fsm.phase == Phase::Stopped {
                    let _ = self.notices.send(NodeNotice::Stopped(name.clone()));
                }
            }
        }
        Ok(StopTicket { nodes: names, waits, limit: Duration::from_millis(longest) + STOP_MARGIN })
    }

    fn prune(&mut self, group: Group) {
        let before = self.nodes.len();
        self.nodes.retain(|_, n| n.rec.group != group || n.fsm.phase != Phase::Stopped);
        if self.nodes.len() != before {
            self.dirty = true;
        }
    }

    fn running_in(&self, group: Group) -> usize {
        self.nodes.values().filter(|n| n.rec.group == group).count()
    }

    fn deploy_devnet(&mut self, spec: DevnetSpec) -> Result<(), ErrorReply> {
        let rendered = render::render_devnet(&self.cfg.paths, &spec)?;
        self.prune(Group::Devnet);
        let existing = self.running_in(Group::Devnet);
        if existing > 0 {
            if existing == spec.nodes as usize {
                return Ok(());
            }
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "a devnet of {existing} node{} already runs; `dwbase deploy stop` first",
                    if existing == 1 { "" } else { "s" }
                ),
            ));
        }
        for r in &rendered {
            if self.nodes.contains_key(&r.name) {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("the local node is named {:?}, like a devnet node; rename it", r.name),
                ));
            }
        }
        self.start_group(rendered, spec.restart_policy, spec.env, spec.stop_timeout_ms)
    }

    fn deploy_local(&mut self, spec: LocalSpec) -> Result<(), ErrorReply> {
        let rendered = render::render_local(&self.cfg.paths, &spec)?;
        self.prune(Group::Local);
        if self.running_in(Group::Local) > 0 {
            return Ok(());
        }
        if self.nodes.contains_key(&rendered.name) {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "the local node's id {:?} is the name of a devnet node; set another node.id",
                    rendered.name
                ),
            ));
        }
        self.start_group(vec![rendered], spec.restart_policy, spec.env, spec.stop_timeout_ms)
    }

    /// Writes and validates every config, checks every port, and only then spawns.
    fn start_group(
        &mut self,
        rendered: Vec<RenderedNode>,
        policy: dwbase_proto::RestartPolicy,
        env: Vec<(String, String)>,
        stop_timeout_ms: u64,
    ) -> Result<(), ErrorReply> {
        for r in &rendered {
            render::write_node(r)?;
            render::validate(r)?;
        }
        for r in &rendered {
            render::check_port(r)?;
        }
        for r in rendered {
            let rec = NodeRecord {
                id: r.id.clone(),
                name: r.name.clone(),
                group: r.group,
                port: r.listen.port(),
                pid: None,
                start_time: None,
                dir: r.dir.clone(),
                data_dir: r.data_dir.clone(),
                log_path: r.log_path.clone(),
                config_path: r.config_path.clone(),
                desired: Desired::Running,
                restart_policy: policy,
                restarts: 0,
                last_exit: None,
                stop_timeout_ms,
                env: env.clone(),
            };
            let name = r.name.clone();
            info!(node = %name, port = rec.port, "deploying");
            self.nodes
                .insert(name.clone(), Node::new(rec, render::probe_addr(r.listen), self.cfg.rules));
            self.drive(&name, Event::StartRequested);
        }
        self.dirty = true;
        Ok(())
    }

    fn on_exit(&mut self, name: &str, instance: u64, kind: Option<ExitKind>) {
        let Some(node) = self.nodes.get_mut(name) else { return };
        if node.instance != instance || node.pid.is_none() {
            return;
        }
        let pid = node.pid.take();
        node.start_time = None;
        if let Some(p) = node.probe.take() {
            p.cancel();
        }
        let requested = matches!(node.fsm.phase, Phase::Stopping { .. });
        // Our own children report their status; adopted processes (and a failed wait) cannot.
        let k = kind.unwrap_or(ExitKind::Unknown);
        node.rec.last_exit = Some(LastExit { kind: k, at_unix_ms: unix_ms_now() });
        if requested {
            info!(node = %name, ?pid, "stopped ({k})");
        } else if k == ExitKind::Unknown {
            warn!(node = %name, ?pid, "exited unexpectedly ({k}: not our child, adopted)");
            node.fsm.message = Some("exited (status unknown: the process was adopted)".into());
        } else {
            warn!(node = %name, ?pid, "exited unexpectedly ({k})");
        }
        for w in node.stop_waiters.drain(..) {
            let _ = w.send(());
        }
        self.dirty = true;
        self.drive(name, Event::Exited { kind: Some(k) });
        if let Some(node) = self.nodes.get(name) {
            if node.fsm.phase == Phase::Stopped {
                let _ = self.notices.send(NodeNotice::Stopped(name.to_owned()));
            }
        }
    }

    /// Applies an event and performs the resulting actions (which may produce more events).
    fn drive(&mut self, name: &str, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(ev) = queue.pop_front() {
            let Some(node) = self.nodes.get_mut(name) else { return };
            let is_spawn_failure = matches!(ev, Event::SpawnFailed(_));
            if let Event::SpawnFailed(msg) = &ev {
                for w in node.spawn_waiters.drain(..) {
                    let _ = w.send(Err(msg.clone()));
                }
            }
            let actions = node.fsm.apply(ev, Instant::now());
            let _ = is_spawn_failure;
            for action in actions {
                match action {
                    Action::SaveState => self.dirty = true,
                    Action::Spawn => match self.spawn(name) {
                        Ok(pid) => queue.push_back(Event::Spawned { pid }),
                        Err(msg) => queue.push_back(Event::SpawnFailed(msg)),
                    },
                    Action::ScheduleRestart(after) => {
                        info!(node = %name, "restarting in {after:?}");
                        self.timer(name, None, after, Event::BackoffElapsed);
                    }
                    Action::SignalStop => self.signal_stop(name),
                    Action::Kill => {
                        if let Some(pid) = self.nodes.get(name).and_then(|n| n.pid) {
                            warn!(node = %name, pid, "did not exit in time; SIGKILL to its process group");
                            if let Err(e) = pc::signal_group(pid, Signal::SIGKILL) {
                                error!(node = %name, pid, "SIGKILL: {e}");
                            }
                        }
                    }
                    Action::EnterCrashLoop => {
                        if let Some(n) = self.nodes.get_mut(name) {
                            n.last_log_lines = process::tail_lines(&n.rec.log_path, LAST_LOG_LINES);
                            error!(
                                node = %name, restarts = n.fsm.restarts,
                                "crash loop: more than {} exits within {:?}; restarting every {:?} until `dwbase deploy restart {name}`",
                                n.fsm.rules.crash_max_exits, n.fsm.rules.crash_window, n.fsm.rules.max_backoff
                            );
                        }
                    }
                }
            }
        }
    }

    fn timer(&self, name: &str, instance: Option<u64>, after: Duration, event: Event) {
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    let _ = tx.send(Msg::Timer { name, instance, event });
                }
            }
        });
    }

    fn signal_stop(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        let Some(pid) = n.pid else { return };
        let timeout = n.stop_timeout_override.take().unwrap_or(n.rec.stop_timeout_ms);
        let instance = n.instance;
        info!(node = %name, pid, "SIGTERM to its process group (SIGKILL after {timeout} ms)");
        if let Err(e) = pc::terminate_group(pid) {
            error!(node = %name, pid, "SIGTERM: {e}");
        }
        self.timer(name, Some(instance), Duration::from_millis(timeout), Event::StopTimedOut);
    }

    fn spawn(&mut self, name: &str) -> Result<u32, String> {
        let Some(n) = self.nodes.get_mut(name) else { return Err("unknown node".into()) };
        let spec = SpawnSpec {
            node: &self.cfg.node,
            sink: &self.cfg.sink,
            config_path: &n.rec.config_path,
            log_path: &n.rec.log_path,
            stop_timeout_ms: n.rec.stop_timeout_ms,
            data_dir: &n.rec.data_dir,
            node_id: &n.rec.id,
            env: &n.rec.env,
        };
        for d in [&n.rec.data_dir, &n.rec.dir.join("summaries")] {
            let _ = std::fs::create_dir_all(d);
        }
        match process::spawn_node(&spec) {
            Err(e) => {
                error!(node = %name, "spawn failed: {e}");
                Err(e.to_string())
            }
            Ok(spawned) => {
                n.instance += 1;
                n.pid = Some(spawned.pid);
                n.start_time = spawned.start_time;
                let instance = n.instance;
                info!(node = %name, pid = spawned.pid, restarts = n.fsm.restarts, "spawned");
                for w in n.spawn_waiters.drain(..) {
                    let _ = w.send(Ok(spawned.pid));
                }
                self.dirty = true;
                let tx = self.tx.clone();
                let owned = name.to_owned();
                let (pid, grace) = (spawned.pid, sweep_grace(n.rec.stop_timeout_ms));
                let cancel = self.cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        // The runner ended, leaving the node running (the next supervisor
                        // adopts it); dropping the Child neither kills nor leaks it (tokio
                        // reaps it when it exits).
                        _ = cancel.cancelled() => {}
                        kind = async {
                            let kind = process::wait_child(spawned.child).await;
                            // The exit is reported once the whole group is gone, so a restart
                            // never races leftovers for the port and `Stop` answers when
                            // nothing is left.
                            sweep(&owned, pid, grace).await;
                            kind
                        } => {
                            let _ = tx.send(Msg::Exited { name: owned, instance, kind });
                        }
                    }
                });
                self.start_probe(name);
                let _ = self.notices.send(NodeNotice::Spawned(name.to_owned()));
                Ok(spawned.pid)
            }
        }
    }

    fn watch_adopted(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        let Some(pid) = n.pid else { return };
        n.instance += 1;
        let instance = n.instance;
        let start_time = n.start_time;
        let grace = sweep_grace(n.rec.stop_timeout_ms);
        let tx = self.tx.clone();
        let owned = name.to_owned();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = async {
                    process::wait_adopted(pid, start_time).await;
                    sweep(&owned, pid, grace).await;
                } => {
                    // Not our child: its exit status went to whoever reaped it.
                    let kind = Some(ExitKind::Unknown);
                    let _ = tx.send(Msg::Exited { name: owned, instance, kind });
                }
            }
        });
        self.start_probe(name);
    }

    fn start_probe(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        if let Some(old) = n.probe.take() {
            old.cancel();
        }
        let token = self.cancel.child_token();
        n.probe = Some(token.clone());
        let url = format!("http://{}/readyz", n.probe_addr);
        let (instance, owned) = (n.instance, name.to_owned());
        let (http, tx) = (self.http.clone(), self.tx.clone());
        let (fast, slow) = (self.cfg.probe_fast, self.cfg.probe_slow);
        tokio::spawn(async move {
            // A node that is starting is probed at once, then after 5 ms, 10 ms, … up to
            // `fast`: a restarted node is seen ready within milliseconds of answering, without
            // hammering one that takes seconds. Once ready it is probed every `slow`.
            let mut starting_pause = STARTING_PROBE_FIRST.min(fast);
            loop {
                let outcome = tokio::select! {
                    _ = token.cancelled() => return,
                    r = probe_once(&http, &url) => r,
                };
                let pause = if matches!(outcome, ProbeOutcome::Ready) {
                    slow
                } else {
                    let p = starting_pause;
                    starting_pause = (starting_pause * 2).min(fast);
                    p
                };
                if tx.send(Msg::Probe { name: owned.clone(), instance, outcome }).is_err() {
                    return;
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
    }
}

/// The first pause between readiness probes of a node that is not ready yet; it doubles up
/// to [`RunnerConfig::probe_fast`].
const STARTING_PROBE_FIRST: Duration = Duration::from_millis(5);

/// How long a sweep waits after SIGTERM: the node's stop timeout, capped at
/// [`pc::SWEEP_GRACE`] (the main process is gone; only leftovers and the log pipe wait).
fn sweep_grace(stop_timeout_ms: u64) -> Duration {
    Duration::from_millis(stop_timeout_ms).clamp(Duration::from_millis(100), pc::SWEEP_GRACE)
}

/// Sweeps a node's process group after its main process exited, and says what it found.
async fn sweep(name: &str, pgid: u32, grace: Duration) {
    match pc::sweep_group(pgid, grace).await {
        pc::Sweep::Empty => {}
        pc::Sweep::Terminated => {
            info!(node = %name, pgid, "processes the node left in its group ended after SIGTERM")
        }
        pc::Sweep::Killed => warn!(
            node = %name, pgid,
            "processes the node left in its group outlived SIGTERM for {grace:?}; SIGKILLed the group"
        ),
    }
}

async fn probe_once(http: &reqwest::Client, url: &str) -> ProbeOutcome {
    match http.get(url).send().await {
        Ok(resp) if resp.status().is_success() => ProbeOutcome::Ready,
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.trim().chars().take(300).collect();
            ProbeOutcome::NotReady(format!("/readyz answered {status}: {body}"))
        }
        Err(e) if e.is_timeout() => ProbeOutcome::Failed("/readyz timed out".into()),
        Err(e) if e.is_connect() => ProbeOutcome::Failed("/readyz refused the connection".into()),
        Err(e) => ProbeOutcome::Failed(format!("/readyz: {e}")),
    }
}
