//! The test kit shared by the end-to-end tests (`tests/`) and the supervisor's tests
//! (`supervisor/tests/`): polling with a deadline (never a fixed sleep), free ports, running a
//! program with a deadline, tiny HTTP calls, and guards that kill what a test started — by
//! recorded pid or process group (checked against its start time), never by name.

pub use dwbase_proto::process::{ProcessId, Signal};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what` after `deadline`.
pub fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago, below the ephemeral range (see [`free_port_range`]).
pub fn free_port() -> u16 {
    free_port_range(1)
}

/// Where the kernel picks the local ports of outgoing connections
/// (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default where it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The first of `n` consecutive ports that are all free now. Each call hands out a fresh
/// range (per process), starting at a place derived from the pid so parallel test binaries
/// rarely collide. The ports are below the ephemeral range: a node that restarts binds its
/// port again, and in the moment it is free any outgoing connection on the machine could be
/// given it as its local port (the restarted node then cannot bind until that connection
/// ends).
pub fn free_port_range(n: u16) -> u16 {
    const LOW: u16 = 10_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let high = ephemeral_range().0.max(LOW + 2_000);
    let span = (high - LOW) / 100;
    let _ = NEXT.compare_exchange(
        0,
        LOW + (std::process::id() % u32::from(span)) as u16 * 100,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let base = NEXT.fetch_add(n + 1, Ordering::SeqCst);
        if base.saturating_add(n) >= high {
            NEXT.store(LOW, Ordering::SeqCst);
            continue;
        }
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// What a finished program printed.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Output {
    /// The exit code (-1 if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics (showing both streams) unless it exited 0.
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "expected success, got {}\n{self}", self.status);
        self
    }

    /// Panics (showing both streams) unless it exited with `code`.
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "unexpected exit code\n{self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--- stdout ---\n{}--- stderr ---\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion with piped output, killing it (and failing) after `deadline`.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {deadline:?}\n--- stdout ---\n{}--- stderr ---\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Reads a pipe to its end on a thread (so a chatty child never blocks on a full pipe).
pub fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Kills a child (and waits for it) when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The child itself.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child taken")
    }

    /// Waits up to `deadline` for the child to exit.
    pub fn wait_deadline(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child().try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    dwbase_proto::process::pid_running(pid)
}

/// Sends `sig` to the process group `pgid` (errors ignored; pgid ≤ 1 is never signalled).
pub fn kill_group(pgid: u32, sig: Signal) {
    let _ = dwbase_proto::process::signal_group(pgid, sig);
}

/// Sends `sig` to the process `pid` (errors ignored; pid ≤ 1 is never signalled).
pub fn kill_pid(pid: u32, sig: Signal) {
    let _ = dwbase_proto::process::signal_process(pid, sig);
}

/// SIGKILLs a recorded process's whole group when dropped — only if the pid still names the
/// same process (start time), so a reused pid is never hit.
pub struct GroupGuard(pub Vec<ProcessId>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for id in &self.0 {
            if id.is_alive() {
                kill_group(id.pid, Signal::SIGKILL);
            }
        }
    }
}

/// Writes an executable shell script `dir/name` with `body` after the `#!/bin/sh` line.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A minimal HTTP/1.0 exchange (no chunking, the server closes): returns (status, body).
pub fn http(
    method: &str,
    url_host_port: &str,
    path: &str,
    json_body: Option<&str>,
) -> (u16, String) {
    let mut s =
        TcpStream::connect(url_host_port).unwrap_or_else(|e| panic!("{url_host_port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = json_body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {url_host_port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Async [`poll_until`]: polls `f` every 20 ms until it returns `Some`, or panics naming `what`
/// after `deadline`.
pub async fn poll_until_async<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
