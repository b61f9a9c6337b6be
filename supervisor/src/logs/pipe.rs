//! The log pipe: a node's stdout+stderr → `node.log`, one timestamp per line, rotated by size.
//!
//! It runs as its own small process (`dwbase-supervisor logpipe --file …`), spawned by the
//! supervisor in the node's process group with the read end of the node's output pipe as its
//! stdin. Neither the node nor the log pipe depends on the supervisor: the supervisor can crash,
//! restart or be upgraded and the node's output keeps landing in its file. Plain std, no tokio:
//! it starts fast and stays small.
//!
//! Life cycle:
//! - it reads stdin until EOF (the node and everything it spawned closed their ends);
//! - SIGTERM/SIGINT (the group's stop signal) do **not** stop it: it keeps draining so the
//!   node's last lines are kept, and gives up [`LogpipeArgs::drain_timeout_ms`] after the first
//!   signal if EOF never comes. SIGKILL to the group (after the stop timeout) ends it like the
//!   node;
//! - a write error (disk full, folder removed) never stops it either: a log pipe that dies
//!   would hand the node SIGPIPE/EPIPE on its next write. It keeps reading, drops what it
//!   cannot write (counted in [`Stats::bytes_dropped`], reported on stderr) and retries about
//!   once a second.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use super::reader::{rotated_numbers, rotated_path};
use super::timestamp::{format_prefix, unix_ms, PREFIX_LEN};

/// Default size at which `node.log` is rotated: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept (`node.log.1` … `node.log.5`).
pub const DEFAULT_KEEP: u32 = 5;
/// Default time the log pipe keeps draining after SIGTERM/SIGINT when EOF never comes. It
/// equals the default stop timeout: a graceful node may log until then, and the supervisor
/// SIGKILLs the whole group at that point anyway.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Longest line content kept as one line. Longer runs without a newline are split into
/// several lines, each with its own timestamp, so one file never exceeds
/// `max(max_bytes, MAX_LINE + PREFIX_LEN + 1)` and `tail`/`follow` never hold more than this
/// per line.
pub const MAX_LINE: usize = 1 << 20;

/// One read() from the input. Big, so that a chatty node costs few syscalls.
const READ_BUF: usize = 256 * 1024;
/// Output buffer; flushed when full and whenever the input goes idle.
const WRITE_BUF: usize = 1 << 20;
/// Size asked of the kernel for the input pipe (Linux caps unprivileged requests at
/// /proc/sys/fs/pipe-max-size, 1 MiB by default). A bigger pipe means the node blocks less
/// often when the log pipe is briefly descheduled.
#[cfg(any(target_os = "linux", target_os = "android"))]
const PIPE_SIZE: usize = 1 << 20;
/// After a write error, how long to drop output before trying the file again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `dwbase-supervisor logpipe`: copy stdin to a timestamped, size-rotated log file.
#[derive(Debug, Clone, clap::Args)]
pub struct LogpipeArgs {
    /// The current log file, e.g. `<node dir>/logs/node.log`; rotated files are `<file>.1` (the
    /// newest) … `<file>.<keep>`. Its folder is created if missing.
    #[arg(long)]
    pub file: PathBuf,
    /// Rotate before the file would grow past this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// How many rotated files to keep (0: none, the file is just started over).
    #[arg(long, default_value_t = DEFAULT_KEEP)]
    pub keep: u32,
    /// After SIGTERM/SIGINT, keep draining stdin for at most this long (milliseconds) before
    /// exiting if EOF never comes. Pass the node's stop timeout.
    #[arg(long, default_value_t = DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,
}

impl LogpipeArgs {
    /// The writer half of these arguments.
    pub fn config(&self) -> PipeConfig {
        PipeConfig { file: self.file.clone(), max_bytes: self.max_bytes, keep: self.keep }
    }
}

/// Where and how [`pump`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeConfig {
    /// The current log file.
    pub file: PathBuf,
    /// Rotate before the file would grow past this many bytes (a single line longer than
    /// this still goes whole into a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

impl PipeConfig {
    /// A config with the default size and count.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self { file: file.into(), max_bytes: DEFAULT_MAX_BYTES, keep: DEFAULT_KEEP }
    }
}

/// What one [`pump`] run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes read from the input.
    pub bytes_in: u64,
    /// Lines started in the output (a line split at [`MAX_LINE`] counts per piece).
    pub lines: u64,
    /// Rotations performed.
    pub rotations: u64,
    /// Output bytes (prefixes included) dropped because the file could not be written.
    pub bytes_dropped: u64,
    /// Write, open or rotate failures met.
    pub write_errors: u64,
}

/// `dwbase-supervisor logpipe …`: runs [`pump`] on stdin until EOF (or the drain timeout after
/// SIGTERM/SIGINT). Exit code 0 at EOF, 1 if stdin could not be read or the signal pipe could
/// not be set up.
pub fn logpipe_main(args: LogpipeArgs) -> ExitCode {
    let stdin = match Stdin::new(Duration::from_millis(args.drain_timeout_ms)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dwbase logpipe: setting up stdin and signals: {e}");
            return ExitCode::from(1);
        }
    };
    match pump_with(stdin, &args.config(), Stdin::more_ready) {
        Ok(stats) => {
            if stats.bytes_dropped > 0 {
                eprintln!(
                    "dwbase logpipe: {} bytes could not be written to {}",
                    stats.bytes_dropped,
                    args.file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dwbase logpipe: reading stdin: {e}");
            ExitCode::from(1)
        }
    }
}

/// Copies `reader` to the timestamped, rotated log file of `config` until EOF.
///
/// Every line written starts with the time (`2026-11-25T08:00:00.123Z `) at which the read
/// that delivered its first byte returned; all lines starting in one read share it. A last
/// line without a newline is terminated with one at EOF. Bytes pass through untouched (no
/// UTF-8 requirement). Output is flushed whenever a read comes back short — for a pipe that
/// means nothing more is pending — so a follower sees a line as soon as the writer pauses.
/// (The log pipe itself also asks its stdin, after a full-sized read, whether more is
/// pending.)
///
/// Errors: only read errors are returned (after flushing what was read). Write errors are
/// counted in [`Stats`] and retried; see the module doc.
pub fn pump<R: Read>(reader: R, config: &PipeConfig) -> io::Result<Stats> {
    // A generic reader cannot say whether more is pending after a full read: assume so.
    pump_with(reader, config, |_| true)
}

/// [`pump`], flushing also after a full-sized read when `more_ready` says no more input is
/// pending right now (a burst that happens to end on a read-buffer boundary is then visible
/// at once, not at the next write or EOF).
fn pump_with<R: Read>(
    mut reader: R,
    config: &PipeConfig,
    more_ready: impl Fn(&R) -> bool,
) -> io::Result<Stats> {
    let mut out = LogWriter::new(config.clone());
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.finish();
                return Err(e);
            }
        };
        if n == 0 {
            break;
        }
        let prefix = format_prefix(unix_ms(SystemTime::now()));
        out.write_chunk(&buf[..n], &prefix);
        if n < buf.len() || !more_ready(&reader) {
            out.flush();
        }
    }
    out.finish();
    Ok(out.stats)
}

/// Stdin as a [`Read`] that also watches SIGTERM/SIGINT: after the first one it keeps
/// reading, and reports EOF once the drain timeout has passed.
struct Stdin {
    input: File,
    signals: UnixStream,
    grace: Duration,
    deadline: Option<Instant>,
}

impl Stdin {
    fn new(grace: Duration) -> io::Result<Self> {
        let owned: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // Not a pipe (a file, /dev/null) or not allowed: keep the default size.
            let _ = rustix::pipe::fcntl_setpipe_size(&owned, PIPE_SIZE);
        }
        let (signals, notify) = UnixStream::pair()?;
        signals.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
        }
        Ok(Self { input: File::from(owned), signals, grace, deadline: None })
    }
}

impl Stdin {
    /// Input is pending right now (or EOF/an error is, which the next read reports).
    fn more_ready(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.input, PollFlags::IN)];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        // On a poll error, say no: the flush is cheap, a line stuck in the buffer is not.
        matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            let timeout = match self.deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(0), // drain timeout: behave as EOF
                },
            };
            let timeout = timeout.map(|d| rustix::event::Timespec {
                tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: d.subsec_nanos().into(),
            });
            let mut fds = [
                PollFd::new(&self.input, PollFlags::IN),
                PollFd::new(&self.signals, PollFlags::IN),
            ];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let input_ready = !fds[0].revents().is_empty();
            if !fds[1].revents().is_empty() {
                let mut sink = [0u8; 64];
                while matches!((&self.signals).read(&mut sink), Ok(n) if n > 0) {}
                if self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + self.grace);
                }
            }
            if input_ready {
                // Readable, hung up or in error: read() returns data, 0 or the error.
                return self.input.read(buf);
            }
        }
    }
}

/// The rotating, timestamping writer behind [`pump`].
struct LogWriter {
    config: PipeConfig,
    out: Option<BufWriter<File>>,
    /// Bytes in the current file (as written through `out`, flushed or not).
    size: u64,
    /// The next byte of input starts a line (so it needs a prefix).
    at_line_start: bool,
    /// Content bytes of the line in progress.
    line_len: usize,
    /// While the file is unwritable: when to try again.
    retry_at: Option<Instant>,
    stats: Stats,
}

impl LogWriter {
    fn new(config: PipeConfig) -> Self {
        let mut w = Self {
            config,
            out: None,
            size: 0,
            at_line_start: true,
            line_len: 0,
            retry_at: None,
            stats: Stats::default(),
        };
        w.reopen();
        w
    }

    fn write_chunk(&mut self, chunk: &[u8], prefix: &[u8; PREFIX_LEN]) {
        self.stats.bytes_in += chunk.len() as u64;
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.at_line_start {
                // Rotate on line boundaries only, sized by the part of the line known now.
                let known = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                self.before_line(PREFIX_LEN + known.min(MAX_LINE + 1));
                self.put(prefix);
                self.at_line_start = false;
                self.line_len = 0;
                self.stats.lines += 1;
            }
            // Look for the newline among the bytes this line may still take, plus one (the
            // newline itself may sit right at the limit).
            let room = MAX_LINE - self.line_len;
            let window = &rest[..rest.len().min(room + 1)];
            if let Some(i) = memchr::memchr(b'\n', window) {
                self.put(&window[..=i]);
                rest = &rest[i + 1..];
                self.at_line_start = true;
            } else if window.len() <= room {
                self.put(window);
                self.line_len += window.len();
                rest = &rest[window.len()..];
            } else {
                // Too long: end this piece here and continue in a new line.
                self.put(&window[..room]);
                self.put(b"\n");
                rest = &rest[room..];
                self.at_line_start = true;
            }
        }
    }

    /// Before a line of (at least) `len` bytes: rotate if it would overflow the file.
    fn before_line(&mut self, len: usize) {
        if self.out.is_none() {
            self.reopen();
        }
        if self.out.is_some() && self.size > 0 && self.size + len as u64 > self.config.max_bytes {
            self.rotate();
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.out.is_none() {
            self.reopen();
        }
        match self.out.as_mut() {
            Some(out) => match out.write_all(bytes) {
                Ok(()) => self.size += bytes.len() as u64,
                Err(e) => {
                    self.fail("writing", &e);
                    self.stats.bytes_dropped += bytes.len() as u64;
                }
            },
            None => self.stats.bytes_dropped += bytes.len() as u64,
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.fail("writing", &e);
            }
        }
    }

    /// At EOF: terminate a last line that has no newline, flush.
    fn finish(&mut self) {
        if !self.at_line_start {
            self.put(b"\n");
            self.at_line_start = true;
        }
        self.flush();
    }

    /// (Re)opens the current file for appending, unless a failure is being waited out.
    fn reopen(&mut self) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match open_append(&self.config.file) {
            Ok((file, size)) => {
                self.out = Some(BufWriter::with_capacity(WRITE_BUF, file));
                self.size = size;
                self.retry_at = None;
            }
            Err(e) => self.fail("opening", &e),
        }
    }

    fn rotate(&mut self) {
        self.flush();
        // Close before renaming, so a follower that sees the new inode finds the old file
        // complete.
        self.out = None;
        if let Err(e) = shift_files(&self.config.file, self.config.keep) {
            self.fail("rotating", &e);
            return;
        }
        self.stats.rotations += 1;
        self.reopen();
    }

    /// Drops the output (discarding its buffer) and waits [`RETRY_AFTER`] before the next try.
    fn fail(&mut self, what: &str, err: &io::Error) {
        if let Some(out) = self.out.take() {
            let (_file, lost) = out.into_parts();
            if let Ok(lost) = lost {
                self.stats.bytes_dropped += lost.len() as u64;
            }
        }
        self.stats.write_errors += 1;
        // One message per outage, not one per line.
        if self.retry_at.is_none() {
            eprintln!("dwbase logpipe: {what} {}: {err}", self.config.file.display());
        }
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Every `file.<n>` with n ≥ keep is deleted (also those left by an earlier, larger
/// `--keep`), the others move up by one (`file.<n>` → `file.<n+1>`, newest last so no name is
/// ever overwritten) and `file` becomes `file.1`. With `keep == 0` the file is just removed.
fn shift_files(file: &Path, keep: u32) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    // Oldest first, so each rename's target name is already free.
    let existing = rotated_numbers(file);
    for &n in &existing {
        if n >= keep {
            ignore_missing(std::fs::remove_file(rotated_path(file, n)))?;
        } else {
            ignore_missing(std::fs::rename(rotated_path(file, n), rotated_path(file, n + 1)))?;
        }
    }
    if keep == 0 {
        return ignore_missing(std::fs::remove_file(file));
    }
    ignore_missing(std::fs::rename(file, rotated_path(file, 1)))
}
