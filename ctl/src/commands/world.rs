//! The original CLI's world and index commands: `dwbase world create|archive|resume|policy`,
//! `dwbase index status`, with its flags (`--labels a,b`, `--replication-allow a,b`, …).

use anyhow::Result;
use clap::{Args, Subcommand};
use dwbase_proto::Paths;
use serde_json::{json, Value};

use crate::nodeapi::{ApiArgs, NodeApi};
use crate::output::Table;
use crate::Usage;

/// `dwbase world …`
#[derive(Debug, Subcommand)]
pub enum WorldCommand {
    /// Create a world (or update its description and labels).
    Create(CreateArgs),
    /// Archive a world: hidden from list-worlds, writes refused, reads still work.
    Archive(NameArgs),
    /// Resume an archived world.
    Resume(NameArgs),
    /// Set a world's policy.
    Policy(PolicyArgs),
}

/// `dwbase world create`
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The world.
    pub world: String,
    /// What it is for.
    #[arg(long)]
    pub description: Option<String>,
    /// Labels, comma-separated.
    #[arg(long, value_name = "a,b")]
    pub labels: Option<String>,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase world archive|resume`
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// The world.
    pub world: String,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase world policy`
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// The world.
    pub world: String,
    /// Days to keep atoms.
    #[arg(long, value_name = "N")]
    pub retention_days: Option<u64>,
    /// Least importance worth keeping (0..1).
    #[arg(long, value_name = "F")]
    pub min_importance: Option<f64>,
    /// Peers allowed to receive the world, comma-separated.
    #[arg(long, value_name = "a,b")]
    pub replication_allow: Option<String>,
    /// Peers never to receive the world, comma-separated.
    #[arg(long, value_name = "a,b")]
    pub replication_deny: Option<String>,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase index …`
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Show the node's text index per world.
    Status(IndexStatusArgs),
}

/// `dwbase index status`
#[derive(Debug, Clone, Args)]
pub struct IndexStatusArgs {
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

fn csv(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `dwbase world …`.
pub async fn run(paths: &Paths, cmd: WorldCommand) -> Result<()> {
    let (api, path, body, done) = match cmd {
        WorldCommand::Create(a) => {
            let body = json!({"action": "create", "world": a.world, "description": a.description,
                              "labels": csv(&a.labels)});
            (a.api, "/worlds/manage", body, format!("world {:?} created", a.world))
        }
        WorldCommand::Archive(a) => {
            let body = json!({"action": "archive", "world": a.world});
            (a.api, "/worlds/manage", body, format!("world {:?} archived", a.world))
        }
        WorldCommand::Resume(a) => {
            let body = json!({"action": "resume", "world": a.world});
            (a.api, "/worlds/manage", body, format!("world {:?} resumed", a.world))
        }
        WorldCommand::Policy(a) => {
            let (allow, deny) = (csv(&a.replication_allow), csv(&a.replication_deny));
            if a.retention_days.is_none()
                && a.min_importance.is_none()
                && allow.is_empty()
                && deny.is_empty()
            {
                return Err(Usage(
                    "set at least one of --retention-days, --min-importance, \
                     --replication-allow, --replication-deny"
                        .into(),
                )
                .into());
            }
            let body = json!({"world": a.world, "retention_days": a.retention_days,
                              "min_importance": a.min_importance, "replication_allow": allow,
                              "replication_deny": deny});
            (a.api, "/worlds/policy", body, format!("policy of world {:?} set", a.world))
        }
    };
    let node = NodeApi::connect(paths, &api).await?;
    let record = node.post(path, &body).await?;
    if api.json {
        return crate::outln!("{}", serde_json::to_string_pretty(&record)?);
    }
    crate::outln!("{done}")
}

/// Runs `dwbase index status`: one row per world, as the original's table (plus documents).
pub async fn index(paths: &Paths, cmd: IndexCommand) -> Result<()> {
    let IndexCommand::Status(a) = cmd;
    let node = NodeApi::connect(paths, &a.api).await?;
    let statuses = node.get("/index/status").await?;
    if a.api.json {
        return crate::outln!("{}", serde_json::to_string_pretty(&statuses)?);
    }
    let mut t = Table::new(&[
        "WORLD",
        "VERSION",
        "EMBEDDER",
        "LAST REBUILT",
        "READY",
        "REBUILDING",
        "PROGRESS",
        "DOCS",
    ]);
    for s in statuses.as_array().into_iter().flatten() {
        let text = |k: &str| match &s[k] {
            Value::String(v) => v.clone(),
            Value::Null => "-".into(),
            v => v.to_string(),
        };
        t.row(vec![
            text("world"),
            text("version"),
            text("embedder_version"),
            text("last_rebuilt"),
            text("ready"),
            text("rebuilding"),
            format!("{:.0}%", s["progress"].as_f64().unwrap_or(0.0) * 100.0),
            text("docs"),
        ]);
    }
    let mut buf = Vec::new();
    t.write(&mut buf)?;
    crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)))
}
