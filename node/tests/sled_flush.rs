//! The one change of our sled copy (node/vendor/README.md): a flush writes the log buffer it
//! seals on its own thread, so sled's I/O thread pool is not woken for it.
//!
//! Upstream hands every such write to the pool, whose queue wakes all of its idle threads
//! (`notify_all`): seven context switches or more per flush. The pool's threads are the
//! process's `sled-io-*` threads; their context switches are read from /proc. The pool is one
//! per process, so this test has a binary of its own.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const TEST: &str =
    "a_flush_writes_its_buffer_itself_without_waking_the_thread_pool_and_flushed_writes_survive_a_kill";

/// Context switches (voluntary and not) of this process's sled I/O pool threads.
fn pool_switches() -> (usize, u64) {
    let mut threads = 0;
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if !comm.starts_with("sled-io") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue };
        threads += 1;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    (threads, switches)
}

/// The child's part: insert and flush, printing `acked N` after each flush, until killed.
fn child(path: &str) -> ! {
    let db = sled::Config::new().path(path).open().unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        db.insert(i.to_be_bytes(), vec![b'x'; 200]).unwrap();
        db.flush().unwrap();
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_flush_writes_its_buffer_itself_without_waking_the_thread_pool_and_flushed_writes_survive_a_kill(
) {
    if let Ok(path) = std::env::var("SLED_FLUSH_CHILD") {
        child(&path);
    }
    const WRITES: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = sled::Config::new().path(&path).open().unwrap();
        db.insert(b"warm", b"up").unwrap();
        db.flush().unwrap();
        // The pool starts its threads on its first job (it may have none yet: then every
        // switch of a thread it starts meanwhile counts).
        let (_, before) = pool_switches();
        for i in 0..WRITES {
            db.insert(i.to_be_bytes(), vec![b'x'; 200]).unwrap();
            assert!(db.flush().unwrap() > 0, "flush {i} wrote nothing");
        }
        let (threads, after) = pool_switches();
        // Upstream: at least one switch per pool thread per flush (~7 × WRITES). Here no flush
        // wakes the pool (its threads, once started, wake on their own one-second timeouts).
        let woken = after - before;
        eprintln!(
            "sled's pool: {woken} context switches over {WRITES} flushes ({threads} threads)"
        );
        assert!(
            woken < WRITES / 4,
            "sled's pool was woken {woken} times for {WRITES} flushes ({threads} threads): \
             flushes are handed to the pool again"
        );
    }

    // Durable: a process that flushed each write before saying so is killed (SIGKILL, no
    // drop, no final flush); every write it acknowledged is in the store it leaves.
    let killed = dir.path().join("killed");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("SLED_FLUSH_CHILD", &killed)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = Some(n.parse::<u64>().unwrap());
            if acked >= Some(WRITES) {
                break;
            }
        }
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    let acked = acked.expect("the child acknowledged nothing");
    assert!(acked >= WRITES, "the child stopped by itself after acknowledging write {acked}");
    let db = sled::Config::new().path(&killed).open().unwrap();
    for i in 0..=acked {
        assert_eq!(
            db.get(i.to_be_bytes()).unwrap().as_deref(),
            Some(&[b'x'; 200][..]),
            "write {i} (of {acked} acknowledged) lost after SIGKILL"
        );
    }
}
