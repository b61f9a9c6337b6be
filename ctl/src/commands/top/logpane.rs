//! The log pane: the selected node's log file, followed with the supervisor crate's
//! [`Follower`] (the reader behind `deploy logs -f`), so it goes on across node restarts (the
//! new log pipe appends to the same file) and rotations, with or without a supervisor.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use dwbase_supervisor::logs::Follower;

/// Lines kept in memory for scrolling back.
pub const KEEP: usize = 5000;
/// Lines read back from the file when a node is selected.
const BACKLOG: usize = 500;

/// The followed log and what it showed so far.
#[derive(Debug, Default)]
pub struct LogPane {
    node: Option<String>,
    path: PathBuf,
    follower: Option<Follower>,
    lines: VecDeque<(i64, String)>,
    /// Lines scrolled up from the newest (0: following the end).
    pub scroll: usize,
    /// Only lines containing this (case-insensitive); empty shows all.
    pub filter: String,
    /// Why the file cannot be read, if it cannot.
    pub error: Option<String>,
}

impl LogPane {
    /// The node shown, if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Shows `node`'s log at `path`: its last lines, then whatever is appended. Nothing
    /// changes if that log is already shown.
    pub fn show(&mut self, node: &str, path: &Path) {
        if self.node.as_deref() == Some(node) && self.path == path {
            return;
        }
        self.node = Some(node.to_owned());
        self.path = path.to_path_buf();
        self.lines.clear();
        self.scroll = 0;
        self.error = None;
        self.follower = match Follower::open_with_tail(path, Some(BACKLOG), None) {
            Ok((lines, f)) => {
                self.lines.extend(lines);
                Some(f)
            }
            Err(e) => {
                self.error = Some(format!("{}: {e}", path.display()));
                None
            }
        };
    }

    /// Shows nothing (no node selected).
    pub fn clear(&mut self) {
        *self = Self { filter: std::mem::take(&mut self.filter), ..Self::default() };
    }

    /// Reads what was appended; true if anything was.
    pub fn poll(&mut self) -> bool {
        let Some(f) = self.follower.as_mut() else {
            // A log that could not be opened (its folder not there yet): try again.
            if self.error.is_some() && self.node.is_some() {
                let (node, path) = (self.node.take().unwrap_or_default(), self.path.clone());
                self.show(&node, &path);
                return self.error.is_none();
            }
            return false;
        };
        match f.poll() {
            Ok(new) if new.is_empty() => false,
            Ok(new) => {
                let added = new.len();
                self.lines.extend(new);
                while self.lines.len() > KEEP {
                    self.lines.pop_front();
                }
                if self.scroll > 0 {
                    // Stay on the same lines while scrolled back.
                    self.scroll = (self.scroll + added).min(self.lines.len());
                }
                true
            }
            Err(e) => {
                self.error = Some(format!("{}: {e}", self.path.display()));
                true
            }
        }
    }

    /// The lines that pass the filter, oldest first.
    pub fn visible(&self) -> Vec<&(i64, String)> {
        if self.filter.is_empty() {
            return self.lines.iter().collect();
        }
        let needle = self.filter.to_lowercase();
        self.lines.iter().filter(|(_, t)| t.to_lowercase().contains(&needle)).collect()
    }

    /// Scrolls back (positive) or forward (negative) by `n` lines.
    pub fn scroll_by(&mut self, n: isize) {
        let max = self.visible().len();
        self.scroll = self.scroll.saturating_add_signed(n).min(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "2026-11-25T08:00:00.000Z {text}").unwrap();
    }

    #[test]
    fn follows_across_rotation_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        append(&log, "before");
        let mut pane = LogPane::default();
        pane.show("node-a", &log);
        assert_eq!(pane.visible().len(), 1);
        append(&log, "first Line");
        assert!(pane.poll());
        // Rotation as the log pipe does it: node.log → node.log.1, a new node.log.
        std::fs::rename(&log, dir.path().join("node.log.1")).unwrap();
        append(&log, "after rotation");
        assert!(pane.poll());
        let texts: Vec<&str> = pane.visible().iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["before", "first Line", "after rotation"]);
        pane.filter = "LINE".into();
        assert_eq!(pane.visible().len(), 1);
        assert!(!pane.poll(), "nothing new");
    }

    #[test]
    fn a_log_not_there_yet_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/node.log");
        let mut pane = LogPane::default();
        pane.show("node-a", &log);
        assert!(!pane.poll());
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        append(&log, "hello");
        pane.poll();
        let texts: Vec<&str> = pane.visible().iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["hello"]);
    }
}
