//! The write path's own free-space check, and the ballast file.
//!
//! Sampling disk usage every few seconds cannot stop a fast writer: a small filesystem goes
//! from 1 % to 100 % in about a second. So, as Elasticsearch's flood-stage watermark and
//! etcd's NOSPACE alarm do, the node refuses writes itself *before* the filesystem is full:
//!
//! - [`DiskGuard::admit`] runs for every write (remember, swarm ingest, world changes). It
//!   compares the free space of the filesystem holding the data dir (`statvfs`'s `f_bavail`,
//!   `df`'s "Avail", one syscall: microseconds) with the reserve, `[node.limits] min_free_mb`.
//!   The figure is refreshed after a group commit (once per commit batch), and by any write
//!   that finds it older than [`FRESH_FOR`], so a filesystem filled by someone else is seen
//!   too; bytes admitted since the last refresh count as already used. A commit skips the
//!   refresh ([`DiskGuard::refresh_after_commit`]) only while the figure is younger than
//!   [`FRESH_FOR`], at least [`FAR_FROM_RESERVE`] above what writes need, and the bytes
//!   admitted since are under [`SKIP_SHARE`] of that headroom: near the reserve every commit
//!   samples, as before, and far from it a writer would have to write many times what it was
//!   admitted for, or someone else [`FAR_FROM_RESERVE`] within [`FRESH_FOR`], to cross the
//!   reserve unseen. (The `statvfs` was one more system call on every remember's path.)
//! - Below the reserve a write is refused with 507 and a JSON reason, `/readyz` answers 503
//!   with reason `disk_reserve`, and writes resume by themselves as soon as space is back:
//!   the node's disk watch refreshes the figure every [`WATCH_INTERVAL`].
//!
//! The **ballast** (`[node.limits] ballast_mb`, a file `dwbase.ballast` in the data dir,
//! allocated with `fallocate`) is room kept for the store itself: when something else fills
//! the filesystem and sled hits ENOSPC anyway, sled stops (it refuses every write until it is
//! reopened) and reopening it needs a little space of its own (it writes a new snapshot of its
//! page table). The ballast is then deleted so the store can reopen — also at start-up, so a
//! node restarted on a full disk opens and serves reads instead of crash-looping — and is
//! re-created once the free space is back above reserve + ballast. While the ballast is
//! missing, writes need reserve + ballast free, so they never eat the room it is kept for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::health::{self, DiskUsage};

/// Name of the ballast file, in the data dir (the one place sure to be on its filesystem).
pub const BALLAST_FILE: &str = "dwbase.ballast";
/// The reserve when `min_free_mb` is not set: 5 % of the filesystem, within these bounds.
pub const AUTO_RESERVE_MIN: u64 = 8 << 20;
/// Upper bound of the automatic reserve.
pub const AUTO_RESERVE_MAX: u64 = 64 << 20;
/// Upper bound of the automatic ballast (half the reserve).
pub const AUTO_BALLAST_MAX: u64 = 16 << 20;
/// A free-space figure younger than this is used as it is by [`DiskGuard::admit`].
pub const FRESH_FOR: Duration = Duration::from_millis(20);
/// Headroom above what writes need beyond which a commit may skip its refresh (see the module
/// docs): 64 MiB, more than a second's writes of a fast node, far more than [`FRESH_FOR`]'s.
pub const FAR_FROM_RESERVE: u64 = 64 << 20;
/// Bytes admitted since the last refresh, as a share (1/N) of the headroom then, up to which a
/// commit may skip its refresh: the actual writes could be N times the admitted estimate
/// before reaching the reserve.
pub const SKIP_SHARE: u64 = 8;
/// How often the node's disk watch refreshes the figure (and recovers the store).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes on disk counted per byte admitted (sled's log records, index pages, rewrites).
pub const WRITE_AMPLIFICATION: u64 = 2;

const MIB: u64 = 1 << 20;

/// Why a write was refused for lack of space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes free (available to unprivileged writers) at the last check.
    pub free_bytes: u64,
    /// Bytes that must stay free.
    pub needed_bytes: u64,
    /// The message for the client and `/readyz`.
    pub message: String,
}

/// The free-space figure as a commit finds it ([`DiskGuard::refresh_after_commit`]).
#[derive(Debug, Clone, Copy)]
struct Sampled {
    /// Whether the last refresh could read the filesystem.
    known: bool,
    /// Time since the last refresh.
    age: Duration,
    /// Free bytes at the last refresh.
    free: u64,
    /// Bytes admitted since (write amplification included).
    admitted: u64,
}

impl Sampled {
    /// Whether a commit may keep this figure: fresh, and far above `needed` even if the bytes
    /// admitted since were [`SKIP_SHARE`] times more on disk.
    fn may_skip(&self, needed: u64) -> bool {
        let headroom = self.free.saturating_sub(needed);
        self.known
            && self.age < FRESH_FOR
            && headroom >= FAR_FROM_RESERVE
            && self.admitted < headroom / SKIP_SHARE
    }
}

/// The free-space guard of one data dir (see the module docs).
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    ballast: PathBuf,
    configured_reserve: Option<u64>,
    configured_ballast: Option<u64>,
    epoch: Instant,
    /// `f_bavail` in bytes at the last refresh.
    free: AtomicU64,
    /// Filesystem size at the last refresh.
    total: AtomicU64,
    /// ms since `epoch` of the last refresh.
    checked_ms: AtomicU64,
    /// Bytes admitted since the last refresh (times [`WRITE_AMPLIFICATION`]).
    admitted: AtomicU64,
    /// Whether the last refresh could read the filesystem.
    known: AtomicBool,
    ballast_present: AtomicBool,
    /// Writes refused since start.
    refused: AtomicU64,
    /// Set by a refusal, cleared by the next write admitted: while set, writes (and
    /// readiness) need [`DiskGuard::band`] more, so the verdict does not flap at the line.
    refusing: AtomicBool,
}

impl DiskGuard {
    /// A guard for `data_dir` under `[node.limits]` (reads the filesystem once).
    pub fn new(data_dir: &Path, limits: &LimitsConfig) -> DiskGuard {
        let guard = DiskGuard {
            dir: data_dir.to_path_buf(),
            ballast: data_dir.join(BALLAST_FILE),
            configured_reserve: limits.min_free_mb.map(|mb| mb.saturating_mul(MIB)),
            configured_ballast: limits.ballast_mb.map(|mb| mb.saturating_mul(MIB)),
            epoch: Instant::now(),
            free: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            known: AtomicBool::new(false),
            ballast_present: AtomicBool::new(data_dir.join(BALLAST_FILE).is_file()),
            refused: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        };
        guard.refresh();
        guard
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads the filesystem's free space now (one `statvfs`) and returns it.
    pub fn refresh(&self) -> Option<DiskUsage> {
        let usage = health::disk_usage(&self.dir);
        match usage {
            Some(u) => {
                self.free.store(u.available_bytes, Ordering::Relaxed);
                self.total.store(u.total_bytes, Ordering::Relaxed);
                self.known.store(true, Ordering::Relaxed);
            }
            None => self.known.store(false, Ordering::Relaxed),
        }
        self.admitted.store(0, Ordering::Relaxed);
        self.checked_ms.store(self.now_ms(), Ordering::Relaxed);
        usage
    }

    /// The refresh after a group commit: skipped while the last figure is fresh and the free
    /// space far above the reserve (see the module docs); otherwise [`DiskGuard::refresh`].
    pub fn refresh_after_commit(&self) {
        let age = self.now_ms().saturating_sub(self.checked_ms.load(Ordering::Relaxed));
        let sample = Sampled {
            known: self.known.load(Ordering::Relaxed),
            age: Duration::from_millis(age),
            free: self.free.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
        };
        if !sample.may_skip(self.needed_bytes()) {
            self.refresh();
        }
    }

    /// Bytes that must stay free on the filesystem: `min_free_mb`, or 5 % of the filesystem
    /// (at least [`AUTO_RESERVE_MIN`], at most [`AUTO_RESERVE_MAX`] and a quarter of it).
    pub fn reserve_bytes(&self) -> u64 {
        if let Some(r) = self.configured_reserve {
            return r;
        }
        auto_reserve(self.total.load(Ordering::Relaxed))
    }

    /// Size of the ballast file: `ballast_mb`, or half the reserve (at most
    /// [`AUTO_BALLAST_MAX`]). 0: no ballast.
    pub fn ballast_bytes(&self) -> u64 {
        match self.configured_ballast {
            Some(b) => b,
            None => (self.reserve_bytes() / 2).min(AUTO_BALLAST_MAX),
        }
    }

    /// Once writes are refused, they resume only when the free space is this much above what
    /// they need: a quarter of the reserve, at least 1 MiB (a low and a high watermark, as
    /// Elasticsearch's flood stage has).
    pub fn band(&self) -> u64 {
        (self.reserve_bytes() / 4).max(MIB)
    }

    /// Whether the ballast file is in place.
    pub fn ballast_present(&self) -> bool {
        self.ballast_present.load(Ordering::Relaxed)
    }

    /// Free bytes writes need: the reserve, plus the ballast's size while it is missing.
    pub fn needed_bytes(&self) -> u64 {
        let missing = if self.ballast_present() { 0 } else { self.ballast_bytes() };
        self.reserve_bytes().saturating_add(missing)
    }

    /// Free bytes at the last refresh, less what was admitted since.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed).saturating_sub(self.admitted.load(Ordering::Relaxed))
    }

    /// Writes refused since start.
    pub fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `Err` when there is not room for a write of `bytes` above the reserve (refreshing the
    /// figure first when it is older than [`FRESH_FOR`]); otherwise counts the bytes as used.
    pub fn admit(&self, bytes: u64) -> Result<(), NoRoom> {
        let age = self.now_ms().saturating_sub(self.checked_ms.load(Ordering::Relaxed));
        if age >= FRESH_FOR.as_millis() as u64 {
            self.refresh();
        }
        if let Err(no) = self.check(bytes) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.refusing.store(true, Ordering::Relaxed);
            return Err(no);
        }
        self.refusing.store(false, Ordering::Relaxed);
        self.admitted.fetch_add(bytes.saturating_mul(WRITE_AMPLIFICATION), Ordering::Relaxed);
        Ok(())
    }

    /// Whether `min_free_mb = 0` turned the reserve off (writes go on until the filesystem is
    /// full, and the store meets ENOSPC itself).
    pub fn disabled(&self) -> bool {
        self.configured_reserve == Some(0)
    }

    /// `Err` when the free space (as last read) is below what writes need (for `/readyz`).
    /// Always `Ok` with the reserve turned off.
    pub fn check(&self, bytes: u64) -> Result<(), NoRoom> {
        if self.disabled() {
            return Ok(());
        }
        self.room(bytes)
    }

    /// [`DiskGuard::check`] even with the reserve turned off: is there room for `bytes` above
    /// the reserve and the ballast? (A store stopped by ENOSPC waits for this to reopen.)
    pub fn room(&self, bytes: u64) -> Result<(), NoRoom> {
        if !self.known.load(Ordering::Relaxed) {
            // statvfs failed (the folder is gone?): the store will say what is wrong.
            return Ok(());
        }
        let free = self.free_bytes();
        let band = if self.refusing.load(Ordering::Relaxed) { self.band() } else { 0 };
        let needed = self.needed_bytes().saturating_add(band);
        if free >= needed.saturating_add(bytes.saturating_mul(WRITE_AMPLIFICATION)) {
            return Ok(());
        }
        let ballast = if self.ballast_present() || self.ballast_bytes() == 0 {
            String::new()
        } else {
            format!(
                " plus the {} ballast (node.limits.ballast_mb) released to the store",
                mib(self.ballast_bytes())
            )
        };
        Err(NoRoom {
            free_bytes: free,
            needed_bytes: needed,
            message: format!(
                "{} free on the filesystem holding {}, below the write reserve of {} \
                 (node.limits.min_free_mb){ballast}: writes are refused until {} are free, \
                 then resume by themselves; reads keep working",
                mib(free),
                self.dir.display(),
                mib(self.reserve_bytes()),
                mib(self.needed_bytes().saturating_add(self.band())),
            ),
        })
    }

    /// Deletes the ballast file so the store can use its room (after an ENOSPC). Returns
    /// whether there was one.
    pub fn release_ballast(&self) -> bool {
        match std::fs::remove_file(&self.ballast) {
            Ok(()) => {
                self.ballast_present.store(false, Ordering::Relaxed);
                tracing::warn!(
                    file = %self.ballast.display(),
                    bytes = self.ballast_bytes(),
                    "released the disk ballast for the store; it is re-created once space is back"
                );
                self.refresh();
                true
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %self.ballast.display(), error = %e, "cannot remove the ballast");
                }
                self.ballast_present.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    /// Creates the ballast when it is missing and there is room for it above the reserve
    /// (or deletes it when ballast_mb is 0). Returns whether it is in place now.
    pub fn maintain_ballast(&self) -> bool {
        let size = self.ballast_bytes();
        if size == 0 {
            if self.ballast_present() {
                self.release_ballast();
            }
            return false;
        }
        if self.ballast_present() {
            return true;
        }
        if self.refresh().is_none() {
            return false;
        }
        if self.free_bytes() < self.reserve_bytes().saturating_add(size) {
            return false;
        }
        match allocate(&self.ballast, size) {
            Ok(()) => {
                self.ballast_present.store(true, Ordering::Relaxed);
                tracing::info!(file = %self.ballast.display(), bytes = size, "disk ballast in place");
                self.refresh();
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.ballast);
                tracing::warn!(file = %self.ballast.display(), error = %e, "cannot create the disk ballast");
                false
            }
        }
    }
}

/// Allocates `size` bytes for `path` on disk (really: blocks, not a sparse file).
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("ballast.partial");
    let mut file = std::fs::File::create(&tmp)?;
    #[cfg(target_os = "linux")]
    let fallocated =
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).is_ok();
    #[cfg(not(target_os = "linux"))]
    let fallocated = false;
    if !fallocated {
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The reserve of a filesystem of `total` bytes when `min_free_mb` is not set: 5 %, at least
/// [`AUTO_RESERVE_MIN`], at most [`AUTO_RESERVE_MAX`] and a quarter of the filesystem.
pub fn auto_reserve(total: u64) -> u64 {
    (total / 20).clamp(AUTO_RESERVE_MIN, AUTO_RESERVE_MAX).min(total / 4)
}

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Whether an I/O error means "no space left" (ENOSPC, or EDQUOT: a quota is full).
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min_free_mb: Option<u64>, ballast_mb: Option<u64>) -> LimitsConfig {
        LimitsConfig { min_free_mb, ballast_mb, ..LimitsConfig::default() }
    }

    #[test]
    fn the_reserve_and_ballast_defaults_follow_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), &limits(None, None));
        let total = g.total.load(Ordering::Relaxed);
        let r = g.reserve_bytes();
        assert!(r <= AUTO_RESERVE_MAX && r <= total / 4 && r > 0, "{r}");
        assert_eq!(g.ballast_bytes(), (r / 2).min(AUTO_BALLAST_MAX));
        let g = DiskGuard::new(dir.path(), &limits(Some(3), Some(0)));
        assert_eq!(g.reserve_bytes(), 3 * MIB);
        assert_eq!(g.ballast_bytes(), 0);
        assert_eq!(g.needed_bytes(), 3 * MIB, "no ballast: nothing to keep for it");
    }

    #[test]
    fn writes_are_refused_below_the_reserve_and_counted_until_the_next_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), &limits(Some(0), Some(0)));
        assert!(g.disabled());
        g.admit(1000).unwrap();
        assert!(g.admitted.load(Ordering::Relaxed) >= 1000 * WRITE_AMPLIFICATION);
        // A reserve larger than the filesystem refuses everything, naming the key.
        let g = DiskGuard::new(dir.path(), &limits(Some(u64::MAX / MIB), Some(0)));
        let no = g.admit(1).unwrap_err();
        assert!(no.message.contains("node.limits.min_free_mb"), "{}", no.message);
        assert_eq!(g.refused_count(), 1);
        // Refusing: the line moves up by the band until a write is admitted again.
        let dir2 = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir2.path(), &limits(Some(1), Some(0)));
        let free = g.free_bytes();
        assert!(g.check(0).is_ok());
        g.refusing.store(true, Ordering::Relaxed);
        assert_eq!(g.band(), MIB);
        assert_eq!(g.check(0).is_ok(), free >= 2 * MIB);
    }

    #[test]
    fn the_ballast_is_allocated_released_and_needed_back_before_writes() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), &limits(Some(1), Some(2)));
        assert!(!g.ballast_present());
        assert_eq!(g.needed_bytes(), 3 * MIB, "reserve + the missing ballast");
        assert!(g.maintain_ballast());
        let file = dir.path().join(BALLAST_FILE);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), 2 * MIB);
        {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 >= 2 * MIB, "allocated, not sparse");
        }
        assert_eq!(g.needed_bytes(), MIB);
        assert!(g.release_ballast());
        assert!(!file.exists());
        assert!(!g.release_ballast(), "already gone");
        assert!(DiskGuard::new(dir.path(), &limits(Some(1), Some(2))).needed_bytes() == 3 * MIB);
    }

    #[test]
    fn a_commit_keeps_the_figure_only_while_fresh_and_far_above_the_reserve() {
        let needed = 8 * MIB;
        let far = needed + FAR_FROM_RESERVE;
        let s = Sampled { known: true, age: Duration::ZERO, free: far, admitted: 0 };
        assert!(s.may_skip(needed));
        assert!(!Sampled { age: FRESH_FOR, ..s }.may_skip(needed), "stale");
        assert!(!Sampled { known: false, ..s }.may_skip(needed), "unknown");
        assert!(!Sampled { free: far - 1, ..s }.may_skip(needed), "near the reserve");
        let share = FAR_FROM_RESERVE / SKIP_SHARE;
        assert!(Sampled { admitted: share - 1, ..s }.may_skip(needed));
        assert!(!Sampled { admitted: share, ..s }.may_skip(needed), "much written since");
        // A small filesystem (the reserve tests' loop mounts) samples after every commit.
        assert!(!Sampled { free: 200 * MIB, ..s }.may_skip(190 * MIB));
    }

    #[test]
    fn no_space_errors_are_recognised() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(28)));
        assert!(is_no_space(&std::io::Error::from_raw_os_error(122)));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(5)));
    }
}
