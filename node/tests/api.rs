//! In-process API tests: a real node (sled on a temp dir, real HTTP on 127.0.0.1:0) driven
//! with reqwest.

mod common;

use std::time::{Duration, Instant};

use common::{atom, poll_until, split, test_config, TestNode};
use serde_json::{json, Value};

fn ids(atoms: &Value) -> Vec<String> {
    atoms
        .as_array()
        .expect("array of atoms")
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn remember_ask_replay_get() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;

    let a = node.remember("demo", "the deploy of node b failed with a disk error", 0.2).await;
    let b = node.remember("demo", "lunch menu: pasta and salad", 1.0).await;
    let c = node.remember("demo", "node b disk replaced, deploy retried", 0.6).await;
    node.remember("other", "deploy of node b in another world", 0.9).await;
    assert!(a != b && b != c && a.len() == 26, "ULID ids: {a} {b} {c}");

    // Ask: relevant atoms only, and the irrelevant-but-important lunch atom is not among them.
    let (status, _, answer) = node
        .post("/ask", &json!({"world": "demo", "text": "why did the node b deploy fail?"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["world"], "demo");
    let got = ids(&answer["supporting_atoms"]);
    assert_eq!(got.len(), 2, "{answer}");
    assert!(!got.contains(&b));
    assert!(answer["warnings"].as_array().unwrap().is_empty(), "{answer}");

    // `c` is newer and more important; two confirmations lift `a` above it.
    for _ in 0..2 {
        let mut confirm = atom("demo", "confirmed", 0.5);
        confirm["links"] = json!([{"target": a, "kind": "confirms"}]);
        let (status, _, _) = node.post("/remember", &confirm).await;
        assert_eq!(status, 200);
    }
    let (_, _, answer) =
        node.post("/ask", &json!({"world": "demo", "text": "node b deploy disk"})).await;
    assert_eq!(ids(&answer["supporting_atoms"])[0], a, "{answer}");

    // filter.limit is respected.
    let (_, _, answer) =
        node.post("/ask", &json!({"world": "demo", "text": "node", "filter": {"limit": 1}})).await;
    assert_eq!(answer["supporting_atoms"].as_array().unwrap().len(), 1);

    // Replay: append order, any subset of filter keys.
    let (status, _, atoms) = node.post("/replay", &json!({"world": "demo"})).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&atoms)[..3], [a.clone(), b.clone(), c.clone()]);
    let (_, _, atoms) =
        node.post("/replay", &json!({"world": "demo", "filter": {"limit": 2}})).await;
    assert_eq!(ids(&atoms), [a.clone(), b.clone()]);
    let (_, _, atoms) =
        node.post("/replay", &json!({"world": "demo", "filter": {"kinds": ["plan"]}})).await;
    assert!(atoms.as_array().unwrap().is_empty());

    // Get by id; unknown id is a 404 JSON error.
    let (status, _, got) = node.get(&format!("/atoms/{a}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], a.as_str());
    assert_eq!(got["kind"], "observation");
    assert!(got["timestamp"].as_str().unwrap().ends_with('Z'), "empty timestamp became now");
    let (status, _, err) = node.get("/atoms/01NOTANATOM").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"], "not_found");

    // Worlds and index status.
    let (_, _, worlds) = node.get("/worlds").await;
    assert_eq!(worlds, json!(["demo", "other"]));
    let (status, _, st) = node.get("/index/status").await;
    assert_eq!(status, 200);
    let demo = st.as_array().unwrap().iter().find(|w| w["world"] == "demo").unwrap();
    for key in ["version", "embedder_version", "last_rebuilt", "ready", "rebuilding", "progress"] {
        assert!(demo.get(key).is_some(), "index status has {key}: {demo}");
    }
    assert_eq!(demo["ready"], true);
    assert_eq!(demo["docs"], 5);

    node.stop().await.unwrap();
}

#[tokio::test]
async fn client_errors_are_json_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.node.security.max_body_bytes = 2048;
    let node = TestNode::start(config).await;

    // Bad JSON → 400.
    let resp = node
        .client
        .post(node.at("/remember"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, headers, body) = split(resp).await;
    assert_eq!(status, 400);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/json"));
    assert_eq!(body["error"], "bad_json");
    assert!(body["message"].is_string());

    // A body without a content type is still read as JSON (the original's clients vary).
    let resp = node
        .client
        .post(node.at("/remember"))
        .body(atom("w", "no content type", 0.5).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Missing field, bad enum, bad range, bad timestamp, bad link kind → 422 naming the field.
    let mut cases = Vec::new();
    let mut missing = atom("w", "x", 0.5);
    missing.as_object_mut().unwrap().remove("worker");
    cases.push((missing, "worker"));
    let mut kind = atom("w", "x", 0.5);
    kind["kind"] = json!("dream");
    cases.push((kind, "kind"));
    cases.push((atom("w", "x", 1.5), "importance"));
    cases.push((atom("w", "x", -0.1), "importance"));
    let mut ts = atom("w", "x", 0.5);
    ts["timestamp"] = json!("yesterday");
    cases.push((ts, "timestamp"));
    let mut link = atom("w", "x", 0.5);
    link["links"] = json!([{"target": "a", "kind": "likes"}]);
    cases.push((link, "links[0].kind"));
    let mut typ = atom("w", "x", 0.5);
    typ["importance"] = json!("high");
    cases.push((typ, "importance"));
    cases.push((atom("", "x", 0.5), "world"));
    for (body, field) in cases {
        let (status, _, err) = node.post("/remember", &body).await;
        assert_eq!(status, 422, "{field}: {err}");
        assert_eq!(err["error"], "invalid_field", "{err}");
        assert_eq!(err["field"], field, "{err}");
    }
    // Nothing half-written: only the one good atom exists.
    let (_, _, atoms) = node.post("/replay", &json!({"world": "w"})).await;
    assert_eq!(atoms.as_array().unwrap().len(), 1);

    // Ask/replay field errors.
    let (status, _, err) =
        node.post("/ask", &json!({"world": "w", "text": "x", "filter": {"since": "soon"}})).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("filter.since")));
    let (status, _, err) = node.post("/ask", &json!({"text": "x"})).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("world")));

    // Oversize body → 413 JSON.
    let big = atom("w", &"x".repeat(4096), 0.5);
    let (status, _, err) = node.post("/remember", &big).await;
    assert_eq!(status, 413);
    assert_eq!(err["error"], "body_too_large");

    // Unknown route → 404 JSON; wrong method → 405 JSON.
    let (status, _, err) = node.get("/nope").await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_found")));
    let (status, _, err) = node.get("/remember").await;
    assert_eq!((status, err["error"].as_str()), (405, Some("method_not_allowed")));

    // The refusals were counted.
    let (_, _, _) = node.get("/healthz").await;
    let text = node.client.get(node.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric_value(&text, "dwbase_refused_total", &[("reason", "bad_request")]) >= 10.0);
    assert_eq!(metric_value(&text, "dwbase_refused_total", &[("reason", "body_too_large")]), 1.0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // One remember per 5 s per worker: the second one is refused even on a slow machine.
    config.node.security.remember_per_sec = 0.2;
    config.node.security.ask_per_min = 2.0;
    let node = TestNode::start(config).await;

    assert_eq!(node.post("/remember", &atom("w", "one", 0.5)).await.0, 200);
    let (status, headers, err) = node.post("/remember", &atom("w", "two", 0.5)).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Another worker has its own budget.
    let mut other = atom("w", "three", 0.5);
    other["worker"] = json!("agent-b");
    assert_eq!(node.post("/remember", &other).await.0, 200);

    let q = json!({"world": "w", "text": "one"});
    assert_eq!(node.post("/ask", &q).await.0, 200);
    assert_eq!(node.post("/ask", &q).await.0, 200);
    let (status, headers, _) = node.post("/ask", &q).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));

    let text = node.client.get(node.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric_value(&text, "dwbase_rate_limited_total", &[("route", "/remember")]), 1.0);
    assert_eq!(metric_value(&text, "dwbase_rate_limited_total", &[("route", "/ask")]), 1.0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn world_allow_lists_answer_403() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.node.security.write_worlds = vec!["open".into()];
    config.node.security.read_worlds = vec!["open".into()];
    let node = TestNode::start(config).await;
    node.remember("open", "fine", 0.5).await;
    let (status, _, err) = node.post("/remember", &atom("closed", "no", 0.5)).await;
    assert_eq!((status, err["error"].as_str()), (403, Some("world_not_allowed")));
    let (status, _, _) = node.post("/ask", &json!({"world": "closed", "text": "x"})).await;
    assert_eq!(status, 403);
    let (status, _, _) = node.post("/replay", &json!({"world": "closed"})).await;
    assert_eq!(status, 403);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn api_key_required_except_probes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let key = "s3cret-s3cret-s3cret";
    config.node.security.api_key = Some(key.into());
    let node = TestNode::start(config).await;

    let (status, headers, err) = node.post("/remember", &atom("w", "x", 0.5)).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("unauthorized")));
    assert_eq!(headers["www-authenticate"], "Bearer");
    let resp = node
        .client
        .post(node.at("/remember"))
        .bearer_auth("wrong")
        .json(&atom("w", "x", 0.5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = node
        .client
        .post(node.at("/remember"))
        .bearer_auth(key)
        .json(&atom("w", "x", 0.5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The scheme is case-insensitive (RFC 7235); the token is not.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let resp = node
            .client
            .get(node.at("/worlds"))
            .header("authorization", format!("{scheme} {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "scheme {scheme}");
    }
    let resp = node
        .client
        .get(node.at("/worlds"))
        .header("authorization", format!("Bearer {}", key.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(node.get(open).await.0, 200, "{open} needs no key");
    }
    for closed in ["/health", "/worlds", "/index/status"] {
        assert_eq!(node.get(closed).await.0, 401, "{closed} needs the key");
    }
    // Without the key, /readyz says ready or not and names the reasons, nothing more.
    let (_, _, brief) = node.get("/readyz").await;
    let keys: Vec<&str> = brief.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["ready", "reasons", "status"], "{brief}");
    let full = node.client.get(node.at("/readyz")).bearer_auth(key).send().await.unwrap();
    let full: Value = full.json().await.unwrap();
    assert!(full.get("disk_usage").is_some() && full.get("node_id").is_some(), "{full}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn unauthenticated_readyz_names_reasons_without_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.node.security.api_key = Some("0123456789abcdef0123".into());
    config.node.health.disk_usage_degraded = 0.0;
    let node = TestNode::start_unready(config).await;
    let (status, _, brief) = node.get("/readyz").await;
    assert_eq!(status, 503, "{brief}");
    assert_eq!(brief["ready"], false);
    let reasons: Vec<&str> =
        brief["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.contains(&"disk_usage"), "{brief}");
    assert!(reasons.iter().all(|r| ["disk_usage", "index_rebuilding"].contains(r)), "{brief}");
    let text = brief.to_string();
    assert!(!text.contains('%') && !text.contains("bytes") && !text.contains("test"), "{text}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn non_loopback_listener_without_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let node = dwbase_node::Node::open(config).unwrap();
    let err = dwbase_node::serve(listener, node, async {}).await.unwrap_err().to_string();
    assert!(err.contains("0.0.0.0") && err.contains("api_key"), "{err}");
}

#[tokio::test]
async fn disk_cap_refuses_with_507_and_readyz_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.node.limits.max_disk_mb = 1;
    let node = TestNode::start_unready(config).await;
    let text = "y".repeat(8 * 1024);
    let mut refused = None;
    for _ in 0..400 {
        let (status, _, body) = node.post("/remember", &atom("w", &text, 0.5)).await;
        match status {
            200 => continue,
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let err = refused.expect("a 1 MiB cap must be reached within 400 × 8 KiB");
    assert_eq!(err["error"], "disk_full");
    assert!(err["message"].as_str().unwrap().contains("max_disk_mb"), "{err}");
    let (status, _, ready) = node.get("/readyz").await;
    assert_eq!(status, 503);
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("max_disk_mb"), "{ready}");
    let text = node.client.get(node.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric_value(&text, "dwbase_refused_total", &[("reason", "disk_full")]) >= 1.0);
    assert_eq!(metric_value(&text, "dwbase_ready", &[]), 0.0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let resp = node
        .client
        .get(node.at("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = node.client.get(node.at("/nope")).send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"].len(), 26, "generated ULID");
    let resp = node
        .client
        .post(node.at("/remember"))
        .header("x-request-id", "err-1")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "err-1", "errors carry it too");
    node.stop().await.unwrap();
}

/// Families every dashboard relies on: (sample name, OpenMetrics family name, type). In the
/// classic text format `# HELP`/`# TYPE` name the sample (`_total` included).
const FAMILIES: &[(&str, &str, &str)] = &[
    ("dwbase_http_requests_total", "dwbase_http_requests", "counter"),
    ("dwbase_remember_latency_seconds", "dwbase_remember_latency_seconds", "histogram"),
    ("dwbase_ask_latency_seconds", "dwbase_ask_latency_seconds", "histogram"),
    ("dwbase_replay_latency_seconds", "dwbase_replay_latency_seconds", "histogram"),
    ("dwbase_atoms_stored", "dwbase_atoms_stored", "gauge"),
    ("dwbase_worlds", "dwbase_worlds", "gauge"),
    ("dwbase_disk_used_bytes", "dwbase_disk_used_bytes", "gauge"),
    ("dwbase_disk_total_bytes", "dwbase_disk_total_bytes", "gauge"),
    ("dwbase_disk_used_percent", "dwbase_disk_used_percent", "gauge"),
    ("dwbase_data_dir_bytes", "dwbase_data_dir_bytes", "gauge"),
    ("dwbase_disk_cap_bytes", "dwbase_disk_cap_bytes", "gauge"),
    ("dwbase_memory_cap_bytes", "dwbase_memory_cap_bytes", "gauge"),
    ("dwbase_index_docs", "dwbase_index_docs", "gauge"),
    ("dwbase_index_terms", "dwbase_index_terms", "gauge"),
    ("dwbase_index_freshness_seconds", "dwbase_index_freshness_seconds", "gauge"),
    ("dwbase_ready", "dwbase_ready", "gauge"),
    ("dwbase_uptime_seconds", "dwbase_uptime_seconds", "gauge"),
    ("dwbase_rate_limited_total", "dwbase_rate_limited", "counter"),
    ("dwbase_refused_total", "dwbase_refused", "counter"),
    ("dwbase_swarm_pushes_total", "dwbase_swarm_pushes", "counter"),
    ("dwbase_build_info", "dwbase_build_info", "gauge"),
    ("process_cpu_seconds_total", "process_cpu_seconds", "counter"),
    ("process_resident_memory_bytes", "process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "process_open_fds", "gauge"),
    ("process_max_fds", "process_max_fds", "gauge"),
    ("process_start_time_seconds", "process_start_time_seconds", "gauge"),
];

/// One parsed sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Checks every non-comment line is `name{labels} value` and returns the samples.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed: {line}"));
                let labels = if inner.is_empty() {
                    Vec::new()
                } else {
                    inner
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{line}"));
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (
                                k.to_owned(),
                                v.unwrap_or_else(|| panic!("unquoted: {line}")).to_owned(),
                            )
                        })
                        .collect()
                };
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        out.push(Sample { name: name.to_owned(), labels, value });
    }
    out
}

fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_prometheus(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_agreed_names() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let id = node.remember("w", "hello metrics", 0.5).await;
    node.post("/ask", &json!({"world": "w", "text": "hello"})).await;
    node.post("/replay", &json!({"world": "w"})).await;
    node.get(&format!("/atoms/{id}")).await;
    node.get("/atoms/missing").await;

    // No Accept header (curl, promtool): the classic text format.
    let resp = node.client.get(node.at("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("# EOF"), "classic text has no # EOF");
    let samples = parse_prometheus(&text);
    for (sample, _, kind) in FAMILIES {
        if *sample == "dwbase_swarm_pushes_total" {
            continue; // present once swarm peers are configured (checked in the swarm test)
        }
        assert!(text.contains(&format!("# HELP {sample} ")), "HELP for {sample}");
        assert!(text.contains(&format!("# TYPE {sample} {kind}\n")), "TYPE for {sample}");
        if *kind == "histogram" {
            assert!(samples.iter().any(|s| s.name == format!("{sample}_bucket")), "{sample}");
            assert!(samples.iter().any(|s| s.name == format!("{sample}_count")), "{sample}");
        } else {
            assert!(samples.iter().any(|s| s.name == *sample), "sample {sample}");
        }
    }
    // Prometheus' own Accept header: OpenMetrics, families named without `_total`.
    let resp = node
        .client
        .get(node.at("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = resp.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    for (sample, family, kind) in FAMILIES {
        if *sample == "dwbase_swarm_pushes_total" {
            continue;
        }
        assert!(om.contains(&format!("# TYPE {family} {kind}\n")), "OpenMetrics TYPE for {family}");
    }
    // Route label is the matched template, not the concrete path.
    assert_eq!(
        metric_value(
            &text,
            "dwbase_http_requests_total",
            &[("route", "/atoms/{id}"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "dwbase_http_requests_total",
            &[("route", "/atoms/{id}"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(metric_value(&text, "dwbase_remember_latency_seconds_count", &[]), 1.0);
    assert_eq!(metric_value(&text, "dwbase_atoms_stored", &[]), 1.0);
    assert_eq!(metric_value(&text, "dwbase_ready", &[]), 1.0);
    assert!(metric_value(&text, "dwbase_disk_total_bytes", &[]) > 0.0, "sampled at start");
    assert!(metric_value(&text, "dwbase_data_dir_bytes", &[]) > 0.0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness_report_checks() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let (status, _, h) = node.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ready", "the original's value: {h}");
    assert_eq!(h["health"], "ok", "{h}");
    assert!(h["message"].is_null() && h["index_rebuild_lag_ms"].is_null(), "as the original: {h}");
    for check in ["disk", "memory", "storage", "index"] {
        assert_eq!(h["checks"][check]["status"], "ok", "{check}: {h}");
    }
    for key in
        ["version", "node_id", "uptime_seconds", "disk_usage", "index_rebuild_lag_ms", "message"]
    {
        assert!(h.get(key).is_some(), "{key} in {h}");
    }
    for key in ["used_bytes", "total_bytes", "percent_used"] {
        assert!(h["disk_usage"].get(key).is_some(), "{key} in {h}");
    }
    assert_eq!(h["node_id"], "test");
    let (status, _, r) = node.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(r["ready"], true);
    let (status, _, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
    node.stop().await.unwrap();

    // A disk threshold of 0 means "always over": readyz says why.
    let mut config = test_config(dir.path());
    config.node.health.disk_usage_degraded = 0.0;
    let node = TestNode::start_unready(config).await;
    let (status, _, r) = node.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(r["reasons"][0].as_str().unwrap().contains("disk usage"), "{r}");
    assert_eq!(r["status"], "degraded");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn archived_worlds_refuse_writes_but_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let (status, _, rec) = node
        .post(
            "/worlds/manage",
            &json!({"action": "create", "world": "arch", "description": "d", "labels": ["l"]}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    node.remember("arch", "kept memory", 0.5).await;
    let (status, _, _) =
        node.post("/worlds/manage", &json!({"action": "archive", "world": "arch"})).await;
    assert_eq!(status, 200);
    let (status, _, err) = node.post("/remember", &atom("arch", "more", 0.5)).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("world_archived")));
    let (_, _, worlds) = node.get("/worlds").await;
    assert_eq!(worlds, json!([]));
    let (status, _, answer) = node.post("/ask", &json!({"world": "arch", "text": "memory"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["supporting_atoms"].as_array().unwrap().len(), 1);
    assert!(answer["warnings"].to_string().contains("archived"), "{answer}");
    let (status, _, atoms) = node.post("/replay", &json!({"world": "arch"})).await;
    assert_eq!((status, atoms.as_array().unwrap().len()), (200, 1));
    let (status, _, _) =
        node.post("/worlds/manage", &json!({"action": "resume", "world": "arch"})).await;
    assert_eq!(status, 200);
    node.remember("arch", "after resume", 0.5).await;
    let (status, _, _) =
        node.post("/worlds/manage", &json!({"action": "archive", "world": "ghost"})).await;
    assert_eq!(status, 404);
    let (status, _, err) =
        node.post("/worlds/manage", &json!({"action": "explode", "world": "x"})).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("action")));

    // Policy: the original's shape is accepted and stored.
    let (status, _, rec) = node
        .post(
            "/worlds/policy",
            &json!({"world": "arch", "retention_days": 30, "min_importance": 0.2,
                    "replication_allow": ["a"], "replication_deny": []}),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["policy"]["retention_days"], 30);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn ids_never_repeat_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for round in 0..3 {
        let node = TestNode::start(test_config(dir.path())).await;
        for i in 0..5 {
            all.push(node.remember("w", &format!("round {round} atom {i}"), 0.5).await);
        }
        let (_, _, atoms) = node.post("/replay", &json!({"world": "w"})).await;
        assert_eq!(ids(&atoms), all, "every earlier atom is still there, in order");
        // The first atom's content is untouched by later rounds (the original overwrote it).
        let (_, _, first) = node.get(&format!("/atoms/{}", all[0])).await;
        assert!(first["payload_json"].as_str().unwrap().contains("round 0 atom 0"));
        node.stop().await.unwrap();
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 15);
}

#[tokio::test]
async fn index_is_rebuilt_from_sled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    for i in 0..300 {
        node.remember("w", &format!("bulk atom number {i}"), 0.5).await;
    }
    let target = node.remember("w", "the unique zebra crossing", 0.5).await;
    node.stop().await.unwrap();

    let node = TestNode::start(test_config(dir.path())).await;
    let (_, _, answer) = node.post("/ask", &json!({"world": "w", "text": "zebra"})).await;
    assert_eq!(ids(&answer["supporting_atoms"]), [target]);
    let (_, _, st) = node.get("/index/status").await;
    assert_eq!(st[0]["docs"], 301);
    assert!(st[0]["last_rebuilt"].is_string());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn swarm_pushes_atoms_and_ingest_is_idempotent() {
    let dir_b = tempfile::tempdir().unwrap();
    let node_b = TestNode::start(test_config(dir_b.path())).await;
    let dir_a = tempfile::tempdir().unwrap();
    let mut config_a = test_config(dir_a.path());
    config_a.node.swarm.enabled = true;
    config_a.node.swarm.peers = vec![node_b.url.clone()];
    let node_a = TestNode::start(config_a).await;

    let id = node_a.remember("shared", "the swarm carries this penguin", 0.5).await;
    let client = node_b.client.clone();
    let ask = node_b.at("/ask");
    let want = id.clone();
    poll_until(Duration::from_secs(10), "atom replicated to B", || {
        let (client, ask, want) = (client.clone(), ask.clone(), want.clone());
        async move {
            let resp =
                client.post(&ask).json(&json!({"world": "shared", "text": "penguin"})).send().await;
            match resp {
                Ok(r) => r.json::<Value>().await.is_ok_and(|a| {
                    a["supporting_atoms"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x["id"] == want.as_str()))
                }),
                Err(_) => false,
            }
        }
    })
    .await;
    // Same id on both nodes.
    let (status, _, got) = node_b.get(&format!("/atoms/{id}")).await;
    assert_eq!((status, got["id"].as_str()), (200, Some(id.as_str())));

    // Re-sending the same atom is a no-op.
    let (status, _, out) = node_b.post("/swarm/ingest", &json!([got.clone()])).await;
    assert_eq!(status, 200);
    assert_eq!(out, json!({"stored": 0, "duplicates": 1}));
    let (_, _, atoms) = node_b.post("/replay", &json!({"world": "shared"})).await;
    assert_eq!(atoms.as_array().unwrap().len(), 1);

    let text = node_a.client.get(node_a.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE dwbase_swarm_pushes_total counter\n"), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "dwbase_swarm_pushes_total",
            &[("peer", &node_b.url), ("result", "dropped")]
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &text,
            "dwbase_swarm_pushes_total",
            &[("peer", &node_b.url), ("result", "ok")]
        ),
        1.0
    );
    node_a.stop().await.unwrap();
    node_b.stop().await.unwrap();
}

#[tokio::test]
async fn unreachable_peer_never_slows_the_writer() {
    // A port that was free a moment ago: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.node.swarm.enabled = true;
    config.node.swarm.peers = vec![dead.clone()];
    let node = TestNode::start(config).await;
    let started = Instant::now();
    for i in 0..20 {
        node.remember("w", &format!("offline write {i}"), 0.5).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "writes stay fast: {:?}",
        started.elapsed()
    );
    // Shutdown stops the retrying pusher promptly.
    let stopping = Instant::now();
    node.stop().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5), "{:?}", stopping.elapsed());
}

#[tokio::test]
async fn concurrent_remembers_are_all_durable_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (client, url) = (node.client.clone(), node.at("/remember"));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let resp = client
                    .post(&url)
                    .json(&atom("w", &format!("t{t} i{i}"), 0.5))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                ids.push(resp.json::<String>().await.unwrap());
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    node.stop().await.unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let (_, _, atoms) = node.post("/replay", &json!({"world": "w"})).await;
    let mut stored = ids(&atoms);
    stored.sort();
    all.sort();
    assert_eq!(stored, all);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_waits_for_the_index_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let node = dwbase_node::Node::open(config.clone()).unwrap();
    // Opened but not rebuilt: not ready, and the health report says why.
    let h = node.health();
    assert!(!h.ready);
    assert!(h.reasons.iter().any(|r| r.contains("index rebuilding")), "{:?}", h.reasons);
    assert_eq!(h.health, "degraded");
    // The original's verdict counts a rebuild only past index_rebuild_warn_seconds.
    assert_eq!(h.status, "ready");
    node.rebuild_index();
    let h = node.health();
    assert!(h.ready, "{:?}", h.reasons);
    assert_eq!((h.status, h.health), ("ready", "ok"));
    drop(node);

    // A served node writes a run summary on shutdown.
    let served = TestNode::start(config.clone()).await;
    served.remember("w", "x", 0.5).await;
    served.stop().await.unwrap();
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(config.node.summaries_dir.join("last-run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["atoms_stored"], 1);
    assert_eq!(summary["clean_shutdown"], true);
}
