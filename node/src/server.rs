//! `serve`: run a node on a listener until a shutdown future completes (mini-redis style).
//!
//! Tests call it in-process on a `127.0.0.1:0` listener; only [`crate::cli`] turns OS signals
//! into the shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, DRAIN_TIMEOUT};
use crate::connections::{self, ConnLimits};
use crate::node::Node;
use crate::swarm::Swarm;

/// How often the disk, data dir and memory gauges are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How often idle rate-limit keys are forgotten.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// How long background tasks get to stop after the server has.
pub const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the flush at shutdown may take: a wedged store would block it for ever, and a
/// node that ignores SIGTERM waits for its supervisor's SIGKILL.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `node` on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to [`DRAIN_TIMEOUT`]), stops the background tasks (index rebuild,
/// sampler, swarm pushers), flushes sled and writes `summaries_dir/last-run.json`.
///
/// Refuses a non-loopback listener without an API key unless `allow_insecure` is set.
pub async fn serve<F>(listener: TcpListener, node: Node, shutdown: F) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().context("reading the listener's address")?;
    node.config().check_listen_security(addr).map_err(anyhow::Error::msg)?;
    let tls = crate::tls::TlsServer::from_config(&node.config().node.tls)?.map(Arc::new);
    match &tls {
        Some(t) => node.set_tls(t.clone()),
        None if !addr.ip().is_loopback() => tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address: the API key and every memory cross \
             the network in clear text. Set [node.tls] cert_file and key_file (or {} and {})",
            crate::config::ENV_TLS_CERT,
            crate::config::ENV_TLS_KEY
        ),
        None => {}
    }
    node.set_listen_addr(addr);

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let swarm_cfg = &node.config().node.swarm;
    if swarm_cfg.enabled && !swarm_cfg.peers.is_empty() {
        tracing::info!(peers = ?swarm_cfg.peers, "swarm enabled");
        let client_tls = crate::tls::ClientTls::swarm(swarm_cfg);
        let swarm = Swarm::start(
            &swarm_cfg.peers,
            node.api_key().map(str::to_owned),
            &client_tls,
            node.metrics().clone(),
            cancel.clone(),
            &tracker,
        )?;
        node.set_swarm(swarm);
    } else if swarm_cfg.enabled {
        tracing::warn!("swarm enabled but node.swarm.peers is empty; nothing to push to");
    }
    {
        let node = node.clone();
        tracker.spawn_blocking(move || node.rebuild_index());
    }
    tracker.spawn(sampler(node.clone(), cancel.clone()));
    tracker.spawn(disk_watch(node.clone(), cancel.clone()));

    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
    };
    let app = api::router(node.clone());
    let nofile = connections::raise_nofile_limit();
    let limits = ConnLimits::from_config(&node.config().node.limits, nofile);
    let clean = connections::serve(
        listener,
        app,
        limits,
        tls,
        node.metrics().clone(),
        signal,
        DRAIN_TIMEOUT,
    )
    .await;
    if !clean {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests did not finish in time; closing them");
    }

    node.request_stop();
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(BACKGROUND_STOP_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop in time");
    }
    let flush_node = node.clone();
    let flush = tokio::task::spawn_blocking(move || flush_node.flush_blocking());
    let Ok(flushed) = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, flush).await else {
        write_summary(&node, false);
        anyhow::bail!(
            "the store's final flush did not finish within {}s (the store is stuck); stopping \
             without it (every acknowledged write was flushed before its answer)",
            FINAL_FLUSH_TIMEOUT.as_secs()
        );
    };
    flushed.context("joining the final flush")?.context("flushing the store at shutdown")?;
    write_summary(&node, clean);
    tracing::info!(atoms = node.store().atom_count(), "stopped; store flushed");
    Ok(())
}

/// Writes `summaries_dir/last-run.json`: what this run did, for operators and the supervisor.
fn write_summary(node: &Node, clean: bool) {
    let cfg = &node.config().node;
    let stats = node.index().stats();
    let summary = serde_json::json!({
        "node_id": cfg.id,
        "version": crate::node::VERSION,
        "listen": node.listen_addr().map(|a| a.to_string()),
        "data_dir": cfg.data_dir.display().to_string(),
        "stopped_at": crate::model::now_rfc3339(),
        "uptime_seconds": node.uptime_secs(),
        "clean_shutdown": clean,
        "atoms_stored": node.store().atom_count(),
        "worlds": node.store().worlds().len(),
        "index_docs": stats.docs,
        "index_unindexed_docs": stats.unindexed_docs,
        "group_commit_flushes": node.store().flush_count(),
    });
    let path = cfg.summaries_dir.join("last-run.json");
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Err(e) =
        std::fs::create_dir_all(&cfg.summaries_dir).and_then(|()| std::fs::write(&path, text))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the run summary");
    }
}

async fn sampler(node: Node, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_housekeeping = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.sample_resources()).await;
        if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            node.housekeeping();
            last_housekeeping = tokio::time::Instant::now();
        }
    }
}

/// Every [`crate::disk::WATCH_INTERVAL`]: the write path's free-space figure, the store's
/// reopen after an I/O error once space is back, and the ballast (see [`Node::watch_disk`]).
async fn disk_watch(node: Node, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(crate::disk::WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.watch_disk()).await;
    }
}
