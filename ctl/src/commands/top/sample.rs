//! What `top` measures itself, per node: CPU % and RSS from /proc, request rate and p99 latency
//! from the node's own `/metrics`. Everything here is a difference between two samples, so the
//! first sample of a process shows "-" and a new pid starts over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A node to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its process, if running.
    pub pid: Option<u32>,
    /// Base URL of its API (for `/metrics`).
    pub url: String,
    /// Its config file: an https node's CA is found from it (`deploy devnet --tls`).
    pub config_path: PathBuf,
}

/// What was measured for one node; `None` means "not known (yet)".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// CPU used since the previous sample, in % of one core.
    pub cpu_pct: Option<f64>,
    /// Resident set size, bytes.
    pub rss_bytes: Option<u64>,
    /// API requests per second since the previous sample (probes and scrapes left out).
    pub req_rate: Option<f64>,
    /// p99 latency of remember/ask/replay since the previous sample, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// Routes that are not the API: the supervisor's probes and our own scrapes.
const NOT_API: &[&str] = &["/metrics", "/healthz", "/readyz", "/health"];

/// The latency histograms whose union gives p99 (same buckets).
const LATENCY: &[&str] = &[
    "dwbase_remember_latency_seconds",
    "dwbase_ask_latency_seconds",
    "dwbase_replay_latency_seconds",
];

/// The figures of one `/metrics` page that later ones are compared with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsPage {
    /// Sum of `dwbase_http_requests_total` over API routes.
    pub api_requests: f64,
    /// Cumulative latency buckets (upper bound in seconds, count), summed over [`LATENCY`].
    pub buckets: Vec<(f64, f64)>,
}

/// Reads the figures `top` needs from a node's `/metrics` page (Prometheus/OpenMetrics
/// text): the samples of `dwbase_http_requests_total` and the latency buckets; `None` when the
/// page has neither (not a DWBase node). Only these few sample lines are looked at, with a
/// quote-aware split (route labels hold braces: `/atoms/{id}`). A general parser
/// (prometheus-parse: a regex and a label map per line) cost about 1 ms a page, which for 50
/// nodes every interval was most of the view's CPU; this is a few microseconds.
pub fn parse_metrics(text: &str) -> Option<MetricsPage> {
    let mut page = MetricsPage::default();
    let mut seen = false;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, labels, rest)) = split_series(line) else { continue };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if name == "dwbase_http_requests_total" {
            seen = true;
            if !NOT_API.contains(&label_value(labels, "route").unwrap_or("")) {
                page.api_requests += value;
            }
        } else if name.strip_suffix("_bucket").is_some_and(|base| LATENCY.contains(&base)) {
            let Some(le) = label_value(labels, "le").and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            seen = true;
            match page.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += value,
                None => page.buckets.push((le, value)),
            }
        }
    }
    page.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(page)
}

/// `name{labels} rest` → (name, labels without braces, rest); `name rest` → (name, "", rest).
fn split_series(line: &str) -> Option<(&str, &str, &str)> {
    let Some(open) = line.find('{') else {
        let (name, rest) = line.split_once(' ')?;
        return Some((name, "", rest));
    };
    let bytes = line.as_bytes();
    let (mut i, mut quoted) = (open + 1, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some((&line[..open], &line[open + 1..i], &line[i + 1..])),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value of label `key` in `k="v",k2="v2"` (escapes left as written).
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..end)?;
        if k.trim_start_matches(',').trim() == key {
            return Some(value);
        }
        rest = after.get(end + 1..)?;
    }
}

/// The q-quantile of the requests between two pages, interpolated inside its bucket as
/// Prometheus' `histogram_quantile` does; `None` when no request was timed in between.
pub fn quantile_between(before: &MetricsPage, after: &MetricsPage, q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, c)| {
            let old = before.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, (c - old).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, cum) in &delta {
        if *cum >= rank {
            if le.is_infinite() {
                // Above the highest finite bucket: that bound is all we know.
                return Some(lower);
            }
            let in_bucket = cum - below;
            let frac = if in_bucket > 0.0 { (rank - below) / in_bucket } else { 1.0 };
            return Some(lower + (le - lower) * frac);
        }
        lower = *le;
        below = *cum;
    }
    Some(lower)
}

/// CPU time (clock ticks) and RSS (bytes) of a process, from /proc/PID/stat.
#[cfg(target_os = "linux")]
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    Some((stat.utime + stat.stime, stat.rss * procfs::page_size()))
}

/// Not measured outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn proc_usage(_pid: u32) -> Option<(u64, u64)> {
    None
}

#[cfg(target_os = "linux")]
fn ticks_per_second() -> f64 {
    procfs::ticks_per_second() as f64
}

#[cfg(not(target_os = "linux"))]
fn ticks_per_second() -> f64 {
    100.0
}

#[derive(Debug)]
struct Previous {
    pid: Option<u32>,
    at: Instant,
    ticks: Option<u64>,
    page: Option<MetricsPage>,
}

/// Samples every target once per call and keeps what the next call compares with.
#[derive(Debug)]
pub struct Sampler {
    timeout: Duration,
    /// One client per CA: `None` for plain HTTP and the system's roots, else a deployment's
    /// `tls/ca.crt` (`None` as the value: that CA could not be loaded).
    clients: HashMap<Option<PathBuf>, Option<reqwest::Client>>,
    /// The CA of each https node, by config file (looked up once).
    cas: HashMap<PathBuf, Option<PathBuf>>,
    prev: HashMap<String, Previous>,
}

impl Sampler {
    /// A sampler whose `/metrics` requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, clients: HashMap::new(), cas: HashMap::new(), prev: HashMap::new() }
    }

    /// The client for `t`: an https node's is built with its deployment's CA.
    fn client(&mut self, t: &Target) -> Option<reqwest::Client> {
        let ca = if t.url.starts_with("https://") {
            self.cas
                .entry(t.config_path.clone())
                .or_insert_with(|| crate::httpclient::deployed_ca(&t.config_path))
                .clone()
        } else {
            None
        };
        let timeout = self.timeout;
        self.clients
            .entry(ca)
            .or_insert_with_key(|ca| {
                crate::httpclient::builder_with(ca.as_deref())
                    .ok()?
                    .timeout(timeout)
                    .pool_max_idle_per_host(1)
                    .build()
                    .ok()
            })
            .clone()
    }

    /// One round over `targets`: /proc for each running one, and all `/metrics` at once.
    pub async fn sample(&mut self, targets: &[Target]) -> Vec<(String, Figures)> {
        let clients: Vec<Option<reqwest::Client>> =
            targets.iter().map(|t| self.client(t)).collect();
        let pages = futures::future::join_all(targets.iter().zip(clients).map(|(t, http)| {
            let url = format!("{}/metrics", t.url);
            let running = t.pid.is_some();
            async move {
                if !running {
                    return None;
                }
                let text = http?.get(&url).send().await.ok()?.error_for_status().ok()?;
                parse_metrics(&text.text().await.ok()?)
            }
        }))
        .await;
        let now = Instant::now();
        self.prev.retain(|name, _| targets.iter().any(|t| &t.name == name));
        let mut out = Vec::with_capacity(targets.len());
        for (t, page) in targets.iter().zip(pages) {
            let usage = t.pid.and_then(proc_usage);
            let prev = self.prev.get(&t.name).filter(|p| p.pid == t.pid && t.pid.is_some());
            let mut f = Figures { rss_bytes: usage.map(|u| u.1), ..Figures::default() };
            if let Some(p) = prev {
                let secs = now.duration_since(p.at).as_secs_f64();
                if secs > 0.0 {
                    if let (Some(before), Some((after, _))) = (p.ticks, usage) {
                        let used = after.saturating_sub(before) as f64 / ticks_per_second();
                        f.cpu_pct = Some(100.0 * used / secs);
                    }
                    if let (Some(before), Some(after)) = (&p.page, &page) {
                        // A counter that went down means the node started over.
                        if after.api_requests >= before.api_requests {
                            f.req_rate = Some((after.api_requests - before.api_requests) / secs);
                            f.p99_ms = quantile_between(before, after, 0.99).map(|s| s * 1000.0);
                        }
                    }
                }
            }
            self.prev.insert(
                t.name.clone(),
                Previous { pid: t.pid, at: now, ticks: usage.map(|u| u.0), page },
            );
            out.push((t.name.clone(), f));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page a real node's metrics registry writes, after `f` recorded some traffic.
    fn node_page(f: impl FnOnce(&dwbase_node::metrics::Metrics)) -> MetricsPage {
        let m = dwbase_node::metrics::Metrics::new();
        f(&m);
        parse_metrics(&m.encode()).unwrap()
    }

    #[test]
    fn labels_with_braces_commas_and_escapes() {
        let line = r#"dwbase_http_requests_total{route="/atoms/{id}",method="GET",status="200"} 3"#;
        let (name, labels, rest) = split_series(line).unwrap();
        assert_eq!((name, rest.trim()), ("dwbase_http_requests_total", "3"));
        assert_eq!(label_value(labels, "route"), Some("/atoms/{id}"));
        assert_eq!(label_value(labels, "status"), Some("200"));
        assert_eq!(label_value(labels, "nope"), None);
        let odd = r#"x{a="say \"hi\", ok",b="}"} 1"#;
        let (_, labels, rest) = split_series(odd).unwrap();
        assert_eq!(label_value(labels, "b"), Some("}"));
        assert_eq!(rest.trim(), "1");
        assert_eq!(parse_metrics("# just a comment\nup 1\n"), None, "not a DWBase page");
    }

    fn request(m: &dwbase_node::metrics::Metrics, route: &str, n: u64) {
        let labels = dwbase_node::metrics::HttpLabels {
            route: route.to_owned(),
            method: "POST".to_owned(),
            status: 200,
        };
        m.http_requests.get_or_create(&labels).inc_by(n);
    }

    #[test]
    fn api_requests_leave_out_probes_and_scrapes() {
        let page = node_page(|m| {
            request(m, "/remember", 5);
            request(m, "/ask", 2);
            request(m, "/readyz", 100);
            request(m, "/metrics", 7);
        });
        assert_eq!(page.api_requests, 7.0);
    }

    #[test]
    fn p99_of_the_requests_between_two_pages() {
        let m = dwbase_node::metrics::Metrics::new();
        for _ in 0..50 {
            m.remember_latency_seconds.observe(0.004);
        }
        let before = parse_metrics(&m.encode()).unwrap();
        // Between the pages: 99 fast asks and one slow replay; the earlier 50 do not count.
        for _ in 0..99 {
            m.ask_latency_seconds.observe(0.0004);
        }
        m.replay_latency_seconds.observe(0.8);
        let after = parse_metrics(&m.encode()).unwrap();
        let p99 = quantile_between(&before, &after, 0.99).unwrap();
        assert!(p99 > 0.00025 && p99 <= 0.0005, "p99 {p99}");
        let p100 = quantile_between(&before, &after, 1.0).unwrap();
        assert!(p100 > 0.5 && p100 <= 1.0, "max {p100}");
        assert_eq!(quantile_between(&after, &after, 0.99), None, "no requests in between");
    }

    #[test]
    fn slower_than_every_bucket_reports_the_highest_bound() {
        let before = node_page(|_| {});
        let after = node_page(|m| m.ask_latency_seconds.observe(60.0));
        assert_eq!(quantile_between(&before, &after, 0.99), Some(5.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn our_own_process_has_cpu_time_and_memory() {
        let (_, rss) = proc_usage(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "rss {rss}");
        assert_eq!(proc_usage(u32::MAX), None);
    }
}
