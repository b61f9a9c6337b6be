//! What the view shows and how keys change it: no terminal and no I/O here, so every key
//! can be tested as a plain function call.

use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use dwbase_proto::state::Desired;
use dwbase_proto::Group;

use super::logpane::LogPane;
use super::sample::{Figures, Target};
use crate::report::{LastExitJson, NodeJson, StatusJson};

/// One node's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Name (node-a, …).
    pub name: String,
    /// Devnet or local.
    pub group: Group,
    /// State word (the supervisor's, or alive/dead/… from state.json).
    pub state: String,
    /// Ready at the last probe (`None`: not known without a supervisor).
    pub ready: Option<bool>,
    /// Process id.
    pub pid: Option<u32>,
    /// HTTP port.
    pub port: u16,
    /// Base URL of its API (`http://…` or `https://…`).
    pub url: String,
    /// Its config file (where a deployment's CA is found from).
    pub config_path: PathBuf,
    /// Restarts.
    pub restarts: u32,
    /// Uptime when this row was last updated, and when that was.
    pub uptime: Option<(u64, Instant)>,
    /// Last exit, as words.
    pub last_exit: String,
    /// Its log file.
    pub log_path: PathBuf,
    /// Why it is not ready, or what went wrong last.
    pub message: Option<String>,
    /// Stopped on purpose (`deploy stop NODE`, or `s` here).
    pub stopped_on_purpose: bool,
    /// What `top` measured.
    pub figures: Figures,
}

impl Row {
    /// From a node of the status document.
    pub fn from_json(n: &NodeJson, supervised: bool, now: Instant) -> Self {
        Self {
            name: n.name.clone(),
            group: n.group,
            state: n.state.clone(),
            ready: supervised.then_some(n.ready),
            pid: n.pid,
            port: n.port,
            url: n.url.clone(),
            config_path: n.config_path.clone(),
            restarts: n.restarts,
            uptime: n.uptime_ms.map(|u| (u, now)),
            last_exit: last_exit_words(n.last_exit.as_ref()),
            log_path: n.log_path.clone(),
            message: n.message.clone(),
            stopped_on_purpose: n.desired == Desired::Stopped,
            figures: Figures::default(),
        }
    }

    /// Uptime now, in milliseconds.
    pub fn uptime_ms(&self, now: Instant) -> Option<u64> {
        self.uptime.map(|(ms, at)| ms + now.saturating_duration_since(at).as_millis() as u64)
    }

    /// Whether the node is stopped (so `s` starts it).
    pub fn is_stopped(&self) -> bool {
        self.pid.is_none()
            && (self.stopped_on_purpose || matches!(self.state.as_str(), "stopped" | "dead"))
    }
}

fn last_exit_words(e: Option<&LastExitJson>) -> String {
    match e {
        None => "-".into(),
        Some(LastExitJson { code: Some(c), .. }) => format!("exit {c}"),
        Some(LastExitJson { signal: Some(s), .. }) => format!("signal {s}"),
        Some(_) => "unknown".into(),
    }
}

/// Where the rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Nothing read yet.
    Connecting,
    /// A supervisor answers.
    Supervisor {
        /// Its pid.
        pid: u32,
        /// Its version.
        version: String,
        /// When it started (Unix ms).
        started_unix_ms: i64,
    },
    /// No supervisor: the state files, read since `since` (Unix ms).
    StateFiles {
        /// Why (not running, connection broke, …).
        reason: String,
        /// When the supervisor went away (as far as we saw).
        since_unix_ms: i64,
        /// The files read.
        files: Vec<PathBuf>,
    },
}

/// A change of what the view knows, from the supervisor watcher.
#[derive(Debug)]
pub enum Update {
    /// Everything, from a supervisor (or the state files when `doc.supervisor.running` is
    /// false, with why).
    Snapshot {
        /// The document.
        doc: StatusJson,
        /// Why no supervisor answered (state-file snapshots only).
        away: Option<String>,
    },
    /// One node changed (a supervisor event).
    Node(NodeJson),
    /// One node is gone.
    Removed(String),
    /// Something happened, for the event line.
    Note(String),
}

/// A key press waiting for y/n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Restart this node.
    Restart(String),
    /// Stop this node.
    Stop(String),
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Keys act.
    Normal,
    /// A destructive key waits for y.
    Confirm(Confirm),
    /// `/`: typing a log filter.
    Filter(String),
    /// `?`: the key list.
    Help,
}

/// Which pane the arrows move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The node table.
    Table,
    /// The log.
    Log,
}

/// What a key asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Nothing beyond redrawing.
    None,
    /// Leave.
    Quit,
    /// Ask the supervisor to restart (or start) this node.
    Restart(String),
    /// Ask the supervisor to stop this node.
    Stop(String),
}

/// The whole view.
#[derive(Debug)]
pub struct Model {
    /// The rows, in the supervisor's order (devnet by name, then local).
    pub rows: Vec<Row>,
    /// Selected row.
    pub selected: usize,
    /// Where the rows come from.
    pub source: Source,
    /// The keyboard.
    pub mode: Mode,
    /// Which pane the arrows move.
    pub focus: Focus,
    /// The selected node's log.
    pub log: LogPane,
    /// The last thing that happened (event, action result), and whether it is an error.
    pub note: Option<(String, bool)>,
    /// An action in flight ("restarting node-a").
    pub busy: Option<String>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            selected: 0,
            source: Source::Connecting,
            mode: Mode::Normal,
            focus: Focus::Table,
            log: LogPane::default(),
            note: None,
            busy: None,
        }
    }
}

impl Model {
    /// The selected row.
    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    /// Whether a supervisor answers (actions need one).
    pub fn supervised(&self) -> bool {
        matches!(self.source, Source::Supervisor { .. })
    }

    /// What the sampler should look at.
    pub fn targets(&self) -> Vec<Target> {
        self.rows
            .iter()
            .map(|r| Target {
                name: r.name.clone(),
                pid: r.pid,
                url: r.url.clone(),
                config_path: r.config_path.clone(),
            })
            .collect()
    }

    /// Takes in a change. Rows keep their measured figures while their pid stays.
    pub fn apply(&mut self, update: Update, now: Instant) {
        match update {
            Update::Snapshot { doc, away } => {
                let selected = self.selected_row().map(|r| r.name.clone());
                let supervised = doc.supervisor.running;
                self.source = match away {
                    None if supervised => Source::Supervisor {
                        pid: doc.supervisor.pid.unwrap_or(0),
                        version: doc.supervisor.version.clone().unwrap_or_default(),
                        started_unix_ms: doc.supervisor.started_unix_ms.unwrap_or(0),
                    },
                    reason => {
                        let since_unix_ms = match &self.source {
                            Source::StateFiles { since_unix_ms, .. } => *since_unix_ms,
                            _ => now_unix_ms(),
                        };
                        Source::StateFiles {
                            reason: reason.unwrap_or_else(|| "not running".into()),
                            since_unix_ms,
                            files: doc.supervisor.state_files.clone(),
                        }
                    }
                };
                let old = std::mem::take(&mut self.rows);
                self.rows = doc
                    .nodes
                    .iter()
                    .map(|n| {
                        let mut row = Row::from_json(n, supervised, now);
                        if let Some(o) = old.iter().find(|o| o.name == row.name && o.pid == row.pid)
                        {
                            row.figures = o.figures;
                        }
                        row
                    })
                    .collect();
                self.reselect(selected);
            }
            Update::Node(n) => {
                let supervised = self.supervised();
                let mut row = Row::from_json(&n, supervised, now);
                match self.rows.iter_mut().find(|r| r.name == row.name) {
                    Some(r) => {
                        if r.pid == row.pid {
                            row.figures = r.figures;
                        }
                        *r = row;
                    }
                    None => {
                        let selected = self.selected_row().map(|r| r.name.clone());
                        self.rows.push(row);
                        self.rows.sort_by(|a, b| {
                            (a.group != Group::Devnet, &a.name)
                                .cmp(&(b.group != Group::Devnet, &b.name))
                        });
                        self.reselect(selected);
                    }
                }
            }
            Update::Removed(name) => {
                let selected = self.selected_row().map(|r| r.name.clone());
                self.rows.retain(|r| r.name != name);
                self.reselect(selected);
            }
            Update::Note(text) => self.note = Some((text, false)),
        }
        self.follow_selected();
    }

    /// Takes in what the sampler measured.
    pub fn apply_figures(&mut self, figures: Vec<(String, Figures)>) {
        for (name, f) in figures {
            if let Some(r) = self.rows.iter_mut().find(|r| r.name == name) {
                r.figures = f;
            }
        }
    }

    fn reselect(&mut self, name: Option<String>) {
        if let Some(i) = name.and_then(|n| self.rows.iter().position(|r| r.name == n)) {
            self.selected = i;
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    /// Points the log pane at the selected node.
    pub fn follow_selected(&mut self) {
        match self.rows.get(self.selected) {
            Some(r) => {
                let (name, path) = (r.name.clone(), r.log_path.clone());
                self.log.show(&name, &path);
            }
            None => self.log.clear(),
        }
    }

    fn select(&mut self, delta: isize) {
        if self.rows.is_empty() {
            return;
        }
        let last = self.rows.len() - 1;
        self.selected = self.selected.saturating_add_signed(delta).min(last);
        self.follow_selected();
    }

    /// One key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Command {
        if key.kind == KeyEventKind::Release {
            return Command::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Command::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Help => Command::None,
            Mode::Confirm(c) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => match c {
                    Confirm::Restart(n) => Command::Restart(n),
                    Confirm::Stop(n) => Command::Stop(n),
                },
                _ => {
                    self.note = Some(("cancelled".into(), false));
                    Command::None
                }
            },
            Mode::Filter(mut text) => {
                match key.code {
                    KeyCode::Enter => {
                        self.log.filter = text;
                        self.log.scroll = 0;
                    }
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Filter(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::Filter(text);
                    }
                    _ => self.mode = Mode::Filter(text),
                }
                Command::None
            }
            Mode::Normal => self.normal_key(key),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Command {
        let page = 10;
        match (key.code, self.focus) {
            (KeyCode::Char('q'), _) => return Command::Quit,
            (KeyCode::Char('?'), _) => self.mode = Mode::Help,
            (KeyCode::Char('/'), _) => self.mode = Mode::Filter(self.log.filter.clone()),
            (KeyCode::Char('l'), Focus::Table) => self.focus = Focus::Log,
            (KeyCode::Char('l') | KeyCode::Esc, Focus::Log) => {
                self.focus = Focus::Table;
                self.log.scroll = 0;
            }
            (KeyCode::Esc, Focus::Table) => {
                if self.log.filter.is_empty() {
                    self.note = None;
                } else {
                    self.log.filter.clear();
                }
            }
            (KeyCode::Up | KeyCode::Char('k'), Focus::Table) => self.select(-1),
            (KeyCode::Down | KeyCode::Char('j'), Focus::Table) => self.select(1),
            (KeyCode::Home | KeyCode::Char('g'), Focus::Table) => self.select(isize::MIN / 2),
            (KeyCode::End | KeyCode::Char('G'), Focus::Table) => self.select(isize::MAX / 2),
            (KeyCode::Up | KeyCode::Char('k'), Focus::Log) => self.log.scroll_by(1),
            (KeyCode::Down | KeyCode::Char('j'), Focus::Log) => self.log.scroll_by(-1),
            (KeyCode::PageUp, _) => self.log.scroll_by(page),
            (KeyCode::PageDown, _) => self.log.scroll_by(-page),
            (KeyCode::Home | KeyCode::Char('g'), Focus::Log) => self.log.scroll_by(isize::MAX / 2),
            (KeyCode::End | KeyCode::Char('G'), Focus::Log) => self.log.scroll = 0,
            (KeyCode::Char('r'), _) => return self.ask(|n| Confirm::Restart(n.name.clone())),
            (KeyCode::Char('s'), _) => {
                if let Some(r) = self.selected_row().filter(|r| r.is_stopped()) {
                    // Starting is not destructive: no question.
                    let name = r.name.clone();
                    if self.refuse_without_supervisor() {
                        return Command::None;
                    }
                    return Command::Restart(name);
                }
                return self.ask(|n| Confirm::Stop(n.name.clone()));
            }
            _ => {}
        }
        Command::None
    }

    /// Enters the y/n question for the selected node.
    fn ask(&mut self, what: impl FnOnce(&Row) -> Confirm) -> Command {
        if self.refuse_without_supervisor() {
            return Command::None;
        }
        let Some(row) = self.selected_row() else {
            self.note = Some(("no node selected".into(), true));
            return Command::None;
        };
        self.mode = Mode::Confirm(what(row));
        Command::None
    }

    fn refuse_without_supervisor(&mut self) -> bool {
        if self.supervised() {
            return false;
        }
        self.note = Some((
            "no supervisor: restart and stop need one (this view resumes when it is back)".into(),
            true,
        ));
        true
    }
}

/// Now, in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SupervisorJson;

    fn node(name: &str, pid: Option<u32>, state: &str) -> NodeJson {
        NodeJson {
            name: name.into(),
            id: name.into(),
            group: Group::Devnet,
            pid,
            port: 7000,
            url: "http://127.0.0.1:7000".into(),
            state: state.into(),
            ready: state == "ready",
            restarts: 0,
            uptime_ms: pid.map(|_| 1000),
            restart_policy: dwbase_proto::RestartPolicy::Always,
            last_exit: None,
            dir: "/nonexistent".into(),
            data_dir: "/nonexistent/data".into(),
            log_path: format!("/nonexistent/{name}/node.log").into(),
            config_path: "/nonexistent/config.toml".into(),
            message: None,
            desired: if state == "stopped" { Desired::Stopped } else { Desired::Running },
            liveness: None,
        }
    }

    fn doc(running: bool, nodes: Vec<NodeJson>) -> StatusJson {
        StatusJson::new(
            "/r".into(),
            SupervisorJson {
                running,
                pid: running.then_some(42),
                version: Some("0.2.0".into()),
                socket: "/r/supervisor.sock".into(),
                metrics_url: None,
                started_unix_ms: Some(0),
                uptime_ms: Some(0),
                state_files: vec![],
            },
            nodes,
            vec![],
        )
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn model(running: bool) -> Model {
        let mut m = Model::default();
        let nodes = vec![
            node("node-a", Some(10), "ready"),
            node("node-b", Some(11), "ready"),
            node("node-c", None, "stopped"),
        ];
        m.apply(Update::Snapshot { doc: doc(running, nodes), away: None }, Instant::now());
        m
    }

    #[test]
    fn arrows_and_jk_select_and_the_log_follows() {
        let mut m = model(true);
        assert_eq!(m.log.node(), Some("node-a"));
        m.on_key(key('j'));
        m.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        m.on_key(key('j'));
        assert_eq!(m.selected_row().unwrap().name, "node-c", "stops at the last row");
        m.on_key(key('k'));
        assert_eq!(m.selected_row().unwrap().name, "node-b");
        assert_eq!(m.log.node(), Some("node-b"));
    }

    #[test]
    fn restart_and_stop_ask_first_start_does_not() {
        let mut m = model(true);
        assert_eq!(m.on_key(key('r')), Command::None);
        assert_eq!(m.mode, Mode::Confirm(Confirm::Restart("node-a".into())));
        assert_eq!(m.on_key(key('y')), Command::Restart("node-a".into()));
        assert_eq!(m.on_key(key('s')), Command::None);
        assert_eq!(m.on_key(key('n')), Command::None, "anything but y cancels");
        assert_eq!(m.mode, Mode::Normal);
        m.on_key(key('G'));
        assert_eq!(m.on_key(key('s')), Command::Restart("node-c".into()), "start a stopped node");
    }

    #[test]
    fn without_a_supervisor_actions_are_refused_and_it_resumes() {
        let mut m = model(false);
        let away = Update::Snapshot { doc: doc(false, vec![]), away: Some("not running".into()) };
        m.apply(away, Instant::now());
        assert!(matches!(m.source, Source::StateFiles { .. }));
        assert_eq!(m.on_key(key('r')), Command::None);
        assert_eq!(m.mode, Mode::Normal);
        assert!(m.note.as_ref().unwrap().1, "an error note");
        let back =
            Update::Snapshot { doc: doc(true, vec![node("node-a", Some(5), "ready")]), away: None };
        m.apply(back, Instant::now());
        assert!(m.supervised());
        m.on_key(key('r'));
        assert_eq!(m.on_key(key('y')), Command::Restart("node-a".into()));
    }

    #[test]
    fn filter_is_typed_applied_and_cleared() {
        let mut m = model(true);
        m.on_key(key('/'));
        for c in "errx".chars() {
            m.on_key(key(c));
        }
        m.on_key(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE));
        assert_eq!(m.mode, Mode::Filter("err".into()));
        m.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(m.log.filter, "err");
        assert_eq!(m.on_key(key('q')), Command::Quit, "q quits once the filter is applied");
        m.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        assert_eq!(m.log.filter, "");
    }

    #[test]
    fn help_and_log_focus() {
        let mut m = model(true);
        m.on_key(key('?'));
        assert_eq!(m.mode, Mode::Help);
        assert_eq!(m.on_key(key('q')), Command::None, "a key closes the help");
        m.on_key(key('l'));
        assert_eq!(m.focus, Focus::Log);
        m.on_key(key('j'));
        assert_eq!(m.selected_row().unwrap().name, "node-a", "arrows scroll the log now");
        m.on_key(key('l'));
        assert_eq!(m.focus, Focus::Table);
    }

    #[test]
    fn events_update_one_row_and_keep_the_selection() {
        let mut m = model(true);
        m.on_key(key('j'));
        let now = Instant::now();
        m.apply(Update::Node(node("node-a", Some(99), "starting")), now);
        m.apply(Update::Node(node("node-0", Some(1), "starting")), now);
        assert_eq!(m.rows[0].name, "node-0");
        assert_eq!(m.selected_row().unwrap().name, "node-b");
        m.apply(Update::Removed("node-b".into()), now);
        assert_eq!(m.rows.len(), 3);
        assert_eq!(m.rows.iter().find(|r| r.name == "node-a").unwrap().pid, Some(99));
    }
}
