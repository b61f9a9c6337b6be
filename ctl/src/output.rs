//! Small helpers for what the CLI prints: stdout that knows `| head`, tables, durations,
//! paths, log tails.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Our stdout was closed by its reader (`dwbase … | head`): the one failure that ends a
/// command silently with exit 0. Every other broken pipe (the control socket, a node's HTTP
/// connection) is an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Maps an error of writing to stdout: a broken pipe becomes [`StdoutClosed`].
pub fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Writes formatted text to stdout (unbuffered lines, like `print!`), mapping a closed stdout
/// to [`StdoutClosed`] instead of panicking as `print!` does.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).map_err(stdout_error)
}

/// `println!` for commands: `outln!(…)?` returns [`StdoutClosed`] when the reader went away.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A plain text table: columns padded to their widest cell, two spaces apart, no trailing
/// blanks. Good for eyes and for `awk`.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|s| (*s).to_owned()).collect()] }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// "3d 4h", "2h 5m", "4m 10s", "12s", "0.42 s" — two units at most.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Seconds with two decimals, for progress lines.
pub fn secs2(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `path` relative to the current directory when it lies below it, else unchanged.
pub fn display_path(path: &Path) -> PathBuf {
    // Asked once per process (the CLI never changes its folder): a status of 50 nodes
    // shows 50 paths.
    static CWD: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    match CWD.get_or_init(|| std::env::current_dir().ok()) {
        Some(cwd) => match path.strip_prefix(cwd) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
            _ => path.to_path_buf(),
        },
        None => path.to_path_buf(),
    }
}

/// The last `n` lines of a text file (empty if it cannot be read). Reads at most the last
/// 256 KiB, so a huge log costs nothing.
pub fn tail_file(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|s| (*s).to_owned()).collect()
}

/// The supervisor's log: `<root>/supervisor.log`, or the newest rotated `supervisor.log*`.
pub fn supervisor_log_file(paths: &dwbase_proto::Paths) -> Option<PathBuf> {
    let main = paths.supervisor_log();
    if main.is_file() {
        return Some(main);
    }
    std::fs::read_dir(&paths.root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("supervisor.log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// Prints the tail of the supervisor's log to stderr, for failures to start or to answer.
pub fn print_supervisor_log_tail(paths: &dwbase_proto::Paths, n: usize) {
    match supervisor_log_file(paths) {
        Some(log) => {
            let lines = tail_file(&log, n);
            if lines.is_empty() {
                eprintln!("(the supervisor log {} is empty)", log.display());
            } else {
                eprintln!("last lines of {}:", log.display());
                for l in lines {
                    eprintln!("  {l}");
                }
            }
        }
        None => eprintln!("(no supervisor log under {})", paths.root.display()),
    }
}

/// "1.2 MiB", "830 B".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_and_trims() {
        let mut t = Table::new(&["Node", "ID", "Port"]);
        t.row(vec!["A".into(), "node-a".into(), "7000".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Node  ID      Port\nA     node-a  7000\n");
    }

    #[test]
    fn humanized() {
        assert_eq!(humanize(Duration::from_secs(5)), "5s");
        assert_eq!(humanize(Duration::from_secs(65)), "1m 5s");
        assert_eq!(humanize(Duration::from_secs(3 * 3600 + 120)), "3h 2m");
        assert_eq!(humanize(Duration::from_secs(2 * 86_400 + 3600)), "2d 1h");
        assert_eq!(secs2(Duration::from_millis(420)), "0.42 s");
    }

    #[test]
    fn tail_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail_file(&p, 2), ["3", "4"]);
        assert!(tail_file(&dir.path().join("none"), 2).is_empty());
    }
}

/// One line of `logs --json`.
#[derive(Debug, serde::Serialize)]
struct LineJson<'a> {
    node: &'a str,
    /// RFC 3339 UTC.
    at: String,
    at_unix_ms: i64,
    text: &'a str,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// How lines are printed.
#[derive(Debug, Clone)]
pub struct Printer {
    /// Pad width of the `node | ` prefix; `None` prints the bare text (one node).
    pub prefix: Option<usize>,
    /// One JSON object per line.
    pub json: bool,
}

impl Printer {
    /// Prefixed when more than one node can appear.
    pub fn for_nodes(names: &[String], one: bool, json: bool) -> Self {
        let prefix = (!one && names.len() != 1)
            .then(|| names.iter().map(|n| n.chars().count()).max().unwrap_or(0));
        Self { prefix, json }
    }

    /// Writes one line.
    pub fn line(&self, out: &mut impl Write, l: &dwbase_proto::LogLine) -> io::Result<()> {
        if self.json {
            let doc = LineJson {
                node: &l.node,
                at: rfc3339(l.at_unix_ms),
                at_unix_ms: l.at_unix_ms,
                text: &l.text,
            };
            serde_json::to_writer(&mut *out, &doc)?;
            return writeln!(out);
        }
        match self.prefix {
            Some(w) => writeln!(out, "{:<w$} | {}", l.node, l.text),
            None => writeln!(out, "{}", l.text),
        }
    }
}
