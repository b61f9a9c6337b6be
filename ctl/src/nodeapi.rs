//! Talking to one node's HTTP API, for the node commands (`list-worlds`, `ask`, `replay`,
//! `inspect`, `remember`, `world …`, `index status`): where (`--api URL`, default
//! `http://127.0.0.1:8080` as the original CLI, or `--node NAME`, a deployed node found through
//! the supervisor or state.json), with which key (`--api-key` / `DWBASE_API_KEY`, else the
//! node's own config with `--node`), and errors that name the request, the status and the
//! node's reason.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use dwbase_proto::Paths;
use serde_json::Value;

/// The original CLI's default node.
pub const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// `dwbase --api URL <command>` (the original's global flag), set once by `main`.
static GLOBAL_API: OnceLock<Option<String>> = OnceLock::new();

/// Records the top-level `--api` (called once, before dispatch).
pub fn set_global_api(api: Option<String>) {
    let _ = GLOBAL_API.set(api);
}

/// Where a node command goes, shared by every node command.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the node [default: http://127.0.0.1:8080]. Also accepted before the command
    /// (`dwbase --api URL list-worlds`), as the original CLI had it.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// A node deployed by `dwbase deploy` (node-a, …, or the local node's id): its port comes
    /// from the supervisor (or state.json), its API key from its config.
    #[arg(long, value_name = "NAME", conflicts_with = "api")]
    pub node: Option<String>,
    /// Bearer token for the node's API (default: from the node's config with --node).
    #[arg(long, env = "DWBASE_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print what the node answered, as JSON (what the original CLI always printed).
    #[arg(long)]
    pub json: bool,
}

/// A node to send requests to.
#[derive(Debug)]
pub struct NodeApi {
    client: reqwest::Client,
    base: String,
    key: Option<String>,
    /// How the node was named, for messages.
    label: String,
}

/// `host:port` or a URL, as a base URL without a trailing `/` (`http://` when no scheme).
pub fn normalize_url(api: &str) -> String {
    let trimmed = api.trim().trim_end_matches('/');
    if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

/// Percent-encodes one path segment (atom ids may hold `@`, `:`, spaces).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@:!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl NodeApi {
    /// Resolves `args` (and the top-level `--api`) to a node.
    pub async fn connect(paths: &Paths, args: &ApiArgs) -> Result<Self> {
        let client = |default_ca: Option<&std::path::Path>| {
            crate::httpclient::builder_with(default_ca)?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()
                .context("building the HTTP client")
        };
        if let Some(name) = &args.node {
            let node = crate::nodes::find_node(paths, name).await?;
            if !node.running {
                bail!("{name} is not running (dwbase deploy status shows it); start it first");
            }
            let key = args.api_key.clone().or_else(|| {
                dwbase_node::config::Config::load(&node.config_path)
                    .ok()?
                    .node
                    .security
                    .effective_api_key()
                    .map(str::to_owned)
            });
            let (base, ca) = crate::httpclient::deployed_node(&node.config_path, node.port);
            let client = client(ca.as_deref())?;
            return Ok(Self { client, label: format!("{name} ({base})"), base, key });
        }
        let api = args
            .api
            .clone()
            .or_else(|| GLOBAL_API.get().cloned().flatten())
            .unwrap_or_else(|| DEFAULT_API.to_owned());
        let base = normalize_url(&api);
        Ok(Self { client: client(None)?, label: base.clone(), base, key: args.api_key.clone() })
    }

    /// `GET path`, the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.client.get(format!("{}{path}", self.base)), "GET", path).await
    }

    /// `POST path` with a JSON body, the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body), "POST", path).await
    }

    async fn send(&self, req: reqwest::RequestBuilder, method: &str, path: &str) -> Result<Value> {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            let why = crate::httpclient::describe(&e);
            anyhow::anyhow!(
                "{method} {path}: cannot reach the node at {} ({why}); is it running? Name it \
                 with --api URL or --node NAME",
                self.label
            )
        })?;
        let status = resp.status();
        let retry = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text =
            resp.text().await.with_context(|| format!("{method} {path}: reading the answer"))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).with_context(|| {
                format!(
                    "{method} {path}: {} answered {status} with a body that is not JSON",
                    self.label
                )
            });
        }
        // Ours: {"error": code, "message": text, "field"?}; the original's: {"error": text}
        // or plain text.
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reason = match (body.get("error"), body.get("message")) {
            (Some(code), Some(msg)) => format!(
                "{}: {}{}",
                code.as_str().unwrap_or_default(),
                msg.as_str().unwrap_or_default(),
                body.get("field")
                    .and_then(Value::as_str)
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default()
            ),
            (Some(e), None) => e.as_str().unwrap_or_default().to_owned(),
            _ => text.trim().to_owned(),
        };
        let hint = match status.as_u16() {
            401 => " — pass --api-key KEY or set DWBASE_API_KEY (with --node, the node's config is read)".to_owned(),
            429 => retry.map(|s| format!(" — retry after {s} s")).unwrap_or_default(),
            _ => String::new(),
        };
        bail!("{method} {path} on {}: {status}: {reason}{hint}", self.label)
    }
}

/// Parses `--since`: RFC 3339; what the original CLI passed through and its node compared as
/// text — a date (`2026-01-01`), a time without zone (`2026-01-01T10:00`, `…:30`, `….5`, a space
/// instead of `T`), taken as UTC; or a duration back from now (`10m`, `2h`, `1d`).
pub fn parse_since(s: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if dwbase_node::model::parse_timestamp(s).is_some() {
        return Ok(s.to_owned());
    }
    if let Some(t) = dwbase_node::model::parse_filter_time(s) {
        return Ok(t.format(&Rfc3339).expect("formats"));
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        let at = time::OffsetDateTime::now_utc() - ago;
        return Ok(dwbase_node::model::format_rfc3339(at));
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-01-01T10:00:00Z), a date (2026-01-01), a time \
         in UTC (2026-01-01T10:00) or a duration back from now (10m, 2h, 1d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        assert_eq!(parse_since("2026-01-01T10:00:00+02:00").unwrap(), "2026-01-01T10:00:00+02:00");
        assert_eq!(parse_since("2026-01-02").unwrap(), "2026-01-02T00:00:00Z");
        assert_eq!(parse_since("2026-01-02T03:04").unwrap(), "2026-01-02T03:04:00Z");
        assert_eq!(parse_since("2026-01-02 03:04:05").unwrap(), "2026-01-02T03:04:05Z");
        assert_eq!(parse_since("2026-01-02T03:04:05.5").unwrap(), "2026-01-02T03:04:05.5Z");
        let ago = parse_since("10m").unwrap();
        assert!(dwbase_node::model::parse_timestamp(&ago).is_some(), "{ago}");
        let err = parse_since("yesterday-ish").unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("10m"), "{err}");
    }

    #[test]
    fn urls_and_segments() {
        assert_eq!(normalize_url("127.0.0.1:7000/"), "http://127.0.0.1:7000");
        assert_eq!(segment("atom-1@policy:notes"), "atom-1@policy:notes");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
