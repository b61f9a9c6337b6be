//! The supervisor as a daemon (the real binaries): detached in its own session, real nodes
//! ready behind it, timestamped logs through the log pipe, one supervisor per root, metrics,
//! and SIGTERM stopping every node before a clean exit.

mod support;

use std::time::Duration;

use dwbase_proto::{EndOfStream, Group, LogsSpec, Request, Response, StopSpec};
use nix::sys::signal::Signal;
use support::dwbase::Deployment;
use support::supervisor::*;
use support::*;

#[test]
fn daemon_runs_a_devnet_and_sigterm_stops_everything() {
    let d = Deployment::new();
    let mut sup = start_supervisor(&d, &[]);
    // setsid: it leads its own session, away from the test's terminal.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(sup.id() as i32))).unwrap();
    assert_eq!(sid.as_raw() as u32, sup.id());

    let nodes = deploy_ready(&d, devnet_spec(2, free_port_range(2)));
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid.unwrap()).collect();
    for n in &nodes {
        let (code, _) = http("GET", &format!("127.0.0.1:{}", n.port), "/readyz", None);
        assert_eq!(code, 200);
    }
    // Node output went through the log pipe: every line timestamped.
    let log = poll_until("node-a logged", Duration::from_secs(10), || {
        let l = d.node_log(Group::Devnet, "node-a");
        (!l.is_empty()).then_some(l)
    });
    for line in log.lines() {
        assert!(dwbase_supervisor::logs::parse_line(line).is_some(), "untimestamped: {line}");
    }
    // And Logs serves it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lines = rt.block_on(async {
        let mut c = dwbase_proto::Client::connect(&d.paths().socket()).await.unwrap();
        c.send(&Request::Logs(LogsSpec {
            node: None,
            tail: Some(5),
            follow: false,
            since_unix_ms: None,
        }))
        .await
        .unwrap();
        let mut lines = vec![];
        loop {
            match c.recv().await.unwrap() {
                Response::LogLine(l) => lines.push(l),
                Response::EndOfStream(EndOfStream::Done) => return lines,
                other => panic!("{other:?}"),
            }
        }
    });
    assert!(!lines.is_empty() && lines.len() <= 10);

    kill_pid(sup.id(), Signal::SIGTERM);
    let st = sup.wait_deadline(Duration::from_secs(30)).expect("supervisor exits on SIGTERM");
    assert!(st.success(), "{st}");
    for p in &pids {
        assert!(!pid_alive(*p), "node {p} stopped with the supervisor");
    }
    assert!(!d.paths().socket().exists());
    assert!(!d.paths().pid_file().exists());
    let state = d.state(Group::Devnet).unwrap();
    assert!(state.supervisor.is_none());
    assert!(state.nodes.iter().all(|n| n.pid.is_none()));
    // A node stopped by SIGTERM drains and exits 0.
    assert!(
        state
            .nodes
            .iter()
            .all(|n| n.last_exit.as_ref().map(|e| e.kind) == Some(dwbase_proto::ExitKind::Code(0))),
        "{state:?}"
    );
    let own_log = std::fs::read_to_string(d.paths().supervisor_log()).unwrap();
    assert!(own_log.contains("supervisor listening"), "{own_log}");
}

#[test]
fn a_second_supervisor_for_the_same_root_exits_1_naming_the_first() {
    let d = Deployment::new();
    let sup = start_supervisor(&d, &[]);
    let out = run_with_deadline(
        supervisor_cmd(&d, &[]).stderr(std::process::Stdio::piped()),
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("a supervisor already runs for"), "{out}");
    assert!(out.stderr.contains(&format!("pid {}", sup.id())), "{out}");
    // The first is unharmed.
    status(&d);
}

#[test]
fn metrics_show_node_gauges() {
    let d = Deployment::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _sup = start_supervisor(&d, &["--metrics-addr", &addr]);
    let s = status(&d);
    assert_eq!(
        s.supervisor.metrics_url.as_deref(),
        Some(format!("http://{addr}/metrics").as_str())
    );
    deploy_ready(&d, devnet_spec(1, free_port_range(1)));
    let body = poll_until("ready gauge", Duration::from_secs(20), || {
        let (code, body) = http("GET", &addr, "/metrics", None);
        (code == 200 && body.contains("dwbase_supervisor_node_ready{node=\"node-a\"} 1"))
            .then_some(body)
    });
    assert!(body.contains("dwbase_supervisor_node_up{node=\"node-a\"} 1"), "{body}");
    assert!(body.contains("dwbase_supervisor_requests_total"), "{body}");
    let stop = StopSpec { nodes: vec![], group: None, timeout_ms: None };
    assert!(matches!(request(&d.paths().socket(), &Request::Stop(stop)), Ok(Response::Done(_))));
    poll_until("up gauge 0", Duration::from_secs(20), || {
        let (_, body) = http("GET", &addr, "/metrics", None);
        body.contains("dwbase_supervisor_node_up{node=\"node-a\"} 0").then_some(())
    });
}
