//! The cheap, cloneable way to talk to the runner: one [`Command`] per request, each with a
//! oneshot for the answer, plus the broadcast of [`Event`]s and a watch of every node's status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dwbase_proto::{ErrorKind, ErrorReply, Event, Group, NodeStatus, Plan, StatusReport, StopSpec};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::reconcile::{DesiredNode, Step};
use super::Msg;

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

/// A process was spawned for a node: its pid and restart count at that moment (a later exit
/// shows as a higher count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The new pid.
    pub pid: u32,
    /// The node's restart count right after the spawn.
    pub restarts: u32,
    /// The first [`Snapshot::seq`] that includes this spawn: older snapshots show the node as
    /// it was before, and must not be judged.
    pub seq: u64,
}

/// Every node's status as published after a change, numbered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Bumped at every publish.
    pub seq: u64,
    /// Every node, in status order.
    pub nodes: Vec<NodeStatus>,
}

/// What applying a step gives back to wait on.
#[derive(Debug)]
pub enum Applied {
    /// Done at once (an in-place update).
    Done,
    /// A process will be spawned: resolves with it, or with why it could not be.
    Spawning(oneshot::Receiver<Result<Spawned, String>>),
    /// The node is being stopped and forgotten: resolves once its process is gone.
    Removing(Option<oneshot::Receiver<()>>),
}

/// The plan of a deploy, and the steps that carry it out (in order).
#[derive(Debug)]
pub struct Planned {
    /// For people.
    pub plan: Plan,
    /// For the rollout.
    pub steps: Vec<Step>,
}

/// A request for the runner.
#[derive(Debug)]
pub enum Command {
    /// The status report.
    Status(oneshot::Sender<StatusReport>),
    /// Diff a group's desired nodes against what runs.
    Plan {
        /// The group deployed.
        group: Group,
        /// Its nodes as the spec wants them.
        desired: Vec<DesiredNode>,
        /// Delete the folders of removed nodes.
        prune: bool,
        /// The answer.
        reply: oneshot::Sender<Result<Planned, ErrorReply>>,
    },
    /// Carry out one step of a plan.
    Apply(Box<Step>, oneshot::Sender<Result<Applied, ErrorReply>>),
    /// Carry out several steps in order in one turn (stopping at the first that fails): the
    /// additions and starts of a rollout, so that their files cost one sync and one state
    /// save, and their processes start back to back.
    ApplyAll(Vec<Step>, oneshot::Sender<Vec<Result<Applied, ErrorReply>>>),
    /// Restart one node; the inner receiver resolves once the new process is spawned.
    Restart(
        String,
        oneshot::Sender<Result<oneshot::Receiver<Result<Spawned, String>>, ErrorReply>>,
    ),
    /// Stop nodes; the receivers resolve as each process is gone.
    Stop(StopSpec, oneshot::Sender<Result<StopTicket, ErrorReply>>),
    /// Log files of one node or all.
    LogTargets(Option<String>, oneshot::Sender<Result<Vec<LogTarget>, ErrorReply>>),
    /// Tell event subscribers what a rollout is doing to a node.
    Notice(String, String),
    /// Save the final state (supervisor record cleared) and end the runner.
    Finish(oneshot::Sender<()>),
}

/// The runner has ended (the supervisor is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the supervisor is shutting down")]
pub struct Gone;

impl From<Gone> for ErrorReply {
    fn from(_: Gone) -> Self {
        ErrorReply::new(ErrorKind::Internal, "the supervisor is shutting down")
    }
}

/// The cheap, cloneable way to talk to the runner.
#[derive(Debug, Clone)]
pub struct RunnerHandle {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) status: watch::Receiver<Arc<Snapshot>>,
}

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

    /// The plan for a group's desired nodes.
    pub async fn plan(
        &self,
        group: Group,
        desired: Vec<DesiredNode>,
        prune: bool,
    ) -> Result<Result<Planned, ErrorReply>, Gone> {
        self.ask(|reply| Command::Plan { group, desired, prune, reply }).await
    }

    /// Carries out one step.
    pub async fn apply(&self, step: Step) -> Result<Result<Applied, ErrorReply>, Gone> {
        self.ask(|tx| Command::Apply(Box::new(step), tx)).await
    }

    /// Carries out `steps` in order in one runner turn; the answer has one result per step
    /// tried, the last one an error if a step failed (the steps after it are not tried).
    pub async fn apply_all(
        &self,
        steps: Vec<Step>,
    ) -> Result<Vec<Result<Applied, ErrorReply>>, Gone> {
        self.ask(|tx| Command::ApplyAll(steps, tx)).await
    }

    /// Asks for a restart; the receiver resolves once the new process is spawned.
    pub async fn restart(
        &self,
        node: String,
    ) -> Result<Result<oneshot::Receiver<Result<Spawned, String>>, ErrorReply>, Gone> {
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
                    return Ok(Err(ErrorReply::new(
                        ErrorKind::Process,
                        format!("nodes did not exit within {limit:?}"),
                    )));
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

    /// Tells event subscribers what a rollout does to `node`.
    pub fn notice(&self, node: &str, message: String) {
        let _ = self.tx.send(Msg::Cmd(Command::Notice(node.to_owned(), message)));
    }

    /// Subscribes to node events (for log followers, event streams and rollouts).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A view of every node's status, updated after every change.
    pub fn status_watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.status.clone()
    }

    /// Saves the final state and ends the runner.
    pub async fn finish(&self) -> Result<(), Gone> {
        self.ask(Command::Finish).await
    }
}
