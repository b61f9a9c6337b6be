//! Small helpers for what the CLI prints: tables, durations, paths, log tails.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    match std::env::current_dir() {
        Ok(cwd) => match path.strip_prefix(&cwd) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
            _ => path.to_path_buf(),
        },
        Err(_) => path.to_path_buf(),
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
