//! Clear errors, with nothing started: `--nodes 0`, a bad template, unknown node names,
//! `clean` without `--yes`; and `clean --yes` removing only what dwbase owns.

mod support;

use support::dwbase::Deployment;
use support::free_port_range;

#[test]
fn zero_nodes_is_a_usage_error_and_starts_nothing() {
    let d = Deployment::new();
    let out = d.run(&["deploy", "devnet", "--nodes", "0"]).code_is(2);
    assert!(out.stderr.contains("at least 1 node"), "{out}");
    assert!(!d.root.exists(), "nothing may be created\n{out}");
}

#[test]
fn a_bad_template_names_file_line_and_key_and_starts_nothing() {
    let d = Deployment::new();
    let tpl = d.dir.path().join("bad.toml");
    std::fs::write(&tpl, "[node]\nid = \"x\"\nlisten = \"127.0.0.1:7000\"\nlisten_port = 7\n")
        .unwrap();
    let out = d.run(&["deploy", "devnet", "--template", tpl.to_str().unwrap()]).code_is(1);
    assert!(out.stderr.contains(tpl.to_str().unwrap()), "names the file\n{out}");
    assert!(out.stderr.contains(":4:"), "names the line\n{out}");
    assert!(out.stderr.contains("listen_port"), "names the key\n{out}");
    assert!(!d.root.exists(), "nothing may be started\n{out}");

    let missing = d.dir.path().join("missing.toml");
    let out = d.run(&["deploy", "local", "--config", missing.to_str().unwrap()]).code_is(1);
    assert!(out.stderr.contains("missing.toml"), "{out}");
    assert!(!d.root.exists(), "nothing may be started\n{out}");
}

#[test]
fn unknown_nodes_are_named_with_the_known_ones() {
    let d = Deployment::new();
    // Nothing deployed: no supervisor is started just to say so.
    let out = d.run(&["deploy", "restart", "node-z"]).code_is(1);
    assert!(out.stderr.contains("node-z") && out.stderr.contains("nothing is deployed"), "{out}");
    assert!(d.supervisor_pid().is_none(), "{out}");

    let base = free_port_range(1).to_string();
    d.run(&["deploy", "devnet", "--nodes", "1", "--base-port", &base]).ok();
    for args in [
        &["deploy", "restart", "node-z"][..],
        &["deploy", "logs", "node-z"][..],
        &["deploy", "stop", "node-z"][..],
    ] {
        let out = d.run(args).code_is(1);
        assert!(
            out.stderr.contains("\"node-z\"") && out.stderr.contains("node-a"),
            "{args:?}\n{out}"
        );
    }
    // The devnet is untouched by the failed stop.
    let st = d.run(&["deploy", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["nodes"][0]["state"], "ready", "{st}");
}

#[test]
fn clean_needs_yes_and_removes_only_what_dwbase_owns() {
    let d = Deployment::new();
    let base = free_port_range(1).to_string();
    d.run(&["deploy", "devnet", "--nodes", "1", "--base-port", &base]).ok();
    let mine = d.root.join("notes.txt");
    std::fs::write(&mine, "keep me").unwrap();

    let out = d.run(&["deploy", "clean"]).code_is(2);
    assert!(out.stderr.contains("--yes"), "{out}");
    assert!(d.root.join("devnet").exists(), "{out}");

    let pids = d.node_pids();
    let out = d.run(&["deploy", "clean", "--yes"]).ok();
    for (name, pid, _) in pids {
        assert!(!support::pid_alive(pid), "{name} survived clean\n{out}");
    }
    assert!(!d.root.join("devnet").exists(), "{out}");
    assert!(!d.paths().socket().exists(), "{out}");
    assert!(mine.exists(), "clean removed a file it does not own\n{out}");
}

#[test]
fn a_bad_forwarded_limit_is_refused_naming_the_variable() {
    let d = Deployment::new();
    let mut cmd = d.cmd(&["deploy", "devnet", "--nodes", "1"]);
    cmd.env("DWBASE_MAX_DISK_MB", "lots");
    let out = support::run_with_deadline(&mut cmd, std::time::Duration::from_secs(30)).code_is(1);
    assert!(out.stderr.contains("DWBASE_MAX_DISK_MB"), "{out}");
    assert!(!d.root.exists(), "nothing may be started\n{out}");
}
