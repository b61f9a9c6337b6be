//! Deploy requests: validation, port checks, idempotence, conflicts, rendered configs, env.

mod support;

use std::time::Duration;

use dwbase_proto::{ErrorKind, Group, LocalSpec, Request, Response, RestartPolicy};
use support::*;

fn error_kind(r: &Response) -> ErrorKind {
    match r {
        Response::Error(e) => e.kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_nodes_is_a_bad_request() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let r = f.request(Request::DeployDevnet(devnet(0, 7000, RestartPolicy::Always))).await;
    assert_eq!(error_kind(&r), ErrorKind::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_refused_and_nothing_is_spawned() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let base = free_ports(3);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let r = f.request(Request::DeployDevnet(devnet(3, base, RestartPolicy::Always))).await;
    match &r {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::PortInUse);
            assert!(
                e.message.contains(&(base + 1).to_string()) && e.message.contains("node-b"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(f.status().await.nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_size_is_idempotent_other_size_conflicts_and_configs_are_rendered() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let base = free_ports(3);
    let mut spec = devnet(3, base, RestartPolicy::Always);
    spec.swarm = true;
    let first = match f.request(Request::DeployDevnet(spec.clone())).await {
        Response::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let names: Vec<_> = first.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);
    let pids = poll_until("all spawned", Duration::from_secs(10), || async {
        let p: Vec<u32> = f.status().await.nodes.iter().filter_map(|n| n.pid).collect();
        (p.len() == 3).then_some(p)
    })
    .await;
    // Again, same size: the same nodes.
    match f.request(Request::DeployDevnet(spec.clone())).await {
        Response::Status(s) => {
            let again: Vec<u32> = s.nodes.iter().filter_map(|n| n.pid).collect();
            assert_eq!(again, pids);
        }
        other => panic!("{other:?}"),
    }
    // Another size: conflict.
    let mut bigger = spec.clone();
    bigger.nodes = 4;
    let r = f.request(Request::DeployDevnet(bigger)).await;
    assert_eq!(error_kind(&r), ErrorKind::Conflict);

    // The rendered config of node-b.
    let cfg = f.paths.node_dir(Group::Devnet, "node-b").join("config.toml");
    let doc: toml::Table = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    let node = doc["node"].as_table().unwrap();
    assert_eq!(node["id"].as_str(), Some("node-b"));
    assert_eq!(node["listen"].as_str().unwrap(), format!("127.0.0.1:{}", base + 1));
    let peers = node["swarm"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert!(dwbase_node::config::Config::load(&cfg).is_ok());

    // The node saw its own data dir and id, and the spec's env.
    let pid = pids[1];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<String> =
        environ.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    let data = f.paths.node_dir(Group::Devnet, "node-b").join("data");
    assert!(env.contains(&format!("DWBASE_DATA_DIR={}", data.display())), "{env:?}");
    assert!(env.contains(&"DWBASE_NODE_ID=node-b".to_owned()));
    assert!(env.contains(&"FAKE_NODE_EXTRA=1".to_owned()));
    // Each node leads its own process group.
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, pid);

    // state.json lists them with pids and start times.
    let st = f.state(Group::Devnet).unwrap();
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.pid.is_some() && n.start_time.is_some()));
    assert_eq!(st.supervisor.unwrap().pid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_is_bad_config_before_anything_runs() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let t = f.dir.path().join("bad.toml");
    std::fs::write(&t, "[node]\nlisten = \"127.0.0.1:1\"\nno_such_key = 1\n").unwrap();
    let mut spec = devnet(2, free_ports(2), RestartPolicy::Always);
    spec.template = Some(t);
    let r = f.request(Request::DeployDevnet(spec)).await;
    match &r {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadConfig);
            assert!(e.message.contains("no_such_key"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(f.status().await.nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_deploys_one_node_named_after_its_id() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let port = free_ports(1);
    let cfg = f.dir.path().join("local.toml");
    std::fs::write(&cfg, format!("[node]\nid = \"laptop\"\nlisten = \"127.0.0.1:{port}\"\n"))
        .unwrap();
    let spec = LocalSpec {
        config: Some(cfg),
        restart_policy: RestartPolicy::OnFailure,
        env: vec![],
        stop_timeout_ms: 500,
    };
    match f.request(Request::DeployLocal(spec.clone())).await {
        Response::Status(s) => {
            assert_eq!(s.nodes.len(), 1);
            let n = &s.nodes[0];
            assert_eq!((n.name.as_str(), n.group, n.port), ("laptop", Group::Local, port));
            assert_eq!(n.dir, f.paths.node_dir(Group::Local, "laptop"));
        }
        other => panic!("{other:?}"),
    }
    assert!(f.paths.node_dir(Group::Local, "x").join("config.toml").exists());
    assert!(f.state(Group::Local).unwrap().nodes.len() == 1);
    // Idempotent.
    assert!(matches!(f.request(Request::DeployLocal(spec)).await, Response::Status(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_with_port_0_is_refused_as_bad_config_instead_of_starting_forever() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let cfg = f.dir.path().join("any-port.toml");
    std::fs::write(&cfg, "[node]\nid = \"local\"\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let r = f
        .request(Request::DeployLocal(LocalSpec {
            config: Some(cfg.clone()),
            restart_policy: RestartPolicy::Always,
            env: vec![],
            stop_timeout_ms: 500,
        }))
        .await;
    match &r {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadConfig);
            assert_eq!(
                e.message,
                format!(
                    "deploy local needs a fixed port in {} [node] listen; port 0 cannot be probed",
                    cfg.display()
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(f.status().await.nodes.is_empty(), "nothing spawned");
}
