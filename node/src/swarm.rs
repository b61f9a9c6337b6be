//! Swarm: push every remembered atom to the configured peers, in the background.
//!
//! Each peer has a bounded queue and one task that sends batches to the peer's
//! `POST /swarm/ingest`, retrying with capped exponential backoff while the peer is unreachable
//! or answers 5xx/429. The writer only does a non-blocking `try_send`: a full queue drops the
//! atom for that peer (counted as `dropped`), so a dead peer never fails or slows a remember.
//! Atoms keep their ids; the receiver stores them idempotently and never pushes them on, so two
//! nodes that list each other do not echo. Tasks stop on the shutdown token.
//!
//! Not covered (yet): catch-up of atoms a peer missed while its queue was full or the node was
//! restarted (there is no anti-entropy pass).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::model::Atom;
use crate::tls::{ClientTls, TlsError};

/// Atoms queued per peer before new ones are dropped for that peer.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most atoms per ingest request.
pub const MAX_BATCH: usize = 256;
/// Every `result` of `dwbase_swarm_pushes_total`.
pub const PUSH_RESULTS: &[&str] = &["ok", "retry", "rejected", "dropped"];
/// A batch stops growing past this many (approximate) bytes; one atom may exceed it.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// First retry delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

struct Peer {
    url: String,
    tx: mpsc::Sender<Arc<Atom>>,
    queued: Arc<AtomicU64>,
}

/// Handle to the pushers; cheap to hold, stops with the token it was started with.
pub struct Swarm {
    peers: Vec<Peer>,
    metrics: Arc<Metrics>,
}

impl Swarm {
    /// Starts one pusher task per peer on `tracker`; they end when `cancel` fires. `https://`
    /// peers are verified as `tls` says (`[node.swarm] ca_file`, else the system's roots);
    /// an unusable file is an error naming it.
    pub fn start(
        peers: &[String],
        api_key: Option<String>,
        tls: &ClientTls,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Swarm, TlsError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .no_proxy();
        let client =
            tls.apply(builder, crate::tls::SWARM_KEYS)?.build().expect("reqwest client builds");
        let peers = peers
            .iter()
            .map(|url| {
                let url = url.trim_end_matches('/').to_owned();
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                let queued = Arc::new(AtomicU64::new(0));
                // Zero-valued series per peer and result, so dashboards see the peer at once.
                for result in PUSH_RESULTS {
                    metrics.push(&url, result, 0);
                }
                tracker.spawn(push_loop(PushTask {
                    endpoint: format!("{url}/swarm/ingest"),
                    url: url.clone(),
                    rx,
                    client: client.clone(),
                    api_key: api_key.clone(),
                    metrics: metrics.clone(),
                    cancel: cancel.clone(),
                    queued: queued.clone(),
                }));
                Peer { url, tx, queued }
            })
            .collect();
        Ok(Swarm { peers, metrics })
    }

    /// Queues an atom for every peer without waiting; a full queue drops it for that peer.
    pub fn publish(&self, atom: Arc<Atom>) {
        for peer in &self.peers {
            match peer.tx.try_send(atom.clone()) {
                Ok(()) => {
                    peer.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.metrics.push(&peer.url, "dropped", 1);
                    tracing::debug!(peer = %peer.url, id = %atom.id, "swarm queue full; atom dropped for this peer");
                }
            }
        }
    }

    /// Atoms waiting, summed over peers.
    pub fn queue_depth(&self) -> u64 {
        self.peers.iter().map(|p| p.queued.load(Ordering::Relaxed)).sum()
    }
}

/// An error and its causes on one line (reqwest's own text hides why a TLS connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Rough JSON size of an atom.
fn approx_size(atom: &Atom) -> usize {
    atom.payload_json.len() + atom.vector.as_ref().map_or(0, |v| v.len() * 12) + 256
}

struct PushTask {
    url: String,
    endpoint: String,
    rx: mpsc::Receiver<Arc<Atom>>,
    client: reqwest::Client,
    api_key: Option<String>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    queued: Arc<AtomicU64>,
}

enum Sent {
    Delivered,
    Rejected(String),
    Retry(String),
}

impl PushTask {
    fn take_more(&mut self, batch: &mut Vec<Arc<Atom>>) {
        let mut bytes: usize = batch.iter().map(|a| approx_size(a)).sum();
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(atom) => {
                    bytes += approx_size(&atom);
                    batch.push(atom);
                }
                Err(_) => break,
            }
        }
    }

    async fn send(&self, batch: &[Arc<Atom>]) -> Sent {
        let body: Vec<&Atom> = batch.iter().map(|a| a.as_ref()).collect();
        let mut req = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Sent::Delivered,
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let why = format!("{status}: {}", text.chars().take(300).collect::<String>());
                if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
                    Sent::Rejected(why)
                } else {
                    Sent::Retry(why)
                }
            }
            Err(e) => Sent::Retry(error_chain(&e)),
        }
    }
}

async fn push_loop(mut task: PushTask) {
    let mut batch: Vec<Arc<Atom>> = Vec::with_capacity(MAX_BATCH);
    'outer: loop {
        let first = tokio::select! {
            _ = task.cancel.cancelled() => break,
            next = task.rx.recv() => match next {
                Some(atom) => atom,
                None => break,
            },
        };
        batch.push(first);
        let mut backoff = BACKOFF_START;
        let mut failures = 0u32;
        loop {
            task.take_more(&mut batch);
            let n = batch.len() as u64;
            match task.send(&batch).await {
                Sent::Delivered => {
                    task.metrics.push(&task.url, "ok", n);
                    if failures > 0 {
                        tracing::info!(peer = %task.url, "swarm peer reachable again");
                    }
                    break;
                }
                Sent::Rejected(why) => {
                    task.metrics.push(&task.url, "rejected", n);
                    tracing::warn!(peer = %task.url, atoms = n, %why, "swarm peer rejected atoms");
                    break;
                }
                Sent::Retry(why) => {
                    task.metrics.push(&task.url, "retry", n);
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(peer = %task.url, attempt = failures, %why, retry_in = ?backoff, "swarm push failed; will retry");
                    }
                    tokio::select! {
                        _ = task.cancel.cancelled() => break 'outer,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        task.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
    // Shutdown: whatever is still queued is not delivered.
    task.rx.close();
    let mut left = batch.len() as u64;
    while task.rx.try_recv().is_ok() {
        left += 1;
    }
    if left > 0 {
        task.metrics.push(&task.url, "dropped", left);
        tracing::warn!(peer = %task.url, atoms = left, "swarm pusher stopped with atoms undelivered");
    }
}
