//! `dwbase backup create|restore|verify` against the real binaries: remember → backup → wipe →
//! restore → every atom answers; a corrupt or truncated archive changes nothing and names the
//! file; a backup taken under write load restores to a consistent prefix; `--node` goes
//! through the supervisor; running nodes are refused.
//!
//! Nodes run through guards that SIGKILL them by pid on drop; data lives in temp dirs; waits
//! poll with deadlines.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::dwbase::Deployment;
use support::node::{try_http, write_config, NodeProcess};
use support::{free_port_range, kill_pid, poll_until, Output};

const READY: Duration = Duration::from_secs(30);

fn atom(world: &str, payload: &str) -> String {
    json!({
        "world": world, "worker": "backup-test", "kind": "observation",
        "importance": 0.5, "payload_json": payload, "labels": ["b"]
    })
    .to_string()
}

fn remember(node: &NodeProcess, world: &str, payload: &str) -> String {
    let (status, body) = node.call("POST", "/remember", Some(&atom(world, payload)));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<String>(&body).expect("bare JSON string id")
}

fn get_atom(node: &NodeProcess, id: &str) -> (u16, Value) {
    let (status, body) = node.call("GET", &format!("/atoms/{id}"), None);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn replay(node: &NodeProcess, world: &str) -> Vec<Value> {
    let (status, body) = node.call("POST", "/replay", Some(&json!({"world": world}).to_string()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Runs `dwbase ARGS` (no supervisor involved unless the args need one).
fn dwbase(d: &Deployment, args: &[&str]) -> Output {
    d.run(args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// SIGTERM, then wait for a clean exit.
fn stop(mut node: NodeProcess) {
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = node.wait_exit(Duration::from_secs(30)).expect("node exits on SIGTERM");
    assert!(status.success(), "node exit {status}\n{stderr}");
}

/// Every entry of a folder, recursively, with file contents (to prove "untouched").
fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn remember_backup_wipe_restore_every_atom_answers() {
    let d = Deployment::new();
    let dir = d.dir.path();
    let config = write_config(dir, "n1", "127.0.0.1:0", "");
    let data = dir.join("n1/data");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let mut expected = BTreeMap::new();
    for i in 0..60 {
        let payload = json!({"text": format!("fact number {i}"), "i": i}).to_string();
        let id = remember(&node, &format!("world-{}", i % 3), &payload);
        expected.insert(id, payload);
    }
    let archive = dir.join("n1.tzst");
    let url = format!("http://{}", node.addr);

    // A running node's data dir cannot be backed up offline: the message points to the API.
    let out =
        dwbase(&d, &["backup", "create", "--data-dir", s(&data), "--out", s(&archive)]).code_is(1);
    assert!(out.stderr.contains("is running; use --api URL or --node NAME"), "{out}");
    assert!(!archive.exists());

    let out = dwbase(&d, &["backup", "create", "--api", &url, "--out", s(&archive), "--json"]).ok();
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["metadata"]["counts"]["atoms"], 60, "{out}");
    assert_eq!(doc["metadata"]["node_id"], "n1");
    assert_eq!(doc["metadata"]["source"], "api");
    assert_eq!(doc["metadata"]["format_version"], 1);
    assert_eq!(doc["metadata"]["index_metadata"].as_array().unwrap().len(), 3, "index metadata");
    assert!(doc["metadata"]["files"]["data/db"]["sha256"].as_str().unwrap().len() == 64);
    // An existing --out is not overwritten without --force.
    let out = dwbase(&d, &["backup", "create", "--api", &url, "--out", s(&archive)]).code_is(1);
    assert!(out.stderr.contains("already exists"), "{out}");

    let out = dwbase(&d, &["backup", "verify", s(&archive)]).ok();
    assert!(out.stdout.contains("OK") && out.stdout.contains("60 atoms"), "{out}");

    // A running node's data dir is not restored over.
    let out = dwbase(
        &d,
        &["backup", "restore", "--input", s(&archive), "--data-dir", s(&data), "--force"],
    )
    .code_is(1);
    assert!(out.stderr.contains("is running"), "{out}");

    stop(node);
    std::fs::remove_dir_all(&data).unwrap();
    let out =
        dwbase(&d, &["backup", "restore", "--input", s(&archive), "--data-dir", s(&data)]).ok();
    assert!(out.stdout.contains("restored"), "{out}");
    let audit: Value =
        serde_json::from_slice(&std::fs::read(data.join(".snapshot_metadata.json")).unwrap())
            .unwrap();
    assert_eq!(audit["metadata"]["counts"]["atoms"], 60);
    assert!(audit["restored_from"].as_str().unwrap().ends_with("n1.tzst"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("n1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging folders left behind: {leftovers:?}");

    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    for (id, payload) in &expected {
        let (status, atom) = get_atom(&node, id);
        assert_eq!(status, 200, "{id} after restore");
        assert_eq!(atom["payload_json"].as_str(), Some(payload.as_str()));
    }
    // New atoms append after the restored ones and overwrite nothing.
    let before = replay(&node, "world-0").len();
    let new_id = remember(&node, "world-0", "after restore");
    let after = replay(&node, "world-0");
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap()["id"], new_id);
    stop(node);

    // The restored node's data backs up offline too, and restores with --force over a
    // non-empty dir (refused without it).
    let offline = dir.join("offline.tzst");
    let out = dwbase(&d, &["backup", "create", "--data-dir", s(&data), "--out", s(&offline)]).ok();
    assert!(out.stdout.contains("61 atoms"), "{out}");
    let other = dir.join("other-data");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("junk"), "x").unwrap();
    let out = dwbase(&d, &["backup", "restore", "--input", s(&offline), "--data-dir", s(&other)])
        .code_is(1);
    assert!(out.stderr.contains("not empty") && out.stderr.contains("--force"), "{out}");
    assert!(other.join("junk").is_file());
    dwbase(&d, &["backup", "restore", "--input", s(&offline), "--data-dir", s(&other), "--force"])
        .ok();
    assert!(!other.join("junk").exists() && other.join("db").is_file());
}

/// The original CLI's invocation, `backup restore --input F` without `--data-dir`, restores into
/// `./data` of the working directory, and a second run refuses the now non-empty `./data`,
/// naming it and saying it was the default.
#[test]
fn restore_without_data_dir_uses_the_original_default_of_dot_data() {
    let d = Deployment::new();
    let dir = d.dir.path();
    let config = write_config(dir, "src", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let ids: Vec<String> =
        (0..3).map(|i| remember(&node, "w", &format!("default target {i}"))).collect();
    stop(node);
    let archive = dir.join("src.tzst");
    let src_data = dir.join("src/data");
    dwbase(&d, &["backup", "create", "--data-dir", s(&src_data), "--out", s(&archive)]).ok();

    // `Deployment` runs the CLI in `dir`: the default target is `dir/data`.
    let target = dir.join("data");
    assert!(!target.exists());
    let out = dwbase(&d, &["backup", "restore", "--input", "src.tzst"]).ok();
    assert!(out.stdout.contains(&format!("into {}", target.display())), "{out}");
    assert!(target.join("db").is_file() && target.join(".snapshot_metadata.json").is_file());

    let before = snapshot_tree(&target);
    let out = dwbase(&d, &["backup", "restore", "--input", "src.tzst"]).code_is(1);
    assert!(
        out.stderr.contains(&format!("{} (the default --data-dir ./data", target.display()))
            && out.stderr.contains("is not empty")
            && out.stderr.contains("--force"),
        "{out}"
    );
    assert_eq!(snapshot_tree(&target), before, "a refused restore changed ./data");
    dwbase(&d, &["backup", "restore", "--input", "src.tzst", "--force"]).ok();

    // A node on the restored ./data answers every atom.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("data_dir = \"src/data\"", "data_dir = \"data\"")
        .replace("id = \"src\"", "id = \"restored\"");
    let restored_config = dir.join("restored.toml");
    std::fs::write(&restored_config, text).unwrap();
    let node = NodeProcess::start(&restored_config, &[]);
    node.wait_ready(READY);
    for id in &ids {
        assert_eq!(get_atom(&node, id).0, 200, "{id} after a restore into ./data");
    }
    stop(node);
}

#[test]
fn corrupt_or_truncated_archive_changes_nothing_and_names_the_file() {
    let d = Deployment::new();
    let dir = d.dir.path();
    let config = write_config(dir, "n1", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    for i in 0..200 {
        remember(&node, "w", &json!({"text": format!("some text to compress {i}")}).to_string());
    }
    let archive = dir.join("good.tzst");
    let url = format!("http://{}", node.addr);
    dwbase(&d, &["backup", "create", "--api", &url, "--out", s(&archive)]).ok();
    stop(node);

    // An existing target with content that must survive every failed restore.
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("sub")).unwrap();
    std::fs::write(target.join("keep.txt"), "precious").unwrap();
    std::fs::write(target.join("sub/also"), "precious too").unwrap();
    let before = snapshot_tree(&target);
    let parent_before: BTreeSet<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();

    let good = std::fs::read(&archive).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let cases =
        [("flipped.tzst", flipped), ("truncated.tzst", good[..good.len() * 2 / 3].to_vec())];
    for (name, bytes) in cases {
        let bad = dir.join(name);
        std::fs::write(&bad, bytes).unwrap();
        let out = dwbase(&d, &["backup", "verify", s(&bad)]).code_is(1);
        assert!(
            out.stderr.contains("data/") || out.stderr.contains("metadata.json"),
            "{name}: the error names no file\n{out}"
        );
        assert!(
            out.stderr.contains("corrupt")
                || out.stderr.contains("truncated")
                || out.stderr.contains("checksum"),
            "{name}\n{out}"
        );
        let out = dwbase(
            &d,
            &["backup", "restore", "--input", s(&bad), "--data-dir", s(&target), "--force"],
        )
        .code_is(1);
        assert!(out.stderr.contains("unchanged"), "{name}\n{out}");
        assert_eq!(snapshot_tree(&target), before, "{name}: the target was touched");
        std::fs::remove_file(&bad).unwrap();
        let parent_after: BTreeSet<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(parent_after, parent_before, "{name}: staging folder left behind");
    }
    // The good one still restores.
    dwbase(&d, &["backup", "restore", "--input", s(&archive), "--data-dir", s(&target), "--force"])
        .ok();
    assert!(!target.join("keep.txt").exists());
}

#[test]
fn backup_under_write_load_restores_a_consistent_prefix() {
    let d = Deployment::new();
    let dir = d.dir.path();
    let config = write_config(dir, "n1", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let addr = node.addr.clone();

    // Sequential writers: write k+1 is sent only after k was acknowledged.
    const WRITERS: usize = 3;
    let stop_flag = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<Mutex<Vec<String>>>> =
        Arc::new((0..WRITERS).map(|_| Mutex::new(Vec::new())).collect());
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop_flag, acked, addr) = (stop_flag.clone(), acked.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop_flag.load(Ordering::Relaxed) {
                    let payload = json!({"writer": w, "seq": seq}).to_string();
                    let body = atom(&format!("load-{w}"), &payload);
                    match try_http("POST", &addr, "/remember", Some(&body)) {
                        Ok((200, id)) => {
                            acked[w].lock().unwrap().push(serde_json::from_str(&id).unwrap());
                            seq += 1;
                        }
                        other => panic!("writer {w}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    poll_until("writers under way", Duration::from_secs(30), || {
        acked.iter().all(|a| a.lock().unwrap().len() >= 30).then_some(())
    });

    // Everything acknowledged up to here must be in the backup.
    let acked_before: Vec<usize> = acked.iter().map(|a| a.lock().unwrap().len()).collect();
    let archive = dir.join("load.tzst");
    let out = dwbase(
        &d,
        &["backup", "create", "--api", &format!("http://{addr}"), "--out", s(&archive), "--json"],
    )
    .ok();
    // Keep writing a little after the backup, then stop.
    let after_backup: Vec<usize> = acked.iter().map(|a| a.lock().unwrap().len()).collect();
    poll_until("writes after the backup", Duration::from_secs(30), || {
        acked.iter().zip(&after_backup).all(|(a, n)| a.lock().unwrap().len() >= n + 5).then_some(())
    });
    stop_flag.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("writer thread");
    }
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let counted = doc["metadata"]["counts"]["atoms"].as_u64().unwrap();
    stop(node);

    let restored_dir = dir.join("restored");
    dwbase(&d, &["backup", "restore", "--input", s(&archive), "--data-dir", s(&restored_dir)]).ok();
    let config2 = write_config(dir, "n2", "127.0.0.1:0", "");
    let text = std::fs::read_to_string(&config2)
        .unwrap()
        .replace("data_dir = \"n2/data\"", "data_dir = \"restored\"");
    std::fs::write(&config2, text).unwrap();
    let node = NodeProcess::start(&config2, &[]);
    node.wait_ready(READY);

    let mut total = 0u64;
    for w in 0..WRITERS {
        let ids = acked[w].lock().unwrap().clone();
        let atoms = replay(&node, &format!("load-{w}"));
        total += atoms.len() as u64;
        // A prefix: seqs 0..m in order, with m at least what was acknowledged before.
        let seqs: Vec<u64> = atoms
            .iter()
            .map(|a| {
                let p: Value = serde_json::from_str(a["payload_json"].as_str().unwrap())
                    .expect("every restored atom is whole");
                assert_eq!(p["writer"], w);
                p["seq"].as_u64().unwrap()
            })
            .collect();
        let prefix: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, prefix, "writer {w}: restored atoms are not a prefix");
        assert!(
            seqs.len() >= acked_before[w],
            "writer {w}: {} restored < {} acknowledged before the backup began",
            seqs.len(),
            acked_before[w]
        );
        assert!(seqs.len() <= ids.len() + 1, "writer {w}: more atoms than were sent");
        // Same ids as acknowledged, and each one answers on its own.
        for (atom, id) in atoms.iter().zip(&ids) {
            assert_eq!(atom["id"].as_str(), Some(id.as_str()));
        }
        for id in &ids[..acked_before[w]] {
            assert_eq!(get_atom(&node, id).0, 200, "writer {w}: {id}");
        }
    }
    assert_eq!(total, counted, "the archive's count matches what restores");
}

#[test]
fn node_name_goes_through_the_supervisor_and_api_keys_apply() {
    let d = Deployment::new();
    let base = free_port_range(1);
    d.run(&["deploy", "devnet", "--nodes", "1", "--base-port", &base.to_string(), "--no-swarm"])
        .ok();
    let addr = format!("127.0.0.1:{base}");
    for i in 0..10 {
        let (status, body) =
            try_http("POST", &addr, "/remember", Some(&atom("named", &format!("x{i}")))).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let archive = d.dir.path().join("node-a.tzst");
    let out = d.run(&["backup", "create", "--node", "node-a", "--out", s(&archive)]).ok();
    assert!(out.stdout.contains("10 atoms"), "{out}");
    let out = d.run(&["backup", "create", "--node", "node-z", "--out", s(&archive), "--force"]);
    let out = out.code_is(1);
    assert!(out.stderr.contains("node-z"), "{out}");

    // Restoring over the supervised node's data dir is refused while it runs.
    let data = d.paths().node_dir(dwbase_proto::Group::Devnet, "node-a").join("data");
    let out = d
        .run(&["backup", "restore", "--input", s(&archive), "--data-dir", s(&data), "--force"])
        .code_is(1);
    assert!(out.stderr.contains("running"), "{out}");
    d.run(&["deploy", "stop"]).ok();

    // With the devnet stopped, --node backs up the data dir offline, and restore is allowed.
    let offline = d.dir.path().join("node-a-offline.tzst");
    let out = d.run(&["backup", "create", "--node", "node-a", "--out", s(&offline)]).ok();
    assert!(out.stdout.contains("offline") && out.stdout.contains("10 atoms"), "{out}");
    d.run(&["backup", "restore", "--input", s(&archive), "--data-dir", s(&data), "--force"]).ok();

    // A node with an API key: the snapshot route needs it.
    let dir = d.dir.path();
    let config = write_config(dir, "keyed", "127.0.0.1:0", "api_key = \"sesame-sesame-sesame\"\n");
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let url = format!("http://{}", node.addr);
    let keyed = dir.join("keyed.tzst");
    let out = d.run(&["backup", "create", "--api", &url, "--out", s(&keyed)]).code_is(1);
    assert!(out.stderr.contains("401") && out.stderr.contains("--api-key"), "{out}");
    assert!(!keyed.exists() && !dir.join("keyed.tzst.partial").exists());
    d.run(&[
        "backup",
        "create",
        "--api",
        &url,
        "--api-key",
        "sesame-sesame-sesame",
        "--out",
        s(&keyed),
    ])
    .ok();
}
