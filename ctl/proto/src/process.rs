//! Process control, in one place: identity (pid + start time), liveness, group signalling and
//! terminate-and-sweep. The supervisor, the CLI's state.json fallback, the soak harness and the
//! tests all use this module, so the rules below hold everywhere:
//!
//! - **A pid alone is not an identity.** After a node dies its pid can be handed to any other
//!   process; pid + start time (field 22 of `/proc/<pid>/stat`) is.
//! - **A zombie is dead.** PID 1 of a container (or of this kind of machine) may never reap
//!   orphans, so `kill(pid, 0)` succeeding proves nothing: liveness reads the process state.
//! - **Never signal pgid ≤ 1** (`killpg(0)` is our own group, `killpg(1)` is init's, and a
//!   negative pid means "everyone").
//! - **Stop = SIGTERM (+ SIGCONT, so a stopped process sees it) → wait → SIGKILL the group.**
//!   "Already exited" is success, and grandchildren never survive.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

pub use nix::sys::signal::Signal;

/// A process as recorded: pid and start time together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot; `None` when it could not be read (such a
    /// record can never be proven ours, so it is never signalled).
    pub start_time: Option<u64>,
}

impl ProcessId {
    /// The identity of a live pid now, `None` if no such process.
    pub fn of(pid: u32) -> Option<Self> {
        start_time(pid).map(|st| Self { pid, start_time: Some(st) })
    }

    /// Our own process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self { pid, start_time: start_time(pid) }
    }

    /// What became of it.
    pub fn liveness(&self) -> Liveness {
        liveness(self.pid, self.start_time)
    }

    /// Whether it is still the very process that was recorded.
    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }
}

/// `/proc/<pid>/stat` as text, read into a buffer on the stack with one `read` (the line is a
/// few hundred bytes; `read_to_string` would first `statx` the file and then read it in growing
/// chunks, six reads here). This runs for every spawn, exit and liveness check. (Where there is
/// no procfs, the open fails.)
fn read_stat(pid: u32) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat"))?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    // Longer than any stat line seen: read the rest the general way.
                    let mut rest = Vec::from(&buf[..]);
                    file.read_to_end(&mut rest)?;
                    return Ok(String::from_utf8_lossy(&rest).into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // A command name may hold any bytes; the fields after it are ASCII.
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The start time of a process, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
/// `None` if the process does not exist (or on platforms without procfs).
#[cfg(target_os = "linux")]
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = read_stat(pid).ok()?;
    parse_start_time(&stat)
}

/// The start time of a process (unsupported here: always `None`, so callers treat every
/// recorded pid as gone rather than signalling a stranger).
#[cfg(not(target_os = "linux"))]
pub fn start_time(_pid: u32) -> Option<u64> {
    None
}

/// The fields of a `/proc/<pid>/stat` line after the command name. The name (field 2) is in
/// parentheses and may itself contain spaces or parentheses, so fields start after the last
/// `)`; index 0 is the state (field 3).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parses field 22 (start time) of a `/proc/<pid>/stat` line.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    stat_fields(stat)?.nth(19)?.parse().ok()
}

/// Parses (state, pgrp) — fields 3 and 5 — of a `/proc/<pid>/stat` line.
pub fn parse_state_and_group(stat: &str) -> Option<(char, i64)> {
    let mut f = stat_fields(stat)?;
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether the process is a zombie (exited, not yet reaped) — it holds its pid but is gone.
#[cfg(target_os = "linux")]
pub fn is_zombie(pid: u32) -> bool {
    read_stat(pid)
        .ok()
        .and_then(|s| parse_state_and_group(&s))
        .is_some_and(|(state, _)| matches!(state, 'Z' | 'X'))
}

/// Whether the process is a zombie (unsupported here: false).
#[cfg(not(target_os = "linux"))]
pub fn is_zombie(_pid: u32) -> bool {
    false
}

/// Whether some process (not a zombie) has this pid — whoever it is.
pub fn pid_running(pid: u32) -> bool {
    start_time(pid).is_some() && !is_zombie(pid)
}

/// What became of a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// The pid runs and its start time matches the record: it is ours.
    Alive,
    /// No such process (or a zombie).
    Dead,
    /// The pid runs but started at another time: a stranger reused it. Never signal it.
    PidReused,
}

impl Liveness {
    /// The word status prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::PidReused => "pid-reused",
        }
    }
}

/// Checks a recorded (pid, start time) pair against the live process table.
pub fn liveness(pid: u32, recorded_start: Option<u64>) -> Liveness {
    match start_time(pid) {
        None => Liveness::Dead,
        Some(_) if is_zombie(pid) => Liveness::Dead,
        Some(now) => match recorded_start {
            Some(then) if then == now => Liveness::Alive,
            // No start time was recorded: we cannot prove it is ours, so we must not claim it.
            _ => Liveness::PidReused,
        },
    }
}

/// The command line of a process (`None` if it is gone or unreadable).
#[cfg(target_os = "linux")]
pub fn cmdline(pid: u32) -> Option<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect(),
    )
}

/// The command line of a process (unsupported here).
#[cfg(not(target_os = "linux"))]
pub fn cmdline(_pid: u32) -> Option<Vec<OsString>> {
    None
}

/// Every live (non-zombie) process whose pid is its own process group id and whose command line
/// passes `keep` — e.g. node processes whose `--config` lies under a state root. Reads all of
/// /proc: for start-up discovery, not for hot paths.
pub fn find_group_leaders(keep: impl FnMut(&[OsString]) -> bool) -> Vec<ProcessId> {
    scan(true, keep)
}

/// Every live (non-zombie) process whose command line passes `keep`, group leader or not
/// (e.g. a node someone started by hand on a data dir about to be deleted). Reads all of /proc.
pub fn find_processes(keep: impl FnMut(&[OsString]) -> bool) -> Vec<ProcessId> {
    scan(false, keep)
}

#[cfg(target_os = "linux")]
fn scan(leaders_only: bool, mut keep: impl FnMut(&[OsString]) -> bool) -> Vec<ProcessId> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = read_stat(pid) else { continue };
        let Some((state, pgrp)) = parse_state_and_group(&stat) else { continue };
        if matches!(state, 'Z' | 'X') || (leaders_only && pgrp != i64::from(pid)) {
            continue;
        }
        let Some(args) = cmdline(pid) else { continue };
        if keep(&args) {
            out.push(ProcessId { pid, start_time: parse_start_time(&stat) });
        }
    }
    out
}

/// No /proc here: nothing is found.
#[cfg(not(target_os = "linux"))]
fn scan(_leaders_only: bool, _keep: impl FnMut(&[OsString]) -> bool) -> Vec<ProcessId> {
    vec![]
}

/// The value after `flag` in a command line (`--config FILE` or `--config=FILE`).
pub fn arg_value<'a>(args: &'a [OsString], flag: &str) -> Option<&'a Path> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(Path::new);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix(flag)?.strip_prefix('=')) {
            return Some(Path::new(v));
        }
    }
    None
}

fn checked_pid(pid: u32, what: &str) -> io::Result<nix::unistd::Pid> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if raw <= 1 {
        // 0 is our own group, 1 is init, and nothing below may ever be signalled by accident.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing {what} {raw}")));
    }
    Ok(nix::unistd::Pid::from_raw(raw))
}

/// Sends `signal` to the process group `pgid`. A group that no longer exists is success;
/// pgid ≤ 1 is refused.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    match nix::sys::signal::killpg(checked_pid(pgid, "pgid")?, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Sends `signal` to one process. A process that no longer exists is success; pid ≤ 1 is
/// refused.
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    match nix::sys::signal::kill(checked_pid(pid, "pid")?, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Asks a whole group to stop: SIGTERM, then SIGCONT so that a stopped (SIGSTOPped, hung
/// under a debugger) member sees the SIGTERM instead of sleeping on it (as systemd does).
pub fn terminate_group(pgid: u32) -> io::Result<()> {
    signal_group(pgid, Signal::SIGTERM)?;
    signal_group(pgid, Signal::SIGCONT)
}

/// Whether any process of group `pgid` still runs. Zombies do not count: they run nothing and
/// hold no file, and where the reaper of orphans is slow (a container's PID 1) they can stay.
pub fn group_alive(pgid: u32) -> bool {
    group_alive_with(pgid, &[])
}

/// [`group_alive`], looking first at members the caller knows of (a node's log pipe): while
/// the leader or one of them runs in the group, nothing else is read. Only a group that still
/// exists while none of them runs in it (a grandchild the node left, or zombies) costs a scan
/// of every process on the machine.
pub fn group_alive_with(pgid: u32, known: &[u32]) -> bool {
    let Ok(pid) = checked_pid(pgid, "pgid") else { return false };
    match nix::sys::signal::killpg(pid, None) {
        Err(nix::errno::Errno::ESRCH) => false,
        Ok(()) | Err(_) => live_members(pid.as_raw(), known).unwrap_or(true),
    }
}

/// Whether `pid` runs (is not a zombie) in process group `pgid`.
fn runs_in_group(pid: u32, pgid: i32) -> bool {
    read_stat(pid)
        .ok()
        .and_then(|stat| parse_state_and_group(&stat))
        .is_some_and(|(state, pgrp)| pgrp == i64::from(pgid) && !matches!(state, 'Z' | 'X'))
}

/// On Linux: whether some non-zombie process is in group `pgid` (from /proc), or `None` when
/// /proc cannot tell. The leader and the `known` members are checked first: while one of them
/// runs, nothing else is read.
fn live_members(pgid: i32, known: &[u32]) -> Option<bool> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    if pid_running(pgid as u32) || known.iter().any(|&pid| runs_in_group(pid, pgid)) {
        return Some(true);
    }
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let pid = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
        if pid.is_some_and(|pid| runs_in_group(pid, pgid)) {
            return Some(true);
        }
    }
    Some(false)
}

/// Waits until the recorded process is gone (dead, a zombie, or its pid reused), at most
/// `deadline`. Returns whether it is gone.
pub async fn wait_gone(id: ProcessId, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if !id.is_alive() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Waits until no live member of group `pgid` is left, at most `deadline`, looking first at
/// `known` members (see [`group_alive_with`]).
pub async fn wait_group_gone(pgid: u32, known: &[u32], deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if !group_alive_with(pgid, known) {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// How long [`sweep_group`] waits at most, after SIGTERM, for what is left of a group to go
/// away by itself (the log pipe draining the last output) before it SIGKILLs the group.
pub const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// How long [`sweep_group`] lets the group empty by itself before it signals anything.
const SWEEP_SETTLE: Duration = Duration::from_millis(200);

/// What [`sweep_group`] found after the group leader's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Nothing of the group was running any more.
    Empty,
    /// Processes were left; they ended after SIGTERM within the grace.
    Terminated,
    /// Processes were left and outlived SIGTERM; the group was SIGKILLed.
    Killed,
}

/// After a group leader has exited (stopped, crashed or killed), its process group can still
/// hold processes: grandchildren it started (which would keep ports, files and the log pipe
/// open forever) and the log pipe itself. This lets the group empty by itself for a moment,
/// then sends SIGTERM to it, gives it `grace` to go away, then SIGKILLs whatever is left.
///
/// The group id is the leader's pid; it cannot name another group while any member of ours is
/// left (a pid stays taken while it is a process group id), and an empty group is not
/// signalled.
///
/// `known` are members the caller knows of (the node's log pipe): while one of them runs, the
/// group is known to be there without reading every process's `/proc/<pid>/stat`.
pub async fn sweep_group(pgid: u32, known: &[u32], grace: Duration) -> Sweep {
    // Without leftovers the log pipe sees EOF and exits by itself within moments: wait for
    // that first, so a plain exit is not reported (or signalled) as leftovers.
    if wait_group_gone(pgid, known, grace.min(SWEEP_SETTLE)).await {
        return Sweep::Empty;
    }
    if let Err(e) = terminate_group(pgid) {
        tracing::warn!(pgid, "sweeping the process group: SIGTERM: {e}");
    }
    if wait_group_gone(pgid, known, grace).await {
        return Sweep::Terminated;
    }
    if let Err(e) = signal_group(pgid, Signal::SIGKILL) {
        tracing::warn!(pgid, "sweeping the process group: SIGKILL: {e}");
    }
    // SIGKILL is delivered at once but takes effect when each process next runs: wait for
    // that too, so that whoever waits for the sweep finds nothing of the group left.
    if !wait_group_gone(pgid, known, SWEEP_KILL_WAIT).await {
        tracing::warn!(
            pgid,
            "the process group still has members {SWEEP_KILL_WAIT:?} after SIGKILL"
        );
    }
    Sweep::Killed
}

/// How long [`sweep_group`] waits for SIGKILLed members to be gone.
const SWEEP_KILL_WAIT: Duration = Duration::from_secs(1);

/// One recorded process to stop with [`terminate`].
#[derive(Debug, Clone)]
pub struct StopTarget {
    /// The process (for a group, its leader).
    pub id: ProcessId,
    /// SIGTERM → SIGKILL grace.
    pub grace: Duration,
    /// Signal its whole process group (nodes) or only the process (a supervisor, which may
    /// share a group with a foreground `dwbase`).
    pub whole_group: bool,
}

/// What [`terminate`] did to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running (dead, or its pid now belongs to someone else: left alone).
    NotRunning(Liveness),
    /// It exited after SIGTERM within its grace.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It was still there after SIGKILL (e.g. uninterruptible sleep).
    Survived,
}

/// Stops recorded processes: SIGTERM (+SIGCONT) to each one whose start time still matches,
/// wait up to each grace, SIGKILL what is left, then sweep every group so nothing it started
/// survives. Targets whose pid is dead or reused are never signalled. Outcomes are in the
/// order of `targets`.
pub async fn terminate(targets: &[StopTarget]) -> Vec<StopOutcome> {
    let mut out: Vec<Option<StopOutcome>> = targets
        .iter()
        .map(|t| match t.id.liveness() {
            Liveness::Alive => None,
            other => Some(StopOutcome::NotRunning(other)),
        })
        .collect();
    let signal = |t: &StopTarget, sig: Signal| {
        let r = if t.whole_group {
            if sig == Signal::SIGTERM {
                terminate_group(t.id.pid)
            } else {
                signal_group(t.id.pid, sig)
            }
        } else {
            signal_process(t.id.pid, sig).and_then(|()| {
                if sig == Signal::SIGTERM {
                    signal_process(t.id.pid, Signal::SIGCONT)
                } else {
                    Ok(())
                }
            })
        };
        if let Err(e) = r {
            tracing::warn!(pid = t.id.pid, "{sig}: {e}");
        }
    };
    for (t, o) in targets.iter().zip(&out) {
        if o.is_none() {
            signal(t, Signal::SIGTERM);
        }
    }
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let mut pending = false;
        for (t, o) in targets.iter().zip(out.iter_mut()) {
            if o.is_some() {
                continue;
            }
            if !t.id.is_alive() {
                *o = Some(StopOutcome::Terminated);
            } else if start.elapsed() >= t.grace {
                tracing::warn!(pid = t.id.pid, "still running after {:?}: SIGKILL", t.grace);
                signal(t, Signal::SIGKILL);
                *o = Some(StopOutcome::Killed);
            } else {
                pending = true;
            }
        }
        if !pending {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    // The leaders are gone or SIGKILLed: sweep what their groups still hold (the log pipe
    // drains for a moment first), and confirm the SIGKILLed leaders went.
    let sweeps = targets
        .iter()
        .zip(&out)
        .filter(|(t, o)| t.whole_group && !matches!(o, Some(StopOutcome::NotRunning(_))))
        .map(|(t, _)| sweep_group(t.id.pid, &[], t.grace.min(SWEEP_GRACE)));
    futures::future::join_all(sweeps).await;
    for (t, o) in targets.iter().zip(out.iter_mut()) {
        if *o == Some(StopOutcome::Killed) && !wait_gone(t.id, Duration::from_secs(5)).await {
            *o = Some(StopOutcome::Survived);
        }
    }
    out.into_iter().map(|o| o.unwrap_or(StopOutcome::Survived)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_tricky_comm() {
        let line = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_state_and_group(line), Some(('S', 1234)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_reuse() {
        let me = ProcessId::current();
        let st = me.start_time.expect("own start time");
        assert!(me.is_alive());
        assert_eq!(liveness(me.pid, Some(st + 1)), Liveness::PidReused);
        assert_eq!(liveness(me.pid, None), Liveness::PidReused);
        assert_eq!(liveness(u32::MAX - 1, Some(1)), Liveness::Dead);
    }

    #[test]
    fn pid_1_and_0_are_never_signalled_and_a_gone_group_is_success() {
        assert!(signal_group(1, Signal::SIGTERM).is_err());
        assert!(signal_group(0, Signal::SIGTERM).is_err());
        assert!(signal_process(1, Signal::SIGTERM).is_err());
        assert!(signal_process(0, Signal::SIGTERM).is_err());
        assert!(signal_group(u32::MAX / 2 - 7, Signal::SIGTERM).is_ok());
        assert!(!group_alive(1));
    }

    #[test]
    fn arg_values() {
        let args: Vec<OsString> =
            ["node", "--config", "/a/b.toml"].iter().map(Into::into).collect();
        assert_eq!(arg_value(&args, "--config"), Some(Path::new("/a/b.toml")));
        let args: Vec<OsString> = ["node", "--config=/c.toml"].iter().map(Into::into).collect();
        assert_eq!(arg_value(&args, "--config"), Some(Path::new("/c.toml")));
        assert_eq!(arg_value(&args, "--other"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_stat_line_is_read_whole_and_names_with_spaces_and_parentheses_parse() {
        // A thread of this process renamed to a name with ") (" in it: the fields are found
        // after the last ')', and the line read in one go equals the one read the general way.
        let me = std::process::id();
        let ours = read_stat(me).unwrap();
        let general = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        assert_eq!(parse_start_time(&ours), parse_start_time(&general));
        assert!(start_time(me).is_some());
        let (line, raw) = std::thread::spawn(|| {
            std::fs::write("/proc/thread-self/comm", b"a) (b ) x\xff").unwrap();
            let tid = nix::unistd::gettid().as_raw();
            let line = read_stat(tid as u32).unwrap();
            (line, std::fs::read(format!("/proc/{tid}/stat")).unwrap())
        })
        .join()
        .unwrap();
        assert!(line.contains("a) (b ) x"), "{line}");
        assert_eq!(line.len(), String::from_utf8_lossy(&raw).len());
        assert_eq!(
            parse_state_and_group(&line).map(|(_, g)| g),
            Some(i64::from(nix::unistd::getpgrp().as_raw()))
        );
        assert!(parse_start_time(&line).is_some());
        assert!(read_stat(u32::MAX - 3).is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn terminate_stops_a_group_and_leaves_the_dead_alone() {
        use std::os::unix::process::CommandExt;
        let mut child =
            std::process::Command::new("sleep").arg("1000").process_group(0).spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        let reaper = std::thread::spawn(move || child.wait());
        let dead = ProcessId { pid: u32::MAX - 3, start_time: Some(1) };
        let t = |id| StopTarget { id, grace: Duration::from_secs(5), whole_group: true };
        let out = terminate(&[t(id), t(dead)]).await;
        assert_eq!(out, vec![StopOutcome::Terminated, StopOutcome::NotRunning(Liveness::Dead)]);
        reaper.join().unwrap().unwrap();
        assert!(!group_alive(id.pid));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn known_members_keep_a_group_alive_only_while_they_run_in_it() {
        use std::os::unix::process::CommandExt;
        // A leader that exits at once, and a member that joins its group and stays.
        let mut leader =
            std::process::Command::new("sleep").arg("0").process_group(0).spawn().unwrap();
        let pgid = leader.id();
        let member = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(pgid as i32)
            .spawn()
            .unwrap();
        // Neither may outlive the test.
        struct Reap(Vec<std::process::Child>);
        impl Drop for Reap {
            fn drop(&mut self) {
                for c in &mut self.0 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        assert!(leader.wait().unwrap().success());
        let outsider = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let (m, o) = (member.id(), outsider.id());
        let _reap = Reap(vec![member, outsider]);
        // The member runs in the group: alive, whether it is known or found by the scan.
        assert!(group_alive_with(pgid, &[m]));
        assert!(group_alive_with(pgid, &[]));
        // A known pid outside the group proves nothing; the scan still finds the member.
        assert!(group_alive_with(pgid, &[o]));
        assert!(runs_in_group(m, pgid as i32));
        assert!(!runs_in_group(o, pgid as i32));
        signal_process(m, Signal::SIGKILL).unwrap();
        // Killed but not reaped, the member is a zombie: it no longer counts, known or not.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while runs_in_group(m, pgid as i32) && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        assert!(!group_alive_with(pgid, &[m]));
        assert!(!group_alive(pgid));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_stopped_process_still_sees_sigterm() {
        use std::os::unix::process::CommandExt;
        let mut child =
            std::process::Command::new("sleep").arg("1000").process_group(0).spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        signal_process(id.pid, Signal::SIGSTOP).unwrap();
        let reaper = std::thread::spawn(move || child.wait());
        let out =
            terminate(&[StopTarget { id, grace: Duration::from_secs(30), whole_group: true }])
                .await;
        assert_eq!(out, vec![StopOutcome::Terminated], "SIGCONT let the SIGTERM through");
        reaper.join().unwrap().unwrap();
    }
}
