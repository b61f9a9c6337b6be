//! `Ping` → `Pong`.

use dwbase_proto::Response;

use crate::server::Ctx;

pub(super) fn handle(ctx: &Ctx) -> Response {
    Response::Pong(ctx.info.clone())
}
