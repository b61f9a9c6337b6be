//! Working from state.json when no supervisor answers: what is recorded, what is still alive,
//! and stopping recorded process groups by signal.
//!
//! Reading is side-effect free ([`StateFile::read`]): any command may look. Acting — signals,
//! writing state.json — happens only while this process holds the root's instance lock
//! ([`RootLock`]), so it can never race a supervisor, and changes only the records it acted on.
//! A recorded pid is trusted only together with its recorded start time
//! ([`process::liveness`]): a pid reused by a stranger is reported, never signalled.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dwbase_proto::lock::{LockError, RootLock};
use dwbase_proto::process::{self, Liveness, ProcessId, StopOutcome, StopTarget};
use dwbase_proto::state::{
    Desired, Loaded, NodeRecord, StateFile, DEFAULT_STOP_TIMEOUT_MS, NODE_RECORD_FILE,
};
use dwbase_proto::{Group, Paths};

/// One group's state file, read.
#[derive(Debug)]
pub struct GroupState {
    /// Devnet or local.
    pub group: Group,
    /// The file.
    pub path: PathBuf,
    /// Its contents (empty when missing or corrupt).
    pub state: StateFile,
    /// Whether the file existed and parsed.
    pub present: bool,
}

/// Reads both state files without changing anything. A corrupt one is reported loudly and
/// read as empty (the supervisor, its owner, moves it aside and recovers the nodes from their
/// folders when it next starts).
pub fn load_all(paths: &Paths) -> Result<Vec<GroupState>> {
    let mut out = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let path = paths.state_file(group);
        let (state, present) = match StateFile::read(&path)? {
            Loaded::Missing => (StateFile::default(), false),
            Loaded::Ok(s) => (s, true),
            Loaded::Corrupt { reason, .. } => {
                eprintln!(
                    "WARNING: {} is unreadable ({reason}). A supervisor started for this root \
                     moves it aside and finds the nodes through their folders.",
                    path.display(),
                );
                (StateFile::default(), false)
            }
        };
        out.push(GroupState { group, path, state, present });
    }
    Ok(out)
}

/// The records in the node folders of `group` (`<group dir>/<node>/node.json`).
pub fn folder_records(paths: &Paths, group: Group) -> Vec<NodeRecord> {
    let Ok(entries) = std::fs::read_dir(paths.group_dir(group)) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(NODE_RECORD_FILE).is_file())
        .filter_map(|e| NodeRecord::load_from(&e.path()))
        .collect()
}

/// Whether anything under the root should be running: a record (in a state file, or in a
/// node folder when a state file is lost or corrupt) of a node that was not stopped on
/// purpose. That is when a command starts a supervisor to heal the root.
pub fn anything_recorded(paths: &Paths) -> bool {
    [Group::Devnet, Group::Local].into_iter().any(|group| {
        let path = paths.state_file(group);
        match StateFile::read(&path) {
            Ok(Loaded::Ok(s)) => s.nodes.iter().any(|n| n.desired == Desired::Running),
            Ok(Loaded::Missing) | Ok(Loaded::Corrupt { .. }) | Err(_) => {
                folder_records(paths, group).iter().any(|n| n.desired == Desired::Running)
            }
        }
    })
}

/// The supervisor recorded in these state files, if that process (pid and start time) is
/// still alive.
pub fn live_supervisor(groups: &[GroupState]) -> Option<(u32, Option<u64>)> {
    groups
        .iter()
        .filter_map(|g| g.state.supervisor.as_ref())
        .find(|s| process::liveness(s.pid, s.start_time) == Liveness::Alive)
        .map(|s| (s.pid, s.start_time))
}

/// What became of a recorded node.
pub fn node_liveness(n: &NodeRecord) -> Option<Liveness> {
    n.pid.map(|pid| process::liveness(pid, n.start_time))
}

/// The word `status` prints for a recorded node when no supervisor runs.
pub fn node_state_word(n: &NodeRecord) -> &'static str {
    use dwbase_proto::status_doc::FallbackState;
    match node_liveness(n) {
        Some(Liveness::Alive) => FallbackState::Alive,
        Some(Liveness::PidReused) => FallbackState::PidReused,
        _ if n.desired == Desired::Stopped => FallbackState::Stopped,
        Some(Liveness::Dead) | None => FallbackState::Dead,
    }
    .as_str()
}

/// What a signal-based stop did.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Nodes that were running and are now gone.
    pub stopped: Vec<String>,
    /// Nodes that needed SIGKILL.
    pub killed: Vec<String>,
    /// Nodes whose pid now belongs to another process (left alone).
    pub reused: Vec<String>,
    /// Nodes that could not be stopped.
    pub failed: Vec<String>,
    /// The supervisor pid that was stopped, if any.
    pub supervisor: Option<u32>,
}

/// Takes the root's instance lock, waiting up to `wait` for a supervisor that is on its way
/// out to release it. A live holder is an error naming it: with a supervisor running, only
/// the supervisor signals nodes and writes state.
pub async fn lock_root(paths: &Paths, wait: Duration) -> Result<RootLock> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match RootLock::try_acquire(paths) {
            Ok(l) => return Ok(l),
            Err(LockError::Held { holder, path }) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{} holds {} but does not answer on {}: a supervisor owns this root \
                         (only it may signal its nodes or write its state). Try again, or \
                         restart it: dwbase supervisor restart",
                        holder.map_or("another process".into(), |p| format!("pid {p}")),
                        path.display(),
                        paths.socket().display()
                    );
                }
            }
            Err(e) => return Err(e).context("taking the root's lock"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops recorded process groups by signal: SIGTERM, wait up to the grace, SIGKILL the group;
/// only for pids whose start time still matches. `names` empty means every node; then a live
/// recorded supervisor that does not answer is stopped first (SIGTERM: it stops its nodes and
/// exits). Everything else happens holding the root lock; the records of the nodes stopped are
/// marked stopped in state.json (saved atomically), no other record is touched.
pub async fn stop_by_signal(
    paths: &Paths,
    names: &[String],
    timeout: Option<Duration>,
    include_supervisor: bool,
) -> Result<StopReport> {
    let mut report = StopReport::default();
    if include_supervisor {
        let groups = load_all(paths)?;
        if let Some((pid, start)) = live_supervisor(&groups) {
            // Its SIGTERM handling stops its nodes first, then it exits.
            let grace = timeout.unwrap_or(Duration::from_millis(DEFAULT_STOP_TIMEOUT_MS))
                + Duration::from_secs(5);
            let t =
                StopTarget { id: ProcessId { pid, start_time: start }, grace, whole_group: false };
            process::terminate(&[t]).await;
            report.supervisor = Some(pid);
        }
    }
    let _lock = lock_root(paths, Duration::from_secs(5)).await?;
    // Re-read under the lock: this is the truth now.
    let groups = load_all(paths)?;

    let mut targets = Vec::new();
    let mut who = Vec::new();
    for g in &groups {
        for n in &g.state.nodes {
            if !names.is_empty() && !names.contains(&n.name) {
                continue;
            }
            let Some(pid) = n.pid else { continue };
            match process::liveness(pid, n.start_time) {
                Liveness::Alive => {
                    targets.push(StopTarget {
                        id: ProcessId { pid, start_time: n.start_time },
                        grace: timeout.unwrap_or(Duration::from_millis(n.stop_timeout_ms)),
                        whole_group: true,
                    });
                    who.push(n.name.clone());
                }
                Liveness::PidReused => {
                    eprintln!(
                        "warning: {}'s recorded pid {pid} now belongs to another process; not \
                         signalling it",
                        n.name
                    );
                    report.reused.push(n.name.clone());
                }
                Liveness::Dead => {}
            }
        }
    }
    for (name, outcome) in who.into_iter().zip(process::terminate(&targets).await) {
        match outcome {
            StopOutcome::Terminated => report.stopped.push(name),
            StopOutcome::Killed => {
                report.killed.push(name.clone());
                report.stopped.push(name);
            }
            StopOutcome::NotRunning(_) => {}
            StopOutcome::Survived => report.failed.push(name),
        }
    }

    // Record what we did, so a later supervisor does not restart what the operator stopped.
    for g in groups.into_iter().filter(|g| g.present) {
        let mut state = g.state;
        let mut changed = false;
        for n in &mut state.nodes {
            if !names.is_empty() && !names.contains(&n.name) {
                continue;
            }
            if report.failed.contains(&n.name) || report.reused.contains(&n.name) {
                continue;
            }
            if n.desired != Desired::Stopped || n.pid.is_some() {
                n.desired = Desired::Stopped;
                n.pid = None;
                n.start_time = None;
                changed = true;
                // The node's own record follows, so a recovery from folders agrees.
                if n.record_path().is_file() {
                    if let Err(e) = n.save_beside() {
                        eprintln!("warning: {e}");
                    }
                }
            }
        }
        if include_supervisor {
            if let Some(sup) = &state.supervisor {
                if process::liveness(sup.pid, sup.start_time) != Liveness::Alive {
                    state.supervisor = None;
                    changed = true;
                }
            }
        }
        if changed {
            state.save(&g.path)?;
        }
    }
    Ok(report)
}

/// Signals one process (a supervisor); "no such process" is fine.
pub fn signal_supervisor(pid: u32, signal: process::Signal) {
    if let Err(e) = process::signal_process(pid, signal) {
        tracing::warn!(pid, "{signal}: {e}");
    }
}
