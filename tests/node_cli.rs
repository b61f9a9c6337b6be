//! The node commands of `dwbase` (the original CLI's `list-worlds`, `ask`, `replay`, `inspect`,
//! `world …`, `index status`, plus `remember`) against a real `dwbase-node`: without and with an
//! API key (`--api-key`, `DWBASE_API_KEY`, or the node's config through `--node NAME`), `--json`,
//! the original's global `--api`, `--since` forms, and errors that name status and reason.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::dwbase::Deployment;
use support::node::{write_config, NodeProcess};
use support::Output;

const KEY: &str = "cli-test-key-0123456789abcdef";

fn dwbase<S: AsRef<str>>(d: &Deployment, args: &[S]) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    d.run(&args)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

#[test]
fn node_commands_against_a_real_node() {
    let d = Deployment::new();
    let config = write_config(d.dir.path(), "cli", "127.0.0.1:0", "");
    let node = NodeProcess::start(&config, &[]);
    let url = format!("http://{}", node.addr);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).chain(["--api".to_owned(), url.clone()]).collect()
    };

    let first = dwbase(
        &d,
        &with(&[
            "remember",
            "ops",
            "the deploy of version 41 failed",
            "--label",
            "deploy",
            "--timestamp",
            "2026-01-01T10:00:00Z",
        ]),
    )
    .ok();
    let first_id = first.stdout.trim().to_owned();
    assert_eq!(first_id.len(), 26, "a ULID: {first}");
    let link = format!("supersedes:{first_id}");
    let second = dwbase(
        &d,
        &with(&[
            "remember",
            "ops",
            "version 42 deployed fine",
            "--importance",
            "0.9",
            "--link",
            &link,
            "--timestamp",
            "2026-01-03T10:00:00Z",
            "--json",
        ]),
    )
    .ok();
    let second_id = json_of(&second)["id"].as_str().unwrap().to_owned();
    dwbase(&d, &with(&["remember", "chat", "hello there"])).ok();

    // list-worlds: lines for people, the node's JSON with --json, and the original's global --api.
    assert_eq!(dwbase(&d, &with(&["list-worlds"])).ok().stdout, "chat\nops\n");
    assert_eq!(
        json_of(&dwbase(&d, &with(&["list-worlds", "--json"])).ok()),
        serde_json::json!(["chat", "ops"])
    );
    let global = dwbase(&d, &["--api", &url, "list-worlds"]).ok();
    assert_eq!(global.stdout, "chat\nops\n");

    // ask: a table, or the node's answer as JSON; the question from stdin when -q is omitted.
    let out = dwbase(&d, &with(&["ask", "ops", "-q", "deploy failed"])).ok();
    assert!(out.stdout.starts_with("ID") && out.stdout.contains(&first_id), "{out}");
    let answer =
        json_of(&dwbase(&d, &with(&["ask", "ops", "--question", "version", "--json"])).ok());
    assert_eq!(answer["world"], "ops");
    assert_eq!(answer["supporting_atoms"].as_array().unwrap().len(), 2);
    let out = dwbase(&d, &with(&["ask", "ops", "-q", "What's happening?"])).ok();
    assert!(out.stderr.contains("warning:") && out.stderr.contains("original DWBase"), "{out}");
    assert!(out.stdout.find(&second_id) < out.stdout.find(&first_id), "superseded last: {out}");
    let ask_args = with(&["ask", "ops"]);
    let mut cmd = d.cmd(&ask_args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"version 42\n").unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert!(String::from_utf8_lossy(&piped.stdout).contains(&second_id));

    // replay: -l, --since in the original's forms and ours.
    let all = json_of(&dwbase(&d, &with(&["replay", "ops", "--json"])).ok());
    assert_eq!(all.as_array().unwrap().len(), 2);
    let one = json_of(&dwbase(&d, &with(&["replay", "ops", "-l", "1", "--json"])).ok());
    assert_eq!(one[0]["id"], first_id.as_str());
    for since in ["2026-01-02", "2026-01-02T00:00", "2026-01-02T00:00:00Z", "2026-01-02 12:00:00"] {
        let later =
            json_of(&dwbase(&d, &with(&["replay", "ops", "--since", since, "--json"])).ok());
        assert_eq!(later.as_array().unwrap().len(), 1, "--since {since}");
    }
    let bad = dwbase(&d, &with(&["replay", "ops", "--since", "last tuesday"])).code_is(2);
    assert!(bad.stderr.contains("RFC 3339"), "{bad}");
    let table = dwbase(&d, &with(&["replay", "ops"])).ok();
    assert_eq!(table.stdout.lines().count(), 3, "header + 2 rows: {table}");

    // inspect.
    let out = dwbase(&d, &with(&["inspect", &second_id])).ok();
    assert!(
        out.stdout.contains("version 42 deployed fine")
            && out.stdout.contains(&format!("supersedes {first_id}")),
        "{out}"
    );
    assert_eq!(
        json_of(&dwbase(&d, &with(&["inspect", &second_id, "--json"])).ok())["importance"],
        0.9
    );
    let missing = dwbase(&d, &with(&["inspect", "no-such-atom"])).code_is(1);
    assert!(missing.stderr.contains("404") && missing.stderr.contains("not_found"), "{missing}");

    // world and index commands.
    dwbase(&d, &with(&["world", "create", "notes", "--description", "d", "--labels", "a,b"])).ok();
    dwbase(&d, &with(&["world", "archive", "chat"])).ok();
    assert_eq!(dwbase(&d, &with(&["list-worlds"])).ok().stdout, "notes\nops\n");
    let refused = dwbase(&d, &with(&["remember", "chat", "more"])).code_is(1);
    assert!(refused.stderr.contains("409") && refused.stderr.contains("archived"), "{refused}");
    dwbase(&d, &with(&["world", "resume", "chat"])).ok();
    let policy = json_of(
        &dwbase(
            &d,
            &with(&[
                "world",
                "policy",
                "ops",
                "--retention-days",
                "30",
                "--replication-deny",
                "x,y",
                "--json",
            ]),
        )
        .ok(),
    );
    assert_eq!(policy["policy"]["retention_days"], 30);
    assert_eq!(policy["policy"]["replication_deny"], serde_json::json!(["x", "y"]));
    dwbase(&d, &with(&["world", "policy", "ops"])).code_is(2);
    let unknown = dwbase(&d, &with(&["world", "archive", "nope"])).code_is(1);
    assert!(unknown.stderr.contains("404"), "{unknown}");
    let index = dwbase(&d, &with(&["index", "status"])).ok();
    assert!(index.stdout.starts_with("WORLD") && index.stdout.contains("bm25"), "{index}");
    assert!(json_of(&dwbase(&d, &with(&["index", "status", "--json"])).ok()).is_array());
    drop(node);

    // A node that is not there.
    let gone = dwbase(&d, &with(&["list-worlds"])).code_is(1);
    assert!(
        gone.stderr.contains("cannot reach the node") && gone.stderr.contains("--node"),
        "{gone}"
    );
}

#[test]
fn node_commands_with_an_api_key() {
    let d = Deployment::new();
    let config =
        write_config(d.dir.path(), "keyed", "127.0.0.1:0", &format!("api_key = \"{KEY}\"\n"));
    let node = NodeProcess::start(&config, &[]);
    let url = format!("http://{}", node.addr);
    let out = dwbase(&d, &["list-worlds", "--api", &url]).code_is(1);
    assert!(out.stderr.contains("401") && out.stderr.contains("--api-key"), "{out}");
    dwbase(&d, &["remember", "w", "secret stuff", "--api", &url, "--api-key", KEY]).ok();
    let out =
        dwbase(&d, &["list-worlds", "--api", &url, "--api-key", "wrong-key-0123456789"]).code_is(1);
    assert!(out.stderr.contains("401"), "{out}");
    let mut cmd = d.cmd(&["list-worlds", "--api", &url]);
    cmd.env("DWBASE_API_KEY", KEY);
    let out = support::run_with_deadline(&mut cmd, Duration::from_secs(30)).ok();
    assert_eq!(out.stdout, "w\n");
}

/// `--node NAME` finds a devnet node through the supervisor and reads its key from its config.
#[test]
fn node_commands_by_deployed_node_name() {
    let d = Deployment::new();
    let key_file = d.dir.path().join("devnet.key");
    std::fs::write(&key_file, KEY).unwrap();
    let template = d.dir.path().join("devnet.toml");
    std::fs::write(
        &template,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\n[node.security]\napi_key_file = {key_file:?}\n\
                 remember_per_sec = 0\nask_per_min = 0\n"
        ),
    )
    .unwrap();
    let base = support::free_port_range(1);
    d.run(&[
        "deploy",
        "devnet",
        "--nodes",
        "1",
        "--base-port",
        &base.to_string(),
        "--no-swarm",
        "--template",
        template.to_str().unwrap(),
    ])
    .ok();
    dwbase(&d, &["remember", "w", "by name", "--node", "node-a"]).ok();
    let out = dwbase(&d, &["replay", "w", "--node", "node-a", "--json"]).ok();
    assert_eq!(json_of(&out)[0]["payload_json"], "{\"text\":\"by name\"}");
    let out = dwbase(&d, &["list-worlds", "--node", "node-z"]).code_is(1);
    assert!(out.stderr.contains("node-z"), "{out}");
    d.run(&["deploy", "stop"]).ok();
}
