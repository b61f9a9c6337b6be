//! Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! The names are a contract: alert rules and dashboards are written against them. Counters are
//! registered without `_total`; the encoder adds it to samples (`dwbase_http_requests_total`),
//! while the `# TYPE` line names the family (`dwbase_http_requests`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric family name the node exports, as they appear in samples.
pub const METRIC_NAMES: &[&str] = &[
    "dwbase_http_requests_total",
    "dwbase_remember_latency_ms",
    "dwbase_ask_latency_ms",
    "dwbase_replay_latency_ms",
    "dwbase_atoms_stored",
    "dwbase_worlds",
    "dwbase_disk_used_bytes",
    "dwbase_disk_total_bytes",
    "dwbase_disk_used_percent",
    "dwbase_data_dir_bytes",
    "dwbase_index_docs",
    "dwbase_index_terms",
    "dwbase_index_freshness_ms",
    "dwbase_ready",
    "dwbase_uptime_seconds",
    "dwbase_rate_limited_total",
    "dwbase_refused_total",
    "dwbase_swarm_pushes_total",
    "dwbase_memory_rss_bytes",
    "dwbase_index_memory_bytes",
    "dwbase_index_unindexed_docs",
    "dwbase_swarm_queue_depth",
];

/// Every `reason` of `dwbase_refused_total`.
pub const REFUSAL_REASONS: &[&str] = &[
    "world_not_allowed",
    "disk_full",
    "unauthorized",
    "bad_request",
    "body_too_large",
    "archived",
];

/// Labels of `dwbase_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Matched route template, e.g. `/atoms/{id}` (`unmatched` for unknown paths).
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of `dwbase_rate_limited_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// Labels of `dwbase_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// world_not_allowed, disk_full, unauthorized, bad_request, body_too_large or archived.
    pub reason: String,
}

/// Labels of `dwbase_swarm_pushes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// Peer base URL.
    pub peer: String,
    /// ok (atoms delivered), retry (atoms in a failed attempt), rejected (peer answered 4xx),
    /// dropped (queue full or shutdown).
    pub result: String,
}

/// Latency buckets in milliseconds.
const LATENCY_BUCKETS_MS: &[f64] =
    &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    /// `dwbase_http_requests_total{route,method,status}`.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `dwbase_remember_latency_ms`.
    pub remember_latency_ms: Histogram,
    /// `dwbase_ask_latency_ms`.
    pub ask_latency_ms: Histogram,
    /// `dwbase_replay_latency_ms`.
    pub replay_latency_ms: Histogram,
    /// `dwbase_atoms_stored`.
    pub atoms_stored: Gauge,
    /// `dwbase_worlds` (non-archived).
    pub worlds: Gauge,
    /// `dwbase_disk_used_bytes` (filesystem holding data_dir).
    pub disk_used_bytes: Gauge,
    /// `dwbase_disk_total_bytes`.
    pub disk_total_bytes: Gauge,
    /// `dwbase_disk_used_percent` (0..100).
    pub disk_used_percent: Gauge<f64, AtomicU64>,
    /// `dwbase_data_dir_bytes` (compared with max_disk_mb).
    pub data_dir_bytes: Gauge,
    /// `dwbase_index_docs`.
    pub index_docs: Gauge,
    /// `dwbase_index_terms`.
    pub index_terms: Gauge,
    /// `dwbase_index_freshness_ms` (how far the index lags the store: rebuild time so far).
    pub index_freshness_ms: Gauge,
    /// `dwbase_ready` (1/0).
    pub ready: Gauge,
    /// `dwbase_uptime_seconds`.
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    /// `dwbase_rate_limited_total{route}`.
    pub rate_limited: Family<RouteLabels, Counter>,
    /// `dwbase_refused_total{reason}`.
    pub refused: Family<ReasonLabels, Counter>,
    /// `dwbase_swarm_pushes_total{peer,result}` (counted per atom).
    pub swarm_pushes: Family<PushLabels, Counter>,
    /// `dwbase_memory_rss_bytes`.
    pub rss_bytes: Gauge,
    /// `dwbase_index_memory_bytes` (estimate).
    pub index_memory_bytes: Gauge,
    /// `dwbase_index_unindexed_docs` (text not indexed: memory share used up).
    pub index_unindexed_docs: Gauge,
    /// `dwbase_swarm_queue_depth` (atoms waiting, all peers).
    pub swarm_queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let hist = || Histogram::new(LATENCY_BUCKETS_MS.iter().copied());
        let m = Metrics {
            http_requests: Family::default(),
            remember_latency_ms: hist(),
            ask_latency_ms: hist(),
            replay_latency_ms: hist(),
            atoms_stored: Gauge::default(),
            worlds: Gauge::default(),
            disk_used_bytes: Gauge::default(),
            disk_total_bytes: Gauge::default(),
            disk_used_percent: Gauge::default(),
            data_dir_bytes: Gauge::default(),
            index_docs: Gauge::default(),
            index_terms: Gauge::default(),
            index_freshness_ms: Gauge::default(),
            ready: Gauge::default(),
            uptime_seconds: Gauge::default(),
            rate_limited: Family::default(),
            refused: Family::default(),
            swarm_pushes: Family::default(),
            rss_bytes: Gauge::default(),
            index_memory_bytes: Gauge::default(),
            index_unindexed_docs: Gauge::default(),
            swarm_queue_depth: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "dwbase_http_requests",
            "HTTP requests by route template, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "dwbase_remember_latency_ms",
            "POST /remember latency in milliseconds (durable write included)",
            m.remember_latency_ms.clone(),
        );
        r.register(
            "dwbase_ask_latency_ms",
            "POST /ask latency in milliseconds",
            m.ask_latency_ms.clone(),
        );
        r.register(
            "dwbase_replay_latency_ms",
            "POST /replay latency in milliseconds",
            m.replay_latency_ms.clone(),
        );
        r.register("dwbase_atoms_stored", "Atoms stored", m.atoms_stored.clone());
        r.register("dwbase_worlds", "Worlds known (not archived)", m.worlds.clone());
        r.register(
            "dwbase_disk_used_bytes",
            "Used bytes of the filesystem holding data_dir",
            m.disk_used_bytes.clone(),
        );
        r.register(
            "dwbase_disk_total_bytes",
            "Total bytes of the filesystem holding data_dir",
            m.disk_total_bytes.clone(),
        );
        r.register(
            "dwbase_disk_used_percent",
            "Percent used of the filesystem holding data_dir",
            m.disk_used_percent.clone(),
        );
        r.register(
            "dwbase_data_dir_bytes",
            "Size of data_dir in bytes (compared with max_disk_mb)",
            m.data_dir_bytes.clone(),
        );
        r.register("dwbase_index_docs", "Atoms in the text index", m.index_docs.clone());
        r.register("dwbase_index_terms", "Distinct terms in the text index", m.index_terms.clone());
        r.register(
            "dwbase_index_freshness_ms",
            "How far the index lags the store in milliseconds (0 when caught up)",
            m.index_freshness_ms.clone(),
        );
        r.register("dwbase_ready", "1 when /readyz answers 200, else 0", m.ready.clone());
        r.register(
            "dwbase_uptime_seconds",
            "Seconds since the node started",
            m.uptime_seconds.clone(),
        );
        r.register(
            "dwbase_rate_limited",
            "Requests refused with 429 by route",
            m.rate_limited.clone(),
        );
        r.register("dwbase_refused", "Requests refused by reason", m.refused.clone());
        r.register(
            "dwbase_swarm_pushes",
            "Atoms pushed to peers by peer and result",
            m.swarm_pushes.clone(),
        );
        r.register(
            "dwbase_memory_rss_bytes",
            "Resident set size of the node process",
            m.rss_bytes.clone(),
        );
        r.register(
            "dwbase_index_memory_bytes",
            "Estimated memory used by the text index",
            m.index_memory_bytes.clone(),
        );
        r.register(
            "dwbase_index_unindexed_docs",
            "Atoms whose text is not indexed because the index memory share is used up",
            m.index_unindexed_docs.clone(),
        );
        r.register(
            "dwbase_swarm_queue_depth",
            "Atoms waiting to be pushed to peers",
            m.swarm_queue_depth.clone(),
        );
        // Pre-create the refusal series so alert rules see zeros rather than nothing.
        for reason in REFUSAL_REASONS {
            let _ = m.refused.get_or_create(&ReasonLabels { reason: (*reason).to_owned() });
        }
        for route in ["/remember", "/ask"] {
            let _ = m.rate_limited.get_or_create(&RouteLabels { route: route.to_owned() });
        }
        Metrics { registry, ..m }
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// Counts `n` atoms pushed to `peer` with `result`.
    pub fn push(&self, peer: &str, result: &str, n: u64) {
        self.swarm_pushes
            .get_or_create(&PushLabels { peer: peer.to_owned(), result: result.to_owned() })
            .inc_by(n);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
