//! What a starting supervisor finds on its root: the nodes recorded in both state files, the
//! records in every node folder (`node.json`), and — as the last resort — live processes whose
//! command line names a config under the root. Together they make sure a node is adopted, and
//! never started a second time, even when state.json was lost, corrupt or unwritable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dwbase_proto::process::{self, Liveness, ProcessId};
use dwbase_proto::state::{Desired, Loaded, NodeRecord, StateFile, NODE_RECORD_FILE};
use dwbase_proto::{Group, LivenessSpec, Paths, RestartPolicy, StartupReport};
use tracing::{info, warn};

/// A node found at start-up, and how.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// Its record (the best one found).
    pub rec: NodeRecord,
    /// Found only through its folder or its command line, not in a state file.
    pub recovered: bool,
}

/// Everything found on the root.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// One entry per node name.
    pub nodes: Vec<Found>,
    /// Extra live processes claiming a node another process already is (never adopted:
    /// stopped, so that no node runs twice).
    pub duplicates: Vec<(String, ProcessId)>,
}

fn alive(rec: &NodeRecord) -> bool {
    rec.pid.is_some_and(|pid| process::liveness(pid, rec.start_time) == Liveness::Alive)
}

/// The state file of `group`, loaded as its owner (a corrupt one is moved aside and reported).
fn from_state_file(paths: &Paths, group: Group, report: &mut StartupReport) -> Vec<NodeRecord> {
    let path = paths.state_file(group);
    match StateFile::load(&path) {
        Ok(Loaded::Missing) => vec![],
        Ok(Loaded::Ok(state)) => state
            .nodes
            .into_iter()
            .map(|mut r| {
                if r.name.is_empty() {
                    r.name = r.id.clone();
                }
                // Version-0 files (the original tool) have no group field; trust the file.
                r.group = group;
                r
            })
            .collect(),
        Ok(Loaded::Corrupt { moved_to, reason }) => {
            let moved = moved_to.map(|p| p.display().to_string()).unwrap_or_default();
            let msg = format!(
                "{} was unreadable ({reason}); moved it to {moved}; nodes are recovered from \
                 their folders and command lines",
                path.display()
            );
            warn!("{msg}");
            report.warnings.push(msg);
            vec![]
        }
        Err(e) => {
            let msg = format!("{e}; nodes are recovered from their folders and command lines");
            warn!("{msg}");
            report.warnings.push(msg);
            vec![]
        }
    }
}

/// Node folders that may hold a `node.json`: `<root>/devnet/*`, `<root>/local` and
/// `<root>/local/*`.
fn node_folders(paths: &Paths) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let dir = paths.group_dir(group);
        if group == Group::Local {
            out.push(dir.clone());
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && e.path().join(NODE_RECORD_FILE).is_file()
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

#[cfg(unix)]
fn owned_by_us(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
}

#[cfg(not(unix))]
fn owned_by_us(_pid: u32) -> bool {
    false
}

/// A record for a live node process found by its command line only.
fn record_from_process(paths: &Paths, id: ProcessId, config: &Path) -> Option<NodeRecord> {
    let dir = config.parent()?.to_path_buf();
    let group =
        if dir.starts_with(paths.group_dir(Group::Devnet)) { Group::Devnet } else { Group::Local };
    let text = std::fs::read_to_string(config).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    let node = doc.get("node")?.as_table()?;
    let node_id = node.get("id").and_then(|v| v.as_str()).unwrap_or("local").to_owned();
    let port = node
        .get("listen")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .map_or(0, |a| a.port());
    let str_path = |key: &str, default: PathBuf| {
        node.get(key).and_then(|v| v.as_str()).map(PathBuf::from).unwrap_or(default)
    };
    let name = match group {
        Group::Devnet => dir.file_name()?.to_string_lossy().into_owned(),
        Group::Local => node_id.clone(),
    };
    let log_dir = str_path("log_dir", dir.join("logs"));
    Some(NodeRecord {
        id: node_id,
        name,
        group,
        port,
        pid: Some(id.pid),
        start_time: id.start_time,
        data_dir: str_path("data_dir", dir.join("data")),
        log_path: log_dir.join("node.log"),
        config_path: config.to_path_buf(),
        dir,
        desired: Desired::Running,
        restart_policy: RestartPolicy::Always,
        restarts: 0,
        last_exit: None,
        stop_timeout_ms: dwbase_proto::state::DEFAULT_STOP_TIMEOUT_MS,
        env: vec![],
        liveness: LivenessSpec::DEFAULT,
        fingerprint: None,
    })
}

/// Gathers every node of the root. See the module docs.
pub(super) fn gather(paths: &Paths, report: &mut StartupReport) -> Restored {
    let mut by_name: BTreeMap<String, Found> = BTreeMap::new();
    for group in [Group::Devnet, Group::Local] {
        for rec in from_state_file(paths, group, report) {
            if by_name.contains_key(&rec.name) {
                warn!(node = %rec.name, "listed twice in the state files; keeping the first");
                continue;
            }
            by_name.insert(rec.name.clone(), Found { rec, recovered: false });
        }
    }

    // Folder records: written at every spawn, so they know a process state.json may not.
    for dir in node_folders(paths) {
        let Some(mut rec) = NodeRecord::load_from(&dir) else { continue };
        if rec.name.is_empty() {
            rec.name = rec.id.clone();
        }
        match by_name.get_mut(&rec.name) {
            Some(f) if !alive(&f.rec) && alive(&rec) => {
                info!(node = %rec.name, pid = ?rec.pid, "its folder knows a live process state.json does not");
                f.rec.pid = rec.pid;
                f.rec.start_time = rec.start_time;
            }
            Some(_) => {}
            None if alive(&rec) => {
                info!(node = %rec.name, pid = ?rec.pid, "found through its folder (not in state.json)");
                by_name.insert(rec.name.clone(), Found { rec, recovered: true });
            }
            // A dead node no state file lists was removed (or its record is all that is left):
            // nothing to run.
            None => {}
        }
    }

    // Command lines: a node process whose --config lies under this root.
    let root = paths.root.clone();
    let leaders = process::find_group_leaders(|args| {
        process::arg_value(args, "--config").is_some_and(|c| c.starts_with(&root))
    });
    let mut duplicates = Vec::new();
    for id in leaders {
        if id.pid == std::process::id() || !owned_by_us(id.pid) {
            continue;
        }
        let known = by_name
            .values()
            .any(|f| f.rec.pid == Some(id.pid) && f.rec.start_time == id.start_time);
        if known {
            continue;
        }
        let Some(config) = process::cmdline(id.pid)
            .and_then(|a| process::arg_value(&a, "--config").map(Path::to_path_buf))
        else {
            continue;
        };
        let Some(found) = record_from_process(paths, id, &config) else {
            warn!(pid = id.pid, config = %config.display(), "a process names a config under the root that cannot be read; left alone");
            continue;
        };
        match by_name.get_mut(&found.name) {
            Some(f) if alive(&f.rec) => {
                warn!(node = %found.name, pid = id.pid, kept = ?f.rec.pid, "a second process runs as this node; stopping it");
                duplicates.push((found.name.clone(), id));
            }
            Some(f) => {
                info!(node = %found.name, pid = id.pid, "found its live process by its command line");
                f.rec.pid = Some(id.pid);
                f.rec.start_time = id.start_time;
                f.recovered = true;
            }
            None => {
                info!(node = %found.name, pid = id.pid, "found a node process no record lists");
                by_name.insert(found.name.clone(), Found { rec: found, recovered: true });
            }
        }
    }
    Restored { nodes: by_name.into_values().collect(), duplicates }
}
