//! The one owner under concurrency and crashes: many CLI commands at once on one root with
//! the supervisor killed in the middle, and the supervisor killed at random moments of a
//! rollout. Afterwards there is exactly one supervisor, at most one process per node, and
//! state.json agrees with /proc.

mod support;

use std::time::Duration;

use dwbase_proto::process::{self, Liveness};
use dwbase_proto::Group;
use nix::sys::signal::Signal;
use support::dwbase::{devnet_args, node_processes, Deployment};
use support::*;

/// Live supervisor processes of this root.
fn supervisors(d: &Deployment) -> Vec<u32> {
    let root = d.root.clone();
    process::find_processes(|args| {
        args.iter().any(|a| a == "run")
            && process::arg_value(args, "--root").is_some_and(|r| r == root)
    })
    .into_iter()
    .map(|p| p.pid)
    .collect()
}

/// After the storm: one supervisor, one process per node, and the supervisor's view, the
/// state file and /proc agree.
fn check_one_owner(d: &Deployment, nodes: usize) {
    let doc = poll_until("every node ready after the storm", Duration::from_secs(90), || {
        let out = d.run(&["deploy", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let ns = v["nodes"].as_array()?;
        (out.code() == 0 && ns.len() == nodes && ns.iter().all(|n| n["ready"] == true)).then_some(v)
    });
    let sups = supervisors(d);
    assert_eq!(sups.len(), 1, "supervisors: {sups:?}");
    let procs = node_processes(&d.root);
    assert_eq!(procs.len(), nodes, "{procs:?}");
    assert!(procs.values().all(|p| p.len() == 1), "duplicates: {procs:?}");
    let state = poll_until("state.json caught up", Duration::from_secs(10), || {
        let s = d.state(Group::Devnet)?;
        let agree = s.nodes.iter().all(|n| {
            n.pid.is_some_and(|p| procs.get(&n.name) == Some(&vec![p]))
                && process::liveness(n.pid.unwrap(), n.start_time) == Liveness::Alive
        });
        (agree && s.nodes.len() == nodes).then_some(s)
    });
    for n in doc["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        let pid = n["pid"].as_u64().unwrap() as u32;
        assert_eq!(procs[name], vec![pid], "status and /proc disagree on {name}");
        assert!(state.nodes.iter().any(|r| r.name == name && r.pid == Some(pid)));
    }
}

#[test]
fn fifty_mixed_commands_at_once_with_a_supervisor_kill_leave_one_owner() {
    let d = Deployment::new();
    let base = free_port_range(3);
    let args = devnet_args(3, base);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&argv).ok();

    let mut children = Vec::new();
    for i in 0..50 {
        let cmd: Vec<&str> = match i % 5 {
            0 => argv.clone(),
            1 | 2 => vec!["deploy", "status"],
            3 => vec!["deploy", "restart", "node-b"],
            _ => vec!["deploy", "stop", "node-c"],
        };
        let mut c = d.cmd(&cmd);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        children.push(ChildGuard::new(c.spawn().unwrap()));
        if i == 25 {
            if let Some(pid) = d.supervisor_pid() {
                kill_pid(pid, Signal::SIGKILL);
            }
        }
    }
    for c in &mut children {
        c.wait_deadline(Duration::from_secs(120)).expect("a command hung");
    }
    // Whatever order they ran in, one last deploy brings the spec back (node-c may have been
    // stopped last): it must converge, under one supervisor.
    d.run(&argv).ok();
    check_one_owner(&d, 3);
}

#[test]
fn killing_the_supervisor_at_random_moments_of_a_rollout_never_duplicates_a_node() {
    let d = Deployment::new();
    let base = free_port_range(3);
    let args = devnet_args(3, base);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&argv).ok();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for round in 0..20 {
        // A changed spec each round: every node is replaced, one at a time.
        let mut c = d.cmd(&argv);
        c.env("DWBASE_MAX_DISK_MB", (1000 + round).to_string());
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut deploy = ChildGuard::new(c.spawn().unwrap());
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Fault injection: the kill lands 0–1.5 s into the rollout.
        std::thread::sleep(Duration::from_millis(seed % 1500));
        if let Some(pid) = d.supervisor_pid() {
            kill_pid(pid, Signal::SIGKILL);
        }
        deploy.wait_deadline(Duration::from_secs(120)).expect("the deploy hung");
        // The next command heals; no node may run twice, none may be untracked.
        let _ = d.run(&["deploy", "status"]);
        let procs = node_processes(&d.root);
        assert!(procs.values().all(|p| p.len() == 1), "round {round}: duplicates {procs:?}");
    }
    d.run(&argv).ok();
    check_one_owner(&d, 3);
}
