//! `dwbase test soak`: a mixed workload over HTTP against a real devnet, with chaos.
//!
//! The soak deploys its own devnet under a temp (or given) state root through the real CLI —
//! this very executable run as `dwbase deploy devnet …` with `DWBASE_DATA_DIR` set, so the
//! real supervisor owns real node processes — and then, until `--duration` is over, runs
//! `--concurrency` workers doing remember / ask / replay against random nodes. With `--chaos`
//! it injects, in turn:
//!
//! - `kill_node`: SIGKILL to a ready node (the supervisor restarts it);
//! - `kill_supervisor`: SIGKILL to the supervisor; the nodes keep serving; the next CLI call
//!   (`deploy devnet`, idempotent) starts a new supervisor, which must adopt every node (same
//!   pids, none duplicated);
//! - `disk_fill`: writes to an extra node deployed with `max_disk_mb = 1` (`deploy local`)
//!   until it answers 507 — counted as refusals, not errors;
//! - `restart_node`: `dwbase deploy restart NODE`.
//!
//! Connection errors while a node is down are counted by kind and the operation is retried on
//! another node; they are not lost writes. A write counts as *acknowledged* when `/remember`
//! returned its id. At the end every node must be ready again and every acknowledged write must
//! read back (`GET /atoms/{id}` on the node that acknowledged it, same payload):
//! `acknowledged_writes_lost` must be 0, else the command fails (exit 1) and keeps the root for
//! inspection. The devnet and supervisor are always stopped, on error and Ctrl+C too.
//!
//! The report keeps the original DWBase soak's keys (`duration_secs`, `remembers`, `asks`,
//! `remember_p50_ms`, `remember_p95_ms`, `ask_p50_ms`, `ask_p95_ms`, `disk_bytes_start`,
//! `disk_bytes_end`, `restart_injected`, `corruption_injected`, `errors`) and adds ours (see
//! [`Report`]).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dwbase_proto::process::{self, Liveness};
use dwbase_proto::state::{Loaded, StateFile};
use dwbase_proto::{Client, Group, NodeState, NodeStatus, Paths, Request, Response, StatusReport};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::parse_duration;
use crate::{Silent, Usage};

/// `dwbase test …`
#[derive(Debug, Subcommand)]
pub enum TestCommand {
    /// Soak test: a mixed remember/ask/replay workload against a devnet it deploys itself,
    /// optionally with chaos; verifies every acknowledged write at the end.
    Soak(SoakArgs),
}

/// `dwbase test soak`
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long the workload runs (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where to write the JSON report.
    #[arg(long, default_value = "soak-report.json", value_name = "FILE")]
    pub report: PathBuf,
    /// Devnet size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=26))]
    pub nodes: u32,
    /// State root to deploy under (default: a temp folder, removed afterwards unless writes
    /// were lost). Must not have a running supervisor.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Inject faults: kill -9 a node, kill -9 the supervisor, fill a node's disk cap,
    /// restart a node.
    #[arg(long)]
    pub chaos: bool,
    /// Port of node-a (default: a free range). The capped node of --chaos takes
    /// base-port + nodes.
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// Concurrent workload tasks.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Time between faults (default: duration / 6, between 2 s and 30 s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub fault_interval: Option<Duration>,
    /// Seed of the random choices (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Deploy the devnet with `--tls` (HTTPS between the workload, the nodes and their
    /// swarm, with the devnet's own CA).
    #[arg(long)]
    pub tls: bool,
    /// Keep the temp state root afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print the report on stdout as JSON (instead of the summary).
    #[arg(long)]
    pub json: bool,
}

/// Runs `dwbase test …`.
pub async fn run(cmd: TestCommand) -> Result<()> {
    match cmd {
        TestCommand::Soak(args) => soak(args).await,
    }
}

/// Besides every variable the node reads ([`dwbase_node::config::ENV_VARS`]), what the soak
/// clears for the CLI calls it makes (the supervisor and nodes inherit that environment).
const CLEARED_ENV: &[&str] = &["NOTIFY_SOCKET"];

/// Name (node id) of the disk-capped node deployed with `--chaos`.
pub const CAPPED_NODE: &str = "soak-capped";
/// Its `max_disk_mb`.
pub const CAPPED_MAX_DISK_MB: u64 = 1;
/// Payload size of the disk-fill writes.
const FILL_PAYLOAD_BYTES: usize = 32 << 10;
/// How long a node is avoided after a connection error.
const AVOID_AFTER_ERROR: Duration = Duration::from_millis(300);
/// Attempts per operation (each on another node when possible).
const ATTEMPTS: usize = 3;
/// How many error messages the report keeps.
const MAX_ERROR_SAMPLES: usize = 50;
/// How long the final phase waits for every node to be ready again.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];
const KINDS: &[&str] = &["observation", "reflection", "plan", "action", "message"];
const WORLDS: usize = 4;

/// The soak report (JSON).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Workload duration asked for, in seconds (original key).
    pub duration_secs: u64,
    /// Acknowledged remembers (original key).
    pub remembers: u64,
    /// Successful asks (original key).
    pub asks: u64,
    /// Remember latency percentiles, ms (original keys).
    pub remember_p50_ms: f64,
    /// 95th percentile.
    pub remember_p95_ms: f64,
    /// Ask latency percentiles, ms (original keys).
    pub ask_p50_ms: f64,
    /// 95th percentile.
    pub ask_p95_ms: f64,
    /// Bytes in every node's data dir after deploy (original key).
    pub disk_bytes_start: u64,
    /// And at the end (original key).
    pub disk_bytes_end: u64,
    /// Whether a node restart (kill -9 or `deploy restart`) was injected (original key).
    pub restart_injected: bool,
    /// Whether storage corruption was injected (original key; this soak never corrupts
    /// storage: backups are tested for that).
    pub corruption_injected: bool,
    /// The first error messages, with time and node (original key).
    pub errors: Vec<String>,

    /// Successful replays.
    pub replays: u64,
    /// 99th percentile of remember latency, ms.
    pub remember_p99_ms: f64,
    /// 99th percentile of ask latency, ms.
    pub ask_p99_ms: f64,
    /// Replay latency percentiles, ms.
    pub replay_p50_ms: f64,
    /// 95th percentile.
    pub replay_p95_ms: f64,
    /// 99th percentile.
    pub replay_p99_ms: f64,
    /// Successful operations by kind (remember, ask, replay, disk_fill_remember).
    pub ops: BTreeMap<String, u64>,
    /// Their sum.
    pub ops_total: u64,
    /// Successful operations per second of workload.
    pub ops_per_sec: f64,
    /// Failed attempts by kind (connect, timeout, connection_closed, http_503, http_4xx, …).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// All failed attempts.
    pub errors_total: u64,
    /// Refusals by kind (disk_full = 507, rate_limited = 429): expected answers, not errors.
    pub refused_by_kind: BTreeMap<String, u64>,
    /// Attempts retried on another node after a transient error.
    pub retries: u64,
    /// Operations that failed on every attempt.
    pub failed_ops: u64,
    /// Faults injected by kind.
    pub faults_injected: BTreeMap<String, u64>,
    /// What each fault did.
    pub fault_log: Vec<FaultRecord>,
    /// Faults that could not be carried out (the soak goes on).
    pub fault_failures: Vec<String>,
    /// Node restarts the supervisor reports at the end, by node.
    pub restarts_by_node: BTreeMap<String, u32>,
    /// Their sum.
    pub restarts_observed: u64,
    /// Nodes a new supervisor adopted after a supervisor kill (same pid).
    pub nodes_adopted: u64,
    /// Nodes a new supervisor started while the old process still ran (must be 0).
    pub nodes_duplicated: u64,
    /// Writes whose id /remember returned.
    pub acknowledged_writes: u64,
    /// Of those, read back with the same payload.
    pub acknowledged_writes_verified: u64,
    /// Of those, missing, different or unreadable at the end (must be 0).
    pub acknowledged_writes_lost: u64,
    /// The lost writes (first 100).
    pub lost_writes: Vec<LostWrite>,
    /// Whether --chaos was on.
    pub chaos: bool,
    /// Whether the devnet served HTTPS (--tls).
    pub tls: bool,
    /// Devnet size.
    pub nodes: u32,
    /// Workload tasks.
    pub concurrency: u32,
    /// Port of node-a.
    pub base_port: u16,
    /// Seed of the random choices.
    pub seed: u64,
    /// The state root.
    pub root: PathBuf,
    /// When the workload started (RFC 3339).
    pub started_at: String,
    /// Wall time of the whole command, seconds.
    pub wall_secs: f64,
    /// No acknowledged write lost, every node ready at the end, the devnet stopped cleanly.
    pub passed: bool,
    /// Why not, if not.
    pub failure: Option<String>,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Seconds since the workload started.
    pub at_secs: f64,
    /// kill_node, kill_supervisor, disk_fill, restart_node.
    pub kind: String,
    /// The node or supervisor affected.
    pub target: String,
    /// What happened.
    pub detail: String,
}

/// An acknowledged write that did not read back.
#[derive(Debug, Clone, Serialize)]
pub struct LostWrite {
    /// Its id.
    pub id: String,
    /// The node that acknowledged it.
    pub node: String,
    /// Missing, different payload, or unreadable.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillNode,
    KillSupervisor,
    DiskFill,
    RestartNode,
}

impl Fault {
    const ORDER: [Fault; 4] =
        [Fault::KillNode, Fault::KillSupervisor, Fault::DiskFill, Fault::RestartNode];

    fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "kill_node",
            Fault::KillSupervisor => "kill_supervisor",
            Fault::DiskFill => "disk_fill",
            Fault::RestartNode => "restart_node",
        }
    }
}

/// An acknowledged write.
#[derive(Debug, Clone)]
struct Ack {
    id: String,
    node: String,
    port: u16,
    payload: String,
}

/// Counters shared by the workers.
#[derive(Debug, Default)]
struct Stats {
    remember_ms: Vec<f64>,
    ask_ms: Vec<f64>,
    replay_ms: Vec<f64>,
    ops: BTreeMap<String, u64>,
    errors_by_kind: BTreeMap<String, u64>,
    refused_by_kind: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    retries: u64,
    failed_ops: u64,
    acks: Vec<Ack>,
}

/// A node the workload talks to.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    port: u16,
}

/// Everything the workers and the chaos loop share.
struct Shared {
    client: reqwest::Client,
    /// `http` or `https` (a devnet whose nodes serve TLS).
    scheme: &'static str,
    targets: Vec<Target>,
    avoid_until: Mutex<Vec<Option<Instant>>>,
    stats: Mutex<Stats>,
    started: Instant,
    stop: AtomicBool,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, kind: &str, context: &str, message: &str) {
        let at = self.started.elapsed().as_secs_f64();
        let mut s = self.stats();
        *s.errors_by_kind.entry(kind.to_owned()).or_default() += 1;
        if s.error_samples.len() < MAX_ERROR_SAMPLES {
            s.error_samples.push(format!("[{at:.1}s] {context}: {kind}: {message}"));
        }
    }

    fn refused(&self, kind: &str) {
        *self.stats().refused_by_kind.entry(kind.to_owned()).or_default() += 1;
    }

    fn avoid(&self, i: usize) {
        let mut a = self.avoid_until.lock().unwrap_or_else(|p| p.into_inner());
        a[i] = Some(Instant::now() + AVOID_AFTER_ERROR);
    }

    /// A random node not tried yet and not avoided; else any not tried; else any.
    fn pick(&self, rng: &mut StdRng, tried: &[usize]) -> usize {
        let now = Instant::now();
        let avoid = self.avoid_until.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let n = self.targets.len();
        let fresh: Vec<usize> =
            (0..n).filter(|i| !tried.contains(i) && avoid[*i].is_none_or(|t| t <= now)).collect();
        if !fresh.is_empty() {
            return fresh[rng.random_range(0..fresh.len())];
        }
        let untried: Vec<usize> = (0..n).filter(|i| !tried.contains(i)).collect();
        if !untried.is_empty() {
            return untried[rng.random_range(0..untried.len())];
        }
        rng.random_range(0..n)
    }
}

/// How one HTTP attempt ended.
enum Outcome {
    Ok(Vec<u8>),
    Refused(&'static str),
    Transient(&'static str, String),
    Failed(&'static str, String),
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn classify(res: Result<(u16, Vec<u8>), reqwest::Error>) -> Outcome {
    match res {
        Err(e) if e.is_connect() => Outcome::Transient("connect", chain(&e)),
        Err(e) if e.is_timeout() => Outcome::Transient("timeout", chain(&e)),
        Err(e) => Outcome::Transient("connection_closed", chain(&e)),
        Ok((200..=299, body)) => Outcome::Ok(body),
        Ok((507, _)) => Outcome::Refused("disk_full"),
        Ok((429, _)) => Outcome::Refused("rate_limited"),
        Ok((503, body)) => Outcome::Transient("http_503", String::from_utf8_lossy(&body).into()),
        Ok((s @ 400..=499, body)) => {
            Outcome::Failed("http_4xx", format!("{s} {}", String::from_utf8_lossy(&body)))
        }
        Ok((s, body)) => {
            Outcome::Failed("http_5xx", format!("{s} {}", String::from_utf8_lossy(&body)))
        }
    }
}

async fn post(
    client: &reqwest::Client,
    scheme: &str,
    port: u16,
    path: &str,
    body: &serde_json::Value,
    worker: &str,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let resp = client
        .post(format!("{scheme}://127.0.0.1:{port}{path}"))
        .header("x-dwbase-worker", worker)
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Remember,
    Ask,
    Replay,
}

/// One workload task: random operations on random nodes until the deadline.
async fn worker(shared: Arc<Shared>, task: u32, seed: u64, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(task) << 32));
    let mut n: u64 = 0;
    while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..=59 => Op::Remember,
            60..=84 => Op::Ask,
            _ => Op::Replay,
        };
        let world = format!("soak-{}", rng.random_range(0..WORLDS));
        let worker_name = format!("soak-w{task}-{}", n % 64);
        let (path, body, payload) = match op {
            Op::Remember => {
                let words: Vec<&str> =
                    (0..4).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
                let payload = serde_json::json!({
                    "text": words.join(" "),
                    "task": task,
                    "n": n,
                    "nonce": rng.random::<u64>(),
                })
                .to_string();
                let body = serde_json::json!({
                    "world": world,
                    "worker": worker_name,
                    "kind": KINDS[rng.random_range(0..KINDS.len())],
                    "importance": rng.random_range(0.0..1.0),
                    "payload_json": payload,
                    "labels": ["soak"],
                });
                ("/remember", body, Some(payload))
            }
            Op::Ask => {
                let text = format!(
                    "{} {}",
                    WORDS[rng.random_range(0..WORDS.len())],
                    WORDS[rng.random_range(0..WORDS.len())]
                );
                ("/ask", serde_json::json!({"world": world, "text": text}), None)
            }
            Op::Replay => {
                ("/replay", serde_json::json!({"world": world, "filter": {"limit": 20}}), None)
            }
        };
        let mut tried = Vec::with_capacity(ATTEMPTS);
        let mut done = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                shared.stats().retries += 1;
            }
            let i = shared.pick(&mut rng, &tried);
            tried.push(i);
            let target = &shared.targets[i];
            let started = Instant::now();
            let outcome = classify(
                post(&shared.client, shared.scheme, target.port, path, &body, &worker_name).await,
            );
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let context = format!("{} on {}", &path[1..], target.name);
            match outcome {
                Outcome::Ok(bytes) => {
                    let mut s = shared.stats();
                    match op {
                        Op::Remember => match serde_json::from_slice::<String>(&bytes) {
                            Ok(id) => {
                                s.remember_ms.push(ms);
                                *s.ops.entry("remember".into()).or_default() += 1;
                                s.acks.push(Ack {
                                    id,
                                    node: target.name.clone(),
                                    port: target.port,
                                    payload: payload.clone().unwrap_or_default(),
                                });
                            }
                            Err(e) => {
                                drop(s);
                                shared.error("decode", &context, &e.to_string());
                            }
                        },
                        Op::Ask => {
                            s.ask_ms.push(ms);
                            *s.ops.entry("ask".into()).or_default() += 1;
                        }
                        Op::Replay => {
                            s.replay_ms.push(ms);
                            *s.ops.entry("replay".into()).or_default() += 1;
                        }
                    }
                    done = true;
                }
                Outcome::Refused(kind) => {
                    shared.refused(kind);
                    done = true;
                }
                Outcome::Transient(kind, msg) => {
                    shared.error(kind, &context, &msg);
                    if kind != "http_503" {
                        shared.avoid(i);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Outcome::Failed(kind, msg) => {
                    shared.error(kind, &context, &msg);
                }
            }
            break;
        }
        if !done {
            shared.stats().failed_ops += 1;
        }
    }
}

/// The devnet this soak deployed; stopped (with its supervisor) when dropped.
struct Devnet {
    exe: PathBuf,
    paths: Paths,
    nodes: u32,
    base_port: u16,
    tls: bool,
    stopped: bool,
}

/// What a finished CLI call printed.
struct CliOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Devnet {
    fn std_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        for k in dwbase_node::config::ENV_VARS.iter().chain(CLEARED_ENV) {
            cmd.env_remove(k);
        }
        // Set after the removals: for the CLI this variable is the state root.
        cmd.env(dwbase_proto::paths::ROOT_ENV, &self.paths.root).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs `dwbase ARGS` against our root, killing it after `timeout`.
    async fn cli(&self, args: &[&str], timeout: Duration) -> Result<CliOutput> {
        let mut cmd = tokio::process::Command::from(self.std_command(args));
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| anyhow!("`dwbase {}` did not finish within {timeout:?}", args.join(" ")))?
            .with_context(|| format!("running `dwbase {}`", args.join(" ")))?;
        Ok(CliOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `dwbase ARGS` and fails with its stderr unless it succeeded.
    async fn cli_ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let out = self.cli(args, timeout).await?;
        if !out.ok {
            bail!("`dwbase {}` failed:\n{}{}", args.join(" "), out.stdout, out.stderr.trim_end());
        }
        Ok(out.stdout)
    }

    fn deploy_args(&self) -> Vec<String> {
        [
            "deploy",
            "devnet",
            "--nodes",
            &self.nodes.to_string(),
            "--base-port",
            &self.base_port.to_string(),
            "--timeout",
            "60s",
            "--stop-timeout",
            "5s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(self.tls.then(|| "--tls".to_owned()))
        .collect()
    }

    /// `deploy devnet` (also what brings a killed supervisor back: the call is idempotent).
    async fn deploy(&self) -> Result<()> {
        let args = self.deploy_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli_ok(&args, Duration::from_secs(120)).await.map(drop)
    }

    /// The supervisor's status, or `None` when none answers.
    async fn status(&self) -> Option<StatusReport> {
        let mut client = Client::connect(&self.paths.socket()).await.ok()?;
        match client.request_with_timeout(&Request::Status, Duration::from_secs(10)).await {
            Ok(Response::Status(r)) => Some(r),
            _ => None,
        }
    }

    /// Stops everything (blocking): `deploy stop`, then SIGKILL to any recorded node process
    /// group or supervisor still alive (only processes whose start time matches the record).
    fn stop_blocking(&mut self) -> Result<()> {
        self.stopped = true;
        let mut cmd = self.std_command(&["deploy", "stop", "--timeout", "5s"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        #[cfg(unix)]
        {
            // Its own process group: a second Ctrl+C at the terminal must not cut the cleanup.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let result = match cmd.spawn() {
            Ok(mut child) => {
                let until = Instant::now() + Duration::from_secs(120);
                loop {
                    match child.try_wait() {
                        Ok(Some(s)) if s.success() => break Ok(()),
                        Ok(Some(s)) => break Err(anyhow!("`dwbase deploy stop` exited with {s}")),
                        Ok(None) if Instant::now() >= until => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break Err(anyhow!("`dwbase deploy stop` did not finish in 120 s"));
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        Err(e) => break Err(e.into()),
                    }
                }
            }
            Err(e) => Err(anyhow!("running `dwbase deploy stop`: {e}")),
        };
        let leftovers = self.kill_leftovers();
        match (result, leftovers) {
            (Ok(()), 0) => Ok(()),
            (Ok(()), n) => bail!("`deploy stop` left {n} process(es) running; killed them"),
            (Err(e), _) => Err(e),
        }
    }

    /// SIGKILLs recorded processes that are still ours and alive; returns how many.
    fn kill_leftovers(&self) -> usize {
        let mut killed = 0;
        for group in [Group::Devnet, Group::Local] {
            let Ok(Loaded::Ok(state)) = StateFile::read(&self.paths.state_file(group)) else {
                continue;
            };
            for n in &state.nodes {
                if let Some(pid) = n.pid {
                    if process::liveness(pid, n.start_time) == Liveness::Alive {
                        tracing::warn!(node = %n.name, pid, "still running after stop: SIGKILL");
                        kill(pid, true);
                        killed += 1;
                    }
                }
            }
            if let Some(s) = &state.supervisor {
                if process::liveness(s.pid, s.start_time) == Liveness::Alive {
                    tracing::warn!(pid = s.pid, "supervisor still running after stop: SIGKILL");
                    kill(s.pid, false);
                    killed += 1;
                }
            }
        }
        killed
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(e) = self.stop_blocking() {
                eprintln!("soak: stopping the devnet: {e:#}");
            }
        }
    }
}

/// SIGKILL to a pid (or its process group).
fn kill(pid: u32, group: bool) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let p = Pid::from_raw(pid as i32);
        let _ = if group { killpg(p, Signal::SIGKILL) } else { kill(p, Signal::SIGKILL) };
    }
    #[cfg(not(unix))]
    let _ = (pid, group);
}

/// The first of `n` consecutive ports free now, searched from a pid-derived start.
fn free_ports(n: u16) -> Result<u16> {
    let start = 20_000 + (std::process::id() % 300) as u16 * 100;
    let mut base = start;
    for _ in 0..400 {
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
        base = if base > 60_000 { 20_000 } else { base + n + 1 };
    }
    bail!("found no {n} consecutive free ports; pass --base-port")
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Nearest-rank percentile of unsorted samples (0 when empty).
pub fn percentile(values: &[f64], pct: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let v = sorted[rank.clamp(1, sorted.len()) - 1];
    (v * 100.0).round() / 100.0
}

async fn soak(args: SoakArgs) -> Result<()> {
    let wall = Instant::now();
    if args.duration < Duration::from_secs(1) {
        return Err(Usage("--duration must be at least 1s".into()).into());
    }
    let exe = std::env::current_exe().context("finding the dwbase executable")?;
    let (root, temp) = match &args.data_dir {
        Some(d) => {
            let abs =
                std::path::absolute(d).with_context(|| format!("resolving {}", d.display()))?;
            (abs, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("dwbase-soak-")
                .tempdir()
                .context("creating a temp state root")?;
            (t.path().join("root"), Some(t))
        }
    };
    let paths = Paths::new(&root)?;
    if crate::daemon::connect(&paths).await.ok().flatten().is_some() {
        bail!(
            "a supervisor already runs for {}; the soak deploys (and stops) its own devnet: give \
             it another --data-dir",
            root.display()
        );
    }
    let extra = u16::from(args.chaos);
    let nodes = args.nodes as u16;
    let base_port = match args.base_port {
        Some(p) => {
            if u32::from(p) + u32::from(nodes + extra) > 65_535 || p == 0 {
                return Err(Usage(format!("--base-port {p} leaves no room for the nodes")).into());
            }
            p
        }
        None => free_ports(nodes + extra)?,
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    });
    eprintln!(
        "soak: root {}, {} nodes from port {base_port}, {}{}{}, seed {seed}",
        root.display(),
        args.nodes,
        humantime::format_duration(args.duration),
        if args.chaos { ", chaos on" } else { "" },
        if args.tls { ", https" } else { "" }
    );

    let devnet = Devnet {
        exe,
        paths: paths.clone(),
        nodes: args.nodes,
        base_port,
        tls: args.tls,
        stopped: false,
    };
    let mut signals = crate::signals::Terminated::new()?;
    let mut report = Report {
        duration_secs: args.duration.as_secs(),
        chaos: args.chaos,
        tls: args.tls,
        nodes: args.nodes,
        concurrency: args.concurrency,
        base_port,
        seed,
        root: root.clone(),
        ..Report::default()
    };
    let mut devnet = devnet;
    let outcome = tokio::select! {
        r = soak_body(&devnet, &args, &mut report) => r,
        _ = signals.recv() => Err(anyhow!("interrupted")),
    };
    let interrupted = matches!(&outcome, Err(e) if e.to_string() == "interrupted");
    eprintln!("soak: stopping the devnet and the supervisor");
    // Blocking is fine here: the runtime is current-thread and the workload is over.
    let stopped = devnet.stop_blocking();
    drop(devnet);
    if interrupted {
        eprintln!("soak: interrupted; the devnet and supervisor were stopped");
        return Err(Silent(130).into());
    }
    outcome?;

    report.wall_secs = (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let mut failures = Vec::new();
    if report.acknowledged_writes_lost > 0 {
        failures.push(format!(
            "{} of {} acknowledged writes were lost",
            report.acknowledged_writes_lost, report.acknowledged_writes
        ));
    }
    if report.acknowledged_writes == 0 {
        failures.push("no write was acknowledged at all".to_owned());
    }
    if report.nodes_duplicated > 0 {
        failures.push(format!(
            "{} node(s) were started twice after a supervisor restart",
            report.nodes_duplicated
        ));
    }
    if let Err(e) = &stopped {
        failures.push(format!("stopping the devnet: {e:#}"));
    }
    report.passed = failures.is_empty();
    report.failure = (!failures.is_empty()).then(|| failures.join("; "));

    if let Some(parent) = args.report.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.report, format!("{text}\n"))
        .with_context(|| format!("writing {}", args.report.display()))?;
    if args.json {
        crate::outln!("{text}")?;
    } else {
        print_summary(&report, &args.report)?;
    }
    let keep = args.keep || !report.passed;
    if let Some(t) = temp {
        if keep {
            let kept = t.keep();
            eprintln!("soak: state root kept at {}", kept.join("root").display());
        }
    }
    match report.failure {
        Some(f) => bail!("soak failed: {f} (report: {})", args.report.display()),
        None => Ok(()),
    }
}

async fn soak_body(devnet: &Devnet, args: &SoakArgs, report: &mut Report) -> Result<()> {
    eprintln!("soak: deploying {} nodes", args.nodes);
    devnet.deploy().await.context("deploying the devnet")?;
    let capped_port = devnet.base_port + args.nodes as u16;
    if args.chaos {
        let config = devnet.paths.root.join("soak-capped.toml");
        std::fs::write(
            &config,
            format!(
                "# The soak's disk-capped node (dwbase test soak --chaos).\n[node]\nid = \
                 \"{CAPPED_NODE}\"\nlisten = \"127.0.0.1:{capped_port}\"\n\n[node.security]\n\
                 remember_per_sec = 0\nask_per_min = 0\n\n[node.limits]\nmax_disk_mb = \
                 {CAPPED_MAX_DISK_MB}\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let config = config.to_string_lossy().into_owned();
        devnet
            .cli_ok(
                &[
                    "deploy",
                    "local",
                    "--config",
                    &config,
                    "--timeout",
                    "60s",
                    "--stop-timeout",
                    "5s",
                ],
                Duration::from_secs(120),
            )
            .await
            .context("deploying the disk-capped node")?;
    }
    let status = devnet.status().await.ok_or_else(|| anyhow!("the supervisor does not answer"))?;
    let targets: Vec<Target> = status
        .nodes
        .iter()
        .filter(|n| n.group == Group::Devnet)
        .map(|n| Target { name: n.name.clone(), port: n.port })
        .collect();
    if targets.is_empty() {
        bail!("the supervisor reports no devnet nodes");
    }
    report.disk_bytes_start = status.nodes.iter().map(|n| dir_bytes(&n.data_dir)).sum();

    // The nodes' scheme (and a devnet's CA) from the first node's config.
    let (base, ca) = status
        .nodes
        .iter()
        .find(|n| n.group == Group::Devnet)
        .map(|n| crate::httpclient::deployed_node(&n.config_path, n.port))
        .unwrap_or_default();
    let scheme = if base.starts_with("https://") { "https" } else { "http" };
    let client = crate::httpclient::builder_with(ca.as_deref())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let started = Instant::now();
    report.started_at = dwbase_node::model::now_rfc3339();
    let deadline = started + args.duration;
    let shared = Arc::new(Shared {
        client,
        scheme,
        avoid_until: Mutex::new(vec![None; targets.len()]),
        targets,
        stats: Mutex::new(Stats::default()),
        started,
        stop: AtomicBool::new(false),
    });
    eprintln!("soak: workload running ({} tasks)", args.concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        tasks.spawn(worker(shared.clone(), task, report.seed, deadline));
    }
    let chaos = async {
        if args.chaos {
            chaos_loop(devnet, args, &shared, deadline, capped_port, report).await;
        }
    };
    let workers = async {
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                shared.error("internal", "workload task", &e.to_string());
            }
        }
    };
    tokio::join!(chaos, workers);
    shared.stop.store(true, Ordering::Relaxed);
    let workload_secs = started.elapsed().as_secs_f64();

    // Recovery: a supervisor running and every devnet node ready.
    eprintln!("soak: workload done; waiting for every node to be ready");
    let final_status = recover(devnet, args.nodes).await?;
    report.restarts_by_node =
        final_status.nodes.iter().map(|n| (n.name.clone(), n.restarts)).collect();
    report.restarts_observed = final_status.nodes.iter().map(|n| u64::from(n.restarts)).sum();

    let acks = std::mem::take(&mut shared.stats().acks);
    eprintln!("soak: verifying {} acknowledged writes", acks.len());
    let lost = verify_acks(&shared.client, shared.scheme, &acks).await;
    report.acknowledged_writes = acks.len() as u64;
    report.acknowledged_writes_lost = lost.len() as u64;
    report.acknowledged_writes_verified =
        report.acknowledged_writes - report.acknowledged_writes_lost;
    report.lost_writes = lost.into_iter().take(100).collect();
    report.disk_bytes_end = final_status.nodes.iter().map(|n| dir_bytes(&n.data_dir)).sum();

    let s = shared.stats();
    report.remembers = s.ops.get("remember").copied().unwrap_or(0);
    report.asks = s.ops.get("ask").copied().unwrap_or(0);
    report.replays = s.ops.get("replay").copied().unwrap_or(0);
    report.remember_p50_ms = percentile(&s.remember_ms, 50.0);
    report.remember_p95_ms = percentile(&s.remember_ms, 95.0);
    report.remember_p99_ms = percentile(&s.remember_ms, 99.0);
    report.ask_p50_ms = percentile(&s.ask_ms, 50.0);
    report.ask_p95_ms = percentile(&s.ask_ms, 95.0);
    report.ask_p99_ms = percentile(&s.ask_ms, 99.0);
    report.replay_p50_ms = percentile(&s.replay_ms, 50.0);
    report.replay_p95_ms = percentile(&s.replay_ms, 95.0);
    report.replay_p99_ms = percentile(&s.replay_ms, 99.0);
    report.ops = s.ops.clone();
    report.ops_total = s.ops.values().sum();
    report.ops_per_sec = (report.ops_total as f64 / workload_secs.max(0.001) * 10.0).round() / 10.0;
    report.errors_by_kind = s.errors_by_kind.clone();
    report.errors_total = s.errors_by_kind.values().sum();
    report.refused_by_kind = s.refused_by_kind.clone();
    report.retries = s.retries;
    report.failed_ops = s.failed_ops;
    report.errors = s.error_samples.clone();
    report.restart_injected = ["kill_node", "restart_node"]
        .iter()
        .any(|k| report.faults_injected.get(*k).copied().unwrap_or(0) > 0);
    Ok(())
}

/// Makes sure a supervisor runs (the next CLI call starts one if the last fault killed it)
/// and waits until every devnet node is ready.
async fn recover(devnet: &Devnet, nodes: u32) -> Result<StatusReport> {
    if devnet.status().await.is_none() {
        eprintln!("soak: no supervisor answers; the next CLI call starts one");
        devnet.deploy().await.context("bringing the supervisor back")?;
    }
    let until = Instant::now() + RECOVERY_DEADLINE;
    loop {
        let status = devnet.status().await;
        if let Some(s) = &status {
            let devnet_nodes: Vec<&NodeStatus> =
                s.nodes.iter().filter(|n| n.group == Group::Devnet).collect();
            if devnet_nodes.len() == nodes as usize && devnet_nodes.iter().all(|n| n.ready) {
                return Ok(status.expect("checked"));
            }
        }
        if Instant::now() >= until {
            let states = status
                .map(|s| {
                    s.nodes
                        .iter()
                        .map(|n| format!("{} {}", n.name, n.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "no supervisor".into());
            bail!("the devnet did not recover within {RECOVERY_DEADLINE:?} ({states})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every acknowledged write back from the node that acknowledged it.
async fn verify_acks(client: &reqwest::Client, scheme: &str, acks: &[Ack]) -> Vec<LostWrite> {
    let checks = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let client = client.clone();
            async move {
                let url = format!("{scheme}://127.0.0.1:{}/atoms/{}", ack.port, ack.id);
                let mut last = String::new();
                for attempt in 0..6u32 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                    let resp = match client.get(&url).send().await {
                        Ok(r) => r,
                        Err(e) => {
                            last = format!("unreadable: {}", chain(&e));
                            continue;
                        }
                    };
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap_or_default();
                    match status {
                        200 => {
                            let atom: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let same = atom.get("id").and_then(|v| v.as_str()) == Some(&ack.id)
                                && atom.get("payload_json").and_then(|v| v.as_str())
                                    == Some(&ack.payload);
                            return (!same).then(|| LostWrite {
                                reason: format!(
                                    "read back different content: {}",
                                    String::from_utf8_lossy(&body)
                                ),
                                id: ack.id,
                                node: ack.node,
                            });
                        }
                        404 => {
                            return Some(LostWrite {
                                id: ack.id,
                                node: ack.node,
                                reason: "missing (404)".into(),
                            })
                        }
                        s => {
                            last =
                                format!("unreadable: HTTP {s} {}", String::from_utf8_lossy(&body))
                        }
                    }
                }
                Some(LostWrite { id: ack.id, node: ack.node, reason: last })
            }
        })
        .buffer_unordered(16);
    checks.filter_map(|x| async move { x }).collect().await
}

/// Injects one fault every interval until shortly before the deadline.
async fn chaos_loop(
    devnet: &Devnet,
    args: &SoakArgs,
    shared: &Arc<Shared>,
    deadline: Instant,
    capped_port: u16,
    report: &mut Report,
) {
    let interval = args.fault_interval.unwrap_or_else(|| {
        (args.duration / 6).clamp(Duration::from_secs(2), Duration::from_secs(30))
    });
    // Leave the end of the run fault-free so the last fault's effects settle under load.
    let quiet = (args.duration * 15 / 100).max(Duration::from_secs(2));
    let last_fault = deadline.checked_sub(quiet).unwrap_or(shared.started);
    let mut rng = StdRng::seed_from_u64(report.seed.rotate_left(17));
    let mut next = shared.started + interval;
    let mut i = 0usize;
    while next <= last_fault {
        tokio::time::sleep_until(next.into()).await;
        let fault = Fault::ORDER[i % Fault::ORDER.len()];
        i += 1;
        let at = shared.started.elapsed().as_secs_f64();
        match inject(devnet, fault, shared, &mut rng, capped_port, report).await {
            Ok((target, detail)) => {
                eprintln!("soak: [{at:.1}s] {}: {target}: {detail}", fault.name());
                *report.faults_injected.entry(fault.name().into()).or_default() += 1;
                report.fault_log.push(FaultRecord {
                    at_secs: (at * 10.0).round() / 10.0,
                    kind: fault.name().into(),
                    target,
                    detail,
                });
            }
            Err(e) => {
                eprintln!("soak: [{at:.1}s] {} failed: {e:#}", fault.name());
                report.fault_failures.push(format!("[{at:.1}s] {}: {e:#}", fault.name()));
            }
        }
        next = (next + interval).max(Instant::now());
    }
}

/// A ready devnet node, at random.
fn ready_node<'a>(status: &'a StatusReport, rng: &mut StdRng) -> Option<&'a NodeStatus> {
    let ready: Vec<&NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.group == Group::Devnet && n.state == NodeState::Ready && n.pid.is_some())
        .collect();
    (!ready.is_empty()).then(|| ready[rng.random_range(0..ready.len())])
}

async fn inject(
    devnet: &Devnet,
    fault: Fault,
    shared: &Arc<Shared>,
    rng: &mut StdRng,
    capped_port: u16,
    report: &mut Report,
) -> Result<(String, String)> {
    match fault {
        Fault::KillNode => {
            let status = devnet.status().await.ok_or_else(|| anyhow!("no supervisor answers"))?;
            let n = ready_node(&status, rng).ok_or_else(|| anyhow!("no ready node to kill"))?;
            let pid = n.pid.expect("filtered");
            kill(pid, false);
            Ok((n.name.clone(), format!("SIGKILL to pid {pid}")))
        }
        Fault::RestartNode => {
            let status = devnet.status().await.ok_or_else(|| anyhow!("no supervisor answers"))?;
            let n = ready_node(&status, rng).ok_or_else(|| anyhow!("no ready node to restart"))?;
            let t = Instant::now();
            devnet.cli_ok(&["deploy", "restart", &n.name], Duration::from_secs(60)).await?;
            Ok((
                n.name.clone(),
                format!("`dwbase deploy restart` took {:.2} s", t.elapsed().as_secs_f64()),
            ))
        }
        Fault::DiskFill => {
            disk_fill(shared, capped_port).await.map(|d| (CAPPED_NODE.to_owned(), d))
        }
        Fault::KillSupervisor => {
            let status = devnet.status().await.ok_or_else(|| anyhow!("no supervisor answers"))?;
            let sup = status.supervisor.pid;
            let before: Vec<(String, u32)> =
                status.nodes.iter().filter_map(|n| n.pid.map(|p| (n.name.clone(), p))).collect();
            kill(sup, false);
            if !crate::daemon::wait_gone(sup, None, Duration::from_secs(10)).await {
                bail!("the supervisor (pid {sup}) survived SIGKILL for 10 s");
            }
            // The nodes serve on without a supervisor for a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = Instant::now();
            devnet.deploy().await.context("the CLI call that restarts the supervisor")?;
            let after = devnet
                .status()
                .await
                .ok_or_else(|| anyhow!("no supervisor answers after the restart"))?;
            let mut adopted = 0;
            let mut replaced = Vec::new();
            for (name, old_pid) in &before {
                let new_pid = after.nodes.iter().find(|n| &n.name == name).and_then(|n| n.pid);
                if new_pid == Some(*old_pid) {
                    adopted += 1;
                } else if process::start_time(*old_pid).is_some() && !process::is_zombie(*old_pid) {
                    report.nodes_duplicated += 1;
                    replaced.push(format!("{name} DUPLICATED (old pid {old_pid} alive)"));
                } else {
                    replaced.push(format!("{name} had exited and was restarted"));
                }
            }
            report.nodes_adopted += adopted;
            Ok((
                format!("supervisor pid {sup}"),
                format!(
                    "SIGKILL; new supervisor pid {} after {:.2} s adopted {adopted}/{} nodes{}",
                    after.supervisor.pid,
                    t.elapsed().as_secs_f64(),
                    before.len(),
                    if replaced.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", replaced.join(", "))
                    }
                ),
            ))
        }
    }
}

/// Writes large atoms to the capped node until it answers 507 (or 400 writes).
async fn disk_fill(shared: &Arc<Shared>, port: u16) -> Result<String> {
    let filler = "x".repeat(FILL_PAYLOAD_BYTES);
    let mut stored = 0u32;
    for n in 0..400u32 {
        let payload =
            serde_json::json!({"fill": filler, "n": n, "nonce": rand::random::<u64>()}).to_string();
        let body = serde_json::json!({
            "world": "soak-fill",
            "worker": "soak-filler",
            "kind": "observation",
            "importance": 0.1,
            "payload_json": payload,
        });
        match classify(
            post(&shared.client, shared.scheme, port, "/remember", &body, "soak-filler").await,
        ) {
            Outcome::Ok(bytes) => {
                let id: String = serde_json::from_slice(&bytes).context("decoding the id")?;
                let mut s = shared.stats();
                *s.ops.entry("disk_fill_remember".into()).or_default() += 1;
                s.acks.push(Ack { id, node: CAPPED_NODE.into(), port, payload });
                drop(s);
                stored += 1;
            }
            Outcome::Refused("disk_full") => {
                shared.refused("disk_full");
                return Ok(format!(
                    "{stored} writes of {} KiB, then 507 disk_full",
                    FILL_PAYLOAD_BYTES >> 10
                ));
            }
            Outcome::Refused(kind) => shared.refused(kind),
            Outcome::Transient(kind, msg) | Outcome::Failed(kind, msg) => {
                shared.error(kind, &format!("remember on {CAPPED_NODE}"), &msg);
                bail!("writing to {CAPPED_NODE}: {kind}: {msg}");
            }
        }
    }
    bail!(
        "{CAPPED_NODE} accepted {stored} writes of {} KiB without a 507",
        FILL_PAYLOAD_BYTES >> 10
    )
}

fn print_summary(r: &Report, path: &Path) -> Result<()> {
    let kinds = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        }
    };
    crate::outln!(
        "soak {}: {} s, {} nodes{}, {} ops ({:.1}/s): {} remembers, {} asks, {} replays",
        if r.passed { "passed" } else { "FAILED" },
        r.duration_secs,
        r.nodes,
        if r.chaos { " with chaos" } else { "" },
        r.ops_total,
        r.ops_per_sec,
        r.remembers,
        r.asks,
        r.replays
    )?;
    crate::outln!(
        "  latency ms p50/p95/p99: remember {}/{}/{}, ask {}/{}/{}, replay {}/{}/{}",
        r.remember_p50_ms,
        r.remember_p95_ms,
        r.remember_p99_ms,
        r.ask_p50_ms,
        r.ask_p95_ms,
        r.ask_p99_ms,
        r.replay_p50_ms,
        r.replay_p95_ms,
        r.replay_p99_ms
    )?;
    crate::outln!("  faults: {}", kinds(&r.faults_injected))?;
    crate::outln!(
        "  errors: {} ({}); refused: {}; retries {}, failed ops {}",
        r.errors_total,
        kinds(&r.errors_by_kind),
        kinds(&r.refused_by_kind),
        r.retries,
        r.failed_ops
    )?;
    crate::outln!(
        "  restarts observed: {}; nodes adopted after supervisor kills: {}, duplicated: {}",
        r.restarts_observed,
        r.nodes_adopted,
        r.nodes_duplicated
    )?;
    crate::outln!(
        "  acknowledged writes: {}, verified {}, lost {}",
        r.acknowledged_writes,
        r.acknowledged_writes_verified,
        r.acknowledged_writes_lost
    )?;
    crate::outln!("  report: {}", path.display())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn http_outcomes() {
        assert!(matches!(classify(Ok((507, Vec::new()))), Outcome::Refused("disk_full")));
        assert!(matches!(classify(Ok((429, Vec::new()))), Outcome::Refused("rate_limited")));
        assert!(matches!(classify(Ok((503, Vec::new()))), Outcome::Transient("http_503", _)));
        assert!(matches!(classify(Ok((422, Vec::new()))), Outcome::Failed("http_4xx", _)));
        assert!(matches!(classify(Ok((200, Vec::new()))), Outcome::Ok(_)));
    }
}
