//! The supervisor's read-only status API on its metrics listener, against real devnets (real
//! supervisor, real nodes, real HTTP on loopback):
//! - `GET /v1/status` is the document of `deploy status --json`, and both (and the state.json
//!   fallback document) validate against the shipped `docs/status.schema.json`;
//! - `GET /v1/events` streams server-sent events: the status to start from, `exited` and
//!   `spawned` when a node is SIGKILLed and restarted, the same for `deploy restart`, keep-alive
//!   comments; every event's data validates against `docs/events.schema.json`; a client that
//!   goes away is dropped (the open-streams gauge goes back to 0);
//! - clients that connect and never read do not hold up the supervisor;
//! - nothing but GET is served (405), unknown paths are 404.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::dwbase::{devnet_args, Deployment};
use support::supervisor::start_supervisor;
use support::{free_port, free_port_range, http, kill_pid, poll_until, ChildGuard, Signal};

fn validator(file: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> =
        v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not match its schema:\n{}\n{doc:#}", errors.join("\n"));
}

/// The document without what changes from one moment to the next.
fn stable(mut doc: Value) -> Value {
    doc["supervisor"]["uptime_ms"] = Value::Null;
    for n in doc["nodes"].as_array_mut().unwrap() {
        n["uptime_ms"] = Value::Null;
    }
    doc
}

/// A supervisor with its metrics listener (and so the status API) on a free loopback port,
/// keep-alive comments every `keepalive`, and a devnet of `nodes` nodes deployed through the
/// CLI. Returns the guard of the supervisor process and the listener's address.
fn devnet(d: &Deployment, nodes: u32, keepalive: &str) -> (ChildGuard, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let sup = start_supervisor(d, &["--metrics-addr", &metrics, "--events-keepalive", keepalive]);
    let args = devnet_args(nodes, free_port_range(nodes as u16));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&args).ok();
    (sup, metrics)
}

fn get_json(addr: &str, path: &str) -> Value {
    let (code, body) = http("GET", addr, path, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn node<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()
}

fn pid_of(doc: &Value, name: &str) -> u32 {
    node(doc, name)["pid"].as_u64().unwrap_or_else(|| panic!("{name} has no pid: {doc:#}")) as u32
}

/// The value of an unlabelled gauge in the supervisor's `/metrics`.
fn gauge(addr: &str, name: &str) -> f64 {
    let (code, text) = http("GET", addr, "/metrics", None);
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Waits until the supervisor counts `n` open event streams.
fn streams_open(addr: &str, n: u32) {
    poll_until(&format!("{n} open event streams"), LONG, || {
        (gauge(addr, "dwbase_supervisor_event_streams") == f64::from(n)).then_some(())
    });
}

/// What an event stream delivered.
#[derive(Debug, Clone)]
enum Msg {
    Event { name: String, data: Value },
    Comment(String),
}

/// A `GET /v1/events` client: the HTTP head is checked, then a thread reads the stream and
/// parses it into [`Msg`]s. Dropping it closes the connection.
struct EventStream {
    rx: mpsc::Receiver<Msg>,
    conn: TcpStream,
    reader: Option<std::thread::JoinHandle<()>>,
    seen: Vec<Msg>,
}

fn send_events_request(addr: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    // HTTP/1.0: the server ends the body by closing, no chunked framing to undo.
    write!(conn, "GET /v1/events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    conn
}

impl EventStream {
    fn open(addr: &str) -> Self {
        Self::reading(send_events_request(addr))
    }

    /// Starts reading a connection whose request was sent.
    fn reading(conn: TcpStream) -> Self {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "the stream closed in its head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(!lower.contains("transfer-encoding"), "{head}");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let (mut name, mut data) = (String::new(), Vec::<String>::new());
            for line in r.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let text = data.join("\n");
                        let data = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("event {name}: {e}: {text}"));
                        let name = std::mem::take(&mut name);
                        if tx.send(Msg::Event { name, data }).is_err() {
                            return;
                        }
                    }
                    data.clear();
                } else if let Some(c) = line.strip_prefix(':') {
                    let _ = tx.send(Msg::Comment(c.trim().to_owned()));
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
        });
        Self { rx, conn, reader: Some(reader), seen: Vec::new() }
    }

    /// The next message that `pred` accepts (earlier ones are kept in `seen`), or a panic
    /// after `deadline` naming `what` and listing what came.
    fn wait_for(&mut self, what: &str, deadline: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e:?}; the stream brought {:#?}", self.seen),
            }
        }
    }

    /// The next node event named `name` about `node`: its data.
    fn wait_event(&mut self, name: &str, node: &str, deadline: Duration) -> Value {
        let what = format!("event {name} of {node}");
        match self.wait_for(
            &what,
            deadline,
            |m| matches!(m, Msg::Event { name: n, data } if n == name && data["node"] == node),
        ) {
            Msg::Event { data, .. } => data,
            Msg::Comment(_) => unreachable!(),
        }
    }

    fn events(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.seen.iter().filter_map(|m| match m {
            Msg::Event { name, data } => Some((name.as_str(), data)),
            Msg::Comment(_) => None,
        })
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn v1_status_is_the_deploy_status_document() {
    let d = Deployment::new();
    let (_sup, addr) = devnet(&d, 2, "15s");
    let v = validator("status.schema.json");

    let cli: Value = serde_json::from_str(&d.run(&["deploy", "status", "--json"]).ok().stdout)
        .expect("deploy status --json");
    let api = get_json(&addr, "/v1/status");
    assert_valid(&v, &cli, "deploy status --json");
    assert_valid(&v, &api, "GET /v1/status");
    assert_eq!(api["version"], 1);
    assert_eq!(api["nodes"].as_array().unwrap().len(), 2, "{api:#}");
    assert_eq!(stable(api.clone()), stable(cli), "the API and the CLI disagree");
    assert_eq!(api["supervisor"]["metrics_url"], format!("http://{addr}/metrics"));
    // The schema refuses what it should (so the checks above can fail).
    for (key, wrong) in [("state", Value::from("sleeping")), ("port", Value::from("7000"))] {
        let mut doc = api.clone();
        doc["nodes"][0][key] = wrong;
        assert!(!v.is_valid(&doc), "the schema accepts nodes[0].{key} = {}", doc["nodes"][0][key]);
    }
    // It parses into the shared type.
    let doc: dwbase_proto::status_doc::StatusJson = serde_json::from_value(api).unwrap();
    assert!(doc.nodes.iter().all(|n| n.pid.is_some() && n.state == "ready"), "{doc:?}");

    // Read-only: nothing but GET; unknown paths are 404 and name the routes.
    for path in ["/v1/status", "/v1/events"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let (code, _) = http(method, &addr, path, Some("{}"));
            assert_eq!(code, 405, "{method} {path}");
        }
    }
    for path in ["/v1/nothing", "/v1", "/", "/v2/status"] {
        let (code, body) = http("GET", &addr, path, None);
        assert_eq!(code, 404, "GET {path}: {body}");
        assert!(body.contains("/v1/status") && body.contains("/v1/events"), "{body}");
    }

    // Without a supervisor the CLI's document (from state.json) matches the schema as well.
    d.run(&["deploy", "stop"]).ok();
    let out = d.run(&["deploy", "status", "--json", "--no-start"]).code_is(3);
    let fallback: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(fallback["supervisor"]["running"], false, "{fallback:#}");
    assert_valid(&v, &fallback, "deploy status --json without a supervisor");
}

#[test]
fn v1_events_streams_kills_restarts_and_keepalives() {
    let d = Deployment::new();
    let (_sup, addr) = devnet(&d, 2, "300ms");
    let v = validator("events.schema.json");
    let vs = validator("status.schema.json");

    let mut s = EventStream::open(&addr);
    let first = s.wait_for("the first event", LONG, |_| true);
    let Msg::Event { name, data: snapshot } = first else { panic!("{first:?} came first") };
    assert_eq!(name, "status");
    assert_valid(&vs, &snapshot, "the status event");
    assert_eq!(snapshot["nodes"].as_array().unwrap().len(), 2, "{snapshot:#}");
    streams_open(&addr, 1);
    s.wait_for("a keep-alive comment", LONG, |m| matches!(m, Msg::Comment(c) if c == "keep-alive"));

    // SIGKILL node-a: exited (signal 9, a crash), then spawned with a new pid, then ready.
    let old = pid_of(&snapshot, "node-a");
    kill_pid(old, Signal::SIGKILL);
    let exited = s.wait_event("exited", "node-a", LONG);
    assert_eq!(exited["exit"]["signal"], 9, "{exited:#}");
    assert_eq!(exited["exit"]["cause"], "unexpected", "{exited:#}");
    let spawned = s.wait_event("spawned", "node-a", LONG);
    let new = spawned["pid"].as_u64().unwrap() as u32;
    assert_ne!(new, old);
    assert_eq!(spawned["status"]["pid"], new, "{spawned:#}");
    assert_eq!(spawned["status"]["restarts"], 1, "{spawned:#}");
    s.wait_for("node-a ready again", LONG, |m| {
        matches!(m, Msg::Event { name, data } if name == "state" && data["node"] == "node-a"
            && data["to"] == "ready")
    });
    assert_eq!(pid_of(&get_json(&addr, "/v1/status"), "node-a"), new);

    // A restart asked for: exited (requested), spawned.
    let b = pid_of(&get_json(&addr, "/v1/status"), "node-b");
    d.run(&["deploy", "restart", "node-b"]).ok();
    let exited = s.wait_event("exited", "node-b", LONG);
    assert_eq!(exited["exit"]["cause"], "requested", "{exited:#}");
    let spawned = s.wait_event("spawned", "node-b", LONG);
    assert_ne!(spawned["pid"].as_u64().unwrap() as u32, b);

    // Every event's data is what docs/events.schema.json says, named as its "event" word.
    let names: BTreeSet<&str> = s.events().map(|(n, _)| n).collect();
    for (name, data) in s.events() {
        assert_valid(&v, data, &format!("event {name}"));
        if name != "status" {
            assert_eq!(data["event"], name, "{data:#}");
        }
    }
    assert!(names.is_superset(&["status", "exited", "spawned", "state"].into()), "{names:?}");

    // A second client that goes away is dropped, and so is the first.
    let mut other = EventStream::open(&addr);
    other.wait_for("the other's first event", LONG, |_| true);
    streams_open(&addr, 2);
    drop(other);
    streams_open(&addr, 1);
    drop(s);
    streams_open(&addr, 0);
    d.run(&["deploy", "stop"]).ok();
}

#[test]
fn clients_that_never_read_do_not_hold_up_the_supervisor() {
    let d = Deployment::new();
    let (_sup, addr) = devnet(&d, 1, "50ms");
    // Twenty clients ask for the stream and never read a byte of it.
    let mut stalled: Vec<TcpStream> = (0..20).map(|_| send_events_request(&addr)).collect();
    let mut reader = EventStream::open(&addr);
    streams_open(&addr, 21);

    // The supervisor restarts, answers /v1/status and the control socket, and a reading
    // client sees every restart, while the others sit on unread events and keep-alives.
    let mut pids = vec![pid_of(&get_json(&addr, "/v1/status"), "node-a")];
    for round in 0..8 {
        d.run(&["deploy", "restart", "node-a"]).ok();
        let spawned = reader.wait_event("spawned", "node-a", LONG);
        let pid = spawned["pid"].as_u64().unwrap() as u32;
        assert!(!pids.contains(&pid), "round {round}: pid {pid} again");
        pids.push(pid);
        reader.wait_for("node-a ready", LONG, |m| {
            matches!(m, Msg::Event { name, data } if name == "state" && data["node"] == "node-a"
                && data["to"] == "ready")
        });
        assert_eq!(pid_of(&get_json(&addr, "/v1/status"), "node-a"), pid, "round {round}");
        let cli: Value =
            serde_json::from_str(&d.run(&["deploy", "status", "--json"]).ok().stdout).unwrap();
        assert_eq!(pid_of(&cli, "node-a"), pid, "round {round}");
    }

    // A stalled client that starts reading gets a consistent stream: the status it started
    // from, then either every spawn since in order, or a `dropped` notice and a fresh status.
    let mut late = EventStream::reading(stalled.remove(0));
    let last = *pids.last().unwrap();
    late.wait_for("the last pid", LONG, |m| match m {
        Msg::Event { name, data } if name == "spawned" => data["pid"] == last,
        Msg::Event { name, data } if name == "status" => {
            data["nodes"][0]["pid"] == last && data["nodes"][0]["state"] == "ready"
        }
        _ => false,
    });
    assert_eq!(late.events().next().map(|(n, _)| n), Some("status"), "{:#?}", late.seen);
    if !late.events().any(|(n, _)| n == "dropped") {
        let spawned: Vec<Value> =
            late.events().filter(|(n, _)| *n == "spawned").map(|(_, d)| d["pid"].clone()).collect();
        let want: Vec<Value> = pids[1..].iter().map(|p| Value::from(*p)).collect();
        assert_eq!(spawned, want, "{:#?}", late.seen);
    }

    drop(late);
    drop(reader);
    streams_open(&addr, 19);
    // The 19 still stalled go when their connections close.
    drop(stalled);
    streams_open(&addr, 0);
    d.run(&["deploy", "stop"]).ok();
}
