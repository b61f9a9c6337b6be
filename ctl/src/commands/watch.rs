//! `dwbase deploy status --watch [--interval D]`: the plain status table printed again every
//! interval, for dumb terminals and scripts (the live view is `deploy top`). On a terminal
//! that can (`TERM` set and not `dumb`) each round clears the screen and redraws; elsewhere
//! the rounds follow each other, each after a `--- <time> ---` line. With `--json`, one
//! status document per line. Ends on Ctrl+C (exit 0) or when stdout is closed.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use dwbase_proto::Paths;

use crate::report::write_human;

/// Runs until Ctrl+C or a closed stdout.
pub async fn run(paths: &Paths, interval: Duration, json: bool, no_start: bool) -> Result<()> {
    if interval < Duration::from_millis(100) {
        return Err(
            crate::Usage(format!("--interval {interval:?} is too short (at least 100ms)")).into()
        );
    }
    let redraw = !json && std::io::stdout().is_terminal() && can_redraw();
    loop {
        let doc = super::status::document(paths, no_start).await?;
        let mut text = Vec::new();
        if json {
            serde_json::to_writer(&mut text, &doc)?;
            writeln!(text)?;
        } else {
            if redraw {
                // Home and clear, then the table: one write, so the screen never shows half.
                text.extend_from_slice(b"\x1b[H\x1b[2J");
            } else {
                writeln!(text, "--- {} ---", now_rfc3339())?;
            }
            write_human(&mut text, &doc)?;
            if redraw {
                writeln!(text, "\n(every {}; Ctrl+C ends)", humantime::format_duration(interval))?;
            }
        }
        crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&text)))?;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn can_redraw() -> bool {
    std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
