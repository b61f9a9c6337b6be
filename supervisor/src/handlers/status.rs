//! `Status` → the supervisor and every node.

use dwbase_proto::Response;

use crate::server::Ctx;

pub(super) async fn handle(ctx: &Ctx) -> Response {
    match ctx.runner.status().await {
        Ok(report) => Response::Status(report),
        Err(e) => super::gone(e),
    }
}
