//! Finding deployed nodes and what they use, for commands that act on a node's data: a node by
//! name (through the supervisor, or state.json when none runs), and whether a data dir is in
//! use (sled's lock, a live recorded pid, a node the supervisor keeps running).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dwbase_proto::process::{self, Liveness};
use dwbase_proto::state::{Desired, Loaded, StateFile};
use dwbase_proto::{Group, NodeStatus, Paths};

/// What `--node NAME` resolves to.
#[derive(Debug)]
pub struct FoundNode {
    /// Its node id.
    pub id: String,
    /// Its HTTP port.
    pub port: u16,
    /// A process runs for it.
    pub running: bool,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
}

/// Looks `name` up through the supervisor, or in the state files when none runs.
pub async fn find_node(paths: &Paths, name: &str) -> Result<FoundNode> {
    if let Some(mut client) = crate::daemon::connect(paths).await? {
        let report = crate::daemon::status(&mut client).await?;
        let known: Vec<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
        let Some(n) = report.nodes.iter().find(|n| n.name == name) else {
            bail!("{}", dwbase_proto::unknown_node_message(name, &known));
        };
        let n = n.clone();
        return Ok(found_from_status(n));
    }
    for group in [Group::Devnet, Group::Local] {
        let file = paths.state_file(group);
        let state = match StateFile::read(&file) {
            Ok(Loaded::Ok(s)) => s,
            Ok(_) => continue,
            Err(e) => bail!("reading {}: {e}", file.display()),
        };
        if let Some(n) = state.nodes.into_iter().find(|n| n.name == name || n.id == name) {
            let running =
                n.pid.is_some_and(|p| process::liveness(p, n.start_time) == Liveness::Alive);
            return Ok(FoundNode {
                id: n.id,
                port: n.port,
                running,
                data_dir: n.data_dir,
                config_path: n.config_path,
            });
        }
    }
    bail!(
        "no node named {name:?} under {} (no supervisor answers and the state files do not list it)",
        paths.root.display()
    )
}

fn found_from_status(n: NodeStatus) -> FoundNode {
    FoundNode {
        running: n.pid.is_some(),
        id: n.id,
        port: n.port,
        data_dir: n.data_dir,
        config_path: n.config_path,
    }
}

/// Refuses a data dir a node is using: sled's lock held, or a state file listing a node on it
/// that is alive or that a live supervisor keeps running.
pub fn refuse_if_running(paths: &Paths, target: &Path) -> Result<()> {
    let db = target.join("db");
    if db.is_file() && sled_locked(&db)? {
        bail!(
            "a node is running on {} (sled's lock on {} is held); stop it first \
             (dwbase deploy stop NODE), then restore",
            target.display(),
            db.display()
        );
    }
    let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(target);
    for group in [Group::Devnet, Group::Local] {
        let Ok(Loaded::Ok(state)) = StateFile::read(&paths.state_file(group)) else { continue };
        let supervisor_alive = state
            .supervisor
            .as_ref()
            .is_some_and(|s| process::liveness(s.pid, s.start_time) == Liveness::Alive);
        for n in state.nodes.iter().filter(|n| canon(&n.data_dir) == want) {
            if let Some(pid) = n.pid {
                if process::liveness(pid, n.start_time) == Liveness::Alive {
                    bail!(
                        "{} (pid {pid}) is running on {}; stop it first: dwbase deploy stop {}",
                        n.name,
                        target.display(),
                        n.name
                    );
                }
            }
            if supervisor_alive && n.desired == Desired::Running {
                bail!(
                    "{} uses {} and the supervisor keeps it running (it would restart it during \
                     the restore); stop it first: dwbase deploy stop {}",
                    n.name,
                    target.display(),
                    n.name
                );
            }
        }
    }
    Ok(())
}

/// Whether someone holds sled's lock (an exclusive `flock` on `<dir>/db`).
#[cfg(unix)]
pub fn sled_locked(db: &Path) -> Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let file = File::open(db).with_context(|| format!("opening {}", db.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            drop(lock);
            Ok(false)
        }
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(e).with_context(|| format!("checking the lock on {}", db.display())),
    }
}

/// Whether someone holds sled's lock (not checked on this platform).
#[cfg(not(unix))]
pub fn sled_locked(_db: &Path) -> Result<bool> {
    Ok(false)
}
