//! Converting stores written by the original DWBase (fixtures made by its own node, in
//! `tests/fixtures/dwbase-0.1.5`, see HOW.md there) with `dwbase storage migrate`, through the
//! real binaries: every atom and link the original's replay returned is served again by our
//! node (compared with the `*.expected.json` the original itself answered), encrypted stores
//! convert with their key and stay encrypted, colliding `atom-N` ids are renamed with their
//! links, and a node never starts on an original store as if it were empty.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::dwbase::Deployment;
use support::node::{start_node_env, NodeProcess, Started};

const VAR: &str = "DWBASE_KEY_FIXTURE_KEY";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dwbase-0.1.5")
}

fn key() -> String {
    std::fs::read_to_string(fixtures().join("key.hex")).unwrap().trim().to_owned()
}

fn expected(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{name}.expected.json"))).unwrap(),
    )
    .unwrap()
}

/// A writable copy of a fixture store.
fn copy_store(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(fixtures().join(name)).unwrap().flatten() {
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

fn node_config(dir: &Path, data: &Path, encrypted: bool) -> PathBuf {
    let storage = if encrypted {
        "[node.storage]\nencryption_enabled = true\nkey_id = \"fixture-key\"\n"
    } else {
        ""
    };
    let path = dir.join(format!("node-{}.toml", if encrypted { "enc" } else { "plain" }));
    std::fs::write(
        &path,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n[node.security]\n\
             remember_per_sec = 0\nask_per_min = 0\n{storage}"
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path, key: Option<&str>) -> Started {
    let env: Vec<(&str, &str)> = key.map(|k| (VAR, k)).into_iter().collect();
    start_node_env(config, &[], &env, Duration::from_secs(30))
}

fn json_call(node: &NodeProcess, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, text) = node.call(method, path, body.map(|b| b.to_string()).as_deref());
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn migrate(d: &Deployment, from: &Path, to: &Path, key: Option<&str>) -> support::Output {
    let mut cmd = d.cmd(&[
        "storage",
        "migrate",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    if let Some(k) = key {
        cmd.env(VAR, k);
    }
    support::run_with_deadline(&mut cmd, Duration::from_secs(60))
}

/// Starts a node on `data` and checks every world replays as the original answered, with
/// `rename` applied to ids (world, old id → new id) and to link targets within that world.
fn assert_serves_expected(
    dir: &Path,
    data: &Path,
    key: Option<&str>,
    expected: &Value,
    rename: &dyn Fn(&str, &str) -> Option<String>,
) -> NodeProcess {
    let node = match start(&node_config(dir, data, key.is_some()), key) {
        Started::Listening(n) => n,
        Started::Exited(status, stderr) => {
            panic!("node on the converted store exited ({status}):\n{stderr}")
        }
    };
    let mut atoms = 0;
    for (world, want) in expected.as_object().unwrap() {
        if world.starts_with("__") {
            continue;
        }
        let mut want = want.clone();
        for atom in want.as_array_mut().unwrap() {
            let id = atom["id"].as_str().unwrap().to_owned();
            if let Some(new) = rename(world, &id) {
                atom["id"] = json!(new);
            }
            for link in atom["links"].as_array_mut().unwrap() {
                let target = link["target"].as_str().unwrap().to_owned();
                if let Some(new) = rename(world, &target) {
                    link["target"] = json!(new);
                }
            }
        }
        let got = json_call(&node, "POST", "/replay", Some(json!({"world": world})));
        assert_eq!(got, want, "world {world}: every atom with every field, in the same order");
        atoms += want.as_array().unwrap().len();
    }
    assert!(atoms > 0);
    assert_eq!(json_call(&node, "GET", "/worlds", None), expected["__worlds__"], "listed worlds");
    node
}

fn no_rename(_: &str, _: &str) -> Option<String> {
    None
}

#[test]
fn a_plain_original_store_converts_with_every_atom_and_link() {
    let d = Deployment::new();
    let old = d.dir.path().join("old");
    copy_store("plain", &old);
    // Our node does not serve it as empty: it names the upgrade command.
    match start(&node_config(d.dir.path(), &old, false), None) {
        Started::Listening(n) => panic!("served an original store on {}", n.addr),
        Started::Exited(_, stderr) => {
            assert!(
                stderr.contains("original DWBase")
                    && stderr.contains("dwbase storage migrate --from"),
                "{stderr}"
            );
            assert!(stderr.contains("80 atoms in 5 worlds"), "{stderr}");
        }
    }
    let check = d.run(&["storage", "check", "--path", old.to_str().unwrap()]).code_is(1);
    assert!(check.stdout.contains("original DWBase: 80 atoms in 5 worlds"), "{check}");
    assert!(check.stderr.contains("dwbase storage migrate"), "{check}");

    let new = d.dir.path().join("new");
    let out = migrate(&d, &old, &new, None).ok();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["atoms"], 80, "{report}");
    assert_eq!(report["source_format"], "original");
    assert!(report["renamed"].as_array().unwrap().is_empty());
    let worlds = report["worlds"].as_array().unwrap();
    let old_world = worlds.iter().find(|w| w["world"] == "old").unwrap();
    assert_eq!(old_world["archived"], true, "archived by its world_status atom: {report}");
    let notes = worlds.iter().find(|w| w["world"] == "notes").unwrap();
    assert_eq!(notes["policy"], true, "policy:notes became the policy of notes: {report}");
    // The source is untouched: still an original store.
    let check = d.run(&["storage", "check", "--path", old.to_str().unwrap()]).code_is(1);
    assert!(check.stdout.contains("original DWBase"), "{check}");

    let node = assert_serves_expected(d.dir.path(), &new, None, &expected("plain"), &no_rename);
    // Archived worlds refuse writes; the converted store accepts new ones elsewhere.
    let atom = json!({"world": "old", "worker": "w", "kind": "plan", "importance": 0.1, "payload_json": "x"});
    assert_eq!(node.call("POST", "/remember", Some(&atom.to_string())).0, 409);
    let atom = json!({"world": "notes", "worker": "w", "kind": "plan", "importance": 0.1, "payload_json": "x"});
    assert_eq!(node.call("POST", "/remember", Some(&atom.to_string())).0, 200);
    drop(node);
    let check = d.run(&["storage", "check", "--path", new.to_str().unwrap()]).ok();
    assert!(
        check.stdout.contains("81 atoms") && check.stdout.contains("storage check OK"),
        "{check}"
    );
}

#[test]
fn an_encrypted_original_store_converts_with_its_key_and_stays_encrypted() {
    let d = Deployment::new();
    let old = d.dir.path().join("old");
    copy_store("encrypted", &old);
    let new = d.dir.path().join("new");
    let out = migrate(&d, &old, &new, None);
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        out.stderr.contains(VAR) && out.stderr.contains("fixture-key"),
        "names the variable: {out}"
    );
    assert!(!new.exists(), "nothing left behind");
    let out = migrate(&d, &old, &new, Some(&"00".repeat(32)));
    assert!(out.stderr.contains(VAR) && out.stderr.contains("wrong key"), "{out}");
    assert!(!new.exists());

    let out = migrate(&d, &old, &new, Some(&key())).ok();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (report["atoms"].as_u64(), report["target_key_id"].as_str()),
        (Some(80), Some("fixture-key")),
        "{report}"
    );
    // Encrypted like the source: no payload word in the new store's files.
    for f in std::fs::read_dir(&new).unwrap().flatten().filter(|f| f.path().is_file()) {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"wordnotes0x"),
            "{} holds plain text",
            f.path().display()
        );
    }
    drop(assert_serves_expected(
        d.dir.path(),
        &new,
        Some(&key()),
        &expected("encrypted"),
        &no_rename,
    ));

    // --plain decrypts into another folder, which a node without a key serves.
    let plain = d.dir.path().join("plain");
    let mut cmd = d.cmd(&[
        "storage",
        "migrate",
        "--from",
        new.to_str().unwrap(),
        "--to",
        plain.to_str().unwrap(),
        "--plain",
    ]);
    cmd.env(VAR, key());
    support::run_with_deadline(&mut cmd, Duration::from_secs(60)).ok();
    drop(assert_serves_expected(d.dir.path(), &plain, None, &expected("encrypted"), &no_rename));
}

#[test]
fn colliding_original_ids_are_renamed_with_their_links_and_reported() {
    let d = Deployment::new();
    let old = d.dir.path().join("old");
    copy_store("collide", &old);
    let new = d.dir.path().join("new");
    let out = migrate(&d, &old, &new, None).ok();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let exp = expected("collide");
    // The oldest atom keeps the id (here the first run's, which the original's GET answered).
    let keeper = exp["__get_atom_1__"]["world"].as_str().unwrap().to_owned();
    let other = if keeper == "first" { "second" } else { "first" };
    let renamed = report["renamed"].as_array().unwrap();
    assert_eq!(renamed.len(), 10, "every atom-N of one run: {report}");
    for r in renamed {
        assert_eq!(
            (r["world"].as_str(), r["kept_by"].as_str()),
            (Some(other), Some(keeper.as_str()))
        );
        assert_eq!(r["to"], format!("{}@{other}", r["from"].as_str().unwrap()));
    }
    assert_eq!(
        report["links_rewritten"], 9,
        "each atom of the renamed run links to the one before"
    );
    let other_world = other.to_owned();
    let rename =
        move |world: &str, id: &str| (world == other_world).then(|| format!("{id}@{world}"));
    let node = assert_serves_expected(d.dir.path(), &new, None, &exp, &rename);
    assert_eq!(json_call(&node, "GET", "/atoms/atom-1", None), exp["__get_atom_1__"]);
    let renamed_one = json_call(&node, "GET", &format!("/atoms/atom-1@{other}"), None);
    assert_eq!(renamed_one["world"], other);
}

#[test]
fn a_backup_made_by_the_original_cli_verifies_and_restores_converted() {
    let d = Deployment::new();
    let archive = fixtures().join("plain-backup.tzst");
    let v = d.run(&["backup", "verify", archive.to_str().unwrap()]).ok();
    assert!(
        v.stdout.contains("original DWBase") && v.stdout.contains("80 atoms in 5 worlds"),
        "{v}"
    );
    assert!(v.stdout.contains("crc32 checked"), "{v}");
    let v = d.run(&["backup", "verify", "--json", archive.to_str().unwrap()]).ok();
    let doc: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!((doc["format"].as_str(), doc["log_entries"].as_u64()), (Some("original"), Some(80)));

    let data = d.dir.path().join("restored");
    let out = d
        .run(&[
            "backup",
            "restore",
            "--input",
            archive.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .ok();
    assert!(out.stdout.contains("converted: 80 atoms in 5 worlds"), "{out}");
    assert!(data.join(".snapshot_metadata.json").is_file(), "audit record");
    let check = d.run(&["storage", "check", "--path", data.to_str().unwrap()]).ok();
    assert!(check.stdout.contains("dwbase store") && check.stdout.contains("80 atoms"), "{check}");
    drop(assert_serves_expected(d.dir.path(), &data, None, &expected("plain"), &no_rename));

    // A damaged original backup changes nothing and names where it broke.
    let mut bytes = std::fs::read(&archive).unwrap();
    let cut = bytes.len() / 2;
    bytes.truncate(cut);
    let broken = d.dir.path().join("broken.tzst");
    std::fs::write(&broken, &bytes).unwrap();
    let other = d.dir.path().join("other");
    let out = d.run(&[
        "backup",
        "restore",
        "--input",
        broken.to_str().unwrap(),
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("unchanged"), "{out}");
    assert!(!other.join("db").exists());
}
