//! The supervisor watcher: keeps the view's rows current, and switches to the state files
//! when the supervisor goes away (and back when it returns).

use std::time::Duration;

use dwbase_proto::{
    Client, ClientError, EndOfStream, Event, EventKind, EventsSpec, Paths, Request, Response,
    StatusReport,
};
use tokio::sync::mpsc::UnboundedSender;

use super::model::Update;
use crate::daemon;
use crate::report::{from_state_files, NodeJson, StatusJson};

/// How often, without a supervisor, the socket is tried again and the state files re-read.
pub const AWAY_RETRY: Duration = Duration::from_secs(1);

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

/// Feeds updates from a connected supervisor until the stream ends; returns why. The
/// supervisor's `Events` stream starts with a status snapshot (sent again if we fall behind),
/// then one event per change with the node's status after it: the view never asks on a timer,
/// so an idle supervisor is not woken by an open view.
async fn follow(paths: &Paths, mut client: Client, tx: &UnboundedSender<Update>) -> String {
    if let Err(e) = client.send(&Request::Events(EventsSpec { group: None })).await {
        return e.to_string();
    }
    loop {
        let update = match client.recv().await {
            Ok(Response::Status(report)) => {
                Update::Snapshot { doc: document(paths, &report), away: None }
            }
            Ok(Response::Event(ev)) => {
                if tx.send(Update::Note(describe(&ev))).is_err() {
                    return "view closed".into();
                }
                match &ev.status {
                    Some(n) => Update::Node(NodeJson::from_status(n)),
                    None => Update::Removed(ev.node.clone()),
                }
            }
            Ok(Response::EndOfStream(end)) => {
                return match end {
                    EndOfStream::SupervisorShutdown => "it shut down".into(),
                    EndOfStream::Evicted => "too many connections: it closed ours".into(),
                    EndOfStream::Failed(m) => m,
                    other => format!("{other:?}"),
                }
            }
            Ok(Response::Error(e)) => return e.message,
            Ok(other) => return format!("unexpected answer in the event stream: {other:?}"),
            Err(ClientError::Closed) => return "connection closed".into(),
            Err(e) => return e.to_string(),
        };
        if tx.send(update).is_err() {
            return "view closed".into();
        }
    }
}

/// The event line for the footer ("node-a: spawned, pid 12").
fn describe(ev: &Event) -> String {
    let what = match &ev.kind {
        EventKind::Added => "added".to_owned(),
        EventKind::Spawned { pid } => format!("spawned, pid {pid}"),
        EventKind::Adopted { pid } => format!("adopted, pid {pid}"),
        EventKind::State { from, to } => format!("{from} → {to}"),
        EventKind::Exited(e) => format!("exited ({})", e.kind),
        EventKind::LivenessFailed { failures, reason } => {
            format!("liveness probe failed ({failures} in a row): {reason}")
        }
        EventKind::Rollout(step) => format!("deploy: {step}"),
        EventKind::Removed => "removed".to_owned(),
    };
    format!("{}: {what}", ev.node)
}

/// The status document of a supervisor's report.
pub fn document(paths: &Paths, report: &StatusReport) -> StatusJson {
    StatusJson::from_report(paths.root.clone(), report)
}
