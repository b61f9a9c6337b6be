//! Running the real `dwbase-node` binary: a temp config, the "listening" line parsed from its
//! stdout (so `listen = "127.0.0.1:0"` works), readiness polling, and plain HTTP calls that
//! report failure instead of panicking (for tests that kill the node mid-request).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ChildGuard;

/// The `dwbase-node` binary under test.
pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwbase-node"))
}

/// `DWBASE_*` variables that would change what the node does; removed for every spawn (the
/// node's own list, so a new variable is cleared here too).
pub const NODE_ENV: &[&str] = dwbase_node::config::ENV_VARS;

/// Writes a node config into `dir/<id>.toml`: loopback, `listen` as given, data under
/// `dir/<id>/data`, no rate limits, plus `extra` TOML appended verbatim (whole sections).
pub fn write_config(dir: &Path, id: &str, listen: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    let text = format!(
        "[node]\nid = \"{id}\"\nlisten = \"{listen}\"\ndata_dir = \"{id}/data\"\n\
         log_dir = \"{id}/logs\"\nsummaries_dir = \"{id}/summaries\"\n\
         [node.security]\nremember_per_sec = 0\nask_per_min = 0\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `dwbase-node`; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    /// The process.
    pub guard: ChildGuard,
    /// `IP:port` it listens on (from its stdout line).
    pub addr: String,
    /// Further stdout lines.
    pub stdout: mpsc::Receiver<String>,
    /// Everything it wrote to stderr, available once it has exited.
    pub stderr: Option<std::thread::JoinHandle<String>>,
}

/// How a start attempt ended.
pub enum Started {
    /// It printed its listening line.
    Listening(NodeProcess),
    /// It exited first: exit status and stderr.
    Exited(std::process::ExitStatus, String),
}

/// Spawns `dwbase-node --config <config> [args]` and waits (up to `deadline`) for its
/// `dwbase-node listening ... addr=IP:PORT ...` stdout line, or for it to exit.
pub fn start_node(config: &Path, args: &[&str], deadline: Duration) -> Started {
    start_node_env(config, args, &[], deadline)
}

/// [`start_node`] with extra environment variables (set after the `DWBASE_*` ones are cleared).
pub fn start_node_env(
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> Started {
    let mut cmd = Command::new(node_bin());
    cmd.arg("--config").arg(config).args(args);
    for var in NODE_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn dwbase-node");
    let stderr = super::drain(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut guard = ChildGuard::new(child);
    let until = Instant::now() + deadline;
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            if let Some(addr) = listening_addr(&line) {
                return Started::Listening(NodeProcess {
                    guard,
                    addr,
                    stdout: rx,
                    stderr: Some(stderr),
                });
            }
        }
        if let Some(status) = guard.child().try_wait().unwrap() {
            return Started::Exited(status, stderr.join().unwrap_or_default());
        }
        assert!(
            Instant::now() < until,
            "dwbase-node printed no listening line within {deadline:?}"
        );
    }
}

/// The `addr=` of a `dwbase-node listening` line.
pub fn listening_addr(line: &str) -> Option<String> {
    let rest = line.strip_prefix("dwbase-node listening ")?;
    rest.split_whitespace().find_map(|kv| kv.strip_prefix("addr=")).map(str::to_owned)
}

impl NodeProcess {
    /// Starts a node that must come up; panics with its stderr otherwise.
    pub fn start(config: &Path, args: &[&str]) -> NodeProcess {
        Self::start_env(config, args, &[])
    }

    /// [`NodeProcess::start`] with extra environment variables.
    pub fn start_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        match start_node_env(config, args, env, Duration::from_secs(30)) {
            Started::Listening(n) => n,
            Started::Exited(status, stderr) => {
                panic!("dwbase-node exited early ({status}):\n{stderr}")
            }
        }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Polls `/readyz` until 200 (panics after `deadline`).
    pub fn wait_ready(&self, deadline: Duration) {
        super::poll_until("node /readyz 200", deadline, || {
            matches!(try_http("GET", &self.addr, "/readyz", None), Ok((200, _))).then_some(())
        });
    }

    /// Waits for exit (up to `deadline`) and returns the status and stderr.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<(std::process::ExitStatus, String)> {
        let status = self.guard.wait_deadline(deadline)?;
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Some((status, stderr))
    }

    /// HTTP call that panics on connection failure (the node is expected to be up).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        try_http(method, &self.addr, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.addr))
    }
}

/// A minimal HTTP/1.1 exchange with `Connection: close` that returns an error instead of
/// panicking: `(status, body)`.
pub fn try_http(
    method: &str,
    host_port: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(host_port)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = json_body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no HTTP head"))?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Decodes a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
