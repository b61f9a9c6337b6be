//! The HTTP accept loop: hyper's HTTP/1 server under our own limits.
//!
//! `axum::serve` has no header-read timeout, no connection limit and backs off a whole second
//! when `accept` fails with "too many open files", so 20 000 idle sockets or a few hundred
//! slowloris clients took a node down for everyone. Here:
//!
//! - every connection holds a permit of a semaphore sized [`ConnLimits::max_connections`],
//!   kept below the open-file limit ([`raise_nofile_limit`] lifts the soft limit to the hard
//!   one at start);
//! - at the limit the connection idle the longest (waiting for a request head: keep-alive or
//!   slowloris) is closed to make room, as nginx does with idle keep-alive connections; when
//!   every connection is busy, a new client gets a canned `503` with `Retry-After` at once and
//!   is closed (a bounded number of such answers are in flight; beyond that the socket is just
//!   closed), instead of silence;
//! - a connection has [`ConnLimits::header_timeout`] to send a complete request head, counted
//!   from when the server starts waiting for it: after the accept, and again after each
//!   response on a keep-alive connection, so idle and slowloris connections are closed after it;
//! - request bodies are read under [`ConnLimits::body_timeout`] (see [`crate::api::read_body`]);
//! - a failing `accept` (EMFILE, ENFILE, ENOBUFS) pauses the loop for a few milliseconds only.
//!
//! Shutdown: the listener is dropped (no new connections), idle keep-alive connections close
//! at once, in-flight requests get [`crate::api::DRAIN_TIMEOUT`] to finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// Open files kept for everything but client connections (sled, logs, swarm clients, the
/// blocking pool), or a quarter of the limit when that is small.
pub const FD_RESERVE: u64 = 256;
/// Refusals (canned 503s) being written at once; past it a refused socket is closed at once.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How long a refused client gets to read the 503 before the socket is closed.
pub const REFUSAL_LINGER: Duration = Duration::from_millis(200);
/// Pause after an `accept` error before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Listen backlog: connections the kernel completes before the node accepts them. A burst of
/// connects past it loses SYNs, and each lost one costs its client a 1 s retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] (`TcpListener::bind` uses 1024) and `SO_REUSEADDR`.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connection limits a server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once (already clamped to the open-file limit).
    pub max_connections: usize,
    /// Time a connection has to send a complete request head (idle keep-alive included).
    pub header_timeout: Duration,
    /// Time a request has to send its whole body.
    pub body_timeout: Duration,
}

impl ConnLimits {
    /// From `[node.limits]`, with `max_connections` clamped below `nofile` (the open-file soft
    /// limit): at most `nofile` − [`FD_RESERVE`] (or three quarters of a small limit).
    pub fn from_config(cfg: &LimitsConfig, nofile: Option<u64>) -> ConnLimits {
        let mut max = cfg.max_connections.max(1);
        if let Some(n) = nofile {
            let reserve = if n >= 4 * FD_RESERVE { FD_RESERVE } else { n / 4 };
            max = max.min(n.saturating_sub(reserve).max(1));
        }
        ConnLimits {
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(cfg.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(cfg.body_timeout_secs.max(1)),
        }
    }
}

/// Raises this process's open-file soft limit to its hard limit and returns the soft limit
/// now in force (`None` where it cannot be read).
#[cfg(unix)]
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum) {
        if cur < max {
            limit.current = Some(max);
            match setrlimit(Resource::Nofile, limit) {
                Ok(()) => tracing::debug!(from = cur, to = max, "raised the open-file limit"),
                Err(e) => {
                    tracing::warn!(error = %e, soft = cur, hard = max, "cannot raise the open-file limit");
                }
            }
        }
    }
    let now = getrlimit(Resource::Nofile);
    // `None` means unlimited.
    Some(now.current.unwrap_or(u64::MAX))
}

/// Raises the open-file limit (not available on this platform).
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> Option<u64> {
    None
}

/// The JSON body of the answer to a client over the connection limit.
const REFUSAL_BODY: &str = "{\"error\":\"too_many_connections\",\"message\":\"the node is at its \
                            connection limit (node.limits.max_connections); retry shortly\"}";

/// The canned answer to a client over the connection limit.
static REFUSAL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
    .into_bytes()
});

/// One open connection, as the limit sees it: busy while a request is in flight (from its
/// complete head to the last byte of its response), idle otherwise.
struct ConnState {
    busy: AtomicUsize,
    /// When it last became idle, in ms since the registry's epoch.
    idle_since_ms: AtomicU64,
    close: CancellationToken,
}

/// Every open connection, so that at the limit the one idle the longest can be closed to make
/// room for a new client (what nginx does with its "reusable" keep-alive connections): an idle
/// or slowloris connection never holds a slot against a client that is about to send a request.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn new() -> Self {
        Self { epoch: Instant::now(), next_id: AtomicU64::new(0), conns: Mutex::default() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self, close: CancellationToken) -> (u64, Arc<ConnState>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close,
        });
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, state.clone());
        (id, state)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Asks the connection idle the longest to close; false when every one is busy.
    fn evict_idlest(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let idlest = conns
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.idle_since_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match idlest.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Marks a connection busy for as long as it lives (one request and its response body).
struct Busy {
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Busy {
    fn start(state: &Arc<ConnState>, registry: &Arc<Registry>) -> Self {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Self { state: state.clone(), registry: registry.clone() }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.idle_since_ms.store(self.registry.now_ms(), Ordering::Relaxed);
        self.state.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until it is sent (or dropped).
struct TrackedBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a new client waits for the slot an evicted idle connection gives back.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then drains. Returns
/// whether every connection finished within `drain` (false: some were cut).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<Arc<crate::tls::TlsServer>>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let registry = Arc::new(Registry::new());
    let stopping = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        body_timeout = ?limits.body_timeout,
        "accepting connections"
    );
    tokio::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: the connection waits in the backlog; try again soon
                    // (axum::serve waits a whole second here).
                    tracing::debug!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // At the limit: close the connection idle the longest and take its slot.
            Err(_) if registry.evict_idlest() => {
                metrics.connections_evicted.inc();
                tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            metrics.connections_refused.inc();
            if !warned_full {
                tracing::warn!(
                    limit = limits.max_connections,
                    "connection limit reached with every connection busy: new clients get 503 \
                     until some finish (node.limits.max_connections)"
                );
                warned_full = true;
            }
            refuse(stream, &refusals);
            continue;
        };
        warned_full = false;
        let _ = stream.set_nodelay(true);
        metrics.connections.inc();
        let close = stopping.child_token();
        let (id, state) = registry.add(close.clone());
        let state_for_close = state.clone();
        let (app, reg) = (app.clone(), registry.clone());
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = Busy::start(&state, &reg);
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(
                    response.map(|inner| axum::body::Body::new(TrackedBody { inner, _busy: busy })),
                )
            }
        });
        let (metrics, registry, http, tls) =
            (metrics.clone(), registry.clone(), http.clone(), tls.clone());
        tasks.spawn(async move {
            // TLS: the handshake runs in the connection's task, under the header timeout.
            let io = match tls {
                None => tokio_util::either::Either::Left(stream),
                Some(tls) => match tls.accept(stream, limits.header_timeout).await {
                    Ok(stream) => tokio_util::either::Either::Right(stream),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS connection not served");
                        registry.remove(id);
                        metrics.connections.dec();
                        drop(permit);
                        return;
                    }
                },
            };
            let conn = http.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = close.cancelled() => close_when_idle(conn, &state_for_close, &registry).await,
            };
            if let Some(Err(e)) = result {
                if is_timeout(&e) {
                    metrics.header_timeouts.inc();
                    tracing::debug!(%peer, "closed a connection that sent no complete request head in time");
                } else {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            registry.remove(id);
            metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    tasks.close();
    tokio::time::timeout(drain, tasks.wait()).await.is_ok()
}

/// How long a connection must have been idle before it is closed by dropping it: time for
/// hyper to flush the last response into the socket.
const IDLE_GRACE: Duration = Duration::from_millis(20);

/// Closes an evicted (or, at shutdown, any) connection: a busy one after its response, an idle
/// one at once. hyper's own graceful shutdown waits for the request head of a connection that
/// never sent one (up to the header timeout), so an idle connection is simply dropped, once it
/// has been idle for [`IDLE_GRACE`] (its last response flushed).
async fn close_when_idle<C>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    registry: &Registry,
) -> Option<hyper::Result<()>>
where
    C: Future<Output = hyper::Result<()>> + GracefulConnection,
{
    let mut asked = false;
    loop {
        // Let hyper read what the client already sent: a complete request head in the socket
        // makes the connection busy (the service is called during this poll), so a request
        // that arrived while this task was waiting to run is served, not dropped.
        if let Poll::Ready(r) = futures::poll!(conn.as_mut()) {
            return Some(r);
        }
        let idle_for =
            registry.now_ms().saturating_sub(state.idle_since_ms.load(Ordering::Relaxed));
        if state.busy.load(Ordering::Acquire) == 0 && idle_for >= IDLE_GRACE.as_millis() as u64 {
            return None;
        }
        if !asked {
            conn.as_mut().shutdown_gracefully();
            asked = true;
        }
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            () = tokio::time::sleep(IDLE_GRACE) => {}
        }
    }
}

/// hyper's `graceful_shutdown`, for [`close_when_idle`].
trait GracefulConnection {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Answers a client over the limit with [`REFUSAL`] and closes, without reading its request
/// (what it sent is drained briefly so that the close is not a reset that hides the answer).
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        drop(stream);
        return;
    };
    tokio::spawn(async move {
        let answer = async {
            stream.write_all(&REFUSAL).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            loop {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Ok(0) => return Ok::<_, std::io::Error>(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
        drop(slot);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_well_formed() {
        let text = std::str::from_utf8(&REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_connections");
    }

    #[test]
    fn the_limit_stays_below_the_open_file_limit() {
        let cfg = LimitsConfig::default();
        let l = ConnLimits::from_config(&cfg, Some(1024));
        assert_eq!(l.max_connections, 1024 - FD_RESERVE as usize);
        assert_eq!(ConnLimits::from_config(&cfg, Some(400)).max_connections, 300);
        assert_eq!(
            ConnLimits::from_config(&cfg, Some(1 << 20)).max_connections as u64,
            cfg.max_connections
        );
        assert!(ConnLimits::from_config(&cfg, None).max_connections > 0);
        assert!(raise_nofile_limit().is_some_and(|n| n > 0));
    }
}
