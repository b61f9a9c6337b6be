//! Supervisor life cycle in-process: shutdown with and without stopping nodes, adoption by
//! the next supervisor, restarts of adopted nodes, a second supervisor refused, log streams.

mod support;

use std::time::Duration;

use dwbase_proto::{
    EndOfStream, Group, LogsSpec, NodeState, Request, Response, RestartPolicy, ShutdownSpec,
    StopSpec,
};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaving_nodes_then_the_next_supervisor_adopts_and_restarts_them() {
    let mut f = Fixture::start(SLEEPER, quick_rules()).await;
    f.deploy(2, RestartPolicy::Always).await;
    let pids: Vec<u32> = poll_until("spawned", Duration::from_secs(10), || async {
        let p: Vec<u32> = f.status().await.nodes.iter().filter_map(|n| n.pid).collect();
        (p.len() == 2).then_some(p)
    })
    .await;
    match f.request(Request::Shutdown(ShutdownSpec { stop_nodes: false })).await {
        Response::Done(_) => {}
        other => panic!("{other:?}"),
    }
    f.join().await.unwrap();
    assert!(!f.paths.socket().exists(), "socket removed");
    assert!(!f.paths.pid_file().exists(), "pid file removed");
    assert!(pids.iter().all(|p| pid_alive(*p)), "nodes outlive the supervisor");
    let st = f.state(Group::Devnet).unwrap();
    assert!(st.supervisor.is_none());
    assert_eq!(st.nodes.iter().filter_map(|n| n.pid).collect::<Vec<_>>(), pids);

    // A new supervisor adopts them: same pids, nothing spawned.
    f.launch().await;
    let s = f.status().await;
    assert_eq!(s.nodes.iter().filter_map(|n| n.pid).collect::<Vec<_>>(), pids);
    assert!(s.nodes.iter().all(|n| n.restarts == 0));
    // Kill an adopted node: it is restarted (its exit status is unknown).
    kill9(pids[0]);
    let n = poll_until("adopted node restarted", Duration::from_secs(10), || async {
        let n = f.node("node-a").await;
        (n.pid.is_some_and(|p| p != pids[0]) && n.restarts == 1).then_some(n)
    })
    .await;
    assert!(pid_alive(n.pid.unwrap()));
    assert_eq!(f.node("node-b").await.pid, Some(pids[1]));

    // Stopping an adopted node works too (SIGTERM via its group, exit seen via pidfd).
    let r = f
        .request(Request::Stop(StopSpec {
            nodes: vec!["node-b".into()],
            group: None,
            timeout_ms: None,
        }))
        .await;
    assert!(matches!(r, Response::Done(_)), "{r:?}");
    assert!(!pid_alive(pids[1]));

    // Shutdown with stop_nodes: everything stops and the supervisor exits.
    let new_a = n.pid.unwrap();
    match f.request(Request::Shutdown(ShutdownSpec { stop_nodes: true })).await {
        Response::Done(_) => {}
        other => panic!("{other:?}"),
    }
    f.join().await.unwrap();
    assert!(!pid_alive(new_a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_listed_as_running_is_restarted_by_the_next_supervisor() {
    let mut f = Fixture::start(SLEEPER, quick_rules()).await;
    f.deploy(1, RestartPolicy::OnFailure).await;
    let pid =
        poll_until("spawned", Duration::from_secs(10), || async { f.node("node-a").await.pid })
            .await;
    f.leave_running.cancel();
    f.join().await.unwrap();
    kill9(pid);
    poll_until("dead", Duration::from_secs(5), || async { (!pid_alive(pid)).then_some(()) }).await;
    f.launch().await;
    let n = poll_until("restarted", Duration::from_secs(10), || async {
        let n = f.node("node-a").await;
        n.pid.filter(|p| *p != pid).map(|_| n)
    })
    .await;
    assert_eq!(n.restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_run_stops_every_node() {
    let mut f = Fixture::start(SLEEPER, quick_rules()).await;
    f.deploy(2, RestartPolicy::Always).await;
    let pids: Vec<u32> = poll_until("spawned", Duration::from_secs(10), || async {
        let p: Vec<u32> = f.status().await.nodes.iter().filter_map(|n| n.pid).collect();
        (p.len() == 2).then_some(p)
    })
    .await;
    f.shutdown.cancel();
    f.join().await.unwrap();
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(!f.paths.socket().exists());
    let st = f.state(Group::Devnet).unwrap();
    assert!(st.nodes.iter().all(|n| n.pid.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_for_the_same_root_is_refused() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let err = dwbase_supervisor::run(f.opts.clone(), Default::default()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("a supervisor already runs for"), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    // The first one still serves.
    f.status().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_and_follow_end_with_node_stopped_or_supervisor_shutdown() {
    let mut f = Fixture::start(
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done",
        quick_rules(),
    )
    .await;
    f.deploy(2, RestartPolicy::Always).await;
    let log_a = f.paths.node_dir(Group::Devnet, "node-a").join("logs/node.log");
    poll_until("some lines", Duration::from_secs(10), || async {
        let t = std::fs::read_to_string(&log_a).unwrap_or_default();
        (t.lines().count() >= 3).then_some(())
    })
    .await;
    // Tail, no follow.
    let mut c = f.client().await;
    c.send(&Request::Logs(LogsSpec {
        node: Some("node-a".into()),
        tail: Some(2),
        follow: false,
        since_unix_ms: None,
    }))
    .await
    .unwrap();
    let mut lines = vec![];
    loop {
        match c.recv().await.unwrap() {
            Response::LogLine(l) => lines.push(l),
            Response::EndOfStream(EndOfStream::Done) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.node == "node-a" && l.text.starts_with("tick")));

    // Follow node-a; stopping it ends the stream with NodeStopped.
    let mut c = f.client().await;
    c.send(&Request::Logs(LogsSpec {
        node: Some("node-a".into()),
        tail: Some(0),
        follow: true,
        since_unix_ms: None,
    }))
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap().unwrap() {
        Response::LogLine(l) => assert!(l.text.starts_with("tick")),
        other => panic!("{other:?}"),
    }
    let stopper = f.client().await;
    let stop = tokio::spawn(async move {
        let mut stopper = stopper;
        stopper
            .request(&Request::Stop(StopSpec {
                nodes: vec!["node-a".into()],
                group: None,
                timeout_ms: None,
            }))
            .await
            .unwrap()
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap().unwrap() {
            Response::LogLine(_) => {}
            Response::EndOfStream(EndOfStream::NodeStopped) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(stop.await.unwrap(), Response::Done(_)));
    assert_eq!(f.node("node-a").await.state, NodeState::Stopped);

    // Follow everything; shutting the supervisor down ends it with SupervisorShutdown.
    let mut c = f.client().await;
    c.send(&Request::Logs(LogsSpec {
        node: None,
        tail: Some(1),
        follow: true,
        since_unix_ms: None,
    }))
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap().unwrap() {
        Response::LogLine(_) => {}
        other => panic!("{other:?}"),
    }
    f.shutdown.cancel();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), c.recv()).await.unwrap().unwrap() {
            Response::LogLine(_) => {}
            Response::EndOfStream(EndOfStream::SupervisorShutdown) => break,
            other => panic!("{other:?}"),
        }
    }
    f.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_moved_aside_and_the_supervisor_starts() {
    let mut f = Fixture::start(SLEEPER, quick_rules()).await;
    f.leave_running.cancel();
    f.join().await.unwrap();
    let state = f.paths.state_file(Group::Devnet);
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, b"{ this is not json").unwrap();
    f.launch().await;
    assert!(f.status().await.nodes.is_empty());
    let moved: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(moved.len(), 1, "the unreadable file is kept beside, renamed");
    // And a fresh, valid state file replaced it.
    assert!(f.state(Group::Devnet).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_too_long_for_a_socket_path_uses_the_short_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
    let node = script(dir.path(), "n.sh", SLEEPER);
    let opts = dwbase_supervisor::RunOptions::new(&deep, dwbase_supervisor::Invocation::new(node));
    let paths = dwbase_proto::Paths::new(&deep).unwrap();
    let socket = paths.socket();
    assert!(!socket.starts_with(&deep));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(dwbase_supervisor::run(opts, shutdown.clone()));
    let info = poll_until("fallback socket", Duration::from_secs(10), || {
        let socket = socket.clone();
        async move {
            match dwbase_proto::Client::connect(&socket).await.ok()?.request(&Request::Ping).await {
                Ok(Response::Pong(info)) => Some(info),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(info.socket, socket);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(!socket.exists());
}
