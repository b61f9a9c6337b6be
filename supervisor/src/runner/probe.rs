//! The prober: one task, on a thread of its own, that probes every running node — readiness
//! (`GET /readyz`) and liveness (`GET /healthz`) — and reports to the runner in batches.
//!
//! Steady-state probes run on a shared grid (multiples of the period since the prober
//! started), so an idle devnet of 50 nodes wakes the supervisor once per period for all of
//! them instead of 50 times at scattered moments, and their results reach the runner as one
//! message (one state save, one status publish). A node that is starting is probed at once,
//! then every 1, 2, 3, 4, 5, 5, … ms for its first second and after that with a pause that
//! doubles up to the fast period, so a started or restarted node is seen ready within a few
//! milliseconds of answering (`deploy` returns on that event), and one that takes long to
//! start costs a few probes a second.
//!
//! A plain-HTTP node is probed on one kept-alive connection of its own ([`PlainConn`]);
//! HTTPS nodes through reqwest's client for their TLS setting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dwbase_proto::LivenessSpec;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Msg;
use crate::render::{Endpoint, ProbeTls};

/// The first pause between readiness probes of a node that is not ready yet; it grows by
/// this much per probe up to [`STARTING_PROBE_CAP`] during [`STARTING_WINDOW`].
const STARTING_PROBE_FIRST: Duration = Duration::from_millis(1);

/// The longest pause between readiness probes during a node's first [`STARTING_WINDOW`].
const STARTING_PROBE_CAP: Duration = Duration::from_millis(5);

/// After this long without being ready, the pause doubles up to the fast period.
const STARTING_WINDOW: Duration = Duration::from_secs(1);

/// Probes due within this much of each other run in the same batch.
const BATCH_SLACK: Duration = Duration::from_millis(5);

/// While steady probes are out (every node ready), the prober thread sleeps this long each
/// time before it waits for answers, so that nodes on loopback have all answered and one
/// wake-up reads every answer, instead of one per answer as they trickle in. A command from
/// the runner waits at most this long more; a starting node's probes never do.
const GATHER_ANSWERS: Duration = Duration::from_millis(3);

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `GET /readyz`.
    Readiness,
    /// `GET /healthz`.
    Liveness,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// 200.
    Ok,
    /// Answered, but not 200 (readiness: the reason from the body).
    NotOk(String),
    /// No answer (refused, timed out).
    Failed(String),
}

/// One probe's result, for the runner.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The node.
    pub name: String,
    /// The process generation it probed (stale ones are ignored).
    pub generation: u64,
    /// Which probe.
    pub kind: Kind,
    /// What it saw.
    pub verdict: Verdict,
}

/// How the prober probes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProbeConfig {
    /// Readiness period while a node is not ready (the cap of the doubling pause).
    pub fast: Duration,
    /// Readiness period once a node is ready.
    pub slow: Duration,
    /// Timeout of a readiness probe.
    pub timeout: Duration,
}

enum ProbeCmd {
    Watch { name: String, generation: u64, endpoint: Endpoint, liveness: LivenessSpec },
    Unwatch { name: String },
}

/// Tells the prober what to probe. Commands wait in `held` until [`Prober::send_held`]: the
/// runner sends them at the end of its turn, after the turn's node processes have started, so
/// that waking the prober's thread never delays a restart.
#[derive(Debug)]
pub(super) struct Prober {
    tx: mpsc::UnboundedSender<ProbeCmd>,
    held: Vec<ProbeCmd>,
}

impl std::fmt::Debug for ProbeCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Watch { name, generation, .. } => write!(f, "Watch({name}#{generation})"),
            Self::Unwatch { name } => write!(f, "Unwatch({name})"),
        }
    }
}

impl Prober {
    /// Starts the prober task; it reports to `runner` and ends with `cancel`.
    pub fn start(
        cfg: ProbeConfig,
        runner: mpsc::UnboundedSender<Msg>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let clients = Clients::new(cfg.timeout);
        let (tx, rx) = mpsc::unbounded_channel();
        // Its own thread and one-thread runtime: a batch of probes (50 requests out, 50 answers
        // trickling in) is handled by one thread that sleeps between periods, and wakes the
        // supervisor's runtime once per batch (its message to the runner) instead of bouncing
        // the work between that runtime's workers for every answer.
        let gather = Arc::new(AtomicBool::new(false));
        let parked = gather.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                // Steady probes are out and the thread is about to wait for their answers:
                // let them all arrive, so that one wake-up takes them in.
                if parked.load(Ordering::Relaxed) {
                    std::thread::sleep(GATHER_ANSWERS);
                }
            })
            .build()?;
        std::thread::Builder::new().name("dwbase-prober".into()).spawn(move || {
            // As a task, not as block_on's own future: waking a task from its own thread
            // is a queue push, while waking block_on's future writes to the driver's
            // eventfd (once per answer).
            rt.block_on(async move {
                let _ = tokio::spawn(run(cfg, clients, rx, runner, cancel, gather)).await;
            })
        })?;
        Ok(Self { tx, held: Vec::new() })
    }

    /// Probes this process of `name` from now on (replacing an older one), from the next
    /// [`Prober::send_held`].
    pub fn watch(
        &mut self,
        name: &str,
        generation: u64,
        endpoint: Endpoint,
        liveness: LivenessSpec,
    ) {
        let name = name.to_owned();
        self.held.push(ProbeCmd::Watch { name, generation, endpoint, liveness });
    }

    /// Stops probing `name`, from the next [`Prober::send_held`]. (A probe of its old
    /// process still under way reports with the old generation, which the runner ignores.)
    pub fn unwatch(&mut self, name: &str) {
        self.held.push(ProbeCmd::Unwatch { name: name.to_owned() });
    }

    /// Sends the commands given since the last call, in order.
    pub fn send_held(&mut self) {
        for cmd in self.held.drain(..) {
            if self.tx.send(cmd).is_err() {
                // The prober ended (the runner is shutting down): nothing more to tell it.
                return;
            }
        }
    }
}

/// HTTP clients of the prober for nodes that serve HTTPS: one per distinct TLS setting (the
/// same client certificate shares one client and its connection pool). Plain-HTTP nodes need
/// none: each gets a [`PlainConn`].
struct Clients {
    timeout: Duration,
    tls: HashMap<ProbeTls, Result<reqwest::Client, String>>,
}

impl Clients {
    fn new(timeout: Duration) -> Self {
        Self { timeout, tls: HashMap::new() }
    }

    /// How to reach `endpoint`.
    fn get(&mut self, endpoint: &Endpoint) -> Http {
        let Some(tls) = &endpoint.tls else { return Http::Plain(PlainConn::default()) };
        let timeout = self.timeout;
        let client = self.tls.entry(tls.clone()).or_insert_with(|| {
            let (cert_file, key_file) = tls.identity.clone().unzip();
            let identity = dwbase_node::tls::ClientTls { ca_file: None, cert_file, key_file };
            let keys = ("ca_file", "the client certificate", "its key");
            let builder = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(timeout)
                .pool_max_idle_per_host(1);
            identity
                .apply(builder, keys)
                .map_err(|e| e.to_string())?
                .danger_accept_invalid_certs(true)
                .build()
                .map_err(|e| e.to_string())
        });
        match client {
            Ok(client) => Http::Tls(client.clone()),
            Err(e) => Http::NoClient(e.clone()),
        }
    }
}

/// How the prober reaches one node.
enum Http {
    /// Plain HTTP, on a connection of the node's own.
    Plain(PlainConn),
    /// HTTPS, with reqwest's client for the node's TLS setting.
    Tls(reqwest::Client),
    /// HTTPS, but no client could be made (an unreadable client certificate): why.
    NoClient(String),
}

/// The kept-alive connection to a plain-HTTP node: hyper's HTTP/1 client connection, opened
/// at the first probe and again whenever the node has closed it. A probe through reqwest's
/// pooled client spent most of the prober's CPU on an idle devnet in the pool (URL parsing,
/// checkout, its channels) for what is one request on one connection (issue 14).
///
/// Only one probe of a node is out at a time (the target is busy meanwhile), so the lock is
/// never contended: a probe takes the connection and puts it back once answered.
#[derive(Clone, Default)]
struct PlainConn(Arc<std::sync::Mutex<Option<SendRequest<Empty<Bytes>>>>>);

/// Why a plain-HTTP probe got no answer.
enum PlainError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl PlainConn {
    fn take(&self) -> Option<SendRequest<Empty<Bytes>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take().filter(|s| !s.is_closed())
    }

    fn put(&self, sender: SendRequest<Empty<Bytes>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// `GET path` (no timeout of its own): the status and, unless it is 200, the body.
    ///
    /// On a kept-alive connection the node may close it just as the request goes out (it
    /// closes connections idle for `node.limits.header_timeout_secs`, as long as the slow
    /// probe period by default): a request that was not written, or was written and got no
    /// byte of answer before the close, is sent once more on a new connection. (Probes are
    /// GETs without side effects, so sending one twice is harmless; a node that died refuses
    /// the new connection, and one that hangs does not close, so no failure is hidden.)
    async fn get(
        &self,
        addr: SocketAddr,
        path: &'static str,
    ) -> Result<(StatusCode, String), PlainError> {
        let mut kept = self.take();
        loop {
            let reused = kept.is_some();
            let mut sender = match kept.take() {
                Some(sender) => sender,
                None => Self::connect(addr).await?,
            };
            let req = Request::get(path)
                .header(hyper::header::HOST, addr.to_string())
                .body(Empty::new())
                .expect("a GET of a static path is a valid request");
            let resp = match sender.try_send_request(req).await {
                Ok(resp) => resp,
                Err(e)
                    if reused && (e.message().is_some() || e.error().is_incomplete_message()) =>
                {
                    continue
                }
                Err(e) => return Err(PlainError::Http(e.into_error())),
            };
            let status = resp.status();
            // Read the body to its end, so that the connection can carry the next probe.
            let body = Limited::new(resp.into_body(), 64 * 1024).collect().await;
            let text = match body {
                Ok(_) if status.is_success() => String::new(),
                Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                // An answer whose body broke off still gave its status: the connection is gone.
                Err(_) => return Ok((status, String::new())),
            };
            self.put(sender);
            return Ok((status, text));
        }
    }

    async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, PlainError> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(PlainError::Connect)?;
        // One small request and answer per probe: no Nagle delay behind a previous segment.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PlainError::Http)?;
        // The connection's own task: it ends when the node closes the connection or the
        // sender is dropped (the node was unwatched or restarted, or a probe timed out).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

struct Target {
    generation: u64,
    endpoint: Endpoint,
    http: Http,
    liveness: LivenessSpec,
    ready: bool,
    pause: Duration,
    watched_at: Instant,
    next_ready: Instant,
    next_live: Option<Instant>,
    busy: bool,
}

/// The first multiple of `period` after `epoch` that is at or after `t`.
fn align(epoch: Instant, t: Instant, period: Duration) -> Instant {
    if period.is_zero() {
        return t;
    }
    let since = t.saturating_duration_since(epoch).as_nanos();
    let p = period.as_nanos();
    let k = since.div_ceil(p);
    epoch + Duration::from_nanos((k * p) as u64)
}

type Batch = BoxFuture<'static, Vec<Outcome>>;

async fn run(
    cfg: ProbeConfig,
    mut clients: Clients,
    mut rx: mpsc::UnboundedReceiver<ProbeCmd>,
    runner: mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
    gather: Arc<AtomicBool>,
) {
    let epoch = Instant::now();
    let mut targets: HashMap<String, Target> = HashMap::new();
    let mut inflight: FuturesUnordered<Batch> = FuturesUnordered::new();
    let first = STARTING_PROBE_FIRST.min(cfg.fast);
    let alarm = Alarm::new();
    loop {
        // Gather answers (see GATHER_ANSWERS) while several probes are out and every node is
        // ready; never while one starts (its probes run every few milliseconds).
        let out = targets.values().filter(|t| t.busy).count();
        gather.store(out > 1 && targets.values().all(|t| t.ready), Ordering::Relaxed);
        let next = targets
            .values()
            .filter(|t| !t.busy)
            .flat_map(|t| [Some(t.next_ready), t.next_live])
            .flatten()
            .min();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            cmd = rx.recv() => match cmd {
                None => return,
                Some(ProbeCmd::Watch { name, generation, endpoint, liveness }) => {
                    let now = Instant::now();
                    let next_live = liveness
                        .enabled()
                        .then(|| align(epoch, now + Duration::from_millis(liveness.period_ms), Duration::from_millis(liveness.period_ms)));
                    let http = clients.get(&endpoint);
                    targets.insert(name, Target {
                        generation, endpoint, http, liveness, ready: false, pause: first,
                        watched_at: now, next_ready: now, next_live, busy: false,
                    });
                }
                Some(ProbeCmd::Unwatch { name }) => {
                    targets.remove(&name);
                }
            },
            Some(batch) = inflight.next(), if !inflight.is_empty() => {
                let now = Instant::now();
                for o in &batch {
                    let Some(t) = targets.get_mut(&o.name) else { continue };
                    if t.generation != o.generation {
                        continue;
                    }
                    t.busy = false;
                    match o.kind {
                        Kind::Readiness => {
                            if o.verdict == Verdict::Ok || t.ready {
                                // Ready, or was (a degraded node stays visible without a probe
                                // storm): the slow, shared cadence. One period after this
                                // probe was due, as for liveness below (a period after it
                                // answered would round up to the grid point after the next,
                                // doubling the period).
                                let due = if t.ready { t.next_ready } else { now };
                                t.ready = true;
                                t.next_ready = align(epoch, (due + cfg.slow).max(now), cfg.slow);
                            } else {
                                t.next_ready = now + t.pause;
                                t.pause = if now.duration_since(t.watched_at) < STARTING_WINDOW {
                                    (t.pause + first).min(STARTING_PROBE_CAP.max(first))
                                } else {
                                    (t.pause * 2).min(cfg.fast)
                                };
                            }
                        }
                        Kind::Liveness => {
                            // The next probe is one period after this one was due, not after
                            // it finished: a probe that times out (or waits on a slow readiness
                            // probe of the same batch) must not stretch the period, or K
                            // failures take far longer than K periods.
                            let p = Duration::from_millis(t.liveness.period_ms);
                            let due = t.next_live.unwrap_or(now);
                            t.next_live = Some(align(epoch, (due + p).max(now), p));
                        }
                    }
                }
                if runner.send(Msg::Probes(batch)).is_err() {
                    return;
                }
            }
            _ = alarm.until(next), if next.is_some() => {
                let due_by = Instant::now() + BATCH_SLACK;
                let mut probes = Vec::new();
                for (name, t) in targets.iter_mut().filter(|(_, t)| !t.busy) {
                    let ready_due = t.next_ready <= due_by;
                    let live_due = t.next_live.is_some_and(|l| l <= due_by);
                    if !(ready_due || live_due) {
                        continue;
                    }
                    t.busy = true;
                    let ready = ready_due.then(|| probe(name, t, Kind::Readiness, cfg.timeout));
                    let live = live_due.then(|| {
                        let timeout = Duration::from_millis(t.liveness.timeout_ms.max(1));
                        probe(name, t, Kind::Liveness, timeout)
                    });
                    // Both due: readiness first, on the node's one kept-alive connection; a
                    // ready answer is a live one too (`alive_by`), so the liveness request
                    // goes out only when readiness did not answer 200 (at once, the second
                    // would open, and then drop, a connection of its own).
                    probes.push(
                        async move {
                            let mut out = Vec::with_capacity(2);
                            if let Some(ready) = ready {
                                out.push(ready.await);
                            }
                            if let Some(live) = live {
                                let by_ready = out.first().and_then(alive_by);
                                out.push(match by_ready {
                                    Some(alive) => alive,
                                    None => live.await,
                                });
                            }
                            out
                        }
                        .boxed(),
                    );
                }
                if !probes.is_empty() {
                    let batch = futures::future::join_all(probes);
                    inflight.push(batch.map(|v| v.into_iter().flatten().collect()).boxed());
                }
            }
        }
    }
}

/// The prober's wait for its next due probe.
///
/// tokio's timer wheel keeps a sleep of seconds in a coarse level and wakes the thread at that
/// level's slot boundaries to move it down (a 5 s sleep: three wake-ups), so on Linux the wait
/// is a timerfd instead: the kernel wakes the thread once, at the deadline. Elsewhere (or if
/// the timerfd cannot be made) it is tokio's sleep.
struct Alarm {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fd: Option<tokio::io::unix::AsyncFd<TimerFd>>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
struct TimerFd(nix::sys::timerfd::TimerFd);

#[cfg(any(target_os = "linux", target_os = "android"))]
impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl Alarm {
    fn new() -> Self {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::sys::timerfd::{ClockId, TimerFd as Fd, TimerFlags};
            let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
            // As in process.rs: tokio deprecated the safe constructor because a registered fd
            // could be closed or replaced behind its back; here the AsyncFd owns the timerfd
            // outright for its whole life, which is what the unsafe replacement asks for.
            #[allow(deprecated)]
            let made = Fd::new(ClockId::CLOCK_MONOTONIC, flags)
                .map_err(std::io::Error::from)
                .and_then(|fd| {
                    tokio::io::unix::AsyncFd::with_interest(
                        TimerFd(fd),
                        tokio::io::Interest::READABLE,
                    )
                });
            match made {
                Ok(fd) => Self { fd: Some(fd) },
                Err(e) => {
                    tracing::debug!("no timerfd for the prober ({e}); using tokio's timer");
                    Self { fd: None }
                }
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Self {}
    }

    /// Completes at `t` (never when `None`).
    async fn until(&self, t: Option<Instant>) {
        let Some(t) = t else { return futures::future::pending().await };
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(fd) = &self.fd {
            use nix::sys::time::TimeSpec;
            use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
            let left = t.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // Arming again replaces the previous deadline and clears its expirations.
            let armed = fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(left)),
                TimerSetTimeFlags::empty(),
            );
            if armed.is_ok() {
                loop {
                    let Ok(mut ready) = fd.readable().await else { break };
                    // A readiness left from an earlier deadline reads nothing: wait again.
                    match ready.try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from)) {
                        Ok(_) => return,
                        Err(_would_block) => continue,
                    }
                }
            }
        }
        tokio::time::sleep_until(t).await
    }
}

fn probe(name: &str, t: &Target, kind: Kind, timeout: Duration) -> BoxFuture<'static, Outcome> {
    let path = match kind {
        Kind::Readiness => "/readyz",
        Kind::Liveness => "/healthz",
    };
    let (name, generation) = (name.to_owned(), t.generation);
    let timed_out = move || format!("{path} timed out after {} ms", timeout.as_millis());
    let not_ok = move |status: StatusCode, body: &str| {
        let body: String = body.trim().chars().take(300).collect();
        Verdict::NotOk(format!("{path} answered {status}: {body}"))
    };
    match &t.http {
        Http::Plain(conn) => {
            let (conn, addr) = (conn.clone(), t.endpoint.addr);
            async move {
                let verdict = match tokio::time::timeout(timeout, conn.get(addr, path)).await {
                    Ok(Ok((status, _))) if status.is_success() => Verdict::Ok,
                    Ok(Ok((status, body))) => not_ok(status, &body),
                    Err(_elapsed) => Verdict::Failed(timed_out()),
                    Ok(Err(PlainError::Connect(e)))
                        if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                    {
                        Verdict::Failed(format!("{path} refused the connection"))
                    }
                    Ok(Err(PlainError::Connect(e))) => {
                        Verdict::Failed(format!("{path}: connecting to {addr}: {e}"))
                    }
                    Ok(Err(PlainError::Http(e))) => {
                        Verdict::Failed(format!("{path}: {}", innermost(&e)))
                    }
                };
                Outcome { name, generation, kind, verdict }
            }
            .boxed()
        }
        Http::Tls(http) => {
            let req = http.get(format!("{}{path}", t.endpoint.url())).timeout(timeout);
            async move {
                let verdict = match req.send().await {
                    Ok(resp) if resp.status().is_success() => Verdict::Ok,
                    Ok(resp) => {
                        let status = resp.status();
                        not_ok(status, &resp.text().await.unwrap_or_default())
                    }
                    Err(e) if e.is_timeout() => Verdict::Failed(timed_out()),
                    // A failed handshake is a connect error too: say what failed.
                    Err(e) => Verdict::Failed(format!("{path}: {}", innermost(&e))),
                };
                Outcome { name, generation, kind, verdict }
            }
            .boxed()
        }
        Http::NoClient(e) => {
            let verdict = Verdict::Failed(format!("{path}: no HTTPS client: {e}"));
            futures::future::ready(Outcome { name, generation, kind, verdict }).boxed()
        }
    }
}

/// The liveness outcome a readiness probe's answer stands for: a node's `/readyz` answers 200
/// only when everything its `/healthz` checks passes too (a stalled commit path fails both:
/// `dwbase_node::Node::health` lists it among the reasons), so a readiness probe that passed is
/// a passing liveness probe due in the same batch, and an idle devnet's every readiness period
/// costs one request per node instead of two (issue 14). After any other readiness answer the
/// liveness probe runs and decides on its own.
fn alive_by(ready: &Outcome) -> Option<Outcome> {
    (ready.kind == Kind::Readiness && ready.verdict == Verdict::Ok).then(|| Outcome {
        name: ready.name.clone(),
        generation: ready.generation,
        kind: Kind::Liveness,
        verdict: Verdict::Ok,
    })
}

/// The innermost cause of an error (reqwest's own text is only "error sending request", hyper's
/// often "connection error").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn alignment_puts_every_node_on_the_same_grid() {
        let epoch = Instant::now();
        let p = Duration::from_secs(5);
        let a = align(epoch, epoch + Duration::from_millis(1200), p);
        let b = align(epoch, epoch + Duration::from_millis(4999), p);
        assert_eq!(a, b);
        assert_eq!(a, epoch + p);
        assert_eq!(align(epoch, epoch + p, p), epoch + p);
        assert_eq!(align(epoch, epoch + p + Duration::from_nanos(1), p), epoch + 2 * p);
    }

    /// A node on loopback (axum) that counts the probes it gets and whose `/readyz` answers
    /// what the test sets.
    #[derive(Default)]
    struct Seen {
        readyz: AtomicUsize,
        healthz: AtomicUsize,
        ready_status: std::sync::atomic::AtomicU16,
    }

    async fn counting_node(seen: Arc<Seen>) -> SocketAddr {
        use axum::extract::State;
        use axum::http::StatusCode;
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/readyz",
                get(|State(s): State<Arc<Seen>>| async move {
                    s.readyz.fetch_add(1, Ordering::SeqCst);
                    StatusCode::from_u16(s.ready_status.load(Ordering::SeqCst)).unwrap()
                }),
            )
            .route(
                "/healthz",
                get(|State(s): State<Arc<Seen>>| async move {
                    s.healthz.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }),
            )
            .with_state(seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Probe outcomes until `n` liveness outcomes have come (deadline 20 s).
    async fn outcomes_until(
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        n: usize,
    ) -> (Vec<Verdict>, Vec<Verdict>) {
        let (mut ready, mut live) = (vec![], vec![]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while live.len() < n {
            let msg = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Some(Msg::Probes(batch))) = msg else { panic!("no probe batch: {msg:?}") };
            for o in batch {
                match o.kind {
                    Kind::Readiness => ready.push(o.verdict),
                    Kind::Liveness => live.push(o.verdict),
                }
            }
        }
        (ready, live)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ready_answer_stands_for_the_liveness_probe_due_with_it_once_per_period() {
        let seen = Arc::new(Seen::default());
        seen.ready_status.store(200, Ordering::SeqCst);
        let addr = counting_node(seen.clone()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let period = Duration::from_millis(40);
        let cfg = ProbeConfig { fast: period, slow: period, timeout: Duration::from_secs(5) };
        let mut prober = Prober::start(cfg, tx, cancel.clone()).unwrap();
        let liveness = LivenessSpec { period_ms: 40, timeout_ms: 5000, failures: 3 };
        prober.watch("node-a", 1, Endpoint::plain(addr), liveness);
        prober.send_held();

        // Ready from the first probe; from then on both are due on the same grid, every
        // period (not every other one), and the ready answers stand for the liveness probes.
        let (ready, live) = outcomes_until(&mut rx, 8).await;
        assert!(ready.iter().chain(&live).all(|v| *v == Verdict::Ok), "{ready:?} {live:?}");
        assert!(ready.len() + 1 >= live.len(), "readiness every period: {ready:?} {live:?}");
        assert_eq!(seen.healthz.load(Ordering::SeqCst), 0, "no /healthz while /readyz passes");
        assert!(seen.readyz.load(Ordering::SeqCst) >= ready.len());

        // Not ready: now the liveness probe goes out, and its own answer decides.
        seen.ready_status.store(503, Ordering::SeqCst);
        let _ = outcomes_until(&mut rx, 2).await; // a batch may have been out at the switch
        let (ready, live) = outcomes_until(&mut rx, 4).await;
        assert!(ready.iter().all(|v| matches!(v, Verdict::NotOk(_))), "{ready:?}");
        assert!(live.iter().all(|v| *v == Verdict::Ok), "{live:?}");
        assert!(seen.healthz.load(Ordering::SeqCst) >= 4);
        cancel.cancel();
    }

    /// How [`raw_node`] treats a connection after answering its first request.
    #[derive(Clone, Copy)]
    enum AfterFirst {
        /// Closes it at once (the probe finds a closed connection at its next turn).
        Close,
        /// Reads the next request, then closes without a byte of answer (the race of an idle
        /// keep-alive connection the node closes just as a probe goes out).
        ReadThenClose,
        /// Never answers anything: reads nothing and keeps the connection (a hung node).
        Hang,
    }

    /// A node on loopback written on bare TCP: answers `200 ok` once per connection, then
    /// does what `after` says; counts the connections it accepted.
    async fn raw_node(after: AfterFirst, accepted: Arc<AtomicUsize>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            true
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                if let AfterFirst::Hang = after {
                    held.push(s);
                    continue;
                }
                tokio::spawn(async move {
                    if !read_head(&mut s).await {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                    if let AfterFirst::ReadThenClose = after {
                        read_head(&mut s).await;
                    }
                });
            }
        });
        addr
    }

    /// The readiness verdicts of the first `n` readiness probes of one node at `addr`.
    async fn readiness_verdicts(addr: SocketAddr, n: usize, timeout: Duration) -> Vec<Verdict> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let period = Duration::from_millis(20);
        let cfg = ProbeConfig { fast: period, slow: period, timeout };
        let mut prober = Prober::start(cfg, tx, cancel.clone()).unwrap();
        let liveness = LivenessSpec { period_ms: 0, timeout_ms: 0, failures: 0 };
        prober.watch("node-a", 1, Endpoint::plain(addr), liveness);
        prober.send_held();
        let mut verdicts = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while verdicts.len() < n {
            let msg = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Some(Msg::Probes(batch))) = msg else { panic!("no probe batch: {msg:?}") };
            verdicts.extend(batch.into_iter().map(|o| o.verdict));
        }
        cancel.cancel();
        verdicts
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_closes_kept_alive_connections_never_fails_a_probe() {
        for after in [AfterFirst::Close, AfterFirst::ReadThenClose] {
            let accepted = Arc::new(AtomicUsize::new(0));
            let addr = raw_node(after, accepted.clone()).await;
            let verdicts = readiness_verdicts(addr, 12, Duration::from_secs(5)).await;
            assert!(verdicts.iter().all(|v| *v == Verdict::Ok), "{verdicts:?}");
            // Every probe after the first found its connection closed and opened another.
            assert!(accepted.load(Ordering::SeqCst) >= 12, "{}", accepted.load(Ordering::SeqCst));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_and_a_hung_node_fail_their_probes_with_the_reason() {
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let verdicts = readiness_verdicts(gone, 3, Duration::from_secs(5)).await;
        let refused = Verdict::Failed("/readyz refused the connection".into());
        assert!(verdicts.iter().all(|v| *v == refused), "{verdicts:?}");

        let accepted = Arc::new(AtomicUsize::new(0));
        let hung = raw_node(AfterFirst::Hang, accepted.clone()).await;
        let verdicts = readiness_verdicts(hung, 3, Duration::from_millis(100)).await;
        let timed_out = Verdict::Failed("/readyz timed out after 100 ms".into());
        assert!(verdicts.iter().all(|v| *v == timed_out), "{verdicts:?}");
        // A timed-out probe drops its connection: the next one does not queue behind it.
        assert!(accepted.load(Ordering::SeqCst) >= 3, "{}", accepted.load(Ordering::SeqCst));
    }
}
