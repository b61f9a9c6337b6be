//! The `dwbase-supervisor` program: `run` (the daemon) and the hidden `logpipe`.
//!
//! Only this module touches the process: setsid, signals, tracing setup, the panic hook.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dwbase_proto::Paths;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::logs::{LogpipeArgs, DEFAULT_KEEP};
use crate::process::{Invocation, LogSink};
use crate::{RestartRules, RunOptions};

/// `dwbase-supervisor`: owns, restarts, probes and logs DWBase nodes for one state root.
#[derive(Debug, Parser)]
#[command(name = "dwbase-supervisor", version, about, propagate_version = true)]
pub struct SupervisorArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SupervisorCommand,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum SupervisorCommand {
    /// Run the supervisor for a state root (normally started by `dwbase deploy …`).
    Run(RunArgs),
    /// Copy a node's output (stdin) into its timestamped, rotated log file (internal).
    #[command(hide = true)]
    Logpipe(LogpipeArgs),
}

/// `dwbase-supervisor run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The state root (default: $DWBASE_DATA_DIR, else ./.dwbase).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Log to stderr as well as to supervisor.log, and keep the caller's session (Ctrl+C stops
    /// it). Without it, the supervisor still runs in this process (it does not fork: start it
    /// with `&`, a service manager, or let `dwbase deploy` start it in the background) but in a
    /// session of its own (setsid: no SIGHUP or Ctrl+C from the terminal), logging only to
    /// supervisor.log.
    #[arg(long)]
    pub foreground: bool,
    /// Colour of the --foreground log lines on stderr: auto (only on a terminal, and not when
    /// NO_COLOR is set; so never into the journal or a pipe), always or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t)]
    pub color: dwbase_node::term::ColorWhen,
    /// Serve the supervisor's Prometheus metrics at http://ADDR/metrics, and the read-only
    /// status API at http://ADDR/v1/status and /v1/events (server-sent events). A loopback
    /// address unless --metrics-allow-remote is given too.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow a --metrics-addr that is not loopback (anyone who can reach it reads node names,
    /// states, exit codes, pids and paths; there is no authentication).
    #[arg(long, requires = "metrics_addr")]
    pub metrics_allow_remote: bool,
    /// How often an idle GET /v1/events stream gets a keep-alive comment (keeps proxies with
    /// an idle timeout from closing it).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_interval)]
    pub events_keepalive: Duration,
    /// The node program (default: `dwbase-node` beside this program, else this program's
    /// `node run`).
    #[arg(long, value_name = "PATH", env = "DWBASE_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// Rotate each node's log at this size: bytes, or with a unit (10MiB, 512KiB, 1GB).
    #[arg(long, value_name = "SIZE", default_value = "10MiB", value_parser = parse_size)]
    pub log_max_bytes: u64,
    /// Rotated node log files kept.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP)]
    pub log_keep: u32,
    /// Delay before the second restart in a row, in ms (testing).
    #[arg(long, hide = true)]
    pub backoff_first_ms: Option<u64>,
    /// Backoff cap, also the crash-loop restart delay, in ms (testing).
    #[arg(long, hide = true)]
    pub backoff_max_ms: Option<u64>,
    /// Exits within the window that mean a crash loop (testing).
    #[arg(long, hide = true)]
    pub crash_loop_exits: Option<usize>,
}

/// The `dwbase-supervisor` entry point.
pub fn main() -> ExitCode {
    run_cli(SupervisorArgs::parse())
}

/// Runs parsed arguments (also used by `dwbase supervisor …` in single-binary mode).
pub fn run_cli(args: SupervisorArgs) -> ExitCode {
    match args.command {
        SupervisorCommand::Logpipe(a) => crate::logs::logpipe_main(a),
        SupervisorCommand::Run(a) => run_daemon(a),
    }
}

/// Whether this executable is the dedicated supervisor (else the single `dwbase` binary).
fn is_dedicated(exe: &Path) -> bool {
    exe.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.starts_with("dwbase-supervisor"))
}

/// The node program: `--node-bin`/DWBASE_NODE_BIN, else `dwbase-node` beside `exe`, else
/// `exe node run`.
pub fn node_invocation(explicit: Option<PathBuf>, exe: &Path) -> Invocation {
    if let Some(p) = explicit {
        return Invocation::new(p);
    }
    let sibling = exe.with_file_name(format!("dwbase-node{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        return Invocation::new(sibling);
    }
    Invocation::with_args(exe, ["node", "run"])
}

/// The log-pipe program: `dwbase-logpipe` beside `exe` (a small program: each of the one per
/// node keeps fewer private pages), else `exe logpipe` (or `exe supervisor logpipe` for the
/// single binary). All take the same flags.
pub fn logpipe_invocation(exe: &Path) -> Invocation {
    let sibling = exe.with_file_name(format!("dwbase-logpipe{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        return Invocation::new(sibling);
    }
    if is_dedicated(exe) {
        Invocation::with_args(exe, ["logpipe"])
    } else {
        Invocation::with_args(exe, ["supervisor", "logpipe"])
    }
}

fn rules(a: &RunArgs) -> RestartRules {
    let mut r = RestartRules::default();
    if let Some(ms) = a.backoff_first_ms {
        r.first_backoff = Duration::from_millis(ms);
    }
    if let Some(ms) = a.backoff_max_ms {
        r.max_backoff = Duration::from_millis(ms);
    }
    if let Some(n) = a.crash_loop_exits {
        r.crash_max_exits = n;
    }
    r
}

fn run_daemon(a: RunArgs) -> ExitCode {
    if let Some(addr) = a.metrics_addr.filter(|addr| !addr.ip().is_loopback()) {
        if !a.metrics_allow_remote {
            eprintln!(
                "dwbase-supervisor: --metrics-addr {addr} is not a loopback address: anyone who \
                 can reach it reads node names, states and exit codes (no authentication). Use \
                 127.0.0.1:PORT, or add --metrics-allow-remote to serve it there anyway"
            );
            return ExitCode::from(2);
        }
    }
    let paths = match a.root.as_deref().map(Paths::new).unwrap_or_else(Paths::from_env) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dwbase-supervisor: resolving the state root: {e}");
            return ExitCode::from(1);
        }
    };
    if !a.foreground {
        // Our own session: no controlling terminal, no SIGHUP/SIGINT from the shell that
        // started us. EPERM means we already lead a group (fine).
        let _ = nix::unistd::setsid();
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&paths.root) {
            eprintln!("dwbase-supervisor: creating {}: {e}", paths.root.display());
            return ExitCode::from(1);
        }
    }
    let _guard = match init_tracing(&paths.supervisor_log(), a.foreground, a.color) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("dwbase-supervisor: opening {}: {e}", paths.supervisor_log().display());
            return ExitCode::from(1);
        }
    };
    crate::instance::install_panic_cleanup();
    let mut opts = RunOptions::standard(paths.root.clone(), a.node_bin.clone());
    if let LogSink::Pipe { max_bytes, keep, .. } = &mut opts.sink {
        *max_bytes = a.log_max_bytes;
        *keep = a.log_keep;
    }
    opts.metrics_addr = a.metrics_addr;
    opts.events_keepalive = a.events_keepalive;
    if let Some(addr) = a.metrics_addr {
        if !addr.ip().is_loopback() {
            warn!("--metrics-addr {addr} is not a loopback address (--metrics-allow-remote): anyone who can reach it can read node states");
        }
    }
    opts.rules = rules(&a);
    info!(
        root = %paths.root.display(), node = %opts.node.program.display(),
        version = dwbase_proto::BUILD_VERSION, "starting"
    );
    // Two workers: the runner's state saves block on fsync, and meanwhile the prober, the
    // deploy streams and the control socket go on on the other one. (A one-thread runtime was
    // measured for issue 14: no faster kill -9 → new pid, and a 50-node rollout's events and
    // readiness reached clients ~50 ms late behind the save.)
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("dwbase-supervisor")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        listen_for_signals(shutdown.clone(), opts.leave_running.clone())?;
        crate::run(opts, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("dwbase-supervisor: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM/SIGINT → stop every node and exit; SIGUSR1 → exit leaving nodes running.
fn listen_for_signals(
    shutdown: CancellationToken,
    leave_running: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); shutdown.cancel(); }
            _ = int.recv() => { info!("SIGINT"); shutdown.cancel(); }
            _ = usr1.recv() => { info!("SIGUSR1"); leave_running.cancel(); }
        }
    });
    Ok(())
}

/// Largest size of `supervisor.log` before it is rotated.
pub const SUPERVISOR_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated `supervisor.log.N` files kept.
pub const SUPERVISOR_LOG_KEEP: u32 = 5;

fn init_tracing(
    log: &Path,
    foreground: bool,
    color: dwbase_node::term::ColorWhen,
) -> io::Result<tracing_appender::non_blocking::WorkerGuard> {
    let file = RotatingFile::open(log, SUPERVISOR_LOG_MAX_BYTES, SUPERVISOR_LOG_KEEP)?;
    // The default queue holds 128 000 lines, allocated up front: 4 MiB of a daemon that
    // should stay under 10. 1024 lines absorb any burst we log; past that, writers wait rather
    // than drop lines (restarts and crash loops must reach the log).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(1024)
        .lossy(false)
        .finish(file);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines logged during a runner's turn are written after its node processes started
    // (`log_hold`).
    let file_layer = tracing_subscriber::fmt::layer()
        .with_writer(crate::log_hold::Holding::new(writer))
        .with_ansi(false);
    // No escape codes into the journal or a pipe (`auto` looks at stderr and NO_COLOR).
    let stderr_layer = foreground.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(crate::log_hold::Holding::new(io::stderr))
            .with_ansi(color.stderr())
    });
    let _ =
        tracing_subscriber::registry().with(filter).with(file_layer).with(stderr_layer).try_init();
    Ok(guard)
}

/// A size flag: bytes, or a number with a unit (`10MiB`, `512 KiB`, `1GB`, `4096`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a size ({e}); examples: 10MiB, 512KiB, 1048576"))?;
    if size.as_u64() == 0 {
        return Err(format!("{s:?}: the size must be above 0"));
    }
    Ok(size.as_u64())
}

/// A duration above 0 ("15s", "500ms", "1m").
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); examples: 15s, 500ms, 1m"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: the interval must be above 0"));
    }
    Ok(d)
}

/// A log file rotated by size: `f` → `f.1` → … → `f.keep`.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), max_bytes, keep, file, size })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = OsString::from(self.path.as_os_str());
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_file_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("supervisor.log");
        let mut f = RotatingFile::open(&p, 100, 2).unwrap();
        for i in 0..50 {
            writeln!(f, "line {i:04} .................").unwrap();
        }
        assert!(p.exists());
        assert!(dir.path().join("supervisor.log.1").exists());
        assert!(dir.path().join("supervisor.log.2").exists());
        assert!(!dir.path().join("supervisor.log.3").exists());
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
    }

    #[test]
    fn invocations_for_both_binaries() {
        let dedicated = Path::new("/opt/bin/dwbase-supervisor");
        assert_eq!(logpipe_invocation(dedicated).args, vec![OsString::from("logpipe")]);
        let single = Path::new("/opt/bin/dwbase");
        assert_eq!(
            logpipe_invocation(single).args,
            vec![OsString::from("supervisor"), OsString::from("logpipe")]
        );
        let dir = tempfile::tempdir().unwrap();
        let beside = dir.path().join("dwbase-logpipe");
        std::fs::write(&beside, "").unwrap();
        for exe in ["dwbase-supervisor", "dwbase"] {
            assert_eq!(logpipe_invocation(&dir.path().join(exe)), Invocation::new(&beside));
        }
        let node = node_invocation(None, Path::new("/nonexistent/dwbase"));
        assert_eq!(node.program, PathBuf::from("/nonexistent/dwbase"));
        assert_eq!(node.args, vec![OsString::from("node"), OsString::from("run")]);
        let explicit = node_invocation(Some("/x/n".into()), single);
        assert_eq!(explicit, Invocation::new("/x/n"));
    }

    #[test]
    fn args_parse() {
        let a = SupervisorArgs::try_parse_from([
            "dwbase-supervisor",
            "run",
            "--root",
            "/tmp/r",
            "--foreground",
            "--metrics-addr",
            "127.0.0.1:9464",
        ])
        .unwrap();
        let SupervisorCommand::Run(r) = a.command else { panic!() };
        assert!(r.foreground);
        assert_eq!(r.root, Some(PathBuf::from("/tmp/r")));
        let a = SupervisorArgs::try_parse_from([
            "dwbase-supervisor",
            "logpipe",
            "--file",
            "/tmp/x.log",
        ])
        .unwrap();
        assert!(matches!(a.command, SupervisorCommand::Logpipe(_)));
    }

    #[test]
    fn log_sizes_take_units_and_default_to_the_pipe_default() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["dwbase-supervisor", "run"];
            argv.extend_from_slice(extra);
            match SupervisorArgs::try_parse_from(argv).map(|a| a.command) {
                Ok(SupervisorCommand::Run(r)) => Ok(r.log_max_bytes),
                Ok(_) => panic!("not run"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(run(&[]).unwrap(), crate::logs::DEFAULT_MAX_BYTES);
        assert_eq!(run(&["--log-max-bytes", "10MiB"]).unwrap(), 10 * 1024 * 1024);
        assert_eq!(run(&["--log-max-bytes", "512 KiB"]).unwrap(), 512 * 1024);
        assert_eq!(run(&["--log-max-bytes", "4096"]).unwrap(), 4096);
        assert_eq!(run(&["--log-max-bytes", "1MB"]).unwrap(), 1_000_000);
        let err = run(&["--log-max-bytes", "lots"]).unwrap_err();
        assert!(err.contains("lots") && err.contains("10MiB"), "{err}");
        assert!(run(&["--log-max-bytes", "0"]).unwrap_err().contains("above 0"));
        // A remote metrics address needs its own flag, which needs an address.
        assert!(run(&["--metrics-allow-remote"]).is_err());
    }

    #[test]
    fn a_remote_metrics_address_is_refused_without_the_flag() {
        let a = SupervisorArgs::try_parse_from([
            "dwbase-supervisor",
            "run",
            "--root",
            "/nonexistent/dwbase-ops-test",
            "--metrics-addr",
            "0.0.0.0:9464",
        ])
        .unwrap();
        let SupervisorCommand::Run(r) = a.command else { panic!() };
        // Refused before anything is created or detached.
        assert_eq!(run_daemon(r), ExitCode::from(2));
        assert!(!Path::new("/nonexistent/dwbase-ops-test").exists());
    }
}
