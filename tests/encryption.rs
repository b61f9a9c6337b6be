//! Encryption at rest with the original DWBase's configuration (`[node.storage]
//! encryption_enabled = true, key_id = "K"`, key in `DWBASE_KEY_K`), through the real binaries:
//! no payload byte in plain text anywhere on disk (data dir, sled files, backups), a missing,
//! wrong or unconfigured key is a start-up error naming the variable, backups stay encrypted and
//! verify without the key, and a restored backup opens with it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::dwbase::Deployment;
use support::node::{start_node_env, NodeProcess, Started};

const KEY_ID: &str = "it-key";
const VAR: &str = "DWBASE_KEY_IT_KEY";
/// Words that occur only in what the test stores: in a payload, a label, a world description.
const SECRETS: [&str; 3] = ["zqxplumbusword", "vexlabelword", "quorbdescription"];

fn key_hex(byte: u8) -> String {
    hex::encode([byte; 32])
}

/// A config for the node folder `dir/enc` (data, logs, summaries), written as
/// `dir/enc-encrypted.toml` or `dir/enc-plain.toml`.
fn config(dir: &Path, encrypted: bool) -> PathBuf {
    let storage = if encrypted {
        format!("[node.storage]\nencryption_enabled = true\nkey_id = \"{KEY_ID}\"\n")
    } else {
        String::new()
    };
    let path = dir.join(if encrypted { "enc-encrypted.toml" } else { "enc-plain.toml" });
    let text = format!(
        "[node]\nid = \"enc\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"enc/data\"\n\
         log_dir = \"enc/logs\"\nsummaries_dir = \"enc/summaries\"\n\
         [node.security]\nremember_per_sec = 0\nask_per_min = 0\n{storage}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, key: Option<&str>) -> Started {
    let env: Vec<(&str, &str)> = key.map(|k| (VAR, k)).into_iter().collect();
    start_node_env(config, &[], &env, Duration::from_secs(30))
}

fn must_start(config: &Path, key: Option<&str>) -> NodeProcess {
    match start(config, key) {
        Started::Listening(n) => n,
        Started::Exited(status, stderr) => panic!("exited ({status}):\n{stderr}"),
    }
}

fn refused(config: &Path, key: Option<&str>) -> String {
    match start(config, key) {
        Started::Listening(n) => panic!("started on {} but should have been refused", n.addr),
        Started::Exited(status, stderr) => {
            assert!(!status.success(), "{stderr}");
            stderr
        }
    }
}

fn post(node: &NodeProcess, path: &str, body: Value) -> Value {
    let (status, text) = node.call("POST", path, Some(&body.to_string()));
    assert!((200..300).contains(&status), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn stop(mut node: NodeProcess) -> String {
    support::kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = node.wait_exit(Duration::from_secs(30)).expect("node exits on SIGTERM");
    assert!(status.success(), "{status}: {stderr}");
    stderr
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    for word in SECRETS {
        assert!(
            !bytes.windows(word.len()).any(|w| w == word.as_bytes()),
            "{what} holds {word:?} in plain text"
        );
    }
}

fn assert_dir_has_no_secret(dir: &Path) {
    let all = files(dir);
    assert!(!all.is_empty(), "files under {}", dir.display());
    for (path, bytes) in all {
        assert_no_secret(&path.display().to_string(), &bytes);
    }
}

/// The tar inside a `.tzst`, decompressed.
fn backup_plain_bytes(archive: &Path) -> Vec<u8> {
    zstd::stream::decode_all(std::fs::File::open(archive).unwrap()).unwrap()
}

fn replay_len(node: &NodeProcess, world: &str) -> usize {
    post(node, "/replay", json!({"world": world})).as_array().unwrap().len()
}

#[test]
fn an_encrypted_node_leaves_no_plain_text_and_needs_its_key() {
    let d = Deployment::new();
    let dir = d.dir.path();
    let conf = config(dir, true);
    let key = key_hex(0x42);
    let node = must_start(&conf, Some(&key));
    node.wait_ready(Duration::from_secs(30));
    post(
        &node,
        "/worlds/manage",
        json!({"action": "create", "world": "vault", "description": SECRETS[2], "labels": ["x"]}),
    );
    for i in 0..40 {
        let payload = json!({"text": format!("{} number {i}", SECRETS[0])}).to_string();
        post(
            &node,
            "/remember",
            json!({"world": "vault", "worker": "w", "kind": "observation", "importance": 0.5,
                   "payload_json": payload, "labels": [SECRETS[1]]}),
        );
    }
    // Everything reads back through the node, and asks still find the words.
    assert_eq!(replay_len(&node, "vault"), 40);
    let answer = post(&node, "/ask", json!({"world": "vault", "text": SECRETS[0]}));
    assert_eq!(answer["supporting_atoms"].as_array().unwrap().len(), 10, "{answer}");
    // A backup through the running node.
    let online = dir.join("online.tzst");
    let url = format!("http://{}", node.addr);
    d.run(&["backup", "create", "--api", &url, "--out", online.to_str().unwrap()]).ok();
    let stderr = stop(node);
    assert_no_secret("the node's log", stderr.as_bytes());

    let data = dir.join("enc/data");
    assert!(data.join("db").is_file() && data.join("conf").is_file(), "sled's files");
    assert_dir_has_no_secret(&data);
    assert_dir_has_no_secret(&dir.join("enc/summaries"));
    // An offline backup needs no key either; neither does verify.
    let offline = dir.join("offline.tzst");
    d.run(&[
        "backup",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        offline.to_str().unwrap(),
    ])
    .ok();
    for archive in [&online, &offline] {
        assert_no_secret(&archive.display().to_string(), &backup_plain_bytes(archive));
        let v = d.run(&["backup", "verify", archive.to_str().unwrap()]).ok();
        assert!(v.stdout.contains("OK"), "{v}");
    }

    // Missing key, wrong key, no [node.storage]: refused, naming the variable.
    let err = refused(&conf, None);
    assert!(err.contains(VAR) && err.contains("not set"), "{err}");
    let err = refused(&conf, Some(&key_hex(0x43)));
    assert!(err.contains(VAR) && err.contains("wrong key"), "{err}");
    let err = refused(&conf, Some("abc"));
    assert!(err.contains(VAR) && err.contains("hex"), "{err}");
    let plain_conf = config(dir, false);
    let err = refused(&plain_conf, None);
    assert!(err.contains(VAR) && err.contains("encryption_enabled = true"), "{err}");
    assert!(err.contains(&format!("key_id = \"{KEY_ID}\"")), "{err}");

    // The right key: everything is still there.
    let node = must_start(&conf, Some(&key));
    assert_eq!(replay_len(&node, "vault"), 40);
    stop(node);

    // A restored backup stays encrypted and opens with the key.
    let restored = dir.join("enc/data");
    d.run(&[
        "backup",
        "restore",
        "--input",
        online.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
        "--force",
    ])
    .ok();
    assert_dir_has_no_secret(&restored);
    let err = refused(&conf, None);
    assert!(err.contains(VAR), "{err}");
    let node = must_start(&conf, Some(&key));
    assert_eq!(replay_len(&node, "vault"), 40);
    let (status, body) = node.call("GET", "/worlds", None);
    assert_eq!((status, body.as_str()), (200, "[\"vault\"]"));
    stop(node);
}

#[test]
fn a_plain_store_is_not_silently_mixed_with_encrypted_records() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = config(tmp.path(), false);
    let node = must_start(&plain, None);
    post(
        &node,
        "/remember",
        json!({"world": "w", "worker": "a", "kind": "plan", "importance": 0.1, "payload_json": "x"}),
    );
    stop(node);
    let encrypted = config(tmp.path(), true);
    let err = refused(&encrypted, Some(&key_hex(1)));
    assert!(err.contains("unencrypted") && err.contains("dwbase storage migrate"), "{err}");
    // Nothing was changed: the plain node still starts.
    let node = must_start(&plain, None);
    assert_eq!(replay_len(&node, "w"), 1);
    stop(node);
}
