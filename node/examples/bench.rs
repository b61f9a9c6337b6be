//! HTTP benchmark of a real node process on loopback.
//!
//! ```text
//! cargo run --release -p dwbase-node --example bench -- [--atoms 100000] [--asks 5000]
//! ```
//!
//! Starts this same executable as a node (`--serve-node`, a child process with its own RSS) on
//! `127.0.0.1:0` over a temp data dir, loads `--atoms` atoms, and prints remember and ask
//! throughput and p50/p99 latency at 1 and 16 concurrent clients, plus the node's RSS. Every
//! request goes to loopback; the run is bounded by the counts given and stops by itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    atoms: usize,
    asks: usize,
    single: usize,
}

fn parse_args() -> Args {
    let mut args = Args { atoms: 100_000, asks: 5_000, single: 1_000 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--atoms" => args.atoms = num("--atoms"),
            "--asks" => args.asks = num("--asks"),
            "--single" => args.single = num("--single"),
            other => panic!("unknown argument {other}; use --atoms N --asks N --single N"),
        }
    }
    args
}

/// Kills the node on drop (by its pid, via the Child handle).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deterministic xorshift so every run loads the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn vocabulary(n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "qu", "el", "on", "ar", "is",
        "um", "be", "do", "fi", "gu",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| (0..2 + rng.below(3)).map(|_| SYL[rng.below(SYL.len())]).collect::<String>())
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct Phase {
    name: String,
    clients: usize,
    n: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    /// CPU seconds the node and this client used during the phase.
    node_cpu: f64,
    client_cpu: f64,
}

/// utime + stime of a process in seconds (Linux; 0 elsewhere).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

impl Phase {
    fn print(&self) {
        let mut l = self.lat_ms.clone();
        l.sort_by(f64::total_cmp);
        println!(
            "{:<10} {:>3} clients {:>7} req {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  cpu/req node {:>4.0} us client {:>4.0} us",
            self.name,
            self.clients,
            self.n,
            self.n as f64 / self.secs,
            percentile(&l, 0.50),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0.0),
            self.node_cpu * 1e6 / self.n.max(1) as f64,
            self.client_cpu * 1e6 / self.n.max(1) as f64,
        );
    }
}

async fn run_phase<F, Fut>(pid: u32, name: &str, clients: usize, n: usize, make: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let (node0, client0) = (cpu_secs(&pid.to_string()), cpu_secs("self"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                make(i).await;
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
    Phase {
        name: name.to_owned(),
        clients,
        n,
        secs,
        lat_ms,
        node_cpu: cpu_secs(&pid.to_string()) - node0,
        client_cpu: cpu_secs("self") - client0,
    }
}

/// The 1-minute load average (other work on the machine skews the figures).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve-node") {
        // Child mode: run a node with the remaining flags.
        use clap::Parser;
        let args = dwbase_node::cli::NodeArgs::parse_from(
            std::iter::once("dwbase-node".to_owned()).chain(std::env::args().skip(2)),
        );
        std::process::exit(if dwbase_node::cli::run(args) == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        "[node]\nid = \"bench\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [node.security]\nremember_per_sec = 0\nask_per_min = 0\n",
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve-node")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let guard = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("node printed its address").expect("stdout");
        if let Some(addr) = line
            .strip_prefix("dwbase-node listening ")
            .and_then(|r| r.split_whitespace().find_map(|kv| kv.strip_prefix("addr=")))
        {
            break addr.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let base = format!("http://{addr}");
    println!(
        "dwbase-node bench: node pid {pid} at {base}, {} atoms, {} asks (data in a temp dir); \
         {} CPUs, load average {}",
        args.atoms,
        args.asks,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
            assert!(Instant::now() < deadline, "node not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let vocab = Arc::new(vocabulary(5_000));
        let labels: Arc<Vec<String>> = Arc::new((0..50).map(|i| format!("topic-{i}")).collect());

        let remember = {
            let (client, base, vocab, labels) = (client.clone(), base.clone(), vocab.clone(), labels.clone());
            move |i: usize| {
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9));
                let words: Vec<&str> =
                    (0..8 + rng.below(12)).map(|_| vocab[rng.below(vocab.len())].as_str()).collect();
                let body = json!({
                    "world": "bench", "worker": format!("w{}", i % 16), "kind": "observation",
                    "timestamp": "", "importance": (rng.below(100) as f64) / 100.0,
                    "payload_json": json!({"text": words.join(" ")}).to_string(),
                    "labels": [labels[rng.below(labels.len())]],
                });
                let (client, url) = (client.clone(), format!("{base}/remember"));
                async move {
                    let r = client.post(url).json(&body).send().await.expect("remember");
                    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                }
            }
        };
        let ask = {
            let (client, base, vocab) = (client.clone(), base.clone(), vocab.clone());
            move |i: usize| {
                let mut rng = Rng(0xA076_1D64_78BD_642F ^ (i as u64 + 7).wrapping_mul(0x9E37_79B9));
                let text = format!("{} {}", vocab[rng.below(vocab.len())], vocab[rng.below(vocab.len())]);
                let body = json!({"world": "bench", "text": text});
                let (client, url) = (client.clone(), format!("{base}/ask"));
                async move {
                    let r = client.post(url).json(&body).send().await.expect("ask");
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                }
            }
        };

        let single = args.single.min(args.atoms);
        let rem1 = run_phase(pid, "remember", 1, single, remember.clone()).await;
        let rest = args.atoms - single;
        let offset = single;
        let remember16 = move |i: usize| remember(i + offset);
        let rem16 = run_phase(pid, "remember", 16, rest, remember16).await;
        let ask1 = run_phase(pid, "ask", 1, args.single.min(args.asks), ask.clone()).await;
        let ask16 = run_phase(pid, "ask", 16, args.asks, ask).await;

        println!();
        for p in [&rem1, &rem16, &ask1, &ask16] {
            p.print();
        }
        let health: serde_json::Value =
            client.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
        println!();
        println!(
            "node RSS {:.1} MiB (peak {:.1} MiB); atoms stored {} with {} group-commit flushes; index {} docs, {} terms, ~{:.1} MiB; data dir {:.1} MiB",
            rss_kb(pid, "VmRSS:") as f64 / 1024.0,
            rss_kb(pid, "VmHWM:") as f64 / 1024.0,
            health["checks"]["storage"]["atoms"],
            health["checks"]["storage"]["group_commit_flushes"],
            health["checks"]["index"]["docs"],
            health["checks"]["index"]["terms"],
            health["checks"]["index"]["approx_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            health["checks"]["disk"]["data_dir_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        );
        println!("load average at the end: {}", load_average());
        let goal = |ok: bool| if ok { "met" } else { "NOT met" };
        let p99 = |p: &Phase| {
            let mut l = p.lat_ms.clone();
            l.sort_by(f64::total_cmp);
            percentile(&l, 0.99)
        };
        println!(
            "goals at 16 clients: remember p99 < 5 ms: {}; ask p99 < 10 ms: {}",
            goal(p99(&rem16) < 5.0),
            goal(p99(&ask16) < 10.0)
        );
    });
    // Graceful stop: SIGTERM, then the guard kills if needed.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let started = Instant::now();
    let mut guard = guard;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = guard.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
