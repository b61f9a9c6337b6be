//! The command line: clap derive definitions, nothing else.
//!
//! Exit codes of every command: 0 success, 1 failure, 2 usage (a bad flag or value, or a
//! confirmation that was not given).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use dwbase_proto::RestartPolicy;

/// `dwbase`: deploy and operate DWBase nodes.
#[derive(Debug, Parser)]
#[command(
    name = "dwbase",
    version,
    about = "Deploy and operate DWBase nodes",
    long_about = "Deploy and operate DWBase nodes.\n\nThe state root is $DWBASE_DATA_DIR, else \
                  ./.dwbase. A supervisor daemon is started in the background when a command \
                  needs one (and when it finds recorded nodes and none runs: the new one \
                  adopts them); with --no-start, `status`, `logs` and `stop` work from \
                  state.json alone.\n\n\
                  Exit codes: 0 success, 1 failure, 2 usage; `deploy status`: 3 when the \
                  supervisor or a node that should run is down."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Colour on stderr: auto (only on a terminal, and not when NO_COLOR is set), always or
    /// never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t, global = true)]
    pub color: dwbase_node::term::ColorWhen,
    /// Never start a supervisor: `status`, `logs` and `stop` read state.json (and stop by
    /// signal, holding the root lock) when none runs. Without it, a command that finds
    /// recorded nodes and no supervisor starts one, which adopts what runs and restarts
    /// what died.
    #[arg(long, global = true)]
    pub no_start: bool,
    /// Node API base URL for the node commands (list-worlds, ask, replay, …), given before the
    /// command as with the original CLI; their own --api wins [default: http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// HTTPS: --cacert, --cert, --key (global).
    #[command(flatten)]
    pub tls: crate::httpclient::TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy, inspect and stop nodes.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Back up and restore a node's data (`.tzst`).
    #[command(subcommand)]
    Backup(crate::commands::backup::BackupCommand),
    /// Test harnesses: `test soak` (workload + chaos against a devnet it deploys).
    #[command(subcommand)]
    Test(crate::commands::soak::TestCommand),
    /// Run or manage the supervisor daemon.
    #[command(subcommand)]
    Supervisor(SupervisorCommand),
    /// Offline work on a stopped node's store: check, reindex, migrate (an original DWBase
    /// store, or a change of encryption).
    #[command(subcommand)]
    Storage(crate::commands::storage::StorageCommand),
    /// List a node's worlds (archived ones are hidden).
    ListWorlds(crate::commands::atoms::ListWorldsArgs),
    /// Ask a question in a world; prompts for it when -q is omitted.
    Ask(crate::commands::atoms::AskArgs),
    /// Replay a world's atoms in the order they were remembered.
    Replay(crate::commands::atoms::ReplayArgs),
    /// Show one atom by id.
    Inspect(crate::commands::atoms::InspectArgs),
    /// Remember an atom (prints its id).
    Remember(crate::commands::atoms::RememberArgs),
    /// Create, archive, resume a world, or set its policy.
    #[command(subcommand)]
    World(crate::commands::world::WorldCommand),
    /// A node's text index.
    #[command(subcommand)]
    Index(crate::commands::world::IndexCommand),
    /// Run a DWBase node in the foreground (same as `dwbase-node`).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Signed offline bundles: keygen, create, verify, install.
    #[command(subcommand)]
    Bundle(crate::commands::bundle::BundleCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(crate::commands::completions::CompletionsArgs),
    /// Print the man page, or write all of them into a folder (--out-dir).
    Man(crate::commands::completions::ManArgs),
}

/// `dwbase deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Start a devnet of N nodes on this machine (node-a, node-b, … on base-port, base-port+1, …).
    Devnet(DevnetArgs),
    /// Start the single local node.
    Local(LocalArgs),
    /// Show the supervisor and every node (works without a supervisor, from state.json).
    Status(DeployStatusArgs),
    /// Print node logs.
    Logs(LogsArgs),
    /// The live view: every node with its state, CPU, memory, request rate and p99, the
    /// selected node's log, and keys to restart, stop and start (needs a terminal).
    Top(crate::commands::top::TopArgs),
    /// Restart one node (clears a crash loop).
    Restart(RestartArgs),
    /// Stop nodes; without NODE, stop every node and then the supervisor.
    Stop(StopArgs),
    /// Stop everything and delete the devnet and local folders and the supervisor's files.
    Clean(CleanArgs),
    /// Render the Kubernetes manifests for N nodes (stdout, or a kustomization folder).
    K8s(crate::commands::k8s::K8sArgs),
    /// Install the supervisor as a systemd or launchd service for this machine.
    InstallService(crate::commands::install_service::InstallServiceArgs),
}

/// Flags shared by `deploy devnet` and `deploy local`.
#[derive(Debug, Clone, Args)]
pub struct CommonDeployArgs {
    /// Restart policy of the nodes.
    #[arg(long, default_value = "always", value_name = "always|on-failure|never")]
    pub restart: RestartPolicy,
    /// How long each started node may take to become ready before the rollout halts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print what would change (per node: unchanged, add, replace, update, start, remove)
    /// and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the folders (data included) of nodes the new spec removes; without it their
    /// folders are kept.
    #[arg(long)]
    pub prune: bool,
    /// Liveness probe period: every node's /healthz is probed this often; after
    /// --liveness-failures failures in a row the node is restarted (0 turns it off).
    /// Default 5s, or the template's [liveness] table.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub liveness_period: Option<Duration>,
    /// How long one liveness probe may take (default 2s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub liveness_timeout: Option<Duration>,
    /// Liveness failures in a row that restart a node (default 3).
    #[arg(long, value_name = "N")]
    pub liveness_failures: Option<u32>,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// Serve the supervisor's Prometheus metrics here (loopback), when this command starts it;
    /// the read-only status API (GET /v1/status, /v1/events) is served there too.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Stay attached: run the supervisor as a child, stream the logs, and stop everything on
    /// Ctrl+C (SIGINT) or SIGTERM.
    #[arg(long)]
    pub foreground: bool,
    /// Print the result as one JSON object on stdout: {group, state_file, plan, warnings,
    /// supervisor, nodes, timings: {supervisor_ms, spawned_ms, ready_ms}} (supervisor and
    /// nodes as in `deploy status --json`).
    #[arg(long)]
    pub json: bool,
}

/// `dwbase deploy devnet`
#[derive(Debug, Clone, Args)]
#[command(after_long_help = DEPLOY_HELP)]
pub struct DevnetArgs {
    /// Number of nodes (at least 1).
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: u32,
    /// Port of node-a; node-b gets base-port + 1, and so on.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Do not make the nodes swarm peers of each other.
    #[arg(long)]
    pub no_swarm: bool,
    /// Serve HTTPS: the supervisor makes a throwaway CA and one certificate per node under
    /// <root>/devnet/tls/ (kept across deploys), and peers are https:// URLs. `backup create
    /// --node NAME`, `deploy top` and soak find the CA themselves; other clients are given
    /// <root>/devnet/tls/ca.crt (`--cacert FILE`, `curl --cacert FILE`).
    #[arg(long)]
    pub tls: bool,
    /// Base node config, rewritten per node (default: the built-in deploy/devnet.toml).
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonDeployArgs,
}

/// `dwbase deploy local`
#[derive(Debug, Clone, Args)]
#[command(after_long_help = DEPLOY_HELP)]
pub struct LocalArgs {
    /// Node config (default: the built-in deploy/local.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonDeployArgs,
}

/// How a deploy works, for `--help`.
const DEPLOY_HELP: &str = "\
A deploy is declarative: the spec (node count, base port, template, the DWBASE_MAX_RAM_MB /
DWBASE_MAX_DISK_MB of this environment, restart policy, swarm, liveness) goes to the supervisor,
which compares it with what runs and applies a plan node by node:
  unchanged  same spec and running: left alone (same pid)
  replace    config or environment changed: stopped, started, ready — then the next node
  update     only supervision settings changed: applied in place (same pid)
  add        new node: started
  start      same spec but stopped: started
  remove     not in the spec any more: stopped, its folder kept (deleted with --prune)
The first node that does not become ready halts the rollout; every other node keeps running
and the error names the node, why, and its last log lines. The same spec twice changes
nothing. The rollout belongs to the supervisor: if this command is interrupted, it goes on.

Exit status: 0 when the plan was applied and every node of the spec is ready (or, with
--dry-run, when the plan was printed), 1 when the rollout halted or was refused, 2 usage.";

/// `dwbase deploy status`
#[derive(Debug, Clone, Args)]
#[command(after_long_help = STATUS_JSON_HELP)]
pub struct StatusArgs {
    /// One JSON object on stdout (keys: see --help).
    #[arg(long)]
    pub json: bool,
}

/// `dwbase deploy status`
#[derive(Debug, Clone, Args)]
#[command(after_long_help = STATUS_JSON_HELP)]
pub struct DeployStatusArgs {
    /// One JSON object on stdout (keys: see --help); with --watch, one per line.
    #[arg(long)]
    pub json: bool,
    /// Print the status again every --interval until Ctrl+C: the plain table, redrawn in
    /// place on a terminal, one block after another (with a time line) otherwise.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch prints.
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "watch")]
    pub interval: Duration,
}

/// The `--json` keys of `deploy status`, for `--help`.
const STATUS_JSON_HELP: &str = "\
--json prints one object; keys are stable (new ones may be added, none renamed); its JSON
Schema is docs/status.schema.json, and the supervisor's GET /v1/status answers the same:
  version                   the document's format (1)
  root                      the state root
  supervisor.running        false when read from state.json (no supervisor answered)
  supervisor.pid, version, socket, metrics_url, started_unix_ms, uptime_ms
  supervisor.state_files    the state files read (when not running)
  nodes[].name, id, group (devnet|local), pid, port, ready, restarts, uptime_ms,
          url (http://127.0.0.1:PORT, or https:// when the node serves TLS),
          restart_policy (always|on-failure|never), dir, data_dir, log_path, config_path,
          message, desired (running|stopped),
          last_exit {code, signal, at_unix_ms, cause (unexpected|requested|liveness),
            reason (what the node said right before it exited, or null)} or null,
          liveness {period_ms, timeout_ms, failures, failing} or null (from state.json)
  nodes[].state             starting|ready|degraded|unready|backoff|crash-loop|stopping|stopped
                            when supervised; alive|dead|pid-reused|stopped from state.json
  warnings                  things to know (e.g. a state file moved aside)

With recorded nodes and no supervisor running, a supervisor is started first: it adopts the
nodes that run and restarts the dead ones per policy, and says so on stderr. --no-start
reads state.json only.

Exit status (as supervisorctl and systemctl):
  0  the supervisor runs and every node that should run is ready (nothing deployed included)
  3  the supervisor is down, or a node that should run is not ready
  1  the status could not be found out";

/// `dwbase deploy logs`
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// One node; every node interleaved when omitted.
    pub node: Option<String>,
    /// Only the last N lines (per node).
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u32>,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written since then: a duration ago ("10m", "1h 30m") or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// One JSON object per line: {"node","at","at_unix_ms","text"}.
    #[arg(long)]
    pub json: bool,
}

/// `dwbase deploy restart`
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "\
Exit status: 0 when the node was restarted and its new process is ready (with --no-wait: once
it is spawned), 1 when it could not be restarted or did not become ready within --timeout
(the error says its state and shows its last log lines).")]
pub struct RestartArgs {
    /// The node to restart (node-a, … or the local node's id).
    pub node: String,
    /// How long to wait for the new process to be ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Return once the new process is spawned, without waiting for it to be ready.
    #[arg(long)]
    pub no_wait: bool,
}

/// `dwbase deploy stop`
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Nodes to stop; all of them (and then the supervisor) when omitted.
    pub nodes: Vec<String>,
    /// SIGTERM → SIGKILL grace (default: each node's own, 10 s unless deployed otherwise).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `dwbase deploy clean`
#[derive(Debug, Clone, Args)]
pub struct CleanArgs {
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long)]
    pub yes: bool,
}

/// `dwbase supervisor …`
#[derive(Debug, Subcommand)]
pub enum SupervisorCommand {
    /// Run the supervisor (same arguments as `dwbase-supervisor`).
    #[command(disable_help_flag = true)]
    Run {
        /// Arguments for the supervisor (see `dwbase supervisor run --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Copy a node's output into its log file (internal: the supervisor spawns it).
    #[command(hide = true, disable_help_flag = true)]
    Logpipe {
        /// Arguments for the log pipe.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Restart the supervisor, leaving the nodes running (the new one adopts them).
    Restart(SupervisorRestartArgs),
    /// Show the running supervisor: pid, version, socket, metrics url, uptime.
    Status(StatusArgs),
}

/// `dwbase supervisor restart`
#[derive(Debug, Clone, Args)]
pub struct SupervisorRestartArgs {
    /// Serve Prometheus metrics here from the new supervisor (loopback).
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback_addr)]
    pub metrics_addr: Option<SocketAddr>,
}

/// `dwbase node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run one node in the foreground (same arguments as `dwbase-node`).
    #[command(disable_help_flag = true)]
    Run {
        /// Arguments for the node (see `dwbase node run --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Parses "10s", "1m 30s", "250ms"; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 1m, 250ms)"))
}

/// A `--metrics-addr`: loopback only from this CLI (the metrics have no authentication).
pub fn parse_loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr =
        s.parse().map_err(|e| format!("{s:?} is not IP:PORT ({e}); e.g. 127.0.0.1:9464"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: anyone who can reach it would read node names, \
             states and exit codes (no authentication). Use 127.0.0.1:PORT, or run \
             `dwbase-supervisor run --metrics-addr {addr} --metrics-allow-remote` yourself"
        ));
    }
    Ok(addr)
}

fn parse_nodes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a whole number"))?;
    if n == 0 {
        return Err("a devnet needs at least 1 node (got 0)".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn zero_nodes_is_a_usage_error() {
        let err = Cli::try_parse_from(["dwbase", "deploy", "devnet", "--nodes", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("at least 1 node"), "{err}");
    }

    #[test]
    fn remote_metrics_addresses_are_refused() {
        let err =
            Cli::try_parse_from(["dwbase", "deploy", "devnet", "--metrics-addr", "0.0.0.0:9464"])
                .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--metrics-allow-remote"), "{err}");
        assert!(Cli::try_parse_from([
            "dwbase",
            "deploy",
            "devnet",
            "--metrics-addr",
            "[::1]:9464"
        ])
        .is_ok());
    }

    #[test]
    fn passthrough_args_keep_their_flags() {
        let cli =
            Cli::try_parse_from(["dwbase", "supervisor", "run", "--root", "/x", "--help"]).unwrap();
        match cli.command {
            Command::Supervisor(SupervisorCommand::Run { args }) => {
                assert_eq!(args, ["--root", "/x", "--help"])
            }
            other => panic!("{other:?}"),
        }
    }
}
