//! The dwbase supervisor: a daemon, one per state root, that owns DWBase node processes —
//! spawns them, restarts them by policy, probes their readiness, keeps their logs, answers the
//! control socket and records everything in state.json.
//!
//! Entry points:
//! - [`cli::main`] / [`cli::run_cli`] with [`cli::SupervisorArgs`]: the `dwbase-supervisor`
//!   program (also reachable as `dwbase supervisor …`).
//! - [`run`] with [`RunOptions`]: the whole supervisor in-process (the CLI's foreground mode,
//!   tests). It takes the root (lock, socket, pid file), adopts nodes an earlier supervisor
//!   left running, serves until `shutdown` is cancelled (→ stops every node, then returns),
//!   [`RunOptions::leave_running`] is cancelled or a `Shutdown` request arrives (→ returns,
//!   nodes stopped or not as asked), and removes socket and pid file on the way out. It never
//!   touches signals, tracing setup or the process's panic hook: that is [`cli`]'s job.
//!   Build the options with [`RunOptions::standard`] for the same node program and log pipe
//!   as the daemon (foreground mode), or [`RunOptions::new`] for raw log files (tests).
//!
//! ```no_run
//! # async fn foreground() -> anyhow::Result<()> {
//! use tokio_util::sync::CancellationToken;
//! let opts = dwbase_supervisor::RunOptions::standard("/var/lib/dwbase", None);
//! let shutdown = CancellationToken::new();
//! let on_ctrl_c = shutdown.clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     on_ctrl_c.cancel(); // stops every node, then `run` returns
//! });
//! dwbase_supervisor::run(opts, shutdown).await
//! # }
//! ```
//!
//! Inside: [`server`] (accept loop, one task per connection) → [`handlers`] (one per request)
//! → [`runner`] (the single task owning node state) → [`fsm`] (the pure restart rules) and
//! [`process`] (spawn, signal, wait). [`render`] writes node configs, [`instance`] holds the
//! root, [`logs`] writes and reads node logs, [`metrics`] serves Prometheus text and
//! [`status_api`] the read-only JSON status and event stream beside it.

pub mod cli;
pub mod devnet_tls;
pub mod fsm;
pub mod handlers;
pub mod instance;
pub mod log_hold;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod render;
pub mod runner;
pub mod server;
pub mod status_api;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use dwbase_proto::{NodeState, Paths, StopSpec, SupervisorInfo};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use fsm::RestartRules;
pub use process::{Invocation, LogSink};

/// How [`run`] is set up.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state root (made absolute).
    pub root: PathBuf,
    /// How to start a node (`dwbase-node`, or `dwbase node run`); `--config FILE` is appended.
    pub node: Invocation,
    /// How node output reaches its log file.
    pub sink: LogSink,
    /// Serve Prometheus metrics here (loopback), and the read-only status API beside them.
    pub metrics_addr: Option<SocketAddr>,
    /// How often an idle `GET /v1/events` stream gets a keep-alive comment.
    pub events_keepalive: Duration,
    /// The restart rules (tests shrink them).
    pub rules: RestartRules,
    /// Cancel to exit leaving every node running (SIGUSR1, `supervisor restart`).
    pub leave_running: CancellationToken,
    /// Readiness probe period while a node is not ready.
    pub probe_fast: Duration,
    /// Readiness probe period once a node is ready.
    pub probe_slow: Duration,
}

impl RunOptions {
    /// Defaults for a root and a node program: raw log files (no log pipe), default rules,
    /// no metrics.
    pub fn new(root: impl Into<PathBuf>, node: Invocation) -> Self {
        Self {
            root: root.into(),
            node,
            sink: LogSink::Append,
            metrics_addr: None,
            events_keepalive: status_api::KEEP_ALIVE,
            rules: RestartRules::default(),
            leave_running: CancellationToken::new(),
            probe_fast: Duration::from_millis(250),
            // Like Kubernetes' default readiness period: an idle devnet of 50 nodes costs 5
            // probes a second, and a node that degrades shows within 10 s.
            probe_slow: Duration::from_secs(10),
        }
    }
}

impl RunOptions {
    /// What the `dwbase-supervisor` program runs with (use this for the CLI's foreground
    /// mode too): the node program is `node_bin`, else `dwbase-node` beside the current
    /// executable, else `<exe> node run`; node output goes through `<exe> logpipe` (or
    /// `<exe> supervisor logpipe` when the current executable is the single `dwbase` binary)
    /// with the default rotation (10 MiB × 5).
    pub fn standard(root: impl Into<PathBuf>, node_bin: Option<PathBuf>) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dwbase-supervisor"));
        let mut opts = Self::new(root, cli::node_invocation(node_bin, &exe));
        opts.sink = LogSink::Pipe {
            logpipe: cli::logpipe_invocation(&exe),
            max_bytes: logs::DEFAULT_MAX_BYTES,
            keep: logs::DEFAULT_KEEP,
        };
        opts
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[state]) {
            warn!("sd_notify: {e}");
        }
    }
}

/// Runs a supervisor for `opts.root` until `shutdown` (stop every node, then return),
/// `opts.leave_running` (return, nodes keep running) or a `Shutdown` request.
///
/// Errors: another supervisor owns the root, the socket cannot be bound, a state file is
/// unreadable in a way that cannot be set aside (e.g. written by a newer dwbase), the metrics
/// address cannot be bound.
pub async fn run(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let paths = Paths::new(&opts.root).context("resolving the state root")?;
    let (instance, listener) = instance::Instance::acquire(&paths)?;
    let pid = std::process::id();

    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?,
        ),
        None => None,
    };
    let metrics_url = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!("http://{a}/metrics"));
    let info = SupervisorInfo {
        pid,
        version: dwbase_proto::BUILD_VERSION.to_owned(),
        root: paths.root.clone(),
        socket: instance.socket().to_owned(),
        metrics_url,
        started_unix_ms: unix_ms(SystemTime::now()),
        startup: Default::default(),
    };
    let cfg = runner::RunnerConfig {
        paths: paths.clone(),
        node: Arc::new(opts.node.clone()),
        sink: Arc::new(opts.sink.clone()),
        rules: opts.rules,
        supervisor: info.clone(),
        supervisor_start_time: dwbase_proto::process::start_time(pid),
        probe_fast: opts.probe_fast,
        probe_slow: opts.probe_slow,
        probe_timeout: Duration::from_secs(1),
    };
    let (runner, handle) = runner::Runner::new(cfg)?;
    let mut info = info;
    info.startup = runner.startup().clone();
    let runner_task = tokio::spawn(runner.run());

    let background = CancellationToken::new();
    let metrics = metrics_listener.as_ref().map(|_| Arc::new(metrics::SupervisorMetrics::new()));
    let ctx = Arc::new(server::Ctx::new(handle.clone(), info.clone(), metrics.clone()));
    if let (Some(l), Some(m)) = (metrics_listener, &metrics) {
        let api = status_api::StatusApi {
            handle: handle.clone(),
            root: paths.root.clone(),
            metrics: m.clone(),
            shutdown: ctx.streams.clone(),
            keep_alive: opts.events_keepalive,
        };
        let app = metrics::router(m.clone()).merge(api.router());
        let token = background.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve_app(l, app, token).await {
                warn!("metrics endpoint: {e}");
            }
        });
        tokio::spawn(feed_metrics(handle.clone(), m.clone(), background.clone()));
    }

    let server_token = CancellationToken::new();
    let server_task = tokio::spawn(server::serve(listener, ctx.clone(), server_token.clone()));
    server::announce(&info);
    notify(sd_notify::NotifyState::Ready);

    let stop_nodes = tokio::select! {
        _ = shutdown.cancelled() => {
            info!("shutting down: stopping every node");
            true
        }
        _ = opts.leave_running.cancelled() => {
            info!("shutting down: nodes keep running for the next supervisor");
            false
        }
        stop = ctx.exit.requested() => {
            info!(stop_nodes = stop, "shutdown requested over the socket");
            stop
        }
    };
    notify(sd_notify::NotifyState::Stopping);
    ctx.streams.cancel();
    if stop_nodes {
        let all = StopSpec { nodes: vec![], group: None, timeout_ms: None };
        match handle.stop_and_wait(all).await {
            Ok(Ok(nodes)) if !nodes.is_empty() => info!("stopped {}", nodes.join(", ")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("stopping nodes: {}", e.message),
            Err(e) => warn!("stopping nodes: {e}"),
        }
    }
    // Connections see the token: log followers get SupervisorShutdown, the rest close.
    server_token.cancel();
    let _ = server_task.await;
    let _ = handle.finish().await;
    let _ = runner_task.await;
    background.cancel();
    drop(instance);
    info!("supervisor exited");
    Ok(())
}

/// Keeps the per-node gauges in step with the runner: on every change, and every few seconds
/// for uptimes.
async fn feed_metrics(
    handle: runner::RunnerHandle,
    m: Arc<metrics::SupervisorMetrics>,
    stop: CancellationToken,
) {
    let mut watch = handle.status_watch();
    let mut restarts: HashMap<String, u32> = HashMap::new();
    let mut exits: HashMap<String, Option<i64>> = HashMap::new();
    let mut snapshot = watch.borrow_and_update().clone();
    let mut taken = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let age = taken.elapsed();
        for n in snapshot.nodes.iter() {
            let up = n.pid.is_some();
            m.set_node(
                &n.name,
                metrics::NodeSnapshot {
                    up,
                    ready: n.ready,
                    last_exit: n.last_exit.as_ref().map(|e| e.kind),
                    crash_loop: n.state == NodeState::CrashLoop,
                    desired_running: n.desired != dwbase_proto::state::Desired::Stopped,
                    uptime_secs: n
                        .uptime_ms
                        .map(|ms| (Duration::from_millis(ms) + age).as_secs_f64())
                        .unwrap_or(0.0),
                },
            );
            // A new last exit (its time changed) is one exit, counted by its cause; the one
            // found at start is history.
            let at = n.last_exit.as_ref().map(|e| e.at_unix_ms);
            if let Some(seen) = exits.insert(n.name.clone(), at) {
                if let (Some(e), true) = (&n.last_exit, at != seen) {
                    m.inc_exit(&n.name, e.cause);
                }
            }
            let before = restarts.insert(n.name.clone(), n.restarts);
            if let Some(before) = before {
                for _ in before..n.restarts {
                    m.inc_restart(&n.name);
                }
            }
        }
        exits.retain(|name, _| snapshot.nodes.iter().any(|n| &n.name == name));
        restarts.retain(|name, _| {
            let keep = snapshot.nodes.iter().any(|n| &n.name == name);
            if !keep {
                m.remove_node(name);
            }
            keep
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
                snapshot = watch.borrow_and_update().clone();
                taken = Instant::now();
            }
            _ = tick.tick() => {}
        }
    }
}
