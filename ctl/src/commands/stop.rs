//! `dwbase deploy stop`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use dwbase_proto::state::DEFAULT_STOP_TIMEOUT_MS;
use dwbase_proto::{ClientError, Desired, Paths, Request, StopSpec};

use crate::cli::StopArgs;
use crate::daemon;
use crate::fallback::{self, StopReport};

/// `dwbase deploy stop`: through the supervisor (started first when nodes are recorded and
/// none runs: it is the one owner of the nodes), else — `--no-start`, or no supervisor can
/// start — by signal from state.json while holding the root lock. "Nothing to stop" is
/// success; a node that could not be stopped is a failure.
pub async fn run(paths: &Paths, args: &StopArgs, no_start: bool) -> Result<()> {
    let timeout_ms = args.timeout.map(|t| t.as_millis() as u64);
    match daemon::attach(paths, no_start).await {
        Ok(Ok(mut client)) => {
            let report = daemon::status(&mut client).await?;
            // The supervisor checks the names; asking first keeps "stopped …" truthful.
            let running: Vec<String> = report
                .nodes
                .iter()
                .filter(|n| args.nodes.is_empty() || args.nodes.contains(&n.name))
                .filter(|n| n.pid.is_some() || n.desired == Desired::Running)
                .map(|n| n.name.clone())
                .collect();
            let grace = timeout_ms.unwrap_or_else(|| max_recorded_grace(paths));
            let req =
                Request::Stop(StopSpec { nodes: args.nodes.clone(), group: None, timeout_ms });
            daemon::request(
                &mut client,
                &req,
                Duration::from_millis(grace) + Duration::from_secs(30),
            )
            .await
            .context("stopping the nodes")?;
            if running.is_empty() {
                crate::outln!("no node was running")?;
            } else {
                crate::outln!("stopped {}", running.join(", "))?;
            }
            if args.nodes.is_empty() {
                daemon::shutdown(&mut client, &report.supervisor, true).await?;
                crate::outln!("supervisor (pid {}) exited", report.supervisor.pid)?;
            }
            Ok(())
        }
        Ok(Err(offline)) => {
            offline.warn();
            if !paths.root.exists() {
                check_names_recorded(paths, &args.nodes)?;
                crate::outln!("nothing to stop (nothing deployed under {})", paths.root.display())?;
                return Ok(());
            }
            check_names_recorded(paths, &args.nodes)?;
            by_signal(paths, args).await
        }
        Err(e) => match e.downcast::<ClientError>() {
            Ok(e @ ClientError::VersionMismatch { .. }) => {
                // Signals are version-independent: SIGTERM makes any supervisor stop its
                // nodes and exit; then sweep whatever is recorded.
                eprintln!("{e}");
                eprintln!("stopping by signal instead");
                by_signal(paths, args).await
            }
            Ok(e) => Err(e.into()),
            Err(e) => Err(e),
        },
    }
}

/// Stops the recorded nodes by signal (and, without names, a recorded supervisor that does
/// not answer), holding the root lock; fails if one could not be stopped.
async fn by_signal(paths: &Paths, args: &StopArgs) -> Result<()> {
    let r =
        fallback::stop_by_signal(paths, &args.nodes, args.timeout, args.nodes.is_empty()).await?;
    print_signal_report(&r)?;
    if r.failed.is_empty() {
        Ok(())
    } else {
        bail!("could not stop {}", r.failed.join(", "))
    }
}

/// Refuses names that no state file records (when no supervisor can check them).
pub(crate) fn check_names_recorded(paths: &Paths, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = fallback::load_all(paths)?
        .into_iter()
        .flat_map(|g| g.state.nodes.into_iter().map(|n| n.name))
        .collect();
    for n in names {
        if !known.contains(n) {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            bail!("{}", dwbase_proto::unknown_node_message(n, &known));
        }
    }
    Ok(())
}

/// The longest stop grace recorded (the Stop request may take that long).
fn max_recorded_grace(paths: &Paths) -> u64 {
    fallback::load_all(paths)
        .map(|gs| {
            gs.iter()
                .flat_map(|g| g.state.nodes.iter().map(|n| n.stop_timeout_ms))
                .max()
                .unwrap_or(DEFAULT_STOP_TIMEOUT_MS)
        })
        .unwrap_or(DEFAULT_STOP_TIMEOUT_MS)
}

fn print_signal_report(r: &StopReport) -> Result<()> {
    if let Some(pid) = r.supervisor {
        crate::outln!("supervisor (pid {pid}) stopped by SIGTERM")?;
    }
    if r.stopped.is_empty() && r.supervisor.is_none() {
        crate::outln!("nothing to stop (supervisor not running, no recorded node alive)")?;
    } else if !r.stopped.is_empty() {
        crate::outln!("stopped {}", r.stopped.join(", "))?;
    }
    if !r.killed.is_empty() {
        crate::outln!("(needed SIGKILL: {})", r.killed.join(", "))?;
    }
    if !r.reused.is_empty() {
        crate::outln!("left alone (pid reused by another process): {}", r.reused.join(", "))?;
    }
    Ok(())
}
