//! Node logs read straight from the files, for `deploy logs` without a supervisor, with the
//! supervisor crate's reader (the same code that serves `Request::Logs`).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Result;
use dwbase_supervisor::logs::{merge_by_time, tail, Follower, MultiFollower};

use crate::output::Printer;

/// Prints the chosen nodes' lines interleaved by time, then follows the files if asked (until
/// Ctrl+C or a closed stdout: without a supervisor nothing says when a node stopped).
pub async fn print(
    nodes: &[(String, PathBuf)],
    tail_n: Option<u32>,
    follow: bool,
    since: Option<i64>,
    printer: &Printer,
) -> Result<()> {
    let n = tail_n.map(|n| n as usize);
    let mut per_node = Vec::with_capacity(nodes.len());
    let mut followers = MultiFollower::new();
    for (name, path) in nodes {
        if follow {
            let (lines, f) = Follower::open_with_tail(path, n, since)?;
            per_node.push((name.clone(), lines));
            followers.add(name.clone(), f);
        } else {
            per_node.push((name.clone(), tail(path, n, since)?));
        }
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut write = |lines: Vec<dwbase_proto::LogLine>| -> io::Result<()> {
        for l in &lines {
            printer.line(&mut out, l)?;
        }
        out.flush()
    };
    let mut result = write(merge_by_time(per_node));
    while result.is_ok() && follow {
        result = match followers.next_batch().await {
            Ok(batch) => write(batch),
            Err(e) => return Err(e.into()),
        };
    }
    match result {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
