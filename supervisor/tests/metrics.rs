//! Supervisor metrics: every family present, well-formed text, the HTTP endpoint, and (when
//! installed) `promtool check metrics`.

use std::sync::Arc;
use std::time::Duration;

use dwbase_proto::{ExitCause, ExitKind};
use dwbase_supervisor::metrics::{
    exit_code, serve, NodeSnapshot, SupervisorMetrics, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT,
};
use tokio_util::sync::CancellationToken;

const FAMILIES: [&str; 12] = [
    "dwbase_supervisor_node_up",
    "dwbase_supervisor_node_desired_running",
    "dwbase_supervisor_node_ready",
    "dwbase_supervisor_node_last_exit_code",
    "dwbase_supervisor_node_crash_loop",
    "dwbase_supervisor_node_uptime_seconds",
    "dwbase_supervisor_node_restarts_total",
    "dwbase_supervisor_node_exits_total",
    "dwbase_supervisor_uptime_seconds",
    "dwbase_supervisor_connected_clients",
    "dwbase_supervisor_event_streams",
    "dwbase_supervisor_requests_total",
];

fn populated() -> SupervisorMetrics {
    let m = SupervisorMetrics::new();
    m.set_node(
        "node-a",
        NodeSnapshot {
            up: true,
            ready: true,
            last_exit: Some(ExitKind::Signal(9)),
            crash_loop: false,
            desired_running: true,
            uptime_secs: 12.5,
        },
    );
    m.set_node(
        "node-b",
        NodeSnapshot {
            up: false,
            ready: false,
            last_exit: Some(ExitKind::Code(3)),
            crash_loop: true,
            desired_running: false,
            uptime_secs: 0.0,
        },
    );
    m.inc_restart("node-a");
    m.inc_restart("node-a");
    m.inc_exit("node-a", ExitCause::Unexpected);
    m.inc_exit("node-a", ExitCause::Liveness);
    m.inc_exit("node-b", ExitCause::Requested);
    m.inc_request("status");
    m.inc_request("logs");
    m.inc_request("status");
    m.client_connected();
    m
}

/// Every sample line as (name, labels, value); panics on a line that is not
/// `name{labels} value` or `name value`.
fn samples(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {text}");
    sample_lines(text)
}

fn sample_lines(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                    for pair in labels.split(',') {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                        assert!(v.starts_with('"') && v.ends_with('"'), "{line:?}");
                    }
                    (name, labels)
                }
                None => (series, ""),
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line:?}"
            );
            (name.to_string(), labels.to_string(), value)
        })
        .collect()
}

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples.iter().find(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| *v)
}

#[test]
fn every_family_is_present_and_well_formed() {
    let m = populated();
    let text = m.encode();
    let s = samples(&text);
    for family in FAMILIES {
        assert!(s.iter().any(|(n, _, _)| n == family), "{family} missing in\n{text}");
    }
    let a = r#"node="node-a""#;
    let b = r#"node="node-b""#;
    assert_eq!(value(&s, "dwbase_supervisor_node_up", a), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_up", b), Some(0.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_ready", a), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_last_exit_code", a), Some(137.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_last_exit_code", b), Some(3.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_crash_loop", b), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_desired_running", a), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_desired_running", b), Some(0.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_uptime_seconds", a), Some(12.5));
    assert_eq!(value(&s, "dwbase_supervisor_node_restarts_total", a), Some(2.0));
    assert_eq!(value(&s, "dwbase_supervisor_node_restarts_total", b), Some(0.0));
    let exits = |node: &str, cause: &str| {
        value(
            &s,
            "dwbase_supervisor_node_exits_total",
            &format!("node=\"{node}\",cause=\"{cause}\""),
        )
    };
    assert_eq!(exits("node-a", "unexpected"), Some(1.0));
    assert_eq!(exits("node-a", "liveness"), Some(1.0));
    assert_eq!(exits("node-b", "requested"), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_requests_total", r#"kind="status""#), Some(2.0));
    assert_eq!(value(&s, "dwbase_supervisor_requests_total", r#"kind="logs""#), Some(1.0));
    assert_eq!(value(&s, "dwbase_supervisor_connected_clients", ""), Some(1.0));
    assert!(value(&s, "dwbase_supervisor_uptime_seconds", "").unwrap() >= 0.0);
    assert!(text.contains("# TYPE dwbase_supervisor_node_restarts counter"), "{text}");
    assert!(text.contains("# TYPE dwbase_supervisor_node_up gauge"), "{text}");
}

#[test]
fn removed_nodes_and_unknown_exits_leave_no_series() {
    let m = populated();
    m.remove_node("node-b");
    m.set_node("node-a", NodeSnapshot { up: true, ..NodeSnapshot::default() });
    let text = m.encode();
    assert!(!text.contains("node-b"), "{text}");
    let s = samples(&text);
    assert_eq!(value(&s, "dwbase_supervisor_node_last_exit_code", r#"node="node-a""#), None);
    assert_eq!(value(&s, "dwbase_supervisor_node_up", r#"node="node-a""#), Some(1.0));
}

#[test]
fn client_guard_counts_connections() {
    let m = SupervisorMetrics::new();
    let conns = |m: &SupervisorMetrics| {
        value(&samples(&m.encode()), "dwbase_supervisor_connected_clients", "").unwrap()
    };
    let g1 = m.client_guard();
    let g2 = m.client_guard();
    assert_eq!(conns(&m), 2.0);
    drop(g1);
    assert_eq!(conns(&m), 1.0);
    drop(g2);
    m.client_connected();
    m.client_disconnected();
    assert_eq!(conns(&m), 0.0);
}

#[test]
fn signal_exits_are_128_plus_the_signal() {
    assert_eq!(exit_code(ExitKind::Code(0)), 0);
    assert_eq!(exit_code(ExitKind::Code(101)), 101);
    assert_eq!(exit_code(ExitKind::Signal(15)), 143);
}

#[test]
fn an_unknown_exit_has_no_exit_code_series() {
    let m = populated();
    let adopted = NodeSnapshot { last_exit: Some(ExitKind::Unknown), ..NodeSnapshot::default() };
    m.set_node("node-a", adopted);
    let text = m.encode();
    let codes: Vec<_> = samples(&text)
        .into_iter()
        .filter(|(n, _, _)| n == "dwbase_supervisor_node_last_exit_code")
        .collect();
    assert_eq!(codes.len(), 1, "only node-b's exit is known: {codes:?}");
    assert!(codes[0].1.contains("node-b"), "{codes:?}");
}

#[test]
fn classic_text_has_the_same_samples_and_counter_metadata_under_total() {
    let m = populated();
    let (om, text) = (m.encode(), m.encode_text());
    // Uptime and the process_* families are read live at each encode.
    let strip_uptime = |s: Vec<(String, String, f64)>| -> Vec<(String, String, f64)> {
        s.into_iter()
            .filter(|(n, _, _)| {
                n != "dwbase_supervisor_uptime_seconds" && !n.starts_with("process_")
            })
            .collect()
    };
    assert_eq!(strip_uptime(samples(&om)), strip_uptime(sample_lines(&text)));
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    assert!(text.contains("# TYPE dwbase_supervisor_node_restarts_total counter\n"), "{text}");
    assert!(text.contains("# HELP dwbase_supervisor_requests_total "), "{text}");
    assert!(text.contains("# TYPE dwbase_supervisor_node_up gauge\n"), "{text}");
}

#[test]
fn promtool_accepts_the_text() {
    let Ok(out) = std::process::Command::new("promtool").arg("--version").output() else {
        eprintln!("promtool not installed: skipped");
        return;
    };
    assert!(out.status.success());
    let text = populated().encode_text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn serves_metrics_and_healthz_until_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(populated());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, metrics.clone(), shutdown.clone()));
    // Abort the server if an assertion below fails.
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = Abort(server.abort_handle());

    let client = reqwest::Client::new();
    // Prometheus asks for OpenMetrics …
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], CONTENT_TYPE_OPENMETRICS);
    let body = resp.text().await.unwrap();
    for family in FAMILIES {
        assert!(body.contains(family), "{family} missing");
    }
    assert!(body.ends_with("# EOF\n"));
    // … curl and promtool get the classic format.
    let resp = client.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], CONTENT_TYPE_TEXT);
    let body = resp.text().await.unwrap();
    for family in FAMILIES {
        assert!(body.contains(family), "{family} missing");
    }
    assert!(!body.contains("# EOF"));
    metrics.inc_request("ping");
    let body = client.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert!(body
        .text()
        .await
        .unwrap()
        .contains(r#"dwbase_supervisor_requests_total{kind="ping"} 1"#));

    let health = client.get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let missing = client.get(format!("http://{addr}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    drop(client);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after cancel")
        .unwrap()
        .unwrap();
}
