//! Node processes: spawn (own process group, output through the log pipe), signal, and wait
//! for the exit — of our own children via `Child::wait`, of adopted ones via a pidfd.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dwbase_proto::ExitKind;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Node environment variables the supervisor never passes through from its own environment:
/// each node's config file is authoritative (one inherited `DWBASE_LISTEN` would make every
/// devnet node bind the same port). The deploy spec's env may still set them.
pub const SCRUBBED_ENV: &[&str] = &[
    "DWBASE_DATA_DIR",
    "DWBASE_LISTEN",
    "DWBASE_NODE_ID",
    "DWBASE_SWARM_PEERS",
    "DWBASE_SWARM_ENABLED",
    dwbase_proto::notify::NOTIFY_ENV,
];

/// A program plus the arguments that come before ours (e.g. `dwbase node run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The executable.
    pub program: PathBuf,
    /// Leading arguments.
    pub args: Vec<OsString>,
}

impl Invocation {
    /// A program without leading arguments.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), args: vec![] }
    }

    /// A program with leading arguments.
    pub fn with_args<I, S>(program: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self { program: program.into(), args: args.into_iter().map(Into::into).collect() }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

/// How node output reaches its log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// Through `<logpipe> --file F --max-bytes N --keep K` (timestamped, rotated).
    Pipe {
        /// The log-pipe program (`dwbase-supervisor logpipe`).
        logpipe: Invocation,
        /// Rotate at this size.
        max_bytes: u64,
        /// Keep this many rotated files.
        keep: u32,
    },
    /// Append raw output to the file (no timestamps, no rotation): tests and fallback.
    Append,
}

/// Everything needed to start one node.
#[derive(Debug, Clone)]
pub struct SpawnSpec<'a> {
    /// The node program.
    pub node: &'a Invocation,
    /// Where output goes.
    pub sink: &'a LogSink,
    /// `--config` argument.
    pub config_path: &'a Path,
    /// The node's stdout/stderr log.
    pub log_path: &'a Path,
    /// SIGTERM → SIGKILL grace; the log pipe drains at most this long after SIGTERM.
    pub stop_timeout_ms: u64,
    /// The node's data dir (DWBASE_DATA_DIR for the node).
    pub data_dir: &'a Path,
    /// The node id (DWBASE_NODE_ID).
    pub node_id: &'a str,
    /// Extra environment from the deploy spec.
    pub env: &'a [(String, String)],
    /// The supervisor's notify socket, for the node's last words (`DWBASE_NOTIFY_SOCKET`).
    pub notify_socket: Option<&'a Path>,
}

/// A freshly spawned node.
#[derive(Debug)]
pub struct SpawnedNode {
    /// Its pid (= its process group id).
    pub pid: u32,
    /// Its start time (clock ticks since boot), to recognise it later.
    pub start_time: Option<u64>,
    /// The child handle, for `wait`.
    pub child: Child,
    /// Its log pipe, to be started ([`LogSink::Pipe`]): hand `.1` to [`start_log_pipes`],
    /// await `.0`.
    pub log_pipe: Option<(LogPipeStart, LogPipeJob)>,
}

/// A node's log pipe, started on the log-pipe thread, off the caller's: the runner spawns the
/// nodes of a turn back to back and hands their log pipes over at the end of the turn, so a
/// rollout of 50 starts 50 processes before it starts the other 50 (each process start costs
/// this VM about a millisecond of CPU, and the nodes are what the deploy waits for). Until
/// its pipe has started, a node's output waits in the pipe's buffer (64 KiB on Linux).
#[derive(Debug)]
pub struct LogPipeStart {
    rx: oneshot::Receiver<io::Result<Child>>,
    node_pid: u32,
    log_path: PathBuf,
    program: PathBuf,
}

impl LogPipeStart {
    /// Waits until the log pipe has started (or failed to) and returns its pid; from then on
    /// it is reaped in the background. Await this before reaping the node: until the node is
    /// reaped its process group exists, so the log pipe can always join it.
    pub async fn started(self) -> Option<u32> {
        let result = match self.rx.await {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the log-pipe thread is gone")),
        };
        match result {
            Ok(mut child) => {
                let pid = child.id();
                // Reap it whenever it ends; it does not report to anyone.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                pid
            }
            Err(e) => {
                // The node runs, but its output goes nowhere (SIGPIPE on first write).
                tracing::error!(
                    pid = self.node_pid, log = %self.log_path.display(), program = %self.program.display(),
                    "starting the log pipe failed: {e}"
                );
                None
            }
        }
    }
}

/// One log pipe to start: the command, the runtime its child registers with, the answer.
pub struct LogPipeJob {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    done: oneshot::Sender<io::Result<Child>>,
}

impl std::fmt::Debug for LogPipeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPipeJob").field("cmd", self.cmd.as_std()).finish_non_exhaustive()
    }
}

impl LogPipeJob {
    fn run(self) {
        let _rt = self.runtime.enter();
        let mut cmd = self.cmd;
        let _ = self.done.send(cmd.spawn());
    }
}

/// Starts log pipes, in the order given, on one thread of its own ("dwbase-logpipes"),
/// created at the first use and then blocked on its queue (no wake-up while idle). Starting
/// a process blocks its caller until the child has exec'd (posix_spawn's vfork); here that
/// runs beside the runner instead of inside its turn. Where no thread can be started, the
/// pipes start on the caller's thread.
pub fn start_log_pipes(jobs: impl IntoIterator<Item = LogPipeJob>) {
    use std::sync::mpsc::Sender;
    use std::sync::{Mutex, OnceLock};
    static QUEUE: OnceLock<Mutex<Option<Sender<LogPipeJob>>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| Mutex::new(None));
    let mut guard = queue.lock().unwrap_or_else(|e| e.into_inner());
    for job in jobs {
        let job = match guard.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => continue,
                // The thread is gone (it panicked): start another one.
                Err(back) => back.0,
            },
            None => job,
        };
        let (tx, rx) = std::sync::mpsc::channel::<LogPipeJob>();
        let thread = std::thread::Builder::new().name("dwbase-logpipes".into()).spawn(move || {
            for job in rx {
                job.run();
            }
        });
        match thread {
            Ok(_) => {
                let _ = tx.send(job);
                *guard = Some(tx);
            }
            Err(e) => {
                tracing::warn!("starting the log-pipe thread: {e}; starting a log pipe inline");
                *guard = None;
                job.run();
            }
        }
    }
}

/// Threads that start node processes beside the runner ("dwbase-spawn-N"), so that a
/// rollout's next node is prepared (its folder, config, port check) while the previous ones
/// are still being started: starting a process blocks its caller until the child has exec'd
/// (posix_spawn's vfork), about half a millisecond here, most of it the child's exec on
/// another core. The threads are made at the first job and then block on the queue (no
/// wake-up while idle). Where no thread can be started, jobs run on the caller's thread.
pub struct SpawnPool {
    size: usize,
    queue: Option<std::sync::mpsc::Sender<SpawnTask>>,
}

type SpawnTask = Box<dyn FnOnce() + Send + 'static>;

impl std::fmt::Debug for SpawnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnPool")
            .field("size", &self.size)
            .field("started", &self.queue.is_some())
            .finish()
    }
}

impl SpawnPool {
    /// A pool of `size` threads (at least one), none started yet.
    pub fn new(size: usize) -> Self {
        Self { size: size.max(1), queue: None }
    }

    /// Runs `job` on one of the pool's threads, inside `runtime` (a tokio child registers
    /// with the runtime that spawns it).
    pub fn submit(
        &mut self,
        runtime: &tokio::runtime::Handle,
        job: impl FnOnce() + Send + 'static,
    ) {
        let runtime = runtime.clone();
        let task: SpawnTask = Box::new(move || {
            let _rt = runtime.enter();
            job();
        });
        let task = match &self.queue {
            Some(tx) => match tx.send(task) {
                Ok(()) => return,
                // Every thread is gone (they panicked): start them again.
                Err(back) => back.0,
            },
            None => task,
        };
        match self.start() {
            Ok(tx) => {
                // The receiver lives as long as one of the threads just started.
                if let Err(back) = tx.send(task) {
                    (back.0)();
                }
                self.queue = Some(tx);
            }
            Err(e) => {
                tracing::warn!("starting the spawn threads: {e}; starting a node inline");
                self.queue = None;
                task();
            }
        }
    }

    fn start(&self) -> io::Result<std::sync::mpsc::Sender<SpawnTask>> {
        use std::sync::{Arc, Mutex};
        let (tx, rx) = std::sync::mpsc::channel::<SpawnTask>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.size {
            let rx = Arc::clone(&rx);
            let started =
                std::thread::Builder::new().name(format!("dwbase-spawn-{i}")).spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(task) => task(),
                        Err(_) => break,
                    }
                });
            if let Err(e) = started {
                if i == 0 {
                    return Err(e);
                }
                tracing::warn!("starting spawn thread {i}: {e}; going on with {i}");
                break;
            }
        }
        Ok(tx)
    }
}

/// Spawning failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The node program could not be started.
    #[error("starting {program}: {source}")]
    Node {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The log file or pipe could not be set up.
    #[error("setting up the log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

#[cfg(target_os = "linux")]
fn cloexec_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn cloexec_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let (r, w) = nix::unistd::pipe().map_err(io::Error::from)?;
    for fd in [&r, &w] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    Ok((r, w))
}

/// Spawns a node in its own process group with stdin null and stdout+stderr into its log.
///
/// With [`LogSink::Pipe`], the node writes into an OS pipe whose read end belongs to a log-pipe
/// process that joins the node's process group; the supervisor keeps neither end, so the node
/// and its log outlive the supervisor, and stopping the group ends both.
pub fn spawn_node(spec: &SpawnSpec<'_>) -> Result<SpawnedNode, SpawnError> {
    let log_err = |source| SpawnError::Log { path: spec.log_path.to_owned(), source };
    let mut cmd = spec.node.command();
    cmd.arg("--config").arg(spec.config_path);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    if let Some(path) = spec.notify_socket {
        cmd.env(dwbase_proto::notify::NOTIFY_ENV, path);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("DWBASE_DATA_DIR", spec.data_dir)
        .env("DWBASE_NODE_ID", spec.node_id)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);

    match spec.sink {
        LogSink::Append => {
            // (With a log pipe, the pipe makes the folder as it opens the log.)
            if let Some(dir) = spec.log_path.parent() {
                std::fs::create_dir_all(dir).map_err(log_err)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(spec.log_path)
                .map_err(log_err)?;
            cmd.stdout(file.try_clone().map_err(log_err)?).stderr(file);
            let child = cmd.spawn().map_err(|source| SpawnError::Node {
                program: spec.node.program.clone(),
                source,
            })?;
            Ok(finish(child))
        }
        LogSink::Pipe { logpipe, max_bytes, keep } => {
            let (read, write) = cloexec_pipe().map_err(log_err)?;
            cmd.stdout(write.try_clone().map_err(log_err)?).stderr(write);
            let child = cmd.spawn().map_err(|source| SpawnError::Node {
                program: spec.node.program.clone(),
                source,
            })?;
            // `cmd` still holds the write end: drop it so the log pipe sees EOF once the
            // node (and anything it started) is gone.
            drop(cmd);
            let node = finish(child);
            let mut lp = logpipe.command();
            lp.arg("--file")
                .arg(spec.log_path)
                .arg("--max-bytes")
                .arg(max_bytes.to_string())
                .arg("--keep")
                .arg(keep.to_string())
                .arg("--drain-timeout-ms")
                .arg(spec.stop_timeout_ms.to_string())
                .stdin(read)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(node.pid as i32)
                .kill_on_drop(false);
            let (done, rx) = oneshot::channel();
            let job = LogPipeJob { cmd: lp, runtime: tokio::runtime::Handle::current(), done };
            let start = LogPipeStart {
                rx,
                node_pid: node.pid,
                log_path: spec.log_path.to_owned(),
                program: logpipe.program.clone(),
            };
            Ok(SpawnedNode { log_pipe: Some((start, job)), ..node })
        }
    }
}

fn finish(child: Child) -> SpawnedNode {
    let pid = child.id().unwrap_or(0);
    SpawnedNode { pid, start_time: dwbase_proto::process::start_time(pid), child, log_pipe: None }
}

/// Code or signal of an exit status.
pub fn exit_kind(status: std::process::ExitStatus) -> Option<ExitKind> {
    use std::os::unix::process::ExitStatusExt;
    status.code().map(ExitKind::Code).or_else(|| status.signal().map(ExitKind::Signal))
}

/// Waits for one of our children to exit.
pub async fn wait_child(mut child: Child) -> Option<ExitKind> {
    match child.wait().await {
        Ok(status) => exit_kind(status),
        Err(e) => {
            tracing::warn!("waiting for a node: {e}");
            None
        }
    }
}

/// Waits for a process that is not our child (an adopted node) to exit. Uses a pidfd, which
/// becomes readable when the process exits; where that is unavailable, polls /proc slowly.
pub async fn wait_adopted(pid: u32, start_time: Option<u64>) {
    #[cfg(target_os = "linux")]
    {
        match pidfd_wait(pid).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(pid, "pidfd unavailable ({e}); polling /proc"),
        }
    }
    while dwbase_proto::process::liveness(pid, start_time) == dwbase_proto::process::Liveness::Alive
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(target_os = "linux")]
async fn pidfd_wait(pid: u32) -> io::Result<()> {
    use rustix::process::{pidfd_open, PidfdFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = pidfd_open(pid, PidfdFlags::NONBLOCK).map_err(io::Error::from)?;
    // tokio deprecated the safe constructor because a registered fd could be closed or
    // replaced behind its back; here the AsyncFd owns the OwnedFd outright and drops it only
    // after deregistering, which is exactly the condition the unsafe replacement asks for.
    #[allow(deprecated)]
    let afd = AsyncFd::with_interest(fd, Interest::READABLE)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// Reads the last `n` lines of a log file (at most the last 64 KiB), for status messages.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return vec![];
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return vec![];
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_takes_the_last_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.log");
        let body: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, body).unwrap();
        assert_eq!(tail_lines(&p, 3), vec!["line 97", "line 98", "line 99"]);
        assert!(tail_lines(&dir.path().join("missing"), 3).is_empty());
    }

    /// Spawns `body` as a shell-script node `node-a` in `dir`, its log in `dir/logs/node.log`.
    fn spawn_script(dir: &Path, body: &str, sink: &LogSink) -> (PathBuf, SpawnedNode) {
        let script = dir.join("node.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = dir.join("logs/node.log");
        let inv = Invocation::new(&script);
        let spawned = spawn_node(&SpawnSpec {
            node: &inv,
            sink,
            config_path: Path::new("/x/config.toml"),
            log_path: &log,
            stop_timeout_ms: 1000,
            data_dir: dir,
            node_id: "node-a",
            env: &[],
            notify_socket: None,
        })
        .unwrap();
        (log, spawned)
    }

    #[tokio::test]
    async fn spawn_append_and_wait() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"hello $DWBASE_NODE_ID $1 $2\"\nexit 3\n";
        let (log, spawned) = spawn_script(dir.path(), script, &LogSink::Append);
        assert!(spawned.pid > 1);
        assert_eq!(wait_child(spawned.child).await, Some(ExitKind::Code(3)));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "hello node-a --config /x/config.toml\n");
    }

    #[tokio::test]
    async fn a_log_pipe_started_after_its_node_exited_still_gets_its_output() {
        let dir = tempfile::tempdir().unwrap();
        // A log pipe that appends its input to `--file`, making its folder as the real one
        // (dwbase-logpipe) does.
        let logpipe = Invocation::with_args(
            "sh",
            [
                "-c",
                r#"while [ $# -gt 0 ]; do [ "$1" = --file ] && f="$2"; shift; done; mkdir -p "${f%/*}" && exec cat >> "$f""#,
                "logpipe",
            ],
        );
        let sink = LogSink::Pipe { logpipe, max_bytes: 1 << 20, keep: 1 };
        let script = "echo \"said before exiting\"\nexit 4\n";
        let (log, spawned) = spawn_script(dir.path(), script, &sink);
        let (start, job) = spawned.log_pipe.expect("a log pipe to start");
        // The node has said its line and exited before its log pipe starts (it stays a
        // zombie, so its process group is still there to join).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !dwbase_proto::process::is_zombie(spawned.pid) {
            assert!(std::time::Instant::now() < until, "the node did not exit");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        start_log_pipes([job]);
        let pipe = start.started().await.expect("the log pipe started");
        assert!(pipe > 1);
        assert_eq!(wait_child(spawned.child).await, Some(ExitKind::Code(4)));
        // The node is gone, so the pipe sees EOF once it has copied what was buffered.
        assert!(
            dwbase_proto::process::wait_group_gone(spawned.pid, &[pipe], Duration::from_secs(10))
                .await
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "said before exiting\n");
    }

    #[tokio::test]
    async fn sweeping_kills_what_the_leader_left_and_an_empty_group_is_left_alone() {
        use std::os::unix::process::CommandExt;
        // A leader that leaves a grandchild ignoring SIGTERM, records its pid and exits. The
        // grandchild holds none of our pipes (its stdio is /dev/null), so waiting for the
        // leader does not wait for it.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let mut leader = std::process::Command::new("sh")
            .arg("-c")
            .arg("(trap '' TERM; exec sleep 1000) </dev/null >/dev/null 2>&1 & echo $! > \"$1\"")
            .arg("sh")
            .arg(&pid_file)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pgid = leader.id();
        assert!(leader.wait().unwrap().success());
        let grandchild: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Whatever happens below, the grandchild does not outlive the test.
        struct Kill(u32);
        impl Drop for Kill {
            fn drop(&mut self) {
                let cmdline =
                    std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
                if cmdline.starts_with(b"sleep\0") {
                    let _ = dwbase_proto::process::signal_process(
                        self.0,
                        dwbase_proto::process::Signal::SIGKILL,
                    );
                }
            }
        }
        let _kill = Kill(grandchild);
        use dwbase_proto::process::{group_alive, sweep_group, Sweep};
        assert!(group_alive(pgid), "the grandchild keeps the group");
        let t = std::time::Instant::now();
        assert_eq!(sweep_group(pgid, &[], Duration::from_millis(300)).await, Sweep::Killed);
        assert!(t.elapsed() < Duration::from_secs(5));
        let gone = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(true)
        };
        for _ in 0..100 {
            if gone(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone(grandchild), "grandchild {grandchild} survived the sweep");
        assert!(!group_alive(pgid));
        assert_eq!(sweep_group(pgid, &[], Duration::from_millis(300)).await, Sweep::Empty);
    }

    #[tokio::test]
    async fn adopted_wait_wakes_on_exit() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id();
        let st = dwbase_proto::process::start_time(pid);
        let reaper = std::thread::spawn(move || child.wait());
        tokio::time::timeout(Duration::from_secs(5), wait_adopted(pid, st)).await.unwrap();
        reaper.join().unwrap().unwrap();
    }
}
