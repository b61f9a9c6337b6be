//! `dwbase bundle keygen|create|verify|install`: a signed offline release for edge boxes.
//!
//! A bundle is `dwbase-<version>-<target>.tar.zst`: the three programs, the templates, units,
//! container, Kubernetes and Prometheus files and the docs, with a content-addressed manifest
//! (name, version, target triple, git commit, size and sha256 of every file) signed with
//! minisign. Debian's `minisign -V` checks the manifest's signature (inside the archive) and
//! the detached signature of the whole archive (`<bundle>.minisig`, written beside it), so
//! an operator can check a bundle without trusting the dwbase inside it. `verify` checks the
//! signature and every file; `install` does the same while extracting, then switches the
//! installation over in one rename (see [`install`]).
//!
//! Layout of the archive: `manifest` documents the manifest, `archive` the format.

pub mod archive;
pub mod install;
pub mod keys;
pub mod manifest;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::human_bytes;
use archive::Input;
use manifest::{Manifest, FORMAT};

/// The programs every bundle carries, under `bin/`: the three an operator runs, and the
/// supervisor's per-node log pipe (`dwbase-logpipe`, found beside `dwbase-supervisor`).
pub const BINARIES: [&str; 4] = ["dwbase", "dwbase-supervisor", "dwbase-node", "dwbase-logpipe"];
/// The programs `bundle install` links into `<prefix>/bin` (the log pipe is no command).
pub const COMMANDS: [&str; 3] = ["dwbase", "dwbase-supervisor", "dwbase-node"];
/// The target triple this dwbase was built for.
pub const BUILD_TARGET: &str = env!("DWBASE_BUILD_TARGET");
/// Folders and files of the source tree that go into a bundle.
const SOURCE_PATHS: [&str; 3] = ["deploy", "docs", "README.md"];
/// Under those, what stays out: the CI's own artifact checks.
const SOURCE_EXCLUDED: [&str; 1] = ["deploy/checks/"];

/// `dwbase bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Make a minisign key pair for signing bundles (the secret key never goes into a bundle).
    Keygen(KeygenArgs),
    /// Pack the programs (dwbase, dwbase-supervisor, dwbase-node, dwbase-logpipe), templates, units, container and k8s files and docs into a
    /// signed dwbase-VERSION-TARGET.tar.zst.
    Create(CreateArgs),
    /// Check a bundle's signature and every file's size and sha256.
    Verify(VerifyArgs),
    /// Install a verified bundle under a prefix (e.g. on an offline edge box), atomically.
    Install(InstallArgs),
}

/// `dwbase bundle keygen`
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where the secret key goes (mode 0600; keep it off the edge boxes).
    #[arg(long, value_name = "FILE", default_value = "dwbase-bundle.key")]
    pub secret_key: PathBuf,
    /// Where the public key goes (hand this to the boxes that install bundles).
    #[arg(long, value_name = "FILE", default_value = "dwbase-bundle.pub")]
    pub public_key: PathBuf,
    /// No password on the secret key (for a CI that keeps the key in its secret store).
    /// Otherwise the password comes from $DWBASE_BUNDLE_PASSWORD or a prompt.
    #[arg(long)]
    pub unencrypted: bool,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

/// `dwbase bundle create`
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The bundle to write (default: dwbase-VERSION-TARGET.tar.zst here; a folder means
    /// that name inside it). `<out>.minisig` is written beside it.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The minisign secret key to sign with (from `dwbase bundle keygen` or `minisign -G`);
    /// an encrypted key's password comes from $DWBASE_BUNDLE_PASSWORD or a prompt.
    #[arg(long, value_name = "FILE", env = "DWBASE_BUNDLE_SECRET_KEY")]
    pub secret_key: PathBuf,
    /// Where dwbase, dwbase-supervisor and dwbase-node are (default: beside this dwbase,
    /// e.g. target/release).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The source tree holding deploy/, docs/ and README.md (its tracked files are packed).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub source: PathBuf,
    /// Target triple of the binaries (default: this dwbase's); give it when packing a cross
    /// build from --bin-dir.
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
    /// Git commit to record (default: `git rev-parse HEAD` of --source).
    #[arg(long, value_name = "SHA")]
    pub git_commit: Option<String>,
    /// zstd level, 1 (fast) to 22 (small).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
}

/// `dwbase bundle verify`
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The bundle.
    pub file: PathBuf,
    /// The public key: a .pub file or its base64 line.
    #[arg(long, value_name = "KEY", env = "DWBASE_BUNDLE_PUBKEY")]
    pub pubkey: String,
    /// One JSON object on stdout: {bundle, name, version, target, git_commit, git_dirty,
    /// created_unix, files, bytes, manifest_sha256, key_id, trusted_comment, detached_signature}.
    #[arg(long)]
    pub json: bool,
}

/// `dwbase bundle install`
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The bundle.
    pub file: PathBuf,
    /// The public key: a .pub file or its base64 line. Installing needs it: an unverified
    /// bundle is never installed.
    #[arg(long, value_name = "KEY", env = "DWBASE_BUNDLE_PUBKEY")]
    pub pubkey: String,
    /// Install under here: PREFIX/lib/dwbase/BUNDLE/, with PREFIX/bin/dwbase* and
    /// PREFIX/share/dwbase linking to it.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// How many installed bundles to keep (the new one and the one before it first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// Replace files at PREFIX/bin/dwbase* or PREFIX/share/dwbase that were not installed
    /// from a bundle.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `dwbase bundle` command.
pub fn run(cmd: BundleCommand) -> Result<()> {
    match cmd {
        BundleCommand::Keygen(a) => keygen(&a),
        BundleCommand::Create(a) => create(&a),
        BundleCommand::Verify(a) => verify(&a),
        BundleCommand::Install(a) => install_cmd(&a),
    }
}

fn keygen(a: &KeygenArgs) -> Result<()> {
    let g = keys::generate(&a.secret_key, &a.public_key, a.unencrypted, a.force)?;
    crate::outln!(
        "key {} ({})",
        g.id,
        if g.encrypted { "password-protected" } else { "no password" }
    )?;
    crate::outln!(
        "  secret key: {} (keep it off the edge boxes and out of bundles)",
        g.secret.display()
    )?;
    crate::outln!(
        "  public key: {} (give it to the boxes that verify and install)",
        g.public.display()
    )?;
    Ok(())
}

/// The detached signature of a whole bundle: `<bundle>.minisig`.
pub fn detached_sig_path(bundle: &Path) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

fn create(a: &CreateArgs) -> Result<()> {
    let source = std::path::absolute(&a.source)
        .with_context(|| format!("resolving {}", a.source.display()))?;
    for p in ["deploy", "docs"] {
        if !source.join(p).is_dir() {
            bail!(
                "{} is not a dwbase source tree (no {p}/ folder); pass --source DIR",
                source.display()
            );
        }
    }
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("finding this dwbase")?
            .parent()
            .map(Path::to_path_buf)
            .context("finding the folder of this dwbase")?,
    };
    let target = a.target.clone().unwrap_or_else(|| BUILD_TARGET.to_owned());
    let version = dwbase_proto::BUILD_VERSION.to_owned();

    let mut inputs = Vec::new();
    for b in BINARIES {
        let p = bin_dir.join(b);
        if !p.is_file() {
            bail!(
                "{} is missing: build the programs first (cargo build --release --locked -p dwbase-ctl --bins) or pass --bin-dir",
                p.display()
            );
        }
        if target == BUILD_TARGET {
            check_binary_version(&p, b, &version)?;
        }
        inputs.push(Input { source: p, path: format!("bin/{b}"), executable: true });
    }
    let git = git_info(&source);
    let listed = match &git {
        Some(g) => g.files.clone(),
        None => {
            tracing::warn!(
                "{} is not a git checkout: packing every file under deploy/ and docs/ except dot files and *.key",
                source.display()
            );
            walk_source(&source)?
        }
    };
    for rel in listed {
        if SOURCE_EXCLUDED.iter().any(|x| rel.starts_with(x)) || rel.ends_with(".key") {
            continue;
        }
        let p = source.join(&rel);
        refuse_secret_key(&p)?;
        inputs.push(Input { executable: is_executable(&p), source: p, path: rel });
    }
    let git_commit = match (&a.git_commit, &git) {
        (Some(c), _) => c.clone(),
        (None, Some(g)) => g.commit.clone(),
        (None, None) => bail!(
            "{} is not a git checkout, so the commit is unknown: pass --git-commit SHA",
            source.display()
        ),
    };
    let git_dirty = git.as_ref().is_some_and(|g| g.dirty);
    if git_dirty {
        tracing::warn!("the source tree has uncommitted changes under deploy/, docs/ or README.md; the manifest records git_dirty: true");
    }

    let files = archive::hash_inputs(&inputs)?;
    let m = Manifest {
        format: FORMAT,
        name: "dwbase".into(),
        version,
        target,
        git_commit,
        git_dirty,
        created_unix: created_unix()?,
        files,
    };
    m.validate().map_err(|e| anyhow::anyhow!("the manifest would not verify:\n{e}"))?;
    let manifest_bytes = m.to_bytes();
    let manifest_sha = manifest::sha256_hex(&manifest_bytes);

    let sk = keys::load_secret(&a.secret_key)?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| {
        anyhow::anyhow!("deriving the public key of {}: {e}", a.secret_key.display())
    })?;
    let comment = format!(
        "{} git {}{} manifest-sha256 {manifest_sha}",
        m.stem(),
        m.git_commit,
        if m.git_dirty { "-dirty" } else { "" }
    );
    let signature =
        archive::sign(&sk, Some(&pk), manifest_bytes.as_slice(), &comment).map_err(|e| {
            anyhow::anyhow!("signing the manifest with {}: {e}", a.secret_key.display())
        })?;

    let out = match &a.out {
        Some(o) if o.is_dir() => o.join(format!("{}.tar.zst", m.stem())),
        Some(o) => o.clone(),
        None => PathBuf::from(format!("{}.tar.zst", m.stem())),
    };
    let partial = with_suffix(&out, ".partial");
    let sig_path = detached_sig_path(&out);
    let sig_partial = with_suffix(&sig_path, ".partial");
    let result = (|| -> Result<()> {
        archive::write_archive(&partial, &m, &manifest_bytes, &signature, &inputs, a.level)?;
        let f = std::fs::File::open(&partial)
            .with_context(|| format!("reading {}", partial.display()))?;
        let detached = archive::sign(&sk, Some(&pk), std::io::BufReader::new(f), &comment)
            .map_err(|e| anyhow::anyhow!("signing {}: {e}", partial.display()))?;
        std::fs::write(&sig_partial, detached)
            .with_context(|| format!("writing {}", sig_partial.display()))?;
        std::fs::rename(&partial, &out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        std::fs::rename(&sig_partial, &sig_path).with_context(|| {
            format!("renaming {} to {}", sig_partial.display(), sig_path.display())
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&sig_partial);
        return Err(e);
    }
    let size = std::fs::metadata(&out).map(|md| md.len()).unwrap_or(0);
    crate::outln!("wrote {} ({})", out.display(), human_bytes(size))?;
    print_manifest(&m, &manifest_sha)?;
    crate::outln!(
        "  signed by key {}; detached signature {}",
        keys::key_id(pk.keynum()),
        sig_path.display()
    )?;
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `SOURCE_DATE_EPOCH` (reproducible builds) or now.
fn created_unix() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(time::OffsetDateTime::now_utc().unix_timestamp()),
    }
}

/// A packed binary of another version is a mistake (a stale build folder): refuse it.
fn check_binary_version(path: &Path, name: &str, version: &str) -> Result<()> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("{name} {version}");
    if !out.status.success() || text.trim() != want {
        bail!(
            "{} --version printed {:?}, expected {want:?}: rebuild it, or point --bin-dir at a build of this version",
            path.display(),
            text.trim()
        );
    }
    Ok(())
}

struct GitInfo {
    commit: String,
    dirty: bool,
    files: Vec<String>,
}

/// HEAD, whether the packed paths have changes, and the tracked files under them. `None`
/// when `source` is not a git checkout (or git is missing).
fn git_info(source: &Path) -> Option<GitInfo> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(source).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let commit = git(&["rev-parse", "HEAD"])?.trim().to_owned();
    let mut args = vec!["status", "--porcelain", "--"];
    args.extend(SOURCE_PATHS);
    let dirty = !git(&args)?.trim().is_empty();
    let mut args = vec!["ls-files", "-z", "--"];
    args.extend(SOURCE_PATHS);
    let mut files: Vec<String> = git(&args)?
        .split('\0')
        .filter(|f| !f.is_empty() && source.join(f).is_file())
        .map(str::to_owned)
        .collect();
    files.sort();
    Some(GitInfo { commit, dirty, files })
}

/// Every file under the source paths, skipping dot files and folders.
fn walk_source(source: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let p = root.join(rel);
        if p.is_file() {
            out.push(rel.to_owned());
            return Ok(());
        }
        if !p.is_dir() {
            return Ok(());
        }
        for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
            let e = e.with_context(|| format!("reading {}", p.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            walk(root, &format!("{rel}/{name}"), out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in SOURCE_PATHS {
        walk(source, p, &mut out)?;
    }
    out.sort();
    Ok(out)
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_p: &Path) -> bool {
    false
}

/// A minisign secret key must never ship, whatever it is called.
fn refuse_secret_key(p: &Path) -> Result<()> {
    let Ok(bytes) = std::fs::read(p) else { return Ok(()) };
    if bytes.len() < 4096 {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if keys::secret_key_encrypted(text).is_ok() {
                bail!("{} is a minisign secret key; it must not go into a bundle (remove it from the source tree)", p.display());
            }
        }
    }
    Ok(())
}

/// The `--json` result of `verify`.
#[derive(Debug, Serialize)]
struct VerifyJson<'a> {
    bundle: &'a Path,
    name: &'a str,
    version: &'a str,
    target: &'a str,
    git_commit: &'a str,
    git_dirty: bool,
    created_unix: i64,
    files: usize,
    bytes: u64,
    manifest_sha256: &'a str,
    key_id: &'a str,
    trusted_comment: &'a str,
    detached_signature: Option<PathBuf>,
}

/// Checks a bundle: its detached signature (`<bundle>.minisig`, when present) and the
/// embedded signed manifest with every file (extracting into `extract_to` as it goes). A
/// content problem is reported before a detached-signature one, since it names the files.
pub fn check(
    bundle: &Path,
    pk: &minisign::PublicKey,
    extract_to: Option<&Path>,
) -> Result<(archive::Verified, Option<PathBuf>)> {
    let detached = detached_sig_path(bundle);
    let detached_check = detached.exists().then(|| archive::verify_detached(bundle, &detached, pk));
    let v = archive::read_bundle(bundle, pk, extract_to)?;
    match detached_check {
        Some(Err(e)) => Err(e.into()),
        Some(Ok(_)) => Ok((v, Some(detached))),
        None => Ok((v, None)),
    }
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let pk = keys::load_public(&a.pubkey)?;
    let (v, detached) = check(&a.file, &pk, None)?;
    let m = &v.manifest;
    if a.json {
        let doc = VerifyJson {
            bundle: &a.file,
            name: &m.name,
            version: &m.version,
            target: &m.target,
            git_commit: &m.git_commit,
            git_dirty: m.git_dirty,
            created_unix: m.created_unix,
            files: m.files.len(),
            bytes: m.total_bytes(),
            manifest_sha256: &v.manifest_sha256,
            key_id: &v.key_id,
            trusted_comment: &v.trusted_comment,
            detached_signature: detached,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    crate::outln!("verified {}", a.file.display())?;
    print_summary(&v)?;
    match detached {
        Some(d) => crate::outln!("  detached signature {} verified too", d.display())?,
        None => crate::outln!(
            "  (no {} beside it; the signed manifest covers every file)",
            detached_sig_path(&a.file).display()
        )?,
    }
    Ok(())
}

fn print_manifest(m: &Manifest, manifest_sha: &str) -> Result<()> {
    let dirty = if m.git_dirty { " (dirty)" } else { "" };
    crate::outln!("  {} {} for {}, git {}{dirty}", m.name, m.version, m.target, m.git_commit)?;
    crate::outln!(
        "  {} files, {} unpacked; manifest sha256 {manifest_sha}",
        m.files.len(),
        human_bytes(m.total_bytes())
    )
}

fn print_summary(v: &archive::Verified) -> Result<()> {
    print_manifest(&v.manifest, &v.manifest_sha256)?;
    crate::outln!("  signed by key {}: {}", v.key_id, v.trusted_comment)
}

fn install_cmd(a: &InstallArgs) -> Result<()> {
    let pk = keys::load_public(&a.pubkey)?;
    let done = install::install(&a.file, &pk, &a.prefix, a.keep as usize, a.force)?;
    crate::outln!("installed {} into {}", a.file.display(), done.dir.display())?;
    print_summary(&done.verified)?;
    for l in &done.links {
        crate::outln!(
            "  {} -> {}",
            l.display(),
            std::fs::read_link(l).map(|t| t.display().to_string()).unwrap_or_default()
        )?;
    }
    if let Some(p) = &done.previous {
        crate::outln!(
            "  previous: {} (roll back: ln -sfn {} {})",
            p.display(),
            p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            done.dir.with_file_name("current").display()
        )?;
    }
    for p in &done.pruned {
        crate::outln!("  removed old bundle {}", p.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
