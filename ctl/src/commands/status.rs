//! `dwbase deploy status` and `dwbase supervisor status`.
//!
//! # `--json` (stable keys; new keys may be added, none renamed)
//!
//! The document is [`dwbase_proto::status_doc::StatusJson`] (JSON Schema:
//! docs/status.schema.json); the supervisor's `GET /v1/status` answers the same.
//!
//! ```text
//! {
//!   "version": 1,                       // the document's format
//!   "root": "/abs/.dwbase",
//!   "supervisor": {
//!     "running": true,                  // false: read from state.json, see "state_files"
//!     "pid": 1234, "version": "0.2.0",  // null when not running (pid: the recorded one if alive)
//!     "socket": "/abs/.dwbase/supervisor.sock",
//!     "metrics_url": "http://127.0.0.1:9464/metrics",   // or null
//!     "started_unix_ms": 1764057600000, "uptime_ms": 5000, // or null
//!     "state_files": ["/abs/.dwbase/devnet/state.json"]   // the files read (fallback only)
//!   },
//!   "nodes": [{
//!     "name": "node-a", "id": "node-a", "group": "devnet" | "local",
//!     "pid": 12345 | null, "port": 7000,
//!     "url": "http://127.0.0.1:7000" | "https://127.0.0.1:7000",  // its config's scheme
//!     "state": "starting|ready|degraded|unready|backoff|crash-loop|stopping|stopped"
//!              (supervised) | "alive|dead|pid-reused|stopped" (from state.json),
//!     "ready": true, "restarts": 0, "uptime_ms": 5000 | null,
//!     "restart_policy": "always|on-failure|never",
//!     "last_exit": {"code": 1 | null, "signal": 9 | null, "at_unix_ms": 0, "cause": "unexpected", "reason": "opening the store: …" | null} | null,
//!     "dir": "...", "data_dir": "...", "log_path": "...", "config_path": "...",
//!     "message": "..." | null,
//!     "desired": "running" | "stopped",
//!     "liveness": {"period_ms", "timeout_ms", "failures", "failing"} | null
//!   }],
//!   "warnings": ["..."]
//! }
//! ```
//!
//! Exit status (the supervisorctl / systemctl convention): 0 when a supervisor runs and every
//! node that should run is ready (nothing deployed included); 3 when the supervisor is down or
//! a node that should run is not ready; 1 when the status could not be found out (unreadable
//! state, a supervisor of another protocol).
//!
//! With recorded nodes and no supervisor, `deploy status` starts one first (it adopts what runs
//! and restarts what died, and says so); `--no-start` reads state.json only.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use dwbase_proto::Paths;

use crate::daemon;
use crate::output::humanize;
use crate::report::{from_state_files, write_human, StatusJson, SupervisorJson};

/// `dwbase deploy status`.
pub async fn run(paths: &Paths, json: bool, no_start: bool) -> Result<()> {
    let doc = document(paths, no_start).await?;
    // One write for the whole table, not one per line.
    let mut text = Vec::new();
    if json {
        serde_json::to_writer_pretty(&mut text, &doc)?;
        writeln!(text)?;
    } else {
        write_human(&mut text, &doc)?;
    }
    crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&text)))?;
    if doc.all_desired_ready() {
        Ok(())
    } else {
        Err(crate::Silent(STATUS_NOT_READY).into())
    }
}

/// The status document: from the supervisor (started when nodes are recorded and none runs,
/// unless `no_start`), else from the state files. Shared by `deploy status` and `--watch`.
pub async fn document(paths: &Paths, no_start: bool) -> Result<StatusJson> {
    Ok(match daemon::attach(paths, no_start).await? {
        Ok(mut client) => {
            let report = daemon::status(&mut client).await?;
            StatusJson::from_report(paths.root.clone(), &report)
        }
        Err(offline) => {
            offline.warn();
            from_state_files(paths)?
        }
    })
}

/// `deploy status`'s exit code when the supervisor or a node that should run is down.
pub const STATUS_NOT_READY: u8 = 3;

/// `dwbase supervisor status`: exits 1 when no supervisor runs.
pub async fn supervisor_status(paths: &Paths, json: bool) -> Result<()> {
    let Some(mut client) = daemon::connect(paths).await? else {
        if json {
            let doc = from_state_files(paths)?;
            crate::outln!("{}", serde_json::to_string_pretty(&doc.supervisor)?)?;
        } else {
            crate::outln!("supervisor: not running (socket {})", paths.socket().display())?;
        }
        return Err(crate::Silent(1).into());
    };
    let info = daemon::ping(&mut client).await?;
    let s = SupervisorJson::from_info(&info);
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&s)?)?;
    } else {
        crate::outln!("pid:      {}", info.pid)?;
        crate::outln!("version:  {}", info.version)?;
        crate::outln!("root:     {}", info.root.display())?;
        crate::outln!("socket:   {}", info.socket.display())?;
        crate::outln!("metrics:  {}", info.metrics_url.as_deref().unwrap_or("off"))?;
        crate::outln!("uptime:   {}", humanize(Duration::from_millis(s.uptime_ms.unwrap_or(0))))?;
    }
    Ok(())
}
