//! `dwbase`: deploy and operate DWBase nodes.
//!
//! A thin client of the supervisor daemon (`dwbase-supervisor`), which it starts in the
//! background when a command needs one. Logs go to stderr, data to stdout, `--json` gives
//! machine output. Exit codes: 0 success, 1 failure, 2 usage.

mod atomic;
mod cli;
mod commands;
mod daemon;
mod fallback;
mod filelogs;
mod httpclient;
mod keyfile;
mod nodeapi;
mod nodes;
mod output;
mod passthrough;
mod progress;
mod report;
mod signals;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command, DeployCommand, NodeCommand, SupervisorCommand};

/// A usage error found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Exit with this code; whatever needed saying was printed already.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct Silent(pub u8);

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(status) = LeanStatus::parse(&argv[1.min(argv.len())..]) {
        return lean_status(status);
    }
    // clap's own help and errors follow --color too, so look for it before parsing.
    let color = dwbase_node::term::ColorWhen::from_args(argv.iter().cloned());
    let matches = Cli::command().color(color.clap()).get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // These two hand the process over to the node or supervisor, which set up their own
    // logging and runtime.
    match cli.command {
        Command::Supervisor(SupervisorCommand::Run { args }) => {
            return passthrough::supervisor("run", args)
        }
        Command::Supervisor(SupervisorCommand::Logpipe { args }) => {
            return passthrough::supervisor("logpipe", args)
        }
        Command::Node(NodeCommand::Run { args }) => return passthrough::node(args),
        _ => {}
    }
    init_tracing(cli.verbose, cli.color);
    nodeapi::set_global_api(cli.api);
    httpclient::set_global(cli.tls);
    run_to_exit(dispatch(cli.command, cli.no_start))
}

/// `dwbase deploy status [--json] [--no-start]`, the command operators and scripts run most
/// often, recognised without building the whole clap command tree (about a millisecond of
/// the process's life: issue 14). Any other spelling — another flag, a repeated one, `-v`,
/// `--color`, `--help`, `--watch` — goes through clap as before, so behaviour is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeanStatus {
    json: bool,
    no_start: bool,
}

impl LeanStatus {
    fn parse(args: &[std::ffi::OsString]) -> Option<Self> {
        let mut words = 0;
        let (mut json, mut no_start) = (false, false);
        for arg in args {
            match (arg.to_str()?, words) {
                ("deploy", 0) | ("status", 1) => words += 1,
                ("--json", 2) if !json => json = true,
                ("--no-start", _) if !no_start => no_start = true,
                _ => return None,
            }
        }
        (words == 2).then_some(Self { json, no_start })
    }
}

fn lean_status(status: LeanStatus) -> ExitCode {
    init_tracing(0, dwbase_node::term::ColorWhen::Auto);
    run_to_exit(async move {
        let paths = root_paths()?;
        commands::status::run(&paths, status.json, status.no_start).await
    })
}

/// Runs a command on a current-thread runtime and turns its outcome into the exit code.
fn run_to_exit(command: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Silent(code)) = e.downcast_ref::<Silent>() {
                return ExitCode::from(*code);
            }
            // `dwbase … | head` closing our stdout is how a reader says "enough". Only that:
            // a broken control socket is a failure like any other.
            if e.chain().any(|c| c.is::<output::StdoutClosed>()) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", error_text(&e));
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn root_paths() -> anyhow::Result<dwbase_proto::Paths> {
    dwbase_proto::Paths::from_env()
        .map_err(|e| anyhow::anyhow!("finding the state root (DWBASE_DATA_DIR or ./.dwbase): {e}"))
}

async fn dispatch(command: Command, no_start: bool) -> anyhow::Result<()> {
    let paths = root_paths()?;
    tracing::debug!(root = %paths.root.display(), socket = %paths.socket().display(), "state root");
    match command {
        Command::Deploy(cmd) => match cmd {
            DeployCommand::Devnet(a) => commands::deploy::devnet(&paths, a).await,
            DeployCommand::Local(a) => commands::deploy::local(&paths, a).await,
            DeployCommand::Status(a) if a.watch => {
                commands::watch::run(&paths, a.interval, a.json, no_start).await
            }
            DeployCommand::Status(a) => commands::status::run(&paths, a.json, no_start).await,
            DeployCommand::Logs(a) => commands::logs::run(&paths, a, no_start).await,
            DeployCommand::Top(a) => commands::top::run(&paths, a).await,
            DeployCommand::Restart(a) => commands::restart::restart(&paths, &a, no_start).await,
            DeployCommand::Stop(a) => commands::stop::run(&paths, &a, no_start).await,
            DeployCommand::Clean(a) => commands::clean::clean(&paths, &a, no_start).await,
            DeployCommand::K8s(a) => commands::k8s::run(a),
            DeployCommand::InstallService(a) => commands::install_service::run(a),
        },
        Command::Backup(cmd) => commands::backup::run(&paths, cmd).await,
        Command::Test(cmd) => commands::soak::run(cmd).await,
        Command::Bundle(cmd) => commands::bundle::run(cmd),
        Command::Completions(a) => commands::completions::completions(&a),
        Command::Man(a) => commands::completions::man(&a),
        Command::Storage(cmd) => commands::storage::run(&paths, cmd).await,
        Command::ListWorlds(a) => commands::atoms::list_worlds(&paths, a).await,
        Command::Ask(a) => commands::atoms::ask(&paths, a).await,
        Command::Replay(a) => commands::atoms::replay(&paths, a).await,
        Command::Inspect(a) => commands::atoms::inspect(&paths, a).await,
        Command::Remember(a) => commands::atoms::remember(&paths, a).await,
        Command::World(cmd) => commands::world::run(&paths, cmd).await,
        Command::Index(cmd) => commands::world::index(&paths, cmd).await,
        Command::Supervisor(SupervisorCommand::Restart(a)) => {
            commands::supervisor::restart(&paths, a.metrics_addr).await
        }
        Command::Supervisor(SupervisorCommand::Status(a)) => {
            commands::status::supervisor_status(&paths, a.json).await
        }
        Command::Supervisor(SupervisorCommand::Run { .. } | SupervisorCommand::Logpipe { .. })
        | Command::Node(NodeCommand::Run { .. }) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains (the
/// protocol errors quote their source).
fn error_text(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.contains(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg
}

/// Logs to stderr: warnings by default, `-v` info, `-vv` debug, `-vvv` trace; RUST_LOG wins.
/// Colour per `--color` (auto: a terminal and no NO_COLOR).
fn init_tracing(verbose: u8, color: dwbase_node::term::ColorWhen) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(color.stderr())
        .with_target(false);
    // A plain level unless RUST_LOG asks for more: building an EnvFilter (its directive
    // parser) is a tenth of a `deploy status` process's CPU (issue 14).
    match std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()) {
        Some(v) => match EnvFilter::try_new(&v) {
            Ok(filter) => builder.with_env_filter(filter).init(),
            Err(_) => builder.with_max_level(level).init(),
        },
        None => builder.with_max_level(level).init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(Into::into).collect()
    }

    /// Every spelling the lean path takes means what clap makes of it; every other spelling
    /// is left to clap.
    #[test]
    fn the_lean_status_path_agrees_with_clap() {
        let taken = [
            &["deploy", "status"][..],
            &["deploy", "status", "--json"],
            &["--no-start", "deploy", "status"],
            &["deploy", "--no-start", "status", "--json"],
            &["deploy", "status", "--json", "--no-start"],
        ];
        for args in taken {
            let lean = LeanStatus::parse(&os(args)).unwrap_or_else(|| panic!("{args:?}"));
            let cli = Cli::try_parse_from(std::iter::once("dwbase").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Deploy(DeployCommand::Status(a)) = cli.command else {
                panic!("{args:?}: not deploy status")
            };
            assert!(!a.watch);
            assert_eq!(lean, LeanStatus { json: a.json, no_start: cli.no_start }, "{args:?}");
            assert_eq!((cli.verbose, cli.color), (0, dwbase_node::term::ColorWhen::Auto));
        }
        let left = [
            &[][..],
            &["deploy"],
            &["status"],
            &["status", "deploy"],
            &["deploy", "status", "--watch"],
            &["deploy", "status", "--json", "--json"],
            &["deploy", "status", "-v"],
            &["deploy", "status", "--help"],
            &["deploy", "status", "--color", "never"],
            &["--json", "deploy", "status"],
            &["deploy", "status", "extra"],
            &["supervisor", "status"],
        ];
        for args in left {
            assert_eq!(LeanStatus::parse(&os(args)), None, "{args:?}");
        }
    }
}
