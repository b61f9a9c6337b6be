//! One handler per request kind. Each translates its request into runner commands and writes
//! the answer (or, for `Logs`, a stream of frames) to the connection.

mod deploy;
mod events;
mod logs;
mod ping;
mod restart;
mod shutdown;
mod status;
mod stop;

use dwbase_proto::{ErrorReply, Request, Response};

use crate::runner::Gone;
use crate::server::{send, Conn, ConnTokens, Ctx};

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    Continue,
    /// Close the connection.
    Close,
}

/// The request kind as a metrics label.
pub fn kind(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Status => "status",
        Request::DeployDevnet(_) => "deploy-devnet",
        Request::DeployLocal(_) => "deploy-local",
        Request::Restart(_) => "restart",
        Request::Stop(_) => "stop",
        Request::Shutdown(_) => "shutdown",
        Request::Logs(_) => "logs",
        Request::Events(_) => "events",
    }
}

/// Serves one request.
pub async fn handle(
    req: Request,
    conn: &mut Conn,
    ctx: &Ctx,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    tracing::debug!(kind = kind(&req), "request");
    // The long-running handlers (a rollout, a log or event stream, a shutdown) are boxed: their
    // state machines would otherwise be inlined into every connection's task, which tokio
    // allocates (and copies) whole for each connection — for one `deploy status` too.
    let reply = match req {
        Request::Ping => ping::handle(ctx).await,
        Request::Status => status::handle(ctx).await,
        Request::DeployDevnet(spec) => {
            return Box::pin(deploy::devnet(ctx, spec, conn, tokens)).await
        }
        Request::DeployLocal(spec) => {
            return Box::pin(deploy::local(ctx, spec, conn, tokens)).await
        }
        Request::Restart(node) => restart::handle(ctx, node).await,
        Request::Stop(spec) => stop::handle(ctx, spec).await,
        Request::Shutdown(spec) => return Box::pin(shutdown::handle(ctx, spec, conn)).await,
        Request::Logs(spec) => return Box::pin(logs::handle(ctx, spec, conn, tokens)).await,
        Request::Events(spec) => return Box::pin(events::handle(ctx, spec, conn, tokens)).await,
    };
    send(conn, &reply).await?;
    Ok(Flow::Continue)
}

fn gone(g: Gone) -> Response {
    Response::Error(ErrorReply::from(g))
}
