//! `Logs` → the last lines of one node or all (interleaved by time), then, with `follow`, new
//! lines as they are written — across rotation and restarts — until the followed nodes are
//! stopped (`EndOfStream::NodeStopped`), the supervisor exits (`SupervisorShutdown`) or the
//! client goes away.

use std::collections::HashSet;
use std::time::Duration;

use dwbase_proto::{EndOfStream, LogLine, LogsSpec, Response};
use dwbase_proto::{EventKind, NodeState};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::Flow;
use crate::logs::{merge_by_time, tail, Follower, MultiFollower};
use crate::server::{send, Conn, ConnState, ConnTokens, Ctx};

/// After the last followed node stopped, how long its log pipe gets to write the last lines.
const FINAL_GRACE: Duration = Duration::from_millis(300);

async fn send_lines(conn: &mut Conn, lines: Vec<LogLine>) -> std::io::Result<()> {
    for line in lines {
        send(conn, &Response::LogLine(line)).await?;
    }
    Ok(())
}

async fn finish_on_shutdown(conn: &mut Conn, follow: &mut MultiFollower) -> std::io::Result<Flow> {
    if let Ok(lines) = follow.poll() {
        send_lines(conn, lines).await?;
    }
    end(conn, EndOfStream::SupervisorShutdown).await?;
    Ok(Flow::Close)
}

async fn end(conn: &mut Conn, why: EndOfStream) -> std::io::Result<()> {
    send(conn, &Response::EndOfStream(why)).await
}

pub(super) async fn handle(
    ctx: &Ctx,
    spec: LogsSpec,
    conn: &mut Conn,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    // Subscribe before looking at the nodes, so no stop between the two is missed.
    let mut notices = ctx.runner.events();
    let targets = match ctx.runner.log_targets(spec.node.clone()).await {
        Err(e) => {
            send(conn, &super::gone(e)).await?;
            return Ok(Flow::Close);
        }
        Ok(Err(e)) => {
            send(conn, &Response::Error(e)).await?;
            return Ok(Flow::Continue);
        }
        Ok(Ok(t)) => t,
    };
    let n = spec.tail.map(|n| n as usize);
    if !spec.follow {
        let mut per_node = Vec::with_capacity(targets.len());
        for t in &targets {
            match tail(&t.log_path, n, spec.since_unix_ms) {
                Ok(lines) => per_node.push((t.name.clone(), lines)),
                Err(e) => {
                    end(conn, EndOfStream::Failed(format!("{}: {e}", t.log_path.display())))
                        .await?;
                    return Ok(Flow::Continue);
                }
            }
        }
        send_lines(conn, merge_by_time(per_node)).await?;
        end(conn, EndOfStream::Done).await?;
        return Ok(Flow::Continue);
    }

    let followed: HashSet<String> = targets.iter().map(|t| t.name.clone()).collect();
    let mut running: HashSet<String> =
        targets.iter().filter(|t| t.running).map(|t| t.name.clone()).collect();
    let mut per_node = Vec::with_capacity(targets.len());
    let mut follow = MultiFollower::new();
    for t in &targets {
        match Follower::open_with_tail(&t.log_path, n, spec.since_unix_ms) {
            Ok((lines, f)) => {
                per_node.push((t.name.clone(), lines));
                follow.add(t.name.clone(), f);
            }
            Err(e) => {
                end(conn, EndOfStream::Failed(format!("{}: {e}", t.log_path.display()))).await?;
                return Ok(Flow::Continue);
            }
        }
    }
    send_lines(conn, merge_by_time(per_node)).await?;
    if running.is_empty() {
        end(conn, EndOfStream::NodeStopped).await?;
        return Ok(Flow::Continue);
    }
    ctx.conns.set(tokens.id, ConnState::Streaming);
    loop {
        tokio::select! {
            _ = tokens.shutdown.cancelled() => {
                return finish_on_shutdown(conn, &mut follow).await;
            }
            _ = tokens.evicted.cancelled() => {
                end(conn, EndOfStream::Evicted).await?;
                return Ok(Flow::Close);
            }
            _ = ctx.streams.cancelled() => {
                return finish_on_shutdown(conn, &mut follow).await;
            }
            batch = follow.next_batch() => match batch {
                Ok(lines) => send_lines(conn, lines).await?,
                Err(e) => {
                    end(conn, EndOfStream::Failed(e.to_string())).await?;
                    return Ok(Flow::Continue);
                }
            },
            notice = notices.recv() => match notice.map(|e| (e.node, e.kind)) {
                Ok((name, EventKind::State { to: NodeState::Stopped, .. } | EventKind::Removed))
                    if followed.contains(&name) =>
                {
                    running.remove(&name);
                    if running.is_empty() {
                        tokio::time::sleep(FINAL_GRACE).await;
                        if let Ok(lines) = follow.poll() {
                            send_lines(conn, lines).await?;
                        }
                        end(conn, EndOfStream::NodeStopped).await?;
                        return Ok(Flow::Continue);
                    }
                }
                Ok((name, EventKind::Spawned { .. })) if followed.contains(&name) => {
                    running.insert(name);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {
                    end(conn, EndOfStream::SupervisorShutdown).await?;
                    return Ok(Flow::Close);
                }
            },
            // A follower's client that hangs up (or speaks during a stream) is done.
            _ = conn.next() => return Ok(Flow::Close),
        }
    }
}
