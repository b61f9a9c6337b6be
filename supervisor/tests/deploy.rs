//! Deploy requests against an in-process supervisor with fake nodes: validation, port checks,
//! plans (add, unchanged, replace, update, remove), dry runs, scaling, rendered configs, env.
//! (Rollouts of real nodes becoming ready are in `tests/reconcile.rs`.)

mod support;

use std::time::Duration;

use dwbase_proto::{
    ErrorKind, Group, LivenessSpec, LocalSpec, PlanAction, Request, Response, RestartPolicy,
};
use support::*;

fn actions(s: &DeployStream) -> Vec<(String, PlanAction)> {
    s.plan.as_ref().expect("a plan").steps.iter().map(|p| (p.node.clone(), p.action)).collect()
}

async fn pids(f: &Fixture) -> Vec<Option<u32>> {
    f.status().await.nodes.iter().map(|n| n.pid).collect()
}

async fn all_spawned(f: &Fixture, n: usize) -> Vec<u32> {
    poll_until("every node spawned", Duration::from_secs(10), || async {
        let s = f.status().await;
        let p: Vec<u32> = s.nodes.iter().filter_map(|n| n.pid).collect();
        (s.nodes.len() == n && p.len() == n).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_nodes_is_a_bad_request() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let r = f.deploy_request(Request::DeployDevnet(devnet(0, 7000, RestartPolicy::Always))).await;
    assert!(r.plan.is_none());
    assert_eq!(r.error_kind(), ErrorKind::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_refused_before_anything_is_spawned() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let base = free_ports(3);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let r = f.deploy_request(Request::DeployDevnet(devnet(3, base, RestartPolicy::Always))).await;
    assert!(r.plan.is_none(), "refused at planning");
    match &r.last {
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
async fn the_same_spec_twice_is_a_noop_and_configs_are_rendered() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let base = free_ports(3);
    let mut spec = devnet(3, base, RestartPolicy::Always);
    spec.swarm = true;
    let first = f.deploy_request(Request::DeployDevnet(spec.clone())).await;
    assert_eq!(
        actions(&first),
        vec![
            ("node-a".into(), PlanAction::Add),
            ("node-b".into(), PlanAction::Add),
            ("node-c".into(), PlanAction::Add)
        ]
    );
    // Fake nodes never answer /readyz: the rollout fails on readiness, and leaves them running.
    assert_eq!(first.error_kind(), ErrorKind::RolloutFailed);
    let pids = all_spawned(&f, 3).await;
    assert!(
        first.events.iter().any(|e| matches!(e.kind, dwbase_proto::EventKind::Spawned { .. })),
        "{:#?}",
        first.events
    );

    // Again: every node unchanged, same pids, nothing to wait for.
    let again = f.deploy_request(Request::DeployDevnet(spec.clone())).await;
    assert!(again.plan.as_ref().unwrap().is_noop(), "{:?}", again.plan);
    match &again.last {
        Response::Deployed(d) => {
            assert_eq!(
                d.warnings.len(),
                3,
                "unready nodes left alone are mentioned: {:?}",
                d.warnings
            );
        }
        other => panic!("{other:?}"),
    }
    let now: Vec<u32> = f.status().await.nodes.iter().filter_map(|n| n.pid).collect();
    assert_eq!(now, pids);

    // The rendered config of node-b.
    let cfg = f.paths.node_dir(Group::Devnet, "node-b").join("config.toml");
    let doc: toml::Table = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    let node = doc["node"].as_table().unwrap();
    assert_eq!(node["id"].as_str(), Some("node-b"));
    assert_eq!(node["listen"].as_str().unwrap(), format!("127.0.0.1:{}", base + 1));
    assert_eq!(node["swarm"]["peers"].as_array().unwrap().len(), 2);
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
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, pid, "each node leads its own process group");

    // state.json and every node's folder record them with pids and start times.
    let st = f.state(Group::Devnet).unwrap();
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.pid.is_some() && n.start_time.is_some()));
    assert_eq!(st.supervisor.unwrap().pid, std::process::id());
    for n in &st.nodes {
        let rec = dwbase_proto::state::NodeRecord::load_from(&n.dir).expect("node.json");
        assert_eq!((rec.pid, rec.start_time), (n.pid, n.start_time));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_planned_per_node_and_a_dry_run_changes_nothing() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let base = free_ports(4);
    let spec = devnet(3, base, RestartPolicy::Always);
    f.deploy_request(Request::DeployDevnet(spec.clone())).await;
    let before = all_spawned(&f, 3).await;

    // A changed env replaces every node; --dry-run only shows it.
    let mut changed = spec.clone();
    changed.env.push(("DWBASE_MAX_DISK_MB".into(), "8192".into()));
    changed.options.dry_run = true;
    let dry = f.deploy_request(Request::DeployDevnet(changed.clone())).await;
    let plan = dry.plan.clone().unwrap();
    assert!(plan.steps.iter().all(|s| s.action == PlanAction::Replace), "{plan:?}");
    assert!(
        plan.steps[0].changes.iter().any(|c| c == "env: DWBASE_MAX_DISK_MB unset → 8192"),
        "{:?}",
        plan.steps[0].changes
    );
    assert!(matches!(dry.last, Response::Done(_)), "{:?}", dry.last);
    assert_eq!(pids(&f).await, before.iter().copied().map(Some).collect::<Vec<_>>());

    // A changed restart policy or liveness is applied in place: same pids.
    let mut policy = spec.clone();
    policy.restart_policy = RestartPolicy::OnFailure;
    policy.liveness = Some(LivenessSpec { period_ms: 0, ..LivenessSpec::DEFAULT });
    let upd = f.deploy_request(Request::DeployDevnet(policy.clone())).await;
    assert!(actions(&upd).iter().all(|(_, a)| *a == PlanAction::Update), "{:?}", upd.plan);
    assert!(matches!(upd.last, Response::Deployed(_)), "{:?}", upd.last);
    assert_eq!(pids(&f).await, before.iter().copied().map(Some).collect::<Vec<_>>());
    let s = f.status().await;
    assert!(s.nodes.iter().all(|n| n.restart_policy == RestartPolicy::OnFailure));
    assert!(s.nodes.iter().all(|n| !n.liveness.enabled()));

    // Scale 3 → 4 adds node-d only; 4 → 2 removes c and d, keeping their folders.
    let mut four = policy.clone();
    four.nodes = 4;
    let up = f.deploy_request(Request::DeployDevnet(four)).await;
    assert_eq!(
        actions(&up),
        vec![
            ("node-d".into(), PlanAction::Add),
            ("node-a".into(), PlanAction::Unchanged),
            ("node-b".into(), PlanAction::Unchanged),
            ("node-c".into(), PlanAction::Unchanged)
        ]
    );
    let four_pids = all_spawned(&f, 4).await;
    assert_eq!(&four_pids[..3], &before[..]);
    // What node-d stored (a fake node writes nothing: stand in for it).
    let d_data = f.paths.node_dir(Group::Devnet, "node-d").join("data");
    std::fs::create_dir_all(&d_data).unwrap();
    std::fs::write(d_data.join("db"), "atoms").unwrap();
    let mut two = policy.clone();
    two.nodes = 2;
    let down = f.deploy_request(Request::DeployDevnet(two)).await;
    assert_eq!(
        actions(&down)[..2],
        [("node-c".into(), PlanAction::Remove), ("node-d".into(), PlanAction::Remove)]
    );
    assert!(matches!(down.last, Response::Deployed(_)), "{:?}", down.last);
    let s = f.status().await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    for p in &four_pids[2..] {
        assert!(!pid_alive(*p), "a removed node's process is gone");
    }
    assert_eq!(std::fs::read_to_string(d_data.join("db")).unwrap(), "atoms", "data kept");
    assert_eq!(f.state(Group::Devnet).unwrap().nodes.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_is_bad_config_before_anything_runs() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let t = f.dir.path().join("bad.toml");
    std::fs::write(&t, "[node]\nlisten = \"127.0.0.1:1\"\nno_such_key = 1\n").unwrap();
    let mut spec = devnet(2, free_ports(2), RestartPolicy::Always);
    spec.template = Some(template(&t));
    let r = f.deploy_request(Request::DeployDevnet(spec)).await;
    match &r.last {
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
        config: Some(template(&cfg)),
        restart_policy: RestartPolicy::OnFailure,
        env: vec![],
        stop_timeout_ms: 500,
        liveness: None,
        options: dwbase_proto::DeployOptions { ready_timeout_ms: 300, ..Default::default() },
    };
    let r = f.deploy_request(Request::DeployLocal(spec.clone())).await;
    assert_eq!(actions(&r), vec![("laptop".into(), PlanAction::Add)]);
    all_spawned(&f, 1).await;
    let s = f.status().await;
    let n = &s.nodes[0];
    assert_eq!((n.name.as_str(), n.group, n.port), ("laptop", Group::Local, port));
    assert_eq!(n.dir, f.paths.node_dir(Group::Local, "laptop"));
    assert!(f.state(Group::Local).unwrap().nodes.len() == 1);
    // Idempotent.
    let again = f.deploy_request(Request::DeployLocal(spec)).await;
    assert!(again.plan.unwrap().is_noop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_with_port_0_is_refused_as_bad_config_instead_of_starting_forever() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let cfg = f.dir.path().join("any-port.toml");
    std::fs::write(&cfg, "[node]\nid = \"local\"\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let r = f
        .deploy_request(Request::DeployLocal(LocalSpec {
            config: Some(template(&cfg)),
            restart_policy: RestartPolicy::Always,
            env: vec![],
            stop_timeout_ms: 500,
            liveness: None,
            options: Default::default(),
        }))
        .await;
    match &r.last {
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
