//! One supervised node as the runner holds it: its record (what it is), its FSM (what it is
//! doing — the only writer of that), and the runner's bookkeeping around them (waiters, a
//! pending replacement, a removal in progress).

use dwbase_proto::state::{Desired, NodeRecord};
use dwbase_proto::{NodeState, NodeStatus};
use tokio::sync::oneshot;

use super::handle::Spawned;
use super::reconcile::DesiredNode;
use crate::fsm::{NodeFsm, RestartRules};
use crate::process;
use crate::render::Endpoint;

/// How many log lines `status` shows for a failing node.
pub const LAST_LOG_LINES: usize = 20;

/// What to do once a node being removed has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// Forget it; keep its folder.
    Forget,
    /// Forget it and delete its folder.
    Prune,
}

pub(super) struct Node {
    /// What the node is: ids, ports, paths, spec. Process facts live in `fsm`.
    pub rec: NodeRecord,
    /// What it is doing.
    pub fsm: NodeFsm,
    /// Where and how its API answers probes.
    pub endpoint: Endpoint,
    /// A deploy's replacement, installed right before the next spawn.
    pub pending: Option<DesiredNode>,
    /// A removal in progress.
    pub removal: Option<Removal>,
    /// Grace for the stop in progress, when a request set one.
    pub stop_timeout_override: Option<u64>,
    /// Resolved when the current process is gone.
    pub stop_waiters: Vec<oneshot::Sender<()>>,
    /// Resolved when the next process is spawned (or cannot be).
    pub spawn_waiters: Vec<oneshot::Sender<Result<Spawned, String>>>,
    /// Log lines captured when the node entered a crash loop.
    pub last_log_lines: Vec<String>,
    /// `node.json` in the node's folder needs writing.
    pub record_dirty: bool,
}

impl Node {
    pub fn new(rec: NodeRecord, endpoint: Endpoint, rules: RestartRules) -> Self {
        let mut fsm = NodeFsm::new(rec.restart_policy, rec.liveness, rules);
        fsm.restarts = rec.restarts;
        fsm.desired = rec.desired;
        fsm.last_exit = rec.last_exit.clone();
        Self {
            rec,
            fsm,
            endpoint,
            pending: None,
            removal: None,
            stop_timeout_override: None,
            stop_waiters: vec![],
            spawn_waiters: vec![],
            last_log_lines: vec![],
            record_dirty: true,
        }
    }

    /// The record as state.json and `node.json` hold it: the spec plus the FSM's facts.
    pub fn record(&self) -> NodeRecord {
        let mut r = self.rec.clone();
        r.pid = self.fsm.pid();
        r.start_time = self.fsm.process.and_then(|p| p.start_time);
        r.desired = self.fsm.desired;
        r.restarts = self.fsm.restarts;
        r.last_exit = self.fsm.last_exit.clone();
        r.restart_policy = self.fsm.policy;
        r.liveness = self.fsm.liveness;
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

    pub fn status(&self, with_logs: bool) -> NodeStatus {
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
            pid: self.fsm.pid(),
            port: self.rec.port,
            state,
            ready: state == NodeState::Ready,
            restarts: self.fsm.restarts,
            uptime_ms: self.fsm.running_since().map(|t| t.elapsed().as_millis() as u64),
            restart_policy: self.fsm.policy,
            last_exit: self.fsm.last_exit.clone(),
            dir: self.rec.dir.clone(),
            data_dir: self.rec.data_dir.clone(),
            log_path: self.rec.log_path.clone(),
            config_path: self.rec.config_path.clone(),
            message: self.fsm.message.clone(),
            last_log_lines,
            desired: self.fsm.desired,
            liveness: self.fsm.liveness,
            liveness_failures: self.fsm.liveness_failures,
            url: self.endpoint.url(),
        }
    }
}

/// Sort key: devnet first in name order (node-b before node-aa), then local.
/// Borrowed, so sorting 50 nodes for every status answer allocates nothing.
pub(super) fn order(rec: &NodeRecord) -> (u8, usize, &str) {
    let g = match rec.group {
        dwbase_proto::Group::Devnet => 0,
        dwbase_proto::Group::Local => 1,
    };
    (g, rec.name.len(), rec.name.as_str())
}

/// Sort key of a name alone: node-b before node-aa.
pub(super) fn order_key(name: &str) -> (usize, String) {
    (name.len(), name.to_owned())
}
