//! The read-only status API beside `/metrics` on the supervisor's metrics listener
//! (`--metrics-addr`, loopback unless `--metrics-allow-remote`), for dashboards and scripts that
//! have no control-socket client:
//!
//! - `GET /v1/status`: the document of `dwbase deploy status --json`
//!   ([`dwbase_proto::status_doc::StatusJson`], JSON Schema `docs/status.schema.json`), built
//!   by the same [`StatusJson::from_report`] from the same report a `Status` request gets.
//! - `GET /v1/events`: server-sent events (`text/event-stream`) of the notices the control
//!   socket's `Events` request streams. The first event is `status` (the document above, to
//!   start from); then one event per notice, named by its kind (`added`, `spawned`, `adopted`,
//!   `state`, `exited`, `liveness-failed`, `rollout`, `removed`) with an
//!   [`EventJson`] as data; `dropped` (a [`DroppedJson`]) followed by a fresh `status` when
//!   the client read too slowly and events were left out; `end` when the supervisor shuts
//!   down. A comment line (`: keep-alive`) every [`KEEP_ALIVE`] (`--events-keepalive`) keeps proxies from closing an
//!   idle stream. Schema of every event's data: `docs/events.schema.json`.
//!
//! Only GET is served (405 otherwise, with `Allow`), unknown paths get 404: nothing here
//! changes a node. A stream holds one receiver of the runner's bounded event broadcast and no
//! task of its own: the runner never waits for a reader (a reader that falls behind loses the
//! oldest events and is told so), and a client that goes away drops its stream with the
//! connection (`dwbase_supervisor_event_streams` counts the open ones).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dwbase_proto::status_doc::{DroppedJson, EndJson, EventJson, StatusJson};
use dwbase_proto::Event;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::metrics::{ClientGuard, SupervisorMetrics};
use crate::runner::RunnerHandle;

/// How often an idle event stream gets a keep-alive comment, unless `--events-keepalive`.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the `/v1/…` routes need.
#[derive(Debug, Clone)]
pub struct StatusApi {
    /// The runner, asked for the report on each request (the same answer as a `Status`
    /// request on the control socket) and subscribed to for events.
    pub handle: RunnerHandle,
    /// The state root, as the document names it.
    pub root: PathBuf,
    /// Counts the open event streams.
    pub metrics: Arc<SupervisorMetrics>,
    /// Cancelled when the supervisor shuts down: every event stream ends with `end`.
    pub shutdown: CancellationToken,
    /// How often an idle stream gets a keep-alive comment.
    pub keep_alive: Duration,
}

impl StatusApi {
    /// The `/v1/…` routes, and a 404 naming the routes for any other path. Merge them with
    /// [`crate::metrics::router`].
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/status", get(status))
            .route("/v1/events", get(events))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "no such path: this listener serves GET /metrics, /healthz, /v1/status and /v1/events\n",
                )
            })
            .with_state(Arc::new(self))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

async fn status(State(api): State<Arc<StatusApi>>) -> Response {
    match api.handle.status().await {
        Ok(report) => Json(StatusJson::from_report(api.root.clone(), &report)).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn events(State(api): State<Arc<StatusApi>>) -> Response {
    // Subscribe first, so nothing between the snapshot and the first event is lost.
    let rx = api.handle.events();
    let first = match api.handle.status().await {
        Ok(report) => StatusJson::from_report(api.root.clone(), &report),
        Err(e) => return unavailable(e),
    };
    let guard = api.metrics.event_stream_guard();
    let frames = frames(api.clone(), rx, first, guard).map(|f| Ok::<_, Infallible>(f.to_sse()));
    Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(api.keep_alive).text("keep-alive"))
        .into_response()
}

/// One event of a `/v1/events` stream.
#[derive(Debug, Clone, PartialEq)]
// A frame lives from the broadcast to its write on one connection; boxing would only move
// the same bytes to the heap.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// `event: status`: the whole document.
    Status(StatusJson),
    /// A node notice, named by its kind.
    Node(EventJson),
    /// `event: dropped`: this many events were left out.
    Dropped(u64),
    /// `event: end`: the supervisor shuts down.
    End,
}

impl Frame {
    /// Its `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Node(e) => e.what.name(),
            Self::Dropped(_) => "dropped",
            Self::End => "end",
        }
    }

    fn to_sse(&self) -> SseEvent {
        let event = SseEvent::default().event(self.name());
        let event = match self {
            Self::Status(doc) => event.json_data(doc),
            Self::Node(e) => event.json_data(e),
            Self::Dropped(n) => event.json_data(DroppedJson {
                dropped: *n,
                message: format!(
                    "{n} events were left out because this client read too slowly; the status \
                     event that follows is current"
                ),
            }),
            Self::End => event.json_data(EndJson { reason: "supervisor-shutdown".into() }),
        };
        // Our own types always serialise; should one not, the client sees why.
        event.unwrap_or_else(|e| SseEvent::default().comment(format!("unencodable event: {e}")))
    }
}

struct Feed {
    api: Arc<StatusApi>,
    rx: broadcast::Receiver<Event>,
    pending: VecDeque<Frame>,
    done: bool,
    _open: ClientGuard,
}

/// The frames of one stream: `first`, then one per event of `rx` until the supervisor shuts
/// down. A receiver that lagged yields `Dropped` and a fresh `Status`. Polled only as fast as
/// the client reads; dropping it (the client went away) drops the receiver and the guard.
pub fn frames(
    api: Arc<StatusApi>,
    rx: broadcast::Receiver<Event>,
    first: StatusJson,
    open: ClientGuard,
) -> impl Stream<Item = Frame> + Send + 'static {
    let feed =
        Feed { api, rx, pending: VecDeque::from([Frame::Status(first)]), done: false, _open: open };
    futures::stream::unfold(feed, |mut f| async move {
        if let Some(frame) = f.pending.pop_front() {
            return Some((frame, f));
        }
        if f.done {
            return None;
        }
        let frame = tokio::select! {
            biased;
            _ = f.api.shutdown.cancelled() => {
                f.done = true;
                Frame::End
            }
            ev = f.rx.recv() => match ev {
                Ok(e) => Frame::Node(EventJson::from(&e)),
                Err(RecvError::Lagged(n)) => {
                    match f.api.handle.status().await {
                        Ok(report) => f.pending.push_back(Frame::Status(StatusJson::from_report(
                            f.api.root.clone(),
                            &report,
                        ))),
                        Err(_) => {
                            f.pending.push_back(Frame::End);
                            f.done = true;
                        }
                    }
                    Frame::Dropped(n)
                }
                Err(RecvError::Closed) => {
                    f.done = true;
                    Frame::End
                }
            },
        };
        Some((frame, f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::RestartRules;
    use crate::process::{Invocation, LogSink};
    use crate::runner::{Runner, RunnerConfig};

    /// A real runner on an empty root (no nodes), spawned.
    fn runner(root: &std::path::Path) -> RunnerHandle {
        let paths = dwbase_proto::Paths::new(root).unwrap();
        let cfg = RunnerConfig {
            paths: paths.clone(),
            node: Arc::new(Invocation::new("/nonexistent/dwbase-node")),
            sink: Arc::new(LogSink::Append),
            rules: RestartRules::default(),
            supervisor: dwbase_proto::SupervisorInfo {
                pid: std::process::id(),
                version: dwbase_proto::BUILD_VERSION.into(),
                root: paths.root.clone(),
                socket: paths.socket(),
                metrics_url: None,
                started_unix_ms: 0,
                startup: Default::default(),
            },
            supervisor_start_time: None,
            probe_fast: Duration::from_millis(250),
            probe_slow: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(1),
        };
        let (runner, handle) = Runner::new(cfg).unwrap();
        tokio::spawn(runner.run());
        handle
    }

    /// A stream whose reader stalls while the runner emits more than the broadcast holds:
    /// the runner is not held up, and the reader is told how many it lost, then gets the
    /// current status, then the events that are still there.
    #[tokio::test]
    async fn a_reader_that_falls_behind_is_told_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let handle = runner(dir.path());
        let metrics = Arc::new(SupervisorMetrics::new());
        let api = Arc::new(StatusApi {
            handle: handle.clone(),
            root: dir.path().to_owned(),
            metrics: metrics.clone(),
            shutdown: CancellationToken::new(),
            keep_alive: KEEP_ALIVE,
        });
        let rx = handle.events();
        let first = StatusJson::from_report(api.root.clone(), &handle.status().await.unwrap());
        let mut s = Box::pin(frames(api.clone(), rx, first, metrics.event_stream_guard()));
        assert!(metrics.encode().contains("dwbase_supervisor_event_streams 1"));
        assert!(matches!(s.next().await, Some(Frame::Status(_))));

        // Nobody reads the stream while 1100 notices go out (the broadcast holds 1024).
        for i in 0..1100 {
            handle.notice("node-x", format!("step {i}"));
        }
        // The runner answers in order: once status is back, every notice was sent.
        tokio::time::timeout(Duration::from_secs(10), handle.status()).await.unwrap().unwrap();

        match s.next().await {
            Some(Frame::Dropped(n)) => assert_eq!(n, 1100 - 1024),
            other => panic!("expected dropped, got {other:?}"),
        }
        assert!(matches!(s.next().await, Some(Frame::Status(_))));
        match s.next().await {
            Some(Frame::Node(e)) => {
                assert_eq!(e.node, "node-x");
                assert_eq!(
                    e.what,
                    dwbase_proto::status_doc::EventWhat::Rollout {
                        message: format!("step {}", 1100 - 1024)
                    }
                );
            }
            other => panic!("expected the oldest kept event, got {other:?}"),
        }

        // Shutdown ends the stream with `end`, after which it is over and uncounted.
        api.shutdown.cancel();
        let rest: Vec<Frame> = s.by_ref().collect().await;
        assert_eq!(rest.last(), Some(&Frame::End), "{} frames after the cancel", rest.len());
        drop(s);
        assert!(metrics.encode().contains("dwbase_supervisor_event_streams 0"));
    }
}
