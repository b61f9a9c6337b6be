//! The original DWBase's own config files (copied verbatim from greentic-ai/greentic-dwbase
//! v0.1.5 into `tests/fixtures/original-configs/`) load unchanged and start the real
//! `dwbase-node`, with only `listen` and `data_dir` overridden by environment; the ones that bind
//! 0.0.0.0 without a key are refused with a message saying how to add a key or opt out; an
//! unsupported embedder is named; and a relative `data_dir` that the original would have found
//! in the working directory is reported instead of starting empty.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dwbase_node::Config;
use serde_json::Value;
use support::node::{start_node_env, NodeProcess, Started};
use support::poll_until;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/original-configs")
}

/// Every original config as (name, TOML text); the k8s ConfigMap's `config.toml` is extracted.
fn original_configs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(fixtures()).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => out.push((name, text)),
            Some("yaml") => {
                let doc: Value = yaml_serde::from_str(&text).unwrap();
                let toml = doc["data"]["config.toml"].as_str().expect("ConfigMap config.toml");
                out.push((name, toml.to_owned()));
            }
            _ => {}
        }
    }
    assert!(out.len() >= 6, "expected the original's six config files, found {out:?}");
    out
}

/// Writes `text` as `dir/name.toml`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_original_config_loads_unchanged() {
    for (name, text) in original_configs() {
        let config = Config::from_toml_str(&text, Path::new("/etc/dwbase").join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.node.embedder, "dummy", "{name}");
        assert!(!config.node.storage.encryption_enabled, "{name}");
    }
    // The meaning of the original's keys is kept.
    let text = std::fs::read_to_string(fixtures().join("deploy-edge.toml")).unwrap();
    let edge = Config::from_toml_str(&text, "edge.toml").unwrap();
    assert_eq!(edge.node.security.importance_cap, 0.8);
    assert_eq!(edge.node.security.remember_per_sec, 2.0);
    assert_eq!(edge.node.health.disk_usage_degraded, 0.85);
    assert_eq!(edge.node.health.index_rebuild_warn_seconds, 60, "the original's default");
}

#[test]
fn every_original_config_starts_a_node_with_listen_and_data_dir_from_env() {
    for (name, text) in original_configs() {
        let tmp = tempfile::tempdir().unwrap();
        let config = write(tmp.path(), "node", &text);
        let data = tmp.path().join("data");
        let env = [("DWBASE_LISTEN", "127.0.0.1:0"), ("DWBASE_DATA_DIR", data.to_str().unwrap())];
        let node = match start_node_env(&config, &[], &env, Duration::from_secs(30)) {
            Started::Listening(n) => n,
            Started::Exited(status, stderr) => panic!("{name}: exited ({status}):\n{stderr}"),
        };
        // Not /readyz: the shared machine's disk may be over the template's threshold, which
        // is the node's business to report (below), not a reason for this test to fail.
        // The index of an empty store is rebuilt in a moment; its "rebuilding" message is not
        // what this test looks at.
        let h: Value = poll_until("the index rebuilt", Duration::from_secs(20), || {
            let (status, body) = node.call("GET", "/health", None);
            assert_eq!(status, 200, "{name}: {body}");
            let h: Value = serde_json::from_str(&body).unwrap();
            (h["checks"]["index"]["status"] == "ok").then_some(h)
        });
        // The original's fields and values, next to ours.
        let verdict = h["status"].as_str().unwrap();
        assert!(verdict == "ready" || verdict == "degraded", "{name}: {h}");
        if verdict == "degraded" {
            assert!(h["message"].as_str().unwrap().contains("disk usage"), "{name}: {h}");
        } else {
            assert!(h["message"].is_null(), "{name}: {h}");
        }
        for key in ["used_bytes", "total_bytes", "percent_used"] {
            assert!(h["disk_usage"][key].is_number(), "{name}: {key} in {h}");
        }
        assert!(h.get("index_rebuild_lag_ms").is_some(), "{name}: {h}");
        assert!(data.join("db").is_file(), "{name}: the store is where DWBASE_DATA_DIR says");
        drop(node);
    }
}

#[test]
fn original_configs_on_0_0_0_0_without_a_key_are_refused_with_a_way_out() {
    let mut refused = 0;
    for (name, text) in original_configs() {
        if !text.contains("0.0.0.0") {
            continue;
        }
        refused += 1;
        let tmp = tempfile::tempdir().unwrap();
        let config = write(tmp.path(), "node", &text);
        let data = tmp.path().join("data");
        let env = [("DWBASE_DATA_DIR", data.to_str().unwrap())];
        match start_node_env(&config, &[], &env, Duration::from_secs(30)) {
            Started::Listening(n) => panic!("{name}: listened on {} without a key", n.addr),
            Started::Exited(status, stderr) => {
                assert_eq!(status.code(), Some(2), "{name}: {stderr}");
                for hint in
                    ["0.0.0.0:8080", "api_key_file", "openssl rand -hex 32", "allow_insecure"]
                {
                    assert!(stderr.contains(hint), "{name}: {hint:?} missing from:\n{stderr}");
                }
            }
        }
        // Adding a key, as the message says, is enough.
        std::fs::write(tmp.path().join("node.key"), "k3y-for-the-test\n").unwrap();
        let with_key =
            text.replace("[node.security]", "[node.security]\napi_key_file = \"node.key\"");
        let config = write(tmp.path(), "keyed", &with_key);
        let env = [("DWBASE_DATA_DIR", data.to_str().unwrap()), ("DWBASE_LISTEN", "127.0.0.1:0")];
        let node = NodeProcess::start_env(&config, &[], &env);
        let (status, _) = node.call("GET", "/worlds", None);
        assert_eq!(status, 401, "{name}: the key is required");
    }
    assert_eq!(refused, 2, "edge and the k8s ConfigMap bind 0.0.0.0");
}

#[test]
fn an_unsupported_embedder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        write(tmp.path(), "node", "[node]\nlisten = \"127.0.0.1:0\"\nembedder = \"openai\"\n");
    match start_node_env(&config, &[], &[], Duration::from_secs(30)) {
        Started::Listening(_) => panic!("started with embedder = openai"),
        Started::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("node.embedder") && stderr.contains("\"dummy\""), "{stderr}");
            assert!(stderr.contains("node.toml:"), "names the file: {stderr}");
        }
    }
}

/// The original resolved `data_dir = "./data"` against the working directory. Started from the
/// folder where the original kept its store, with a config elsewhere, our node would look in
/// the config's folder and serve an empty store: it refuses and names both folders.
#[test]
fn a_relative_data_dir_the_original_found_elsewhere_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (conf_dir, work) = (tmp.path().join("etc"), tmp.path().join("work"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    // A store in <work>/data, as the original would have made from <work>.
    let seed = write(
        &work,
        "seed",
        &format!("[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n", work.join("data")),
    );
    drop(NodeProcess::start(&seed, &[])); // killed and waited for: its lock is gone
    let config =
        write(&conf_dir, "node", "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"./data\"\n");
    let mut cmd = std::process::Command::new(support::node::node_bin());
    cmd.arg("--config").arg(&config).current_dir(&work);
    for var in support::node::NODE_ENV {
        cmd.env_remove(var);
    }
    let out = support::run_with_deadline(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let work_data = std::fs::canonicalize(work.join("data")).unwrap();
    assert!(out.stderr.contains(&conf_dir.join("data").display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains(&work_data.display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("absolute path"), "{}", out.stderr);
    assert!(!conf_dir.join("data/db").exists(), "nothing was created in the empty location");

    // Once the config says which store it means, the node starts on it.
    let fixed = write(
        &conf_dir,
        "fixed",
        &format!("[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n", work_data),
    );
    drop(NodeProcess::start(&fixed, &[]));
}
