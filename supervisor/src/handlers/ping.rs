//! `Ping` → `Pong`, with what the supervisor found when it started.

use dwbase_proto::Response;

use crate::server::Ctx;

pub(super) async fn handle(ctx: &Ctx) -> Response {
    match ctx.runner.status().await {
        Ok(report) => Response::Pong(report.supervisor),
        Err(_) => Response::Pong(ctx.info.clone()),
    }
}
