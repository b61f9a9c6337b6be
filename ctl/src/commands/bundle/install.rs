//! `dwbase bundle install`: put a verified bundle under a prefix, atomically.
//!
//! ```text
//! PREFIX/lib/dwbase/dwbase-0.2.0-x86_64-unknown-linux-gnu-1a2b3c4d5e6f/   one folder per bundle (content id)
//! PREFIX/lib/dwbase/current -> dwbase-0.2.0-…-1a2b3c4d5e6f                switched with one rename
//! PREFIX/bin/dwbase{,-supervisor,-node} -> ../lib/dwbase/current/bin/…
//! PREFIX/share/dwbase -> ../lib/dwbase/current                            templates, units, docs
//! ```
//!
//! The bundle is extracted into a staging folder beside the versions while every file is
//! checked against the signed manifest; nothing outside the staging folder changes until the
//! whole bundle has verified and its `dwbase --version` ran on this machine. The switch is a
//! rename of the `current` link, so a running service sees the old build or the new one,
//! never a mix; the previous folders stay (up to `--keep`) for a rollback by relinking.

use std::fs;
use std::io;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use minisign::PublicKey;

use super::archive::Verified;
use super::COMMANDS;

/// Where the versions live under the prefix.
pub const LIB_DIR: &str = "lib/dwbase";

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    /// The verified bundle.
    pub verified: Verified,
    /// The installed folder.
    pub dir: PathBuf,
    /// The links made or replaced.
    pub links: Vec<PathBuf>,
    /// The previous `current` target, if any.
    pub previous: Option<PathBuf>,
    /// Old version folders removed by `--keep`.
    pub pruned: Vec<PathBuf>,
}

/// Installs `bundle` under `prefix` after verifying it with `pk`. `keep` is how many bundle
/// folders to keep (the new one included); `force` replaces files at the link paths that are
/// not links into this prefix's `lib/dwbase`.
pub fn install(
    bundle: &Path,
    pk: &PublicKey,
    prefix: &Path,
    keep: usize,
    force: bool,
) -> Result<Installed> {
    let prefix =
        std::path::absolute(prefix).with_context(|| format!("resolving {}", prefix.display()))?;
    let lib = prefix.join(LIB_DIR);
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;

    // Links that would be replaced: refuse before anything changes.
    let links: Vec<(PathBuf, PathBuf)> = COMMANDS
        .iter()
        .map(|b| (prefix.join("bin").join(b), Path::new("../lib/dwbase/current/bin").join(b)))
        .chain([(prefix.join("share/dwbase"), PathBuf::from("../lib/dwbase/current"))])
        .collect();
    for (at, _) in &links {
        check_link_slot(at, force)?;
    }

    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&lib)
        .with_context(|| format!("creating a staging folder in {}", lib.display()))?;
    let (verified, _) = super::check(bundle, pk, Some(staging.path()))?;
    let m = &verified.manifest;
    smoke_test(staging.path(), &m.version, &m.target)?;
    #[cfg(unix)]
    set_dir_modes(staging.path())?;

    let name = format!("{}-{}", m.stem(), &verified.manifest_sha256[..12]);
    let dir = lib.join(&name);
    // The same bundle again (same content id) replaces its folder, repairing a damaged copy.
    crate::atomic::swap_in(staging.path(), &dir)?;
    drop(staging); // holds the replaced copy, if any

    let current = lib.join("current");
    let previous = fs::read_link(&current).ok().map(|t| lib.join(t));
    replace_symlink(Path::new(&name), &current)?;
    let mut made = Vec::new();
    for (at, target) in &links {
        if let Some(dir) = at.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        replace_symlink(target, at)?;
        made.push(at.clone());
    }
    sync_dir(&lib);
    let pruned = prune(&lib, &m.name, &dir, previous.as_deref(), keep)?;
    let previous = previous.filter(|p| p != &dir);
    Ok(Installed { verified, dir, links: made, previous, pruned })
}

/// A path where a link goes must be free, or already a link into some `lib/dwbase`, unless
/// `force`.
fn check_link_slot(at: &Path, force: bool) -> Result<()> {
    match fs::symlink_metadata(at) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", at.display())),
        Ok(md) if md.file_type().is_symlink() => {
            let t = fs::read_link(at).with_context(|| format!("reading the link {}", at.display()))?;
            if t.to_string_lossy().contains("lib/dwbase/") || t.ends_with("lib/dwbase/current") || force {
                Ok(())
            } else {
                bail!(
                    "{} is a link to {}, not to a bundle installed here; pass --force to replace it",
                    at.display(),
                    t.display()
                )
            }
        }
        Ok(md) if md.is_dir() && !force => bail!(
            "{} is a folder, not a link to an installed bundle; move it away or pass --force",
            at.display()
        ),
        Ok(_) if force => Ok(()),
        Ok(_) => bail!(
            "{} exists and was not installed from a bundle (e.g. copied by hand); pass --force to replace it with a link to the bundle",
            at.display()
        ),
    }
}

/// Runs the staged `bin/dwbase --version`: a bundle for another machine, or a binary that
/// cannot start, is refused before anything is switched.
fn smoke_test(staging: &Path, version: &str, target: &str) -> Result<()> {
    let exe = staging.join("bin/dwbase");
    let out = Command::new(&exe).arg("--version").output().with_context(|| {
        format!(
            "running the bundle's dwbase (built for {target}; this dwbase is {}); nothing was installed",
            super::BUILD_TARGET
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.split_whitespace().nth(1) != Some(version) {
        bail!(
            "the bundle's dwbase --version printed {:?} ({}), expected \"dwbase {version}\"; nothing was installed",
            text.trim(),
            out.status
        );
    }
    Ok(())
}

#[cfg(unix)]
fn set_dir_modes(root: &Path) -> Result<()> {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", root.display()))?;
    for e in fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let e = e.with_context(|| format!("reading {}", root.display()))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

/// Points `link` at `target` with one rename (a temporary link beside it first).
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.new-{}",
        link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating the link {} -> {}", tmp.display(), target.display()))?;
    #[cfg(not(unix))]
    bail!("bundle install needs symbolic links (Unix)");
    if fs::symlink_metadata(link).is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink()) {
        // Only reached with --force: a real folder cannot be renamed over.
        fs::remove_dir_all(link).with_context(|| format!("removing {}", link.display()))?;
    }
    fs::rename(&tmp, link)
        .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes the oldest `<name>-*` folders beyond `keep`, never the new one or the previous one.
fn prune(
    lib: &Path,
    name: &str,
    new: &Path,
    previous: Option<&Path>,
    keep: usize,
) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let e = e.with_context(|| format!("reading {}", lib.display()))?;
        let p = e.path();
        let is_bundle = e.file_name().to_string_lossy().starts_with(&format!("{name}-"));
        let md = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if is_bundle && md.is_dir() && p != new {
            dirs.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), p));
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut order: Vec<PathBuf> = dirs.into_iter().map(|(_, p)| p).collect();
    // The one `current` pointed at before is the rollback target: kept first.
    if let Some(i) = previous.and_then(|prev| order.iter().position(|p| p == prev)) {
        let p = order.remove(i);
        order.insert(0, p);
    }
    let mut removed = Vec::new();
    for p in order.into_iter().skip(keep.saturating_sub(1)) {
        fs::remove_dir_all(&p)
            .with_context(|| format!("removing the old bundle {}", p.display()))?;
        removed.push(p);
    }
    Ok(removed)
}
