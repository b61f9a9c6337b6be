//! `dwbase-logpipe`: the log pipe of one node (`dwbase-supervisor logpipe`) as a program of its
//! own. The supervisor runs one per node; linked without the daemon, the CLI and the node, it
//! has a fraction of their relocations, so each copy keeps far fewer private pages (issue 14:
//! the log pipes' memory at 50 nodes). The supervisor uses it when it sits beside it and falls
//! back to `dwbase-supervisor logpipe` otherwise; both take the same flags.
use clap::Parser;

/// Copies stdin to a timestamped, size-rotated log file (run by the supervisor).
#[derive(Debug, Parser)]
#[command(name = "dwbase-logpipe", version)]
struct Cli {
    #[command(flatten)]
    pipe: dwbase_supervisor::logs::LogpipeArgs,
}

fn main() -> std::process::ExitCode {
    dwbase_supervisor::logs::logpipe_main(Cli::parse().pipe)
}
