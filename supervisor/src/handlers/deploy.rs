//! `DeployDevnet` / `DeployLocal`: render the spec, diff it against what runs (the plan), and
//! roll it out node by node, streaming the plan, the group's events and the outcome.
//!
//! The rollout belongs to the supervisor, not to the client: a client that disconnects (or is
//! killed) mid-rollout changes nothing — the rollout runs to its end, and `deploy status`
//! shows the result. One deploy runs at a time; a second one waits for the first, then diffs
//! against its result (the same spec twice is a no-op).
//!
//! Order: removals, in-place updates, replacements one at a time (stop, start, ready, then the
//! next), then additions and starts together. The first node that does not become ready halts
//! the rollout: every other node is left as it is (running), and the error names the node,
//! its state, last exit and log lines.

use std::collections::HashMap;
use std::time::Duration;

use dwbase_proto::{
    DeployOptions, DeployReport, DevnetSpec, Done, ErrorKind, ErrorReply, Group, LivenessSpec,
    LocalSpec, NodeState, NodeStatus, Response,
};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::Flow;
use crate::render;
use crate::runner::{Applied, DesiredNode, Planned, Spawned, Step};
use crate::server::{send, Conn, ConnTokens, Ctx};

/// Longest wait for a node being replaced or removed to stop, on top of its stop timeout.
const STOP_WAIT_MARGIN: Duration = Duration::from_secs(30);

/// How long an event frame may take to write before the client is treated as gone (the
/// rollout never waits on a client that does not read).
const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn devnet(
    ctx: &Ctx,
    spec: DevnetSpec,
    conn: &mut Conn,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    let desired = render::render_devnet(&ctx.paths, &spec).map(|nodes| {
        nodes
            .into_iter()
            .map(|r| {
                let liveness = spec.liveness.or(r.liveness).unwrap_or(LivenessSpec::DEFAULT);
                DesiredNode::new(
                    r,
                    spec.restart_policy,
                    spec.env.clone(),
                    spec.stop_timeout_ms,
                    liveness,
                )
            })
            .collect()
    });
    deploy(ctx, Group::Devnet, desired, spec.options, conn, tokens).await
}

pub(super) async fn local(
    ctx: &Ctx,
    spec: LocalSpec,
    conn: &mut Conn,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    let desired = render::render_local(&ctx.paths, &spec).map(|r| {
        let liveness = spec.liveness.or(r.liveness).unwrap_or(LivenessSpec::DEFAULT);
        vec![DesiredNode::new(
            r,
            spec.restart_policy,
            spec.env.clone(),
            spec.stop_timeout_ms,
            liveness,
        )]
    });
    deploy(ctx, Group::Local, desired, spec.options, conn, tokens).await
}

/// The client end, as long as it listens.
struct Client<'a> {
    conn: &'a mut Conn,
    listening: bool,
}

impl Client<'_> {
    async fn send(&mut self, resp: &Response) {
        if self.listening && send(self.conn, resp).await.is_err() {
            tracing::info!("the deploying client went away; the rollout goes on");
            self.listening = false;
        }
    }

    async fn event(&mut self, resp: &Response) {
        if !self.listening {
            return;
        }
        match tokio::time::timeout(
            EVENT_WRITE_TIMEOUT,
            dwbase_proto::codec::send(self.conn, "response", resp),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => {
                tracing::info!("the deploying client does not read; the rollout goes on");
                self.listening = false;
            }
        }
    }
}

async fn deploy(
    ctx: &Ctx,
    group: Group,
    desired: Result<Vec<DesiredNode>, ErrorReply>,
    options: DeployOptions,
    conn: &mut Conn,
    tokens: &ConnTokens,
) -> std::io::Result<Flow> {
    let desired = match desired {
        Ok(d) => d,
        Err(e) => {
            send(conn, &Response::Error(e)).await?;
            return Ok(Flow::Continue);
        }
    };
    let _one_at_a_time = ctx.deploys.lock().await;
    let planned = match ctx.runner.plan(group, desired, options.prune).await {
        Err(g) => {
            send(conn, &super::gone(g)).await?;
            return Ok(Flow::Close);
        }
        Ok(Err(e)) => {
            send(conn, &Response::Error(e)).await?;
            return Ok(Flow::Continue);
        }
        Ok(Ok(p)) => p,
    };
    let mut client = Client { conn, listening: true };
    client.send(&Response::Plan(planned.plan.clone())).await;
    if options.dry_run {
        client.send(&Response::Done(Done { message: "dry run: nothing was changed".into() })).await;
        return Ok(if client.listening { Flow::Continue } else { Flow::Close });
    }
    if !planned.plan.is_noop() {
        tracing::info!(group = group.dir_name(), "deploy: {}", summary(&planned));
    }
    let mut rollout = Rollout {
        ctx,
        group,
        events: ctx.runner.events(),
        client,
        tokens,
        ready_timeout: Duration::from_millis(options.ready_timeout_ms.max(1)),
    };
    let outcome = rollout.run(&planned.steps).await;
    let reply = match outcome {
        Ok(()) => match ctx.runner.status().await {
            Ok(status) => {
                let warnings = untouched_warnings(&planned, &status.nodes, group);
                Response::Deployed(DeployReport { plan: planned.plan, status, warnings })
            }
            Err(g) => super::gone(g),
        },
        Err(e) => {
            tracing::warn!(group = group.dir_name(), "deploy halted: {}", e.message);
            Response::Error(e)
        }
    };
    rollout.client.send(&reply).await;
    Ok(if rollout.client.listening { Flow::Continue } else { Flow::Close })
}

fn summary(p: &Planned) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in &p.plan.steps {
        let a = s.action.as_str();
        match counts.iter_mut().find(|(k, _)| *k == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((a, 1)),
        }
    }
    counts.iter().map(|(a, n)| format!("{n} {a}")).collect::<Vec<_>>().join(", ")
}

/// Nodes the plan left alone that are not healthy: worth saying, not a failure of the deploy.
fn untouched_warnings(p: &Planned, nodes: &[NodeStatus], group: Group) -> Vec<String> {
    let touched: Vec<&str> = p.steps.iter().map(Step::node).collect();
    nodes
        .iter()
        .filter(|n| n.group == group && !touched.contains(&n.name.as_str()))
        .filter(|n| n.desired == dwbase_proto::Desired::Running && !n.ready)
        .map(|n| {
            let why = n.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            format!(
                "{} is {} and was left as it is (its spec did not change){why}; \
                 `dwbase deploy restart {}` once the cause is fixed",
                n.name, n.state, n.name
            )
        })
        .collect()
}

/// Whether a rollout step waits for its node before the next step (a replacement until the
/// new process is ready, a removal until it is gone).
fn sequential(step: &Step) -> bool {
    matches!(step, Step::Replace(_) | Step::Remove { .. })
}

struct Rollout<'a, 'c> {
    ctx: &'a Ctx,
    group: Group,
    events: broadcast::Receiver<dwbase_proto::Event>,
    client: Client<'c>,
    tokens: &'a ConnTokens,
    ready_timeout: Duration,
}

impl Rollout<'_, '_> {
    async fn run(&mut self, steps: &[Step]) -> Result<(), ErrorReply> {
        let replaces = steps.iter().filter(|s| matches!(s, Step::Replace(_))).count();
        let mut replaced = 0;
        let mut starting: HashMap<String, tokio::sync::oneshot::Receiver<Result<Spawned, String>>> =
            HashMap::new();
        let mut rest = steps;
        while let Some(step) = rest.first() {
            // Additions, starts and in-place updates wait for nothing: a run of them goes to
            // the runner as one request (one turn: processes started back to back, one sync
            // and one state save for all), replacements and removals one at a time.
            let batch = rest.iter().take_while(|s| !sequential(s)).count();
            if batch > 1 {
                let (now, later) = rest.split_at(batch);
                rest = later;
                let results =
                    self.ctx.runner.apply_all(now.to_vec()).await.map_err(ErrorReply::from)?;
                for (step, result) in now.iter().zip(results) {
                    if let Applied::Spawning(rx) = result? {
                        starting.insert(step.node().to_owned(), rx);
                    }
                }
                continue;
            }
            rest = &rest[1..];
            let name = step.node().to_owned();
            if let Step::Replace(_) = step {
                replaced += 1;
                self.ctx.runner.notice(&name, format!("replacing ({replaced}/{replaces})"));
            }
            let applied = self.ctx.runner.apply(step.clone()).await.map_err(ErrorReply::from)??;
            match (step, applied) {
                (Step::Replace(d), Applied::Spawning(rx)) => {
                    let limit = Duration::from_millis(d.record.stop_timeout_ms) + STOP_WAIT_MARGIN;
                    let spawned = self.await_spawn(&name, rx, limit).await?;
                    self.wait_ready(HashMap::from([(name, spawned)])).await?;
                }
                (_, Applied::Spawning(rx)) => {
                    starting.insert(name, rx);
                }
                (Step::Remove { .. }, Applied::Removing(Some(rx))) => {
                    let limit = Duration::from_millis(dwbase_proto::state::DEFAULT_STOP_TIMEOUT_MS)
                        + STOP_WAIT_MARGIN;
                    self.forward_until(rx, limit).await.map_err(|()| {
                        ErrorReply::new(
                            ErrorKind::Process,
                            format!("{name} did not stop within {limit:?} while being removed"),
                        )
                    })?;
                }
                _ => {}
            }
        }
        // Additions and starts go together: the rollout is as fast as the slowest of them.
        let mut spawned = HashMap::new();
        for (name, rx) in starting {
            let s = self.await_spawn(&name, rx, STOP_WAIT_MARGIN).await?;
            spawned.insert(name, s);
        }
        if !spawned.is_empty() {
            self.wait_ready(spawned).await?;
        }
        Ok(())
    }

    /// Forwards the group's events to the client until `rx` resolves or `limit` passes.
    async fn forward_until<T>(
        &mut self,
        mut rx: tokio::sync::oneshot::Receiver<T>,
        limit: Duration,
    ) -> Result<T, ()> {
        let deadline = Instant::now() + limit;
        loop {
            tokio::select! {
                r = &mut rx => return r.map_err(|_| ()),
                ev = self.events.recv() => self.forward(ev).await,
                _ = tokio::time::sleep_until(deadline) => return Err(()),
                _ = self.tokens.shutdown.cancelled() => return Err(()),
            }
        }
    }

    /// Forwards the events already queued.
    async fn drain(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(e) => self.forward(Ok(e)).await,
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    }

    async fn forward(&mut self, ev: Result<dwbase_proto::Event, RecvError>) {
        if let Ok(e) = ev {
            if e.group == self.group {
                self.client.event(&Response::Event(e)).await;
            }
        }
    }

    async fn await_spawn(
        &mut self,
        name: &str,
        rx: tokio::sync::oneshot::Receiver<Result<Spawned, String>>,
        limit: Duration,
    ) -> Result<Spawned, ErrorReply> {
        match self.forward_until(rx, limit).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(msg)) => {
                Err(self.failure(name, format!("{name} could not be started: {msg}")).await)
            }
            Err(()) if self.tokens.shutdown.is_cancelled() => {
                Err(ErrorReply::new(ErrorKind::Internal, "the supervisor is shutting down"))
            }
            Err(()) => {
                Err(self.failure(name, format!("{name} was not started within {limit:?}")).await)
            }
        }
    }

    /// Waits until every node in `want` runs the spawned process and is ready; fails at the
    /// first one that exits, crash-loops, stops, or is not ready within the ready timeout.
    async fn wait_ready(&mut self, want: HashMap<String, Spawned>) -> Result<(), ErrorReply> {
        let mut status = self.ctx.runner.status_watch();
        let deadline = Instant::now() + self.ready_timeout;
        let newest = want.values().map(|s| s.seq).max().unwrap_or(0);
        loop {
            let snapshot = status.borrow_and_update().clone();
            let mut pending = Vec::new();
            if snapshot.seq < newest {
                // Published before the spawns: it cannot tell anything about them yet.
                pending.extend(want.keys().cloned());
            }
            for (name, s) in want.iter().filter(|_| snapshot.seq >= newest) {
                let Some(n) = snapshot.nodes.iter().find(|n| &n.name == name) else {
                    return Err(ErrorReply::new(
                        ErrorKind::RolloutFailed,
                        format!("{name} was removed while the deploy waited for it"),
                    ));
                };
                if n.pid == Some(s.pid) && n.ready {
                    continue;
                }
                let exited = n.restarts > s.restarts
                    || n.pid.is_some_and(|p| p != s.pid)
                    || matches!(
                        n.state,
                        NodeState::CrashLoop | NodeState::Backoff | NodeState::Stopped
                    );
                if exited {
                    let exit = n
                        .last_exit
                        .as_ref()
                        .map(|e| format!(", last exit: {}", e.kind))
                        .unwrap_or_default();
                    return Err(self
                        .failure(
                            name,
                            format!("{name} exited before it became ready ({}{exit})", n.state),
                        )
                        .await);
                }
                pending.push(name.clone());
            }
            if pending.is_empty() {
                // What happened up to this snapshot reaches the client before the outcome.
                self.drain().await;
                return Ok(());
            }
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return Err(ErrorReply::new(ErrorKind::Internal, "the supervisor is shutting down"));
                    }
                }
                ev = self.events.recv() => self.forward(ev).await,
                _ = tokio::time::sleep_until(deadline) => {
                    pending.sort();
                    let first = pending[0].clone();
                    let why = snapshot
                        .nodes
                        .iter()
                        .find(|n| n.name == first)
                        .map(|n| format!("{}{}", n.state, n.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()))
                        .unwrap_or_default();
                    return Err(self
                        .failure(&first, format!(
                            "{} not ready within {} ({why})",
                            pending.join(", "),
                            humantime::format_duration(self.ready_timeout)
                        ))
                        .await);
                }
                _ = self.tokens.shutdown.cancelled() => {
                    return Err(ErrorReply::new(ErrorKind::Internal, "the supervisor is shutting down"));
                }
            }
        }
    }

    /// A halted rollout: the message, plus the failing node's full status (with log lines).
    async fn failure(&mut self, name: &str, message: String) -> ErrorReply {
        self.drain().await;
        let nodes = match self.ctx.runner.status().await {
            Ok(r) => r.nodes.into_iter().filter(|n| n.name == name).collect(),
            Err(_) => vec![],
        };
        ErrorReply {
            kind: ErrorKind::RolloutFailed,
            message: format!(
                "{message}; the rollout stopped there and every other node was left running"
            ),
            nodes,
        }
    }
}
