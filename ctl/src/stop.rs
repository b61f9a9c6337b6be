//! `dwbase deploy stop`, `deploy restart` and `deploy clean`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dwbase_proto::state::DEFAULT_STOP_TIMEOUT_MS;
use dwbase_proto::{ClientError, ErrorKind, Group, NodeRef, Paths, Request, Response, StopSpec};

use crate::cli::{CleanArgs, StopArgs};
use crate::daemon::{self, SupervisorRefused};
use crate::fallback::{self, StopReport};
use crate::{logs, status, Usage};

/// `dwbase deploy stop`: through the supervisor if one answers, else by signal from
/// state.json. "Nothing to stop" is success.
pub async fn run(paths: &Paths, args: &StopArgs) -> Result<()> {
    let timeout_ms = args.timeout.map(|t| t.as_millis() as u64);
    match daemon::connect(paths).await {
        Ok(Some(mut client)) => {
            let report = status::fetch(&mut client).await?;
            let known: Vec<String> = report.nodes.iter().map(|n| n.name.clone()).collect();
            for n in &args.nodes {
                if !known.contains(n) {
                    bail!("{}", logs::unknown_node(n, &known));
                }
            }
            let running: Vec<String> = report
                .nodes
                .iter()
                .filter(|n| args.nodes.is_empty() || args.nodes.contains(&n.name))
                .filter(|n| n.pid.is_some())
                .map(|n| n.name.clone())
                .collect();
            // Stop with our timeout first (Shutdown carries none), then let the supervisor go.
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
                println!("no node was running");
            } else {
                println!("stopped {}", running.join(", "));
            }
            if args.nodes.is_empty() {
                daemon::shutdown(&mut client, &report.supervisor, true).await?;
                println!("supervisor (pid {}) exited", report.supervisor.pid);
            }
            Ok(())
        }
        Ok(None) => {
            check_names_recorded(paths, &args.nodes)?;
            let r =
                fallback::stop_by_signal(paths, &args.nodes, args.timeout, args.nodes.is_empty())
                    .await?;
            print_signal_report(&r);
            if r.failed.is_empty() {
                Ok(())
            } else {
                bail!("could not stop {}", r.failed.join(", "))
            }
        }
        Err(e @ ClientError::VersionMismatch { .. }) => {
            // Signals are version-independent: SIGTERM makes any supervisor stop its nodes
            // and exit; then sweep whatever is recorded.
            eprintln!("{e}");
            eprintln!("stopping by signal instead");
            let r =
                fallback::stop_by_signal(paths, &args.nodes, args.timeout, args.nodes.is_empty())
                    .await?;
            print_signal_report(&r);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn check_names_recorded(paths: &Paths, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = fallback::load_all(paths)?
        .into_iter()
        .flat_map(|g| g.state.nodes.into_iter().map(|n| n.name))
        .collect();
    for n in names {
        if !known.contains(n) {
            bail!("{}", logs::unknown_node(n, &known));
        }
    }
    Ok(())
}

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

fn print_signal_report(r: &StopReport) {
    if let Some(pid) = r.supervisor {
        println!("supervisor (pid {pid}) stopped by SIGTERM");
    }
    if r.stopped.is_empty() && r.supervisor.is_none() {
        println!("nothing to stop (supervisor not running, no recorded node alive)");
    } else if !r.stopped.is_empty() {
        println!("stopped {}", r.stopped.join(", "));
    }
    if !r.killed.is_empty() {
        println!("(needed SIGKILL: {})", r.killed.join(", "));
    }
    if !r.reused.is_empty() {
        println!("left alone (pid reused by another process): {}", r.reused.join(", "));
    }
}

/// `dwbase deploy restart NODE`.
pub async fn restart(paths: &Paths, node: &str) -> Result<()> {
    // Without a supervisor, start one only if the node is recorded: it adopts the running
    // nodes, then restarts this one.
    if daemon::connect(paths).await?.is_none() {
        check_names_recorded(paths, &[node.to_owned()])?;
    }
    let mut conn = daemon::ensure_supervisor(paths, &daemon::StartOptions::default()).await?;
    let req = Request::Restart(NodeRef { node: node.to_owned() });
    match daemon::request(&mut conn.client, &req, Duration::from_secs(120)).await {
        Ok(Response::Done(d)) => {
            println!("{}", d.message);
            Ok(())
        }
        Ok(other) => bail!("unexpected answer to Restart: {other:?}"),
        Err(e) => match e.downcast_ref::<SupervisorRefused>() {
            Some(SupervisorRefused(r)) if r.kind == ErrorKind::UnknownNode => {
                let report = status::fetch(&mut conn.client).await?;
                let known: Vec<String> = report.nodes.into_iter().map(|n| n.name).collect();
                bail!("{}", logs::unknown_node(node, &known))
            }
            _ => Err(e),
        },
    }
}

/// `dwbase deploy clean`: stop everything, then remove the devnet and local folders and the
/// supervisor's files (never anything else in the root).
pub async fn clean(paths: &Paths, args: &CleanArgs) -> Result<()> {
    if !args.yes {
        if std::io::stdin().is_terminal() {
            eprint!(
                "Stop every node and delete {}/{{devnet,local}} and the supervisor's files? [y/N] ",
                paths.root.display()
            );
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                eprintln!("nothing removed");
                return Err(crate::Silent(1).into());
            }
        } else {
            return Err(Usage(format!(
                "refusing to delete {} without --yes (this removes every node's data)",
                paths.root.display()
            ))
            .into());
        }
    }
    run(paths, &StopArgs { nodes: Vec::new(), timeout: None }).await?;
    let mut removed = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let dir = paths.group_dir(group);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(dir);
        }
    }
    let mut files =
        vec![paths.pid_file(), paths.root.join("supervisor.lock"), paths.preferred_socket()];
    if let Ok(entries) = std::fs::read_dir(&paths.root) {
        files.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("supervisor.log"))
                .map(|e| e.path()),
        );
    }
    for f in files {
        if std::fs::symlink_metadata(&f).is_ok() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            removed.push(f);
        }
    }
    // The root itself goes only if nothing else lives there.
    if std::fs::remove_dir(&paths.root).is_ok() {
        removed.push(paths.root.clone());
    }
    if removed.is_empty() {
        println!("nothing to remove under {}", paths.root.display());
    } else {
        for r in removed {
            println!("removed {}", r.display());
        }
    }
    Ok(())
}
