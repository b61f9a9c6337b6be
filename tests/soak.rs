//! `dwbase test soak` against a real devnet it deploys itself: a 20 s chaos run loses no
//! acknowledged write, injects every kind of fault and leaves nothing running; Ctrl+C stops
//! everything too.
//!
//! The soak runs with `--data-dir <test root>` so the test's guard can still clean up (by
//! recorded pid and start time) if the soak itself were to crash.

mod support;

use std::process::Stdio;
use std::time::Duration;

use dwbase_proto::process::{self, Liveness};
use dwbase_proto::Group;
use serde_json::Value;
use support::dwbase::Deployment;
use support::{drain, free_port_range, poll_until, run_with_deadline, ChildGuard};

/// Nothing recorded under the root is alive any more.
fn assert_nothing_runs(d: &Deployment) {
    for g in [Group::Devnet, Group::Local] {
        let Some(state) = d.state(g) else { continue };
        for n in &state.nodes {
            if let Some(pid) = n.pid {
                assert_ne!(
                    process::liveness(pid, n.start_time),
                    Liveness::Alive,
                    "{} (pid {pid}) still runs",
                    n.name
                );
            }
        }
        if let Some(s) = &state.supervisor {
            assert_ne!(
                process::liveness(s.pid, s.start_time),
                Liveness::Alive,
                "the supervisor (pid {}) still runs",
                s.pid
            );
        }
    }
    assert!(d.supervisor_pid().is_none(), "a supervisor still runs");
}

#[test]
fn chaos_soak_loses_no_acknowledged_write() {
    let d = Deployment::new();
    let report = d.dir.path().join("soak.json");
    let base = free_port_range(4);
    let mut cmd = d.cmd(&[
        "test",
        "soak",
        "--duration",
        "20s",
        "--chaos",
        "--nodes",
        "3",
        "--base-port",
        &base.to_string(),
        "--data-dir",
        d.root.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(240)).ok();
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let pretty = serde_json::to_string_pretty(&r).unwrap();

    assert_eq!(r["acknowledged_writes_lost"], 0, "{pretty}");
    assert!(r["acknowledged_writes"].as_u64().unwrap() > 100, "{pretty}");
    assert_eq!(r["acknowledged_writes_verified"], r["acknowledged_writes"]);
    assert_eq!(r["passed"], true, "{pretty}");
    for kind in ["kill_node", "kill_supervisor", "disk_fill", "restart_node"] {
        assert!(r["faults_injected"][kind].as_u64().unwrap_or(0) >= 1, "no {kind}:\n{pretty}");
    }
    assert_eq!(r["nodes_duplicated"], 0, "{pretty}");
    assert!(r["nodes_adopted"].as_u64().unwrap() >= 3, "adoption after the supervisor kill");
    assert!(r["restarts_observed"].as_u64().unwrap() >= 1, "{pretty}");
    assert!(r["refused_by_kind"]["disk_full"].as_u64().unwrap() >= 1, "507s are refusals");
    assert!(r["errors_by_kind"].get("http_4xx").is_none(), "the workload sent bad requests");
    // The original report's keys are all there.
    for key in [
        "duration_secs",
        "remembers",
        "asks",
        "remember_p50_ms",
        "remember_p95_ms",
        "ask_p50_ms",
        "ask_p95_ms",
        "disk_bytes_start",
        "disk_bytes_end",
        "restart_injected",
        "corruption_injected",
        "errors",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert_eq!(r["restart_injected"], true);
    assert!(r["remembers"].as_u64().unwrap() > 0 && r["asks"].as_u64().unwrap() > 0);
    assert!(r["replays"].as_u64().unwrap() > 0);
    assert!(out.stdout.contains("soak passed"), "{out}");
    assert_nothing_runs(&d);
}

#[test]
fn ctrl_c_stops_the_devnet_and_the_supervisor() {
    let d = Deployment::new();
    let report = d.dir.path().join("soak.json");
    let base = free_port_range(2);
    let mut cmd = d.cmd(&[
        "test",
        "soak",
        "--duration",
        "5m",
        "--nodes",
        "2",
        "--base-port",
        &base.to_string(),
        "--data-dir",
        d.root.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let stderr = drain(child.child().stderr.take().unwrap());
    let _stdout = drain(child.child().stdout.take().unwrap());
    // Wait until the devnet serves and the workload runs (acknowledged atoms on node-a).
    poll_until("the soak's devnet under load", Duration::from_secs(60), || {
        let (status, body) =
            support::node::try_http("GET", &format!("127.0.0.1:{base}"), "/metrics", None).ok()?;
        let stored = body
            .lines()
            .find_map(|l| l.strip_prefix("dwbase_atoms_stored "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        (status == 200 && stored > 0.0).then_some(())
    });
    support::kill_pid(child.id(), nix::sys::signal::Signal::SIGINT);
    let status = child.wait_deadline(Duration::from_secs(60)).expect("the soak exits after Ctrl+C");
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_runs(&d);
}
