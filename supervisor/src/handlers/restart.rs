//! `Restart` → stop (if running) and spawn again, clearing a crash loop; answer once the new
//! process is spawned.

use std::time::Duration;

use dwbase_proto::{Done, ErrorKind, ErrorReply, NodeRef, Response};

use crate::server::Ctx;

/// Longest wait for the old process to stop and the new one to spawn.
const RESTART_LIMIT: Duration = Duration::from_secs(120);

pub(super) async fn handle(ctx: &Ctx, node: NodeRef) -> Response {
    let waiter = match ctx.runner.restart(node.node.clone()).await {
        Err(e) => return super::gone(e),
        Ok(Err(e)) => return Response::Error(e),
        Ok(Ok(w)) => w,
    };
    match tokio::time::timeout(RESTART_LIMIT, waiter).await {
        Ok(Ok(Ok(spawned))) => Response::Done(Done {
            message: format!("restarted {} (pid {})", node.node, spawned.pid),
        }),
        Ok(Ok(Err(msg))) => Response::Error(ErrorReply::new(
            ErrorKind::Process,
            format!("restarting {}: {msg}", node.node),
        )),
        Ok(Err(_)) => Response::Error(ErrorReply::new(
            ErrorKind::Process,
            format!("{} was stopped before it could restart", node.node),
        )),
        Err(_) => Response::Error(ErrorReply::new(
            ErrorKind::Process,
            format!("{} did not restart within {RESTART_LIMIT:?}", node.node),
        )),
    }
}
