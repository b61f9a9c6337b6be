//! Prometheus metrics (prometheus-client).
//!
//! The names are a contract: alert rules and dashboards are written against them. They follow
//! Prometheus' conventions: base units in the name (`_seconds`, `_bytes`), `_total` on counters,
//! HELP on every family. Where the original DWBase had a metric with the same meaning its name is
//! kept (`dwbase_disk_used_bytes`, `dwbase_disk_total_bytes`, `dwbase_disk_used_percent`); its
//! millisecond latencies (`dwbase_*_latency_ms`, `dwbase_index_freshness_ms`) are now
//! `dwbase_*_latency_seconds` and `dwbase_index_freshness_seconds`.
//!
//! `GET /metrics` answers in the classic Prometheus text format (0.0.4) unless the client's
//! `Accept` asks for OpenMetrics ([`negotiate`]): Prometheus asks for it, `curl | promtool check
//! metrics` gets the classic one. prometheus-client encodes only OpenMetrics, so
//! [`openmetrics_to_text`] rewrites it (counters' `# TYPE`/`# HELP` under their `_total` name, no
//! `# UNIT`/`# EOF`). [`ProcessCollector`] adds the standard `process_*` families from /proc
//! (no collector crate fits prometheus-client) and [`Metrics`] a `dwbase_build_info` gauge.

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric family name the node exports, as they appear in samples.
pub const METRIC_NAMES: &[&str] = &[
    "dwbase_http_requests_total",
    "dwbase_remember_latency_seconds",
    "dwbase_ask_latency_seconds",
    "dwbase_replay_latency_seconds",
    "dwbase_atoms_stored",
    "dwbase_worlds",
    "dwbase_disk_used_bytes",
    "dwbase_disk_total_bytes",
    "dwbase_disk_used_percent",
    "dwbase_data_dir_bytes",
    "dwbase_index_docs",
    "dwbase_index_terms",
    "dwbase_index_freshness_seconds",
    "dwbase_ready",
    "dwbase_uptime_seconds",
    "dwbase_rate_limited_total",
    "dwbase_refused_total",
    "dwbase_swarm_pushes_total",
    "dwbase_memory_rss_bytes",
    "dwbase_index_memory_bytes",
    "dwbase_index_unindexed_docs",
    "dwbase_swarm_queue_depth",
    "dwbase_disk_cap_bytes",
    "dwbase_memory_cap_bytes",
    "dwbase_build_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
    "dwbase_http_connections",
    "dwbase_http_connections_refused_total",
    "dwbase_http_connections_evicted_total",
    "dwbase_http_header_timeouts_total",
    "dwbase_disk_free_bytes",
    "dwbase_disk_reserve_bytes",
    "dwbase_disk_ballast_bytes",
    "dwbase_disk_writes_refused_total",
    "dwbase_storage_io_errors_total",
    "dwbase_storage_no_space_errors_total",
    "dwbase_storage_recoveries_total",
];

/// Every `reason` of `dwbase_refused_total`.
pub const REFUSAL_REASONS: &[&str] = &[
    "world_not_allowed",
    "disk_full",
    "unauthorized",
    "bad_request",
    "body_too_large",
    "archived",
    "body_timeout",
    "storage",
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

/// Labels of `dwbase_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version (`dwbase 0.2.0` → `0.2.0`).
    pub version: String,
}

/// Latency buckets in seconds (250 µs … 5 s).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    /// `dwbase_http_requests_total{route,method,status}`.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `dwbase_remember_latency_seconds`.
    pub remember_latency_seconds: Histogram,
    /// `dwbase_ask_latency_seconds`.
    pub ask_latency_seconds: Histogram,
    /// `dwbase_replay_latency_seconds`.
    pub replay_latency_seconds: Histogram,
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
    /// `dwbase_index_freshness_seconds` (how far the index lags the store: rebuild time so far).
    pub index_freshness_seconds: Gauge<f64, AtomicU64>,
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
    /// `dwbase_disk_cap_bytes` (node.limits.max_disk_mb in bytes; 0 = no cap).
    pub disk_cap_bytes: Gauge,
    /// `dwbase_memory_cap_bytes` (node.limits.max_ram_mb in bytes; 0 = no cap).
    pub memory_cap_bytes: Gauge,
    /// `dwbase_http_connections` (client connections open).
    pub connections: Gauge,
    /// `dwbase_http_connections_refused_total` (503 at the connection limit).
    pub connections_refused: Counter,
    /// `dwbase_http_connections_evicted_total` (idle connections closed at the limit to make
    /// room for a new client).
    pub connections_evicted: Counter,
    /// `dwbase_http_header_timeouts_total` (connections closed for a slow or missing request
    /// head, idle keep-alive included).
    pub header_timeouts: Counter,
    /// `dwbase_disk_free_bytes` (available on the data dir's filesystem, as the write path
    /// last read it).
    pub disk_free_bytes: Gauge,
    /// `dwbase_disk_reserve_bytes` (free bytes writes need: the reserve, plus the ballast
    /// while it is released).
    pub disk_reserve_bytes: Gauge,
    /// `dwbase_disk_ballast_bytes` (size of the ballast in place; 0 while released).
    pub disk_ballast_bytes: Gauge,
    /// `dwbase_disk_writes_refused_total` (507 below the reserve).
    pub disk_refused: Counter,
    /// `dwbase_storage_io_errors_total` (I/O errors that stopped the store).
    pub storage_io_errors: Counter,
    /// `dwbase_storage_no_space_errors_total` (ENOSPC seen by the store; the reserve should
    /// keep this at 0).
    pub storage_no_space_errors: Counter,
    /// `dwbase_storage_recoveries_total` (store reopened after an I/O error).
    pub storage_recoveries: Counter,
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
        let hist = || Histogram::new(LATENCY_BUCKETS_SECONDS.iter().copied());
        let m = Metrics {
            http_requests: Family::default(),
            remember_latency_seconds: hist(),
            ask_latency_seconds: hist(),
            replay_latency_seconds: hist(),
            atoms_stored: Gauge::default(),
            worlds: Gauge::default(),
            disk_used_bytes: Gauge::default(),
            disk_total_bytes: Gauge::default(),
            disk_used_percent: Gauge::default(),
            data_dir_bytes: Gauge::default(),
            index_docs: Gauge::default(),
            index_terms: Gauge::default(),
            index_freshness_seconds: Gauge::default(),
            ready: Gauge::default(),
            uptime_seconds: Gauge::default(),
            rate_limited: Family::default(),
            refused: Family::default(),
            swarm_pushes: Family::default(),
            rss_bytes: Gauge::default(),
            index_memory_bytes: Gauge::default(),
            index_unindexed_docs: Gauge::default(),
            swarm_queue_depth: Gauge::default(),
            disk_cap_bytes: Gauge::default(),
            memory_cap_bytes: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_evicted: Counter::default(),
            header_timeouts: Counter::default(),
            disk_free_bytes: Gauge::default(),
            disk_reserve_bytes: Gauge::default(),
            disk_ballast_bytes: Gauge::default(),
            disk_refused: Counter::default(),
            storage_io_errors: Counter::default(),
            storage_no_space_errors: Counter::default(),
            storage_recoveries: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "dwbase_http_requests",
            "HTTP requests by route template, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "dwbase_remember_latency_seconds",
            "POST /remember latency in seconds (durable write included)",
            m.remember_latency_seconds.clone(),
        );
        r.register(
            "dwbase_ask_latency_seconds",
            "POST /ask latency in seconds",
            m.ask_latency_seconds.clone(),
        );
        r.register(
            "dwbase_replay_latency_seconds",
            "POST /replay latency in seconds",
            m.replay_latency_seconds.clone(),
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
            "dwbase_index_freshness_seconds",
            "How far the index lags the store in seconds (0 when caught up)",
            m.index_freshness_seconds.clone(),
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
        r.register(
            "dwbase_disk_cap_bytes",
            "node.limits.max_disk_mb in bytes: POST /remember answers 507 once dwbase_data_dir_bytes reaches it (0 = no cap)",
            m.disk_cap_bytes.clone(),
        );
        r.register(
            "dwbase_memory_cap_bytes",
            "node.limits.max_ram_mb in bytes: the node reports degraded above it (0 = no cap)",
            m.memory_cap_bytes.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned() })
            .set(1);
        r.register("dwbase_build_info", "Always 1; the labels name this build", build_info);
        r.register_collector(Box::new(ProcessCollector));
        r.register("dwbase_http_connections", "Client connections open", m.connections.clone());
        r.register(
            "dwbase_http_connections_refused",
            "Connections answered 503 and closed at node.limits.max_connections",
            m.connections_refused.clone(),
        );
        r.register(
            "dwbase_http_connections_evicted",
            "Idle connections closed at node.limits.max_connections to make room for a new client",
            m.connections_evicted.clone(),
        );
        r.register(
            "dwbase_http_header_timeouts",
            "Connections closed for not sending a complete request head within \
             node.limits.header_timeout_secs (idle keep-alive connections included)",
            m.header_timeouts.clone(),
        );
        r.register(
            "dwbase_disk_free_bytes",
            "Bytes available on the data dir's filesystem, as the write path last read them",
            m.disk_free_bytes.clone(),
        );
        r.register(
            "dwbase_disk_reserve_bytes",
            "Free bytes writes need (node.limits.min_free_mb, plus the ballast while released)",
            m.disk_reserve_bytes.clone(),
        );
        r.register(
            "dwbase_disk_ballast_bytes",
            "Size of the disk ballast in place (0 while released to the store)",
            m.disk_ballast_bytes.clone(),
        );
        r.register(
            "dwbase_disk_writes_refused",
            "Writes answered 507 because the free space is below the reserve",
            m.disk_refused.clone(),
        );
        r.register(
            "dwbase_storage_io_errors",
            "I/O errors that stopped the store until it was reopened",
            m.storage_io_errors.clone(),
        );
        r.register(
            "dwbase_storage_no_space_errors",
            "No-space errors seen by the store (the reserve should keep this at 0)",
            m.storage_no_space_errors.clone(),
        );
        r.register(
            "dwbase_storage_recoveries",
            "Times the store was reopened after an I/O error",
            m.storage_recoveries.clone(),
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

    /// Sets the cap gauges from the node's limits (MiB; 0 = no cap).
    pub fn set_caps(&self, max_disk_mb: u64, max_ram_mb: u64) {
        const MIB: u64 = 1024 * 1024;
        self.disk_cap_bytes.set(i64::try_from(max_disk_mb.saturating_mul(MIB)).unwrap_or(i64::MAX));
        self.memory_cap_bytes
            .set(i64::try_from(max_ram_mb.saturating_mul(MIB)).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        encode_openmetrics(&self.registry)
    }

    /// The same values in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Text => openmetrics_to_text(&self.encode()),
        }
    }
}

/// The OpenMetrics text of a registry.
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// An exposition format of `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, the default.
    Text,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE_OPENMETRICS,
            Format::Text => CONTENT_TYPE_TEXT,
        }
    }
}

/// Content type of an OpenMetrics answer.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of a classic Prometheus text answer.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The format to answer an `Accept` header value with: OpenMetrics when the client lists
/// `application/openmetrics-text` with a non-zero quality, else the classic text format.
pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
    let wants = accept.into_iter().flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
    });
    if wants {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// OpenMetrics → classic Prometheus text, for what prometheus-client writes: a counter's
/// `# HELP`/`# TYPE` move to its `_total` sample name (where promtool and the 0.0.4 parsers look
/// for them), `unknown` becomes `untyped`, `# UNIT` and `# EOF` go.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: Vec<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta =
            ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                let suffix = if counters.contains(&name) { "_total" } else { "" };
                out.push_str(prefix);
                out.push_str(name);
                out.push_str(suffix);
                out.push(' ');
                out.push_str(tail);
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The standard `process_*` families of this process (as client_golang names them), read from
/// /proc at each scrape: CPU time, resident and virtual memory, open and maximum file
/// descriptors, start time, threads. Families whose source cannot be read (not Linux) are
/// left out. Register with [`Registry::register_collector`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// What [`ProcessCollector`] read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size in bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Parses `/proc/<pid>/stat` (fields after the parenthesised command name, which may hold
    /// spaces) given the clock ticks per second, the page size and `btime` of `/proc/stat`.
    pub fn parse(stat: &str, ticks: u64, page_size: u64, boot_time: u64) -> Option<Self> {
        // Field 3 (state) is the first after the last ')'; utime is field 14.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
        let ticks = ticks.max(1) as f64;
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
            threads: num(20)?,
            start_time_seconds: boot_time as f64 + num(22)? as f64 / ticks,
            virtual_bytes: num(23)?,
            resident_bytes: num(24)?.saturating_mul(page_size),
        })
    }

    /// This process's figures, or `None` without a readable /proc.
    pub fn read_self() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime = boot.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        Self::parse(
            &stat,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            btime,
        )
    }
}

/// The soft `Max open files` limit of `/proc/self/limits`; `None` when unlimited or unreadable.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn gauge<N: Copy + prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(p) = ProcessStats::read_self() {
            // Registered without `_total`: the encoder appends it to counters.
            let cpu = ConstCounter::new(p.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let e = &mut encoder;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes as i64,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes as i64,
            )?;
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            )?;
            gauge(e, "process_threads", "Number of OS threads in the process", p.threads as i64)?;
        }
        if let Some(n) = open_fds() {
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", n as i64)?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                n as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_classic_text_unless_openmetrics_is_asked_for() {
        assert_eq!(negotiate([]), Format::Text);
        assert_eq!(negotiate(["*/*"]), Format::Text);
        assert_eq!(negotiate(["text/plain"]), Format::Text);
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate([prom]), Format::OpenMetrics);
        assert_eq!(negotiate(["application/openmetrics-text; q=0"]), Format::Text);
        assert_eq!(negotiate(["text/plain", "Application/OpenMetrics-Text"]), Format::OpenMetrics);
    }

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let text = openmetrics_to_text(&Metrics::new().encode());
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("# HELP dwbase_refused_total "), "{text}");
        assert!(text.contains("# TYPE dwbase_refused_total counter\n"));
        assert!(text.contains("# TYPE dwbase_remember_latency_seconds histogram\n"));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("dwbase_build_info{version=\""), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "HELP for {name}");
        }
    }

    #[test]
    fn process_stat_parses_a_command_with_spaces_and_parens() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss …
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 1000 123456789 300 18446744073709551615";
        let p = ProcessStats::parse(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert!(ProcessStats::parse("garbage", 100, 4096, 0).is_none());
    }

    #[test]
    fn this_process_has_process_metrics() {
        let p = ProcessStats::read_self().expect("/proc is readable on Linux");
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.start_time_seconds > 1e9);
        assert!(open_fds().unwrap() > 0);
    }
}
