//! `dwbase deploy restart NODE`.

use std::time::Duration;

use anyhow::{bail, Result};
use dwbase_proto::{ErrorKind, NodeRef, Paths, Request, Response};

use crate::commands::stop::check_names_recorded;
use crate::daemon::{self, SupervisorRefused};

/// `dwbase deploy restart NODE`.
pub async fn restart(paths: &Paths, node: &str, no_start: bool) -> Result<()> {
    // Without a supervisor, start one only if the node is recorded: it adopts the running
    // nodes, then restarts this one.
    if daemon::connect(paths).await?.is_none() {
        check_names_recorded(paths, &[node.to_owned()])?;
        if no_start {
            bail!(
                "no supervisor runs for {} and --no-start was given: a restart needs the \
                 supervisor (it owns the nodes)",
                paths.root.display()
            );
        }
    }
    let mut conn = daemon::ensure_supervisor(paths, &daemon::StartOptions::default()).await?;
    let req = Request::Restart(NodeRef { node: node.to_owned() });
    match daemon::request(&mut conn.client, &req, Duration::from_secs(120)).await {
        Ok(Response::Done(d)) => {
            crate::outln!("{}", d.message)?;
            Ok(())
        }
        Ok(other) => bail!("unexpected answer to Restart: {other:?}"),
        Err(e) => match e.downcast_ref::<SupervisorRefused>() {
            Some(SupervisorRefused(r)) if r.kind == ErrorKind::UnknownNode => {
                bail!("{}", r.message)
            }
            _ => Err(e),
        },
    }
}
