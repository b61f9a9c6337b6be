//! The supervisor watcher: keeps the view's rows current, and switches to the state files
//! when the supervisor goes away (and back when it returns).

use std::time::Duration;

use dwbase_proto::{Client, Paths, StatusReport};
use tokio::sync::mpsc::UnboundedSender;

use super::model::Update;
use crate::daemon;
use crate::report::{from_state_files, NodeJson, StatusJson, SupervisorJson};

/// How often, without a supervisor, the socket is tried again and the state files re-read.
pub const AWAY_RETRY: Duration = Duration::from_secs(1);

/// How often a supervisor is asked for its status.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Runs until the receiver is dropped.
pub async fn run(paths: Paths, tx: UnboundedSender<Update>) {
    let mut away_reason = None::<String>;
    loop {
        match daemon::connect(&paths).await {
            Ok(Some(client)) => {
                if away_reason.take().is_some() {
                    let _ = tx.send(Update::Note("supervisor is back: live view resumed".into()));
                }
                let why = follow(&paths, client, &tx).await;
                if tx.is_closed() {
                    return;
                }
                let _ = tx.send(Update::Note(format!("supervisor went away ({why})")));
                away_reason = Some("connection lost".into());
            }
            Ok(None) => {
                away_reason.get_or_insert_with(|| "not running".into());
            }
            Err(e) => {
                away_reason = Some(e.to_string());
            }
        }
        let reason = away_reason.clone().unwrap_or_default();
        let update = match from_state_files(&paths) {
            Ok(doc) => Update::Snapshot { doc, away: Some(reason) },
            Err(e) => Update::Note(format!("reading the state files: {e:#}")),
        };
        if tx.send(update).is_err() {
            return;
        }
        tokio::time::sleep(AWAY_RETRY).await;
    }
}

/// Feeds updates from a connected supervisor until the connection breaks; returns why. The
/// first answer is a snapshot; after it, only the nodes that changed are sent (as the
/// supervisor's events will carry them), with a note of what changed.
async fn follow(paths: &Paths, mut client: Client, tx: &UnboundedSender<Update>) -> String {
    let mut last: Option<StatusJson> = None;
    loop {
        let report = match daemon::status(&mut client).await {
            Ok(r) => r,
            Err(e) => return format!("{e:#}"),
        };
        let doc = document(paths, &report);
        let sent = match &last {
            None => tx.send(Update::Snapshot { doc: document(paths, &report), away: None }),
            Some(before) => {
                let mut sent = Ok(());
                for note in changes(Some(before), &doc) {
                    sent = sent.and(tx.send(Update::Note(note)));
                }
                for n in report.nodes.iter().map(NodeJson::from_status) {
                    if !before.nodes.iter().any(|o| same(o, &n)) {
                        sent = sent.and(tx.send(Update::Node(n)));
                    }
                }
                for o in before.nodes.iter().filter(|o| !doc.nodes.iter().any(|n| n.name == o.name))
                {
                    sent = sent.and(tx.send(Update::Removed(o.name.clone())));
                }
                sent
            }
        };
        if sent.is_err() {
            return "view closed".into();
        }
        last = Some(doc);
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// Whether two reports of a node show the same (uptime aside, which the view counts itself).
fn same(a: &NodeJson, b: &NodeJson) -> bool {
    let exit = |n: &NodeJson| n.last_exit.as_ref().map(|e| (e.code, e.signal, e.at_unix_ms));
    a.name == b.name
        && a.pid == b.pid
        && a.state == b.state
        && a.ready == b.ready
        && a.restarts == b.restarts
        && a.port == b.port
        && exit(a) == exit(b)
        && a.message == b.message
        && a.log_path == b.log_path
}

/// The status document of a supervisor's report.
pub fn document(paths: &Paths, report: &StatusReport) -> StatusJson {
    StatusJson {
        root: paths.root.clone(),
        supervisor: SupervisorJson::from_info(&report.supervisor),
        nodes: report.nodes.iter().map(NodeJson::from_status).collect(),
    }
}

/// What changed between two documents, as event lines ("node-a: ready → starting, pid 12").
pub fn changes(before: Option<&StatusJson>, after: &StatusJson) -> Vec<String> {
    let Some(before) = before else { return Vec::new() };
    let mut out = Vec::new();
    for n in &after.nodes {
        match before.nodes.iter().find(|o| o.name == n.name) {
            None => out.push(format!("{}: added", n.name)),
            Some(o) => {
                if o.pid != n.pid {
                    if let Some(pid) = n.pid {
                        out.push(format!("{}: spawned, pid {pid}", n.name));
                    } else {
                        out.push(format!("{}: exited", n.name));
                    }
                }
                if o.state != n.state {
                    out.push(format!("{}: {} → {}", n.name, o.state, n.state));
                }
            }
        }
    }
    for o in &before.nodes {
        if !after.nodes.iter().any(|n| n.name == o.name) {
            out.push(format!("{}: removed", o.name));
        }
    }
    out
}
