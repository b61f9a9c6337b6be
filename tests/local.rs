//! `dwbase deploy local` with each template of `deploy/` (each on a free port: the templates
//! all say 8080, which parallel tests cannot share). edge.toml binds every interface and so
//! needs an API key: on first run, as from a fresh clone, `deploy local` creates its missing key
//! file (0600, 32 random bytes as hex) and says where it is and how to use it. Each config's
//! node gets its own folder, named by its id, so the edge node and the local node never share a
//! store.

mod support;

use std::time::Duration;

use dwbase_proto::Group;
use support::dwbase::{set_toml_key, template, Deployment};
use support::{free_port, http, pid_alive, poll_until};

/// Deploys `config_text` as the local node and checks what `deploy local` prints, that the
/// node answers, that status sees it, and that stop leaves nothing running.
fn deploy_local_and_stop(d: &Deployment, config_text: &str, expect_id: &str, host: &str) {
    let port = free_port();
    let text = set_toml_key(config_text, "listen", &format!("\"{host}:{port}\""));
    let cfg = d.dir.path().join("node.toml");
    std::fs::write(&cfg, text).unwrap();

    let out = d.run(&["deploy", "local", "--config", cfg.to_str().unwrap()]).ok();
    let field = |name: &str| -> String {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name}: line\n{out}"))
            .trim()
            .to_owned()
    };
    assert_eq!(field("id"), expect_id, "{out}");
    assert_eq!(field("endpoint"), format!("http://127.0.0.1:{port}"), "{out}");
    let local = d.paths().node_dir(Group::Local, expect_id);
    assert_eq!(field("data"), local.join("data").display().to_string(), "{out}");
    assert_eq!(field("logs"), local.join("logs").display().to_string(), "{out}");
    assert_eq!(field("summaries"), local.join("summaries").display().to_string(), "{out}");
    assert_eq!(field("config"), local.join("config.toml").display().to_string(), "{out}");
    let pid: u32 = field("pid").parse().unwrap();
    assert!(pid_alive(pid));

    let (code, body) = http("GET", &format!("127.0.0.1:{port}"), "/readyz", None);
    assert_eq!(code, 200, "{body}");
    // The supervisor makes the node's folder and config; the folders inside are made by the
    // processes that write there (the node its data and summaries, the log pipe its logs).
    assert!(local.join("data").is_dir() && local.join("summaries").is_dir(), "{out}");
    poll_until("the log pipe to open the node's log", Duration::from_secs(10), || {
        local.join("logs/node.log").is_file().then_some(())
    });

    let js = d.run(&["deploy", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    assert_eq!(v["nodes"][0]["group"], "local", "{js}");
    assert_eq!(v["nodes"][0]["state"], "ready", "{js}");

    d.run(&["deploy", "stop"]).ok();
    poll_until("the local node to exit", Duration::from_secs(5), || {
        (!pid_alive(pid)).then_some(())
    });
}

#[test]
fn local_template() {
    let d = Deployment::new();
    deploy_local_and_stop(&d, &template("local.toml"), "local", "127.0.0.1");
}

#[test]
fn devnet_template_as_a_local_node() {
    let d = Deployment::new();
    // Its swarm has no peers until `deploy devnet` rewrites it; alone it simply runs.
    deploy_local_and_stop(&d, &template("devnet.toml"), "node-a", "127.0.0.1");
}

#[test]
fn edge_template_with_its_key_file() {
    let d = Deployment::new();
    let key = d.dir.path().join("edge.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let text = set_toml_key(&template("edge.toml"), "api_key_file", &format!("{key:?}"));
    deploy_local_and_stop(&d, &text, "edge", "0.0.0.0");
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A fresh clone: `deploy/edge.toml` as shipped (only its port changed) and no `deploy/edge.key`.
/// The first `deploy local --config deploy/edge.toml`, run from the clone, creates the key and
/// starts the node with it, in its own folder; the local node deployed next has its own store;
/// deploying edge again keeps the key and finds the edge node's atoms.
#[test]
fn edge_first_run_from_a_fresh_clone_creates_its_key_and_keeps_its_own_store() {
    let d = Deployment::new();
    let clone = d.dir.path();
    std::fs::create_dir_all(clone.join("deploy")).unwrap();
    let edge_port = free_port();
    let edge = set_toml_key(&template("edge.toml"), "listen", &format!("\"0.0.0.0:{edge_port}\""));
    std::fs::write(clone.join("deploy/edge.toml"), edge).unwrap();
    let key_file = clone.join("deploy/edge.key");
    assert!(!key_file.exists());

    let out = d.run(&["deploy", "local", "--config", "deploy/edge.toml"]).ok();
    assert!(out.stderr.contains(&key_file.display().to_string()), "names the key file\n{out}");
    assert!(out.stderr.contains("--node edge") && out.stderr.contains("Bearer"), "says how\n{out}");
    assert_eq!(mode_of(&key_file), 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap().trim_end().to_owned();
    assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key:?}");
    let edge_dir = d.paths().node_dir(Group::Local, "edge");
    assert_ne!(edge_dir, d.paths().node_dir(Group::Local, "local"));
    assert!(out.stdout.contains(&edge_dir.join("data").display().to_string()), "{out}");

    // The node runs with that key: refused without it, answered with it.
    let addr = format!("127.0.0.1:{edge_port}");
    let (code, body) = http("GET", &addr, "/worlds", None);
    assert_eq!(code, 401, "{body}");
    let api = format!("http://{addr}");
    let stored = d.run(&["remember", "shed", "edge only", "--api", &api, "--api-key", &key]).ok();
    assert!(!stored.stdout.trim().is_empty(), "{stored}");
    let ask = |port: u16, key: Option<&str>| {
        let api = format!("http://127.0.0.1:{port}");
        let mut args = vec!["replay", "shed", "--json", "--api", &api];
        if let Some(k) = key {
            args.extend(["--api-key", k]);
        }
        let out = d.run(&args).ok();
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}\n{out}"))
    };
    assert_eq!(ask(edge_port, Some(&key)).as_array().map(Vec::len), Some(1));
    // As the notice says: by node name the key is found without being given.
    let listed = d.run(&["list-worlds", "--node", "edge"]).ok();
    assert!(listed.stdout.contains("shed"), "{listed}");
    d.run(&["deploy", "stop"]).ok();

    // The local node: its own folder, and none of the edge node's atoms.
    let local_port = free_port();
    let local =
        set_toml_key(&template("local.toml"), "listen", &format!("\"127.0.0.1:{local_port}\""));
    std::fs::write(clone.join("deploy/local.toml"), local).unwrap();
    let out = d.run(&["deploy", "local", "--config", "deploy/local.toml"]).ok();
    let local_dir = d.paths().node_dir(Group::Local, "local");
    assert!(out.stdout.contains(&local_dir.join("data").display().to_string()), "{out}");
    assert_eq!(ask(local_port, None).as_array().map(Vec::len), Some(0), "edge's atom leaked");
    d.run(&["deploy", "stop"]).ok();

    // Edge again: same key, no new one announced, its atom still there.
    let out = d.run(&["deploy", "local", "--config", "deploy/edge.toml"]).ok();
    assert!(!out.stderr.contains("Created the API key file"), "{out}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim_end(), key);
    assert_eq!(ask(edge_port, Some(&key)).as_array().map(Vec::len), Some(1));
}

#[test]
fn a_dry_run_creates_no_key_file() {
    let d = Deployment::new();
    let cfg = d.dir.path().join("edge.toml");
    std::fs::write(&cfg, template("edge.toml")).unwrap();
    let out =
        d.run(&["deploy", "local", "--dry-run", "--config", cfg.to_str().unwrap()]).code_is(1);
    assert!(out.stderr.contains("would create the API key file"), "{out}");
    assert!(!d.dir.path().join("edge.key").exists(), "{out}");
    assert!(d.supervisor_pid().is_none(), "nothing may be started\n{out}");
}

#[test]
fn a_local_node_id_that_is_not_a_folder_name_is_refused() {
    let d = Deployment::new();
    for id in ["data", "../elsewhere"] {
        let text = set_toml_key(&template("local.toml"), "id", &format!("{id:?}"));
        let text = set_toml_key(&text, "listen", &format!("\"127.0.0.1:{}\"", free_port()));
        let cfg = d.dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = d.run(&["deploy", "local", "--config", cfg.to_str().unwrap()]).code_is(1);
        assert!(out.stderr.contains("node.id") && out.stderr.contains(id), "{out}");
    }
}

/// A node that cannot start says why to its supervisor, not only in its own log: `deploy
/// status` (the table's notes and `last_exit.reason`) and the supervisor's log name the node
/// and the reason. (tests/disk_full.rs does the same with the whole deployment on a full disk.)
#[test]
fn why_a_node_cannot_start_reaches_status_and_the_supervisor_log() {
    let d = Deployment::new();
    let port = free_port();
    let text = set_toml_key(&template("local.toml"), "listen", &format!("\"127.0.0.1:{port}\""));
    let cfg = d.dir.path().join("node.toml");
    std::fs::write(&cfg, text).unwrap();
    d.run(&["deploy", "local", "--config", cfg.to_str().unwrap()]).ok();
    d.run(&["deploy", "stop"]).ok();
    // Its data dir is a file now: the store cannot open.
    let data = d.paths().node_dir(Group::Local, "local").join("data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a store").unwrap();
    let out = d.run(&["deploy", "local", "--config", cfg.to_str().unwrap(), "--timeout", "5s"]);
    assert_ne!(out.code(), 0, "{out}");
    let reason = poll_until("status to say why", Duration::from_secs(20), || {
        let js = d.run(&["deploy", "status", "--json", "--no-start"]);
        let v: serde_json::Value = serde_json::from_str(&js.stdout).ok()?;
        v["nodes"][0]["last_exit"]["reason"].as_str().map(str::to_owned)
    });
    assert!(reason.contains(&data.display().to_string()), "{reason}");
    assert!(out.stderr.contains(&reason), "deploy's failure report shows it:\n{out}");
    let log = std::fs::read_to_string(d.paths().supervisor_log()).unwrap();
    let line = log.lines().find(|l| l.contains(&reason)).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("local") && line.contains("exit 1"), "{line}");
    d.run(&["deploy", "stop"]).ok();
}
