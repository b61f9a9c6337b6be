//! The runner: one task that owns every node's state (the single writer of it, and of
//! state.json).
//!
//! It receives [`Command`]s from connection handlers (each with a oneshot for the answer) and
//! facts from the tasks it starts — a process exited, probes answered, a timer ran out — all
//! over one channel. Each fact or request becomes an [`crate::fsm::Event`] for the node's FSM
//! (the only writer of a node's supervision state); the [`crate::fsm::Action`]s that come out
//! are performed here, every change is published to event subscribers, and state.json (plus
//! the node's own `node.json`) is saved after every change.
//!
//! - [`handle`]: the commands and the cloneable handle;
//! - [`node`]: a node as the runner holds it;
//! - [`restore`]: what a starting supervisor finds on its root (state files, node folders,
//!   live processes) — adoption without duplicates;
//! - [`reconcile`]: declarative deploys — desired nodes diffed into a plan and steps;
//! - [`probe`]: the batched readiness and liveness prober.
//!
//! Node processes start on two spawn threads ([`process::SpawnPool`]) while a rollout is
//! applied, so the next node is prepared while the last one execs; the runner takes the
//! results in before its turn ends.
//!
//! Tasks it starts per running node: an exit watcher (`Child::wait` for our children, a pidfd
//! for adopted ones). None of them touches node state; they only send messages.

pub mod handle;
mod node;
pub mod probe;
pub mod reconcile;
mod restore;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dwbase_proto::process::{self as pc, ProcessId, Signal};
use dwbase_proto::state::{Desired, NodeRecord, StateFile, SupervisorRecord};
use dwbase_proto::{
    ErrorKind, ErrorReply, Event as NodeEvent, EventKind, ExitKind, Group, NodeState, NodeStatus,
    Paths, StartupReport, StatusReport, StopSpec, SupervisorInfo,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use handle::{
    Applied, Command, Gone, LogTarget, Planned, RunnerHandle, Snapshot, Spawned, StopTicket,
    STOP_MARGIN,
};
pub use node::LAST_LOG_LINES;
pub use reconcile::{DesiredNode, Step};

use crate::fsm::{Action, Event, Phase, RestartRules};
use crate::process::{self, Invocation, LogSink, SpawnSpec};
use crate::render::{self, Endpoint};
use node::{Node, Removal};
use probe::{Kind, Outcome, ProbeConfig, Prober, Verdict};

/// Everything the runner needs to know up front.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The state root.
    pub paths: Paths,
    /// The node program (shared with the spawn orders).
    pub node: Arc<Invocation>,
    /// Where node output goes (shared with the spawn orders).
    pub sink: Arc<LogSink>,
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
    /// Timeout of one readiness probe.
    pub probe_timeout: Duration,
}

enum Msg {
    Cmd(Command),
    /// A node's main process ended. Its process group is swept afterwards (`Swept`), so a
    /// restart does not wait for the log pipe to drain or for leftovers.
    Exited {
        name: String,
        generation: u64,
        kind: Option<ExitKind>,
    },
    /// The process group of that process is empty now: stops of it are answered.
    Swept {
        name: String,
        generation: u64,
    },
    Probes(Vec<Outcome>),
    Timer {
        name: String,
        generation: Option<u64>,
        event: Event,
    },
}

impl Msg {
    /// A question that reads the runner's state and changes nothing of it.
    fn reads_only(&self) -> bool {
        matches!(
            self,
            Msg::Cmd(Command::Status(_) | Command::Plan { .. } | Command::LogTargets(..))
        )
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Cmd(c) => write!(f, "Cmd({c:?})"),
            Msg::Exited { name, generation, kind } => {
                write!(f, "Exited({name}#{generation}, {kind:?})")
            }
            Msg::Swept { name, generation } => write!(f, "Swept({name}#{generation})"),
            Msg::Probes(v) => write!(f, "Probes({})", v.len()),
            Msg::Timer { name, event, .. } => write!(f, "Timer({name}, {event:?})"),
        }
    }
}

/// Binds the notify socket nodes tell their last words on. Without it nodes run as before;
/// only the reasons of their exits are missing from `status` (said here once).
fn bind_notify(path: &std::path::Path) -> Option<dwbase_proto::notify::NotifyReceiver> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match dwbase_proto::notify::NotifyReceiver::bind(path) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(
                socket = %path.display(),
                "cannot bind the notify socket ({e}); nodes' exit reasons will reach only their logs"
            );
            None
        }
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// The runner itself; build with [`Runner::new`], then `tokio::spawn(runner.run())`.
pub struct Runner {
    cfg: RunnerConfig,
    nodes: BTreeMap<String, Node>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    prober: Prober,
    cancel: CancellationToken,
    dirty: bool,
    events: broadcast::Sender<NodeEvent>,
    status_tx: watch::Sender<Arc<Snapshot>>,
    finishing: bool,
    startup: StartupReport,
    save_error: Option<String>,
    /// Stop waiters of processes that have exited and whose group is being swept.
    sweeps: HashMap<(String, u64), Vec<oneshot::Sender<()>>>,
    /// Stop waiters whose process group is gone, answered after this turn's save.
    after_save: Vec<oneshot::Sender<()>>,
    /// New nodes' configs and node records written this turn, made durable together right
    /// before the state files are saved (one journal commit for a rollout of 50 additions).
    unsynced: dwbase_proto::fsutil::SyncBatch,
    /// What each state file holds, so that a save which changes nothing writes nothing.
    saved: HashMap<Group, StateFile>,
    /// Where nodes tell why they exit (read when an exit is handled).
    notify: Option<dwbase_proto::notify::NotifyReceiver>,
    /// Log pipes of the nodes spawned this turn, started once the turn's spawns are done.
    log_pipes: Vec<process::LogPipeJob>,
    /// Starts queued this turn, not yet handed to the spawn threads.
    spawn_queue: Vec<SpawnOrder>,
    /// Whether starts go to the spawn threads as soon as they are ordered (while a rollout
    /// of several steps is applied).
    pipelined: bool,
    spawn_pool: process::SpawnPool,
    /// Starts handed to the spawn threads whose results have not been taken in.
    in_flight: usize,
    spawn_done_tx: std::sync::mpsc::Sender<(String, SpawnResult)>,
    spawn_done_rx: std::sync::mpsc::Receiver<(String, SpawnResult)>,
}

type SpawnResult = Result<process::SpawnedNode, process::SpawnError>;

/// Spawn threads: with two cores, two starts can be under way while the runner prepares the
/// next node.
const SPAWN_THREADS: usize = 2;

impl Runner {
    /// Builds the runner and its handle: loads both state files and every node folder's
    /// record, finds node processes no record lists, adopts every live node, restarts the
    /// dead ones per policy and stops duplicates. Returns what it found in
    /// [`Runner::startup`].
    pub fn new(cfg: RunnerConfig) -> anyhow::Result<(Self, RunnerHandle)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let (status_tx, status_rx) = watch::channel(Arc::new(Snapshot::default()));
        let cancel = CancellationToken::new();
        let prober = Prober::start(
            ProbeConfig { fast: cfg.probe_fast, slow: cfg.probe_slow, timeout: cfg.probe_timeout },
            tx.clone(),
            cancel.clone(),
        )?;
        let handle = RunnerHandle { tx: tx.clone(), events: events.clone(), status: status_rx };
        let paths_notify = cfg.paths.notify_socket();
        let (spawn_done_tx, spawn_done_rx) = std::sync::mpsc::channel();
        let mut runner = Self {
            cfg,
            nodes: BTreeMap::new(),
            tx,
            rx,
            prober,
            cancel,
            dirty: true,
            events,
            status_tx,
            finishing: false,
            startup: StartupReport::default(),
            save_error: None,
            sweeps: HashMap::new(),
            after_save: Vec::new(),
            unsynced: dwbase_proto::fsutil::SyncBatch::default(),
            saved: HashMap::new(),
            notify: bind_notify(&paths_notify),
            log_pipes: Vec::new(),
            spawn_queue: Vec::new(),
            pipelined: false,
            spawn_pool: process::SpawnPool::new(SPAWN_THREADS),
            in_flight: 0,
            spawn_done_tx,
            spawn_done_rx,
        };
        runner.restore();
        Ok((runner, handle))
    }

    /// What the runner found and did at start-up.
    pub fn startup(&self) -> &StartupReport {
        &self.startup
    }

    fn restore(&mut self) {
        let mut report = StartupReport::default();
        let found = restore::gather(&self.cfg.paths, &mut report);
        // Nodes that died while no supervisor ran start beside the next one's adoption.
        self.pipelined = true;
        let mut died = Vec::new();
        for (name, id) in found.duplicates {
            warn!(node = %name, pid = id.pid, "stopping a duplicate process of this node");
            let target = pc::StopTarget { id, grace: Duration::from_secs(5), whole_group: true };
            // Detached: start-up does not wait for it; the duplicate is never adopted.
            tokio::spawn(async move {
                pc::terminate(&[target]).await;
            });
        }
        for f in found.nodes {
            let rec = f.rec;
            let fallback = SocketAddr::from(([127, 0, 0, 1], rec.port));
            let endpoint = Endpoint::of_config_file(&rec.config_path, &rec.env, fallback);
            let name = rec.name.clone();
            let recorded = rec.pid.map(|pid| ProcessId { pid, start_time: rec.start_time });
            let mut node = Node::new(rec, endpoint, self.cfg.rules);
            match recorded.filter(ProcessId::is_alive) {
                Some(id) => {
                    info!(node = %name, pid = id.pid, "adopting a node that still runs");
                    if f.recovered {
                        report.recovered.push(name.clone());
                    } else {
                        report.adopted.push(name.clone());
                    }
                    self.nodes.insert(name.clone(), node);
                    self.drive(&name, Event::Adopted(id));
                    self.watch_adopted(&name);
                    self.emit(&name, EventKind::Adopted { pid: id.pid });
                }
                None if node.fsm.desired == Desired::Running => {
                    if let Some(pid) = recorded.map(|r| r.pid) {
                        info!(node = %name, pid, "recorded process is gone; restarting per policy");
                    }
                    // It was running and died while nobody watched: an exit of unknown status.
                    node.fsm.phase = Phase::Spawning;
                    self.nodes.insert(name.clone(), node);
                    self.drive(
                        &name,
                        Event::Exited { kind: None, at_unix_ms: unix_ms_now(), reason: None },
                    );
                    died.push(name);
                }
                None => {
                    debug!(node = %name, "recorded as stopped");
                    self.nodes.insert(name, node);
                }
            }
        }
        self.pipelined = false;
        self.finish_spawns();
        for name in died {
            if let Some(n) = self.nodes.get_mut(&name) {
                n.fsm.message = Some("exited while no supervisor was running".into());
                if n.fsm.process.is_some() {
                    report.restarted.push(name);
                }
            }
        }
        self.prober.send_held();
        if let Some(s) = report.summary() {
            info!("start-up: {s}");
        }
        self.startup = report;
        self.dirty = true;
    }

    /// Runs until [`RunnerHandle::finish`].
    pub async fn run(mut self) {
        // Nodes restarted at start-up (restore) have their log pipes waiting too.
        self.start_log_pipes();
        self.save();
        self.publish();
        while let Some(msg) = self.rx.recv().await {
            let mut changes = !msg.reads_only();
            let mut finish = self.handle(msg);
            // Take whatever else is already queued before saving once (a probe batch and an
            // exit arriving together cost one write).
            while finish.is_none() {
                match self.rx.try_recv() {
                    Ok(m) => {
                        changes |= !m.reads_only();
                        finish = self.handle(m);
                    }
                    Err(_) => break,
                }
            }
            self.start_log_pipes();
            if self.dirty {
                let started = Instant::now();
                let parts = self.save();
                let took = started.elapsed();
                // The runner answers nothing (no probe, no exit, no command) while it saves.
                if took >= SLOW_SAVE {
                    warn!(
                        ?parts,
                        "saving the state took {took:?}: the disk under the root is slow"
                    );
                } else {
                    debug!(
                        us = took.as_micros() as u64,
                        records_us = parts.records.as_micros() as u64,
                        sync_us = parts.sync.as_micros() as u64,
                        synced_files = parts.synced_files,
                        state_us = parts.state.as_micros() as u64,
                        "state saved"
                    );
                }
            }
            // A turn of questions only (`deploy status`, a plan, log targets) changed nothing
            // to publish; publishing would build every node's status a second time.
            if changes {
                self.publish();
            }
            for w in self.after_save.drain(..) {
                let _ = w.send(());
            }
            if let Some(reply) = finish {
                self.cancel.cancel();
                let _ = reply.send(());
                break;
            }
        }
    }

    /// Starts the log pipes of the nodes spawned since the last call (see
    /// [`process::LogPipeStart`]): until then those nodes' exits cannot be reported.
    fn start_log_pipes(&mut self) {
        if !self.log_pipes.is_empty() {
            process::start_log_pipes(self.log_pipes.drain(..));
        }
    }

    fn publish(&mut self) {
        let nodes: Vec<NodeStatus> = self.sorted().iter().map(|n| n.status(false)).collect();
        self.status_tx.send_if_modified(|cur| {
            if cur.nodes == nodes {
                false
            } else {
                *cur = Arc::new(Snapshot { seq: cur.seq + 1, nodes });
                true
            }
        });
    }

    fn emit(&self, name: &str, kind: EventKind) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let n = self.nodes.get(name);
        let event = NodeEvent {
            at_unix_ms: unix_ms_now(),
            node: name.to_owned(),
            group: n.map_or(Group::Devnet, |n| n.rec.group),
            kind,
            status: n.map(|n| n.status(false)),
        };
        let _ = self.events.send(event);
    }

    fn sorted(&self) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.nodes.values().collect();
        v.sort_by(|a, b| node::order(&a.rec).cmp(&node::order(&b.rec)));
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

    fn save(&mut self) -> SaveParts {
        let started = Instant::now();
        self.dirty = false;
        let mut problem = None;
        for n in self.nodes.values_mut().filter(|n| n.record_dirty) {
            n.record_dirty = false;
            if !n.rec.dir.exists() {
                continue;
            }
            let rec = n.record();
            if let Err(e) = rec.save_beside_in(&mut self.unsynced) {
                problem.get_or_insert(format!("node records are not being saved: {e}"));
            }
        }
        let records = started.elapsed();
        // Configs and records first, so that a state file never lists a node whose files a
        // crash could still take away.
        let synced_files = self.unsynced.len();
        if let Err(e) = self.unsynced.sync() {
            problem.get_or_insert(format!("node files are not being saved: {e}"));
        }
        let synced = started.elapsed();
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
            // Compared by content: a turn that changed only what state.json does not hold
            // (readiness, a probe's verdict) writes nothing. The file itself is checked too,
            // so one removed behind our back is written again.
            if self.saved.get(&group) == Some(&file) && path.exists() {
                continue;
            }
            match file.save(&path) {
                Ok(()) => {
                    self.saved.insert(group, file);
                }
                Err(e) => {
                    self.saved.remove(&group);
                    problem = Some(format!("state is not being saved: {e}"));
                }
            }
        }
        if problem != self.save_error {
            match &problem {
                Some(p) => error!("{p}"),
                None => info!("state is saved again"),
            }
            self.save_error = problem;
        }
        SaveParts {
            records,
            sync: synced - records,
            synced_files,
            state: started.elapsed() - synced,
        }
    }

    fn status(&self) -> StatusReport {
        let mut supervisor = self.cfg.supervisor.clone();
        supervisor.startup = self.startup.clone();
        let mut warnings = self.startup.warnings.clone();
        warnings.extend(self.save_error.clone());
        StatusReport {
            supervisor,
            nodes: self.sorted().iter().map(|n| n.status(true)).collect(),
            warnings,
        }
    }

    /// Takes one message in. What would wake another thread waits until the turn's node
    /// processes have started: the prober's commands and the turn's log lines (on a small
    /// machine the woken thread runs at once, before a restart's spawn).
    fn handle(&mut self, msg: Msg) -> Option<oneshot::Sender<()>> {
        let held = crate::log_hold::hold();
        let finish = self.take_in(msg);
        self.finish_spawns();
        self.prober.send_held();
        drop(held);
        finish
    }

    fn take_in(&mut self, msg: Msg) -> Option<oneshot::Sender<()>> {
        match msg {
            Msg::Cmd(cmd) => return self.command(cmd),
            Msg::Exited { name, generation, kind } => self.on_exit(&name, generation, kind),
            Msg::Swept { name, generation } => {
                // Answered once this turn's state is saved: whoever waited for the stop (a
                // deploy that removes the node, `deploy stop`) may read state.json next.
                let waiters = self.sweeps.remove(&(name, generation)).unwrap_or_default();
                self.after_save.extend(waiters);
            }
            Msg::Probes(batch) => {
                for o in batch {
                    self.on_probe(o);
                }
            }
            Msg::Timer { name, generation, event } => {
                let node = self.nodes.get(&name)?;
                if generation.is_some_and(|g| g != node.fsm.generation) {
                    return None;
                }
                self.drive(&name, event);
            }
        }
        None
    }

    fn on_probe(&mut self, o: Outcome) {
        let Some(node) = self.nodes.get(&o.name) else { return };
        if node.fsm.generation != o.generation || node.fsm.process.is_none() {
            return;
        }
        let event = match (o.kind, o.verdict) {
            (Kind::Readiness, Verdict::Ok) => Event::ProbeReady,
            (Kind::Readiness, Verdict::NotOk(r)) => Event::ProbeNotReady(r),
            (Kind::Readiness, Verdict::Failed(r)) => Event::ProbeFailed(r),
            (Kind::Liveness, Verdict::Ok) => Event::LivenessOk,
            (Kind::Liveness, Verdict::NotOk(r) | Verdict::Failed(r)) => Event::LivenessFailed(r),
        };
        let liveness_reason = match &event {
            Event::LivenessFailed(r) => Some(r.clone()),
            _ => None,
        };
        let before = node.fsm.liveness_failures;
        self.drive(&o.name, event);
        if let (Some(reason), Some(n)) = (liveness_reason, self.nodes.get(&o.name)) {
            let failures = n.fsm.liveness_failures;
            if failures > before {
                warn!(node = %o.name, failures, "liveness probe failed: {reason}");
                self.emit(&o.name, EventKind::LivenessFailed { failures, reason });
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Plan { group, desired, prune, reply } => {
                let _ = reply.send(reconcile::plan(&self.nodes, group, desired, prune));
            }
            Command::Apply(step, reply) => {
                let r = self.apply(*step);
                let _ = reply.send(r);
            }
            Command::ApplyAll(steps, reply) => {
                let mut results = Vec::with_capacity(steps.len());
                self.pipelined = steps.len() > 1;
                for step in steps {
                    let r = self.apply(step);
                    let failed = r.is_err();
                    results.push(r);
                    if failed {
                        break;
                    }
                }
                self.pipelined = false;
                let _ = reply.send(results);
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
            Command::Notice(node, message) => self.emit(&node, EventKind::Rollout(message)),
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

    fn spawn_waiter(&mut self, name: &str) -> oneshot::Receiver<Result<Spawned, String>> {
        let (tx, rx) = oneshot::channel();
        if let Some(n) = self.nodes.get_mut(name) {
            n.spawn_waiters.push(tx);
        }
        rx
    }

    fn restart(
        &mut self,
        name: &str,
    ) -> Result<oneshot::Receiver<Result<Spawned, String>>, ErrorReply> {
        if !self.nodes.contains_key(name) {
            return Err(self.unknown_node(name));
        }
        let rx = self.spawn_waiter(name);
        if let Some(n) = self.nodes.get_mut(name) {
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
            if n.fsm.process.is_some() {
                let (tx, rx) = oneshot::channel();
                n.stop_waiters.push(tx);
                waits.push(rx);
            }
            info!(node = %name, "stop requested");
            self.drive(name, Event::StopRequested);
        }
        Ok(StopTicket { nodes: names, waits, limit: Duration::from_millis(longest) + STOP_MARGIN })
    }

    /// Carries out one step of a deploy.
    fn apply(&mut self, step: Step) -> Result<Applied, ErrorReply> {
        match step {
            Step::Add(mut d) => {
                if self.nodes.contains_key(&d.record.name) {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("{} exists already (a concurrent deploy?)", d.record.name),
                    ));
                }
                d.validate()?;
                render::check_port(&d.rendered)?;
                // A new node: nothing durable lists it until the state file is saved at the
                // end of this turn, after its config is synced with the rest of the batch.
                render::write_new_node(&d.rendered, &mut self.unsynced)?;
                let name = d.record.name.clone();
                info!(node = %name, port = d.record.port, "adding");
                let endpoint = d.endpoint();
                let node = Node::new(d.record, endpoint, self.cfg.rules);
                self.nodes.insert(name.clone(), node);
                self.dirty = true;
                self.emit(&name, EventKind::Added);
                let rx = self.spawn_waiter(&name);
                self.drive(&name, Event::StartRequested);
                Ok(Applied::Spawning(rx))
            }
            Step::Replace(d) => {
                let name = d.record.name.clone();
                if !self.nodes.contains_key(&name) {
                    return Err(self.unknown_node(&name));
                }
                info!(node = %name, "replacing with a new spec");
                let rx = self.spawn_waiter(&name);
                if let Some(n) = self.nodes.get_mut(&name) {
                    n.pending = Some(d);
                    n.last_log_lines.clear();
                }
                self.drive(&name, Event::ReplaceRequested);
                Ok(Applied::Spawning(rx))
            }
            Step::Update(d) => {
                let name = d.record.name.clone();
                let Some(n) = self.nodes.get_mut(&name) else {
                    return Err(self.unknown_node(&name));
                };
                n.rec.restart_policy = d.record.restart_policy;
                n.rec.stop_timeout_ms = d.record.stop_timeout_ms;
                n.rec.liveness = d.record.liveness;
                n.fsm.policy = d.record.restart_policy;
                n.fsm.liveness = d.record.liveness;
                n.record_dirty = true;
                if n.fsm.process.is_some() {
                    let (generation, liveness) = (n.fsm.generation, n.fsm.liveness);
                    self.prober.watch(&name, generation, n.endpoint.clone(), liveness);
                }
                info!(node = %name, "supervision settings updated in place");
                self.dirty = true;
                self.emit(&name, EventKind::Rollout("updated in place".into()));
                Ok(Applied::Done)
            }
            Step::Start(name) => {
                if !self.nodes.contains_key(&name) {
                    return Err(self.unknown_node(&name));
                }
                let rx = self.spawn_waiter(&name);
                self.drive(&name, Event::StartRequested);
                Ok(Applied::Spawning(rx))
            }
            Step::Remove { name, prune } => {
                let Some(n) = self.nodes.get_mut(&name) else {
                    return Err(self.unknown_node(&name));
                };
                n.removal = Some(if prune { Removal::Prune } else { Removal::Forget });
                let wait = n.fsm.process.map(|_| {
                    let (tx, rx) = oneshot::channel();
                    n.stop_waiters.push(tx);
                    rx
                });
                info!(node = %name, prune, "removing");
                self.drive(&name, Event::StopRequested);
                self.finish_removal(&name);
                Ok(Applied::Removing(wait))
            }
        }
    }

    fn on_exit(&mut self, name: &str, generation: u64, kind: Option<ExitKind>) {
        let Some(node) = self.nodes.get_mut(name) else { return };
        if node.fsm.generation != generation || node.fsm.process.is_none() {
            return;
        }
        let pid = node.fsm.pid();
        let requested = matches!(node.fsm.phase, Phase::Stopping { .. });
        // Whatever it said right before it exited is in the notify socket's buffer by now.
        let reason = pid.and_then(|p| self.notify.as_mut()?.take(p));
        let said = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        // Our own children report their status; adopted processes cannot.
        let k = kind.unwrap_or(ExitKind::Unknown);
        // (Written after the turn's spawns, with the prober's commands: see `handle`.)
        if requested {
            info!(node = %name, ?pid, "stopped ({k}){said}");
        } else if k == ExitKind::Unknown {
            warn!(node = %name, ?pid, "exited unexpectedly ({k}: not our child, adopted){said}");
        } else if reason.is_some() {
            error!(node = %name, ?pid, "exited ({k}){said}");
        } else {
            warn!(node = %name, ?pid, "exited unexpectedly ({k})");
        }
        self.prober.unwatch(name);
        // Whoever waits for this process to stop is answered once its group is swept too.
        let waiters: Vec<_> = node.stop_waiters.drain(..).collect();
        if !waiters.is_empty() {
            self.sweeps.entry((name.to_owned(), generation)).or_default().extend(waiters);
        }
        self.dirty = true;
        self.drive(name, Event::Exited { kind: Some(k), at_unix_ms: unix_ms_now(), reason });
        if let Some(n) = self.nodes.get_mut(name) {
            if k == ExitKind::Unknown && n.fsm.message.is_none() {
                n.fsm.message = Some("exited (status unknown: the process was adopted)".into());
            }
        }
        self.finish_removal(name);
    }

    /// A node being removed that has no process left is forgotten (its folder deleted with
    /// `--prune`).
    fn finish_removal(&mut self, name: &str) {
        let Some(n) = self.nodes.get(name) else { return };
        let Some(removal) = n.removal else { return };
        if n.fsm.phase != Phase::Stopped {
            return;
        }
        let n = self.nodes.remove(name).expect("checked");
        self.prober.unwatch(name);
        if removal == Removal::Prune {
            if let Err(e) = std::fs::remove_dir_all(&n.rec.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    error!(node = %name, dir = %n.rec.dir.display(), "pruning: {e}");
                }
            } else {
                info!(node = %name, dir = %n.rec.dir.display(), "pruned");
            }
        } else {
            // Its folder stays; its record there must not bring it back at the next start.
            let _ = std::fs::remove_file(n.rec.record_path());
            info!(node = %name, "removed (folder kept: {})", n.rec.dir.display());
        }
        self.dirty = true;
        self.emit(name, EventKind::Removed);
    }

    /// Applies an event and performs the resulting actions (which may produce more events).
    fn drive(&mut self, name: &str, event: Event) {
        let before = self.nodes.get(name).map(|n| n.fsm.node_state());
        let mut queue = VecDeque::from([event]);
        while let Some(ev) = queue.pop_front() {
            let Some(node) = self.nodes.get_mut(name) else { return };
            if let Event::SpawnFailed(msg) = &ev {
                for w in node.spawn_waiters.drain(..) {
                    let _ = w.send(Err(msg.clone()));
                }
            }
            // Notices go out as the FSM takes the event in, so subscribers see an exit before
            // the restart it causes, and a spawn with the node's new pid in its status.
            let spawned = match &ev {
                Event::Spawned(id) => Some(id.pid),
                _ => None,
            };
            let exited = matches!(ev, Event::Exited { .. });
            let actions = node.fsm.apply(ev, Instant::now());
            let notice = match (spawned, exited) {
                (Some(pid), _) => Some(EventKind::Spawned { pid }),
                (None, true) => node.fsm.last_exit.clone().map(EventKind::Exited),
                (None, false) => None,
            };
            if let Some(kind) = notice {
                self.emit(name, kind);
            }
            for action in actions {
                match action {
                    Action::SaveState => self.dirty = true,
                    // The process starts after this event's actions (see `finish_spawns`).
                    Action::Spawn => match self.prepare_spawn(name) {
                        Ok(order) => self.queue_spawn(order),
                        Err(msg) => queue.push_back(Event::SpawnFailed(msg)),
                    },
                    Action::ScheduleRestart(after) => {
                        info!(node = %name, "restarting in {after:?}");
                        self.timer(name, None, after, Event::BackoffElapsed);
                    }
                    Action::SignalStop => self.signal_stop(name),
                    Action::Kill => {
                        if let Some(pid) = self.nodes.get(name).and_then(|n| n.fsm.pid()) {
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
                    Action::LivenessRestart(why) => {
                        warn!(node = %name, "{why}; stopping its process group to restart it");
                    }
                }
            }
        }
        let Some(n) = self.nodes.get_mut(name) else { return };
        if n.fsm.phase == Phase::Stopped {
            for w in n.spawn_waiters.drain(..) {
                let _ = w.send(Err("it was stopped before it could start".into()));
            }
        }
        let after = n.fsm.node_state();
        if before != Some(after) {
            if let Some(from) = before {
                info!(node = %name, pid = ?n.fsm.pid(), "{from} → {after}");
                self.emit(name, EventKind::State { from, to: after });
            }
        }
    }

    fn timer(&self, name: &str, generation: Option<u64>, after: Duration, event: Event) {
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    let _ = tx.send(Msg::Timer { name, generation, event });
                }
            }
        });
    }

    fn signal_stop(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        let Some(pid) = n.fsm.pid() else { return };
        let timeout = n.stop_timeout_override.take().unwrap_or(n.rec.stop_timeout_ms);
        let generation = n.fsm.generation;
        info!(node = %name, pid, "SIGTERM to its process group (SIGKILL after {timeout} ms)");
        if let Err(e) = pc::terminate_group(pid) {
            error!(node = %name, pid, "SIGTERM: {e}");
        }
        self.timer(name, Some(generation), Duration::from_millis(timeout), Event::StopTimedOut);
    }

    /// The first half of a spawn, on the runner: a deploy's replacement config goes in place
    /// and the node's record takes its settings; what the start needs is copied out.
    fn prepare_spawn(&mut self, name: &str) -> Result<SpawnOrder, String> {
        let Some(n) = self.nodes.get_mut(name) else { return Err("unknown node".into()) };
        if let Some(d) = n.pending.take() {
            // A deploy's replacement: its config goes in place right before its process starts.
            if let Err(e) = render::write_node(&d.rendered) {
                return Err(e.message);
            }
            n.endpoint = d.endpoint();
            n.rec = d.record;
            n.fsm.policy = n.rec.restart_policy;
            n.fsm.liveness = n.rec.liveness;
        }
        Ok(SpawnOrder {
            name: name.to_owned(),
            node: Arc::clone(&self.cfg.node),
            sink: Arc::clone(&self.cfg.sink),
            config_path: n.rec.config_path.clone(),
            log_path: n.rec.log_path.clone(),
            stop_timeout_ms: n.rec.stop_timeout_ms,
            data_dir: n.rec.data_dir.clone(),
            node_id: n.rec.id.clone(),
            env: n.rec.env.clone(),
            notify_socket: self.notify.as_ref().map(|r| r.path().to_owned()),
        })
    }

    /// Queues a prepared start: at once on the spawn threads while a rollout is applied
    /// (the next node is prepared meanwhile), else at the end of the turn
    /// ([`Runner::finish_spawns`]).
    fn queue_spawn(&mut self, order: SpawnOrder) {
        if self.pipelined {
            self.dispatch(order);
        } else {
            self.spawn_queue.push(order);
        }
    }

    fn dispatch(&mut self, order: SpawnOrder) {
        let done = self.spawn_done_tx.clone();
        self.in_flight += 1;
        let runtime = tokio::runtime::Handle::current();
        self.spawn_pool.submit(&runtime, move || {
            // Even a panic answers: the runner waits for every start it handed out.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| order.start()))
                .unwrap_or_else(|_| {
                    Err(process::SpawnError::Node {
                        program: order.node.program.clone(),
                        source: std::io::Error::other("the spawn thread panicked starting it"),
                    })
                });
            let _ = done.send((order.name, r));
        });
    }

    /// Starts what this turn queued and takes in every start still under way: a single start
    /// (a restart after an exit) runs right here, without a hand-over to another thread;
    /// more run on the spawn threads. Returns once no start is left, so the next message
    /// finds every node it names spawned (or failed).
    fn finish_spawns(&mut self) {
        loop {
            if self.in_flight == 0 && self.spawn_queue.len() == 1 {
                let order = self.spawn_queue.pop().expect("one order");
                let r = order.start();
                self.complete_spawn(&order.name, r);
                continue;
            }
            for order in std::mem::take(&mut self.spawn_queue) {
                self.dispatch(order);
            }
            if self.in_flight == 0 {
                return;
            }
            let Ok((name, r)) = self.spawn_done_rx.recv() else {
                // Unreachable: the runner holds a sender itself.
                self.in_flight = 0;
                return;
            };
            self.in_flight -= 1;
            self.complete_spawn(&name, r);
        }
    }

    /// The second half of a spawn, on the runner: the node's new process is recorded,
    /// watched and probed, and its FSM told.
    fn complete_spawn(&mut self, name: &str, r: SpawnResult) {
        let spawned = match r {
            Err(e) => {
                error!(node = %name, "spawn failed: {e}");
                self.drive(name, Event::SpawnFailed(e.to_string()));
                return;
            }
            Ok(s) => s,
        };
        let id = ProcessId { pid: spawned.pid, start_time: spawned.start_time };
        let expected = self.nodes.get(name).is_some_and(|n| n.fsm.phase == Phase::Spawning);
        if !expected {
            // Nothing in one turn changes a node between the order and its start; should that
            // ever happen, the process nobody waits for is not left behind.
            error!(node = %name, pid = id.pid, "a node process started that its node no longer expects; killing its group");
            let _ = pc::signal_group(id.pid, Signal::SIGKILL);
            drop(spawned.log_pipe);
            let mut child = spawned.child;
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return;
        }
        let next_seq = self.status_tx.borrow().seq + 1;
        let Some(n) = self.nodes.get_mut(name) else { return };
        let log_pipe = spawned.log_pipe.map(|(start, job)| {
            self.log_pipes.push(job);
            start
        });
        // The Spawned event that follows makes this the FSM's next generation.
        let generation = n.fsm.generation + 1;
        info!(node = %name, pid = id.pid, restarts = n.fsm.restarts, "spawned");
        let info = Spawned { pid: id.pid, restarts: n.fsm.restarts, seq: next_seq };
        for w in n.spawn_waiters.drain(..) {
            let _ = w.send(Ok(info));
        }
        n.record_dirty = true;
        self.dirty = true;
        let tx = self.tx.clone();
        let owned = name.to_owned();
        let grace = sweep_grace(n.rec.stop_timeout_ms);
        let cancel = self.cancel.clone();
        let (endpoint, liveness) = (n.endpoint.clone(), n.rec.liveness);
        tokio::spawn(async move {
            tokio::select! {
                // The runner ended, leaving the node running (the next supervisor adopts
                // it); dropping the Child neither kills nor leaks it (tokio reaps it when it
                // exits).
                _ = cancel.cancelled() => {}
                _ = async {
                    // The node is not reaped before its log pipe has joined its process group
                    // (which lasts as long as the node is not reaped).
                    let known: Vec<u32> = match log_pipe {
                        Some(pipe) => pipe.started().await.into_iter().collect(),
                        None => vec![],
                    };
                    let kind = process::wait_child(spawned.child).await;
                    exited(&tx, owned, generation, kind, id.pid, &known, grace).await;
                } => {}
            }
        });
        self.prober.watch(name, generation, endpoint, liveness);
        self.drive(name, Event::Spawned(id));
    }

    fn watch_adopted(&mut self, name: &str) {
        let Some(n) = self.nodes.get(name) else { return };
        let Some(id) = n.fsm.process else { return };
        let generation = n.fsm.generation;
        let grace = sweep_grace(n.rec.stop_timeout_ms);
        let tx = self.tx.clone();
        let owned = name.to_owned();
        let cancel = self.cancel.clone();
        self.prober.watch(name, generation, n.endpoint.clone(), n.fsm.liveness);
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = async {
                    process::wait_adopted(id.pid, id.start_time).await;
                    // Not our child: its exit status went to whoever reaped it.
                    let kind = Some(ExitKind::Unknown);
                    exited(&tx, owned, generation, kind, id.pid, &[], grace).await;
                } => {}
            }
        });
    }
}

/// What a node's wait task does once the node's main process has exited: reports the exit at
/// once, so a restart does not wait for the log pipe to drain; then sweeps the group (the
/// dead process holds no port any more) and reports that, so `Stop` answers once nothing of
/// it is left. Between the two it yields: the exit report put the runner into this worker's
/// LIFO slot, and the yield lets it respawn before the sweep's first check (a signal to the
/// group and a read of the log pipe's `/proc` stat) runs.
async fn exited(
    tx: &mpsc::UnboundedSender<Msg>,
    name: String,
    generation: u64,
    kind: Option<ExitKind>,
    pgid: u32,
    known: &[u32],
    grace: Duration,
) {
    let _ = tx.send(Msg::Exited { name: name.clone(), generation, kind });
    tokio::task::yield_now().await;
    sweep(&name, pgid, known, grace).await;
    let _ = tx.send(Msg::Swept { name, generation });
}

/// One node process to start, with everything it needs copied out of the runner's state, so
/// it can start on a spawn thread.
struct SpawnOrder {
    name: String,
    node: Arc<Invocation>,
    sink: Arc<LogSink>,
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
    stop_timeout_ms: u64,
    data_dir: std::path::PathBuf,
    node_id: String,
    env: Vec<(String, String)>,
    notify_socket: Option<std::path::PathBuf>,
}

impl SpawnOrder {
    fn start(&self) -> Result<process::SpawnedNode, process::SpawnError> {
        process::spawn_node(&SpawnSpec {
            node: &self.node,
            sink: &self.sink,
            config_path: &self.config_path,
            log_path: &self.log_path,
            stop_timeout_ms: self.stop_timeout_ms,
            data_dir: &self.data_dir,
            node_id: &self.node_id,
            env: &self.env,
            notify_socket: self.notify_socket.as_deref(),
        })
    }
}

/// Where a save's time went: the node records written, the batch of new files made durable
/// (configs and records; one `syncfs` for a large batch), the state files written.
#[derive(Debug, Clone, Copy)]
struct SaveParts {
    records: Duration,
    sync: Duration,
    synced_files: usize,
    state: Duration,
}

/// A state save this slow is worth a warning: the runner does nothing else meanwhile.
const SLOW_SAVE: Duration = Duration::from_secs(1);

/// How long a sweep waits after SIGTERM: the node's stop timeout, capped at
/// [`pc::SWEEP_GRACE`] (the main process is gone; only leftovers and the log pipe wait).
fn sweep_grace(stop_timeout_ms: u64) -> Duration {
    Duration::from_millis(stop_timeout_ms).clamp(Duration::from_millis(100), pc::SWEEP_GRACE)
}

/// Sweeps a node's process group after its main process exited, and says what it found.
async fn sweep(name: &str, pgid: u32, known: &[u32], grace: Duration) {
    match pc::sweep_group(pgid, known, grace).await {
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
