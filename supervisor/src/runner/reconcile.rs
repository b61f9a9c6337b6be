//! Declarative deploys: the desired nodes of a group diffed against what runs, giving a plan
//! (for people, and `--dry-run`) and the steps that carry it out (for the rollout).
//!
//! Per node: same fingerprint (rendered config + environment) and running → `unchanged`;
//! another fingerprint → `replace` (stop, start with the new spec, ready, then the next node);
//! only supervision settings differ → `update` in place; stopped on request → `start`; new →
//! `add`; no longer in the spec → `remove` (or `prune` with `--prune`). Steps are ordered so a
//! rollout never needs a port that another node still holds: removals first, then in-place
//! updates, then replacements (a node moving to a port another moving node holds goes after
//! it), then additions and starts.

use std::collections::{BTreeMap, HashMap};

use dwbase_proto::state::{Desired, NodeRecord};
use dwbase_proto::{
    ErrorKind, ErrorReply, Group, LivenessSpec, Plan, PlanAction, PlanStep, RestartPolicy,
};

use super::node::Node;
use crate::render::{self, Endpoint, RenderedNode};

/// One node as a spec wants it: its rendered config and its record (no process facts).
#[derive(Debug, Clone)]
pub struct DesiredNode {
    /// The rendered config.
    pub rendered: RenderedNode,
    /// The record it will run under.
    pub record: NodeRecord,
    /// Where its API will answer, once [`DesiredNode::validate`] has loaded its config.
    endpoint: Option<Endpoint>,
}

impl DesiredNode {
    /// A desired node from its rendered config and the spec's supervision settings.
    pub fn new(
        rendered: RenderedNode,
        policy: RestartPolicy,
        env: Vec<(String, String)>,
        stop_timeout_ms: u64,
        liveness: LivenessSpec,
    ) -> Self {
        let record = NodeRecord {
            id: rendered.id.clone(),
            name: rendered.name.clone(),
            group: rendered.group,
            port: rendered.listen.port(),
            pid: None,
            start_time: None,
            dir: rendered.dir.clone(),
            data_dir: rendered.data_dir.clone(),
            log_path: rendered.log_path.clone(),
            config_path: rendered.config_path.clone(),
            desired: Desired::Running,
            restart_policy: policy,
            restarts: 0,
            last_exit: None,
            stop_timeout_ms,
            fingerprint: Some(rendered.fingerprint(&env)),
            env,
            liveness,
        };
        Self { rendered, record, endpoint: None }
    }

    /// Validates its config with the node's own loader, once: the plan does it for every node
    /// that will start, and the step it hands on keeps what was loaded (its endpoint).
    pub fn validate(&mut self) -> Result<(), ErrorReply> {
        if self.endpoint.is_none() {
            let loaded = render::validate(&self.rendered)?;
            self.endpoint = Some(Endpoint::of_loaded(loaded, &self.record.env));
        }
        Ok(())
    }

    /// Where and how its API will answer probes.
    pub fn endpoint(&self) -> Endpoint {
        if let Some(e) = &self.endpoint {
            return e.clone();
        }
        let r = &self.rendered;
        Endpoint::of_config(&r.text, &r.config_path, &self.record.env, r.listen)
    }
}

/// One step of a rollout.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create and start a node.
    Add(DesiredNode),
    /// Stop a node and start it again from a new spec.
    Replace(DesiredNode),
    /// Change supervision settings in place.
    Update(DesiredNode),
    /// Start a node that was stopped on request.
    Start(String),
    /// Stop a node and forget it (and delete its folder with `prune`).
    Remove {
        /// The node.
        name: String,
        /// Delete its folder too.
        prune: bool,
    },
}

impl Step {
    /// The node it is about.
    pub fn node(&self) -> &str {
        match self {
            Step::Add(d) | Step::Replace(d) | Step::Update(d) => &d.record.name,
            Step::Start(n) | Step::Remove { name: n, .. } => n,
        }
    }

    /// Whether the step ends with a process that must become ready.
    pub fn spawns(&self) -> bool {
        matches!(self, Step::Add(_) | Step::Replace(_) | Step::Start(_))
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// The fingerprint a node runs under now (older records: from its config file on disk).
pub(super) fn current_fingerprint(rec: &NodeRecord) -> Option<String> {
    if let Some(f) = &rec.fingerprint {
        return Some(f.clone());
    }
    let text = std::fs::read_to_string(&rec.config_path).ok()?;
    Some(render::fingerprint(render::body_of(&text), &rec.env))
}

/// `a.b.c = value` for every leaf of a TOML table.
fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

fn short(v: &str) -> String {
    if v.chars().count() > 60 {
        format!("{}…", v.chars().take(57).collect::<String>())
    } else {
        v.to_owned()
    }
}

/// What differs between a running node and its desired spec, for people.
fn describe_changes(rec: &NodeRecord, want: &DesiredNode) -> Vec<String> {
    let mut out = Vec::new();
    let old_text = std::fs::read_to_string(&rec.config_path).unwrap_or_default();
    let old: toml::Table = render::body_of(&old_text).parse().unwrap_or_default();
    let new: toml::Table = want.rendered.body.parse().unwrap_or_default();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &old, &mut a);
    flatten("", &new, &mut b);
    for (k, v) in &b {
        match a.get(k) {
            None => out.push(format!("config: {k} = {} (new)", short(v))),
            Some(o) if o != v => out.push(format!("config: {k} {} → {}", short(o), short(v))),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("config: {k} removed"));
    }
    let old_env: HashMap<&str, &str> =
        rec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let new_env: HashMap<&str, &str> =
        want.record.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut keys: Vec<&str> = old_env.keys().chain(new_env.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        match (old_env.get(k), new_env.get(k)) {
            (Some(o), Some(n)) if o != n => out.push(format!("env: {k} {o} → {n}")),
            (None, Some(n)) => out.push(format!("env: {k} unset → {n}")),
            (Some(o), None) => out.push(format!("env: {k} {o} → unset")),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push("config: rendered differently (same keys; formatting or order)".into());
    }
    out
}

/// Supervision settings that differ (applied without a restart).
fn describe_updates(node: &Node, want: &NodeRecord) -> Vec<String> {
    let mut out = Vec::new();
    if node.fsm.policy != want.restart_policy {
        out.push(format!("restart policy {} → {}", node.fsm.policy, want.restart_policy));
    }
    if node.rec.stop_timeout_ms != want.stop_timeout_ms {
        out.push(format!(
            "stop timeout {} ms → {} ms",
            node.rec.stop_timeout_ms, want.stop_timeout_ms
        ));
    }
    if node.fsm.liveness != want.liveness {
        let l = |s: &LivenessSpec| {
            if s.enabled() {
                format!("{} ms/{} ms×{}", s.period_ms, s.timeout_ms, s.failures)
            } else {
                "off".to_owned()
            }
        };
        out.push(format!("liveness {} → {}", l(&node.fsm.liveness), l(&want.liveness)));
    }
    out
}

/// The plan and its steps for `group`'s `desired` nodes.
pub(super) fn plan(
    nodes: &BTreeMap<String, Node>,
    group: Group,
    desired: Vec<DesiredNode>,
    prune: bool,
) -> Result<super::handle::Planned, ErrorReply> {
    let mut shown: Vec<PlanStep> = Vec::new();
    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut replaces: Vec<DesiredNode> = Vec::new();
    let mut starts = Vec::new();
    let wanted: Vec<&str> = desired.iter().map(|d| d.record.name.as_str()).collect();

    // Ports must stay unique across every group once the deploy is done.
    let mut final_ports: HashMap<u16, String> = nodes
        .values()
        .filter(|n| n.rec.group != group)
        .map(|n| (n.rec.port, n.rec.name.clone()))
        .collect();
    for d in &desired {
        if let Some(other) = final_ports.insert(d.record.port, d.record.name.clone()) {
            return Err(err(
                ErrorKind::PortInUse,
                format!(
                    "port {} for node {} is already {}'s; choose another port",
                    d.record.port, d.record.name, other
                ),
            ));
        }
    }

    for n in nodes.values().filter(|n| n.rec.group == group) {
        if !wanted.contains(&n.rec.name.as_str()) {
            let action = if prune { PlanAction::Prune } else { PlanAction::Remove };
            removes.push(Step::Remove { name: n.rec.name.clone(), prune });
            let changes = if prune {
                vec![format!("delete {}", n.rec.dir.display())]
            } else {
                vec![format!("keep {}", n.rec.dir.display())]
            };
            shown.push(PlanStep { node: n.rec.name.clone(), action, port: n.rec.port, changes });
        }
    }

    for d in desired {
        let name = d.record.name.clone();
        let port = d.record.port;
        match nodes.get(&name) {
            Some(n) if n.rec.group != group => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!(
                        "a {} node is already named {name:?}; give the {} node another id",
                        n.rec.group.dir_name(),
                        group.dir_name()
                    ),
                ))
            }
            None => {
                shown.push(PlanStep {
                    node: name,
                    action: PlanAction::Add,
                    port,
                    changes: vec![format!("new, port {port}")],
                });
                starts.push(Step::Add(d));
            }
            Some(n) => {
                let same = current_fingerprint(&n.rec).as_deref()
                    == d.record.fingerprint.as_deref()
                    && n.rec.port == d.record.port;
                if !same {
                    let changes = describe_changes(&n.rec, &d);
                    shown.push(PlanStep { node: name, action: PlanAction::Replace, port, changes });
                    replaces.push(d);
                    continue;
                }
                let upd = describe_updates(n, &d.record);
                if !upd.is_empty() {
                    shown.push(PlanStep {
                        node: name.clone(),
                        action: PlanAction::Update,
                        port,
                        changes: upd,
                    });
                    updates.push(Step::Update(d));
                }
                if n.fsm.desired == Desired::Stopped {
                    shown.push(PlanStep {
                        node: name.clone(),
                        action: PlanAction::Start,
                        port,
                        changes: vec!["stopped on request; starting".into()],
                    });
                    starts.push(Step::Start(name));
                } else if shown.last().is_none_or(|s| s.node != name) {
                    shown.push(PlanStep {
                        node: name,
                        action: PlanAction::Unchanged,
                        port,
                        changes: vec![],
                    });
                }
            }
        }
    }

    // Everything that will start is checked now, so a bad config or a taken port refuses the
    // whole deploy before anything changes (and `--dry-run` says so).
    let held: HashMap<u16, &str> =
        nodes.values().map(|n| (n.rec.port, n.rec.name.as_str())).collect();
    for d in replaces.iter_mut().chain(starts.iter_mut().filter_map(|s| match s {
        Step::Add(d) => Some(d),
        _ => None,
    })) {
        d.validate()?;
        if !held.contains_key(&d.record.port) {
            render::check_port(&d.rendered)?;
        }
    }
    let replaces = order_replacements(nodes, &removes, replaces)?;
    let mut steps = removes;
    steps.extend(updates);
    steps.extend(replaces.into_iter().map(Step::Replace));
    steps.extend(starts);
    // Show the plan in the order it is carried out; unchanged nodes in name order at the end.
    let pos = |name: &str| steps.iter().position(|s| s.node() == name).unwrap_or(usize::MAX);
    shown.sort_by_key(|s| {
        let first = s.action == PlanAction::Unchanged;
        (first, pos(&s.node), super::node::order_key(&s.node))
    });
    Ok(super::handle::Planned { plan: Plan { group, steps: shown }, steps })
}

/// Orders replacements so that none needs a port a not-yet-replaced node still holds.
fn order_replacements(
    nodes: &BTreeMap<String, Node>,
    removes: &[Step],
    mut pending: Vec<DesiredNode>,
) -> Result<Vec<DesiredNode>, ErrorReply> {
    let removed: Vec<&str> = removes.iter().map(Step::node).collect();
    let mut holder: HashMap<u16, String> = nodes
        .values()
        .filter(|n| !removed.contains(&n.rec.name.as_str()))
        .map(|n| (n.rec.port, n.rec.name.clone()))
        .collect();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let moving: Vec<String> = pending.iter().map(|d| d.record.name.clone()).collect();
        let pick = pending.iter().position(|d| match holder.get(&d.record.port) {
            None => true,
            Some(h) if *h == d.record.name => true,
            Some(h) => !moving.contains(h),
        });
        let Some(i) = pick else {
            let names: Vec<&str> = pending.iter().map(|d| d.record.name.as_str()).collect();
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "the new ports of {} would swap with each other; deploy in two steps \
                     (e.g. first to a free --base-port)",
                    names.join(", ")
                ),
            ));
        };
        let d = pending.remove(i);
        if let Some(h) = holder.get(&d.record.port) {
            if *h != d.record.name {
                return Err(err(
                    ErrorKind::PortInUse,
                    format!(
                        "port {} for node {} is still {}'s, which this deploy does not move",
                        d.record.port, d.record.name, h
                    ),
                ));
            }
        }
        if let Some(old) = nodes.get(&d.record.name) {
            holder.remove(&old.rec.port);
        }
        holder.insert(d.record.port, d.record.name.clone());
        out.push(d);
    }
    Ok(out)
}
