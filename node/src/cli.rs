//! The `dwbase-node` command line: `dwbase-node [--config FILE] [--listen ADDR]
//! [--data-dir DIR] [--node-id ID]`. Flags beat `DWBASE_*` variables, which beat the file; with
//! no `--config` the defaults are used. The only place that touches OS signals.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::config::Config;
use crate::node::Node;
use crate::term::ColorWhen;

/// Exit code for a configuration error (bad file, env or flags).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a start-up or runtime failure (data dir locked, address in use, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a node whose store was stuck for `node.limits.stall_exit_secs` (see
/// [`stall_watchdog`]): a restart reopens it.
pub const EXIT_STORE_STUCK: u8 = 3;
/// How often [`stall_watchdog`] looks at the store.
pub const WATCHDOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Flags of `dwbase-node` (also `dwbase node run`).
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "dwbase-node", version, about = "Run a DWBase node (HTTP API over sled).")]
pub struct NodeArgs {
    /// TOML configuration file; relative paths in it resolve against its folder.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (IP:port; port 0 picks a free port). Beats DWBASE_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory. Beats DWBASE_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node id. Beats DWBASE_NODE_ID.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Colour in log lines: auto (only when stderr is a terminal and NO_COLOR is not set),
    /// always or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t)]
    pub color: ColorWhen,
}

impl NodeArgs {
    /// Loads the configuration these flags describe: file (or defaults), then environment,
    /// then flags.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.apply_env()?;
        if let Some(listen) = self.listen {
            config.node.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
            config.node.data_dir_as_written = crate::config::WrittenPath::default();
        }
        if self.config.is_none() {
            // No file names the other folders: keep them beside the data dir (as in a node
            // folder: data/ logs/ summaries/), not in whatever directory we were started from.
            let parent = config.node.data_dir.parent().map(Path::to_path_buf).unwrap_or_default();
            config.node.log_dir = parent.join("logs");
            config.node.summaries_dir = parent.join("summaries");
        }
        if let Some(id) = &self.node_id {
            config.node.id = id.clone();
        }
        Ok(config)
    }
}

/// `main` of the `dwbase-node` binary: parses the flags and runs.
pub fn main() -> ExitCode {
    let color = ColorWhen::from_args(std::env::args_os());
    let matches = <NodeArgs as clap::CommandFactory>::command().color(color.clap()).get_matches();
    match <NodeArgs as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(args) => run(args),
        Err(e) => e.exit(),
    }
}

/// Installs the stderr log subscriber (`RUST_LOG`, default `info`) unless one is already set.
/// Colour per `color` ([`ColorWhen::stderr`]): under the supervisor stderr is a pipe into the
/// node's log file, where escape sequences are noise, so `auto` writes none there.
pub fn init_tracing(color: ColorWhen) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = color.stderr();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Runs a node with these flags until SIGTERM or Ctrl+C; exit 0 after a clean shutdown,
/// [`EXIT_CONFIG`] for configuration errors, [`EXIT_FAILURE`] otherwise.
pub fn run(args: NodeArgs) -> ExitCode {
    init_tracing(args.color);
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => return fatal(EXIT_CONFIG, &e.to_string()),
    };
    if let Err(msg) = config.check_listen_security(config.node.listen) {
        return fatal(EXIT_CONFIG, &msg);
    }
    if let Err(e) = crate::tls::check_files(&config) {
        return fatal(EXIT_CONFIG, &e.to_string());
    }
    if let Err(msg) = check_data_dir_location(&config) {
        return fatal(EXIT_CONFIG, &msg);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fatal(EXIT_FAILURE, &format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(run_async(config));
    // Do not wait for stray blocking tasks (e.g. a slow client's request) past the drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            fatal(EXIT_FAILURE, &format!("{e:#}"))
        }
    }
}

/// Says why the node cannot run — on stderr (its log) and to its supervisor, if one listens
/// ([`dwbase_proto::notify`]: the log may sit on the very disk that is full) — and gives the
/// exit code to return.
fn fatal(code: u8, why: &str) -> ExitCode {
    tell_why(why);
    ExitCode::from(code)
}

/// Why the node is about to exit: on stderr and to its supervisor ([`fatal`], the watchdog).
fn tell_why(why: &str) {
    eprintln!("dwbase-node: {why}");
    dwbase_proto::notify::last_words(why);
}

/// Refuses to start on an empty store when the original DWBase, which resolved a relative
/// `data_dir` against the working directory, would have used a store that exists.
fn check_data_dir_location(config: &Config) -> Result<(), String> {
    let Ok(cwd) = std::env::current_dir() else { return Ok(()) };
    let Some(theirs) = config.original_data_dir(&cwd) else { return Ok(()) };
    let ours = &config.node.data_dir;
    let written = config.node.data_dir_as_written.0.clone().unwrap_or_default();
    if crate::config::holds_store(ours) {
        tracing::warn!(
            data_dir = %ours.display(),
            other = %theirs.display(),
            "node.data_dir {:?} resolves against the config file's folder; the original DWBase \
             would have used {}, which holds another store (left alone)",
            written,
            theirs.display()
        );
        return Ok(());
    }
    Err(format!(
        "node.data_dir = {written:?} resolves to {} (relative paths resolve against the config \
         file's folder), where there is no store yet, but {} (the same path against the working \
         directory, where the original DWBase looked) holds one. Refusing to start empty: set \
         node.data_dir to the folder you mean as an absolute path (data_dir = {:?}), or pass \
         --data-dir / {}",
        ours.display(),
        theirs.display(),
        theirs.display().to_string(),
        crate::config::ENV_DATA_DIR
    ))
}

async fn run_async(config: Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let data_dir = config.node.data_dir.clone();
    let listen = config.node.listen;
    let node_id = config.node.id.clone();
    let scheme = if config.node.tls.enabled() { "https" } else { "http" };
    let node = tokio::task::spawn_blocking(move || Node::open(config))
        .await
        .context("opening the store")??;
    let listener = crate::connections::bind(listen)
        .with_context(|| format!("binding {listen} (node.listen / --listen / DWBASE_LISTEN)"))?;
    let addr = listener.local_addr()?;
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    tracing::info!(node_id = %node_id, addr = %addr, data_dir = %data_dir.display(), "dwbase-node listening");
    {
        // One plain line on stdout for scripts and supervisors (the real port when port 0).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "dwbase-node listening node_id={node_id} addr={addr} url={scheme}://{addr} data_dir={}",
            data_dir.display()
        );
        let _ = out.flush();
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(node.clone()));
    let stall_exit = node.config().node.limits.stall_exit_secs;
    if stall_exit > 0 {
        let n = node.clone();
        std::thread::Builder::new()
            .name("dwbase-watchdog".into())
            .spawn(move || stall_watchdog(&n, std::time::Duration::from_secs(stall_exit)))
            .context("starting the store watchdog")?;
    }
    crate::server::serve(listener, node, shutdown_signal()).await
}

/// Exits the process ([`EXIT_STORE_STUCK`], the reason on stderr) once a step of the store has
/// made no progress for `stall_exit` (see [`crate::storage::Store::stalled`]; `/healthz` fails
/// from [`crate::storage::COMMIT_STALL`] on). sled 0.34 can wedge after "no space left": a
/// flush that never returns, then reads. Nothing in the process can unstick it, and a node
/// that neither serves nor exits waits for a liveness probe that may not exist (or a SIGTERM
/// its shutdown flush would block); exiting lets any supervisor restart it, and a new process
/// opens the store with every acknowledged write (each was flushed before its answer). A plain
/// thread, so a runtime whose workers are blocked cannot stop it.
fn stall_watchdog(node: &Node, stall_exit: std::time::Duration) {
    let mut warned = false;
    loop {
        std::thread::sleep(WATCHDOG_INTERVAL);
        match node.liveness() {
            Ok(()) => warned = false,
            Err(stall) if stall.stuck_for >= stall_exit => {
                let why = format!(
                    "exiting: {stall}, past node.limits.stall_exit_secs = {}s; only a new \
                     process can reopen the store (every acknowledged write is on disk). Check \
                     the disk holding {} (full? failing?)",
                    stall_exit.as_secs(),
                    node.config().node.data_dir.display()
                );
                tracing::error!("{why}");
                tell_why(&why);
                let _ = std::io::stderr().flush();
                std::process::exit(i32::from(EXIT_STORE_STUCK));
            }
            Err(stall) => {
                if !warned {
                    tracing::error!(
                        "{stall}; /healthz answers 503, and the node exits after {}s unless it \
                         recovers",
                        stall_exit.as_secs()
                    );
                    warned = true;
                }
            }
        }
    }
}

/// Re-reads the TLS certificates on every SIGHUP (a renewed certificate takes effect for new
/// connections; a bad one is logged and the old one kept). Without TLS, SIGHUP is logged and
/// ignored instead of killing the node.
#[cfg(unix)]
async fn reload_on_sighup(node: Node) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match node.tls() {
            // Reading the files is blocking work; errors are logged by reload.
            Some(tls) => {
                let tls = tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
            None => tracing::info!("SIGHUP received; nothing to reload (no [node.tls])"),
        }
    }
}

/// Completes on SIGTERM or Ctrl+C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl+C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl+C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_args<T: clap::Args + Parser>() {}

    #[test]
    fn flags_parse_and_beat_the_file() {
        assert_args::<NodeArgs>();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "[node]\nid = \"file\"\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let args = NodeArgs::try_parse_from([
            "dwbase-node",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "flag",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        let c = args.load_config().unwrap();
        assert_eq!(c.node.id, "flag");
        assert_eq!(c.node.listen.port(), 0);
        assert_eq!(c.node.data_dir, PathBuf::from("/tmp/x"));
        assert!(NodeArgs::try_parse_from(["dwbase-node", "--listen", "nope"]).is_err());
    }
}
