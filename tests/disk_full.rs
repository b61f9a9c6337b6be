//! A real small filesystem (a loop-mounted ext4) under the real `dwbase-node`: the write path
//! refuses with 507 at its reserve while reads go on; a filesystem filled to real ENOSPC by
//! someone else never hangs a request and writes come back without a restart once the filler
//! is deleted; ENOSPC inside the store itself (no reserve) never hangs a request, and writes
//! come back once space is back: in the same process when sled reopens, or — when sled 0.34
//! wedges — after the node exits by itself (status 3, reason on stderr) and is started again,
//! as its supervisor would; a node restarted on a full disk serves reads; a store that cannot
//! open says why on stderr. Every acknowledged atom is there at the end.
//!
//! Needs root (mkfs.ext4, losetup, mount); elsewhere each test prints `SKIP` and passes.
//! Figures (free bytes at the first 507, time to the first accepted write) are printed here
//! and measured properly by `scripts/bench-disk.sh`.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dwbase_proto::Group;
use serde_json::{json, Value};
use support::dwbase::{set_toml_key, template, Deployment};
use support::node::{start_node, try_http, write_config, NodeProcess, Started};
use support::{drain, free_port, pid_alive, poll_until, ChildGuard};

const READY: Duration = Duration::from_secs(30);

/// A loop-mounted ext4 filesystem of a given size; unmounted and its loop device detached
/// when dropped (also when the test fails).
struct LoopFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    dev: String,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    use std::process::Stdio;
    let what = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut guard = ChildGuard::new(child);
    let status = guard
        .wait_deadline(Duration::from_secs(60))
        .ok_or_else(|| format!("{what}: did not finish within 60 s"))?;
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if status.success() {
        Ok(out.trim().to_owned())
    } else {
        Err(format!("{what}: {status}: {}", err.trim()))
    }
}

impl LoopFs {
    /// A fresh `mib` MiB ext4, or why it cannot be made here.
    fn new(mib: u64) -> Result<LoopFs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| format!("creating {}: {e}", img.display()))?;
        let img_s = img.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", img_s])?;
        let dev = run("losetup", &["--find", "--show", img_s])?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        if let Err(e) = run("mount", &[&dev, mnt.to_str().unwrap()]) {
            let _ = run("losetup", &["-d", &dev]);
            return Err(e);
        }
        Ok(LoopFs { _dir: dir, mnt, dev })
    }

    /// `df`'s "Avail" of the filesystem, in bytes.
    fn avail(&self) -> u64 {
        dwbase_node::health::disk_usage(&self.mnt).unwrap().available_bytes
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_owned();
        if run("umount", &[&mnt]).is_err() {
            // Something still has a file open (a node being killed): detach lazily.
            let _ = run("umount", &["-l", &mnt]);
        }
        if let Err(e) = run("losetup", &["-d", &self.dev]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// The filesystem for a test, or `None` after printing why the test is skipped.
fn loop_fs(mib: u64) -> Option<LoopFs> {
    match LoopFs::new(mib) {
        Ok(fs) => Some(fs),
        Err(why) => {
            println!("SKIP: cannot loop-mount an ext4 here ({why}); this test needs root, mkfs.ext4 (e2fsprogs) and losetup (util-linux)");
            None
        }
    }
}

/// Writes zeros into `path` until the filesystem is full (ENOSPC, as root: the blocks
/// reserved for root too). Returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Small writes squeeze the last blocks.
    let byte = [0u8; 1];
    while f.write(&byte).is_ok_and(|n| n == 1) {
        written += 1;
    }
    let _ = f.sync_all();
    written
}

fn atom(world: &str, i: usize, size: usize) -> String {
    json!({
        "world": world, "worker": "filler", "kind": "observation", "timestamp": "",
        "importance": 0.5,
        "payload_json": json!({"i": i, "text": format!("atom {i} {}", "x".repeat(size))}).to_string(),
        "vector": null, "flags": [], "labels": [], "links": []
    })
    .to_string()
}

/// One request that must answer (its deadline is the client's 10 s read timeout).
fn must_answer(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_http(method, addr, path, body)
        .unwrap_or_else(|e| panic!("{method} {path} did not answer within its deadline: {e}"))
}

/// Reads, probes and metrics all answer, with the expected statuses.
fn reads_and_probes_answer(addr: &str, world: &str, some_id: &str) {
    let (s, body) = must_answer(addr, "GET", &format!("/atoms/{some_id}"), None);
    assert_eq!(s, 200, "GET /atoms: {body}");
    let (s, body) = must_answer(
        addr,
        "POST",
        "/ask",
        Some(&json!({"world": world, "text": "atom"}).to_string()),
    );
    assert_eq!(s, 200, "ask: {body}");
    let (s, body) = must_answer(addr, "GET", "/healthz", None);
    assert_eq!(s, 200, "healthz: {body}");
    let (s, _) = must_answer(addr, "GET", "/metrics", None);
    assert_eq!(s, 200);
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = must_answer(addr, "GET", "/metrics", None);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every id in `acked` is in the world's replay.
fn all_acknowledged_present(addr: &str, world: &str, acked: &BTreeSet<String>) {
    let (s, body) =
        must_answer(addr, "POST", "/replay", Some(&json!({"world": world}).to_string()));
    assert_eq!(s, 200, "replay: {body}");
    let atoms: Vec<Value> = serde_json::from_str(&body).unwrap();
    let stored: BTreeSet<String> =
        atoms.iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(missing.is_empty(), "{} acknowledged atoms missing: {missing:?}", missing.len());
}

/// Polls remember until it is accepted (10 s); on timeout fails with the last refusal and
/// the node's log.
fn write_comes_back(node: &mut NodeProcess, world: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = must_answer(&node.addr, "POST", "/remember", Some(&atom(world, 1, 100)));
        if s == 200 {
            return serde_json::from_str::<String>(&body).unwrap();
        }
        if Instant::now() >= until {
            let (_, health) = must_answer(&node.addr, "GET", "/health", None);
            support::kill_pid(node.pid(), nix::sys::signal::Signal::SIGKILL);
            let log = node.wait_exit(Duration::from_secs(10)).map(|(_, e)| e).unwrap_or_default();
            panic!("no write accepted within 10 s of freeing space: {s} {body}\n{health}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes until the first refusal; returns its status and body.
fn write_until_refused(
    addr: &str,
    world: &str,
    size: usize,
    acked: &mut BTreeSet<String>,
) -> (u16, String) {
    for i in 0.. {
        let (s, body) = must_answer(addr, "POST", "/remember", Some(&atom(world, i, size)));
        if s != 200 {
            return (s, body);
        }
        acked.insert(serde_json::from_str::<String>(&body).unwrap());
    }
    unreachable!()
}

#[test]
fn the_reserve_refuses_writes_before_the_disk_is_full_a_filler_never_hangs_the_node_and_a_restart_on_a_full_disk_serves_reads(
) {
    let Some(fs) = loop_fs(64) else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = fs.mnt.join("node");
    let extra = "[node.limits]\nmin_free_mb = 8\nballast_mb = 2\n";
    let config = write_config(dir.path(), "disk", "127.0.0.1:0", extra);
    // The data dir on the small filesystem (logs and summaries stay outside).
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "data_dir = \"disk/data\"",
        &format!("data_dir = {:?}", data.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    assert!(data.join(dwbase_node::disk::BALLAST_FILE).is_file(), "the ballast is in place");

    // Room to give back at the end (the API fills the rest up to the reserve).
    let spare = fs.mnt.join("spare");
    std::fs::write(&spare, vec![1u8; 16 << 20]).unwrap();

    // 1. Fill through the API: refused with 507 at the reserve, before the disk is full.
    let world = "fill";
    let mut acked = BTreeSet::new();
    let (status, body) = write_until_refused(&node.addr, world, 24 << 10, &mut acked);
    let free_at_refusal = fs.avail();
    println!("first refusal after {} atoms, {free_at_refusal} bytes free: {body}", acked.len());
    assert_eq!(status, 507, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "disk_full", "{body}");
    assert!(v["message"].as_str().unwrap().contains("node.limits.min_free_mb"), "{body}");
    assert!(free_at_refusal > 4 << 20, "refused before the filesystem was full: {free_at_refusal}");
    let some_id = acked.iter().next().unwrap().clone();
    reads_and_probes_answer(&node.addr, world, &some_id);
    let (s, body) = must_answer(&node.addr, "GET", "/readyz", None);
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("disk_reserve"), "{body}");
    all_acknowledged_present(&node.addr, world, &acked);

    // 2. Someone else fills the filesystem to the last block: every request still answers.
    let filler = fs.mnt.join("filler");
    let filled = fill(&filler);
    println!("filler wrote {filled} bytes; {} bytes available", fs.avail());
    for _ in 0..3 {
        let (s, body) = must_answer(&node.addr, "POST", "/remember", Some(&atom(world, 0, 100)));
        assert_eq!(s, 507, "{body}");
        reads_and_probes_answer(&node.addr, world, &some_id);
    }

    // 3. Restarted (crash) on the full disk: it opens and serves reads, readyz says why.
    drop(node);
    let node = NodeProcess::start(&config, &[]);
    let (s, body) = must_answer(&node.addr, "GET", "/readyz", None);
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("disk_reserve"), "{body}");
    poll_until("the index rebuilt", READY, || {
        let (_, body) = must_answer(&node.addr, "GET", "/health", None);
        (!body.contains("index_rebuilding")).then_some(())
    });
    reads_and_probes_answer(&node.addr, world, &some_id);
    all_acknowledged_present(&node.addr, world, &acked);
    let (s, body) = must_answer(&node.addr, "POST", "/remember", Some(&atom(world, 0, 100)));
    assert_eq!(s, 507, "{body}");

    // 4. A store that truly cannot open (a new one, no ballast, no space) says why on stderr.
    // (The restart may have released the ballast to open its store: take that room too.)
    let filler2 = fs.mnt.join("filler2");
    fill(&filler2);
    let fresh = write_config(dir.path(), "fresh", "127.0.0.1:0", "");
    let text = std::fs::read_to_string(&fresh).unwrap().replace(
        "data_dir = \"fresh/data\"",
        &format!("data_dir = {:?}", fs.mnt.join("fresh").display().to_string()),
    );
    std::fs::write(&fresh, text).unwrap();
    match start_node(&fresh, &[], READY) {
        Started::Exited(status, stderr) => {
            assert!(!status.success(), "{stderr}");
            assert!(stderr.to_lowercase().contains("no space left"), "{stderr}");
            println!("a store that cannot open: {}", stderr.lines().last().unwrap_or(""));
        }
        Started::Listening(_) => panic!("a node without space for a new store started"),
    }

    // 5. The filler is deleted: writes come back by themselves, same process.
    let pid = node.pid();
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    std::fs::remove_file(&spare).unwrap();
    let freed = Instant::now();
    let mut node = node;
    let id = write_comes_back(&mut node, world);
    println!("first write accepted {:?} after the space was freed", freed.elapsed());
    acked.insert(id);
    assert_eq!(node.pid(), pid);
    node.wait_ready(READY);
    all_acknowledged_present(&node.addr, world, &acked);
    assert_eq!(metric(&node.addr, "dwbase_storage_no_space_errors_total"), 0.0);
}

/// The whole deployment (root, node logs, supervisor log, state files) on a small filesystem
/// that fills up: a node restarted there cannot open a new store, and its own log cannot take
/// the reason; the supervisor still knows why (the node's last words on the notify socket) and
/// `deploy status` shows it while the node crash-loops. Once space is back the node comes up
/// by itself.
#[test]
fn a_node_that_cannot_open_its_store_on_a_full_disk_tells_the_supervisor_why() {
    let Some(fs) = loop_fs(64) else { return };
    let d = Deployment::new_in(&fs.mnt);
    let port = free_port();
    let text = set_toml_key(&template("local.toml"), "listen", &format!("\"127.0.0.1:{port}\""));
    // No ballast: a new store finds nothing to release.
    let text = text.replace("max_disk_mb = 0 ", "max_disk_mb = 0\nballast_mb = 0 ");
    let cfg = d.dir.path().join("node.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = d.run(&["deploy", "local", "--config", cfg.to_str().unwrap()]).ok();
    let pid = d.node_pids().first().map(|(_, p, _)| *p).unwrap_or_else(|| panic!("no pid\n{out}"));

    // Its store is lost, the disk fills, the node crashes: the restarted one has no room.
    let data = d.paths().node_dir(Group::Local, "local").join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let filler = fs.mnt.join("filler");
    fill(&filler);
    support::kill_group(pid, support::Signal::SIGKILL);
    let status = || -> Value {
        let out = d.run(&["deploy", "status", "--json", "--no-start"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
    };
    let reason = poll_until("status to say why the node exited", Duration::from_secs(30), || {
        let v = status();
        let n = &v["nodes"][0];
        (n["pid"].as_u64() != Some(u64::from(pid)))
            .then(|| n["last_exit"]["reason"].as_str().map(str::to_owned))
            .flatten()
    });
    println!("last exit reason: {reason}");
    assert!(reason.contains("opening sled store"), "{reason}");
    assert!(reason.to_lowercase().contains("no space left"), "{reason}");
    let human = d.run(&["deploy", "status", "--no-start"]);
    assert!(human.stdout.contains(&reason), "the table's notes show it:\n{human}");
    let v = status();
    assert_eq!(v["nodes"][0]["last_exit"]["code"], 1, "{v}");
    assert!(!d.node_log(Group::Local, "local").contains(&reason), "the node's own log had room");

    // Space is back: the next restart opens a new store, without anyone's help.
    std::fs::remove_file(&filler).unwrap();
    let new_pid = poll_until("the node ready again", Duration::from_secs(60), || {
        let v = status();
        let n = &v["nodes"][0];
        (n["state"] == "ready").then(|| n["pid"].as_u64()).flatten()
    });
    assert!(pid_alive(new_pid as u32));
    d.run(&["deploy", "stop"]).ok();
}

/// A request that answers within its deadline (`Some`), or finds the node gone (`None`:
/// refused or reset; the caller checks that it exited by itself for a stuck store). A
/// request that times out is a hang: the test fails.
fn answers_or_gone(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match try_http(method, addr, path, body) {
        Ok(answer) => Some(answer),
        Err(e) if matches!(e.kind(), TimedOut | WouldBlock) => {
            panic!("{method} {path} did not answer within its deadline: {e}")
        }
        Err(_) => None,
    }
}

/// Seconds a stuck store may make no progress before the node exits in this test.
const STALL_EXIT_SECS: u64 = 20;

#[test]
fn enospc_inside_the_store_is_a_507_never_a_hang_and_writes_come_back_once_space_is_back() {
    let Some(fs) = loop_fs(64) else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = fs.mnt.join("node");
    // No reserve: only sled itself meets the full disk. The ballast lets it reopen.
    let config = write_config(
        dir.path(),
        "enospc",
        "127.0.0.1:0",
        &format!(
            "[node.limits]\nmin_free_mb = 0\nballast_mb = 4\nstall_exit_secs = {STALL_EXIT_SECS}\n"
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "data_dir = \"enospc/data\"",
        &format!("data_dir = {:?}", data.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let mut node = NodeProcess::start(&config, &[]);
    node.wait_ready(READY);
    let world = "enospc";
    let mut acked = BTreeSet::new();
    let (s, body) = must_answer(&node.addr, "POST", "/remember", Some(&atom(world, 0, 100)));
    assert_eq!(s, 200, "{body}");
    acked.insert(serde_json::from_str::<String>(&body).unwrap());
    let some_id = acked.iter().next().unwrap().clone();

    // Most of the filesystem taken by someone else, then 4 writers fill the rest.
    let filler = fs.mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let keep = 10u64 << 20;
        while fs.avail() > keep {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let addr = node.addr.clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut mine = BTreeSet::new();
                let mut refusals = Vec::new();
                for i in 0..10_000 {
                    let body = atom(world, w * 100_000 + i, 16 << 10);
                    let Some((s, body)) = answers_or_gone(&addr, "POST", "/remember", Some(&body))
                    else {
                        break;
                    };
                    match s {
                        200 => {
                            mine.insert(serde_json::from_str::<String>(&body).unwrap());
                        }
                        507 | 503 => {
                            refusals.push((s, body));
                            if refusals.len() >= 20 {
                                break;
                            }
                        }
                        other => panic!("writer {w}: unexpected {other}: {body}"),
                    }
                }
                (mine, refusals)
            })
        })
        .collect();
    // While they fill it, reads and probes keep answering: 200, or 503 while the store is
    // reopened or stuck; never a hang.
    let probe = |addr: &str| -> bool {
        let reads = [
            ("GET", format!("/atoms/{some_id}"), None),
            ("POST", "/ask".to_owned(), Some(json!({"world": world, "text": "atom"}).to_string())),
        ];
        for (method, path, body) in reads {
            let Some((s, body)) = answers_or_gone(addr, method, &path, body.as_deref()) else {
                return false;
            };
            let fine = s == 200
                || (s == 503 && (body.contains("reopen") || body.contains("storage_stalled")));
            assert!(fine, "{method} {path}: {s} {body}");
        }
        for path in ["/healthz", "/readyz", "/metrics"] {
            let Some((s, body)) = answers_or_gone(addr, "GET", path, None) else { return false };
            assert!(s == 200 || s == 503, "{path}: {s} {body}");
        }
        true
    };
    let mut checks = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        if !probe(&addr) {
            break;
        }
        checks += 1;
    }
    let mut refusals = Vec::new();
    for w in writers {
        let (mine, r) = w.join().unwrap();
        acked.extend(mine);
        refusals.extend(r);
    }
    println!(
        "{} atoms acknowledged, {} refusals, {checks} read rounds meanwhile; first refusal: {:?}",
        acked.len(),
        refusals.len(),
        refusals.first()
    );

    // The filler is deleted. Either the store reopens by itself and writes succeed in the
    // same process, or sled wedged (a flush, then reads, never return: sled 0.34 after
    // ENOSPC): then /healthz fails and the node exits by itself (status 3, the reason on
    // stderr) after stall_exit_secs, as its supervisor's restart is the only cure.
    let pid = node.pid();
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut stuck_seen = false;
    let until = Instant::now() + Duration::from_secs(STALL_EXIT_SECS + 40);
    let same_process = loop {
        assert!(
            Instant::now() < until,
            "neither a write accepted nor an exit within {:?}",
            until - freed
        );
        let answer = answers_or_gone(&node.addr, "POST", "/remember", Some(&atom(world, 7, 100)));
        if let Some((200, body)) = &answer {
            acked.insert(serde_json::from_str::<String>(body).unwrap());
            break true;
        }
        if let Some((h, health)) = answers_or_gone(&node.addr, "GET", "/healthz", None) {
            if h == 503 {
                assert!(health.contains("commit_stalled"), "{health}");
                stuck_seen = true;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        break false;
    };
    let node = if same_process {
        println!(
            "first write accepted {:?} after the space was freed, same process",
            freed.elapsed()
        );
        assert_eq!(node.pid(), pid);
        assert!(
            metric(&node.addr, "dwbase_storage_no_space_errors_total") >= 1.0,
            "the store met ENOSPC (no reserve)"
        );
        assert!(metric(&node.addr, "dwbase_storage_recoveries_total") >= 1.0);
        assert!(refusals.iter().any(|(s, _)| *s == 507), "ENOSPC is a 507: {refusals:?}");
        node
    } else {
        let (status, stderr) = node
            .wait_exit(Duration::from_secs(10))
            .expect("the node stopped answering: it must have exited");
        assert_eq!(status.code(), Some(3), "a stuck store exits with status 3: {status}\n{stderr}");
        let reason = stderr
            .lines()
            .rfind(|l| l.starts_with("dwbase-node: exiting"))
            .unwrap_or_else(|| panic!("no reason on stderr:\n{stderr}"));
        assert!(reason.contains("stall_exit_secs"), "{reason}");
        println!("sled wedged after ENOSPC (healthz 503 seen: {stuck_seen}); the node exited {:?} after the space was freed: {reason}", freed.elapsed());
        // What a supervisor does: start it again. It opens the store and takes writes.
        let mut node = NodeProcess::start(&config, &[]);
        acked.insert(write_comes_back(&mut node, world));
        node
    };
    let addr = node.addr.clone();
    node.wait_ready(READY);
    all_acknowledged_present(&addr, world, &acked);
}
