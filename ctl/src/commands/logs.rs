//! `dwbase deploy logs`: through the supervisor's `Logs` stream, or straight from the files
//! when no supervisor runs.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use dwbase_proto::{Client, ClientError, EndOfStream, LogsSpec, Paths, Request, Response};

use crate::cli::LogsArgs;
use crate::output::Printer;
use crate::{daemon, fallback, Silent};

/// `--since`: a duration ago ("10m") or an RFC 3339 time, as Unix milliseconds.
pub fn parse_since(s: &str) -> Result<i64> {
    if let Ok(t) =
        time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
    {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let d = crate::cli::parse_duration(s).map_err(|e| {
        crate::Usage(format!("--since {s:?}: expected a duration (10m) or an RFC 3339 time: {e}"))
    })?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    Ok(now as i64 - d.as_millis() as i64)
}

/// `dwbase deploy logs`.
pub async fn run(paths: &Paths, args: LogsArgs, no_start: bool) -> Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    match daemon::attach(paths, no_start).await? {
        Ok(mut client) => {
            // Names only size the prefix column; an unknown node is the supervisor's to say.
            let report = daemon::status(&mut client).await?;
            let names: Vec<String> = report.nodes.iter().map(|n| n.name.clone()).collect();
            stream(&mut client, args.node, args.tail, args.follow, since, &names, args.json).await
        }
        Err(offline) => {
            offline.warn();
            from_files(paths, &args, since).await
        }
    }
}

/// Streams `Logs` to stdout until its end. `NodeStopped` ends a follow successfully (with a
/// note on stderr); `SupervisorShutdown` or a broken connection is "supervisor went away".
pub async fn stream(
    client: &mut Client,
    node: Option<String>,
    tail: Option<u32>,
    follow: bool,
    since_unix_ms: Option<i64>,
    names: &[String],
    json: bool,
) -> Result<()> {
    let printer = Printer::for_nodes(names, node.is_some(), json);
    client.send(&Request::Logs(LogsSpec { node, tail, follow, since_unix_ms })).await?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    loop {
        // Flush before blocking, so a follower sees lines as they come.
        let next = match tokio::time::timeout(Duration::from_millis(20), client.recv()).await {
            Ok(r) => r,
            Err(_) => {
                flush_or_quit(&mut out)?;
                client.recv().await
            }
        };
        match next {
            Ok(Response::LogLine(l)) => {
                if let Err(e) = printer.line(&mut out, &l) {
                    return broken_pipe_is_ok(e);
                }
            }
            Ok(Response::EndOfStream(end)) => {
                flush_or_quit(&mut out)?;
                return match end {
                    EndOfStream::Done => Ok(()),
                    EndOfStream::NodeStopped => {
                        eprintln!("the followed node(s) stopped");
                        Ok(())
                    }
                    EndOfStream::SupervisorShutdown => {
                        eprintln!("supervisor went away (it shut down)");
                        Err(Silent(1).into())
                    }
                    EndOfStream::Evicted => {
                        eprintln!(
                            "the supervisor closed this stream: too many connections were open \
                             and this one was the oldest idle one"
                        );
                        Err(Silent(1).into())
                    }
                    EndOfStream::Failed(m) => Err(anyhow!("the log stream failed: {m}")),
                };
            }
            Ok(Response::Error(e)) => {
                flush_or_quit(&mut out)?;
                bail!("{}", e.message)
            }
            Ok(other) => bail!("unexpected answer in a log stream: {other:?}"),
            Err(ClientError::Closed) | Err(ClientError::Io { .. }) => {
                flush_or_quit(&mut out)?;
                eprintln!("supervisor went away (the connection broke)");
                return Err(Silent(1).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn flush_or_quit(out: &mut impl Write) -> Result<()> {
    out.flush().or_else(broken_pipe_is_ok)
}

/// `dwbase deploy logs | head` closes our stdout: that is a normal end, not an error.
fn broken_pipe_is_ok(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Err(Silent(0).into())
    } else {
        Err(e.into())
    }
}

/// Reads the node log files directly (no supervisor), with the supervisor crate's reader.
async fn from_files(paths: &Paths, args: &LogsArgs, since: Option<i64>) -> Result<()> {
    let groups = fallback::load_all(paths)?;
    let nodes: Vec<(String, std::path::PathBuf)> = groups
        .iter()
        .flat_map(|g| g.state.nodes.iter())
        .map(|n| (n.name.clone(), n.log_path.clone()))
        .collect();
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let chosen: Vec<(String, std::path::PathBuf)> = match &args.node {
        Some(node) => match nodes.iter().find(|(n, _)| n == node) {
            Some(x) => vec![x.clone()],
            None => {
                let known: Vec<&str> = names.iter().map(String::as_str).collect();
                bail!("{}", dwbase_proto::unknown_node_message(node, &known))
            }
        },
        None => nodes,
    };
    if chosen.is_empty() {
        eprintln!("no nodes deployed under {}", paths.root.display());
        return Ok(());
    }
    eprintln!("(supervisor not running: reading the log files directly)");
    let printer = Printer::for_nodes(&names, args.node.is_some(), args.json);
    crate::filelogs::print(&chosen, args.tail, args.follow, since, &printer).await
}
