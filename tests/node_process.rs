//! The real `dwbase-node` binary: HTTP round trip, kill -9 and restarts without losing or
//! reusing anything, SIGTERM drain, two nodes in a swarm, data dir lock, config errors.
//!
//! Every process is started through a guard that SIGKILLs it by pid on drop; data lives in
//! temp dirs; waits poll with deadlines.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::node::{start_node, try_http, write_config, NodeProcess, Started};
use support::{free_port, kill_pid, poll_until};

const READY: Duration = Duration::from_secs(30);

fn atom(world: &str, text: &str) -> String {
    json!({
        "world": world, "worker": "agent-a", "kind": "observation", "timestamp": "",
        "importance": 0.5, "payload_json": json!({"text": text}).to_string(),
        "vector": null, "flags": [], "labels": ["x"], "links": []
    })
    .to_string()
}

fn remember(node: &NodeProcess, world: &str, text: &str) -> String {
    let (status, body) = node.call("POST", "/remember", Some(&atom(world, text)));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<String>(&body).expect("bare JSON string id")
}

fn replay_ids(node: &NodeProcess, world: &str) -> Vec<String> {
    let (status, body) = node.call("POST", "/replay", Some(&json!({"world": world}).to_string()));
    assert_eq!(status, 200, "{body}");
    let atoms: Vec<Value> = serde_json::from_str(&body).unwrap();
    atoms.iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

fn ask_ids(addr: &str, world: &str, text: &str) -> Option<Vec<String>> {
    let body = json!({"world": world, "text": text}).to_string();
    let (status, body) = try_http("POST", addr, "/ask", Some(&body)).ok()?;
    if status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    Some(
        answer["supporting_atoms"]
            .as_array()?
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[test]
fn remember_ask_replay_over_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "solo", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    assert_ne!(node.addr, "127.0.0.1:0", "the printed address carries the real port");
    node.wait_ready(READY);

    let a = remember(&node, "demo", "the cache eviction bug in module seven");
    let b = remember(&node, "demo", "weather is sunny today");
    let got = ask_ids(&node.addr, "demo", "which module has the eviction bug?").unwrap();
    assert_eq!(got, std::slice::from_ref(&a));
    assert_eq!(replay_ids(&node, "demo"), [a.clone(), b]);
    let (status, body) = node.call("GET", &format!("/atoms/{a}"), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.call("GET", "/atoms/unknown", None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = node.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(body.contains("dwbase_atoms_stored 2"), "{body}");
}

#[test]
fn kill_9_and_restarts_lose_no_acknowledged_atom_and_reuse_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "crashy", "127.0.0.1:0", "");
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..3 {
        let mut node = NodeProcess::start(&config, &[]);
        node.wait_ready(READY);

        // Everything acknowledged so far is there, exactly once. (Atoms written but cut off
        // before their reply may be there too: they were never acknowledged.)
        let so_far = acknowledged.lock().unwrap().clone();
        let stored = replay_ids(&node, "w");
        let stored_set: HashSet<_> = stored.iter().collect();
        assert_eq!(stored_set.len(), stored.len(), "round {round}: duplicate ids");
        let lost: Vec<_> = so_far.iter().filter(|id| !stored_set.contains(id)).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
        // The node counts log entries: a remember torn by the kill (its log entry written, its
        // atom not) must have been removed at start, not counted.
        let (_, health) = node.call("GET", "/health", None);
        let health: Value = serde_json::from_str(&health).unwrap();
        assert_eq!(
            health["checks"]["storage"]["atoms"].as_u64(),
            Some(stored.len() as u64),
            "round {round}: atoms counted vs replayed"
        );

        // Writers hammer the node while it is killed with SIGKILL mid-stream.
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (addr, acked, stop) = (node.addr.clone(), acknowledged.clone(), stop.clone());
            writers.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = atom("w", &format!("round {round} writer {w} atom {i}"));
                    match try_http("POST", &addr, "/remember", Some(&body)) {
                        Ok((200, id)) => match serde_json::from_str::<String>(&id) {
                            Ok(id) => acked.lock().unwrap().push(id),
                            Err(_) => break, // cut off mid-response by the kill: not acknowledged
                        },
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        Err(_) => break, // the node is gone
                    }
                    i += 1;
                }
            }));
        }
        let target = acknowledged.lock().unwrap().len() + 40;
        poll_until("writes acknowledged before the kill", Duration::from_secs(30), || {
            (acknowledged.lock().unwrap().len() >= target).then_some(())
        });
        node.guard.child().kill().unwrap(); // SIGKILL
        node.guard.child().wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        drop(node);
    }

    // A last clean start: every acknowledged atom exactly once, ids unique, none rewritten.
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let acked = acknowledged.lock().unwrap().clone();
    let stored = replay_ids(&node, "w");
    let stored_set: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(stored_set.len(), stored.len(), "no duplicate ids in the log");
    let missing: Vec<_> = acked.iter().filter(|id| !stored_set.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(acked.len() >= 120);
    // New atoms after all those restarts get fresh ids and leave the old ones alone.
    let first_before = node.call("GET", &format!("/atoms/{}", acked[0]), None);
    let fresh = remember(&node, "w", "after the crashes");
    assert!(!stored_set.contains(&fresh));
    assert_eq!(node.call("GET", &format!("/atoms/{}", acked[0]), None), first_before);
}

#[test]
fn sigterm_drains_flushes_and_exits_zero_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "term", "127.0.0.1:0", "");
    let mut node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let id = remember(&node, "w", "written just before SIGTERM");

    let started = Instant::now();
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) =
        node.wait_exit(Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "exit 0 after SIGTERM, got {status}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("store flushed"), "{stderr}");

    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    assert_eq!(replay_ids(&node, "w"), [id]);
}

#[test]
fn two_nodes_in_a_swarm_find_each_others_atoms() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let swarm = |peer: u16| {
        format!("[node.swarm]\nenabled = true\npeers = [\"http://127.0.0.1:{peer}\"]\n")
    };
    let config_a = write_config(dir.path(), "a", &format!("127.0.0.1:{port_a}"), &swarm(port_b));
    let config_b = write_config(dir.path(), "b", &format!("127.0.0.1:{port_b}"), &swarm(port_a));
    let node_a = NodeProcess::start(&config_a, &[]);
    node_a.wait_ready(READY);
    // B starts later: A's first push is retried until B is up.
    let id_a = remember(&node_a, "shared", "the falcon nests on the north tower");
    let node_b = NodeProcess::start(&config_b, &[]);
    node_b.wait_ready(READY);
    let id_b = remember(&node_b, "shared", "the heron fishes in the moat");

    poll_until("A's atom found by ask on B", Duration::from_secs(30), || {
        ask_ids(&node_b.addr, "shared", "falcon").filter(|ids| ids.contains(&id_a))
    });
    poll_until("B's atom found by ask on A", Duration::from_secs(30), || {
        ask_ids(&node_a.addr, "shared", "heron").filter(|ids| ids.contains(&id_b))
    });
    // No echo: each node holds each atom exactly once, with the same ids.
    for node in [&node_a, &node_b] {
        let mut ids = replay_ids(node, "shared");
        ids.sort();
        let mut want = vec![id_a.clone(), id_b.clone()];
        want.sort();
        assert_eq!(ids, want);
    }
}

#[test]
fn a_second_node_on_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "one", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let started = Instant::now();
    match start_node(&config, &[], Duration::from_secs(20)) {
        Started::Listening(_) => panic!("a second node must not start on a locked data dir"),
        Started::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("already in use"), "{stderr}");
            assert!(stderr.contains("one/data"), "names the dir: {stderr}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast, does not hang");
    // The first node is unharmed.
    assert_eq!(node.call("GET", "/readyz", None).0, 200);
}

#[test]
fn configuration_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nlisten = \"127.0.0.1:0\"\nlisen = \"x\"\n[node.security]\nimportance_cap = 7\n",
    )
    .unwrap();
    match start_node(&path, &[], Duration::from_secs(20)) {
        Started::Listening(_) => panic!("must refuse a bad config"),
        Started::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains(&format!("{}:3:1: node.lisen", path.display())), "{stderr}");
        }
    }
    // Non-loopback without a key: refused before binding, naming the address and the keys.
    let open = write_config(dir.path(), "open", "0.0.0.0:0", "");
    match start_node(&open, &[], Duration::from_secs(20)) {
        Started::Listening(_) => panic!("must refuse 0.0.0.0 without a key"),
        Started::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("0.0.0.0:0") && stderr.contains("api_key"), "{stderr}");
        }
    }
    // Flags beat the file: --listen and --node-id.
    let config = write_config(dir.path(), "flags", "127.0.0.1:1", "");
    let node = NodeProcess::start(&config, &["--listen", "127.0.0.1:0", "--node-id", "from-flag"]);
    node.wait_ready(READY);
    let (_, body) = node.call("GET", "/health", None);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["node_id"], "from-flag");
}
