//! Reading the files the log pipe writes: list, tail, follow, interleave.
//!
//! Everything here works on paths and plain files, so the supervisor (serving
//! `Request::Logs`) and the CLI (reading the files itself when no supervisor runs) share it.
//! Only [`Follower::next_batch`] and [`MultiFollower::next_batch`] need tokio (a timer).
//!
//! How the `Logs` handler is meant to use it, per [`dwbase_proto::LogsSpec`]:
//!
//! ```no_run
//! # async fn handler(spec: dwbase_proto::LogsSpec, nodes: Vec<(String, std::path::PathBuf)>)
//! #     -> std::io::Result<()> {
//! use dwbase_supervisor::logs::{merge_by_time, tail, Follower, MultiFollower};
//! let n = spec.tail.map(|n| n as usize);
//! if !spec.follow {
//!     // One node or all: the last lines of each, interleaved by time.
//!     let mut per_node = Vec::new();
//!     for (name, log_path) in &nodes {
//!         per_node.push((name.clone(), tail(log_path, n, spec.since_unix_ms)?));
//!     }
//!     for line in merge_by_time(per_node) { /* send Response::LogLine(line) */ }
//!     // then Response::EndOfStream(EndOfStream::Done)
//! } else {
//!     // Tail and follower start at the same byte: no line lost or sent twice in between.
//!     let mut per_node = Vec::new();
//!     let mut follow = MultiFollower::new();
//!     for (name, log_path) in &nodes {
//!         let (lines, follower) = Follower::open_with_tail(log_path, n, spec.since_unix_ms)?;
//!         per_node.push((name.clone(), lines));
//!         follow.add(name.clone(), follower);
//!     }
//!     for line in merge_by_time(per_node) { /* send */ }
//!     loop {
//!         tokio::select! {
//!             batch = follow.next_batch() => for line in batch? { /* send */ },
//!             // _ = node_stopped => send EndOfStream::NodeStopped, break
//!             // _ = shutdown.cancelled() => send EndOfStream::SupervisorShutdown, break
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A follower costs nothing while it is not awaited: there is no background task, and it polls
//! the file (a `stat` and a `pread`, every [`DEFAULT_POLL_INTERVAL`]) only inside
//! `next_batch`. So the supervisor never wakes for logs when nobody follows.

use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dwbase_proto::LogLine;

use super::pipe::MAX_LINE;
use super::timestamp::{parse_timestamp, PREFIX_LEN};

/// How often a follower looks at its file while awaited: a line shows up within this.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// File ids a follower remembers before it forgets those no longer on disk.
const MAX_KNOWN: usize = 1024;
/// Bytes read backwards at a time by [`tail`].
const BLOCK: u64 = 64 * 1024;
/// Bytes a follower reads per [`Follower::poll`] at most, so a follower far behind hands out
/// its backlog in batches instead of one huge allocation.
const BATCH_BYTES: usize = 1 << 20;
/// Longest incomplete line a follower buffers before handing it out anyway (the log pipe
/// never writes one longer than [`MAX_LINE`] plus its prefix).
const MAX_PENDING: usize = MAX_LINE + PREFIX_LEN + 1;

/// Splits a log line (without its newline) into its timestamp (Unix milliseconds) and text.
/// `None` if it does not start with the log pipe's `2026-11-25T08:00:00.123Z ` prefix.
pub fn parse_line(line: &str) -> Option<(i64, &str)> {
    let (ts, _) = parse_line_bytes(line.as_bytes())?;
    // The prefix is 25 ASCII bytes, so this is a char boundary.
    Some((ts, &line[PREFIX_LEN..]))
}

/// [`parse_line`] on raw bytes (log files need not be UTF-8). A trailing `\n` is ignored.
pub fn parse_line_bytes(line: &[u8]) -> Option<(i64, &[u8])> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() < PREFIX_LEN || line[PREFIX_LEN - 1] != b' ' {
        return None;
    }
    Some((parse_timestamp(line)?, &line[PREFIX_LEN..]))
}

/// `<current>.<n>`: the n-th rotated file (1 is the newest).
pub fn rotated_path(current: &Path, n: u32) -> PathBuf {
    let mut s = current.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of one log, oldest first: `node.log.K` … `node.log.1`, then `node.log`. Only
/// files that exist are listed; every `node.log.<n>` found counts (the `--keep` in force
/// when they were written may have been larger).
pub fn log_files(current: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        rotated_numbers(current).into_iter().map(|n| rotated_path(current, n)).collect();
    if current.is_file() {
        files.push(current.to_path_buf());
    }
    files
}

/// The numbers n of the existing `<current>.<n>` files, highest (oldest) first.
pub(crate) fn rotated_numbers(current: &Path) -> Vec<u32> {
    let mut numbers = Vec::new();
    let Some(name) = current.file_name() else { return numbers };
    let dir = match current.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = name.as_encoded_bytes();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let Some(rest) =
            file_name.as_encoded_bytes().strip_prefix(stem).and_then(|r| r.strip_prefix(b"."))
        else {
            continue;
        };
        // Canonical numbers only: "1", "12" — not "01", "+1" or "1.gz".
        let Some(n) = std::str::from_utf8(rest).ok().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if n >= 1 && n.to_string().as_bytes() == rest {
            numbers.push(n);
        }
    }
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers
}

/// The last `n` lines of a log (all kept lines if `None`), across its rotated files, oldest
/// first, as (Unix ms, text). Lines older than `since_unix_ms` are left out. Reads backwards
/// from the end and stops as soon as it has enough, so a large log costs only what is returned.
///
/// A last line still being written (no newline yet) is included. Lines that do not carry the
/// log pipe's prefix (written by something else) keep their whole text and borrow the time of
/// the line before them. A missing log is not an error: it has no lines.
pub fn tail(
    current: &Path,
    n: Option<usize>,
    since_unix_ms: Option<i64>,
) -> io::Result<Vec<(i64, String)>> {
    let cur = match open_if_exists(current)? {
        Some(file) => {
            let meta = file.metadata()?;
            Some((file, FileId::of(&meta), meta.len()))
        }
        None => None,
    };
    tail_before(current, cur.as_ref().map(|(f, id, end)| (f, *id, *end)), n, since_unix_ms)
}

/// Tail over `cur` (the current file, read up to `end`) and the rotated files older than it.
fn tail_before(
    current: &Path,
    cur: Option<(&File, FileId, u64)>,
    n: Option<usize>,
    since: Option<i64>,
) -> io::Result<Vec<(i64, String)>> {
    if n == Some(0) {
        return Ok(Vec::new());
    }
    let mut rotated = rotated_snapshot(current)?;
    // If `cur` was rotated away in the meantime it appears among them: only files older than
    // it belong before it.
    if let Some((_, cur_id, _)) = cur {
        if let Some(i) = rotated.iter().position(|s| s.id == cur_id) {
            rotated.truncate(i);
        }
    }
    let mut sources: Vec<(&File, u64)> = Vec::new();
    if let Some((file, _, end)) = cur {
        sources.push((file, end));
    }
    sources.extend(rotated.iter().rev().map(|s| (&s.file, s.pos)));

    let mut newest_first: Vec<Vec<u8>> = Vec::new();
    'files: for (file, end) in sources {
        let mut lines = RevLines::new(file, end)?;
        while let Some(line) = lines.next_line()? {
            if let (Some(since), Some((ts, _))) = (since, parse_line_bytes(&line)) {
                if ts < since {
                    break 'files;
                }
            }
            newest_first.push(line);
            if n.is_some_and(|n| newest_first.len() >= n) {
                break 'files;
            }
        }
    }
    newest_first.reverse();
    Ok(decode_lines(newest_first))
}

/// Raw lines → (time, text), giving lines without a prefix the time of the line before (or,
/// at the start, after) them.
fn decode_lines(raw: Vec<Vec<u8>>) -> Vec<(i64, String)> {
    let mut out: Vec<(Option<i64>, String)> = raw
        .iter()
        .map(|line| match parse_line_bytes(line) {
            Some((ts, text)) => (Some(ts), String::from_utf8_lossy(text).into_owned()),
            None => (None, String::from_utf8_lossy(line).into_owned()),
        })
        .collect();
    let first = out.iter().find_map(|(ts, _)| *ts).unwrap_or(0);
    let mut last = first;
    out.iter_mut()
        .map(|(ts, text)| {
            let at = ts.unwrap_or(last);
            last = at;
            (at, std::mem::take(text))
        })
        .collect()
}

/// Lines of `file[..end]` from the last to the first, without their newlines; empty lines
/// are skipped (the log pipe never writes one).
struct RevLines<'a> {
    file: &'a File,
    /// `buf` holds the bytes `[pos, pos + buf.len())`; everything before `pos` is unread.
    pos: u64,
    buf: Vec<u8>,
}

impl<'a> RevLines<'a> {
    fn new(file: &'a File, end: u64) -> io::Result<Self> {
        Ok(Self { file, pos: end, buf: Vec::new() })
    }

    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = memchr::memrchr(b'\n', &self.buf) {
                let line = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.pos == 0 {
                return Ok((!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf)));
            }
            let take = self.pos.min(BLOCK);
            let start = self.pos - take;
            let mut block = vec![0u8; take as usize];
            match self.file.read_exact_at(&mut block, start) {
                Ok(()) => {}
                // Truncated under us: what is left is gone.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.pos = 0;
                    continue;
                }
                Err(e) => return Err(e),
            }
            block.extend_from_slice(&self.buf);
            self.buf = block;
            self.pos = start;
        }
    }
}

/// Identity of a file: device, inode and (where the filesystem records it) creation time,
/// so an inode number reused by a later log file is not mistaken for an earlier one. A
/// rotation (rename) keeps it; a re-creation changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    born: Option<std::time::SystemTime>,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino(), born: meta.created().ok() }
    }
}

fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the last complete line of `file[..len]` ends (the offset after its newline). A file
/// that ends in an incomplete line gives the offset where that line starts, so a follower
/// starting there delivers it once it is complete.
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let limit = len.saturating_sub(MAX_PENDING as u64 + BLOCK);
    let mut block = vec![0u8; BLOCK as usize];
    while end > limit {
        let start = end.saturating_sub(BLOCK).max(limit);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    // No newline at all: a small file is one incomplete line (start at 0); in a huge one,
    // skip the unterminated junk.
    Ok(if limit == 0 { 0 } else { len })
}

/// A file being read by a follower.
#[derive(Debug)]
struct Source {
    file: File,
    id: FileId,
    pos: u64,
}

impl Source {
    fn open(path: &Path, pos: u64) -> io::Result<Option<Self>> {
        let Some(file) = open_if_exists(path)? else { return Ok(None) };
        let id = FileId::of(&file.metadata()?);
        Ok(Some(Self { file, id, pos }))
    }
}

/// Follows one log: hands out complete lines as they are appended to the current file.
///
/// It survives rotation (the path now names another inode: the old file is read to its end,
/// then any rotated files written in between, then the new file from its start), removal and
/// re-creation (handled like rotation; while the file is missing it waits), truncation in place
/// (starts over at 0) and node restarts (a new log pipe appends to the same file). A last line
/// left without a newline in a file that has been rotated away is handed out as a line.
///
/// A follower that falls more than `--keep` rotations behind (not polled for that long)
/// loses the files deleted meanwhile; it carries on with the oldest one still there.
///
/// Polling, not inotify: a `stat` plus a `pread` per [`DEFAULT_POLL_INTERVAL`] and only while
/// [`Follower::next_batch`] is awaited — nothing runs in the background, and it behaves the
/// same on every filesystem and OS.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    cur: Option<Source>,
    /// Rotated files that came between the one just finished and the current one.
    queue: VecDeque<Source>,
    /// Files already read, or older than where the follower started. A rotated file not in
    /// here was written while the follower looked elsewhere and must still be read.
    known: HashSet<FileId>,
    /// Bytes of a line whose newline has not been read yet.
    pending: Vec<u8>,
    /// Time of the last line handed out (lent to lines without a prefix).
    last_ts: i64,
    interval: Duration,
}

impl Follower {
    /// A follower of `current` that starts after its last complete line (so only lines
    /// completed from now on are handed out). If the file does not exist yet, it waits for it
    /// and then reads it from the start.
    pub fn open(current: &Path) -> io::Result<Self> {
        let cur = match Source::open(current, 0)? {
            Some(mut src) => {
                let len = src.file.metadata()?.len();
                src.pos = end_of_last_line(&src.file, len)?;
                Some(src)
            }
            None => None,
        };
        // Everything rotated before the starting file is history, not news. (If the starting
        // file was itself rotated meanwhile, the files after it are news.)
        let cur_id = cur.as_ref().map(|s| s.id);
        let mut known: HashSet<FileId> = rotated_snapshot(current)?
            .iter()
            .map(|s| s.id)
            .take_while(|id| Some(*id) != cur_id)
            .collect();
        known.extend(cur_id);
        let mut follower = Self::with_source(current, cur);
        follower.known = known;
        Ok(follower)
    }

    /// [`tail`] and a follower that starts exactly where the tail ends, for
    /// `logs --tail N -f`: no line is lost or sent twice between the two, even if the log pipe
    /// writes or rotates meanwhile. The tail holds complete lines only (a line still being
    /// written comes from the follower once complete).
    pub fn open_with_tail(
        current: &Path,
        n: Option<usize>,
        since_unix_ms: Option<i64>,
    ) -> io::Result<(Vec<(i64, String)>, Self)> {
        let follower = Self::open(current)?;
        let lines = tail_before(
            current,
            follower.cur.as_ref().map(|s| (&s.file, s.id, s.pos)),
            n,
            since_unix_ms,
        )?;
        Ok((lines, follower))
    }

    fn with_source(current: &Path, cur: Option<Source>) -> Self {
        Self {
            path: current.to_path_buf(),
            cur,
            queue: VecDeque::new(),
            known: HashSet::new(),
            pending: Vec::new(),
            last_ts: 0,
            interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The log file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How often [`Follower::next_batch`] looks for new lines (default
    /// [`DEFAULT_POLL_INTERVAL`]).
    pub fn set_poll_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Waits for new complete lines and returns them (never an empty batch), oldest first, at
    /// most about 1 MiB at a time. Cancel-safe: dropping the future loses nothing, so it can
    /// sit in a `tokio::select!` with a shutdown or node-stopped branch.
    pub async fn next_batch(&mut self) -> io::Result<Vec<(i64, String)>> {
        loop {
            let lines = self.poll()?;
            if !lines.is_empty() {
                return Ok(lines);
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// The complete lines appended since the last call (possibly none), without waiting. The
    /// runtime-free core of [`Follower::next_batch`], for callers with their own loop.
    pub fn poll(&mut self) -> io::Result<Vec<(i64, String)>> {
        let mut out = Vec::new();
        let mut budget = BATCH_BYTES;
        loop {
            if self.cur.is_none() {
                if let Some(src) = self.queue.pop_front() {
                    self.cur = Some(src);
                } else {
                    let Some(src) = Source::open(&self.path, 0)? else {
                        return Ok(out); // not (re)created yet
                    };
                    // Files rotated while we were not looking (faster than our polls, or
                    // before this one was opened): read those first, oldest first.
                    let unseen = self.unseen_rotated(src.id)?;
                    self.known.insert(src.id);
                    if unseen.is_empty() {
                        self.cur = Some(src);
                    } else {
                        self.queue = unseen;
                        self.queue.push_back(src);
                    }
                }
            }
            let read = self.read_some(budget, &mut out)?;
            if read > 0 {
                budget -= read;
                if budget == 0 {
                    return Ok(out);
                }
                continue;
            }
            // At the end of the file being read. Is it still the current one?
            let Some((id, pos)) = self.cur.as_ref().map(|s| (s.id, s.pos)) else { continue };
            match std::fs::metadata(&self.path) {
                Ok(meta) if FileId::of(&meta) == id => {
                    if meta.len() < pos {
                        // Truncated in place: start over.
                        if let Some(src) = self.cur.as_mut() {
                            src.pos = 0;
                        }
                        self.pending.clear();
                        continue;
                    }
                    return Ok(out);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // The path names another file now, or none: this one was rotated away (or is a
            // rotated file read on the way). Its writer closed it before renaming it, so
            // reading it to the end once more gets all of it.
            while self.read_some(BLOCK as usize, &mut out)? > 0 {}
            self.finish_file(&mut out);
        }
    }

    /// The rotated files older than `until` that this follower has not read yet, oldest
    /// first, opened from their start (and remembered as read from now on).
    fn unseen_rotated(&mut self, until: FileId) -> io::Result<VecDeque<Source>> {
        // Newest first, down to the first file already read: the unread ones are the newest.
        let known = &self.known;
        let scanned = scan_rotated(&self.path, |s| known.contains(&s.id))?;
        // If `until` was itself rotated meanwhile, the files newer than it come after it.
        let older_than_until = match scanned.iter().position(|s| s.id == until) {
            Some(i) => &scanned[..i],
            None => &scanned[..],
        };
        let unseen_ids: Vec<FileId> =
            older_than_until.iter().map(|s| s.id).filter(|id| !self.known.contains(id)).collect();
        if self.known.len() > MAX_KNOWN {
            // One id per rotation adds up over weeks; keep the newest ones.
            let keep: HashSet<FileId> = scanned.iter().map(|s| s.id).collect();
            self.known.retain(|id| keep.contains(id));
        }
        self.known.extend(unseen_ids.iter().copied());
        Ok(scanned
            .into_iter()
            .filter(|s| unseen_ids.contains(&s.id))
            .map(|mut s| {
                s.pos = 0;
                s
            })
            .collect())
    }

    /// Reads up to `budget` bytes (at most one chunk) from the current source, turning complete
    /// lines into `out`. Returns the bytes read (0 at its end).
    fn read_some(&mut self, budget: usize, out: &mut Vec<(i64, String)>) -> io::Result<usize> {
        let Some(src) = self.cur.as_mut() else { return Ok(0) };
        let want = budget.min(BLOCK as usize);
        let start = self.pending.len();
        self.pending.resize(start + want, 0);
        let n = loop {
            match src.file.read_at(&mut self.pending[start..], src.pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pending.truncate(start);
                    return Err(e);
                }
            }
        };
        self.pending.truncate(start + n);
        src.pos += n as u64;
        if n > 0 {
            self.take_lines(start, out);
        }
        Ok(n)
    }

    /// Moves the complete lines out of `pending` (new bytes start at `from`).
    fn take_lines(&mut self, from: usize, out: &mut Vec<(i64, String)>) {
        let mut line_start = 0;
        for i in memchr::memchr_iter(b'\n', &self.pending[from..]) {
            let end = from + i;
            if end > line_start {
                out.push(decode(&self.pending[line_start..end], &mut self.last_ts));
            }
            line_start = end + 1;
        }
        self.pending.drain(..line_start);
        if self.pending.len() > MAX_PENDING {
            // Not written by the log pipe (it splits long lines): hand it out as it is.
            out.push(decode(&self.pending, &mut self.last_ts));
            self.pending.clear();
        }
    }

    /// The current source is done: its unterminated last line, if any, becomes a line.
    fn finish_file(&mut self, out: &mut Vec<(i64, String)>) {
        if !self.pending.is_empty() {
            out.push(decode(&self.pending, &mut self.last_ts));
            self.pending.clear();
        }
        self.cur = None;
    }
}

/// One raw line → (time, text); a line without the prefix borrows `last_ts`.
fn decode(raw: &[u8], last_ts: &mut i64) -> (i64, String) {
    match parse_line_bytes(raw) {
        Some((ts, text)) => {
            *last_ts = ts;
            (ts, String::from_utf8_lossy(text).into_owned())
        }
        None => (*last_ts, String::from_utf8_lossy(raw).into_owned()),
    }
}

/// The rotated files of `current`, oldest first, opened (with `pos` = their length).
fn rotated_snapshot(current: &Path) -> io::Result<Vec<Source>> {
    scan_rotated(current, |_| false)
}

/// The rotated files of `current` — newest first, stopping after the first one for which
/// `stop` is true (included) — returned oldest first, opened, with `pos` = their length.
///
/// This races with a log pipe that rotates meanwhile, and is built so the race cannot lose a
/// file: names are opened by number (a directory listing taken during renames can miss an
/// entry; an open by name cannot), going up from `.1`, the direction in which rotation moves
/// files, so a rotation in the middle can make a file turn up twice (dropped by id) but not
/// skip one. A rotation always replaces the current file, so the same current file before and
/// after the scan proves none happened and the order is right; otherwise it is retried a few
/// times, then taken as it is (a log pipe rotating every few microseconds).
fn scan_rotated(current: &Path, stop: impl Fn(&Source) -> bool) -> io::Result<Vec<Source>> {
    let current_id = || std::fs::metadata(current).ok().map(|m| FileId::of(&m));
    let mut newest_first: Vec<Source> = Vec::new();
    for _ in 0..16 {
        newest_first.clear();
        let before = current_id();
        // Numbers are probed rather than listed; the listing only bounds how far (plus room
        // for the files to move up while we look).
        let highest = rotated_numbers(current).first().copied().unwrap_or(0).saturating_add(16);
        for n in 1..=highest {
            let Some(src) = Source::open(&rotated_path(current, n), 0)? else { continue };
            let done = stop(&src);
            if !newest_first.iter().any(|s| s.id == src.id) {
                newest_first.push(src);
            }
            if done {
                break;
            }
        }
        if current_id() == before {
            break;
        }
    }
    newest_first.reverse();
    for src in &mut newest_first {
        src.pos = src.file.metadata()?.len();
    }
    Ok(newest_first)
}

/// Follows several nodes' logs at once (`logs -f` without a node), handing out each batch
/// interleaved by time.
#[derive(Debug, Default)]
pub struct MultiFollower {
    nodes: Vec<(String, Follower)>,
    interval: Option<Duration>,
}

impl MultiFollower {
    /// No nodes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows one more node's log (a node with the same name is replaced).
    pub fn add(&mut self, node: impl Into<String>, mut follower: Follower) {
        let node = node.into();
        if let Some(interval) = self.interval {
            follower.set_poll_interval(interval);
        }
        self.nodes.retain(|(n, _)| *n != node);
        self.nodes.push((node, follower));
    }

    /// Stops following a node; false if it was not followed.
    pub fn remove(&mut self, node: &str) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|(n, _)| n != node);
        self.nodes.len() != before
    }

    /// Names of the nodes followed.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|(n, _)| n.as_str())
    }

    /// No node is followed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The poll interval of every follower, present and future.
    pub fn set_poll_interval(&mut self, interval: Duration) {
        self.interval = Some(interval);
        for (_, f) in &mut self.nodes {
            f.set_poll_interval(interval);
        }
    }

    /// New lines of every node, interleaved by time (possibly none), without waiting. An error
    /// names the node.
    pub fn poll(&mut self) -> io::Result<Vec<LogLine>> {
        let mut per_node = Vec::with_capacity(self.nodes.len());
        for (name, follower) in &mut self.nodes {
            let lines =
                follower.poll().map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
            if !lines.is_empty() {
                per_node.push((name.clone(), lines));
            }
        }
        Ok(merge_by_time(per_node))
    }

    /// Waits for new lines of any node (never an empty batch). Cancel-safe, like
    /// [`Follower::next_batch`]. With no node followed it waits forever.
    pub async fn next_batch(&mut self) -> io::Result<Vec<LogLine>> {
        loop {
            let lines = self.poll()?;
            if !lines.is_empty() {
                return Ok(lines);
            }
            tokio::time::sleep(self.interval.unwrap_or(DEFAULT_POLL_INTERVAL)).await;
        }
    }
}

/// Interleaves several nodes' lines by time, for `logs` of every node. Each node's lines keep
/// their own order (even if its clock stepped back); equal times go in the order the nodes
/// are given. The client prefixes each line with its node name.
pub fn merge_by_time(per_node: Vec<(String, Vec<(i64, String)>)>) -> Vec<LogLine> {
    use std::cmp::Reverse;
    let total = per_node.iter().map(|(_, l)| l.len()).sum();
    let mut out = Vec::with_capacity(total);
    let mut names = Vec::with_capacity(per_node.len());
    let mut iters = Vec::with_capacity(per_node.len());
    let mut heap = BinaryHeap::with_capacity(per_node.len());
    for (i, (name, lines)) in per_node.into_iter().enumerate() {
        let mut it = lines.into_iter().peekable();
        if let Some((ts, _)) = it.peek() {
            heap.push(Reverse((*ts, i)));
        }
        names.push(name);
        iters.push(it);
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some((at_unix_ms, text)) = iters[i].next() {
            out.push(LogLine { node: names[i].clone(), at_unix_ms, text });
        }
        if let Some((ts, _)) = iters[i].peek() {
            heap.push(Reverse((*ts, i)));
        }
    }
    out
}
