//! The status document: what `deploy status --json` prints (and the human table made from
//! it), built from a supervisor's report or, when none runs, from the state files.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use dwbase_proto::Paths;

pub use dwbase_proto::status_doc::{LastExitJson, NodeJson, StatusJson, SupervisorJson};

use crate::fallback;
use crate::output::{display_path, humanize, Table};

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
                last_exit: n.last_exit.as_ref().map(LastExitJson::from),
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
    Ok(StatusJson::new(
        paths.root.clone(),
        SupervisorJson {
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
        Vec::new(),
    ))
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
    for n in doc.nodes.iter().filter(|n| n.state != "ready") {
        if let Some(m) = &n.message {
            writeln!(out, "{}: {m}", n.name)?;
        } else if let Some(reason) = n.last_exit.as_ref().and_then(|e| e.reason.as_deref()) {
            // Between two processes of a crash loop: why the last one ended.
            writeln!(out, "{}: last exit ({}): {reason}", n.name, last_exit_word(&n.last_exit))?;
        }
    }
    for w in &doc.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
