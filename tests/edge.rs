//! Edge / offline: a node started from the shipped `deploy/edge.toml` (with the `edge.key` file
//! it expects next to it) inside a fresh network namespace that has nothing but loopback — no
//! route to anywhere, as on a disconnected device — and on a small filesystem of its own (so
//! the host disk's fill level cannot decide readiness). It must start cleanly, serve
//! `/healthz` and `/readyz`, report ready, and enforce `DWBASE_MAX_DISK_MB` (507 past the cap,
//! `/readyz` 503 naming the reason) and `DWBASE_MAX_RAM_MB` (shown in `/health`'s memory check).
//!
//! The namespace comes from `unshare --net --mount` (util-linux, needs root or CAP_SYS_ADMIN);
//! the test talks to the node from a thread that joined the node's network namespace
//! (setns(2)). Where namespaces cannot be made, the test says so on stderr and does nothing —
//! or fails, with `DWBASE_REQUIRE_NETNS=1`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::node::{listening_addr, node_bin, NODE_ENV};
use support::{poll_until, ChildGuard};

/// The caps the test sets through the environment (the template says 256 / 4096). An empty
/// store already takes about 1 MiB (sled's first segments: 0.9–1.2 MiB, depending on what it
/// has flushed when the first write comes), so the disk cap leaves room for a few writes of
/// the 150 KiB payloads below and 40 of them go past it.
const MAX_RAM_MB: u64 = 96;
const MAX_DISK_MB: u64 = 3;

/// Says why the test cannot run here — on the real stderr, which the test harness does not
/// capture, so the skip is visible — or fails when `DWBASE_REQUIRE_NETNS=1`.
fn skip(reason: &str) {
    let msg = format!("SKIP edge: network namespaces cannot be created here: {reason}\n");
    if std::env::var("DWBASE_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("{msg}(DWBASE_REQUIRE_NETNS=1)");
    }
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

/// The shell run by `unshare`: loopback up, a tmpfs on `$1`, then exec the rest.
const NS_SETUP: &str = r#"set -e; ip link set lo up; mount -t tmpfs -o size=64m,mode=0700 tmpfs "$1"; shift; exec "$@""#;

/// `unshare --net --mount sh -c NS_SETUP sh MOUNTPOINT PROGRAM ARGS…`
fn in_new_namespaces(mountpoint: &Path, program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--", "sh", "-c", NS_SETUP, "sh"])
        .arg(mountpoint)
        .arg(program)
        .args(args);
    cmd
}

/// Runs `f` on a thread that has joined the network namespace of `pid`.
fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the node's network namespace");
            f()
        })
        .join()
        .expect("probe thread")
    })
}

/// One HTTP/1.1 exchange (`Connection: close`), with an optional bearer token.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn an_edge_node_runs_offline_in_a_loopback_only_namespace_and_enforces_its_caps() {
    let dir = tempfile::Builder::new().prefix("dwb-edge").tempdir().unwrap();
    // The template's relative paths resolve against its folder: deploy/../.dwbase/edge/…
    let deploy = dir.path().join("deploy");
    let state = dir.path().join(".dwbase");
    std::fs::create_dir_all(&deploy).unwrap();
    std::fs::create_dir_all(&state).unwrap();

    // Can this machine make the namespaces (and the mount) at all?
    match in_new_namespaces(&state, Path::new("true"), &[]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return skip(&format!(
                "`unshare --net --mount` + `ip link set lo up` + tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return skip(&format!("cannot run unshare (util-linux): {e}")),
    }

    let config = deploy.join("edge.toml");
    std::fs::write(&config, support::dwbase::template("edge.toml")).unwrap();
    // api_key_file = "edge.key", next to the config, as the template's comments say.
    let key: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(deploy.join("edge.key"))
            .unwrap();
        writeln!(f, "{key}").unwrap();
    }

    let mut cmd = in_new_namespaces(&state, &node_bin(), &["--config", config.to_str().unwrap()]);
    for var in NODE_ENV {
        cmd.env_remove(var);
    }
    cmd.env("DWBASE_MAX_DISK_MB", MAX_DISK_MB.to_string())
        .env("DWBASE_MAX_RAM_MB", MAX_RAM_MB.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning unshare");
    // unshare and sh exec into the node: this pid is the node, in the new namespaces.
    let pid = child.id();
    let stderr = support::drain(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let mut guard = ChildGuard::new(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            if let Some(addr) = listening_addr(&line) {
                break addr;
            }
        }
        if let Some(status) = guard.child().try_wait().unwrap() {
            panic!("the edge node exited before listening ({status}):\n{}", stderr.join().unwrap());
        }
        assert!(Instant::now() < until, "no listening line within 30 s");
    };
    assert_eq!(addr, "0.0.0.0:8080", "edge.toml listens on every interface, port 8080");
    let local = "127.0.0.1:8080";

    // It really is in a namespace of its own, which has nothing but loopback.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"), "the node shares our network namespace");
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> =
        dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(ifaces, ["lo"], "interfaces in the node's namespace");

    let seen = in_netns_of(pid, || {
        poll_until("/healthz 200", Duration::from_secs(20), || {
            matches!(http(local, "GET", "/healthz", None, None), Ok((200, _))).then_some(())
        });
        let ready = poll_until("/readyz 200", Duration::from_secs(20), || {
            match http(local, "GET", "/readyz", None, None) {
                Ok((200, body)) => Some(body),
                _ => None,
            }
        });
        // Beyond loopback the key is required everywhere but the probes and /metrics.
        let health_without_key = http(local, "GET", "/health", None, None).unwrap();
        let health = http(local, "GET", "/health", None, Some(&key)).unwrap();
        let metrics = http(local, "GET", "/metrics", None, None).unwrap();

        // Fill the data dir past the cap: 200s, then 507. One worker per request: the
        // template allows 2 remembers per second per worker.
        let payload = "x".repeat(150 * 1024);
        let mut remembers = vec![];
        for i in 0..40 {
            let atom = serde_json::json!({
                "world": "edge", "worker": format!("sensor-{i}"), "kind": "observation",
                "timestamp": "", "importance": 0.5, "payload_json": payload,
                "vector": null, "flags": [], "labels": [], "links": []
            })
            .to_string();
            let r = http(local, "POST", "/remember", Some(&atom), Some(&key)).unwrap();
            let done = r.0 != 200;
            remembers.push(r);
            if done {
                break;
            }
        }
        Seen {
            ready,
            health_without_key,
            health,
            metrics,
            remembers,
            ready_when_full: http(local, "GET", "/readyz", None, None).unwrap(),
            // Reads keep working on a full node.
            worlds_when_full: http(local, "GET", "/worlds", None, Some(&key)).unwrap(),
        }
    });

    assert_eq!(json(&seen.ready)["ready"], true, "{}", seen.ready);
    assert_eq!(seen.health_without_key.0, 401, "/health without the key");
    assert_eq!(seen.health.0, 200, "{}", seen.health.1);
    let health = json(&seen.health.1);
    assert_eq!(health["checks"]["memory"]["max_ram_mb"], MAX_RAM_MB, "{health}");
    assert_eq!(health["checks"]["disk"]["max_disk_mb"], MAX_DISK_MB, "{health}");
    assert_eq!(health["node_id"], "edge");
    assert_eq!(seen.metrics.0, 200, "/metrics without the key");

    let statuses: Vec<u16> = seen.remembers.iter().map(|r| r.0).collect();
    let (last_status, last_body) = seen.remembers.last().unwrap();
    assert_eq!(*last_status, 507, "remember statuses: {statuses:?}; last: {last_body}");
    assert!(statuses.len() >= 2, "the empty node took no write at all: {last_body}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(last_body.contains("max_disk_mb"), "the 507 names the cap: {last_body}");
    let (status, body) = &seen.ready_when_full;
    assert_eq!(*status, 503, "/readyz past the disk cap: {body}");
    // Without the key /readyz names the reason only (no figures); /health has the details.
    assert_eq!(json(body)["reasons"], serde_json::json!(["disk_cap"]), "/readyz says why: {body}");
    assert_eq!(seen.worlds_when_full.0, 200, "reads still work: {}", seen.worlds_when_full.1);
    assert!(seen.worlds_when_full.1.contains("edge"), "{}", seen.worlds_when_full.1);

    // SIGTERM: the node drains and exits 0; its log shows a clean run.
    support::kill_pid(pid, nix::sys::signal::Signal::SIGTERM);
    let status = guard.wait_deadline(Duration::from_secs(30)).expect("exits after SIGTERM");
    let log = stderr.join().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
    // The only errors are the request traces of the refusals we provoked (tower-http logs
    // every 5xx response as an error).
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .filter(|l| !(l.contains("on_failure") && (l.contains(" 507 ") || l.contains(" 503 "))))
        .collect();
    assert!(errors.is_empty(), "errors in the node's log: {errors:#?}\n{log}");
}

/// What the probe thread saw inside the namespace: (status, body) of each call.
struct Seen {
    ready: String,
    health_without_key: (u16, String),
    health: (u16, String),
    metrics: (u16, String),
    remembers: Vec<(u16, String)>,
    ready_when_full: (u16, String),
    worlds_when_full: (u16, String),
}
