//! `dwbase deploy restart NODE`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dwbase_proto::{Client, ErrorKind, NodeRef, NodeState, Paths, Request, Response};

use crate::cli::RestartArgs;
use crate::commands::stop::check_names_recorded;
use crate::daemon::{self, SupervisorRefused};

/// How often the new process's readiness is asked for while waiting (a status answer costs
/// the supervisor ~0.1 ms).
const READY_POLL: Duration = Duration::from_millis(5);

/// `dwbase deploy restart NODE`: restarts it and, unless `--no-wait`, waits until the new
/// process is ready.
pub async fn restart(paths: &Paths, args: &RestartArgs, no_start: bool) -> Result<()> {
    let node = args.node.as_str();
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
            if args.no_wait {
                return Ok(());
            }
            wait_ready(&mut conn.client, node, args.timeout).await
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

/// Waits until `node`'s current process is ready; fails when it exits first (a crash, a
/// crash loop, stopped) or is not ready within `timeout`, with its state and last log lines.
async fn wait_ready(client: &mut Client, node: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let first = daemon::status(client).await?;
    let Some(n) = first.nodes.iter().find(|n| n.name == node) else {
        bail!("{node} is no longer deployed");
    };
    let (pid, restarts) = (n.pid, n.restarts);
    loop {
        let report = daemon::status(client).await?;
        let Some(n) = report.nodes.iter().find(|n| n.name == node) else {
            bail!("{node} was removed while waiting for it to be ready");
        };
        if n.ready && n.pid == pid {
            crate::outln!("{node} is ready ({} ms)", started.elapsed().as_millis())?;
            return Ok(());
        }
        let gone = n.pid != pid
            || n.restarts > restarts
            || matches!(n.state, NodeState::CrashLoop | NodeState::Backoff | NodeState::Stopped);
        if gone || started.elapsed() >= timeout {
            super::deploy::report_failure(std::slice::from_ref(n));
            if gone {
                bail!("{node} exited before it became ready ({})", n.state);
            }
            bail!(
                "{node} is not ready after {} ({}); `dwbase deploy logs {node}` shows why",
                humantime::format_duration(timeout),
                n.state
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
