//! The log pipe: timestamps, pass-through, rotation, idle flush, and — as a real process —
//! draining after SIGTERM.

use std::fs::File;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use dwbase_supervisor::logs::{
    log_files, logpipe_main, parse_line, parse_line_bytes, pump, LogpipeArgs, PipeConfig, MAX_LINE,
};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn config(file: &Path, max_bytes: u64, keep: u32) -> PipeConfig {
    PipeConfig { file: file.to_path_buf(), max_bytes, keep }
}

/// Every line of every file of the log, oldest first, as raw bytes without newline.
fn all_lines(current: &Path) -> Vec<Vec<u8>> {
    log_files(current)
        .iter()
        .flat_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "{p:?} ends mid-line");
            bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

fn texts(current: &Path) -> Vec<String> {
    all_lines(current)
        .iter()
        .map(|l| {
            let (_, text) = parse_line_bytes(l).expect("every line has a timestamp");
            String::from_utf8(text.to_vec()).unwrap()
        })
        .collect()
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

#[test]
fn every_line_gets_a_current_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logs/node.log");
    let before = now_ms();
    let stats =
        pump(Cursor::new(b"first\n\nthird line\n".to_vec()), &config(&file, 1 << 20, 3)).unwrap();
    let after = now_ms();
    let content = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 3, "{content:?}");
    for (line, want) in lines.iter().zip(["first", "", "third line"]) {
        let (ts, text) = parse_line(line).unwrap();
        assert_eq!(text, want);
        assert!((before..=after).contains(&ts), "{ts} not in {before}..={after}");
        // `2026-11-25T08:00:00.123Z ` shape: RFC 3339 UTC with milliseconds.
        assert_eq!(line.as_bytes()[23], b'Z');
        assert_eq!(line.as_bytes()[19], b'.');
    }
    assert_eq!(stats.lines, 3);
    assert_eq!(stats.bytes_in, 18);
}

#[test]
fn last_line_without_newline_is_kept_and_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    pump(Cursor::new(b"a\nno newline at the end".to_vec()), &config(&file, 1 << 20, 3)).unwrap();
    assert_eq!(texts(&file), ["a", "no newline at the end"]);
    assert!(std::fs::read(&file).unwrap().ends_with(b"end\n"));
}

#[test]
fn non_utf8_bytes_pass_through_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let raw: &[u8] = b"caf\xc3\xa9 \xff\xfe\x00 bytes\r\n";
    pump(Cursor::new(raw.to_vec()), &config(&file, 1 << 20, 3)).unwrap();
    let lines = all_lines(&file);
    assert_eq!(lines.len(), 1);
    let (_, text) = parse_line_bytes(&lines[0]).unwrap();
    assert_eq!(text, &raw[..raw.len() - 1]);
}

#[test]
fn rotation_keeps_a_bounded_number_of_bounded_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let input: String = (0..2000).map(|i| format!("line {i:05}\n")).collect();
    let stats = pump(Cursor::new(input.into_bytes()), &config(&file, 400, 3)).unwrap();
    assert!(stats.rotations > 3, "{stats:?}");

    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    assert_eq!(names_sorted, ["node.log", "node.log.1", "node.log.2", "node.log.3"]);
    for p in log_files(&file) {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 400, "{p:?} has {len} bytes");
    }
    // What is kept is the newest, contiguous, in order, ending with the last line.
    let kept = texts(&file);
    let first: usize = kept[0]["line ".len()..].parse().unwrap();
    let want: Vec<String> = (first..2000).map(|i| format!("line {i:05}")).collect();
    assert_eq!(kept, want);
}

#[test]
fn keep_zero_starts_the_file_over() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let input: String = (0..100).map(|i| format!("line {i:05}\n")).collect();
    pump(Cursor::new(input.into_bytes()), &config(&file, 200, 0)).unwrap();
    assert_eq!(log_files(&file), std::slice::from_ref(&file));
    assert_eq!(texts(&file).last().unwrap(), "line 00099");
}

#[test]
fn an_existing_full_file_is_rotated_before_the_next_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    pump(Cursor::new(b"from the first run\n".to_vec()), &config(&file, 1 << 20, 3)).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    // A restarted node: a new log pipe with a limit the file already reaches.
    pump(Cursor::new(b"after restart\n".to_vec()), &config(&file, size, 3)).unwrap();
    assert_eq!(log_files(&file), [dir.path().join("node.log.1"), file.clone()]);
    assert_eq!(texts(&file), ["from the first run", "after restart"]);
    // With room left, a restart appends.
    pump(Cursor::new(b"second restart\n".to_vec()), &config(&file, 1 << 20, 3)).unwrap();
    assert_eq!(texts(&file), ["from the first run", "after restart", "second restart"]);
}

#[test]
fn overlong_lines_are_split_each_with_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let long: Vec<u8> = (0..MAX_LINE * 2 + 1000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = long.clone();
    input.extend_from_slice(b"\nshort\n");
    // Feed it in odd-sized reads so a line crosses read boundaries.
    struct Dribble(Cursor<Vec<u8>>);
    impl std::io::Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(70_001);
            self.0.read(&mut buf[..n])
        }
    }
    pump(Dribble(Cursor::new(input)), &config(&file, 1 << 30, 3)).unwrap();
    let lines = all_lines(&file);
    assert_eq!(lines.len(), 4);
    let parts: Vec<&[u8]> = lines.iter().map(|l| parse_line_bytes(l).unwrap().1).collect();
    assert_eq!(parts[0].len(), MAX_LINE);
    assert_eq!(parts[1].len(), MAX_LINE);
    assert_eq!(parts[0..3].concat(), long);
    assert_eq!(parts[3], b"short");
}

#[test]
fn write_failures_never_stop_the_draining() {
    let dir = tempfile::tempdir().unwrap();
    // The log folder is a file: nothing can be opened, yet all input is consumed.
    let blocker = dir.path().join("logs");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let input: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
    let len = input.len() as u64;
    let stats =
        pump(Cursor::new(input.into_bytes()), &config(&blocker.join("node.log"), 1 << 20, 3))
            .unwrap();
    assert_eq!(stats.bytes_in, len);
    assert!(stats.bytes_dropped >= len, "{stats:?}");
    assert!(stats.write_errors >= 1);
}

/// An OS pipe: (read end, write end).
fn os_pipe() -> (File, File) {
    let (r, w) = rustix::pipe::pipe().unwrap();
    (File::from(r), File::from(w))
}

#[test]
fn a_line_is_visible_as_soon_as_the_writer_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let (r, mut w) = os_pipe();
    let cfg = config(&file, 1 << 20, 3);
    let pumper = std::thread::spawn(move || pump(r, &cfg));
    w.write_all(b"hello\n").unwrap();
    // The write end stays open: only the idle flush can make the line visible.
    let started = Instant::now();
    poll_until("the line in the file", Duration::from_secs(5), || {
        std::fs::read_to_string(&file).ok().filter(|s| s.ends_with("hello\n"))
    });
    // Well under a second (the margin is for a loaded CI machine, not the log pipe).
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    w.write_all(b"partial").unwrap();
    poll_until("the partial line", Duration::from_secs(5), || {
        std::fs::read_to_string(&file).ok().filter(|s| s.ends_with("partial"))
    });
    w.write_all(b" done\n").unwrap();
    drop(w);
    let stats = pumper.join().unwrap().unwrap();
    assert_eq!(stats.lines, 2);
    assert_eq!(texts(&file), ["hello", "partial done"]);
}

// ---- the log pipe as a real process ----------------------------------------------------
//
// The test binary re-runs itself with only `logpipe_child` selected and DWBASE_TEST_LOGPIPE
// set; that test then becomes `dwbase-supervisor logpipe` with the given arguments. So the
// signals, the stdin pipe and the exit are real, without needing the ctl binary here.

const CHILD_ENV: &str = "DWBASE_TEST_LOGPIPE";

#[derive(Parser)]
struct ChildCli {
    #[command(flatten)]
    args: LogpipeArgs,
}

#[test]
fn logpipe_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else { return };
    let argv = std::iter::once("logpipe".to_string()).chain(args.split('\x1f').map(String::from));
    let cli = ChildCli::parse_from(argv);
    let code = logpipe_main(cli.args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// Kills the child on drop, whatever the test did.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_logpipe(file: &Path, drain_timeout_ms: u64) -> ChildGuard {
    let args = [
        "--file".to_string(),
        file.to_str().unwrap().to_string(),
        "--max-bytes".into(),
        "1048576".into(),
        "--keep".into(),
        "2".into(),
        "--drain-timeout-ms".into(),
        drain_timeout_ms.to_string(),
    ]
    .join("\x1f");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "logpipe_child", "--test-threads", "1"])
        .env(CHILD_ENV, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    poll_until("the log pipe to exit", timeout, || child.try_wait().unwrap())
}

fn wait_for_text(file: &Path, text: &str) {
    let file: PathBuf = file.to_path_buf();
    poll_until(text, Duration::from_secs(10), || {
        std::fs::read_to_string(&file).ok().filter(|s| s.contains(text))
    });
}

#[test]
fn after_sigterm_it_drains_until_eof() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let mut child = spawn_logpipe(&file, 30_000);
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"before the signal\n").unwrap();
    wait_for_text(&file, "before the signal");

    sigterm(&child.0);
    // The node is shutting down gracefully and still logging: keep every line.
    stdin.write_all(b"draining\n").unwrap();
    wait_for_text(&file, "draining");
    assert!(child.0.try_wait().unwrap().is_none(), "exited before EOF");
    stdin.write_all(b"last words without newline").unwrap();
    drop(stdin);
    let status = wait_exit(&mut child.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(texts(&file), ["before the signal", "draining", "last words without newline"]);
}

#[test]
fn after_sigterm_it_gives_up_when_eof_never_comes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let mut child = spawn_logpipe(&file, 300);
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"kept\n").unwrap();
    wait_for_text(&file, "kept");
    let signalled = Instant::now();
    sigterm(&child.0);
    // stdin stays open (a stray process holding the pipe): it exits after the drain timeout.
    let status = wait_exit(&mut child.0, Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(250), "exited after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(texts(&file), ["kept"]);
    drop(stdin);
}

#[test]
fn it_exits_at_eof_without_any_signal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let mut child = spawn_logpipe(&file, 30_000);
    let mut stdin = child.0.stdin.take().unwrap();
    for i in 0..1000 {
        writeln!(stdin, "line {i}").unwrap();
    }
    drop(stdin);
    let status = wait_exit(&mut child.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let want: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    assert_eq!(texts(&file), want);
}

#[test]
fn a_burst_of_full_reads_is_flushed_once_nothing_more_is_pending() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.log");
    let child = spawn_logpipe(&file, 30_000);
    let pid = Pid::from_raw(child.0.id() as i32);
    let mut stdin = child.0.stdin.as_ref().unwrap();
    stdin.write_all(b"ready\n").unwrap();
    wait_for_text(&file, "ready");
    // The log pipe enlarged its pipe; the burst below must fit while it is stopped.
    let burst_len = 512 * 1024;
    let capacity = rustix::pipe::fcntl_getpipe_size(stdin).unwrap();
    assert!(capacity >= burst_len, "pipe of {capacity} bytes");
    // Stopped, so the burst is all there when it reads again: its reads come back full-sized
    // (a multiple of its read buffer), and only "nothing more pending" can trigger the flush.
    kill(pid, Signal::SIGSTOP).unwrap();
    let burst: String = (0..burst_len / 64).map(|i| format!("{i:063}\n")).collect();
    assert_eq!(burst.len(), burst_len);
    stdin.write_all(burst.as_bytes()).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    let last = format!("{:063}\n", burst_len / 64 - 1);
    poll_until("the end of the burst", Duration::from_secs(10), || {
        let content = std::fs::read(&file).ok()?;
        content.ends_with(last.as_bytes()).then_some(())
    });
}
