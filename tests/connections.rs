//! Connection floods against the real `dwbase-node`: slowloris clients and 20 000 idle sockets
//! must leave remember, ask and healthz answering a well-behaved client; a client past the
//! limit with every connection busy gets a quick 503, and a trickled body a 408.
//!
//! Latencies are printed (the figures live in `scripts/bench-disk.sh`, a benchmark), not
//! asserted: the machine is shared. Every request must answer, within its read deadline.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::node::{try_http, write_config, NodeProcess};
use support::poll_until;

const READY: Duration = Duration::from_secs(30);

fn atom(text: &str) -> String {
    json!({
        "world": "flood", "worker": "good", "kind": "observation", "timestamp": "",
        "importance": 0.5, "payload_json": json!({"text": text}).to_string(),
        "vector": null, "flags": [], "labels": [], "links": []
    })
    .to_string()
}

/// The well-behaved client: `rounds` × (remember, ask, healthz), each on a new connection.
/// Every answer must be a 200; returns the latencies.
fn good_client(addr: &str, rounds: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(rounds * 3);
    let ask = json!({"world": "flood", "text": "hello"}).to_string();
    for i in 0..rounds {
        for (method, path, body) in [
            ("POST", "/remember", Some(atom(&format!("hello {i}")))),
            ("POST", "/ask", Some(ask.clone())),
            ("GET", "/healthz", None),
        ] {
            let started = Instant::now();
            let (status, text) = try_http(method, addr, path, body.as_deref())
                .unwrap_or_else(|e| panic!("round {i}: {method} {path} got no answer: {e}"));
            latencies.push(started.elapsed());
            assert_eq!(status, 200, "round {i}: {method} {path}: {text}");
        }
    }
    latencies
}

fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{what}: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies.last().unwrap()
    );
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = try_http("GET", addr, "/metrics", None).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Lifts this process's open-file limits to at least `want` (root may raise the hard limit)
/// and returns the soft limit now in force; the node inherits it.
fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let target = Rlimit { current: Some(want.max(hard)), maximum: Some(want.max(hard)) };
    if setrlimit(Resource::Nofile, target).is_err() {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn start(dir: &std::path::Path, limits: &str) -> NodeProcess {
    let config = write_config(dir, "flood", "127.0.0.1:0", &format!("[node.limits]\n{limits}"));
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    node
}

#[test]
fn slowloris_clients_leave_a_well_behaved_client_answered_and_are_closed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "header_timeout_secs = 2\n");
    // 500 clients that start a request and then send its head one byte at a time.
    let mut slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            s.write_all(b"POST /remember HTTP/1.1\r\nHost: x\r\n").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let trickle = std::thread::spawn({
        let mut slow: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        move || {
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                for s in &mut slow {
                    let _ = s.write(b"x");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let latencies = good_client(&node.addr, 100);
    report("good client during 500 slowloris clients", latencies);
    trickle.join().unwrap();

    // Each slowloris connection is closed once its header timeout passes.
    poll_until("every slowloris connection closed by the node", Duration::from_secs(20), || {
        slow.retain_mut(|s| {
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        slow.is_empty().then_some(())
    });
    assert!(metric(&node.addr, "dwbase_http_header_timeouts_total") >= 500.0);
}

/// Set in the environment of [`idle_socket_holder`] child processes: `ADDR,COUNT`.
const HOLDER_ENV: &str = "DWBASE_TEST_IDLE_HOLDER";
/// Idle sockets per holder process (each process has its own open-file limit).
const PER_HOLDER: usize = 5_000;

/// Not a test of its own: the flood test runs this binary's copy of it in child processes,
/// each holding idle connections open until its stdin closes.
#[test]
#[ignore = "a helper process of twenty_thousand_idle_sockets_leave_a_well_behaved_client_answered"]
fn idle_socket_holder() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else { return };
    let (addr, count) = spec.split_once(',').expect("ADDR,COUNT");
    let count: usize = count.parse().unwrap();
    raise_nofile(count as u64 + 256);
    let held: Vec<TcpStream> = (0..count).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    println!("held {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

/// Starts a holder of `count` idle connections to `addr` and waits until they are open.
fn hold_idle(addr: &str, count: usize) -> (support::ChildGuard, usize) {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "idle_socket_holder", "--ignored", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, format!("{addr},{count}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = support::ChildGuard::new(child);
    let held = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest puts "test idle_socket_holder ... " before the first line printed.
        .find_map(|l| l.rsplit_once("held ").and_then(|(_, n)| n.trim().parse().ok()))
        .expect("the holder reports how many connections it holds");
    (guard, held)
}

#[test]
fn twenty_thousand_idle_sockets_leave_a_well_behaved_client_answered() {
    const IDLE: usize = 20_000;
    const LIMIT: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    // The idle sockets would outlast the test at this header timeout: only eviction at the
    // limit makes room for the good client.
    let node = start(dir.path(), &format!("max_connections = {LIMIT}\nheader_timeout_secs = 60\n"));
    let started = Instant::now();
    let holders: Vec<_> =
        (0..IDLE / PER_HOLDER).map(|_| hold_idle(&node.addr, PER_HOLDER)).collect();
    let held: usize = holders.iter().map(|(_, n)| n).sum();
    println!("{held} idle connections opened in {:?}", started.elapsed());
    assert_eq!(held, IDLE, "every idle connection was accepted by the kernel");
    println!(
        "so far: evicted {}, refused {}, open {}",
        metric(&node.addr, "dwbase_http_connections_evicted_total"),
        metric(&node.addr, "dwbase_http_connections_refused_total"),
        metric(&node.addr, "dwbase_http_connections")
    );
    let latencies = good_client(&node.addr, 100);
    report(&format!("good client during {held} idle sockets"), latencies);
    let evicted = metric(&node.addr, "dwbase_http_connections_evicted_total");
    let open = metric(&node.addr, "dwbase_http_connections");
    println!("evicted {evicted}, open {open}");
    assert!(open <= LIMIT as f64, "the limit holds: {open} open");
    assert!(evicted >= (IDLE - LIMIT) as f64, "idle connections made room: {evicted} evicted");
    drop(holders);
}

#[test]
fn past_the_limit_with_every_connection_busy_a_client_gets_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "max_connections = 4\nbody_timeout_secs = 3\n");
    // Four requests that announce a body and send part of it: busy, not evictable.
    let head = "POST /remember HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"world\":";
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // Give the node a moment to read those heads (they are busy once their handler runs).
    poll_until("4 connections open", Duration::from_secs(10), || {
        // /metrics itself needs a slot: while it is refused, the 4 are in.
        let r = try_http("GET", &node.addr, "/metrics", None);
        match r {
            Ok((503, _)) => Some(()),
            _ => None,
        }
    });
    let started = Instant::now();
    let (status, body) = try_http("GET", &node.addr, "/healthz", None).unwrap();
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    println!("503 past the limit in {took:?}");

    // The trickled bodies time out with a JSON 408, and the slots come back.
    for s in &mut busy {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
        assert!(resp.contains("body_timeout_secs"), "{resp}");
    }
    poll_until("a slot again", Duration::from_secs(10), || {
        matches!(try_http("GET", &node.addr, "/healthz", None), Ok((200, _))).then_some(())
    });
}
