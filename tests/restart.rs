//! Restarts with the real binaries: kill -9 a real node 20 times → 20 restarts in Status;
//! a node program that exits at once reaches crash-loop and stops being restarted.

mod support;

use std::time::Duration;

use dwbase_proto::{ExitKind, NodeState};
use nix::sys::signal::Signal;
use support::dwbase::Deployment;
use support::supervisor::*;
use support::*;

#[test]
fn kill_9_a_node_twenty_times_counts_twenty_restarts() {
    let d = Deployment::new();
    // Shrunk backoff and no crash-loop cut-off, so 20 kills take seconds, not minutes.
    let _sup = start_supervisor(
        &d,
        &["--backoff-first-ms", "10", "--backoff-max-ms", "50", "--crash-loop-exits", "1000"],
    );
    let nodes = deploy_ready(&d, devnet_spec(1, free_port_range(1)));
    let mut pid = nodes[0].pid.unwrap();
    for i in 1..=20u32 {
        kill_pid(pid, Signal::SIGKILL);
        pid = poll_until(&format!("restart {i}"), Duration::from_secs(20), || {
            let n = node(&d, "node-a");
            n.pid.filter(|p| *p != pid && n.restarts == i)
        });
    }
    let n = poll_until("ready after the last restart", Duration::from_secs(30), || {
        let n = node(&d, "node-a");
        n.ready.then_some(n)
    });
    assert_eq!(n.restarts, 20);
    assert_eq!(n.last_exit.as_ref().map(|e| e.kind), Some(ExitKind::Signal(9)));
    assert_eq!(n.pid, Some(pid));
}

#[test]
fn a_node_that_exits_at_once_reaches_crash_loop() {
    let d = Deployment::new();
    let script = d.dir.path().join("crash.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"fatal: cannot start\" >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _sup = start_supervisor(&d, &["--node-bin", script.to_str().unwrap()]);
    let socket = d.paths().socket();
    // The rollout halts at the node that never gets ready; the supervisor keeps it per policy.
    match deploy(&socket, &dwbase_proto::Request::DeployDevnet(devnet_spec(1, free_port_range(1))))
    {
        Ok(dwbase_proto::Response::Error(e)) => {
            assert_eq!(e.kind, dwbase_proto::ErrorKind::RolloutFailed, "{e:?}");
            assert!(e.message.contains("node-a"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let n = poll_until("crash loop", Duration::from_secs(30), || {
        let n = node(&d, "node-a");
        (n.state == NodeState::CrashLoop).then_some(n)
    });
    assert_eq!(n.last_exit.as_ref().map(|e| e.kind), Some(ExitKind::Code(3)));
    assert!(
        n.last_log_lines.iter().any(|l| l.contains("fatal: cannot start")),
        "{:?}",
        n.last_log_lines
    );
    let restarts = n.restarts;
    // The next restart waits 30 s: nothing may happen in the next second (an absence needs
    // a wait).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node(&d, "node-a").restarts, restarts);
}

/// `deploy restart NODE` returns once the new process is ready (so the next `deploy status`
/// exits 0), and exits 1 with the reason and the node's last log lines when the new process
/// cannot start; `--no-wait` returns at the spawn.
#[test]
fn deploy_restart_waits_until_the_new_process_is_ready() {
    let d = Deployment::new();
    let base = free_port_range(2);
    let (nodes, port) = ("2".to_owned(), base.to_string());
    d.run(&["deploy", "devnet", "--no-swarm", "--nodes", &nodes, "--base-port", &port]).ok();
    let before = node(&d, "node-b").pid.unwrap();
    let out = d.run(&["deploy", "restart", "node-b"]).ok();
    assert!(out.stdout.contains("node-b is ready"), "{out}");
    let after = node(&d, "node-b");
    assert!(after.ready && after.pid != Some(before), "{after:?}");
    d.run(&["deploy", "status"]).ok();

    // A config the node refuses: the restart's new process exits at once.
    let config = d.paths().node_dir(dwbase_proto::Group::Devnet, "node-b").join("config.toml");
    std::fs::write(&config, "[node]\nno_such_key = 1\n").unwrap();
    let out = d.run(&["deploy", "restart", "node-b"]).code_is(1);
    assert!(out.stderr.contains("node-b exited before it became ready"), "{out}");
    assert!(out.stderr.contains("last log lines of node-b"), "{out}");
    assert!(out.stderr.contains("no_such_key"), "the node's own error is shown: {out}");

    let out = d.run(&["deploy", "restart", "node-a", "--no-wait"]).ok();
    assert!(!out.stdout.contains("is ready"), "{out}");
    d.run(&["deploy", "stop"]).ok();
}
