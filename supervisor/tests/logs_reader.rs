//! Reading logs: listing, tail across rotated files, following across rotation, re-creation,
//! truncation and restarts, and interleaving.

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dwbase_supervisor::logs::timestamp::format_prefix;
use dwbase_supervisor::logs::{
    log_files, merge_by_time, parse_line, pump, rotated_path, tail, Follower, MultiFollower,
    PipeConfig, Stats,
};

const T0: i64 = 1_795_593_600_000; // 2026-11-25T08:00:00.000Z

/// Writes `file` with lines `(ts, text)` in the log pipe's format.
fn write_log(file: &Path, lines: impl IntoIterator<Item = (i64, String)>) {
    let mut out = Vec::new();
    for (ts, text) in lines {
        out.extend_from_slice(&format_prefix(ts));
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    std::fs::write(file, out).unwrap();
}

fn numbered(range: std::ops::Range<i64>) -> impl Iterator<Item = (i64, String)> {
    range.map(|i| (T0 + i * 1000, format!("line {i}")))
}

fn texts(lines: &[(i64, String)]) -> Vec<String> {
    lines.iter().map(|(_, t)| t.clone()).collect()
}

/// Where the numbered texts jump: (after, next) pairs.
fn gaps(lines: &[(i64, String)]) -> Vec<(i64, i64)> {
    let nums: Vec<i64> = lines.iter().map(|(_, t)| t["line ".len()..].parse().unwrap()).collect();
    nums.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (w[0], w[1])).collect()
}

fn names(range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| format!("line {i}")).collect()
}

/// Three files: node.log.2 = lines 0..10, node.log.1 = 10..20, node.log = 20..25.
fn three_files(dir: &Path) -> PathBuf {
    let cur = dir.join("node.log");
    write_log(&rotated_path(&cur, 2), numbered(0..10));
    write_log(&rotated_path(&cur, 1), numbered(10..20));
    write_log(&cur, numbered(20..25));
    cur
}

fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the follower until it has handed out `n` lines in total.
fn follow_n(f: &mut Follower, n: usize, timeout: Duration) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    poll_until(&format!("{n} lines"), timeout, || {
        got.extend(f.poll().unwrap());
        assert!(got.len() <= n, "more lines than written: {:?}", &got[n..]);
        (got.len() == n).then_some(())
    });
    got
}

#[test]
fn parse_line_splits_the_prefix() {
    assert_eq!(parse_line("2026-11-25T08:00:00.123Z hello world"), Some((T0 + 123, "hello world")));
    assert_eq!(parse_line("2026-11-25T08:00:00.123Z "), Some((T0 + 123, "")));
    assert_eq!(parse_line("2026-11-25T08:00:00.123Z"), None);
    assert_eq!(parse_line("2026-11-25T08:00:00.123Zx"), None);
    assert_eq!(parse_line("hello"), None);
    assert_eq!(parse_line(""), None);
}

#[test]
fn log_files_lists_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    for name in
        ["node.log", "node.log.1", "node.log.2", "node.log.10", "node.log.01", "node.log.x", "x.1"]
    {
        File::create(dir.path().join(name)).unwrap();
    }
    let want: Vec<PathBuf> =
        ["node.log.10", "node.log.2", "node.log.1", "node.log"].map(|n| dir.path().join(n)).into();
    assert_eq!(log_files(&cur), want);
    std::fs::remove_file(&cur).unwrap();
    assert_eq!(log_files(&cur), want[..3]);
    assert!(log_files(&dir.path().join("missing/node.log")).is_empty());
}

#[test]
fn tail_reads_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let cur = three_files(dir.path());
    assert_eq!(texts(&tail(&cur, Some(5), None).unwrap()), names(20..25));
    assert_eq!(texts(&tail(&cur, Some(12), None).unwrap()), names(13..25));
    assert_eq!(texts(&tail(&cur, None, None).unwrap()), names(0..25));
    assert_eq!(texts(&tail(&cur, Some(1000), None).unwrap()), names(0..25));
    assert!(tail(&cur, Some(0), None).unwrap().is_empty());
    let all = tail(&cur, None, None).unwrap();
    assert_eq!(all[7].0, T0 + 7000);
    assert!(tail(&dir.path().join("nothing.log"), Some(5), None).unwrap().is_empty());
}

#[test]
fn tail_since_stops_at_older_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cur = three_files(dir.path());
    assert_eq!(texts(&tail(&cur, None, Some(T0 + 15_000)).unwrap()), names(15..25));
    assert_eq!(texts(&tail(&cur, Some(3), Some(T0 + 15_000)).unwrap()), names(22..25));
    assert_eq!(texts(&tail(&cur, None, Some(T0 + 14_500)).unwrap()), names(15..25));
    assert!(tail(&cur, None, Some(T0 + 100_000)).unwrap().is_empty());
}

#[test]
fn tail_of_a_big_file_is_quick_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    write_log(&cur, numbered(0..200_000));
    let started = Instant::now();
    let last = tail(&cur, Some(3), None).unwrap();
    assert_eq!(texts(&last), names(199_997..200_000));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[test]
fn lines_without_a_prefix_borrow_the_time_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    let mut content = b"stray first\n".to_vec();
    content.extend_from_slice(&format_prefix(T0));
    content.extend_from_slice(b"real\nstray second\n");
    std::fs::write(&cur, content).unwrap();
    let lines = tail(&cur, None, None).unwrap();
    assert_eq!(
        lines,
        [
            (T0, "stray first".to_string()),
            (T0, "real".to_string()),
            (T0, "stray second".to_string())
        ]
    );
}

#[test]
fn partial_last_line_in_tail_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    write_log(&cur, numbered(0..3));
    let mut f = OpenOptions::new().append(true).open(&cur).unwrap();
    f.write_all(&format_prefix(T0 + 3000)).unwrap();
    f.write_all(b"in progr").unwrap();

    // A plain tail shows the line being written …
    assert_eq!(texts(&tail(&cur, None, None).unwrap()).last().unwrap(), "in progr");
    // … tail+follow holds it back and hands it out once complete, exactly once.
    let (lines, mut follower) = Follower::open_with_tail(&cur, None, None).unwrap();
    assert_eq!(texts(&lines), names(0..3));
    assert!(follower.poll().unwrap().is_empty());
    f.write_all(b"ess\n").unwrap();
    assert_eq!(follower.poll().unwrap(), [(T0 + 3000, "in progress".to_string())]);
    assert!(follower.poll().unwrap().is_empty());
}

/// Runs the real pump on an OS pipe in a thread; the returned writer feeds it.
fn start_pump(cfg: PipeConfig) -> (File, JoinHandle<Stats>) {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let handle = std::thread::spawn(move || pump(File::from(r), &cfg).unwrap());
    (File::from(w), handle)
}

/// Writes numbered lines through a pump in bursts, so rotations come between and during the
/// follower's polls.
fn write_numbered(w: &mut File, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(37) {
        let burst: String = chunk.iter().map(|i| format!("line {i}\n")).collect();
        w.write_all(burst.as_bytes()).unwrap();
        std::thread::yield_now();
    }
}

#[test]
fn follower_survives_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("logs/node.log");
    // Opened before the file exists: it waits for it and reads it from the start.
    let mut follower = Follower::open(&cur).unwrap();
    // ~175 rotations, several between two polls; `keep` holds them all, so even a follower
    // starved by a loaded machine has nothing deleted under it.
    let cfg = PipeConfig { file: cur.clone(), max_bytes: 4096, keep: 1000 };
    let (mut w, pumper) = start_pump(cfg);
    let n = 20_000;
    let writer = std::thread::spawn(move || {
        write_numbered(&mut w, 0..n);
    });
    // Poll slowly enough that several rotations happen between two polls.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n && Instant::now() < deadline {
        got.extend(follower.poll().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got.len(), n, "got {} lines; gaps {:?}", got.len(), gaps(&got));
    writer.join().unwrap();
    let stats = pumper.join().unwrap();
    assert!(stats.rotations > 150, "{stats:?}");
    assert_eq!(texts(&got), (0..n).map(|i| format!("line {i}")).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "times go forward");
}

#[test]
fn tail_then_follow_loses_and_repeats_nothing_while_the_pipe_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    let cfg = PipeConfig { file: cur.clone(), max_bytes: 16 * 1024, keep: 300 };
    let (mut w, pumper) = start_pump(cfg);
    let n = 30_000;
    let writer = std::thread::spawn(move || {
        write_numbered(&mut w, 0..n);
    });
    // Start in the middle of the writing.
    poll_until("some rotations", Duration::from_secs(10), || {
        (log_files(&cur).len() > 5).then_some(())
    });
    let (mut lines, mut follower) = Follower::open_with_tail(&cur, None, None).unwrap();
    assert!(lines.len() < n, "started too late to test anything");
    poll_until("every line", Duration::from_secs(30), || {
        lines.extend(follower.poll().unwrap());
        (lines.len() >= n).then_some(())
    });
    writer.join().unwrap();
    pumper.join().unwrap();
    assert_eq!(texts(&lines), (0..n).map(|i| format!("line {i}")).collect::<Vec<_>>());
}

#[test]
fn follower_handles_recreation_truncation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    write_log(&cur, numbered(0..3));
    let mut follower = Follower::open(&cur).unwrap();
    assert!(follower.poll().unwrap().is_empty(), "starts at the end");

    // A node restart: a new log pipe appends to the same file.
    pump(Cursor::new(b"after restart\n".to_vec()), &PipeConfig::new(&cur)).unwrap();
    assert_eq!(texts(&follower.poll().unwrap()), ["after restart"]);

    // Removed (`deploy clean`): it waits; re-created: it reads the new file from the start.
    std::fs::remove_file(&cur).unwrap();
    assert!(follower.poll().unwrap().is_empty());
    write_log(&cur, numbered(100..102));
    assert_eq!(texts(&follow_n(&mut follower, 2, Duration::from_secs(5))), names(100..102));

    // Truncated in place, then written again: from the start.
    File::create(&cur).unwrap();
    assert!(follower.poll().unwrap().is_empty());
    pump(Cursor::new(b"x\n".to_vec()), &PipeConfig::new(&cur)).unwrap();
    assert_eq!(texts(&follower.poll().unwrap()), ["x"]);
}

#[test]
fn a_rotated_away_partial_line_is_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    std::fs::write(&cur, b"").unwrap();
    let mut follower = Follower::open(&cur).unwrap();
    let mut f = OpenOptions::new().append(true).open(&cur).unwrap();
    f.write_all(&format_prefix(T0)).unwrap();
    f.write_all(b"killed mid-li").unwrap();
    assert!(follower.poll().unwrap().is_empty());
    std::fs::rename(&cur, rotated_path(&cur, 1)).unwrap();
    write_log(&cur, numbered(1..2));
    assert_eq!(
        follower.poll().unwrap(),
        [(T0, "killed mid-li".to_string()), (T0 + 1000, "line 1".to_string())]
    );
}

#[tokio::test]
async fn next_batch_wakes_for_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("node.log");
    let mut follower = Follower::open(&cur).unwrap();
    follower.set_poll_interval(Duration::from_millis(10));
    let (mut w, pumper) = start_pump(PipeConfig { file: cur.clone(), max_bytes: 1024, keep: 100 });
    let writer = std::thread::spawn(move || {
        write_numbered(&mut w, 0..500);
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < 500 {
            let batch = follower.next_batch().await.unwrap();
            assert!(!batch.is_empty());
            got.extend(batch);
        }
    })
    .await
    .expect("every line within the deadline");
    writer.join().unwrap();
    pumper.join().unwrap();
    assert_eq!(texts(&got), (0..500).map(|i| format!("line {i}")).collect::<Vec<_>>());
    // Nothing more: next_batch keeps waiting (and is cancel-safe under a timeout).
    assert!(tokio::time::timeout(Duration::from_millis(50), follower.next_batch()).await.is_err());
}

#[test]
fn merge_by_time_interleaves_and_keeps_each_nodes_order() {
    let a = vec![(1, "a1".to_string()), (3, "a3".to_string()), (3, "a3b".to_string())];
    let b = vec![(2, "b2".to_string()), (3, "b3".to_string())];
    // A node whose clock stepped back keeps its own order.
    let c = vec![(5, "c5".to_string()), (0, "c0".to_string())];
    let merged = merge_by_time(vec![("a".into(), a), ("b".into(), b), ("c".into(), c)]);
    let got: Vec<(&str, i64, &str)> =
        merged.iter().map(|l| (l.node.as_str(), l.at_unix_ms, l.text.as_str())).collect();
    assert_eq!(
        got,
        [
            ("a", 1, "a1"),
            ("b", 2, "b2"),
            ("a", 3, "a3"),
            ("a", 3, "a3b"),
            ("b", 3, "b3"),
            ("c", 5, "c5"),
            ("c", 0, "c0"),
        ]
    );
    assert!(merge_by_time(vec![]).is_empty());
    assert!(merge_by_time(vec![("a".into(), vec![])]).is_empty());
}

#[test]
fn multi_follower_interleaves_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut multi = MultiFollower::new();
    multi.add("node-a", Follower::open(&a).unwrap());
    multi.add("node-b", Follower::open(&b).unwrap());
    assert_eq!(multi.nodes().collect::<Vec<_>>(), ["node-a", "node-b"]);
    write_log(&a, [(T0 + 1, "a1".into()), (T0 + 3, "a3".into())]);
    write_log(&b, [(T0 + 2, "b2".into())]);
    let got: Vec<(String, String)> =
        multi.poll().unwrap().into_iter().map(|l| (l.node, l.text)).collect();
    assert_eq!(
        got,
        [
            ("node-a".to_string(), "a1".to_string()),
            ("node-b".to_string(), "b2".to_string()),
            ("node-a".to_string(), "a3".to_string())
        ]
    );
    assert!(multi.remove("node-a"));
    assert!(!multi.remove("node-a"));
    assert!(!multi.is_empty());
}
