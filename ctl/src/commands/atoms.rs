//! The original CLI's read commands, and `remember`: `dwbase list-worlds`, `ask WORLD [-q TEXT]`,
//! `replay WORLD [-l N] [--since TS]`, `inspect ID`, `remember WORLD [TEXT]`.
//!
//! Same flags as the original; people get tables, `--json` prints what the node answered (the
//! original always printed that JSON). Warnings of an ask go to stderr.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Args;
use dwbase_proto::Paths;
use serde_json::{json, Value};

use crate::nodeapi::{parse_since, segment, ApiArgs, NodeApi};
use crate::output::Table;
use crate::Usage;

/// `dwbase list-worlds`
#[derive(Debug, Clone, Args)]
pub struct ListWorldsArgs {
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase ask`
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    /// The world to ask.
    pub world: String,
    /// The question; asked for on the terminal when omitted.
    #[arg(short, long)]
    pub question: Option<String>,
    /// Most atoms to return (the node's default is 10).
    #[arg(short, long, value_name = "N")]
    pub limit: Option<usize>,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase replay`
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The world to replay.
    pub world: String,
    /// Only the first N atoms (in append order).
    #[arg(short, long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only atoms at or after this time: RFC 3339, a date (2026-01-01), a UTC time
    /// (2026-01-01T10:00) or a duration back from now (10m, 2h).
    #[arg(long, value_name = "TS", value_parser = parse_since)]
    pub since: Option<String>,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase inspect`
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The atom id.
    pub id: String,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dwbase remember`
#[derive(Debug, Clone, Args)]
pub struct RememberArgs {
    /// The world.
    pub world: String,
    /// Text to remember (stored as the payload {"text": TEXT}); read from stdin when omitted
    /// and no --payload is given.
    pub text: Option<String>,
    /// The payload as given (usually JSON text) instead of TEXT.
    #[arg(long, value_name = "JSON", conflicts_with = "text")]
    pub payload: Option<String>,
    /// Who remembers it.
    #[arg(long, default_value = "dwbase-cli")]
    pub worker: String,
    /// observation, reflection, plan, action or message.
    #[arg(long, default_value = "observation")]
    pub kind: String,
    /// 0..1 (the node clamps it to its importance_cap).
    #[arg(long, default_value_t = 0.5)]
    pub importance: f64,
    /// RFC 3339 time (default: now).
    #[arg(long, value_name = "TS")]
    pub timestamp: Option<String>,
    /// A label (repeatable).
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A flag (repeatable).
    #[arg(long = "flag", value_name = "FLAG")]
    pub flags: Vec<String>,
    /// A link KIND:ID, KIND one of supersedes, references, confirms, contradicts (repeatable).
    #[arg(long = "link", value_name = "KIND:ID", value_parser = parse_link)]
    pub links: Vec<Value>,
    /// Which node.
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_link(s: &str) -> Result<Value, String> {
    let (kind, target) = s.split_once(':').ok_or_else(|| format!("{s:?} is not KIND:ID"))?;
    let kind = kind.trim().to_ascii_lowercase();
    if !["supersedes", "references", "confirms", "contradicts"].contains(&kind.as_str()) {
        return Err(format!(
            "link kind {kind:?} is not one of supersedes, references, confirms, contradicts"
        ));
    }
    Ok(json!({"target": target.trim(), "kind": kind}))
}

fn print_json(v: &Value) -> Result<()> {
    crate::outln!("{}", serde_json::to_string_pretty(v)?)
}

/// The text of a payload for a table cell: its `text` (or first string) when it is JSON,
/// else the raw payload, on one line and cut to `max` characters.
fn payload_cell(payload: &str, max: usize) -> String {
    let value: Option<Value> = serde_json::from_str(payload).ok();
    let text = match &value {
        Some(Value::Object(m)) => m
            .get("text")
            .and_then(Value::as_str)
            .or_else(|| m.values().find_map(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| payload.to_owned()),
        Some(Value::String(s)) => s.clone(),
        _ => payload.to_owned(),
    };
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max - 1).collect::<String>())
    } else {
        flat
    }
}

/// Atoms as a table: id, time, kind, importance, worker, labels, text.
fn atom_table(atoms: &[Value]) -> Result<()> {
    let mut t = Table::new(&["ID", "TIMESTAMP", "KIND", "IMP", "WORKER", "LABELS", "TEXT"]);
    for a in atoms {
        let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
        let labels: Vec<&str> =
            a["labels"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        t.row(vec![
            s("id"),
            s("timestamp"),
            s("kind"),
            a["importance"].as_f64().map(|f| format!("{f:.2}")).unwrap_or_default(),
            s("worker"),
            labels.join(","),
            payload_cell(a["payload_json"].as_str().unwrap_or_default(), 60),
        ]);
    }
    let mut buf = Vec::new();
    t.write(&mut buf)?;
    crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)))
}

/// Runs `dwbase list-worlds`.
pub async fn list_worlds(paths: &Paths, a: ListWorldsArgs) -> Result<()> {
    let node = NodeApi::connect(paths, &a.api).await?;
    let worlds = node.get("/worlds").await?;
    if a.api.json {
        return print_json(&worlds);
    }
    for w in worlds.as_array().into_iter().flatten() {
        crate::outln!("{}", w.as_str().unwrap_or_default())?;
    }
    Ok(())
}

fn prompt(label: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{label}");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the question from stdin")?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        return Err(Usage("the question is empty (give it with -q TEXT)".into()).into());
    }
    Ok(line)
}

/// Runs `dwbase ask`.
pub async fn ask(paths: &Paths, a: AskArgs) -> Result<()> {
    let text = match a.question.as_deref().map(str::trim) {
        Some(q) if !q.is_empty() => q.to_owned(),
        _ => prompt("Question> ")?,
    };
    let node = NodeApi::connect(paths, &a.api).await?;
    let mut body = json!({"world": a.world, "text": text});
    if let Some(limit) = a.limit {
        body["filter"] = json!({"limit": limit});
    }
    let answer = node.post("/ask", &body).await?;
    if a.api.json {
        return print_json(&answer);
    }
    for w in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    let atoms = answer["supporting_atoms"].as_array().cloned().unwrap_or_default();
    if atoms.is_empty() {
        eprintln!("no atoms in {} answer {text:?}", a.world);
        return Ok(());
    }
    atom_table(&atoms)
}

/// Runs `dwbase replay`.
pub async fn replay(paths: &Paths, a: ReplayArgs) -> Result<()> {
    let node = NodeApi::connect(paths, &a.api).await?;
    let mut filter = serde_json::Map::new();
    if let Some(limit) = a.limit {
        filter.insert("limit".into(), json!(limit));
    }
    if let Some(since) = &a.since {
        filter.insert("since".into(), json!(since));
    }
    let atoms = node.post("/replay", &json!({"world": a.world, "filter": filter})).await?;
    if a.api.json {
        return print_json(&atoms);
    }
    atom_table(atoms.as_array().map(Vec::as_slice).unwrap_or_default())
}

/// Runs `dwbase inspect`.
pub async fn inspect(paths: &Paths, a: InspectArgs) -> Result<()> {
    let node = NodeApi::connect(paths, &a.api).await?;
    let atom = node.get(&format!("/atoms/{}", segment(&a.id))).await?;
    if atom.is_null() {
        // The original node answered 200 with null for an unknown id.
        bail!("no atom with id {:?}", a.id);
    }
    if a.api.json {
        return print_json(&atom);
    }
    for key in ["id", "world", "worker", "kind", "timestamp", "importance"] {
        let v = &atom[key];
        crate::outln!("{key:<12} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))?;
    }
    let list = |k: &str| -> String {
        atom[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    crate::outln!("{:<12} {}", "labels", list("labels"))?;
    crate::outln!("{:<12} {}", "flags", list("flags"))?;
    for link in atom["links"].as_array().into_iter().flatten() {
        crate::outln!(
            "{:<12} {} {}",
            "link",
            link["kind"].as_str().unwrap_or_default(),
            link["target"].as_str().unwrap_or_default()
        )?;
    }
    if let Some(v) = atom["vector"].as_array() {
        crate::outln!("{:<12} {} dimensions", "vector", v.len())?;
    }
    crate::outln!("{:<12} {}", "payload", atom["payload_json"].as_str().unwrap_or_default())
}

/// Runs `dwbase remember`.
pub async fn remember(paths: &Paths, a: RememberArgs) -> Result<()> {
    let payload = match (&a.payload, &a.text) {
        (Some(p), _) => p.clone(),
        (None, Some(t)) => json!({"text": t}).to_string(),
        (None, None) => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the text from stdin")?;
            if text.trim().is_empty() {
                return Err(
                    Usage("nothing to remember: give TEXT, --payload or stdin".into()).into()
                );
            }
            json!({"text": text.trim_end()}).to_string()
        }
    };
    let node = NodeApi::connect(paths, &a.api).await?;
    let body = json!({
        "world": a.world, "worker": a.worker, "kind": a.kind, "importance": a.importance,
        "timestamp": a.timestamp.unwrap_or_default(), "payload_json": payload,
        "labels": a.labels, "flags": a.flags, "links": a.links,
    });
    let id = node.post("/remember", &body).await?;
    if a.api.json {
        return print_json(&json!({"id": id}));
    }
    crate::outln!("{}", id.as_str().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_links() {
        assert_eq!(payload_cell(r#"{"text":"hello\n world"}"#, 60), "hello world");
        assert_eq!(payload_cell(r#"{"n":1,"msg":"x"}"#, 60), "x");
        assert_eq!(payload_cell("plain", 60), "plain");
        assert_eq!(payload_cell("abcdef", 4), "abc…");
        assert_eq!(
            parse_link("Confirms:01X").unwrap(),
            json!({"target": "01X", "kind": "confirms"})
        );
        assert!(parse_link("likes:1").is_err() && parse_link("nocolon").is_err());
    }
}
