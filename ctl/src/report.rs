//! The status document: what `deploy status --json` prints (and the human table made from
//! it), built from a supervisor's report or, when none runs, from the state files.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use dwbase_proto::{Desired, ExitKind, NodeStatus, Paths, SupervisorInfo};
use serde::Serialize;

use crate::fallback;
use crate::output::{display_path, humanize, Table};

/// The JSON document of `deploy status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// The state root.
    pub root: PathBuf,
    /// The supervisor.
    pub supervisor: SupervisorJson,
    /// Every node.
    pub nodes: Vec<NodeJson>,
    /// What the operator should know (e.g. a state file that could not be read).
    pub warnings: Vec<String>,
}

impl StatusJson {
    /// Whether every node that should run is ready, under a running supervisor: what
    /// `deploy status` exits 0 for (3 otherwise).
    pub fn all_desired_ready(&self) -> bool {
        self.supervisor.running
            && self.nodes.iter().filter(|n| n.desired == Desired::Running).all(|n| n.ready)
    }
}

/// The supervisor part of [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct SupervisorJson {
    /// Whether it answered.
    pub running: bool,
    /// Its pid.
    pub pid: Option<u32>,
    /// Its build version.
    pub version: Option<String>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its metrics URL.
    pub metrics_url: Option<String>,
    /// When it started.
    pub started_unix_ms: Option<i64>,
    /// How long it has run.
    pub uptime_ms: Option<u64>,
    /// The state files read when it is not running.
    pub state_files: Vec<PathBuf>,
}

/// A node's last exit.
#[derive(Debug, Serialize)]
pub struct LastExitJson {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if killed.
    pub signal: Option<i32>,
    /// When.
    pub at_unix_ms: i64,
    /// Why: "unexpected" (it crashed or was killed by someone else), "requested" (a stop,
    /// restart or deploy), "liveness" (stopped by the supervisor after failed probes).
    pub cause: dwbase_proto::ExitCause,
}

/// A node's liveness probing.
#[derive(Debug, Serialize)]
pub struct LivenessJson {
    /// Probe period (0: off).
    pub period_ms: u64,
    /// Probe timeout.
    pub timeout_ms: u64,
    /// Failures in a row that restart the node.
    pub failures: u32,
    /// Failures in a row so far.
    pub failing: u32,
}

/// One node of [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct NodeJson {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// "devnet" or "local".
    pub group: dwbase_proto::Group,
    /// Pid.
    pub pid: Option<u32>,
    /// Port.
    pub port: u16,
    /// Base URL of its API on this machine: `http://127.0.0.1:7000`, or `https://…` when its
    /// config serves TLS.
    pub url: String,
    /// State word.
    pub state: String,
    /// Ready at the last probe.
    pub ready: bool,
    /// Restarts.
    pub restarts: u32,
    /// Uptime.
    pub uptime_ms: Option<u64>,
    /// Restart policy.
    pub restart_policy: dwbase_proto::RestartPolicy,
    /// Last exit.
    pub last_exit: Option<LastExitJson>,
    /// Node folder.
    pub dir: PathBuf,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Log file.
    pub log_path: PathBuf,
    /// Config file.
    pub config_path: PathBuf,
    /// Why it is not ready, or what went wrong last.
    pub message: Option<String>,
    /// Whether it should run ("running") or was stopped on purpose ("stopped").
    pub desired: Desired,
    /// Liveness probing (null when read from state.json).
    pub liveness: Option<LivenessJson>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn last_exit_json(e: &dwbase_proto::LastExit) -> LastExitJson {
    let (code, signal) = match e.kind {
        ExitKind::Code(c) => (Some(c), None),
        ExitKind::Signal(s) => (None, Some(s)),
        ExitKind::Unknown => (None, None),
    };
    LastExitJson { code, signal, at_unix_ms: e.at_unix_ms, cause: e.cause }
}

impl NodeJson {
    /// From a supervised node.
    pub fn from_status(n: &NodeStatus) -> Self {
        Self {
            name: n.name.clone(),
            id: n.id.clone(),
            group: n.group,
            pid: n.pid,
            port: n.port,
            url: n.url.clone(),
            state: n.state.as_str().to_owned(),
            ready: n.ready,
            restarts: n.restarts,
            uptime_ms: n.uptime_ms,
            restart_policy: n.restart_policy,
            last_exit: n.last_exit.as_ref().map(last_exit_json),
            dir: n.dir.clone(),
            data_dir: n.data_dir.clone(),
            log_path: n.log_path.clone(),
            config_path: n.config_path.clone(),
            message: n.message.clone(),
            desired: n.desired,
            liveness: Some(LivenessJson {
                period_ms: n.liveness.period_ms,
                timeout_ms: n.liveness.timeout_ms,
                failures: n.liveness.failures,
                failing: n.liveness_failures,
            }),
        }
    }
}

impl SupervisorJson {
    /// From a running supervisor.
    pub fn from_info(info: &SupervisorInfo) -> Self {
        Self {
            running: true,
            pid: Some(info.pid),
            version: Some(info.version.clone()),
            socket: info.socket.clone(),
            metrics_url: info.metrics_url.clone(),
            started_unix_ms: Some(info.started_unix_ms),
            uptime_ms: Some(now_ms().saturating_sub(info.started_unix_ms).max(0) as u64),
            state_files: Vec::new(),
        }
    }
}

/// The status as recorded in both state files, with every pid checked against /proc.
pub fn from_state_files(paths: &Paths) -> Result<StatusJson> {
    let groups = fallback::load_all(paths)?;
    let mut nodes = Vec::new();
    let mut state_files = Vec::new();
    let mut recorded_sup = None;
    for g in &groups {
        if g.present {
            state_files.push(g.path.clone());
        }
        if let Some(s) = &g.state.supervisor {
            recorded_sup.get_or_insert(s.clone());
        }
        for n in &g.state.nodes {
            let alive = fallback::node_liveness(n) == Some(dwbase_proto::process::Liveness::Alive);
            nodes.push(NodeJson {
                name: n.name.clone(),
                id: n.id.clone(),
                group: n.group,
                pid: n.pid,
                port: n.port,
                url: crate::httpclient::deployed_node(&n.config_path, n.port).0,
                state: fallback::node_state_word(n).to_owned(),
                ready: false,
                restarts: n.restarts,
                uptime_ms: None,
                restart_policy: n.restart_policy,
                last_exit: n.last_exit.as_ref().map(last_exit_json),
                dir: n.dir.clone(),
                data_dir: n.data_dir.clone(),
                log_path: n.log_path.clone(),
                config_path: n.config_path.clone(),
                message: (!alive && n.pid.is_some())
                    .then(|| "process not running (supervisor down)".to_owned()),
                desired: n.desired,
                liveness: None,
            });
        }
    }
    Ok(StatusJson {
        root: paths.root.clone(),
        supervisor: SupervisorJson {
            running: false,
            pid: None,
            version: recorded_sup.as_ref().map(|s| s.version.clone()).filter(|v| !v.is_empty()),
            socket: paths.socket(),
            metrics_url: None,
            started_unix_ms: None,
            uptime_ms: None,
            state_files,
        },
        nodes,
        warnings: Vec::new(),
    })
}

fn supervisor_line(s: &SupervisorJson) -> String {
    if !s.running {
        return if s.state_files.is_empty() {
            "supervisor: not running (nothing recorded)".to_owned()
        } else {
            let files: Vec<String> =
                s.state_files.iter().map(|p| p.display().to_string()).collect();
            format!("supervisor: not running (state from {})", files.join(", "))
        };
    }
    let mut line = format!(
        "supervisor: pid {}, dwbase {}, socket {}",
        s.pid.unwrap_or(0),
        s.version.as_deref().unwrap_or("?"),
        s.socket.display()
    );
    if let Some(url) = &s.metrics_url {
        line.push_str(&format!(", metrics {url}"));
    }
    if let Some(up) = s.uptime_ms {
        line.push_str(&format!(", up {}", humanize(Duration::from_millis(up))));
    }
    line
}

fn last_exit_word(e: &Option<LastExitJson>) -> String {
    let Some(e) = e else { return "-".into() };
    let what = match (e.code, e.signal) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    };
    match e.cause {
        dwbase_proto::ExitCause::Unexpected => what,
        cause => format!("{what} ({})", cause.as_str()),
    }
}

/// Writes the human table.
pub fn write_human(out: &mut impl Write, doc: &StatusJson) -> std::io::Result<()> {
    writeln!(out, "{}", supervisor_line(&doc.supervisor))?;
    if doc.nodes.is_empty() {
        writeln!(out, "no nodes deployed under {}", doc.root.display())?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "NODE",
        "ID",
        "PID",
        "PORT",
        "SCHEME",
        "STATE",
        "READY",
        "RESTARTS",
        "UPTIME",
        "LAST EXIT",
        "DATA DIR",
    ]);
    for n in &doc.nodes {
        t.row(vec![
            n.name.clone(),
            n.id.clone(),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.port.to_string(),
            n.url.split_once("://").map_or("http", |(scheme, _)| scheme).to_owned(),
            n.state.clone(),
            if doc.supervisor.running {
                if n.ready {
                    "yes"
                } else {
                    "no"
                }
            } else {
                "?"
            }
            .into(),
            n.restarts.to_string(),
            n.uptime_ms.map_or("-".into(), |u| humanize(Duration::from_millis(u))),
            last_exit_word(&n.last_exit),
            display_path(&n.data_dir).display().to_string(),
        ]);
    }
    t.write(out)?;
    for n in doc.nodes.iter().filter(|n| n.message.is_some() && n.state != "ready") {
        writeln!(out, "{}: {}", n.name, n.message.as_deref().unwrap_or_default())?;
    }
    for w in &doc.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
