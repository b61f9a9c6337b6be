//! The supervisor as the one owner of the truth, driven through the real `dwbase` CLI with
//! real nodes: declarative deploys (no-op, dry run, rolling replace, scale), self-healing after
//! a supervisor crash (state.json lost or corrupt included), liveness, a fair control socket,
//! exit codes, files that cannot be aimed elsewhere, and a clean that never deletes live data.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dwbase_proto::process;
use dwbase_proto::Group;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::dwbase::{self, devnet_args, node_processes, Deployment};
use support::*;

fn run(d: &Deployment, args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&a)
}

/// `deploy status --json` (exit 0 or 3), parsed.
fn status(d: &Deployment) -> Value {
    let out = d.run(&["deploy", "status", "--json"]);
    assert!(matches!(out.code(), 0 | 3), "status failed\n{out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// name → pid of every node in a status document.
fn pids(doc: &Value) -> BTreeMap<String, u64> {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.to_owned(), n["pid"].as_u64()?)))
        .collect()
}

/// Whether `127.0.0.1:port/readyz` answers 200 within half a second.
fn ready(port: u16) -> bool {
    http_status("GET", port, "/readyz", None) == Some(200)
}

/// One HTTP/1.0 request with short timeouts; `None` when the node does not answer.
fn http_status(method: &str, port: u16, path: &str, body: Option<&str>) -> Option<u16> {
    http_full(method, port, path, body).map(|(s, _)| s)
}

fn http_full(method: &str, port: u16, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

fn wait_all_ready(d: &Deployment, n: usize) -> Value {
    poll_until("every node ready", Duration::from_secs(60), || {
        let doc = status(d);
        let nodes = doc["nodes"].as_array().unwrap();
        (nodes.len() == n && nodes.iter().all(|n| n["ready"] == true)).then_some(doc)
    })
}

#[test]
fn the_same_spec_twice_changes_nothing_and_a_dry_run_only_prints_the_plan() {
    let d = Deployment::new();
    let base = free_port_range(3);
    run(&d, &devnet_args(3, base)).ok();
    let before = pids(&status(&d));
    assert_eq!(before.len(), 3);

    let again = run(&d, &devnet_args(3, base)).ok();
    assert!(again.stderr.contains("no changes"), "{again}");
    assert!(again.stdout.contains("node-a") || again.stdout.contains(" A "), "{again}");
    assert_eq!(pids(&status(&d)), before, "a no-op deploy restarted nodes");

    // A dry run of a changed spec prints the plan and touches nothing.
    let mut args = devnet_args(4, base);
    args.push("--dry-run".into());
    args.push("--restart".into());
    args.push("on-failure".into());
    let plan = run(&d, &args).ok();
    assert!(plan.stdout.contains("+ add") && plan.stdout.contains("node-d"), "{plan}");
    assert!(plan.stdout.contains("~ update"), "{plan}");
    assert!(plan.stdout.contains("dry run: nothing was changed"), "{plan}");
    let after = status(&d);
    assert_eq!(pids(&after), before);
    assert!(after["nodes"].as_array().unwrap().iter().all(|n| n["restart_policy"] == "always"));
}

#[test]
fn a_changed_disk_cap_rolls_over_the_nodes_one_at_a_time_while_the_devnet_serves() {
    let d = Deployment::new();
    let base = free_port_range(3);
    // The test client writes and asks on every poll: no rate limits in its way.
    let mut text = dwbase::template("devnet.toml");
    text = dwbase::set_toml_key(&text, "remember_per_sec", "0");
    text = dwbase::set_toml_key(&text, "ask_per_min", "0");
    let template = d.dir.path().join("unlimited.toml");
    std::fs::write(&template, text).unwrap();
    let mut args = devnet_args(3, base);
    args.extend(["--template".to_owned(), template.display().to_string()]);
    let args = args;
    run(&d, &args).ok();
    let before = pids(&wait_all_ready(&d, 3));
    let ports: Vec<u16> = (0..3).map(|i| base + i).collect();

    let stop = Arc::new(AtomicBool::new(false));
    // (fewest ready nodes seen in two polls in a row, polls, failures)
    let seen = Arc::new(Mutex::new((usize::MAX, 0usize, Vec::<String>::new())));
    let watcher = {
        let (stop, seen, ports) = (stop.clone(), seen.clone(), ports.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut before = ports.len();
            while !stop.load(Ordering::Relaxed) {
                // All nodes at the same moment (one thread each): probed one after the other,
                // a poll could see the node just replaced before it was ready and the next one
                // just after it was told to stop, two moments apart, and report both down.
                let up: Vec<u16> = std::thread::scope(|s| {
                    let probes: Vec<_> =
                        ports.iter().map(|&p| s.spawn(move || ready(p).then_some(p))).collect();
                    probes.into_iter().filter_map(|h| h.join().unwrap()).collect()
                });
                i += 1;
                let atom = format!(
                    r#"{{"world":"roll","worker":"t","kind":"observation","importance":0.5,"payload_json":"{{\"text\":\"rolling {i}\"}}"}}"#
                );
                // Some ready node takes the write and answers a question.
                let served = up.iter().any(|p| {
                    matches!(http_status("POST", *p, "/remember", Some(&atom)), Some(200..=201))
                        && http_status(
                            "POST",
                            *p,
                            "/ask",
                            Some(r#"{"world":"roll","text":"rolling"}"#),
                        ) == Some(200)
                });
                let mut s = seen.lock().unwrap();
                // Two nodes down at once lasts as long as a node's start: counted when two
                // polls in a row see it (one alone can straddle the hand-over).
                s.0 = s.0.min(up.len().max(before));
                before = up.len();
                s.1 += 1;
                if !served {
                    s.2.push(format!("poll {i}: ready {up:?}, no node served"));
                }
            }
        })
    };

    let mut cmd = d.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.env("DWBASE_MAX_DISK_MB", "8192");
    let out = run_with_deadline(&mut cmd, Duration::from_secs(120)).ok();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(out.stderr.contains("replace"), "{out}");

    let (min_ready, polls, failures) = seen.lock().unwrap().clone();
    assert!(polls > 1);
    assert!(
        min_ready >= 2,
        "two polls in a row saw only {min_ready} ready nodes during the rollout\n{out}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    // And in the supervisor's own account: no node is stopped before the one replaced before
    // it is ready.
    let at = |needle: &str| {
        out.stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the deploy output\n{out}"))
    };
    for (prev, next) in [("node-a", "node-b"), ("node-b", "node-c")] {
        assert!(
            at(&format!("{prev}: ready (")) < at(&format!("{next}: ready → stopping")),
            "{next} was stopped before {prev} was ready\n{out}"
        );
    }

    let after = pids(&wait_all_ready(&d, 3));
    for (name, pid) in &before {
        assert_ne!(after.get(name), Some(pid), "{name} was not replaced");
    }
    for p in ports {
        let (code, body) = http_full("GET", p, "/health", None).expect("health");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checks"]["disk"]["max_disk_mb"], 8192, "{body}");
    }
}

#[test]
fn scale_up_then_down_keeps_the_nodes_that_stay() {
    let d = Deployment::new();
    let base = free_port_range(5);
    run(&d, &devnet_args(3, base)).ok();
    let three = pids(&wait_all_ready(&d, 3));

    let up = run(&d, &devnet_args(5, base)).ok();
    assert!(up.stderr.contains("node-d") && up.stderr.contains("node-e"), "{up}");
    let five = pids(&wait_all_ready(&d, 5));
    for (name, pid) in &three {
        assert_eq!(five.get(name), Some(pid), "{name} was restarted by a scale-up");
    }

    let down = run(&d, &devnet_args(2, base)).ok();
    assert!(down.stderr.contains("- remove"), "{down}");
    let two = pids(&wait_all_ready(&d, 2));
    assert_eq!(two.keys().cloned().collect::<Vec<_>>(), ["node-a", "node-b"]);
    assert_eq!(two.get("node-a"), three.get("node-a"));
    assert_eq!(two.get("node-b"), three.get("node-b"));
    let procs = node_processes(&d.root);
    assert_eq!(procs.keys().cloned().collect::<Vec<_>>(), ["node-a", "node-b"], "{procs:?}");
    // Removed nodes keep their data unless --prune.
    assert!(d.paths().node_dir(Group::Devnet, "node-e").join("data").is_dir());
    for port in [base + 2, base + 3, base + 4] {
        assert_eq!(http_status("GET", port, "/healthz", None), None, "port {port} still answers");
    }
}

#[test]
fn a_redeploy_with_a_node_in_crash_loop_keeps_the_others_running() {
    let d = Deployment::new();
    let base = free_port_range(3);
    run(&d, &devnet_args(3, base)).ok();
    let before = pids(&wait_all_ready(&d, 3));
    // node-b's store can no longer open: its data dir becomes a file, then it is killed.
    let data = d.paths().node_dir(Group::Devnet, "node-b").join("data");
    std::fs::rename(&data, data.with_extension("moved")).unwrap();
    std::fs::write(&data, "not a directory").unwrap();
    kill_group(before["node-b"] as u32, Signal::SIGKILL);
    poll_until("node-b in crash-loop", Duration::from_secs(60), || {
        let doc = status(&d);
        let b = doc["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node-b")?.clone();
        (b["state"] == "crash-loop").then_some(())
    });
    // A node that should run is down: status says so with 3.
    d.run(&["deploy", "status"]).code_is(3);

    let again = run(&d, &devnet_args(3, base)).ok();
    assert!(again.stderr.contains("node-b"), "the crash-looping node is not mentioned\n{again}");
    let after = pids(&status(&d));
    assert_eq!(after.get("node-a"), before.get("node-a"));
    assert_eq!(after.get("node-c"), before.get("node-c"));
    assert!(ready(base) && ready(base + 2));
}

#[test]
fn a_stopped_process_is_restarted_by_liveness() {
    let d = Deployment::new();
    let base = free_port_range(1);
    let mut args = devnet_args(1, base);
    args.extend(
        ["--liveness-period", "500ms", "--liveness-timeout", "300ms", "--liveness-failures", "3"]
            .map(String::from),
    );
    run(&d, &args).ok();
    let pid = pids(&wait_all_ready(&d, 1))["node-a"] as u32;
    kill_pid(pid, Signal::SIGSTOP);
    let doc =
        poll_until("node-a restarted after its liveness failures", Duration::from_secs(60), || {
            let doc = status(&d);
            let n = doc["nodes"][0].clone();
            (n["pid"].as_u64().is_some_and(|p| p != u64::from(pid)) && n["ready"] == true)
                .then_some(n)
        });
    assert_eq!(doc["last_exit"]["cause"], "liveness", "{doc}");
    assert!(doc["restarts"].as_u64().unwrap() >= 1, "{doc}");
    assert!(!process::pid_running(pid) || process::is_zombie(pid), "the hung process survived");
    let sup_log = std::fs::read_to_string(d.root.join("supervisor.log")).unwrap_or_default();
    assert!(sup_log.contains("liveness"), "the supervisor log does not say why\n{sup_log}");
}

#[test]
fn after_the_supervisor_is_killed_the_next_command_heals_and_adopts_every_node() {
    let d = Deployment::new();
    let base = free_port_range(2);
    run(&d, &devnet_args(2, base)).ok();
    let before = pids(&wait_all_ready(&d, 2));
    let sup = d.kill_supervisor();

    // Read-only: 3, from state.json, nothing started.
    let ro = d.run(&["--no-start", "deploy", "status"]).code_is(3);
    assert!(ro.stdout.contains("not running"), "{ro}");
    assert!(d.supervisor_pid().is_none() || d.supervisor_pid() == Some(sup));

    // node-b dies while nobody watches.
    kill_group(before["node-b"] as u32, Signal::SIGKILL);
    poll_until("node-b gone", Duration::from_secs(10), || {
        (!process::pid_running(before["node-b"] as u32)).then_some(())
    });
    let healed = d.run(&["deploy", "status"]);
    assert!(healed.stderr.contains("supervisor was down"), "{healed}");
    assert!(healed.stderr.contains("adopted node-a"), "{healed}");
    assert!(healed.stderr.contains("restarted node-b"), "{healed}");
    let after = pids(&wait_all_ready(&d, 2));
    assert_eq!(after["node-a"], before["node-a"]);
    assert_ne!(after["node-b"], before["node-b"]);
    d.run(&["deploy", "status"]).code_is(0);
    let procs = node_processes(&d.root);
    assert!(procs.values().all(|p| p.len() == 1), "{procs:?}");
}

#[test]
fn a_lost_or_corrupt_state_file_still_finds_every_node_without_duplicates() {
    for damage in ["delete", "corrupt"] {
        let d = Deployment::new();
        let base = free_port_range(2);
        run(&d, &devnet_args(2, base)).ok();
        let before = pids(&wait_all_ready(&d, 2));
        d.kill_supervisor();
        let state = d.paths().state_file(Group::Devnet);
        match damage {
            "delete" => std::fs::remove_file(&state).unwrap(),
            _ => std::fs::write(&state, "{ this is not json").unwrap(),
        }
        let healed = d.run(&["deploy", "status"]);
        assert!(healed.stderr.contains("supervisor was down"), "{damage}\n{healed}");
        let after = pids(&wait_all_ready(&d, 2));
        assert_eq!(after, before, "{damage}: nodes were restarted instead of adopted");
        let procs = node_processes(&d.root);
        assert_eq!(procs.len(), 2, "{damage}: {procs:?}");
        assert!(procs.values().all(|p| p.len() == 1), "{damage}: duplicates {procs:?}");
        if damage == "corrupt" {
            let aside = std::fs::read_dir(state.parent().unwrap())
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
            assert!(aside, "the corrupt state file was not kept aside");
        }
        d.run(&["deploy", "stop"]).ok();
        assert!(node_processes(&d.root).is_empty());
    }
}

#[test]
fn three_hundred_idle_connections_do_not_lock_the_cli_out() {
    let d = Deployment::new();
    let base = free_port_range(1);
    run(&d, &devnet_args(1, base)).ok();
    let socket = d.paths().socket();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..300 {
            match dwbase_proto::Client::connect(&socket).await {
                Ok(c) => held.push(c),
                Err(e) => panic!("connection {}: {e}", held.len()),
            }
        }
        held
    });
    for _ in 0..3 {
        let out = run_with_deadline(&mut d.cmd(&["deploy", "status"]), Duration::from_secs(20));
        assert_eq!(out.code(), 0, "{out}");
        assert!(out.stdout.contains("node-a"), "{out}");
    }
    drop(held);
}

#[test]
fn planted_symlinks_are_refused() {
    // state.json.partial → a file of someone else: never written through.
    let d = Deployment::new();
    let base = free_port_range(1);
    let victim = d.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::create_dir_all(d.paths().group_dir(Group::Devnet)).unwrap();
    let partial = d.paths().state_file(Group::Devnet).with_extension("json.partial");
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    run(&d, &devnet_args(1, base)).ok();
    d.run(&["deploy", "stop", "node-a"]).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // supervisor.sock → another root's socket: not dialled, that devnet is not touched.
    let other = Deployment::new();
    std::fs::create_dir_all(&other.root).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::os::unix::fs::symlink(d.paths().socket(), other.paths().socket()).unwrap();
    let out = other.run(&["deploy", "stop"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("symbolic link"), "{out}");
    d.run(&["deploy", "restart", "node-a"]).ok();
    wait_all_ready(&d, 1);
    std::fs::remove_file(other.paths().socket()).unwrap();
}

#[test]
fn clean_never_deletes_the_data_of_a_running_node() {
    let d = Deployment::new();
    let base = free_port_range(1);
    run(&d, &devnet_args(1, base)).ok();
    let pid = pids(&wait_all_ready(&d, 1))["node-a"] as u32;
    d.kill_supervisor();
    // The state file is lost: the CLI alone cannot know node-a runs, but clean must find out.
    std::fs::remove_file(d.paths().state_file(Group::Devnet)).unwrap();
    let refused = d.run(&["--no-start", "deploy", "clean", "--yes"]);
    assert_ne!(refused.code(), 0, "{refused}");
    assert!(refused.stderr.contains("nothing was removed"), "{refused}");
    assert!(d.paths().node_dir(Group::Devnet, "node-a").join("data").is_dir());
    assert!(process::pid_running(pid) && !process::is_zombie(pid));
    assert!(ready(base));

    // Without --no-start, a supervisor is started, finds node-a, stops it; then clean works.
    let cleaned = d.run(&["deploy", "clean", "--yes"]).ok();
    assert!(cleaned.stdout.contains("removed"), "{cleaned}");
    assert!(!d.paths().group_dir(Group::Devnet).exists());
    poll_until("node-a gone", Duration::from_secs(10), || {
        (!process::pid_running(pid) || process::is_zombie(pid)).then_some(())
    });
}
