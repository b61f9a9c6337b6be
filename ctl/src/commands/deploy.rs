//! `dwbase deploy devnet` and `dwbase deploy local`: check the spec here (errors name the file,
//! line and key), hand it to the supervisor, and follow the rollout it streams back — the plan,
//! each node's progress, then the table or the node that halted it.
//!
//! The rollout belongs to the supervisor. This command never stops nodes or writes state when
//! something fails, and a lost connection leaves the rollout running under the supervisor.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dwbase_proto::{
    Client, ClientError, DeployOptions, DeployReport, DevnetSpec, ErrorKind, ErrorReply, Event,
    EventKind, Group, LivenessSpec, LocalSpec, NodeState, NodeStatus, Paths, Plan, PlanAction,
    Request, Response, StopSpec, Template,
};
use serde::Serialize;

use crate::cli::{CommonDeployArgs, DevnetArgs, LocalArgs};
use crate::commands::logs;
use crate::daemon::{self, Connection, StartOptions};
use crate::output::{display_path, secs2, tail_file, Table};
use crate::report::{NodeJson, SupervisorJson};
use crate::Usage;

/// Environment variables forwarded from this CLI's environment to every node it deploys.
pub const FORWARDED_ENV: &[&str] = &["DWBASE_MAX_RAM_MB", "DWBASE_MAX_DISK_MB"];

/// Timings measured by this command (printed with `--json`; used by the bench script).
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    /// From the start of the command until the supervisor answered (0 if it already ran).
    pub supervisor_ms: u64,
    /// From the deploy request until the last node of the rollout was spawned (0 when none
    /// was).
    pub spawned_ms: u64,
    /// From the deploy request until the rollout ended with every node ready.
    pub ready_ms: u64,
}

/// The `--json` result of a deploy.
#[derive(Debug, Serialize)]
struct DeployJson<'a> {
    group: Group,
    state_file: PathBuf,
    plan: &'a Plan,
    warnings: &'a [String],
    supervisor: SupervisorJson,
    nodes: Vec<NodeJson>,
    timings: Timings,
}

/// The `--json` result of a dry run.
#[derive(Debug, Serialize)]
struct DryRunJson<'a> {
    group: Group,
    dry_run: bool,
    plan: &'a Plan,
}

/// `dwbase deploy devnet`.
pub async fn devnet(paths: &Paths, args: DevnetArgs) -> Result<()> {
    let last = u32::from(args.base_port) + args.nodes - 1;
    if last > u32::from(u16::MAX) {
        return Err(Usage(format!(
            "--base-port {} with --nodes {} needs ports up to {last}, past 65535",
            args.base_port, args.nodes
        ))
        .into());
    }
    if args.base_port == 0 {
        return Err(Usage("--base-port must not be 0".into()).into());
    }
    let template = args.template.as_deref().map(read_template).transpose()?;
    let spec = DevnetSpec {
        nodes: args.nodes,
        base_port: args.base_port,
        swarm: !args.no_swarm,
        tls: args.tls,
        template,
        restart_policy: args.common.restart,
        env: forwarded_env()?,
        stop_timeout_ms: args.common.stop_timeout.as_millis() as u64,
        liveness: liveness(&args.common)?,
        options: options(&args.common),
    };
    run_deploy(paths, Group::Devnet, Request::DeployDevnet(spec), &args.common).await
}

/// `dwbase deploy local`.
pub async fn local(paths: &Paths, args: LocalArgs) -> Result<()> {
    if let Some(path) = args.config.as_deref() {
        first_run_key(path, args.common.dry_run)?;
    }
    let config = args.config.as_deref().map(read_template).transpose()?;
    if let Some(t) = &config {
        check_listen(t)?;
    }
    let spec = LocalSpec {
        config,
        restart_policy: args.common.restart,
        env: forwarded_env()?,
        stop_timeout_ms: args.common.stop_timeout.as_millis() as u64,
        liveness: liveness(&args.common)?,
        options: options(&args.common),
    };
    run_deploy(paths, Group::Local, Request::DeployLocal(spec), &args.common).await
}

/// A config naming an `api_key_file` that does not exist yet gets one on first run (see
/// [`crate::keyfile`]); the notice goes to stderr, so `--json` output stays one document.
fn first_run_key(config: &Path, dry_run: bool) -> Result<()> {
    if dry_run {
        if let Some(path) = crate::keyfile::would_create(config)? {
            eprintln!(
                "dry run: would create the API key file {} named by {} (not created, so the \
                 config cannot be checked further)",
                path.display(),
                config.display()
            );
        }
        return Ok(());
    }
    if let Some(created) = crate::keyfile::ensure_for_config(config)? {
        eprintln!("{}", created.message());
    }
    Ok(())
}

fn options(common: &CommonDeployArgs) -> DeployOptions {
    DeployOptions {
        dry_run: common.dry_run,
        prune: common.prune,
        ready_timeout_ms: common.timeout.as_millis().max(1) as u64,
    }
}

/// The liveness flags, over the defaults; `None` when none is given (then the template's
/// `[liveness]` table, else the defaults, apply).
fn liveness(common: &CommonDeployArgs) -> Result<Option<LivenessSpec>> {
    if common.liveness_period.is_none()
        && common.liveness_timeout.is_none()
        && common.liveness_failures.is_none()
    {
        return Ok(None);
    }
    let d = LivenessSpec::DEFAULT;
    let spec = LivenessSpec {
        period_ms: common.liveness_period.map_or(d.period_ms, |p| p.as_millis() as u64),
        timeout_ms: common.liveness_timeout.map_or(d.timeout_ms, |t| t.as_millis() as u64),
        failures: common.liveness_failures.unwrap_or(d.failures),
    };
    if spec.enabled() && spec.timeout_ms == 0 {
        return Err(Usage("--liveness-timeout must be more than 0".into()).into());
    }
    if spec.enabled() && spec.failures == 0 {
        return Err(Usage("--liveness-failures must be at least 1".into()).into());
    }
    Ok(Some(spec))
}

/// Reads a node config or template and checks it the way the node will read it; its path is
/// made absolute (for messages: the supervisor gets the text). Errors name the file, line and
/// key.
fn read_template(path: &Path) -> Result<Template> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let text =
        std::fs::read_to_string(&abs).with_context(|| format!("reading {}", abs.display()))?;
    let template = Template { path: abs, text };
    node_config(&template)?;
    Ok(template)
}

/// The node config a template describes. Its `[liveness]` table is the supervisor's (it
/// checks it), not the node's: the rest is checked as the node will read it.
fn node_config(t: &Template) -> Result<dwbase_node::config::Config> {
    let parsed = t.text.parse::<toml::Table>().ok();
    let text = match parsed {
        Some(mut table) if table.contains_key("liveness") => {
            table.remove("liveness");
            toml::to_string(&table).context("re-reading the template without [liveness]")?
        }
        _ => t.text.clone(),
    };
    dwbase_node::config::Config::from_toml_str(&text, &t.path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A local node keeps its config's listen address: refuse now, not after a crash loop, an
/// address the node would refuse (every interface without an API key). Our environment
/// counts, as a supervisor we start inherits it.
fn check_listen(t: &Template) -> Result<()> {
    let path = &t.path;
    let mut cfg = node_config(t)?;
    cfg.apply_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.check_listen_security(cfg.node.listen)
        .map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))
}

/// The forwarded `DWBASE_MAX_*` variables of our environment, checked like the node would.
fn forwarded_env() -> Result<Vec<(String, String)>> {
    let env: Vec<(String, String)> = FORWARDED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    let mut probe = dwbase_node::config::Config::default();
    probe.apply_env_from(env.iter().cloned()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(env)
}

/// How long the whole rollout may take before this command gives up waiting (the supervisor
/// has its own, tighter deadlines; this only guards against a supervisor that hangs).
fn stream_deadline(common: &CommonDeployArgs, nodes: u32) -> Duration {
    let per_node = common.timeout + common.stop_timeout + Duration::from_secs(30);
    per_node * (nodes + 1)
}

async fn run_deploy(
    paths: &Paths,
    group: Group,
    req: Request,
    common: &CommonDeployArgs,
) -> Result<()> {
    let t0 = Instant::now();
    // In the foreground, Ctrl+C at any point means "stop what this command started".
    let mut signals =
        if common.foreground { Some(crate::signals::Terminated::new()?) } else { None };
    let opts = StartOptions { metrics_addr: common.metrics_addr, foreground: common.foreground };
    let Connection { mut client, started } = daemon::ensure_supervisor(paths, &opts).await?;
    let mut timings =
        Timings { supervisor_ms: t0.elapsed().as_millis() as u64, ..Timings::default() };
    if started.is_none() {
        if let Some(addr) = common.metrics_addr {
            let info = daemon::ping(&mut client).await?;
            let want = format!("http://{addr}/metrics");
            if info.metrics_url.as_deref() != Some(want.as_str()) {
                eprintln!(
                    "note: the supervisor (pid {}) was already running; it serves metrics at {}. \
                     To change that: dwbase supervisor restart --metrics-addr {addr}",
                    info.pid,
                    info.metrics_url.as_deref().unwrap_or("(off)")
                );
            }
        }
    }
    let nodes = match &req {
        Request::DeployDevnet(s) => s.nodes,
        _ => 1,
    };
    let deadline = stream_deadline(common, nodes);

    let t_req = Instant::now();
    client.send(&req).await.context("sending the deploy to the supervisor")?;
    let mut progress = Progress::new(group, common.json, t_req);
    let follow = follow_rollout(&mut client, &mut progress, common.dry_run, deadline);
    let outcome = match signals.as_mut() {
        Some(sig) => tokio::select! {
            r = follow => Some(r),
            _ = sig.recv() => None,
        },
        None => Some(follow.await),
    };
    let Some(outcome) = outcome else {
        eprintln!("interrupted");
        return stop_foreground(paths, group, started).await;
    };
    timings.spawned_ms = progress.last_spawn_ms;
    match outcome? {
        End::DryRun(plan) => {
            if common.json {
                let doc = DryRunJson { group, dry_run: true, plan: &plan };
                crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                let mut text = Vec::new();
                write_plan(&mut text, &plan)?;
                writeln!(text, "dry run: nothing was changed")?;
                crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&text)))?;
            }
            Ok(())
        }
        End::Deployed(report) => {
            timings.ready_ms = t_req.elapsed().as_millis() as u64;
            progress.clear_line();
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            print_result(paths, group, &report, timings, common.json)?;
            if let Some(sig) = signals {
                return foreground(paths, client, group, started, sig).await;
            }
            Ok(())
        }
        End::Halted(e) => {
            progress.clear_line();
            report_failure(&e.nodes);
            bail!("{}", e.message)
        }
        End::Refused(e) => {
            progress.clear_line();
            if e.kind == ErrorKind::Internal {
                crate::output::print_supervisor_log_tail(paths, 20);
            }
            // Nothing changed. A supervisor this command started for nothing goes again.
            if started.is_some() {
                shutdown_if_idle(&mut client).await;
            }
            bail!("{}", e.message)
        }
    }
}

/// Shuts down a supervisor that owns no node at all (one this command started for a deploy
/// that was refused), so a refused first deploy leaves nothing behind.
async fn shutdown_if_idle(client: &mut Client) {
    let Ok(report) = daemon::status(client).await else { return };
    if report.nodes.is_empty() {
        if let Err(e) = daemon::shutdown(client, &report.supervisor, false).await {
            tracing::warn!("shutting down the supervisor this command started: {e:#}");
        }
    }
}

/// How a deploy stream ended.
enum End {
    /// `--dry-run`: the plan, nothing changed.
    DryRun(Plan),
    /// Applied; every node of the spec is ready.
    Deployed(Box<DeployReport>),
    /// The rollout halted at a node that did not become ready (others left running).
    Halted(ErrorReply),
    /// The spec was refused before anything changed (bad template, port taken, …).
    Refused(ErrorReply),
}

/// Reads the deploy stream to its end, printing the plan and progress on stderr.
async fn follow_rollout(
    client: &mut Client,
    progress: &mut Progress,
    dry_run: bool,
    deadline: Duration,
) -> Result<End> {
    let until = tokio::time::Instant::now() + deadline;
    let mut plan: Option<Plan> = None;
    loop {
        let frame = match tokio::time::timeout_at(until, client.recv()).await {
            Err(_) => bail!(
                "the supervisor did not finish the rollout within {}; it may still be working \
                 on it: dwbase deploy status",
                humantime::format_duration(deadline)
            ),
            Ok(f) => f,
        };
        match frame {
            Ok(Response::Plan(p)) => {
                if !dry_run {
                    progress.plan(&p);
                }
                plan = Some(p);
            }
            Ok(Response::Event(e)) => progress.event(&e),
            Ok(Response::Deployed(r)) => return Ok(End::Deployed(Box::new(r))),
            Ok(Response::Done(_)) if dry_run => {
                let Some(p) = plan else { bail!("the supervisor ended a dry run without a plan") };
                return Ok(End::DryRun(p));
            }
            Ok(Response::Error(e)) if e.kind == ErrorKind::RolloutFailed => {
                return Ok(End::Halted(e))
            }
            Ok(Response::Error(e)) => return Ok(End::Refused(e)),
            Ok(other) => bail!("unexpected answer in a deploy stream: {other:?}"),
            Err(e @ (ClientError::Closed | ClientError::Io { .. })) => {
                progress.clear_line();
                let what = if plan.is_some() {
                    "the rollout goes on under the supervisor if it still runs"
                } else {
                    "the deploy may not have reached it"
                };
                bail!(
                    "lost the connection to the supervisor during the deploy ({e}); {what}: \
                     see dwbase deploy status"
                )
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints the rollout as it happens (stderr; nothing with `--json`).
struct Progress {
    group: Group,
    quiet: bool,
    tty: bool,
    since: Instant,
    last_spawn_ms: u64,
    status_line: bool,
}

impl Progress {
    fn new(group: Group, quiet: bool, since: Instant) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self { group, quiet, tty, since, last_spawn_ms: 0, status_line: false }
    }

    fn plan(&mut self, p: &Plan) {
        if self.quiet {
            return;
        }
        if p.is_noop() {
            eprintln!("no changes: the {} matches the spec", self.group.dir_name());
            return;
        }
        let mut text = Vec::new();
        let _ = write_plan(&mut text, p);
        eprint!("{}", String::from_utf8_lossy(&text));
    }

    fn event(&mut self, e: &Event) {
        if matches!(e.kind, EventKind::Spawned { .. }) {
            self.last_spawn_ms = self.since.elapsed().as_millis() as u64;
        }
        if self.quiet {
            return;
        }
        let at = secs2(self.since.elapsed());
        let line = match &e.kind {
            EventKind::Rollout(what) => format!("{}: {what}", e.node),
            EventKind::Spawned { pid } => format!("{}: started, pid {pid} ({at})", e.node),
            EventKind::State { to: NodeState::Ready, .. } => format!("{}: ready ({at})", e.node),
            EventKind::State { to: NodeState::Starting, .. } => return,
            EventKind::State { from, to } => format!("{}: {from} → {to} ({at})", e.node),
            EventKind::Exited(x) => format!("{}: exited, {} ({at})", e.node, x.kind),
            EventKind::LivenessFailed { failures, reason } => {
                format!("{}: liveness probe failed ({failures} in a row): {reason}", e.node)
            }
            EventKind::Removed => format!("{}: removed", e.node),
            EventKind::Added | EventKind::Adopted { .. } => return,
        };
        self.clear_line();
        eprintln!("{line}");
    }

    fn clear_line(&mut self) {
        if self.tty && self.status_line {
            eprint!("\r\x1b[2K");
            self.status_line = false;
        }
    }
}

/// The plan, one line per node, in the order the rollout applies it (terraform plan style).
fn write_plan(out: &mut impl Write, p: &Plan) -> std::io::Result<()> {
    let word = |a: PlanAction| match a {
        PlanAction::Unchanged => "  unchanged",
        PlanAction::Add => "+ add",
        PlanAction::Replace => "~ replace",
        PlanAction::Update => "~ update",
        PlanAction::Start => "> start",
        PlanAction::Remove => "- remove",
        PlanAction::Prune => "- prune",
    };
    writeln!(out, "plan for the {}:", p.group.dir_name())?;
    let width = p.steps.iter().map(|s| s.node.len()).max().unwrap_or(0);
    for s in &p.steps {
        let mut line = format!("  {:<11} {:<width$}  :{}", word(s.action), s.node, s.port);
        match s.action {
            PlanAction::Remove => line.push_str("  (its folder is kept; --prune deletes it)"),
            PlanAction::Prune => line.push_str("  (its folder is deleted)"),
            _ => {}
        }
        writeln!(out, "{}", line.trim_end())?;
        if s.action == PlanAction::Add {
            continue;
        }
        for c in &s.changes {
            writeln!(out, "        {c}")?;
        }
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in &p.steps {
        let a = s.action.as_str();
        match counts.iter_mut().find(|(k, _)| *k == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((a, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(a, n)| format!("{n} {a}")).collect();
    writeln!(out, "{}", summary.join(", "))
}

fn print_result(
    paths: &Paths,
    group: Group,
    report: &DeployReport,
    timings: Timings,
    json: bool,
) -> Result<()> {
    let nodes: Vec<&NodeStatus> = report.status.nodes.iter().filter(|n| n.group == group).collect();
    let state_file = paths.state_file(group);
    if json {
        let doc = DeployJson {
            group,
            state_file: state_file.clone(),
            plan: &report.plan,
            warnings: &report.warnings,
            supervisor: SupervisorJson::from_info(&report.status.supervisor),
            nodes: nodes.iter().map(|n| NodeJson::from_status(n)).collect(),
            timings,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        let mut text = Vec::new();
        match group {
            Group::Devnet => write_devnet_table(&mut text, &nodes, &state_file)?,
            Group::Local => write_local_summary(&mut text, &nodes)?,
        }
        crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&text)))?;
    }
    Ok(())
}

/// Prints why each failing node failed and its last log lines.
pub(crate) fn report_failure(nodes: &[NodeStatus]) {
    for n in nodes {
        let mut line = format!("{} is {}", n.name, n.state);
        if let Some(e) = &n.last_exit {
            line.push_str(&format!(", last {}", e.kind));
        }
        if n.restarts > 0 {
            line.push_str(&format!(", {} restarts", n.restarts));
        }
        if let Some(m) = &n.message {
            line.push_str(&format!(": {m}"));
        } else if let Some(r) = n.last_exit.as_ref().and_then(|e| e.reason.as_deref()) {
            line.push_str(&format!(": {r}"));
        }
        eprintln!("{line}");
        let lines = if n.last_log_lines.is_empty() {
            tail_file(&n.log_path, 20)
        } else {
            n.last_log_lines.clone()
        };
        if lines.is_empty() {
            eprintln!("  (no log lines in {})", n.log_path.display());
        } else {
            eprintln!("last log lines of {} ({}):", n.name, n.log_path.display());
            for l in lines {
                eprintln!("  {l}");
            }
        }
    }
}

/// The letter column of the devnet table: "node-b" → "B".
fn node_letter(name: &str) -> String {
    name.strip_prefix("node-").unwrap_or(name).to_uppercase()
}

/// The devnet table (the original tool's shape plus pid and state), then the state file.
pub fn write_devnet_table(
    out: &mut impl Write,
    nodes: &[&NodeStatus],
    state_file: &Path,
) -> std::io::Result<()> {
    let mut t = Table::new(&["Node", "ID", "Port", "PID", "State", "Data Dir"]);
    for n in nodes {
        t.row(vec![
            node_letter(&n.name),
            n.id.clone(),
            n.port.to_string(),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.state.to_string(),
            display_path(&n.dir).display().to_string(),
        ]);
    }
    t.write(out)?;
    if nodes.iter().any(|n| n.url.starts_with("https://")) {
        // `deploy devnet --tls`: where the CA is, for clients other than this CLI.
        let ca = state_file.parent().map(|g| g.join("tls").join("ca.crt"));
        match ca.filter(|p| p.is_file()) {
            Some(ca) => writeln!(out, "https: CA {} (curl --cacert FILE)", ca.display())?,
            None => writeln!(out, "https: served with the template's own certificates")?,
        }
    }
    writeln!(out, "state: {}", state_file.display())
}

/// What `deploy local` prints.
fn write_local_summary(out: &mut impl Write, nodes: &[&NodeStatus]) -> std::io::Result<()> {
    for n in nodes {
        let cfg = dwbase_node::config::Config::load(&n.config_path).ok();
        let listen = cfg.as_ref().map(|c| c.node.listen);
        let logs_dir = cfg.as_ref().map_or_else(|| n.dir.join("logs"), |c| c.node.log_dir.clone());
        let summaries =
            cfg.as_ref().map_or_else(|| n.dir.join("summaries"), |c| c.node.summaries_dir.clone());
        writeln!(out, "id:        {}", n.id)?;
        writeln!(out, "endpoint:  {}", n.url)?;
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback()) {
            writeln!(out, "listen:    {addr} (every interface: clients need the API key)")?;
        }
        writeln!(out, "pid:       {}", n.pid.map_or("-".into(), |p| p.to_string()))?;
        writeln!(out, "data:      {}", n.data_dir.display())?;
        writeln!(out, "logs:      {}", logs_dir.display())?;
        writeln!(out, "summaries: {}", summaries.display())?;
        writeln!(out, "config:    {}", n.config_path.display())?;
        writeln!(out, "log:       {}", n.log_path.display())?;
    }
    Ok(())
}

/// `--foreground`: stream the group's logs until Ctrl+C / SIGTERM or the supervisor goes,
/// then stop the group (and the supervisor this command started) before returning.
async fn foreground(
    paths: &Paths,
    mut client: Client,
    group: Group,
    started: Option<daemon::Started>,
    mut signals: crate::signals::Terminated,
) -> Result<()> {
    eprintln!("streaming logs; Ctrl+C stops the {}", group.dir_name());
    let follow = async {
        let mut stream_client = match daemon::connect(paths).await {
            Ok(Some(c)) => c,
            _ => return Err(anyhow::anyhow!("supervisor went away")),
        };
        let names = group_names(&mut client, group).await.unwrap_or_default();
        logs::stream(&mut stream_client, None, Some(0), true, None, &names, false).await
    };
    let interrupted = tokio::select! {
        _ = signals.recv() => true,
        r = follow => {
            if let Err(e) = &r {
                eprintln!("{e:#}");
            }
            false
        }
    };
    stop_foreground(paths, group, started).await?;
    if interrupted {
        Ok(())
    } else {
        Err(crate::Silent(1).into())
    }
}

/// Stops the group and, if this command started it, the supervisor; waits for it to exit.
async fn stop_foreground(
    paths: &Paths,
    group: Group,
    mut started: Option<daemon::Started>,
) -> Result<()> {
    eprintln!("stopping the {}…", group.dir_name());
    let stop = Request::Stop(StopSpec { nodes: Vec::new(), group: Some(group), timeout_ms: None });
    let fresh = daemon::connect(paths).await.ok().flatten();
    if let Some(mut c) = fresh {
        let _ = c.request_with_timeout(&stop, Duration::from_secs(120)).await;
        if started.is_some() {
            if let Ok(info) = daemon::ping(&mut c).await {
                if let Err(e) = daemon::shutdown(&mut c, &info, true).await {
                    eprintln!("shutting down the supervisor: {e:#}");
                }
            }
        }
    } else {
        let names: Vec<String> = crate::fallback::load_all(paths)?
            .into_iter()
            .filter(|g| g.group == group)
            .flat_map(|g| g.state.nodes.into_iter().map(|n| n.name))
            .collect();
        crate::fallback::stop_by_signal(paths, &names, None, started.is_some()).await?;
    }
    if let Some(s) = started.as_mut() {
        let deadline = Instant::now() + daemon::EXIT_DEADLINE;
        while s.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = s.child.kill();
                let _ = s.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

async fn group_names(client: &mut Client, group: Group) -> Result<Vec<String>> {
    let r = daemon::status(client).await?;
    Ok(r.nodes.into_iter().filter(|n| n.group == group).map(|n| n.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters() {
        assert_eq!(node_letter("node-a"), "A");
        assert_eq!(node_letter("node-ab"), "AB");
        assert_eq!(node_letter("local"), "LOCAL");
    }
}
