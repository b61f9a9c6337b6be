//! The node: configuration, store, index, limits and metrics behind one cheap-to-clone handle,
//! and the operations the routes call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use axum::http::StatusCode;

use crate::config::Config;
use crate::crypto::{Cipher, MasterKey};
use crate::disk::DiskGuard;
use crate::error::ApiError;
use crate::health::{self, Check, HealthReport, Sample};
use crate::index::{Index, WorldIndexStatus};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::model::{
    check_name, Answer, Atom, FieldError, NewAtom, Question, ReplayRequest, WorldAction,
    WorldManage, WorldPolicy, WorldRecord,
};
use crate::storage::{AtRest, Inserted, StorageError, Store, StoreOptions};
use crate::swarm::Swarm;

/// Default number of atoms an ask returns.
pub const DEFAULT_ASK_LIMIT: usize = 10;
/// Largest `filter.limit` an ask honours.
pub const MAX_ASK_LIMIT: usize = 1000;
/// sled cache when `max_ram_mb` is 0 (sled only fills it as data is read or written).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// The node's version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const MIB: u64 = 1 << 20;

/// A running node's state. Clone it freely: clones share everything.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    disk: Arc<DiskGuard>,
    index: Index,
    metrics: Arc<Metrics>,
    limits: Limits,
    started: Instant,
    sample: RwLock<Sample>,
    swarm: OnceLock<Swarm>,
    tls: OnceLock<Arc<crate::tls::TlsServer>>,
    stop: AtomicBool,
    ids: Mutex<ulid::Generator>,
    listen: OnceLock<SocketAddr>,
}

/// Result of a swarm ingest.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngestOutcome {
    /// Atoms newly stored.
    pub stored: usize,
    /// Atoms already present (same id).
    pub duplicates: usize,
}

impl Node {
    /// Opens the store in `config.node.data_dir` (creating the node's folders) and prepares an
    /// empty index; [`crate::server::serve`] rebuilds the index in the background.
    ///
    /// Fails at once with the dir named when another process holds the data dir.
    pub fn open(config: Config) -> Result<Node, StorageError> {
        let n = &config.node;
        for dir in [&n.log_dir, &n.summaries_dir] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create folder");
            }
        }
        let (cache_bytes, index_budget) = match n.limits.max_ram_mb {
            0 => (DEFAULT_CACHE_BYTES, 0),
            mb => ((mb * MIB / 4).max(MIB), (mb * MIB / 2).max(MIB)),
        };
        let at_rest = match (&n.storage.encryption_enabled, &n.storage.key_id) {
            (true, Some(key_id)) => {
                AtRest::Encrypted(Arc::new(Cipher::new(MasterKey::from_env(key_id)?)))
            }
            _ => AtRest::Plain,
        };
        let disk = Arc::new(DiskGuard::new(&n.data_dir, &n.limits));
        let store = Store::open_with(
            &StoreOptions { dir: n.data_dir.clone(), cache_bytes, at_rest },
            Some(disk.clone()),
        )?;
        // Room kept for the store's own reopen after an ENOSPC (see crate::disk).
        disk.maintain_ballast();
        if let Err(no) = disk.check(0) {
            tracing::warn!("{}", no.message);
        }
        if let Some(key_id) = store.encryption_key_id() {
            tracing::info!(key_id, "encryption at rest: atoms and world records are sealed");
        }
        let limits = Limits::new(n.security.remember_per_sec, n.security.ask_per_min);
        let metrics = Metrics::new();
        metrics.set_caps(n.limits.max_disk_mb, n.limits.max_ram_mb);
        let node = Node {
            inner: Arc::new(Inner {
                store,
                disk,
                index: Index::new(index_budget),
                metrics: Arc::new(metrics),
                limits,
                started: Instant::now(),
                sample: RwLock::new(Sample::default()),
                swarm: OnceLock::new(),
                tls: OnceLock::new(),
                stop: AtomicBool::new(false),
                ids: Mutex::new(ulid::Generator::new()),
                listen: OnceLock::new(),
                config,
            }),
        };
        node.sample_resources();
        Ok(node)
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The write path's free-space guard.
    pub fn disk(&self) -> &DiskGuard {
        &self.inner.disk
    }

    /// The disk watch's step (every [`crate::disk::WATCH_INTERVAL`], blocking): refreshes the
    /// free-space figure, reopens a store stopped by an I/O error once there is room again
    /// (rebuilding the index when the reopened store holds atoms it did not know of), and
    /// keeps the ballast in place.
    pub fn watch_disk(&self) {
        let disk = &self.inner.disk;
        disk.refresh();
        if let Ok(Some(r)) = self.inner.store.try_recover() {
            if r.atoms_after != r.atoms_before {
                tracing::info!(
                    before = r.atoms_before,
                    after = r.atoms_after,
                    "the reopened store holds writes that were not acknowledged; rebuilding the index"
                );
                let node = self.clone();
                let _ = std::thread::Builder::new()
                    .name("dwbase-reindex".into())
                    .spawn(move || node.rebuild_index());
            }
        }
        if self.inner.store.failed().is_none() {
            disk.maintain_ballast();
        }
        self.sync_disk_metrics();
    }

    /// Copies the disk guard's and the store's figures into their gauges and counters (the
    /// disk watch and every `/metrics` render).
    fn sync_disk_metrics(&self) {
        // Counters advance by the difference: one sync at a time.
        static SYNC: Mutex<()> = Mutex::new(());
        let _one = SYNC.lock().unwrap_or_else(|p| p.into_inner());
        let disk = &self.inner.disk;
        let m = &self.inner.metrics;
        m.disk_free_bytes.set(i64::try_from(disk.free_bytes()).unwrap_or(i64::MAX));
        m.disk_reserve_bytes.set(i64::try_from(disk.needed_bytes()).unwrap_or(i64::MAX));
        m.disk_ballast_bytes.set(if disk.ballast_present() {
            i64::try_from(disk.ballast_bytes()).unwrap_or(i64::MAX)
        } else {
            0
        });
        let (io, no_space) = self.inner.store.io_error_counts();
        m.storage_io_errors.inc_by(io.saturating_sub(m.storage_io_errors.get()));
        m.storage_no_space_errors.inc_by(no_space.saturating_sub(m.storage_no_space_errors.get()));
        let refused = disk.refused_count();
        m.disk_refused.inc_by(refused.saturating_sub(m.disk_refused.get()));
        let reopened = self.inner.store.recovery_count();
        m.storage_recoveries.inc_by(reopened.saturating_sub(m.storage_recoveries.get()));
    }

    /// `/healthz`: `Err(_)` when a step of the store is stuck (only a restart helps; see
    /// [`crate::storage::Store::stalled`]). Never blocks on the store.
    pub fn liveness(&self) -> Result<(), crate::storage::Stall> {
        match self.inner.store.stalled() {
            Some(stall) => Err(stall),
            None => Ok(()),
        }
    }

    /// The text index.
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The address the server is bound to, once serving.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen.get().copied()
    }

    pub(crate) fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.inner.listen.set(addr);
    }

    pub(crate) fn set_swarm(&self, swarm: Swarm) {
        let _ = self.inner.swarm.set(swarm);
    }

    pub(crate) fn set_tls(&self, tls: Arc<crate::tls::TlsServer>) {
        let _ = self.inner.tls.set(tls);
    }

    /// The TLS listener's certificates, when the node serves HTTPS (reload them on SIGHUP).
    pub fn tls(&self) -> Option<&Arc<crate::tls::TlsServer>> {
        self.inner.tls.get()
    }

    /// The effective API key, if any.
    pub fn api_key(&self) -> Option<&str> {
        self.inner.config.node.security.effective_api_key()
    }

    /// Asks background work (index rebuild) to stop.
    pub(crate) fn request_stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// Seconds since the node opened.
    pub fn uptime_secs(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    /// Rebuilds the text index from the store (blocking; run it on a blocking thread).
    pub fn rebuild_index(&self) {
        let store = &self.inner.store;
        let started = Instant::now();
        tracing::info!(atoms = store.atom_count(), "index rebuild started");
        let result = self
            .inner
            .index
            .rebuild(store.atom_count(), &self.inner.stop, |sink| store.for_each_atom(1024, sink));
        match result {
            Ok(true) => {
                let stats = self.inner.index.stats();
                tracing::info!(docs = stats.docs, terms = stats.terms, elapsed = ?started.elapsed(), "index rebuild finished");
            }
            Ok(false) => tracing::info!("index rebuild stopped (shutdown)"),
            Err(e) => tracing::error!(error = %e, "index rebuild failed"),
        }
    }

    /// Takes a resource sample (disk, data dir size, RSS) and updates the gauges. Blocking.
    pub fn sample_resources(&self) {
        let dir = self.inner.store.dir();
        let bytes_written = self.inner.store.bytes_written();
        let sample = Sample {
            disk: health::disk_usage(dir),
            data_dir_bytes: health::dir_size(dir),
            bytes_written_at_sample: bytes_written,
            rss_bytes: health::rss_bytes(),
            taken: Instant::now(),
        };
        let m = &self.inner.metrics;
        if let Some(d) = sample.disk {
            m.disk_used_bytes.set(d.used_bytes as i64);
            m.disk_total_bytes.set(d.total_bytes as i64);
            m.disk_used_percent.set(d.percent_used);
        }
        m.data_dir_bytes.set(sample.data_dir_bytes as i64);
        if let Some(rss) = sample.rss_bytes {
            m.rss_bytes.set(rss as i64);
        }
        *self.inner.sample.write().unwrap_or_else(|p| p.into_inner()) = sample;
    }

    /// Periodic housekeeping: forget idle rate-limit keys.
    pub fn housekeeping(&self) {
        self.inner.limits.remember.housekeeping();
        self.inner.limits.ask.housekeeping();
    }

    fn sample(&self) -> Sample {
        self.inner.sample.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Estimated data dir size now: the last sample plus what was written since.
    pub fn data_dir_bytes_estimate(&self) -> u64 {
        let s = self.sample();
        s.data_dir_bytes
            + self.inner.store.bytes_written().saturating_sub(s.bytes_written_at_sample)
    }

    /// `Some(explanation)` when the data dir is at or over `max_disk_mb`.
    pub fn over_disk_cap(&self) -> Option<String> {
        let cap_mb = self.inner.config.node.limits.max_disk_mb;
        if cap_mb == 0 {
            return None;
        }
        let used = self.data_dir_bytes_estimate();
        (used >= cap_mb * MIB).then(|| {
            format!(
                "data dir {} uses {:.1} MiB, at or over node.limits.max_disk_mb = {cap_mb}",
                self.inner.store.dir().display(),
                used as f64 / MIB as f64
            )
        })
    }

    fn check_read(&self, world: &str) -> Result<(), ApiError> {
        let allowed = &self.inner.config.node.security.read_worlds;
        if allowed.is_empty() || allowed.iter().any(|w| w == world) {
            Ok(())
        } else {
            Err(ApiError::world_not_allowed(world, "read_worlds"))
        }
    }

    fn check_write(&self, world: &str) -> Result<(), ApiError> {
        let allowed = &self.inner.config.node.security.write_worlds;
        if allowed.is_empty() || allowed.iter().any(|w| w == world) {
            Ok(())
        } else {
            Err(ApiError::world_not_allowed(world, "write_worlds"))
        }
    }

    fn new_id(&self) -> String {
        let mut generator = self.inner.ids.lock().unwrap_or_else(|p| p.into_inner());
        generator.generate().unwrap_or_else(|_| ulid::Ulid::new()).to_string()
    }

    /// `POST /remember`: validates, checks permissions and limits, stores durably, indexes,
    /// queues the atom for peers and returns its new id.
    pub async fn remember(&self, mut new: NewAtom) -> Result<String, ApiError> {
        let started = Instant::now();
        // Announced before the checks so a concurrent flush waits the few microseconds for us.
        let mut announced = Some(self.inner.store.announce_write());
        let sec = &self.inner.config.node.security;
        new.validate(sec.importance_cap)?;
        self.check_write(&new.world)?;
        if self.inner.store.world(&new.world).is_some_and(|w| w.archived) {
            return Err(ApiError::archived(&new.world));
        }
        self.inner.limits.remember.check(&new.worker).map_err(|secs| {
            ApiError::rate_limited(&format!("remember (worker {:?})", new.worker), secs)
        })?;
        if let Some(why) = self.over_disk_cap() {
            return Err(ApiError::disk_full(why));
        }
        let mut atom = Atom::from_new(self.new_id(), new);
        // A fresh ULID colliding with a stored id is practically impossible; the store checks
        // anyway, so ids can never be reused (the original's fault).
        let mut attempts = 0;
        loop {
            let insert = match announced.take() {
                Some(a) => self.inner.store.insert_new_announced(&atom, a).await?,
                None => self.inner.store.insert_new(&atom).await?,
            };
            match insert {
                Inserted::Stored => break,
                Inserted::Exists if attempts < 3 => {
                    attempts += 1;
                    atom.id = self.new_id();
                }
                Inserted::Exists => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "id_conflict",
                        "could not allocate a fresh id",
                    ))
                }
            }
        }
        self.inner.index.insert(&atom);
        let id = atom.id.clone();
        if let Some(swarm) = self.inner.swarm.get() {
            swarm.publish(Arc::new(atom));
        }
        self.inner.metrics.remember_latency_seconds.observe(started.elapsed().as_secs_f64());
        Ok(id)
    }

    /// `POST /swarm/ingest`: stores atoms received from a peer with their ids, idempotently.
    /// Ingested atoms are never pushed on (no echo between peers).
    pub async fn ingest(&self, atoms: Vec<Atom>) -> Result<IngestOutcome, ApiError> {
        for (i, atom) in atoms.iter().enumerate() {
            atom.validate()
                .map_err(|e| FieldError::new(format!("[{i}].{}", e.field), e.message))?;
            self.check_write(&atom.world)?;
        }
        if let Some(why) = self.over_disk_cap() {
            return Err(ApiError::disk_full(why));
        }
        let mut outcome = IngestOutcome { stored: 0, duplicates: 0 };
        for atom in atoms {
            match self.inner.store.insert_new(&atom).await? {
                Inserted::Stored => {
                    self.inner.index.insert(&atom);
                    outcome.stored += 1;
                }
                Inserted::Exists => outcome.duplicates += 1,
            }
        }
        Ok(outcome)
    }

    /// `POST /ask`: ranks the world's atoms for the question (see [`crate::index`]).
    ///
    /// Archived worlds can still be asked (with a warning): archiving stops writes, not reads.
    pub fn ask(&self, q: Question) -> Result<Answer, ApiError> {
        let started = Instant::now();
        check_name("world", &q.world)?;
        self.check_read(&q.world)?;
        let filter = q.filter.clone().unwrap_or_default().compile()?;
        let limit = filter.limit.unwrap_or(DEFAULT_ASK_LIMIT).min(MAX_ASK_LIMIT);
        let index = &self.inner.index;
        let result = index.search(&q.world, &q.text, &filter, limit);
        let mut warnings = Vec::new();
        if !index.is_ready() {
            warnings.push(format!(
                "index rebuilding ({:.0}% done): results may be incomplete",
                index.progress() * 100.0
            ));
        }
        match self.inner.store.world(&q.world) {
            None => warnings.push(format!("world {:?} has no atoms", q.world)),
            Some(w) if w.archived => {
                warnings.push(format!("world {:?} is archived (read-only)", q.world))
            }
            Some(_) => {}
        }
        // No lexical match (or nothing to match on): answer as the original DWBase did, with
        // the world's recent atoms ranked by importance and links, and say so.
        let lexical = result.had_terms && !result.hits.is_empty();
        let hits = if !lexical && self.inner.store.world(&q.world).is_some() {
            let hits = index.recent(&q.world, &filter, limit);
            if !hits.is_empty() {
                warnings.push(if result.had_terms {
                    "no atom matched the question text; answered with the world's recent atoms, \
                     ranked as the original DWBase did (importance, links, then newest)"
                        .into()
                } else {
                    "question has no searchable terms; answered with the world's recent atoms, \
                     ranked as the original DWBase did (importance, links, then newest)"
                        .into()
                });
            }
            hits
        } else {
            result.hits
        };
        let unindexed = index.world_status(std::slice::from_ref(&q.world))[0].unindexed_docs;
        if unindexed > 0 {
            warnings.push(format!(
                "{unindexed} atoms of this world are not text-indexed (index memory share used up)"
            ));
        }
        let mut atoms = Vec::with_capacity(hits.len());
        for hit in &hits {
            if let Some(atom) = self.inner.store.get(&hit.id)? {
                atoms.push(atom);
            }
        }
        self.inner.metrics.ask_latency_seconds.observe(started.elapsed().as_secs_f64());
        Ok(Answer { world: q.world, text: q.text, supporting_atoms: atoms, warnings })
    }

    /// `POST /replay`: the world's atoms in append order (archived worlds too).
    pub fn replay(&self, req: ReplayRequest) -> Result<Vec<Atom>, ApiError> {
        let started = Instant::now();
        check_name("world", &req.world)?;
        self.check_read(&req.world)?;
        let filter = req.filter.unwrap_or_default().compile()?;
        let atoms = self.inner.store.replay(&req.world, &filter)?;
        self.inner.metrics.replay_latency_seconds.observe(started.elapsed().as_secs_f64());
        Ok(atoms)
    }

    /// `GET /atoms/{id}`.
    pub fn get_atom(&self, id: &str) -> Result<Atom, ApiError> {
        let atom = self
            .inner
            .store
            .get(id)?
            .ok_or_else(|| ApiError::not_found(format!("no atom with id {id:?}")))?;
        self.check_read(&atom.world)?;
        Ok(atom)
    }

    /// `GET /worlds`: sorted names of non-archived worlds (only readable ones when
    /// `read_worlds` is set).
    pub fn worlds(&self) -> Vec<String> {
        self.inner
            .store
            .worlds()
            .into_iter()
            .filter(|(r, _)| !r.archived && self.check_read(&r.world).is_ok())
            .map(|(r, _)| r.world)
            .collect()
    }

    /// `POST /worlds/manage`. Returns the record and whether it was created.
    pub async fn manage_world(&self, req: WorldManage) -> Result<(WorldRecord, bool), ApiError> {
        check_name("world", &req.world)?;
        self.check_write(&req.world)?;
        let WorldManage { action, world, description, labels } = req;
        let outcome = match action {
            WorldAction::Create => {
                self.inner
                    .store
                    .update_world(&world, true, |r| {
                        if description.is_some() {
                            r.description = description;
                        }
                        if !labels.is_empty() {
                            r.labels = labels;
                        }
                    })
                    .await?
            }
            WorldAction::Archive => {
                self.inner.store.update_world(&world, false, |r| r.archived = true).await?
            }
            WorldAction::Resume => {
                self.inner.store.update_world(&world, false, |r| r.archived = false).await?
            }
        };
        outcome.ok_or_else(|| ApiError::not_found(format!("no world named {world:?}")))
    }

    /// `POST /worlds/policy`: stores the policy on the world's record.
    pub async fn set_policy(&self, policy: WorldPolicy) -> Result<WorldRecord, ApiError> {
        check_name("world", &policy.world)?;
        self.check_write(&policy.world)?;
        if let Some(m) = policy.min_importance {
            if !(0.0..=1.0).contains(&m) {
                return Err(
                    FieldError::new("min_importance", format!("{m} is outside 0..1")).into()
                );
            }
        }
        Ok(self.inner.store.set_policy(policy).await?)
    }

    /// `GET /index/status`: one entry per known world.
    pub fn index_status(&self) -> Vec<WorldIndexStatus> {
        let worlds: Vec<String> =
            self.inner.store.worlds().into_iter().map(|(r, _)| r.world).collect();
        self.inner.index.world_status(&worlds)
    }

    /// The health report behind `/health` and `/readyz`.
    pub fn health(&self) -> HealthReport {
        let cfg = &self.inner.config.node;
        let sample = self.sample();
        let mut reasons = Vec::new();
        let mut checks = std::collections::BTreeMap::new();

        // Disk: the filesystem threshold and the data dir cap.
        let threshold = cfg.health.disk_usage_degraded * 100.0;
        let mut disk = match sample.disk {
            Some(d) if d.percent_used >= threshold => {
                let msg = format!(
                    "disk usage {:.1}% >= {:.1}% (node.health.disk_usage_degraded)",
                    d.percent_used, threshold
                );
                reasons.push(("disk_usage", msg.clone()));
                Check::degraded(msg)
            }
            Some(d) => Check::ok(format!("disk usage {:.1}% < {:.1}%", d.percent_used, threshold)),
            None => Check::ok("filesystem usage unavailable"),
        };
        if let Some(why) = self.over_disk_cap() {
            reasons.push(("disk_cap", why.clone()));
            disk = Check::degraded(why);
        }
        let guard = &self.inner.disk;
        if let Err(no) = guard.check(0) {
            reasons.push(("disk_reserve", no.message.clone()));
            disk = Check::degraded(no.message);
        }
        disk = disk
            .with("free_bytes", guard.free_bytes())
            .with("reserve_bytes", guard.reserve_bytes())
            .with("ballast_bytes", if guard.ballast_present() { guard.ballast_bytes() } else { 0 })
            .with("writes_refused_for_space", guard.refused_count())
            .with("data_dir", cfg.data_dir.display().to_string())
            .with("data_dir_bytes", self.data_dir_bytes_estimate())
            .with("max_disk_mb", cfg.limits.max_disk_mb)
            .with("threshold", cfg.health.disk_usage_degraded);
        checks.insert("disk", disk);

        // Memory: RSS against max_ram_mb.
        let rss = sample.rss_bytes.unwrap_or(0);
        let cap = cfg.limits.max_ram_mb * MIB;
        let memory = if cap > 0 && rss > cap {
            Check::degraded(format!(
                "RSS {:.1} MiB is over node.limits.max_ram_mb = {}",
                rss as f64 / MIB as f64,
                cfg.limits.max_ram_mb
            ))
        } else {
            Check::ok(format!("RSS {:.1} MiB", rss as f64 / MIB as f64))
        };
        checks.insert(
            "memory",
            memory.with("rss_bytes", rss).with("max_ram_mb", cfg.limits.max_ram_mb),
        );

        // Storage.
        let storage = match self.inner.store.probe() {
            Ok(()) => Check::ok("sled store answers"),
            Err(e) => {
                let msg = format!("storage unavailable: {e}");
                reasons.push(("storage", msg.clone()));
                Check::unhealthy(msg)
            }
        };
        let storage = match self.inner.store.stalled() {
            Some(stall) => {
                let why = stall.to_string();
                reasons.push(("commit_stalled", why.clone()));
                Check::unhealthy(why)
            }
            None => storage,
        };
        let (io_errors, no_space_errors) = self.inner.store.io_error_counts();
        checks.insert(
            "storage",
            storage
                .with("atoms", self.inner.store.atom_count())
                .with("group_commit_flushes", self.inner.store.flush_count())
                .with("io_errors", io_errors)
                .with("no_space_errors", no_space_errors)
                .with("reopened", self.inner.store.recovery_count()),
        );

        // Index.
        let stats = self.inner.index.stats();
        let index = if stats.rebuilding || !stats.ready {
            let msg = format!("index rebuilding ({:.0}% done)", stats.progress * 100.0);
            reasons.push(("index_rebuilding", msg.clone()));
            Check::degraded(msg)
        } else if stats.unindexed_docs > 0 {
            Check::degraded(format!(
                "index memory share ({:.1} MiB, half of max_ram_mb) used up: {} atoms are not \
                 text-searchable",
                stats.budget_bytes as f64 / MIB as f64,
                stats.unindexed_docs
            ))
        } else {
            Check::ok(format!("{} atoms indexed", stats.docs))
        };
        let index = index
            .with("docs", stats.docs)
            .with("terms", stats.terms)
            .with("approx_bytes", stats.approx_bytes)
            .with("budget_bytes", stats.budget_bytes)
            .with("unindexed_docs", stats.unindexed_docs)
            .with("progress", stats.progress)
            .with("last_rebuilt", &stats.last_rebuilt);
        checks.insert("index", index);

        // TLS: a failed reload (SIGHUP) leaves the previous certificate in use.
        if let Some(tls) = self.inner.tls.get() {
            let st = tls.status();
            let check = match &st.last_error {
                Some(e) => Check::degraded(format!(
                    "the last certificate reload failed ({e}); still serving the one loaded at {}",
                    st.loaded_at
                )),
                None => Check::ok(format!("serving HTTPS; certificate loaded at {}", st.loaded_at)),
            };
            checks.insert(
                "tls",
                check
                    .with("cert_file", st.cert_file.display().to_string())
                    .with("client_auth", st.client_auth)
                    .with("reloads", st.reloads)
                    .with("loaded_at", &st.loaded_at),
            );
        }

        let worst = |s: &str| checks.values().any(|c| c.status == s);
        let health = if worst("unhealthy") {
            "unhealthy"
        } else if worst("degraded") {
            "degraded"
        } else {
            "ok"
        };
        // The original's verdict: an index rebuild counts only once it has run longer than
        // index_rebuild_warn_seconds (its meaning); every other check that is not ok counts.
        let lag = stats.rebuilding.then_some(stats.rebuild_lag_ms);
        let warn_ms = cfg.health.index_rebuild_warn_seconds.saturating_mul(1000);
        let slow_rebuild = lag.filter(|l| *l > warn_ms).map(|l| {
            format!("index rebuild lag {l}ms exceeds {warn_ms}ms threshold (node.health.index_rebuild_warn_seconds)")
        });
        let other_problem = checks
            .iter()
            .filter(|(name, c)| {
                c.status != "ok" && (**name != "index" || (stats.ready && !stats.rebuilding))
            })
            .map(|(_, c)| c.message.clone())
            .next();
        let status =
            if other_problem.is_some() || slow_rebuild.is_some() { "degraded" } else { "ready" };
        let message = other_problem
            .or(slow_rebuild)
            .or_else(|| checks.values().find(|c| c.status != "ok").map(|c| c.message.clone()));
        let (reason_codes, reasons): (Vec<&'static str>, Vec<String>) = reasons.into_iter().unzip();
        HealthReport {
            status,
            health,
            ready: reasons.is_empty(),
            reasons,
            reason_codes,
            checks,
            version: VERSION,
            node_id: cfg.id.clone(),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            disk_usage: sample.disk,
            index_rebuild_lag_ms: lag,
            message,
            tls: if self.inner.tls.get().is_some() { "on" } else { "off" },
        }
    }

    /// Refreshes the gauges that are cheap to compute and renders `/metrics` (OpenMetrics).
    pub fn metrics_text(&self) -> String {
        self.metrics_as(crate::metrics::Format::OpenMetrics)
    }

    /// Refreshes the gauges that are cheap to compute and renders `/metrics` in `format`.
    pub fn metrics_as(&self, format: crate::metrics::Format) -> String {
        self.sync_disk_metrics();
        let m = &self.inner.metrics;
        let store = &self.inner.store;
        let stats = self.inner.index.stats();
        m.atoms_stored.set(store.atom_count() as i64);
        m.worlds.set(store.worlds().iter().filter(|(r, _)| !r.archived).count() as i64);
        m.index_docs.set(stats.docs as i64);
        m.index_terms.set(stats.terms as i64);
        m.index_freshness_seconds.set(stats.rebuild_lag_ms as f64 / 1000.0);
        m.index_memory_bytes.set(stats.approx_bytes as i64);
        m.index_unindexed_docs.set(stats.unindexed_docs as i64);
        m.ready.set(i64::from(self.health().ready));
        m.uptime_seconds.set(self.uptime_secs());
        m.data_dir_bytes.set(self.data_dir_bytes_estimate() as i64);
        m.swarm_queue_depth.set(self.inner.swarm.get().map_or(0, |s| s.queue_depth()) as i64);
        m.encode_as(format)
    }

    /// Flushes the store (shutdown).
    pub fn flush_blocking(&self) -> Result<(), StorageError> {
        self.inner.store.flush_blocking()
    }
}
