//! `dwbase deploy devnet` end to end with the real binaries: up, status (table and JSON) from
//! another process, swarm replication between nodes, stop leaving nothing behind; and a port
//! conflict refused before anything is spawned.

mod support;

use std::time::Duration;

use dwbase_proto::Group;
use support::dwbase::Deployment;
use support::{free_port_range, http, pid_alive, poll_until};

#[test]
fn devnet_up_status_swarm_and_stop() {
    let d = Deployment::new();
    let base = free_port_range(3);
    let base_s = base.to_string();
    let mut cmd = d.cmd(&["deploy", "devnet", "--nodes", "3", "--base-port", &base_s]);
    cmd.env("DWBASE_MAX_RAM_MB", "128");
    let up = support::run_with_deadline(&mut cmd, Duration::from_secs(60)).ok();
    let recorded = d.state(Group::Devnet).unwrap();
    assert!(
        recorded.nodes.iter().all(|n| n.env.contains(&("DWBASE_MAX_RAM_MB".into(), "128".into()))),
        "the RAM cap is forwarded to every node: {recorded:?}"
    );

    // The table: the original's shape plus pid and state, then the state file.
    let lines: Vec<&str> = up.stdout.lines().collect();
    assert!(lines[0].starts_with("Node") && lines[0].contains("PID"), "{up}");
    for (i, letter) in ["A", "B", "C"].iter().enumerate() {
        let row = lines[i + 1];
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], *letter, "{up}");
        assert_eq!(cols[1], format!("node-{}", letter.to_lowercase()), "{up}");
        assert_eq!(cols[2], (base + i as u16).to_string(), "{up}");
        assert!(cols[3].parse::<u32>().is_ok(), "{up}");
        assert_eq!(cols[4], "ready", "{up}");
        assert_eq!(cols[5], format!("root/devnet/node-{}", letter.to_lowercase()), "{up}");
    }
    let state_path = d.paths().state_file(Group::Devnet);
    assert_eq!(lines[4], format!("state: {}", state_path.display()), "{up}");
    assert!(up.stderr.contains("node-a: ready"), "{up}");

    // Status from a separate process, run from elsewhere with the same root.
    let mut cmd = d.cmd(&["deploy", "status"]);
    cmd.current_dir("/");
    let st = support::run_with_deadline(&mut cmd, Duration::from_secs(30)).ok();
    assert!(st.stdout.starts_with("supervisor: pid "), "{st}");
    for n in ["node-a", "node-b", "node-c"] {
        let row = st.stdout.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("{st}"));
        assert!(row.contains(" ready ") && row.contains(" yes "), "{st}");
    }

    let js = d.run(&["deploy", "status", "--json"]).ok();
    let v: serde_json::Value =
        serde_json::from_str(&js.stdout).unwrap_or_else(|e| panic!("{e}\n{js}"));
    assert_eq!(v["supervisor"]["running"], true, "{js}");
    let sup_pid = v["supervisor"]["pid"].as_u64().unwrap() as u32;
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{js}");
    let mut pids = vec![sup_pid];
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["name"], format!("node-{}", (b'a' + i as u8) as char));
        assert_eq!(n["group"], "devnet");
        assert_eq!(n["state"], "ready");
        assert_eq!(n["ready"], true);
        assert_eq!(n["port"], u64::from(base) + i as u64);
        pids.push(n["pid"].as_u64().unwrap() as u32);
    }
    assert!(pids.iter().all(|p| pid_alive(*p)));

    // Deploying the same devnet again is idempotent: same pids.
    let mut cmd = d.cmd(&["deploy", "devnet", "--nodes", "3", "--base-port", &base_s]);
    cmd.env("DWBASE_MAX_RAM_MB", "128");
    let again = support::run_with_deadline(&mut cmd, Duration::from_secs(60)).ok();
    assert!(again.stderr.contains("no changes"), "{again}");
    for p in &pids[1..] {
        assert!(again.stdout.contains(&format!(" {p} ")), "pid {p} changed\n{again}");
    }

    // Swarm: remember on node-a, ask on node-c.
    let a = format!("127.0.0.1:{base}");
    let c = format!("127.0.0.1:{}", base + 2);
    let atom = r#"{"world":"e2e","worker":"tester","kind":"observation","timestamp":"",
        "importance":0.7,"payload_json":"{\"text\":\"the heron nests by the quarry\"}",
        "vector":null,"flags":[],"labels":["heron"],"links":[]}"#;
    let (code, id) = http("POST", &a, "/remember", Some(atom));
    assert_eq!(code, 200, "remember: {id}");
    let id: String = serde_json::from_str(&id).unwrap();
    let ask = r#"{"world":"e2e","text":"where does the heron nest?"}"#;
    poll_until("node-c to know the atom remembered on node-a", Duration::from_secs(20), || {
        let (code, body) = http("POST", &c, "/ask", Some(ask));
        (code == 200 && body.contains(&id)).then_some(())
    });

    // Logs of every node, interleaved with a name prefix.
    let logs = d.run(&["deploy", "logs", "--tail", "2"]).ok();
    for n in ["node-a | ", "node-b | ", "node-c | "] {
        assert!(logs.stdout.lines().any(|l| l.starts_with(n)), "{logs}");
    }

    // Stop: every recorded process is gone, nothing to stop a second time.
    let recorded: Vec<u32> = d.node_pids().into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(recorded.len(), 3);
    let stop = d.run(&["deploy", "stop"]).ok();
    assert!(stop.stdout.contains("stopped node-a, node-b, node-c"), "{stop}");
    for p in pids.iter().chain(&recorded) {
        assert!(!pid_alive(*p), "pid {p} survived the stop\n{stop}");
    }
    assert!(!d.paths().socket().exists(), "the socket outlived the supervisor");
    // Nothing should run any more: no supervisor is started, and status says "down" with 3.
    let st = d.run(&["deploy", "status"]).code_is(3);
    assert!(st.stdout.contains("supervisor: not running"), "{st}");
    assert_eq!(st.stdout.matches(" stopped ").count(), 3, "{st}");
    let again = d.run(&["deploy", "stop"]).ok();
    assert!(again.stdout.contains("nothing to stop"), "{again}");
}

#[test]
fn a_taken_port_is_refused_naming_port_and_node() {
    let d = Deployment::new();
    let base = free_port_range(3);
    let _held = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let out = d.run(&["deploy", "devnet", "--nodes", "3", "--base-port", &base.to_string()]);
    let out = out.code_is(1);
    let port = (base + 1).to_string();
    assert!(out.stderr.contains(&port) && out.stderr.contains("node-b"), "{out}");
    // Nothing is running: no node pid recorded alive, and the supervisor we started is gone.
    for (name, pid, _) in d.node_pids() {
        assert!(!pid_alive(pid), "{name} (pid {pid}) is running\n{out}");
    }
    poll_until("the supervisor to exit", Duration::from_secs(10), || {
        d.supervisor_pid().is_none().then_some(())
    });
}

/// Writes an executable script to stand in for `dwbase-node` (via DWBASE_NODE_BIN, which the
/// supervisor started by the CLI inherits).
#[cfg(unix)]
fn fake_node(d: &Deployment, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = d.dir.path().join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[cfg(unix)]
#[test]
fn a_node_that_cannot_start_halts_the_deploy_with_its_log_and_stays_supervised() {
    let d = Deployment::new();
    let bin = fake_node(&d, "crashing-node", "echo \"boom: cannot start ($*)\" >&2\nexit 3");
    let base = free_port_range(2).to_string();
    let mut cmd = d.cmd(&["deploy", "devnet", "--nodes", "2", "--base-port", &base]);
    cmd.env("DWBASE_NODE_BIN", &bin);
    let out = support::run_with_deadline(&mut cmd, Duration::from_secs(60)).code_is(1);
    assert!(out.stderr.contains("exited before it became ready"), "{out}");
    assert!(out.stderr.contains("boom: cannot start"), "shows the node's last log lines\n{out}");
    assert!(out.stderr.contains("exit 3"), "{out}");
    assert!(out.stderr.contains("every other node was left running"), "{out}");
    // The deploy changed nothing it was not asked to: the nodes stay under the supervisor,
    // which restarts them per policy; `deploy stop` ends it all.
    let st = d.run(&["deploy", "status"]).code_is(3);
    assert!(st.stdout.contains("node-a") && st.stdout.contains("node-b"), "{st}");
    d.run(&["deploy", "stop"]).ok();
    for (name, pid, _) in d.node_pids() {
        assert!(!pid_alive(pid), "{name} (pid {pid}) is running");
    }
    poll_until("the supervisor to exit", Duration::from_secs(10), || {
        d.supervisor_pid().is_none().then_some(())
    });
}

#[cfg(unix)]
#[test]
fn a_node_never_ready_halts_the_deploy_and_keeps_running_until_stopped() {
    let d = Deployment::new();
    let pid_file = d.dir.path().join("sleepy.pid");
    let body =
        format!("echo $$ > '{}'\necho 'warming up forever'\nexec sleep 600", pid_file.display());
    let bin = fake_node(&d, "sleepy-node", &body);
    let base = free_port_range(1).to_string();
    let mut cmd =
        d.cmd(&["deploy", "devnet", "--nodes", "1", "--base-port", &base, "--timeout", "1s"]);
    cmd.env("DWBASE_NODE_BIN", &bin);
    let out = support::run_with_deadline(&mut cmd, Duration::from_secs(60)).code_is(1);
    assert!(out.stderr.contains("node-a not ready within 1s"), "{out}");
    assert!(out.stderr.contains("warming up forever"), "{out}");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(pid_alive(pid), "a failed rollout must not stop the node it waited for\n{out}");
    d.run(&["deploy", "stop", "--timeout", "1s"]).ok();
    poll_until("the never-ready node to stop", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
    poll_until("the supervisor to exit", Duration::from_secs(10), || {
        d.supervisor_pid().is_none().then_some(())
    });
}

#[test]
fn logs_follow_ends_when_the_node_stops_and_supervisor_restart_keeps_nodes() {
    use std::process::Stdio;
    let d = Deployment::new();
    let base = free_port_range(2).to_string();
    d.run(&["deploy", "devnet", "--nodes", "2", "--base-port", &base]).ok();

    // A new supervisor adopts the running nodes: same node pids, new supervisor pid.
    let before = d.node_pids();
    let old_sup = d.supervisor_pid().unwrap();
    let out = d.run(&["supervisor", "restart"]).ok();
    assert!(out.stdout.contains(&format!("pid {old_sup} → pid ")), "{out}");
    let new_sup = d.supervisor_pid().unwrap();
    assert_ne!(old_sup, new_sup);
    assert!(!pid_alive(old_sup));
    assert_eq!(d.node_pids(), before, "nodes must be adopted, not restarted");
    let js = d.run(&["deploy", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    assert_eq!(v["supervisor"]["pid"], new_sup, "{js}");

    // logs -f on node-a ends (exit 0) when node-a is stopped.
    let mut cmd = d.cmd(&["deploy", "logs", "node-a", "-f", "--tail", "1"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut follow = support::ChildGuard::new(cmd.spawn().unwrap());
    let out = support::drain(follow.child().stdout.take().unwrap());
    let err = support::drain(follow.child().stderr.take().unwrap());
    d.run(&["deploy", "stop", "node-a"]).ok();
    let status = follow.wait_deadline(Duration::from_secs(30)).expect("logs -f ends");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(err.contains("stopped"), "{err}");
    assert!(!out.is_empty(), "the tail line is printed");
}
