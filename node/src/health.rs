//! Resource sampling (filesystem, data dir size, RSS) and the health / readiness verdicts.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

/// Filesystem usage of the volume holding a path, computed as `df` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiskUsage {
    /// Bytes in use: all blocks minus the free ones (`df`'s "Used").
    pub used_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// `used / (used + available) × 100`, as `df`'s "Use%": blocks reserved for root count
    /// neither as used nor as available.
    pub percent_used: f64,
    /// Bytes an unprivileged writer can still use (`df`'s "Avail").
    pub available_bytes: u64,
}

impl DiskUsage {
    /// From `statvfs` figures: fragment size, total, free and available blocks.
    pub fn from_blocks(frag: u64, blocks: u64, free: u64, avail: u64) -> Option<DiskUsage> {
        if blocks == 0 {
            return None;
        }
        let used = blocks.saturating_sub(free).saturating_mul(frag);
        let available = avail.saturating_mul(frag);
        let denominator = used.saturating_add(available);
        let percent_used =
            if denominator == 0 { 0.0 } else { used as f64 * 100.0 / denominator as f64 };
        Some(DiskUsage {
            used_bytes: used,
            total_bytes: blocks.saturating_mul(frag),
            percent_used,
            available_bytes: available,
        })
    }
}

/// Reads the filesystem usage of the volume holding `path` (one `statvfs`: microseconds).
pub fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    DiskUsage::from_blocks(
        st.fragment_size() as u64,
        st.blocks() as u64,
        st.blocks_free() as u64,
        st.blocks_available() as u64,
    )
}

/// Bytes allocated on disk by every file under `dir` (like `du -s`), following no symlinks.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == crate::disk::BALLAST_FILE && d == dir {
                // Room kept for the store (see crate::disk), not data.
            } else {
                total += allocated(&meta);
            }
        }
    }
    total
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // Sparse files count what they occupy, but never less than their length rounded down to
    // whole blocks would suggest a cap is being dodged: take the larger of the two.
    (meta.blocks() * 512).max(meta.len())
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

/// Resident set size of this process in bytes (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    rss_of("self")
}

/// Resident set size of process `pid` (`"self"` for this one) in bytes, from `/proc`.
pub fn rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The latest resource sample, refreshed by the background sampler.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Filesystem usage of the data dir's volume, if readable.
    pub disk: Option<DiskUsage>,
    /// Size of the data dir.
    pub data_dir_bytes: u64,
    /// Store bytes written when the sample was taken (to estimate growth since).
    pub bytes_written_at_sample: u64,
    /// RSS of the process.
    pub rss_bytes: Option<u64>,
    /// When the sample was taken.
    pub taken: Instant,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            disk: None,
            data_dir_bytes: 0,
            bytes_written_at_sample: 0,
            rss_bytes: None,
            taken: Instant::now(),
        }
    }
}

/// One check in `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// ok, degraded or unhealthy.
    pub status: &'static str,
    /// Explanation.
    pub message: String,
    /// Check-specific figures.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Check {
    /// A passing check.
    pub fn ok(message: impl Into<String>) -> Self {
        Self { status: "ok", message: message.into(), details: Default::default() }
    }

    /// A degraded check.
    pub fn degraded(message: impl Into<String>) -> Self {
        Self { status: "degraded", message: message.into(), details: Default::default() }
    }

    /// A failing check.
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self { status: "unhealthy", message: message.into(), details: Default::default() }
    }

    /// Adds a figure.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.details.insert(key.to_owned(), serde_json::to_value(value).unwrap_or_default());
        self
    }
}

/// The `/health` (and `/readyz`) body: the original's four keys (`status`, `disk_usage`,
/// `index_rebuild_lag_ms`, `message`, with its values) so existing monitors keep working, and
/// ours beside them.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The original's verdict: `ready`, or `degraded` when the disk is over its threshold, the
    /// storage or memory check fails, or an index rebuild has run longer than
    /// `node.health.index_rebuild_warn_seconds`.
    pub status: &'static str,
    /// Our verdict over every check: `ok`, `degraded` or `unhealthy`.
    pub health: &'static str,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Why the node is not ready (empty when ready).
    pub reasons: Vec<String>,
    /// The same reasons as stable names (`disk_usage`, `disk_cap`, `storage`, …): all that
    /// `/readyz` shows a caller without the API key.
    pub reason_codes: Vec<&'static str>,
    /// disk, memory, storage, index.
    pub checks: std::collections::BTreeMap<&'static str, Check>,
    /// Node version.
    pub version: &'static str,
    /// Node id.
    pub node_id: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The original's key: filesystem usage of the data dir's volume.
    pub disk_usage: Option<DiskUsage>,
    /// The original's key: how long the running index rebuild has taken so far; `null` when no
    /// rebuild runs (as the original).
    pub index_rebuild_lag_ms: Option<u64>,
    /// The original's key: the most important problem, `null` when there is none.
    pub message: Option<String>,
    /// `on` when the node serves HTTPS, `off` for plain HTTP.
    pub tls: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_computed_as_df_does() {
        // df on this filesystem: 1K-blocks 56037, Used 14, Available 51437, Use% 1%; the 5 %
        // reserved for root is neither used nor available.
        let d = DiskUsage::from_blocks(1024, 56037, 56023, 51437).unwrap();
        assert_eq!(d.used_bytes, 14 * 1024);
        assert_eq!(d.available_bytes, 51437 * 1024);
        assert!((d.percent_used - 14.0 * 100.0 / (14.0 + 51437.0)).abs() < 1e-9);
        // A full filesystem (root wrote into the reserve) is 100 %, not more.
        let full = DiskUsage::from_blocks(4096, 1000, 0, 0).unwrap();
        assert_eq!(full.percent_used, 100.0);
        assert!(DiskUsage::from_blocks(4096, 0, 0, 0).is_none());
        let here = disk_usage(Path::new(".")).unwrap();
        assert!(here.total_bytes > 0 && here.percent_used <= 100.0, "{here:?}");
    }
}
