//! One handler per request kind. Each translates its request into runner commands and writes
//! the answer (or, for `Logs`, a stream of frames) to the connection.

mod deploy;
mod logs;
mod ping;
mod restart;
mod shutdown;
mod status;
mod stop;

use dwbase_proto::{ErrorReply, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::runner::Gone;
use crate::server::{send, Conn, Ctx};

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
    }
}

/// Serves one request.
pub async fn handle(
    req: Request,
    conn: &mut Conn,
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> std::io::Result<Flow> {
    tracing::debug!(kind = kind(&req), "request");
    let reply = match req {
        Request::Ping => ping::handle(ctx),
        Request::Status => status::handle(ctx).await,
        Request::DeployDevnet(spec) => deploy::devnet(ctx, spec).await,
        Request::DeployLocal(spec) => deploy::local(ctx, spec).await,
        Request::Restart(node) => restart::handle(ctx, node).await,
        Request::Stop(spec) => stop::handle(ctx, spec).await,
        Request::Shutdown(spec) => return shutdown::handle(ctx, spec, conn).await,
        Request::Logs(spec) => return logs::handle(ctx, spec, conn, shutdown).await,
    };
    send(conn, &reply).await?;
    Ok(Flow::Continue)
}

fn gone(_: Gone) -> Response {
    Response::Error(ErrorReply {
        kind: dwbase_proto::ErrorKind::Internal,
        message: "the supervisor is shutting down".into(),
    })
}
