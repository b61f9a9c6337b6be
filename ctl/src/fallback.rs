//! Working from state.json when no supervisor answers: what is recorded, what is still alive,
//! and stopping recorded process groups by signal.
//!
//! A recorded pid is trusted only together with its recorded start time
//! ([`process::liveness`]): a pid reused by a stranger is reported, never signalled.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use dwbase_proto::process::{self, Liveness};
use dwbase_proto::state::{Desired, Loaded, NodeRecord, StateFile, DEFAULT_STOP_TIMEOUT_MS};
use dwbase_proto::{Group, Paths};

/// One group's state file, loaded.
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

/// Loads both state files. A corrupt one has been moved aside by [`StateFile::load`]: warn
/// loudly, naming where it went, and carry on as if it were empty.
pub fn load_all(paths: &Paths) -> Result<Vec<GroupState>> {
    let mut out = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let path = paths.state_file(group);
        let (state, present) = match StateFile::load(&path)? {
            Loaded::Missing => (StateFile::default(), false),
            Loaded::Ok(s) => (s, true),
            Loaded::Corrupt { moved_to, reason } => {
                eprintln!(
                    "WARNING: {} was unreadable ({reason}); it was moved to {}. Nodes it \
                     recorded are not tracked any more: check for leftover dwbase-node processes.",
                    path.display(),
                    moved_to.display()
                );
                (StateFile::default(), false)
            }
        };
        out.push(GroupState { group, path, state, present });
    }
    Ok(out)
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
    match node_liveness(n) {
        Some(Liveness::Alive) => "alive",
        Some(Liveness::PidReused) => "pid-reused",
        _ if n.desired == Desired::Stopped => "stopped",
        Some(Liveness::Dead) | None => "dead",
    }
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

/// One process group to stop.
struct Target {
    name: Option<(Group, String)>,
    pid: u32,
    start: Option<u64>,
    grace: Duration,
    /// Signal the whole process group (nodes) or only the process (the supervisor, which may
    /// share a group with a foreground `dwbase`).
    whole_group: bool,
}

impl Target {
    fn signal(&self, sig: Sig) {
        if self.whole_group {
            signal_group(self.pid, sig)
        } else {
            signal_pid(self.pid, sig)
        }
    }
}

/// Stops recorded process groups by signal: SIGTERM, wait up to the grace, SIGKILL the group;
/// only for pids whose start time still matches. `names` empty means every node; then the
/// recorded supervisor (if alive) is stopped first so it cannot restart what we stop.
/// Stopped nodes are marked so in state.json (saved atomically).
pub async fn stop_by_signal(
    paths: &Paths,
    names: &[String],
    timeout: Option<Duration>,
    include_supervisor: bool,
) -> Result<StopReport> {
    let mut report = StopReport::default();
    let groups = load_all(paths)?;

    if include_supervisor {
        if let Some((pid, start)) = live_supervisor(&groups) {
            // Its SIGTERM handling stops its nodes first, then it exits.
            let grace = timeout.unwrap_or(Duration::from_millis(DEFAULT_STOP_TIMEOUT_MS))
                + Duration::from_secs(5);
            let t = Target { name: None, pid, start, grace, whole_group: false };
            terminate(&[t], &mut report).await;
            report.supervisor = Some(pid);
        }
    }

    let mut targets = Vec::new();
    for g in &groups {
        for n in &g.state.nodes {
            if !names.is_empty() && !names.contains(&n.name) {
                continue;
            }
            let Some(pid) = n.pid else { continue };
            match process::liveness(pid, n.start_time) {
                Liveness::Alive => targets.push(Target {
                    name: Some((g.group, n.name.clone())),
                    pid,
                    start: n.start_time,
                    grace: timeout.unwrap_or(Duration::from_millis(n.stop_timeout_ms)),
                    whole_group: true,
                }),
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
    terminate(&targets, &mut report).await;

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
            }
        }
        if include_supervisor && state.supervisor.is_some() {
            let sup = state.supervisor.as_ref().expect("checked");
            if process::liveness(sup.pid, sup.start_time) != Liveness::Alive {
                state.supervisor = None;
                changed = true;
            }
        }
        if changed {
            state.save(&g.path)?;
        }
    }
    Ok(report)
}

/// SIGTERM every target's group, wait for each leader up to its grace, SIGKILL the groups of
/// the ones still there, then sweep every group once so no grandchild survives.
async fn terminate(targets: &[Target], report: &mut StopReport) {
    if targets.is_empty() {
        return;
    }
    for t in targets {
        t.signal(Sig::Term);
    }
    let start = Instant::now();
    let mut pending: Vec<&Target> = targets.iter().collect();
    loop {
        pending.retain(|t| process::liveness(t.pid, t.start) == Liveness::Alive);
        let (overdue, waiting): (Vec<&Target>, Vec<&Target>) =
            pending.iter().partition(|t| start.elapsed() >= t.grace);
        pending = waiting;
        for t in &overdue {
            tracing::warn!(pid = t.pid, "still running after {:?}: SIGKILL", t.grace);
            t.signal(Sig::Kill);
            if let Some((_, name)) = &t.name {
                report.killed.push(name.clone());
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the rest of each group (the log pipe) drain for a moment, then sweep.
    let sweep_deadline = Instant::now() + Duration::from_millis(500);
    let groups: Vec<&Target> = targets.iter().filter(|t| t.whole_group).collect();
    while groups.iter().any(|t| group_exists(t.pid)) && Instant::now() < sweep_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in groups {
        if group_exists(t.pid) {
            signal_group(t.pid, Sig::Kill);
        }
    }
    // After SIGKILL the leaders go in milliseconds; reaping is init's job.
    let kill_deadline = Instant::now() + Duration::from_secs(5);
    for t in targets {
        while process::liveness(t.pid, t.start) == Liveness::Alive && Instant::now() < kill_deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let gone = process::liveness(t.pid, t.start) != Liveness::Alive;
        if let Some((_, name)) = &t.name {
            if gone {
                report.stopped.push(name.clone());
            } else {
                report.failed.push(name.clone());
            }
        }
    }
}

/// The signals we send.
#[derive(Debug, Clone, Copy)]
pub enum Sig {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
    /// SIGUSR1: supervisor, exit and leave the nodes running.
    Usr1,
}

/// Signals the process group led by `pgid`; "no such group" is fine.
#[cfg(unix)]
pub fn signal_group(pgid: u32, sig: Sig) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let sig = match sig {
        Sig::Term => Signal::SIGTERM,
        Sig::Kill => Signal::SIGKILL,
        Sig::Usr1 => Signal::SIGUSR1,
    };
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, "signalling the process group: {e}"),
    }
}

/// Signals one process; "no such process" is fine.
#[cfg(unix)]
pub fn signal_pid(pid: u32, sig: Sig) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let sig = match sig {
        Sig::Term => Signal::SIGTERM,
        Sig::Kill => Signal::SIGKILL,
        Sig::Usr1 => Signal::SIGUSR1,
    };
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, "signalling the process: {e}"),
    }
}

/// Whether any process is left in the group `pgid`.
#[cfg(unix)]
fn group_exists(pgid: u32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_ok()
}

/// Process groups do not exist here: nothing to signal.
#[cfg(not(unix))]
pub fn signal_group(_pgid: u32, _sig: Sig) {}

/// Signals do not exist here.
#[cfg(not(unix))]
pub fn signal_pid(_pid: u32, _sig: Sig) {}

#[cfg(not(unix))]
fn group_exists(_pgid: u32) -> bool {
    false
}
