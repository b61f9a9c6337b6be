//! Putting a folder in place in one step (restores, bundle installs).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// Puts `staging` at `target` in one atomic step. With an existing `target`, the two are
/// exchanged (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames), so `staging` then
/// holds the old content.
pub fn swap_in(staging: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return fs::rename(staging, target)
            .with_context(|| format!("renaming {} to {}", staging.display(), target.display()));
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, staging, AT_FDCWD, target, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!("renameat2(RENAME_EXCHANGE) failed ({e}); using two renames"),
        }
    }
    let aside = staging.with_extension("previous");
    fs::rename(target, &aside)
        .with_context(|| format!("moving {} aside to {}", target.display(), aside.display()))?;
    if let Err(e) = fs::rename(staging, target) {
        let _ = fs::rename(&aside, target);
        return Err(e)
            .with_context(|| format!("renaming {} to {}", staging.display(), target.display()));
    }
    fs::rename(&aside, staging).with_context(|| format!("renaming {}", aside.display()))
}
