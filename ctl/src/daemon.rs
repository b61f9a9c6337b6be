//! Finding, starting and talking to the supervisor.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dwbase_proto::process::{self, Liveness};
use dwbase_proto::{
    Client, ClientError, Paths, Request, Response, ShutdownSpec, StatusReport, SupervisorInfo,
};

use crate::output;

/// How long a freshly spawned supervisor has to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long to wait for a supervisor to exit after it acknowledged a shutdown.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// Dials the supervisor of `paths`: `Ok(None)` when none is running. A protocol mismatch is
/// an error whose text says how to restart the supervisor.
pub async fn connect(paths: &Paths) -> Result<Option<Client>, ClientError> {
    match Client::connect(&paths.socket()).await {
        Ok(c) => Ok(Some(c)),
        Err(ClientError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A supervisor this command started.
#[derive(Debug)]
pub struct Started {
    /// The spawned process. Dropping it neither waits nor kills: once this CLI exits, the kernel
    /// reparents the supervisor to init (or the nearest subreaper), which reaps it.
    pub child: Child,
}

/// A connection to the supervisor, and whether this command started it.
#[derive(Debug)]
pub struct Connection {
    /// The connected client.
    pub client: Client,
    /// Set when this command spawned the supervisor.
    pub started: Option<Started>,
}

/// How to start a supervisor when none runs.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `--metrics-addr` for the new supervisor.
    pub metrics_addr: Option<SocketAddr>,
    /// Run it attached (not daemonized, same process group) and keep its handle.
    pub foreground: bool,
}

/// Connects to the supervisor, starting one in the background if none runs. A supervisor
/// this starts adopts the nodes an earlier one left running and restarts dead ones per
/// policy; what it did is said on stderr ("supervisor was down; adopted 3 nodes, …").
pub async fn ensure_supervisor(paths: &Paths, opts: &StartOptions) -> Result<Connection> {
    if let Some(client) = connect(paths).await? {
        return Ok(Connection { client, started: None });
    }
    let child = spawn_supervisor(paths, opts)?;
    tracing::info!(pid = child.id(), root = %paths.root.display(), "started a supervisor");
    let mut started = Started { child };
    let mut client = wait_for_supervisor(paths, &mut started.child).await?;
    if let Ok(info) = ping(&mut client).await {
        say_startup(&info);
    }
    Ok(Connection { client, started: Some(started) })
}

/// Prints what a supervisor found at start-up, when there is something to say.
pub fn say_startup(info: &SupervisorInfo) {
    if let Some(summary) = info.startup.summary() {
        eprintln!("supervisor was down; started pid {}: {summary}", info.pid);
    }
    for w in &info.startup.warnings {
        eprintln!("warning: {w}");
    }
}

/// Why a command works from state.json instead of a supervisor.
#[derive(Debug)]
pub enum Offline {
    /// `--no-start`: a read-only view was asked for.
    NoStart,
    /// Nothing is recorded under the root: there is nothing to supervise.
    NothingRecorded,
    /// A supervisor could not be started (read-only root, …).
    StartFailed(anyhow::Error),
}

/// Connects to the supervisor; when none runs but nodes are recorded under the root, starts
/// one (self-healing: it adopts what runs and restarts what died). `Err(Offline)` says why
/// the caller has only the state files; a supervisor that answers but refuses us (another
/// protocol, an unsafe socket path) is an error.
pub async fn attach(paths: &Paths, no_start: bool) -> Result<std::result::Result<Client, Offline>> {
    if let Some(client) = connect(paths).await? {
        return Ok(Ok(client));
    }
    if no_start {
        return Ok(Err(Offline::NoStart));
    }
    if !crate::fallback::anything_recorded(paths) {
        return Ok(Err(Offline::NothingRecorded));
    }
    match ensure_supervisor(paths, &StartOptions::default()).await {
        Ok(c) => Ok(Ok(c.client)),
        Err(e) => Ok(Err(Offline::StartFailed(e))),
    }
}

impl Offline {
    /// Says on stderr why the answer comes from state.json, when that is news.
    pub fn warn(&self) {
        if let Offline::StartFailed(e) = self {
            eprintln!(
                "warning: no supervisor runs and one could not be started ({e:#}); \
                 read-only view from state.json"
            );
        }
    }
}

/// The supervisor program: the sibling `dwbase-supervisor` of this executable, else this
/// executable itself with `supervisor` (single-binary installs).
fn supervisor_command() -> Result<Command> {
    let exe = std::env::current_exe().context("finding the dwbase executable")?;
    let sibling = exe.with_file_name(format!("dwbase-supervisor{}", std::env::consts::EXE_SUFFIX));
    Ok(if sibling.is_file() {
        Command::new(sibling)
    } else {
        let mut cmd = Command::new(exe);
        cmd.arg("supervisor");
        cmd
    })
}

/// Spawns `dwbase-supervisor run --root <root>` with stdio null, without waiting for it; the
/// daemon detaches itself into its own session.
pub fn spawn_supervisor(paths: &Paths, opts: &StartOptions) -> Result<Child> {
    let mut cmd = supervisor_command()?;
    cmd.arg("run").arg("--root").arg(&paths.root);
    if let Some(addr) = opts.metrics_addr {
        cmd.arg("--metrics-addr").arg(addr.to_string());
    }
    if opts.foreground {
        cmd.arg("--foreground");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // No process_group(0) here: the daemon calls setsid() first thing, which only succeeds for
    // a process that is not already a group leader. setsid gives it its own session and group,
    // so a Ctrl+C or hang-up meant for this CLI never reaches it.
    cmd.spawn().with_context(|| format!("starting the supervisor ({:?})", cmd.get_program()))
}

/// Polls the socket until the new supervisor answers, it exits, or [`START_DEADLINE`] passes.
async fn wait_for_supervisor(paths: &Paths, child: &mut Child) -> Result<Client> {
    let deadline = Instant::now() + START_DEADLINE;
    let mut pause = Duration::from_millis(2);
    loop {
        match connect(paths).await {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(e @ ClientError::VersionMismatch { .. }) => return Err(e.into()),
            Err(e) => tracing::debug!("supervisor not answering yet: {e}"),
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another dwbase may have started one at the same moment: ours then exits.
            if let Ok(Some(c)) = connect(paths).await {
                return Ok(c);
            }
            output::print_supervisor_log_tail(paths, 20);
            bail!("the supervisor exited during start-up ({status}); see its log above");
        }
        if Instant::now() >= deadline {
            output::print_supervisor_log_tail(paths, 20);
            bail!(
                "the supervisor (pid {}) did not answer on {} within {:?}",
                child.id(),
                paths.socket().display(),
                START_DEADLINE
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends one request and unwraps the common answers: an `Error` reply becomes an error.
pub async fn request(client: &mut Client, req: &Request, timeout: Duration) -> Result<Response> {
    match client.request_with_timeout(req, timeout).await? {
        Response::Error(e) => Err(anyhow!(SupervisorRefused(e))),
        other => Ok(other),
    }
}

/// The supervisor refused a request; carries its reply.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.message)]
pub struct SupervisorRefused(pub dwbase_proto::ErrorReply);

/// Asks the supervisor who it is.
pub async fn ping(client: &mut Client) -> Result<SupervisorInfo> {
    match request(client, &Request::Ping, Duration::from_secs(10)).await? {
        Response::Pong(info) => Ok(info),
        other => bail!("unexpected answer to Ping: {other:?}"),
    }
}

/// Asks the supervisor to exit and waits until its process is gone.
pub async fn shutdown(client: &mut Client, info: &SupervisorInfo, stop_nodes: bool) -> Result<()> {
    let req = Request::Shutdown(ShutdownSpec { stop_nodes });
    // Stopping nodes can take their stop timeouts; give it room.
    match client.request_with_timeout(&req, Duration::from_secs(300)).await {
        Ok(Response::Done(_)) | Err(ClientError::Closed) => {}
        Ok(Response::Error(e)) => bail!("the supervisor refused to shut down: {}", e.message),
        Ok(other) => bail!("unexpected answer to Shutdown: {other:?}"),
        Err(e) => return Err(e.into()),
    }
    wait_gone(info.pid, None, EXIT_DEADLINE).await;
    if process::start_time(info.pid).is_some() && !process::is_zombie(info.pid) {
        bail!("the supervisor (pid {}) acknowledged the shutdown but is still running", info.pid);
    }
    Ok(())
}

/// Waits until `pid` is gone (or a zombie), or `deadline` passes. With `start`, a different
/// process reusing the pid counts as gone.
pub async fn wait_gone(pid: u32, start: Option<u64>, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let gone = match start {
            Some(_) => process::liveness(pid, start) != Liveness::Alive,
            None => process::start_time(pid).is_none() || process::is_zombie(pid),
        };
        if gone {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The supervisor as recorded in the state files, if that process is still alive.
pub fn recorded_supervisor(paths: &Paths) -> Option<(u32, Option<u64>)> {
    let groups = crate::fallback::load_all(paths).ok()?;
    crate::fallback::live_supervisor(&groups)
}

/// Asks a running supervisor for its status.
pub async fn status(client: &mut Client) -> Result<StatusReport> {
    match request(client, &Request::Status, Duration::from_secs(10)).await? {
        Response::Status(r) => Ok(r),
        other => bail!("unexpected answer to Status: {other:?}"),
    }
}
