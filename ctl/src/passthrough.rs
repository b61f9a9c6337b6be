//! `dwbase node run …` and `dwbase supervisor run …`: the other two programs inside this one,
//! for single-binary installs. The arguments are parsed by their own command lines, so the
//! flags and `--help` are exactly those of `dwbase-node` and `dwbase-supervisor`.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

/// Runs a node with `args` (as `dwbase-node` would).
pub fn node(args: Vec<OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("dwbase node run")).chain(args);
    match dwbase_node::cli::NodeArgs::try_parse_from(argv) {
        Ok(a) => dwbase_node::cli::run(a),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}

/// Runs `dwbase-supervisor SUBCOMMAND args` in this process (`run`, or the hidden `logpipe`
/// that the supervisor spawns as `dwbase supervisor logpipe …` in single-binary mode).
pub fn supervisor(subcommand: &str, args: Vec<OsString>) -> ExitCode {
    let argv =
        [OsString::from("dwbase supervisor"), OsString::from(subcommand)].into_iter().chain(args);
    match dwbase_supervisor::cli::SupervisorArgs::try_parse_from(argv) {
        Ok(a) => dwbase_supervisor::cli::run_cli(a),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}
