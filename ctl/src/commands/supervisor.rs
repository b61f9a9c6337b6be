//! `dwbase supervisor restart`: replace the supervisor, keeping the nodes running.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use dwbase_proto::{ClientError, Paths};

use crate::daemon::{self, StartOptions};
use crate::fallback::signal_supervisor;
use dwbase_proto::process::Signal;

/// Asks the running supervisor to exit without stopping its nodes (`Shutdown{stop_nodes:
/// false}`, or SIGUSR1 when it speaks another protocol), waits for it to go, and starts a new
/// one, which adopts the nodes. Prints both pids.
pub async fn restart(paths: &Paths, metrics_addr: Option<SocketAddr>) -> Result<()> {
    let mut keep_metrics = None;
    let old = match daemon::connect(paths).await {
        Ok(Some(mut client)) => {
            let info = daemon::ping(&mut client).await?;
            keep_metrics = info
                .metrics_url
                .as_deref()
                .and_then(|u| u.strip_prefix("http://"))
                .and_then(|u| u.split('/').next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            daemon::shutdown(&mut client, &info, false).await?;
            Some(info.pid)
        }
        Ok(None) => None,
        Err(ClientError::VersionMismatch { .. }) => {
            let Some((pid, start)) = daemon::recorded_supervisor(paths) else {
                bail!(
                    "the supervisor speaks another protocol and its pid is not recorded in the \
                     state files; stop it by hand (its pid is in {})",
                    paths.pid_file().display()
                );
            };
            eprintln!(
                "the running supervisor (pid {pid}) speaks another protocol: sending SIGUSR1"
            );
            signal_supervisor(pid, Signal::SIGUSR1);
            if !daemon::wait_gone(pid, start, daemon::EXIT_DEADLINE).await {
                bail!("the supervisor (pid {pid}) did not exit after SIGUSR1");
            }
            Some(pid)
        }
        Err(e) => return Err(e.into()),
    };
    let opts = StartOptions { metrics_addr: metrics_addr.or(keep_metrics), foreground: false };
    let mut conn = daemon::ensure_supervisor(paths, &opts).await?;
    let info = daemon::ping(&mut conn.client).await?;
    match old {
        Some(old) => println!(
            "supervisor restarted: pid {old} → pid {} (dwbase {}); the nodes kept running",
            info.pid, info.version
        ),
        None => println!(
            "no supervisor was running; started pid {} (dwbase {})",
            info.pid, info.version
        ),
    }
    Ok(())
}
