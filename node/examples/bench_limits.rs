//! Resource-exhaustion benchmark of a real node process: a filesystem filled at full speed,
//! and a crowd of idle connections.
//!
//! ```text
//! scripts/bench-disk.sh            # mounts a 256 MiB ext4 (root), builds, runs this
//! cargo run --release -p dwbase-node --example bench_limits -- --mount DIR [--writers 16]
//!     [--idle 20000] [--rounds 300]
//! ```
//!
//! Starts this same executable as a node (`--serve-node`) with its data dir on `--mount` (a
//! small filesystem of its own) and default `[node.limits]`, then prints:
//! - **disk**: `--writers` clients remembering 4 KiB atoms as fast as they can until each is
//!   refused: the bytes free when the first 507 came, the reserve the node applied, any ENOSPC
//!   the store saw (goal: none); then a spare file placed beforehand is deleted and the time
//!   to the first accepted write is measured (a client retrying every millisecond);
//! - **idle**: `--idle` idle TCP connections opened (by child processes, 5 000 each) and held,
//!   and a well-behaved client's latency (p50, p99, max) for remember, ask and healthz, each on
//!   a new connection: before the crowd (`--rounds`/3 rounds), all the while it is being opened
//!   (at least `--rounds` rounds), and with it held (`--rounds` rounds).
//!
//! Every figure is measured, nothing is asserted; the node is killed by its pid at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    mount: PathBuf,
    writers: usize,
    idle: usize,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut args = Args { mount: PathBuf::new(), writers: 16, idle: 20_000, rounds: 300 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--mount" => args.mount = PathBuf::from(value("--mount")),
            "--writers" => args.writers = value("--writers").parse().expect("--writers N"),
            "--idle" => args.idle = value("--idle").parse().expect("--idle N"),
            "--rounds" => args.rounds = value("--rounds").parse().expect("--rounds N"),
            other => panic!(
                "unknown argument {other}; use --mount DIR [--writers N] [--idle N] [--rounds N]"
            ),
        }
    }
    assert!(
        !args.mount.as_os_str().is_empty(),
        "--mount DIR (a small filesystem of its own) is required"
    );
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

fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn atom(i: u64, size: usize) -> String {
    json!({
        "world": "bench", "worker": "w", "kind": "observation", "timestamp": "",
        "importance": 0.5, "payload_json": json!({"i": i, "t": "y".repeat(size)}).to_string(),
        "vector": null, "flags": [], "labels": [], "links": []
    })
    .to_string()
}

fn avail(dir: &Path) -> u64 {
    dwbase_node::health::disk_usage(dir).map_or(0, |u| u.available_bytes)
}

fn metric(addr: &str, name: &str) -> f64 {
    let Ok((_, text)) = request(addr, "GET", "/metrics", None) else { return f64::NAN };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn start_node(dir: &Path, data: &Path, extra: &str) -> (Guard, String) {
    let config = dir.join("bench-limits.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"bench-limits\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [node.security]\nremember_per_sec = 0\nask_per_min = 0\n{extra}",
            data.display().to_string()
        ),
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
    let guard = Guard(child);
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("dwbase-node listening ")?
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("addr="))
                .map(str::to_owned)
        })
        .expect("the node prints its listening line");
    let until = Instant::now() + Duration::from_secs(60);
    while !matches!(request(&addr, "GET", "/healthz", None), Ok((200, _))) {
        assert!(Instant::now() < until, "node not alive within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard, addr)
}

fn disk(args: &Args, dir: &Path) {
    let data = args.mount.join("node");
    let spare = args.mount.join("spare");
    let total = dwbase_node::health::disk_usage(&args.mount).map_or(0, |u| u.total_bytes);
    {
        // Room to give back later: 32 MiB the writers cannot use.
        let mut f = std::fs::File::create(&spare).unwrap();
        f.write_all(&vec![1u8; 32 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let (_node, addr) = start_node(dir, &data, "");
    println!(
        "## disk: {} filesystem, {} writers of 4 KiB atoms, default [node.limits]",
        mib(total),
        args.writers
    );
    let first_refusal: Arc<Mutex<Option<(u64, u16, String)>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (addr, first, accepted, mount) =
                (addr.clone(), first_refusal.clone(), accepted.clone(), args.mount.clone());
            std::thread::spawn(move || {
                let mut other = 0u64;
                for i in 0.. {
                    match request(
                        &addr,
                        "POST",
                        "/remember",
                        Some(&atom(w as u64 * 1_000_000 + i, 4096)),
                    ) {
                        Ok((200, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, body)) => {
                            let free = avail(&mount);
                            let mut f = first.lock().unwrap();
                            if f.is_none() {
                                *f = Some((free, s, body));
                            }
                            break;
                        }
                        Err(_) => {
                            other += 1;
                            if other > 100 {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let fill_time = started.elapsed();
    let (free, status, body) =
        first_refusal.lock().unwrap().clone().unwrap_or((0, 0, String::new()));
    let reserve = metric(&addr, "dwbase_disk_reserve_bytes");
    let enospc = metric(&addr, "dwbase_storage_no_space_errors_total");
    println!(
        "accepted {} atoms in {fill_time:?}; first refusal {status}: {}",
        accepted.load(Ordering::Relaxed),
        body.chars().take(160).collect::<String>()
    );
    println!(
        "bytes free at the first 507: {free} ({}); reserve applied {}",
        mib(free),
        mib(reserve as u64)
    );
    println!("ENOSPC seen by the store: {enospc} (goal: 0)");

    std::fs::remove_file(&spare).unwrap();
    let freed = Instant::now();
    let mut tries = 0u64;
    loop {
        tries += 1;
        if let Ok((200, _)) = request(&addr, "POST", "/remember", Some(&atom(9_999_999, 100))) {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(60),
            "no write accepted within 60 s of freeing space"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "time from freeing 32 MiB to the first accepted write: {:?} ({tries} tries)",
        freed.elapsed()
    );
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    format!(
        "p50 {:?}, p99 {:?}, max {:?} ({} requests)",
        at(0.5),
        at(0.99),
        v[v.len() - 1],
        v.len()
    )
}

fn good_client(addr: &str, rounds: usize) -> (Vec<Duration>, usize) {
    let ask = json!({"world": "bench", "text": "hello"}).to_string();
    let mut lat = Vec::new();
    let mut failed = 0;
    for i in 0..rounds {
        for (m, p, b) in [
            ("POST", "/remember", Some(atom(i as u64, 100))),
            ("POST", "/ask", Some(ask.clone())),
            ("GET", "/healthz", None),
        ] {
            let t = Instant::now();
            match request(addr, m, p, b.as_deref()) {
                Ok((200, _)) => lat.push(t.elapsed()),
                _ => failed += 1,
            }
        }
    }
    (lat, failed)
}

fn idle(args: &Args, dir: &Path) {
    let data = dir.join("idle-data");
    let (_node, addr) = start_node(dir, &data, "");
    println!("## idle connections: {} held open, default [node.limits]", args.idle);
    let (lat, failed) = good_client(&addr, args.rounds / 3);
    println!("good client, no crowd: {} ({failed} failed)", percentiles(lat));
    // The crowd is opened by child processes of this executable (5 000 sockets each, so no
    // process needs more open files than a default hard limit allows) while the good client
    // runs: the node evicts idle connections for new ones all along (4096 open at most by
    // default).
    let crowd = {
        let (addr, n) = (addr.clone(), args.idle);
        std::thread::spawn(move || {
            let opened = Instant::now();
            let holders: Vec<Child> = (0..n.div_ceil(PER_HOLDER))
                .map(|i| {
                    let count = PER_HOLDER.min(n - i * PER_HOLDER);
                    Command::new(std::env::current_exe().unwrap())
                        .args(["--hold-idle", &addr, &count.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("spawn a holder of idle connections")
                })
                .collect();
            let mut held = 0;
            let mut guards = Vec::new();
            for mut child in holders {
                let line = BufReader::new(child.stdout.take().unwrap())
                    .lines()
                    .map_while(Result::ok)
                    .next()
                    .unwrap_or_default();
                held +=
                    line.strip_prefix("held ").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
                guards.push(Guard(child));
            }
            (guards, held, opened.elapsed())
        })
    };
    let mut during = Vec::new();
    let mut failed = 0;
    while !crowd.is_finished() || during.len() < 3 * args.rounds {
        let (lat, f) = good_client(&addr, 1);
        during.extend(lat);
        failed += f;
    }
    let (holders, held, took) = crowd.join().expect("the crowd thread");
    println!("{held} idle connections opened in {took:?}");
    println!("good client while the crowd was opened: {} ({failed} failed)", percentiles(during));
    let (lat, failed) = good_client(&addr, args.rounds);
    println!("good client with the crowd held: {} ({failed} failed)", percentiles(lat));
    println!(
        "node: {} connections open, {} idle evicted, {} refused, {} header timeouts",
        metric(&addr, "dwbase_http_connections"),
        metric(&addr, "dwbase_http_connections_evicted_total"),
        metric(&addr, "dwbase_http_connections_refused_total"),
        metric(&addr, "dwbase_http_header_timeouts_total"),
    );
    drop(holders);
}

/// Idle connections per holder process.
const PER_HOLDER: usize = 5_000;

/// `--hold-idle ADDR COUNT`: opens COUNT idle connections to ADDR, prints `held N`, and keeps
/// them until its stdin closes (the bench's guard kills it at the end in any case).
fn hold_idle(addr: &str, count: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let _ = setrlimit(Resource::Nofile, Rlimit { current: hard, maximum: hard });
    let held: Vec<TcpStream> = (0..count).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    println!("held {}", held.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve-node") {
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
    if std::env::args().nth(1).as_deref() == Some("--hold-idle") {
        let a: Vec<String> = std::env::args().skip(2).collect();
        hold_idle(&a[0], a[1].parse().expect("--hold-idle ADDR COUNT"));
        return;
    }
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    disk(&args, dir.path());
    idle(&args, dir.path());
}
