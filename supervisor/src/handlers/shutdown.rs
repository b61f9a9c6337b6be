//! `Shutdown` → optionally stop every node, answer `Done`, then make the supervisor exit.

use dwbase_proto::{Done, Response, ShutdownSpec, StopSpec};

use super::Flow;
use crate::server::{send, Conn, Ctx};

pub(super) async fn handle(
    ctx: &Ctx,
    spec: ShutdownSpec,
    conn: &mut Conn,
) -> std::io::Result<Flow> {
    let reply = if spec.stop_nodes {
        ctx.streams.cancel();
        let all = StopSpec { nodes: vec![], group: None, timeout_ms: None };
        match ctx.runner.stop_and_wait(all).await {
            Err(e) => super::gone(e),
            Ok(Err(e)) => Response::Error(e),
            Ok(Ok(nodes)) => Response::Done(Done {
                message: format!("stopped {} node(s); the supervisor exits", nodes.len()),
            }),
        }
    } else {
        Response::Done(Done {
            message: "the supervisor exits; nodes keep running for the next one to adopt".into(),
        })
    };
    let ok = matches!(reply, Response::Done(_));
    let sent = send(conn, &reply).await;
    if ok {
        ctx.exit.request(spec.stop_nodes);
    }
    sent.map(|()| Flow::Close)
}
