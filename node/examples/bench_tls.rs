//! What TLS costs: remember and ask throughput and latency of a real node over plain HTTP and
//! over HTTPS, side by side.
//!
//! ```text
//! cargo run --release -p dwbase-node --example bench_tls -- [--atoms 20000] [--asks 5000] [--clients 16]
//! ```
//!
//! Runs this same executable as a node (`--serve-node`, a child process) twice on
//! `127.0.0.1:0` over fresh temp data dirs: once plain, once with `[node.tls]` (a certificate
//! made here with rcgen). Against each: `--atoms` remembers and `--asks` asks by `--clients`
//! keep-alive clients, then `--asks` asks on a fresh connection each (a full TLS handshake per
//! request). Prints req/s, p50 and p99 for each, and the TLS/plain ratio. Every request goes to
//! loopback; the run is bounded by the counts given and stops by itself.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    atoms: usize,
    asks: usize,
    clients: usize,
}

fn parse_args() -> Args {
    let mut args = Args { atoms: 20_000, asks: 5_000, clients: 16 };
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
            "--clients" => args.clients = num("--clients").max(1),
            other => panic!("unknown argument {other}; use --atoms N --asks N --clients N"),
        }
    }
    args
}

/// The node process; SIGTERM then kill on drop (by its pid, via the Child handle).
struct NodeChild {
    child: Child,
    base: String,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(dir: &Path, tls: Option<(&Path, &Path)>) -> NodeChild {
    let config = dir.join("bench.toml");
    let mut text = "[node]\nid = \"bench\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
                    [node.security]\nremember_per_sec = 0\nask_per_min = 0\n"
        .to_owned();
    if let Some((cert, key)) = tls {
        text.push_str(&format!("[node.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"));
    }
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve-node")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("node printed its address").expect("stdout");
        if let Some(url) = line
            .strip_prefix("dwbase-node listening ")
            .and_then(|r| r.split_whitespace().find_map(|kv| kv.strip_prefix("url=")))
        {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    NodeChild { child, base }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50: f64,
    p99: f64,
}

async fn phase<F, Fut>(clients: usize, n: usize, make: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break lat;
                }
                let t = Instant::now();
                make(i).await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.extend(t.await.expect("client task"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Figures { rps: n as f64 / secs, p50: percentile(&lat, 0.5), p99: percentile(&lat, 0.99) }
}

fn client(ca_pem: Option<&[u8]>, keep_alive: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30));
    b = if keep_alive { b.pool_max_idle_per_host(256) } else { b.pool_max_idle_per_host(0) };
    if let Some(pem) = ca_pem {
        b = b.use_rustls_tls().tls_built_in_root_certs(false);
        for c in reqwest::Certificate::from_pem_bundle(pem).unwrap() {
            b = b.add_root_certificate(c);
        }
    }
    b.build().unwrap()
}

/// remember (keep-alive), ask (keep-alive), ask (a new connection per request).
async fn measure(base: &str, ca_pem: Option<&[u8]>, args: &Args) -> [Figures; 3] {
    let kept = client(ca_pem, true);
    let fresh = client(ca_pem, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while kept.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "node not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let words: Arc<Vec<String>> =
        Arc::new((0..2_000).map(|i| format!("w{:x}", i * 7919)).collect());
    let remember = {
        let (c, url, words) = (kept.clone(), format!("{base}/remember"), words.clone());
        move |i: usize| {
            let text: Vec<&str> =
                (0..12).map(|k| words[(i * 31 + k * 17) % words.len()].as_str()).collect();
            let body = json!({
                "world": "bench", "worker": format!("w{}", i % 16), "kind": "observation",
                "importance": 0.5, "payload_json": json!({"text": text.join(" ")}).to_string(),
                "labels": ["bench"],
            });
            let (c, url) = (c.clone(), url.clone());
            async move {
                let r = c.post(url).json(&body).send().await.expect("remember");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        }
    };
    let ask = |c: reqwest::Client| {
        let (url, words) = (format!("{base}/ask"), words.clone());
        move |i: usize| {
            let body = json!({"world": "bench", "text": format!("{} {}", words[i % words.len()], words[(i * 13) % words.len()])});
            let (c, url) = (c.clone(), url.clone());
            async move {
                let r = c.post(url).json(&body).send().await.expect("ask");
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        }
    };
    let rem = phase(args.clients, args.atoms, remember).await;
    let ask_kept = phase(args.clients, args.asks, ask(kept.clone())).await;
    let ask_fresh = phase(args.clients, args.asks, ask(fresh)).await;
    [rem, ask_kept, ask_fresh]
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve-node") {
        use clap::Parser;
        let args = dwbase_node::cli::NodeArgs::parse_from(
            std::iter::once("dwbase-node".to_owned()).chain(std::env::args().skip(2)),
        );
        let ok = dwbase_node::cli::run(args) == std::process::ExitCode::SUCCESS;
        std::process::exit(if ok { 0 } else { 1 });
    }
    let args = parse_args();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (tls_dir.path().join("node.crt"), tls_dir.path().join("node.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let ca_pem = cert.cert.pem().into_bytes();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "dwbase-node TLS bench: {} remembers, {} asks, {} clients; {} CPUs; load {}",
        args.atoms,
        args.asks,
        args.clients,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load().split_whitespace().next().unwrap_or("?")
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut results = Vec::new();
    for tls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let node = start_node(dir.path(), tls.then_some((cert_file.as_path(), key_file.as_path())));
        let figures = rt.block_on(measure(&node.base, tls.then_some(ca_pem.as_slice()), &args));
        drop(node);
        results.push(figures);
    }
    println!();
    println!("| phase | plain req/s | TLS req/s | TLS/plain | plain p50 ms | TLS p50 ms | plain p99 ms | TLS p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let names = ["remember (keep-alive)", "ask (keep-alive)", "ask (new connection each)"];
    for (i, name) in names.iter().enumerate() {
        let (p, t) = (results[0][i], results[1][i]);
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.rps,
            t.rps,
            t.rps / p.rps,
            p.p50,
            t.p50,
            p.p99,
            t.p99
        );
    }
    println!("load at the end: {}", load().split_whitespace().next().unwrap_or("?"));
}
