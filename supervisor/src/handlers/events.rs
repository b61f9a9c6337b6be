//! `Events` → the status to start from, then one `Event` per change (spawned, exited, state
//! changes, liveness failures, rollout progress, added, removed) until the supervisor shuts
//! down (`SupervisorShutdown`), the connection is evicted (`Evicted`) or the client goes away.
//! A subscriber that falls behind gets a fresh `Status` instead of the events it missed.

use dwbase_proto::{EndOfStream, EventsSpec, Response};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::Flow;
use crate::server::{send, Conn, ConnState, ConnTokens, Ctx};

pub(super) async fn handle(
    ctx: &Ctx,
    spec: EventsSpec,
    conn: &mut Conn,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    // Subscribe first, so nothing between the snapshot and the first event is lost.
    let mut events = ctx.runner.events();
    let snapshot = |report: dwbase_proto::StatusReport| {
        let mut report = report;
        if let Some(g) = spec.group {
            report.nodes.retain(|n| n.group == g);
        }
        Response::Status(report)
    };
    match ctx.runner.status().await {
        Ok(r) => send(conn, &snapshot(r)).await?,
        Err(e) => {
            send(conn, &super::gone(e)).await?;
            return Ok(Flow::Close);
        }
    }
    ctx.conns.set(tokens.id, ConnState::Streaming);
    loop {
        tokio::select! {
            _ = tokens.shutdown.cancelled() => {
                send(conn, &Response::EndOfStream(EndOfStream::SupervisorShutdown)).await?;
                return Ok(Flow::Close);
            }
            _ = ctx.streams.cancelled() => {
                send(conn, &Response::EndOfStream(EndOfStream::SupervisorShutdown)).await?;
                return Ok(Flow::Close);
            }
            _ = tokens.evicted.cancelled() => {
                send(conn, &Response::EndOfStream(EndOfStream::Evicted)).await?;
                return Ok(Flow::Close);
            }
            ev = events.recv() => match ev {
                Ok(e) if spec.group.is_none_or(|g| g == e.group) => {
                    send(conn, &Response::Event(e)).await?;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => match ctx.runner.status().await {
                    Ok(r) => send(conn, &snapshot(r)).await?,
                    Err(_) => {
                        send(conn, &Response::EndOfStream(EndOfStream::SupervisorShutdown)).await?;
                        return Ok(Flow::Close);
                    }
                },
                Err(RecvError::Closed) => {
                    send(conn, &Response::EndOfStream(EndOfStream::SupervisorShutdown)).await?;
                    return Ok(Flow::Close);
                }
            },
            // A subscriber that hangs up (or speaks during a stream) is done.
            _ = conn.next() => return Ok(Flow::Close),
        }
    }
}
