//! `dwbase deploy clean`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use dwbase_proto::{Group, Paths};

use crate::cli::{CleanArgs, StopArgs};
use crate::Usage;

/// `dwbase deploy clean`: stop everything, then remove the devnet and local folders and the
/// supervisor's files (never anything else in the root).
pub async fn clean(paths: &Paths, args: &CleanArgs) -> Result<()> {
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
    crate::commands::stop::run(paths, &StopArgs { nodes: Vec::new(), timeout: None }).await?;
    let mut removed = Vec::new();
    for group in [Group::Devnet, Group::Local] {
        let dir = paths.group_dir(group);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(dir);
        }
    }
    let mut files =
        vec![paths.pid_file(), paths.root.join("supervisor.lock"), paths.preferred_socket()];
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
    // The root itself goes only if nothing else lives there.
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
