//! Remember throughput and durability, side by side with the original DWBase node, in one run.
//!
//! ```text
//! cargo build --release -p dwbase-ctl --bin dwbase-node
//! cargo run --release -p dwbase-node --example remember -- --original PATH/TO/ORIGINAL/dwbase-node \
//!     [--ours target/release/dwbase-node] [--clients 1,8,16] [--atoms 3000] [--rounds 3] \
//!     [--crash-cycles 2] [--crash-after 1500] [--syscalls] [--dir DIR]
//! ```
//!
//! Both nodes run as real processes on loopback, each over its own data dir (in `--dir`, default a
//! temporary folder in the system's temp dir; put it on the disk you care about), with rate
//! limits off. For each client count, `--rounds` rounds each remember `--atoms` atoms into
//! each node, the two alternating (and alternating which goes first), so load from elsewhere on
//! the machine hits both alike; the table gives the median round of each and the ratio. Ours also
//! reports its group-commit flushes per remember (from `/health`). Below each row (stderr) come
//! every round's rates and the round-by-round ratio: the geometric mean of ours/original over
//! the back-to-back pairs, with ±2 standard errors, which is the figure to read on a machine
//! whose speed drifts between rounds.
//!
//! `--syscalls` then counts, for each node and client count, the write and sync system calls per
//! remember with `strace -f -c` attached to the node for one more pass (sled makes a log write
//! durable with `pwrite` + `sync_file_range`, so those two are the disk flushes; strace slows the
//! node down, so that pass is not timed).
//!
//! Last, the durability check (skip with `--crash-cycles 0`): 8 clients remember into a fresh
//! world; after `--crash-after` acknowledged atoms the node gets SIGKILL, is started again on the
//! same data dir, and the world is replayed: every acknowledged atom (each payload carries a
//! unique token) must be there. This repeats `--crash-cycles` times, each check covering every
//! atom acknowledged so far.
//!
//! Every process this starts is stopped (by its pid) on exit; every request goes to loopback.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    ours: PathBuf,
    original: PathBuf,
    clients: Vec<usize>,
    atoms: usize,
    rounds: usize,
    crash_cycles: usize,
    crash_after: usize,
    syscalls: bool,
    dir: Option<PathBuf>,
}

const USAGE: &str = "usage: remember --original PATH [--ours PATH] [--clients 1,8,16] \
                     [--atoms N] [--rounds N] [--crash-cycles N] [--crash-after N] [--syscalls] \
                     [--dir DIR]";

fn parse_args() -> Result<Args, String> {
    let default_ours = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|d| d.join("dwbase-node")))
        .unwrap_or_else(|| PathBuf::from("target/release/dwbase-node"));
    let mut args = Args {
        ours: default_ours,
        original: PathBuf::new(),
        clients: vec![1, 8, 16],
        atoms: 3000,
        rounds: 3,
        crash_cycles: 2,
        crash_after: 1500,
        syscalls: false,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| -> Result<usize, String> {
            v.parse().map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match a.as_str() {
            "--ours" => args.ours = value("--ours")?.into(),
            "--original" => args.original = value("--original")?.into(),
            "--clients" => {
                args.clients = value("--clients")?
                    .split(',')
                    .map(|c| num("--clients", c.trim().to_owned()))
                    .collect::<Result<_, _>>()?
            }
            "--atoms" => args.atoms = num("--atoms", value("--atoms")?)?,
            "--rounds" => args.rounds = num("--rounds", value("--rounds")?)?.max(1),
            "--crash-cycles" => {
                args.crash_cycles = num("--crash-cycles", value("--crash-cycles")?)?
            }
            "--crash-after" => args.crash_after = num("--crash-after", value("--crash-after")?)?,
            "--syscalls" => args.syscalls = true,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.original.as_os_str().is_empty() {
        return Err(format!("--original is required (the original DWBase's dwbase-node)\n{USAGE}"));
    }
    for (flag, bin) in [("--ours", &args.ours), ("--original", &args.original)] {
        if !bin.is_file() {
            return Err(format!("{flag} {}: no such executable", bin.display()));
        }
    }
    if args.clients.contains(&0) {
        return Err("--clients: every count must be at least 1".into());
    }
    Ok(args)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Original,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Original => "original",
        }
    }
}

/// One node process over its own data dir, restartable on the same dir and port.
struct Node {
    kind: Kind,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    base: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Node {
    fn new(kind: Kind, bin: &Path, dir: &Path) -> Node {
        let port = free_port();
        let data = dir.join("data");
        std::fs::create_dir_all(dir).expect("node folder");
        let config = dir.join("node.toml");
        let text = match kind {
            Kind::Ours => format!(
                "[node]\nid = \"bench\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
                 [node.security]\nremember_per_sec = 0\nask_per_min = 0\n",
                data.display()
            ),
            // The original's own keys; no rate limits when they are left out.
            Kind::Original => format!(
                "[node]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nembedder = \"dummy\"\n\
                 [node.security]\nread_worlds = []\nwrite_worlds = []\n",
                data.display()
            ),
        };
        std::fs::write(&config, text).expect("writing the node config");
        Node {
            kind,
            bin: bin.to_path_buf(),
            config,
            log: dir.join("node.log"),
            base: format!("http://127.0.0.1:{port}"),
            child: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn start(&mut self, client: &reqwest::Client) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log file");
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let mut text = String::new();
                let _ =
                    std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
                panic!("the {} node exited ({status}) at start:\n{text}", self.kind.name());
            }
            let ok = client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {} node did not answer in 60 s",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn flushes(&self, client: &reqwest::Client) -> Option<u64> {
        if self.kind != Kind::Ours {
            return None;
        }
        let health: Value =
            client.get(format!("{}/health", self.base)).send().await.ok()?.json().await.ok()?;
        health["checks"]["storage"]["group_commit_flushes"].as_u64()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// utime + stime of a process in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The remember body both nodes accept (the original needs every list field present).
fn body(world: &str, worker: usize, token: &str) -> Value {
    json!({
        "world": world,
        "worker": format!("w{worker}"),
        "kind": "observation",
        "timestamp": now_rfc3339(),
        "importance": 0.5,
        "payload_json": json!({"text": format!("bench atom {token} lorem ipsum dolor sit amet"), "token": token}).to_string(),
        "vector": null,
        "flags": [],
        "labels": ["bench"],
        "links": [],
    })
}

struct Phase {
    secs: f64,
    n: usize,
    lat_ms: Vec<f64>,
    node_cpu: f64,
    flushes: Option<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        let mut l = self.lat_ms.clone();
        l.sort_by(f64::total_cmp);
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// `n` remembers into `world` from `clients` concurrent clients; panics on any refusal.
async fn remember_phase(
    client: &reqwest::Client,
    node: &Node,
    world: &str,
    clients: usize,
    n: usize,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let flushes0 = node.flushes(client).await;
    let cpu0 = cpu_secs(node.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (next, client, url, world) =
            (next.clone(), client.clone(), format!("{}/remember", node.base), world.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let b = body(&world, c, &format!("{world}-{i}"));
                let t = Instant::now();
                let r = client.post(&url).json(&b).send().await.expect("remember request");
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                assert!(status.is_success(), "remember answered {status}: {text}");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut lat_ms = Vec::with_capacity(n);
    for t in tasks {
        lat_ms.extend(t.await.expect("client task"));
    }
    let secs = started.elapsed().as_secs_f64();
    let node_cpu = cpu_secs(node.pid()) - cpu0;
    let flushes = match (flushes0, node.flushes(client).await) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Phase { secs, n, lat_ms, node_cpu, flushes }
}

/// Counts write and sync system calls of `node` during `n` remembers, with strace attached.
async fn syscall_phase(
    client: &reqwest::Client,
    node: &Node,
    world: &str,
    clients: usize,
    n: usize,
    out: &Path,
) -> Result<Vec<(String, u64)>, String> {
    let pid = node.pid();
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-c", "-e", "trace=fsync,fdatasync,sync_file_range,pwrite64,pwritev"])
        .arg("-o")
        .arg(out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    // Attached once every thread names a tracer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
        let all = tasks.filter_map(Result::ok).all(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .map(|s| {
                    s.lines()
                        .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
                })
                .unwrap_or(true)
        });
        if all {
            break;
        }
        if let Ok(Some(status)) = strace.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = strace.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("strace exited ({status}): {}", err.trim()));
        }
        if Instant::now() > deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            return Err("strace did not attach to every thread in 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remember_phase(client, node, world, clients, n).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = strace.wait();
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    // strace -c table: "% time seconds usecs/call calls [errors] syscall".
    let mut counts = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
            if let (Ok(calls), Some(name)) = (f[3].parse::<u64>(), f.last()) {
                counts.push(((*name).to_owned(), calls));
            }
        }
    }
    Ok(counts)
}

/// The tokens of the atoms stored in `world`, by replaying it; `Err` with what the node said
/// when it does not answer with atoms.
async fn stored_tokens(
    client: &reqwest::Client,
    node: &Node,
    world: &str,
) -> Result<HashSet<String>, String> {
    let r = client
        .post(format!("{}/replay", node.base))
        // No filter: the original's needs every field of one, or none.
        .json(&json!({"world": world}))
        .send()
        .await
        .map_err(|e| format!("replay: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("replay: {e}"))?;
    let atoms: Value = serde_json::from_str(&text)
        .map_err(|_| format!("replay answered {status}: {}", text.trim()))?;
    let Some(atoms) = atoms.as_array().filter(|_| status.is_success()) else {
        return Err(format!("replay answered {status}: {}", text.trim()));
    };
    Ok(atoms
        .iter()
        .filter_map(|atom| atom["payload_json"].as_str())
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|p| p["token"].as_str().map(str::to_owned))
        .collect())
}

/// Writes with 8 clients until `after` more are acknowledged, kills the node with SIGKILL,
/// restarts it and checks every acknowledged atom; `cycles` times. Returns (acknowledged,
/// lost, why the world could not be read back) after each restart.
async fn crash_check(
    client: &reqwest::Client,
    node: &mut Node,
    cycles: usize,
    after: usize,
) -> Vec<(usize, usize, Option<String>)> {
    let world = format!("crash-{}", node.kind.name());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let mut out = Vec::new();
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let target = acked.lock().expect("acked").len() + after;
        let mut tasks = Vec::new();
        for c in 0..8 {
            let (stop, acked, counter, client, url, world) = (
                stop.clone(),
                acked.clone(),
                counter.clone(),
                client.clone(),
                format!("{}/remember", node.base),
                world.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let token =
                        format!("{world}-{cycle}-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let Ok(r) = client.post(&url).json(&body(&world, c, &token)).send().await
                    else {
                        break; // cut off by the kill: not acknowledged
                    };
                    if !r.status().is_success() || r.bytes().await.is_err() {
                        break;
                    }
                    acked.lock().expect("acked").push(token);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().expect("acked").len() < target {
            assert!(
                Instant::now() < deadline,
                "{} acknowledged writes not reached in 120 s",
                after
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        node.start(client).await;
        let acked_now = acked.lock().expect("acked").clone();
        match stored_tokens(client, node, &world).await {
            Ok(stored) => {
                let lost = acked_now.iter().filter(|t| !stored.contains(*t)).count();
                out.push((acked_now.len(), lost, None));
            }
            // Nothing can be read back: every acknowledged atom counts as lost.
            Err(why) => out.push((acked_now.len(), acked_now.len(), Some(why))),
        }
    }
    out
}

fn median_by_rate(phases: &[Phase]) -> &Phase {
    let mut idx: Vec<usize> = (0..phases.len()).collect();
    idx.sort_by(|&a, &b| phases[a].rate().total_cmp(&phases[b].rate()));
    &phases[idx[idx.len() / 2]]
}

/// The ratio ours/original of each round's pair (the two ran back to back), as a geometric
/// mean with ±2 standard errors: on a shared machine whose speed drifts between rounds by more
/// than the gap being measured, pairs cancel the drift that the medians of each side keep.
/// `None` with fewer than two pairs.
fn paired_ratio(mine: &[Phase], theirs: &[Phase]) -> Option<(f64, f64, f64)> {
    let logs: Vec<f64> = mine.iter().zip(theirs).map(|(m, t)| (m.rate() / t.rate()).ln()).collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    Some((mean.exp(), (mean - 2.0 * se).exp(), (mean + 2.0 * se).exp()))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("remember bench: {e}");
            std::process::exit(2);
        }
    };
    let tmp = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("--dir");
            tempfile::tempdir_in(d).expect("a folder in --dir")
        }
        None => tempfile::tempdir().expect("a temporary folder"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut ours = Node::new(Kind::Ours, &args.ours, &tmp.path().join("ours"));
        let mut original = Node::new(Kind::Original, &args.original, &tmp.path().join("original"));
        ours.start(&client).await;
        original.start(&client).await;
        println!(
            "remember bench: ours {} (pid {}), original {} (pid {}); data under {}; {} CPUs, \
             load average {}",
            args.ours.display(),
            ours.pid(),
            args.original.display(),
            original.pid(),
            tmp.path().display(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average()
        );
        println!(
            "{} atoms per round, {} rounds per client count, the two nodes alternating\n",
            args.atoms, args.rounds
        );
        println!(
            "| clients | ours req/s | original req/s | ours/original | ours p50 / p99 ms | original p50 / p99 ms | CPU µs/req ours / original | ours flushes/remember |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &clients in &args.clients {
            let (mut mine, mut theirs) = (Vec::new(), Vec::new());
            for round in 0..args.rounds {
                let order = if round % 2 == 0 { [Kind::Ours, Kind::Original] } else { [Kind::Original, Kind::Ours] };
                for kind in order {
                    let world = format!("c{clients}-r{round}");
                    match kind {
                        Kind::Ours => mine.push(remember_phase(&client, &ours, &world, clients, args.atoms).await),
                        Kind::Original => {
                            theirs.push(remember_phase(&client, &original, &world, clients, args.atoms).await)
                        }
                    }
                }
            }
            let (m, t) = (median_by_rate(&mine), median_by_rate(&theirs));
            println!(
                "| {clients} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} / {:.0} | {} |",
                m.rate(),
                t.rate(),
                m.rate() / t.rate(),
                m.pct(0.5),
                m.pct(0.99),
                t.pct(0.5),
                t.pct(0.99),
                m.node_cpu * 1e6 / m.n as f64,
                t.node_cpu * 1e6 / t.n as f64,
                m.flushes.map_or("?".into(), |f| format!("{:.3}", f as f64 / m.n as f64)),
            );
            let rates = |p: &[Phase]| p.iter().map(|p| format!("{:.0}", p.rate())).collect::<Vec<_>>().join(", ");
            eprintln!("  {clients} clients, every round (req/s): ours {}; original {}", rates(&mine), rates(&theirs));
            if let Some((mean, low, high)) = paired_ratio(&mine, &theirs) {
                eprintln!(
                    "  {clients} clients, round by round: ours/original {mean:.3} (geometric mean of the {} pairs; ±2 standard errors {low:.3}-{high:.3})",
                    mine.len().min(theirs.len())
                );
            }
        }

        if args.syscalls {
            println!("\nSystem calls per remember (strace -f -c attached for one more pass of {} atoms; not timed):\n", args.atoms);
            println!("| clients | node | pwrite | sync_file_range | fsync + fdatasync |");
            println!("|---:|---|---:|---:|---:|");
            for &clients in &args.clients {
                for node in [&ours, &original] {
                    let out = tmp.path().join(format!("strace-{}-{clients}.txt", node.kind.name()));
                    let world = format!("strace-c{clients}");
                    match syscall_phase(&client, node, &world, clients, args.atoms, &out).await {
                        Ok(counts) => {
                            let get = |names: &[&str]| -> u64 {
                                counts.iter().filter(|(n, _)| names.contains(&n.as_str())).map(|(_, c)| c).sum()
                            };
                            let per = |c: u64| c as f64 / args.atoms as f64;
                            println!(
                                "| {clients} | {} | {:.3} | {:.3} | {:.3} |",
                                node.kind.name(),
                                per(get(&["pwrite64", "pwritev"])),
                                per(get(&["sync_file_range"])),
                                per(get(&["fsync", "fdatasync"])),
                            );
                        }
                        Err(e) => println!("| {clients} | {} | strace failed: {e} | | |", node.kind.name()),
                    }
                }
            }
        }

        if args.crash_cycles > 0 {
            println!(
                "\nDurability: 8 clients, SIGKILL after every {} acknowledged atoms, restart, replay ({} cycles):\n",
                args.crash_after, args.crash_cycles
            );
            println!("| node | after restart | acknowledged | lost | note |");
            println!("|---|---:|---:|---:|---|");
            for node in [&mut ours, &mut original] {
                for (i, (acked, lost, why)) in
                    crash_check(&client, node, args.crash_cycles, args.crash_after).await.into_iter().enumerate()
                {
                    let why = why.map(|w| w.replace('|', "/")).unwrap_or_default();
                    println!("| {} | {} | {acked} | {lost} | {why} |", node.kind.name(), i + 1);
                }
            }
        }
        println!("\nload average at the end: {}", load_average());
        ours.stop();
        original.stop();
    });
}
