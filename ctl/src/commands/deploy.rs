//! `dwbase deploy devnet` and `dwbase deploy local`: validate, hand the spec to the
//! supervisor, then watch every node become ready — or clean up and say why not.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dwbase_proto::{
    Client, DevnetSpec, Group, LocalSpec, NodeState, NodeStatus, Paths, Request, Response,
    StatusReport, StopSpec,
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

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// Timings measured by this command (printed with `--json`; used by the bench script).
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    /// From the start of the command until the supervisor answered (0 if it already ran).
    pub supervisor_ms: u64,
    /// From the deploy request until the supervisor reported every node spawned.
    pub spawned_ms: u64,
    /// From the deploy request until every node was ready.
    pub ready_ms: u64,
}

/// The `--json` result of a deploy.
#[derive(Debug, Serialize)]
struct DeployJson {
    group: Group,
    state_file: PathBuf,
    supervisor: SupervisorJson,
    nodes: Vec<NodeJson>,
    timings: Timings,
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
    let template = args.template.as_deref().map(validate_config).transpose()?;
    let env = forwarded_env()?;
    let spec = DevnetSpec {
        nodes: args.nodes,
        base_port: args.base_port,
        swarm: !args.no_swarm,
        template,
        restart_policy: args.common.restart,
        env,
        stop_timeout_ms: args.common.stop_timeout.as_millis() as u64,
    };
    run_deploy(paths, Group::Devnet, Request::DeployDevnet(spec), &args.common).await
}

/// `dwbase deploy local`.
pub async fn local(paths: &Paths, args: LocalArgs) -> Result<()> {
    let config = args.config.as_deref().map(validate_config).transpose()?;
    if let Some(path) = &config {
        check_listen(path)?;
    }
    let env = forwarded_env()?;
    let spec = LocalSpec {
        config,
        restart_policy: args.common.restart,
        env,
        stop_timeout_ms: args.common.stop_timeout.as_millis() as u64,
    };
    run_deploy(paths, Group::Local, Request::DeployLocal(spec), &args.common).await
}

/// Checks a node config the way the node will read it, and makes its path absolute (the
/// supervisor does not share our current directory). Errors name the file, line and key.
fn validate_config(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    dwbase_node::config::Config::load(&abs).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(abs)
}

/// A local node keeps its config's listen address: refuse now, not after a crash loop, an
/// address the node would refuse (every interface without an API key). Our environment
/// counts, as a supervisor we start inherits it.
fn check_listen(path: &Path) -> Result<()> {
    let mut cfg = dwbase_node::config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let Connection { mut client, mut started } = daemon::ensure_supervisor(paths, &opts).await?;
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

    let t_req = Instant::now();
    let answer = client.request(&req).await;
    let report = match answer {
        Ok(Response::Status(r)) => r,
        Ok(Response::Error(e)) => {
            cleanup_after_failure(paths, &mut client, group, started.as_mut(), false).await;
            bail!("{}", e.message);
        }
        Ok(other) => bail!("unexpected answer to the deploy request: {other:?}"),
        Err(e) => {
            crate::output::print_supervisor_log_tail(paths, 20);
            return Err(e.into());
        }
    };
    timings.spawned_ms = t_req.elapsed().as_millis() as u64;
    tracing::info!("every node spawned in {} ms", timings.spawned_ms);

    let waited = match signals.as_mut() {
        Some(sig) => tokio::select! {
            r = wait_ready(&mut client, group, &report, t_req, common.timeout) => Some(r),
            _ = sig.recv() => None,
        },
        None => Some(wait_ready(&mut client, group, &report, t_req, common.timeout).await),
    };
    let Some(waited) = waited else {
        eprintln!("interrupted");
        return stop_foreground(paths, group, started).await;
    };
    let report = match waited {
        Ok(r) => r,
        Err(failure) => {
            report_failure(&failure);
            cleanup_after_failure(paths, &mut client, group, started.as_mut(), true).await;
            bail!("{}", failure.summary);
        }
    };
    timings.ready_ms = t_req.elapsed().as_millis() as u64;

    let nodes: Vec<&NodeStatus> = report.nodes.iter().filter(|n| n.group == group).collect();
    let state_file = paths.state_file(group);
    if common.json {
        let doc = DeployJson {
            group,
            state_file: state_file.clone(),
            supervisor: SupervisorJson::from_info(&report.supervisor),
            nodes: nodes.iter().map(|n| NodeJson::from_status(n)).collect(),
            timings,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match group {
            Group::Devnet => write_devnet_table(&mut out, &nodes, &state_file)?,
            Group::Local => write_local_summary(&mut out, &nodes)?,
        }
        out.flush().map_err(crate::output::stdout_error)?;
    }

    if let Some(sig) = signals {
        return foreground(paths, client, group, started, sig).await;
    }
    Ok(())
}

/// Why a deploy did not become ready.
#[derive(Debug)]
struct Failure {
    summary: String,
    nodes: Vec<NodeStatus>,
}

/// Polls `Status` until every node of `group` is ready, printing a line per node as it becomes
/// ready. Fails on the first node in crash-loop or stopped, or when `timeout` passes.
async fn wait_ready(
    client: &mut Client,
    group: Group,
    first: &StatusReport,
    since: Instant,
    timeout: Duration,
) -> Result<StatusReport, Failure> {
    let tty = std::io::stderr().is_terminal();
    let mut seen_ready: HashSet<String> = HashSet::new();
    let mut report = first.clone();
    let total = report.nodes.iter().filter(|n| n.group == group).count();
    loop {
        let nodes: Vec<&NodeStatus> = report.nodes.iter().filter(|n| n.group == group).collect();
        for n in &nodes {
            if n.ready && seen_ready.insert(n.name.clone()) {
                let pid = n.pid.map_or("?".into(), |p| p.to_string());
                if tty {
                    eprint!("\r\x1b[2K");
                }
                eprintln!("{} ready (pid {pid}, {})", n.name, secs2(since.elapsed()));
            }
        }
        if !nodes.is_empty() && nodes.iter().all(|n| n.ready) {
            if tty {
                eprint!("\r\x1b[2K");
            }
            return Ok(report);
        }
        let failed: Vec<NodeStatus> = nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::CrashLoop | NodeState::Stopped))
            .map(|n| (*n).clone())
            .collect();
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(|n| n.name.as_str()).collect();
            return Err(Failure {
                summary: format!(
                    "{} did not start ({}); {} stopped",
                    names.join(", "),
                    failed[0].state,
                    group_label(group)
                ),
                nodes: failed,
            });
        }
        if nodes.is_empty() {
            return Err(Failure {
                summary: format!("the supervisor reports no {} nodes", group.dir_name()),
                nodes: Vec::new(),
            });
        }
        if since.elapsed() >= timeout {
            let waiting: Vec<NodeStatus> =
                nodes.iter().filter(|n| !n.ready).map(|n| (*n).clone()).collect();
            let names: Vec<&str> = waiting.iter().map(|n| n.name.as_str()).collect();
            return Err(Failure {
                summary: format!(
                    "{} not ready after {} ({} of {total} ready); {} stopped",
                    names.join(", "),
                    humantime::format_duration(timeout),
                    seen_ready.len(),
                    group_label(group)
                ),
                nodes: waiting,
            });
        }
        if tty {
            let waiting: Vec<&str> =
                nodes.iter().filter(|n| !n.ready).map(|n| n.name.as_str()).take(4).collect();
            eprint!(
                "\r\x1b[2K{}/{total} ready, waiting for {}{} ({})",
                seen_ready.len(),
                waiting.join(", "),
                if nodes.len() - seen_ready.len() > 4 { ", …" } else { "" },
                secs2(since.elapsed())
            );
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(POLL).await;
        report = match daemon::status(client).await {
            Ok(r) => r,
            Err(e) => {
                return Err(Failure {
                    summary: format!("lost the supervisor while waiting for readiness: {e:#}"),
                    nodes: Vec::new(),
                })
            }
        };
    }
}

/// "the devnet was" / "the local node was", for messages.
fn group_label(group: Group) -> &'static str {
    match group {
        Group::Devnet => "the devnet was",
        Group::Local => "the local node was",
    }
}

/// Prints why each failing node failed and its last log lines.
fn report_failure(f: &Failure) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    for n in &f.nodes {
        let mut line = format!("{} is {}", n.name, n.state);
        if let Some(e) = &n.last_exit {
            line.push_str(&format!(", last {}", e.kind));
        }
        if n.restarts > 0 {
            line.push_str(&format!(", {} restarts", n.restarts));
        }
        if let Some(m) = &n.message {
            line.push_str(&format!(": {m}"));
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

/// After a failed deploy: stop the group, and shut down the supervisor if this command
/// started it and it owns nothing else — nothing is left running.
async fn cleanup_after_failure(
    paths: &Paths,
    client: &mut Client,
    group: Group,
    started: Option<&mut daemon::Started>,
    stop_group: bool,
) {
    if stop_group {
        let req =
            Request::Stop(StopSpec { nodes: Vec::new(), group: Some(group), timeout_ms: None });
        match client.request_with_timeout(&req, Duration::from_secs(120)).await {
            Ok(Response::Done(_)) => {}
            Ok(other) => tracing::warn!("stopping the {}: {other:?}", group.dir_name()),
            Err(e) => {
                tracing::warn!("stopping the {} via the supervisor: {e}", group.dir_name());
                let names = recorded_names(paths, group);
                if !names.is_empty() {
                    let _ = crate::fallback::stop_by_signal(paths, &names, None, false).await;
                }
            }
        }
    }
    let Some(started) = started else { return };
    let Ok(report) = daemon::status(client).await else { return };
    let busy = report.nodes.iter().any(|n| n.pid.is_some() && n.state != NodeState::Stopped);
    if busy {
        return;
    }
    if let Err(e) = daemon::shutdown(client, &report.supervisor, true).await {
        tracing::warn!("shutting down the supervisor we started: {e:#}");
    }
    let _ = started.child.try_wait();
}

fn recorded_names(paths: &Paths, group: Group) -> Vec<String> {
    crate::fallback::load_all(paths)
        .map(|gs| {
            gs.into_iter()
                .filter(|g| g.group == group)
                .flat_map(|g| g.state.nodes.into_iter().map(|n| n.name))
                .collect()
        })
        .unwrap_or_default()
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
        writeln!(out, "endpoint:  http://127.0.0.1:{}", n.port)?;
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
        let names = recorded_names(paths, group);
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
