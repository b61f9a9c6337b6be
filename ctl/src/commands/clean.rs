//! `dwbase deploy clean`.
//!
//! It never deletes the data of a node that runs: every node is stopped through the supervisor
//! first (the one owner), then, holding the root lock so no supervisor can start meanwhile,
//! each node folder is checked — sled's lock on its store, the pids its records name, any
//! process whose command line points into it — and one live user anywhere means nothing at
//! all is removed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dwbase_proto::process::{self, Liveness};
use dwbase_proto::state::NodeRecord;
use dwbase_proto::{Group, Paths};

use crate::cli::{CleanArgs, StopArgs};
use crate::Usage;

/// `dwbase deploy clean`: stop everything, then remove the devnet and local folders and the
/// supervisor's files (never anything else in the root).
pub async fn clean(paths: &Paths, args: &CleanArgs, no_start: bool) -> Result<()> {
    if !args.yes {
        if std::io::stdin().is_terminal() {
            eprint!(
                "Stop every node and delete {}/{{devnet,local}} and the supervisor's files? [y/N] ",
                paths.root.display()
            );
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                eprintln!("nothing removed");
                return Err(crate::Silent(1).into());
            }
        } else {
            return Err(Usage(format!(
                "refusing to delete {} without --yes (this removes every node's data)",
                paths.root.display()
            ))
            .into());
        }
    }
    if !paths.root.exists() {
        crate::outln!("nothing to remove under {}", paths.root.display())?;
        return Ok(());
    }
    crate::commands::stop::run(paths, &StopArgs { nodes: Vec::new(), timeout: None }, no_start)
        .await
        .context("stopping the nodes before deleting their data (nothing was removed)")?;

    // From here on no supervisor can start for this root until we are done.
    let _lock = crate::fallback::lock_root(paths, Duration::from_secs(10)).await?;
    let folders: Vec<PathBuf> = [Group::Devnet, Group::Local]
        .into_iter()
        .flat_map(|g| node_folders(&paths.group_dir(g)))
        .collect();
    let mut in_use = Vec::new();
    for f in &folders {
        in_use.extend(users_of(paths, f)?);
    }
    if !in_use.is_empty() {
        bail!(
            "refusing to delete data that is in use; nothing was removed:\n  {}",
            in_use.join("\n  ")
        );
    }

    let mut removed = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let dir = paths.group_dir(group);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(dir);
        }
    }
    let mut files = vec![paths.pid_file(), paths.preferred_socket()];
    if let Ok(entries) = std::fs::read_dir(&paths.root) {
        files.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("supervisor.log"))
                .map(|e| e.path()),
        );
    }
    for f in files {
        if std::fs::symlink_metadata(&f).is_ok() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            removed.push(f);
        }
    }
    // The lock file goes last, while we still hold it; then the root, if nothing else is there.
    let lock_file = dwbase_proto::lock::lock_path(paths);
    if std::fs::remove_file(&lock_file).is_ok() {
        removed.push(lock_file);
    }
    if std::fs::remove_dir(&paths.root).is_ok() {
        removed.push(paths.root.clone());
    }
    if removed.is_empty() {
        crate::outln!("nothing to remove under {}", paths.root.display())?;
    } else {
        for r in removed {
            crate::outln!("removed {}", r.display())?;
        }
    }
    Ok(())
}

/// The node folders of a group folder (its sub-folders).
fn node_folders(group_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(group_dir) else { return Vec::new() };
    entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// Who still uses a node folder: one line per user found, empty when it is safe to delete.
fn users_of(paths: &Paths, folder: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let record = NodeRecord::load_from(folder);
    let mut data_dirs = vec![folder.join("data")];
    if let Some(r) = &record {
        if !data_dirs.contains(&r.data_dir) {
            data_dirs.push(r.data_dir.clone());
        }
    }
    for data in &data_dirs {
        let db = data.join("db");
        if db.is_file() && crate::nodes::sled_locked(&db)? {
            out.push(format!(
                "{}: its store is open (sled's lock on {} is held)",
                folder.display(),
                db.display()
            ));
        }
    }
    // The pids its records name (state.json's and the folder's own node.json).
    let mut records: Vec<NodeRecord> = record.into_iter().collect();
    if let Ok(groups) = crate::fallback::load_all(paths) {
        records.extend(groups.into_iter().flat_map(|g| g.state.nodes).filter(|n| n.dir == folder));
    }
    for r in &records {
        if let Some(pid) = r.pid {
            if process::liveness(pid, r.start_time) == Liveness::Alive {
                out.push(format!("{}: {} runs as pid {pid}", folder.display(), r.name));
            }
        }
    }
    // Any process pointed at it (a node started by hand, a process of a lost record).
    let canon = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    let me = std::process::id();
    for id in process::find_processes(|args| {
        ["--config", "--data-dir"].iter().any(|flag| {
            process::arg_value(args, flag).is_some_and(|p| {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                p.starts_with(&canon)
            })
        })
    }) {
        if id.pid != me && !out.iter().any(|l| l.contains(&format!("pid {}", id.pid))) {
            out.push(format!("{}: pid {} was started on it", folder.display(), id.pid));
        }
    }
    Ok(out)
}
