//! `Stop` → SIGTERM, wait, SIGKILL; answer only once every process is gone.

use dwbase_proto::{Done, Response, StopSpec};

use crate::server::Ctx;

pub(super) async fn handle(ctx: &Ctx, spec: StopSpec) -> Response {
    match ctx.runner.stop_and_wait(spec).await {
        Err(e) => super::gone(e),
        Ok(Err(e)) => Response::Error(e),
        Ok(Ok(nodes)) if nodes.is_empty() => {
            Response::Done(Done { message: "no nodes to stop".into() })
        }
        Ok(Ok(nodes)) => Response::Done(Done {
            message: format!(
                "stopped {} node{}: {}",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                nodes.join(", ")
            ),
        }),
    }
}
