//! The supervisor's own Prometheus metrics, served on an optional loopback address
//! (`--metrics-addr 127.0.0.1:PORT`) at `GET /metrics`, with `GET /healthz` and the read-only
//! status API (`GET /v1/status`, `GET /v1/events`: [`crate::status_api`]) beside it.
//!
//! Families (OpenMetrics text, as prometheus-client encodes it):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `dwbase_supervisor_node_up` | gauge | node | 1 while the node's process runs |
//! | `dwbase_supervisor_node_ready` | gauge | node | 1 while its `/readyz` answers 200 |
//! | `dwbase_supervisor_node_last_exit_code` | gauge | node | exit code of its last exit; a signal `s` is `128 + s` (shell convention: SIGKILL → 137, SIGTERM → 143); absent while it never exited or the exit is unknown (adopted nodes) |
//! | `dwbase_supervisor_node_crash_loop` | gauge | node | 1 while in crash-loop |
//! | `dwbase_supervisor_node_desired_running` | gauge | node | 1 when the node should run, 0 when it was stopped on request (`deploy stop NODE`): node-down alerts fire only where it is 1 |
//! | `dwbase_supervisor_node_uptime_seconds` | gauge | node | time since its process started; 0 when down |
//! | `dwbase_supervisor_node_restarts_total` | counter | node | restarts performed by this supervisor |
//! | `dwbase_supervisor_node_exits_total` | counter | node, cause | exits seen by this supervisor: `unexpected` (a crash), `requested` (stop, restart, deploy), `liveness` (killed after failed liveness probes) |
//! | `dwbase_supervisor_uptime_seconds` | gauge | | time since this supervisor started |
//! | `dwbase_supervisor_connected_clients` | gauge | | open control-socket connections |
//! | `dwbase_supervisor_event_streams` | gauge | | open `GET /v1/events` streams |
//! | `dwbase_supervisor_requests_total` | counter | kind | requests received, by kind |
//!
//! The runner updates node values on every change ([`SupervisorMetrics::set_node`]) and the
//! server counts requests and connections; nothing here polls.
//!
//! Two encodings of the same values: OpenMetrics for scrapers that ask for it (Prometheus
//! does, in its `Accept` header), and the classic Prometheus text format (0.0.4) for everyone
//! else — `curl … | promtool check metrics` checks the latter (promtool's parser wants a
//! counter's `# TYPE` under its `_total` name and knows no `# EOF`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dwbase_node::metrics::{Format, ProcessCollector};
use dwbase_proto::{ExitCause, ExitKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use dwbase_node::metrics::{CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabel {
    node: String,
    cause: String,
}

/// The causes of `dwbase_supervisor_node_exits_total`.
const EXIT_CAUSES: [ExitCause; 3] =
    [ExitCause::Unexpected, ExitCause::Requested, ExitCause::Liveness];

fn cause_label(cause: ExitCause) -> &'static str {
    match cause {
        ExitCause::Unexpected => "unexpected",
        ExitCause::Requested => "requested",
        ExitCause::Liveness => "liveness",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A node's values at one moment, as the runner knows them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeSnapshot {
    /// Its process runs.
    pub up: bool,
    /// Its `/readyz` answered 200 at the last probe.
    pub ready: bool,
    /// How it last exited; `None` if it never did. [`ExitKind::Unknown`] (adopted nodes) is
    /// exported like `None`: no `last_exit_code` series.
    pub last_exit: Option<ExitKind>,
    /// It is in crash-loop.
    pub crash_loop: bool,
    /// It should run (not stopped on request).
    pub desired_running: bool,
    /// Seconds since its current process started (0 when down).
    pub uptime_secs: f64,
}

/// The supervisor's registry and metric families. Share it as `Arc<SupervisorMetrics>`;
/// every method takes `&self`.
#[derive(Debug)]
pub struct SupervisorMetrics {
    registry: Registry,
    started: Instant,
    node_up: Family<NodeLabel, Gauge>,
    node_ready: Family<NodeLabel, Gauge>,
    node_last_exit_code: Family<NodeLabel, Gauge>,
    node_crash_loop: Family<NodeLabel, Gauge>,
    node_desired_running: Family<NodeLabel, Gauge>,
    node_uptime: Family<NodeLabel, FloatGauge>,
    node_restarts: Family<NodeLabel, Counter>,
    node_exits: Family<ExitLabel, Counter>,
    uptime: FloatGauge,
    connected_clients: Gauge,
    event_streams: Gauge,
    requests: Family<KindLabel, Counter>,
}

impl Default for SupervisorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SupervisorMetrics {
    /// A registry with every family registered (and no node yet). Supervisor uptime counts
    /// from here.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let node_up = Family::<NodeLabel, Gauge>::default();
        let node_ready = Family::<NodeLabel, Gauge>::default();
        let node_last_exit_code = Family::<NodeLabel, Gauge>::default();
        let node_crash_loop = Family::<NodeLabel, Gauge>::default();
        let node_desired_running = Family::<NodeLabel, Gauge>::default();
        let node_uptime = Family::<NodeLabel, FloatGauge>::default();
        let node_restarts = Family::<NodeLabel, Counter>::default();
        let node_exits = Family::<ExitLabel, Counter>::default();
        let uptime = FloatGauge::default();
        let connected_clients = Gauge::default();
        let event_streams = Gauge::default();
        let requests = Family::<KindLabel, Counter>::default();

        registry.register(
            "dwbase_supervisor_node_up",
            "1 while the node's process runs",
            node_up.clone(),
        );
        registry.register(
            "dwbase_supervisor_node_ready",
            "1 while the node's /readyz answers 200",
            node_ready.clone(),
        );
        registry.register(
            "dwbase_supervisor_node_last_exit_code",
            "Exit code of the node's last exit; killed by signal s = 128+s",
            node_last_exit_code.clone(),
        );
        registry.register(
            "dwbase_supervisor_node_crash_loop",
            "1 while the node is in crash-loop (restarts slowed to the backoff cap)",
            node_crash_loop.clone(),
        );
        registry.register(
            "dwbase_supervisor_node_desired_running",
            "1 when the node should run, 0 when it was stopped on request",
            node_desired_running.clone(),
        );
        // The encoder appends the unit to the name: dwbase_supervisor_node_uptime_seconds.
        registry.register_with_unit(
            "dwbase_supervisor_node_uptime",
            "Time since the node's current process started",
            Unit::Seconds,
            node_uptime.clone(),
        );
        // Counters get `_total` from the encoder: dwbase_supervisor_node_restarts_total.
        registry.register(
            "dwbase_supervisor_node_restarts",
            "Restarts of the node performed by this supervisor",
            node_restarts.clone(),
        );
        registry.register(
            "dwbase_supervisor_node_exits",
            "Exits of the node seen by this supervisor, by cause: unexpected (a crash), requested (stop, restart, deploy), liveness (killed after failed liveness probes)",
            node_exits.clone(),
        );
        registry.register_with_unit(
            "dwbase_supervisor_uptime",
            "Time since this supervisor started",
            Unit::Seconds,
            uptime.clone(),
        );
        registry.register(
            "dwbase_supervisor_connected_clients",
            "Open control-socket connections",
            connected_clients.clone(),
        );
        registry.register(
            "dwbase_supervisor_event_streams",
            "Open GET /v1/events streams of the status API",
            event_streams.clone(),
        );
        registry.register(
            "dwbase_supervisor_requests",
            "Control-socket requests received, by kind",
            requests.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));

        Self {
            registry,
            started: Instant::now(),
            node_up,
            node_ready,
            node_last_exit_code,
            node_crash_loop,
            node_desired_running,
            node_uptime,
            node_restarts,
            node_exits,
            uptime,
            connected_clients,
            event_streams,
            requests,
        }
    }

    /// Records a node's current values (creating its series on first use). Call it on every
    /// change of state, readiness or exit; uptime is taken as given.
    pub fn set_node(&self, name: &str, snap: NodeSnapshot) {
        let l = label(name);
        self.node_up.get_or_create(&l).set(i64::from(snap.up));
        self.node_ready.get_or_create(&l).set(i64::from(snap.ready));
        self.node_crash_loop.get_or_create(&l).set(i64::from(snap.crash_loop));
        self.node_desired_running.get_or_create(&l).set(i64::from(snap.desired_running));
        self.node_uptime.get_or_create(&l).set(if snap.uptime_secs.is_finite() {
            snap.uptime_secs.max(0.0)
        } else {
            0.0
        });
        match snap.last_exit {
            Some(kind) if kind != ExitKind::Unknown => {
                self.node_last_exit_code.get_or_create(&l).set(i64::from(exit_code(kind)));
            }
            // An unknown exit has no code: the series goes away rather than show a made-up one.
            Some(_) | None => {
                self.node_last_exit_code.remove(&l);
            }
        }
        // Make the restart series exist from the start (0), as Prometheus `increase()` wants.
        let _ = self.node_restarts.get_or_create(&l);
    }

    /// Counts one exit of a node, by its cause.
    pub fn inc_exit(&self, name: &str, cause: ExitCause) {
        let l = ExitLabel { node: name.to_owned(), cause: cause_label(cause).to_owned() };
        self.node_exits.get_or_create(&l).inc();
    }

    /// Counts one restart of a node.
    pub fn inc_restart(&self, name: &str) {
        self.node_restarts.get_or_create(&label(name)).inc();
    }

    /// Forgets every series of a node that is gone for good (stopped and removed from the
    /// state), so it stops showing up in scrapes.
    pub fn remove_node(&self, name: &str) {
        let l = label(name);
        self.node_up.remove(&l);
        self.node_ready.remove(&l);
        self.node_last_exit_code.remove(&l);
        self.node_crash_loop.remove(&l);
        self.node_desired_running.remove(&l);
        self.node_uptime.remove(&l);
        self.node_restarts.remove(&l);
        for cause in EXIT_CAUSES {
            let l = ExitLabel { node: name.to_owned(), cause: cause_label(cause).to_owned() };
            self.node_exits.remove(&l);
        }
    }

    /// A control-socket client connected; pair with [`SupervisorMetrics::client_disconnected`],
    /// or use [`SupervisorMetrics::client_guard`].
    pub fn client_connected(&self) {
        self.connected_clients.inc();
    }

    /// A control-socket client went away.
    pub fn client_disconnected(&self) {
        self.connected_clients.dec();
    }

    /// Counts a client as connected until the guard is dropped (hold it in the connection
    /// task, so every exit path decrements).
    pub fn client_guard(&self) -> ClientGuard {
        self.connected_clients.inc();
        ClientGuard { gauge: self.connected_clients.clone() }
    }

    /// Counts an open `GET /v1/events` stream until the guard is dropped (hold it in the
    /// stream, so a client that goes away decrements).
    pub fn event_stream_guard(&self) -> ClientGuard {
        self.event_streams.inc();
        ClientGuard { gauge: self.event_streams.clone() }
    }

    /// Counts one request of `kind` (e.g. "status", "deploy-devnet", "logs").
    pub fn inc_request(&self, kind: &str) {
        self.requests.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// The OpenMetrics text of every family, ending with `# EOF`.
    pub fn encode(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same values in the classic Prometheus text format (0.0.4), which
    /// `promtool check metrics` accepts.
    pub fn encode_text(&self) -> String {
        dwbase_node::metrics::openmetrics_to_text(&self.encode())
    }
}

/// Decrements `dwbase_supervisor_connected_clients` (or `dwbase_supervisor_event_streams`)
/// when dropped. From [`SupervisorMetrics::client_guard`] (or
/// [`SupervisorMetrics::event_stream_guard`]).
#[derive(Debug)]
pub struct ClientGuard {
    gauge: Gauge,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The value of `dwbase_supervisor_node_last_exit_code`: the code, or 128 + the signal number;
/// -1 for [`ExitKind::Unknown`] (never exported: the series is removed instead).
pub fn exit_code(kind: ExitKind) -> i32 {
    match kind {
        ExitKind::Code(c) => c,
        ExitKind::Signal(s) => 128 + s,
        ExitKind::Unknown => -1,
    }
}

fn label(name: &str) -> NodeLabel {
    NodeLabel { node: name.to_owned() }
}

/// Serves `GET /metrics` (OpenMetrics or classic text, by the `Accept` header) and `GET /healthz` ("ok") on `listener` until
/// `shutdown` is cancelled, then finishes in-flight requests and returns. Binds nothing
/// itself: the caller binds (loopback) and can pass port 0 in tests.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<SupervisorMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_app(listener, router(metrics), shutdown).await
}

/// Serves `app` (the metrics routes, merged with others such as [`crate::status_api`]'s) on
/// `listener` until `shutdown` is cancelled, then finishes in-flight requests and returns.
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The metrics HTTP routes, for callers that mount them elsewhere.
pub fn router(metrics: Arc<SupervisorMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics)
}

async fn metrics_handler(
    State(metrics): State<Arc<SupervisorMetrics>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let format = dwbase_node::metrics::negotiate(
        headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()),
    );
    let body = match format {
        Format::OpenMetrics => metrics.encode(),
        Format::Text => metrics.encode_text(),
    };
    ([(CONTENT_TYPE, format.content_type())], body)
}
