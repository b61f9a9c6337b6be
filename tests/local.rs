//! `dwbase deploy local` with each template of `deploy/` (each on a free port: the templates
//! all say 8080, which parallel tests cannot share). edge.toml binds every interface and so
//! needs an API key: as shipped its key file is missing and the deploy is refused clearly;
//! with a key file, as the template documents, it runs.

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
    let local = d.paths().group_dir(Group::Local);
    assert_eq!(field("data"), local.join("data").display().to_string(), "{out}");
    assert_eq!(field("logs"), local.join("logs").display().to_string(), "{out}");
    assert_eq!(field("summaries"), local.join("summaries").display().to_string(), "{out}");
    assert_eq!(field("config"), local.join("config.toml").display().to_string(), "{out}");
    let pid: u32 = field("pid").parse().unwrap();
    assert!(pid_alive(pid));

    let (code, body) = http("GET", &format!("127.0.0.1:{port}"), "/readyz", None);
    assert_eq!(code, 200, "{body}");

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

#[test]
fn edge_template_as_shipped_is_refused_without_its_key() {
    let d = Deployment::new();
    let cfg = d.dir.path().join("edge.toml");
    std::fs::write(&cfg, template("edge.toml")).unwrap();
    let out = d.run(&["deploy", "local", "--config", cfg.to_str().unwrap()]).code_is(1);
    assert!(out.stderr.contains("api_key_file"), "{out}");
    assert!(out.stderr.contains(cfg.to_str().unwrap()), "the error names the file\n{out}");
    assert!(!d.paths().socket().exists(), "nothing may be started\n{out}");
    assert!(d.supervisor_pid().is_none(), "nothing may be started\n{out}");
}
