//! The control socket: accept loop, one task per connection, each connection checked (peer
//! uid, handshake within [`HANDSHAKE_TIMEOUT`], frame size, idle timeout) and then served one
//! request at a time by [`crate::handlers`].
//!
//! A bad connection only ever closes itself: every failure below ends that connection's task
//! and nothing else. The socket is fair: at [`MAX_CONNECTIONS`], a new connection evicts the
//! oldest one that is not in the middle of a request — first one still in its handshake, then
//! an idle one, then a stream (which ends with `EndOfStream::Evicted`) — so no number of idle
//! connections from one client keeps another client's command out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dwbase_proto::codec::{self, HANDSHAKE_TIMEOUT};
use dwbase_proto::{ErrorKind, ErrorReply, Paths, Request, Response, SupervisorInfo};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::traits::StreamCommon as _;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::metrics::SupervisorMetrics;
use crate::runner::RunnerHandle;

/// Connections served at once; at the limit a new one evicts the oldest evictable one.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sends no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection is doing, for eviction at the connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnState {
    /// Accepted, handshake not done: evicted first.
    Handshake,
    /// Waiting for its next request.
    Idle,
    /// Following a stream (logs -f, events): evicted last, with `EndOfStream::Evicted`.
    Streaming,
    /// Serving a request: never evicted.
    Busy,
}

#[derive(Debug)]
struct ConnEntry {
    state: ConnState,
    since: Instant,
    evict: CancellationToken,
}

/// Every open connection, for the limit and for eviction.
#[derive(Debug, Default)]
pub struct Connections {
    inner: Mutex<HashMap<u64, ConnEntry>>,
    evicted: AtomicU64,
}

impl Connections {
    /// Registers a new connection. At the limit, evicts the oldest connection in the lowest
    /// evictable state first; `false` when every connection is busy serving a request.
    fn admit(&self, id: u64, evict: CancellationToken) -> bool {
        let Ok(mut map) = self.inner.lock() else { return false };
        if map.len() >= MAX_CONNECTIONS {
            let victim = map
                .iter()
                .filter(|(_, e)| e.state != ConnState::Busy && !e.evict.is_cancelled())
                .min_by_key(|(_, e)| (e.state, e.since))
                .map(|(id, _)| *id);
            match victim {
                Some(v) => {
                    if let Some(e) = map.get(&v) {
                        e.evict.cancel();
                    }
                    let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        warn!("{n} connection(s) evicted so far: {MAX_CONNECTIONS} were open");
                    }
                }
                None => return false,
            }
        }
        map.insert(id, ConnEntry { state: ConnState::Handshake, since: Instant::now(), evict });
        true
    }

    /// Records what connection `id` is doing now.
    pub fn set(&self, id: u64, state: ConnState) {
        if let Ok(mut map) = self.inner.lock() {
            if let Some(e) = map.get_mut(&id) {
                e.state = state;
                e.since = Instant::now();
            }
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&id);
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tokens a request handler watches: the supervisor shutting down, and this connection
/// being evicted (streams end with `EndOfStream::Evicted`).
#[derive(Debug, Clone)]
pub struct ConnTokens {
    /// The supervisor is shutting down.
    pub shutdown: CancellationToken,
    /// This connection was evicted at the connection limit.
    pub evicted: CancellationToken,
    /// Its id in [`Connections`].
    pub id: u64,
}

/// How long one reply may take to write before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A framed control-socket connection.
pub type Conn = Framed<Stream, LengthDelimitedCodec>;

/// How a `Shutdown` request reaches the main loop.
#[derive(Debug, Default)]
pub struct ExitRequest {
    token: CancellationToken,
    stop_nodes: AtomicBool,
}

impl ExitRequest {
    /// Asks the supervisor to exit, stopping the nodes first or not.
    pub fn request(&self, stop_nodes: bool) {
        self.stop_nodes.store(stop_nodes, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Resolves once an exit was requested; returns whether nodes are to be stopped.
    pub async fn requested(&self) -> bool {
        self.token.cancelled().await;
        self.stop_nodes.load(Ordering::SeqCst)
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Ctx {
    /// The runner.
    pub runner: RunnerHandle,
    /// Who we are.
    pub info: SupervisorInfo,
    /// Shutdown requests.
    pub exit: ExitRequest,
    /// Metrics, when enabled.
    pub metrics: Option<Arc<SupervisorMetrics>>,
    /// Cancelled when the supervisor starts shutting down (before nodes are stopped), so log
    /// followers end with `SupervisorShutdown` rather than `NodeStopped`.
    pub streams: CancellationToken,
    /// The state root.
    pub paths: Paths,
    /// One deploy at a time: a second waits, then finds the first one's result in place (the
    /// same spec twice is a no-op).
    pub deploys: tokio::sync::Mutex<()>,
    /// Open connections.
    pub conns: Connections,
    next_id: AtomicU64,
}

impl Ctx {
    /// A context.
    pub fn new(
        runner: RunnerHandle,
        info: SupervisorInfo,
        metrics: Option<Arc<SupervisorMetrics>>,
    ) -> Self {
        let paths = Paths { root: info.root.clone() };
        Self {
            runner,
            info,
            exit: ExitRequest::default(),
            metrics,
            streams: CancellationToken::new(),
            paths,
            deploys: tokio::sync::Mutex::new(()),
            conns: Connections::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Connections open now.
    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }
}

struct Slot(Arc<Ctx>, u64);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.conns.remove(self.1);
    }
}

/// Whether a peer may talk to us: only our own effective uid. A peer whose uid cannot be
/// read is refused too.
pub fn peer_allowed(peer_euid: Option<u32>, our_euid: u32) -> bool {
    peer_euid == Some(our_euid)
}

/// Serves `listener` until `shutdown` is cancelled, then waits for every connection task
/// (they see the same token: log followers send `EndOfStream::SupervisorShutdown`).
pub async fn serve(listener: Listener, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let our_euid = nix::unistd::geteuid().as_raw();
    let mut refused_busy: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!("accepting a connection: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        if !ctx.conns.admit(id, evicted.clone()) {
            refused_busy += 1;
            if refused_busy.is_power_of_two() {
                warn!(
                    "{refused_busy} connection(s) closed at once: {MAX_CONNECTIONS} open, all busy"
                );
            }
            drop(stream);
            continue;
        }
        let slot = Slot(ctx.clone(), id);
        let tokens = ConnTokens { shutdown: shutdown.clone(), evicted, id };
        let span = tracing::debug_span!("conn", id);
        tracker.spawn(connection(stream, ctx.clone(), tokens, our_euid, slot).instrument(span));
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection(stream: Stream, ctx: Arc<Ctx>, tokens: ConnTokens, our_euid: u32, _slot: Slot) {
    let (shutdown, evicted) = (&tokens.shutdown, &tokens.evicted);
    match stream.peer_creds() {
        Ok(creds) if peer_allowed(creds.euid(), our_euid) => {}
        Ok(creds) => {
            warn!(
                peer_euid = ?creds.euid(), peer_pid = ?creds.pid(),
                "refusing a control connection from another user"
            );
            return;
        }
        Err(e) => {
            warn!("refusing a control connection: cannot read its credentials: {e}");
            return;
        }
    }
    let _clients = ctx.metrics.as_ref().map(|m| m.client_guard());
    let mut conn = codec::framed(stream);
    let hs = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = evicted.cancelled() => return,
        r = codec::server_handshake(&mut conn, HANDSHAKE_TIMEOUT) => r,
    };
    match hs {
        Ok(hello) => debug!(client = %hello.build_version, "handshake done"),
        Err(e) => {
            debug!("handshake failed: {e}");
            return;
        }
    }
    loop {
        ctx.conns.set(tokens.id, ConnState::Idle);
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = evicted.cancelled() => {
                debug!("evicted while idle (connection limit)");
                return;
            }
            r = tokio::time::timeout(IDLE_TIMEOUT, codec::recv::<_, Request>(&mut conn, "request")) => r,
        };
        let req = match next {
            Err(_) => {
                debug!("idle for {IDLE_TIMEOUT:?}; closing");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(req))) => req,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Either an undecodable payload or a frame over MAX_FRAME_LEN: the stream may
                // be out of step, so answer once and close.
                debug!("bad frame: {e}");
                let reply = Response::Error(ErrorReply::new(
                    ErrorKind::BadRequest,
                    format!("unreadable request: {e}"),
                ));
                let _ = send(&mut conn, &reply).await;
                return;
            }
            Ok(Err(e)) => {
                debug!("reading a request: {e}");
                return;
            }
        };
        if let Some(m) = &ctx.metrics {
            m.inc_request(crate::handlers::kind(&req));
        }
        ctx.conns.set(tokens.id, ConnState::Busy);
        match crate::handlers::handle(req, &mut conn, &ctx, &tokens).await {
            Ok(crate::handlers::Flow::Continue) => {}
            Ok(crate::handlers::Flow::Close) => return,
            Err(e) => {
                debug!("writing a reply: {e}");
                return;
            }
        }
    }
}

/// Sends one response, giving up after [`WRITE_TIMEOUT`] (a client that does not read).
pub async fn send(conn: &mut Conn, resp: &Response) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, codec::send(conn, "response", resp)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read")),
    }
}

/// Logs the socket we serve on.
pub fn announce(info: &SupervisorInfo) {
    info!(
        socket = %info.socket.display(), root = %info.root.display(), pid = info.pid,
        version = %info.version, "supervisor listening"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_uid_may_talk() {
        assert!(peer_allowed(Some(1000), 1000));
        assert!(!peer_allowed(Some(1001), 1000));
        assert!(!peer_allowed(Some(0), 1000), "not even root");
        assert!(!peer_allowed(None, 1000));
    }
}
