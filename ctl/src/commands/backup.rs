//! `dwbase backup create|restore|verify`: `.tzst` backups that restore.
//!
//! - `create` of a running node goes through the node's `POST /admin/snapshot` (a consistent
//!   snapshot taken under a write barrier: every write acknowledged before the backup began is
//!   in it), found by `--api URL` or by `--node NAME` through the supervisor (state.json when no
//!   supervisor runs). Of a stopped node, `--data-dir DIR` opens the store directly; a data dir
//!   whose node runs (sled's lock) is refused with a pointer to `--api`/`--node`. The archive is
//!   written to `<out>.partial`, verified, then renamed to `<out>`.
//! - `restore` refuses a non-empty target without `--force` and a target whose node runs (sled's
//!   lock, a live pid or a supervised node in state.json); extracts into a staging folder beside
//!   the target while checking every file's sha256 (a corrupt or truncated archive changes
//!   nothing and names the file), writes `.snapshot_metadata.json`, then swaps the staging folder
//!   in with one atomic rename (`RENAME_EXCHANGE` when replacing).
//! - `verify` checks an archive without extracting it.
//!
//! The format is documented in `docs/backup.md` and implemented in [`dwbase_node::snapshot`].

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use dwbase_node::snapshot::{self, Metadata, SnapshotError, AUDIT_FILE, DATA_DIR};
use dwbase_node::storage::StorageError;
use dwbase_proto::Paths;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::atomic::swap_in;
use crate::cli::parse_duration;
use crate::nodes::{find_node, refuse_if_running};
use crate::output::human_bytes;
use crate::progress::Progress;
use crate::Usage;

/// `dwbase backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a node: a running one through its API (consistent snapshot, node keeps
    /// running), a stopped one from its data dir.
    Create(CreateArgs),
    /// Restore a backup into a data dir: verified first, staged beside the target, swapped in
    /// atomically.
    Restore(RestoreArgs),
    /// Check a backup: every file against the sha256 recorded in its metadata.json.
    Verify(VerifyArgs),
}

/// `dwbase backup create`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("source").required(true).multiple(true).args(["data_dir", "api", "node"])))]
pub struct CreateArgs {
    /// Data dir of a stopped node (opened directly). With --api, a cross-check: a warning if the
    /// node reports another data dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL of a running node (e.g. http://127.0.0.1:7000): a consistent snapshot through
    /// its API.
    #[arg(long, value_name = "URL", conflicts_with = "node")]
    pub api: Option<String>,
    /// A node deployed by `dwbase deploy` (node-a, …, or the local node's id): its port comes
    /// from the supervisor (or state.json), its API key from its config.
    #[arg(long, value_name = "NAME", conflicts_with = "data_dir")]
    pub node: Option<String>,
    /// Bearer token for the node's API (default: from the node's config with --node).
    #[arg(long, env = "DWBASE_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The archive to write (.tzst).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// How long the node may take to snapshot and send the archive.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `dwbase backup restore`
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The archive (.tzst).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// The data dir to restore into (created if missing), relative to the working directory.
    /// Default: `./data`, as the original DWBase CLI's.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replace the content of a non-empty data dir.
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `dwbase backup verify`
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The archive (.tzst).
    #[arg(value_name = "FILE")]
    pub archive: PathBuf,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dwbase backup …`.
pub async fn run(paths: &Paths, cmd: BackupCommand) -> Result<()> {
    match cmd {
        BackupCommand::Create(a) => create(paths, a).await,
        BackupCommand::Restore(a) => {
            let paths = paths.clone();
            tokio::task::spawn_blocking(move || restore(&paths, &a)).await?
        }
        BackupCommand::Verify(a) => tokio::task::spawn_blocking(move || verify(&a)).await?,
    }
}

/// Where a backup comes from.
#[derive(Debug)]
enum Source {
    Api {
        url: String,
        key: Option<String>,
        label: String,
        /// The CA of a deployed TLS node (a devnet's), when `--cacert` is not given.
        ca: Option<PathBuf>,
    },
    Offline {
        data_dir: PathBuf,
        node_id: Option<String>,
    },
}

/// The `--json` result of `create`.
#[derive(Debug, Serialize)]
struct CreateJson<'a> {
    out: &'a Path,
    bytes: u64,
    sha256: String,
    source: &'a str,
    metadata: &'a Metadata,
}

async fn create(paths: &Paths, args: CreateArgs) -> Result<()> {
    let out = std::path::absolute(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    if out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it or choose another path",
            out.display()
        );
    }
    if out.is_dir() {
        bail!("--out {} is a folder; name the archive file", out.display());
    }
    let source = resolve_source(paths, &args).await?;
    let partial = partial_path(&out);
    let _ = fs::remove_file(&partial);
    let progress = Progress::on_stderr();
    let result = match &source {
        Source::Api { url, key, ca, .. } => {
            download(url, key.as_deref(), ca.as_deref(), &partial, args.timeout, &progress).await?;
            let (p, pr) = (partial.clone(), progress.clone());
            tokio::task::spawn_blocking(move || verify_written(&p, &pr))
                .await?
                .with_context(|| format!("the node sent an archive that does not verify ({url})"))
        }
        Source::Offline { data_dir, node_id } => {
            let (d, n, p) = (data_dir.clone(), node_id.clone(), partial.clone());
            let pr = progress.clone();
            tokio::task::spawn_blocking(move || offline_archive(&d, n, &p, &pr)).await?
        }
    };
    progress.finish();
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let (Source::Api { url, .. }, Some(given)) = (&source, &args.data_dir) {
        let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if let Some(reported) = &meta.source_data_dir {
            if canon(reported) != canon(given) {
                eprintln!(
                    "warning: {url} serves data dir {}, not {} (--data-dir); the backup is of {}",
                    reported.display(),
                    given.display(),
                    reported.display()
                );
            }
        }
    }
    fs::rename(&partial, &out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    sync_parent(&out);
    let bytes = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let label = match &source {
        Source::Api { label, .. } => label.clone(),
        Source::Offline { data_dir, .. } => format!("data dir {} (offline)", data_dir.display()),
    };
    if args.json {
        let doc = CreateJson {
            out: &out,
            bytes,
            sha256: file_sha256(&out)?,
            source: meta.source.as_deref().unwrap_or(""),
            metadata: &meta,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        let c = &meta.counts;
        crate::outln!(
            "backed up {}{}: {} in {}, {} ({}) → {} ({})",
            meta.node_id.as_deref().map(|n| format!("{n} from ")).unwrap_or_default(),
            label,
            plural(c.atoms, "atom"),
            plural(c.worlds, "world"),
            plural(c.files, "file"),
            human_bytes(c.bytes),
            out.display(),
            human_bytes(bytes)
        )?;
    }
    Ok(())
}

/// Decides where the backup comes from, per the flags.
async fn resolve_source(paths: &Paths, args: &CreateArgs) -> Result<Source> {
    if let Some(api) = &args.api {
        let url = normalize_url(api);
        return Ok(Source::Api {
            label: format!("api {url}"),
            url,
            key: args.api_key.clone(),
            ca: None,
        });
    }
    if let Some(name) = &args.node {
        let node = find_node(paths, name).await?;
        let key = args.api_key.clone().or_else(|| config_api_key(&node.config_path));
        if node.running {
            let (url, ca) = crate::httpclient::deployed_node(&node.config_path, node.port);
            return Ok(Source::Api { label: format!("{name} at {url}"), url, key, ca });
        }
        eprintln!("{name} is not running: backing up its data dir {}", node.data_dir.display());
        return Ok(Source::Offline { data_dir: node.data_dir, node_id: Some(node.id) });
    }
    let data_dir = args.data_dir.clone().expect("clap requires a source");
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let node_id = node_id_beside(&data_dir);
    Ok(Source::Offline { data_dir, node_id })
}

/// The effective API key of a node config, if it has one.
fn config_api_key(config: &Path) -> Option<String> {
    let cfg = dwbase_node::config::Config::load(config).ok()?;
    cfg.node.security.effective_api_key().map(str::to_owned)
}

/// The node id in `<data_dir>/../config.toml` when that config's data dir is this one (the
/// deploy layout).
fn node_id_beside(data_dir: &Path) -> Option<String> {
    let config = data_dir.parent()?.join("config.toml");
    let cfg = dwbase_node::config::Config::load(&config).ok()?;
    let same = fs::canonicalize(&cfg.node.data_dir).ok()? == fs::canonicalize(data_dir).ok()?;
    same.then_some(cfg.node.id)
}

use crate::nodeapi::normalize_url;

/// `POST <url>/admin/snapshot` into `dest`.
async fn download(
    url: &str,
    key: Option<&str>,
    ca: Option<&Path>,
    dest: &Path,
    timeout: Duration,
    progress: &Progress,
) -> Result<()> {
    let client = crate::httpclient::builder_with(ca)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let mut req = client.post(format!("{url}/admin/snapshot"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut resp = req.send().await.map_err(|e| {
        anyhow::anyhow!(
            "asking {url} for a snapshot (is the node running?): {}",
            crate::httpclient::describe(&e)
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        let hint = match status.as_u16() {
            401 => " (pass --api-key or set DWBASE_API_KEY)",
            404 => " (this node has no snapshot route: is it an older dwbase-node?)",
            _ => "",
        };
        bail!("{url} refused the snapshot: {status}: {}{hint}", msg.trim());
    }
    let mut file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    progress.step(&format!("receiving the snapshot from {url}"), resp.content_length());
    let mut received = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("receiving the snapshot from {url} ({received} bytes so far)"))?
    {
        file.write_all(&chunk).with_context(|| format!("writing {}", dest.display()))?;
        received += chunk.len() as u64;
        progress.inc(chunk.len() as u64);
    }
    file.sync_all().with_context(|| format!("syncing {}", dest.display()))?;
    Ok(())
}

/// Snapshot of a stopped node's data dir, archived to `dest`.
fn offline_archive(
    data_dir: &Path,
    node_id: Option<String>,
    dest: &Path,
    progress: &Progress,
) -> Result<Metadata> {
    if !data_dir.join("db").is_file() {
        if !data_dir.exists() {
            bail!("data dir {} does not exist", data_dir.display());
        }
        bail!("{} is not a dwbase data dir (no sled `db` file in it)", data_dir.display());
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    let tmp = snapshot::TempDir::new_in(parent, "dwbase-backup")
        .with_context(|| format!("creating a temp folder in {}", parent.display()))?;
    let snap = tmp.path().join(DATA_DIR);
    let mut meta = Metadata::new("offline", node_id, Some(data_dir.to_path_buf()));
    progress.step(&format!("copying the store of {}", data_dir.display()), None);
    meta.counts = match snapshot::snapshot_offline(data_dir, &snap) {
        Ok(c) => c,
        Err(SnapshotError::Storage(StorageError::Locked { .. })) => {
            bail!(
                "node at {} is running; use --api URL or --node NAME to back it up through it",
                data_dir.display()
            )
        }
        Err(e) => return Err(e.into()),
    };
    // A spinner with the compressed bytes written (the compressed size is not known ahead).
    progress.step(
        &format!("compressing {} of store into the archive", human_bytes(meta.counts.bytes)),
        None,
    );
    let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut w = std::io::BufWriter::new(progress.writer(file));
    snapshot::write_archive(&snap, &mut meta, &mut w)?;
    let file =
        w.into_inner().map_err(|e| e.into_error()).context("writing the archive")?.into_inner();
    file.sync_all().with_context(|| format!("syncing {}", dest.display()))?;
    // Read back what was written: a backup that does not verify is not a backup.
    verify_written(dest, progress).context("verifying the archive just written")
}

/// Reads back the archive at `path` in full (every file's sha256), counting into `progress`.
fn verify_written(path: &Path, progress: &Progress) -> Result<Metadata> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    progress.step("verifying the archive", size);
    Ok(snapshot::read_archive_from(path, progress.reader(file), None)?)
}

/// `<out>.partial` beside `<out>`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The `--json` result of `verify`.
#[derive(Debug, Serialize)]
struct VerifyJson<'a> {
    archive: &'a Path,
    ok: bool,
    sha256: String,
    metadata: &'a Metadata,
}

fn verify(args: &VerifyArgs) -> Result<()> {
    if !args.archive.is_file() {
        bail!("{} does not exist or is not a file", args.archive.display());
    }
    if snapshot::is_original_archive(&args.archive)? {
        return verify_original(args);
    }
    let meta = snapshot::read_archive(&args.archive, None)?;
    if args.json {
        let doc = VerifyJson {
            archive: &args.archive,
            ok: true,
            sha256: file_sha256(&args.archive)?,
            metadata: &meta,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        crate::outln!("{}: OK", args.archive.display())?;
        print_meta(&meta)?;
    }
    Ok(())
}

/// `verify` of a backup the original DWBase CLI wrote: it has no checksums of its own, so the
/// archive is decoded in full, its store extracted to a temp folder and read back the way the
/// original's replay would (every log entry's crc32 against its atom; encrypted atoms are
/// decrypted when their key is set, else counted).
fn verify_original(args: &VerifyArgs) -> Result<()> {
    let tmp = snapshot::TempDir::new_in(&std::env::temp_dir(), "dwbase-verify")
        .context("creating a temp folder")?;
    let meta = snapshot::read_original_archive(&args.archive, tmp.path())?;
    let db = dwbase_node::storage::open_sled(tmp.path(), 16 << 20)?;
    let (entries, worlds) = dwbase_node::legacy::count(&db)?;
    let read = dwbase_node::legacy::read(&db, tmp.path());
    drop(db);
    let (checked, note) = match &read {
        Ok(c) if c.truncated.is_empty() => (true, String::new()),
        Ok(c) => (
            true,
            c.truncated
                .iter()
                .map(|t| {
                    format!(
                        "; the replay of {} stops at log entry {}: {}",
                        t.world, t.seq, t.reason
                    )
                })
                .collect(),
        ),
        Err(dwbase_node::legacy::LegacyError::Key { source, .. }) => {
            (false, format!("; atoms not decrypted: {source}"))
        }
        Err(e) => bail!("{}: the store inside does not read back: {e}", args.archive.display()),
    };
    if args.json {
        let doc = serde_json::json!({
            "archive": args.archive, "ok": true, "format": "original",
            "sha256": file_sha256(&args.archive)?, "metadata": meta,
            "log_entries": entries, "worlds": worlds, "atoms_decoded": checked,
            "truncated": read.as_ref().map(|c| c.truncated.clone()).unwrap_or_default(),
        });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        crate::outln!("{}: OK (a backup written by the original DWBase)", args.archive.display())?;
        crate::outln!(
            "  format {}, created {}; no checksums of its own: decoded in full, {} in {} read \
             back{}{note}",
            meta.format_version,
            meta.created_at,
            plural(entries, "atom"),
            plural(worlds as u64, "world"),
            if checked { ", every log entry's crc32 checked" } else { "" }
        )?;
        crate::outln!("  `dwbase backup restore` converts it to this build's format")?;
    }
    Ok(())
}

/// Extracts a backup of the original DWBase beside `staging` and converts its store into
/// `staging` (empty), as `dwbase storage migrate` does; returns our metadata for the audit
/// record.
fn restore_original(input: &Path, staging: &Path, parent: &Path, name: &str) -> Result<Metadata> {
    let raw = snapshot::TempDir::new_in(parent, &format!("{name}.original"))
        .with_context(|| format!("creating a staging folder in {}", parent.display()))?;
    let original = snapshot::read_original_archive(input, raw.path())?;
    let report = dwbase_node::migrate::migrate(&dwbase_node::migrate::MigrateOptions {
        from: raw.path().to_path_buf(),
        to: staging.to_path_buf(),
        key: dwbase_node::migrate::TargetKey::SameAsSource,
        include_orphans: false,
    })
    .context("converting the original DWBase's store")?;
    // The conversion report goes to stderr: stdout stays the restore's own result.
    eprintln!(
        "converted the original DWBase backup: {} atoms in {} worlds{}",
        report.atoms,
        report.worlds.len(),
        if report.renamed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} atoms renamed (ids reused across the original's runs): {}",
                report.renamed.len(),
                report
                    .renamed
                    .iter()
                    .map(|r| format!("{} in {} -> {}", r.from, r.world, r.to))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let mut meta = Metadata::new("original-dwbase-backup", None, None);
    meta.created_at = original.created_at;
    meta.index_metadata = original.index_metadata;
    meta.counts.atoms = report.atoms;
    meta.counts.log_entries = report.atoms;
    meta.counts.worlds = report.worlds.len() as u64;
    meta.dwbase_version = Some("0.1 (the original)".into());
    Ok(meta)
}

fn print_meta(meta: &Metadata) -> Result<()> {
    let c = &meta.counts;
    crate::outln!(
        "  format {}, created {}, node {}, dwbase {}, source {}",
        meta.format_version,
        meta.created_at,
        meta.node_id.as_deref().unwrap_or("?"),
        meta.dwbase_version.as_deref().unwrap_or("?"),
        meta.source.as_deref().unwrap_or("?")
    )?;
    crate::outln!(
        "  {} in {}; {} ({}), every sha256 checked; index metadata for {}",
        plural(c.atoms, "atom"),
        plural(c.worlds, "world"),
        plural(c.files, "file"),
        human_bytes(c.bytes),
        plural(meta.index_metadata.len() as u64, "world")
    )?;
    Ok(())
}

/// "1 atom", "3 atoms".
fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The audit record written into a restored data dir.
#[derive(Debug, Serialize)]
struct Audit<'a> {
    restored_at: String,
    restored_from: &'a Path,
    archive_sha256: String,
    replaced_previous_content: bool,
    dwbase_version: &'a str,
    metadata: &'a Metadata,
}

/// Where `restore` puts the data without `--data-dir`: the original DWBase CLI's default.
const DEFAULT_RESTORE_DIR: &str = "./data";

/// The `--json` result of `restore`.
#[derive(Debug, Serialize)]
struct RestoreJson<'a> {
    data_dir: &'a Path,
    replaced_previous_content: bool,
    metadata: &'a Metadata,
}

fn restore(paths: &Paths, args: &RestoreArgs) -> Result<()> {
    let input = std::path::absolute(&args.input)
        .with_context(|| format!("resolving {}", args.input.display()))?;
    if !input.is_file() {
        bail!("{} does not exist or is not a file", input.display());
    }
    let given = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RESTORE_DIR));
    // Said in every refusal when the target was not named, so a user of the original's
    // invocation learns where it points.
    let implied = if args.data_dir.is_none() {
        format!(" (the default --data-dir {DEFAULT_RESTORE_DIR}, from the working directory)")
    } else {
        String::new()
    };
    let target =
        std::path::absolute(&given).with_context(|| format!("resolving {}", given.display()))?;
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => {
            return Err(
                Usage(format!("--data-dir {} has no parent folder", target.display())).into()
            )
        }
    };
    if target.exists() && !target.is_dir() {
        bail!("{}{implied} exists and is not a folder", target.display());
    }
    refuse_if_running(paths, &target)?;
    let non_empty = target.is_dir()
        && fs::read_dir(&target)
            .with_context(|| format!("listing {}", target.display()))?
            .next()
            .is_some();
    if non_empty && !args.force {
        bail!(
            "{}{implied} is not empty; pass --force to replace its content, or --data-dir DIR \
             (nothing was changed)",
            target.display()
        );
    }

    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = snapshot::TempDir::new_in(&parent, &format!("{name}.restore"))
        .with_context(|| format!("creating a staging folder in {}", parent.display()))?;
    let unchanged =
        || format!("{} was not restored; {} is unchanged", input.display(), target.display());
    let progress = Progress::on_stderr();
    let meta = if snapshot::is_original_archive(&input).with_context(unchanged)? {
        progress.step("converting the original DWBase backup", None);
        restore_original(&input, staging.path(), &parent, &name).with_context(unchanged)?
    } else {
        let file = File::open(&input).with_context(|| format!("opening {}", input.display()))?;
        let size = file.metadata().map(|m| m.len()).ok();
        progress.step(&format!("extracting and checking {}", input.display()), size);
        snapshot::read_archive_from(&input, progress.reader(file), Some(staging.path()))
            .with_context(unchanged)?
    };
    progress.finish();
    let audit = Audit {
        restored_at: dwbase_node::model::now_rfc3339(),
        restored_from: &input,
        archive_sha256: file_sha256(&input)?,
        replaced_previous_content: non_empty,
        dwbase_version: env!("CARGO_PKG_VERSION"),
        metadata: &meta,
    };
    let audit_path = staging.path().join(AUDIT_FILE);
    let mut f =
        File::create(&audit_path).with_context(|| format!("creating {}", audit_path.display()))?;
    f.write_all(serde_json::to_string_pretty(&audit)?.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", audit_path.display()))?;
    if let Ok(d) = File::open(staging.path()) {
        let _ = d.sync_all();
    }

    // A node may have started on the target meanwhile: check again just before the swap.
    refuse_if_running(paths, &target)?;
    swap_in(staging.path(), &target)?;
    // After the swap, the staging path holds the previous content (or nothing): the guard
    // removes it.
    drop(staging);
    sync_parent(&target);

    if args.json {
        let doc = RestoreJson {
            data_dir: &target,
            replaced_previous_content: non_empty,
            metadata: &meta,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        crate::outln!(
            "restored {} into {}{}",
            input.display(),
            target.display(),
            if non_empty { " (previous content replaced)" } else { "" }
        )?;
        if meta.source.as_deref() == Some("original-dwbase-backup") {
            crate::outln!(
                "  a backup of the original DWBase (created {}), converted: {} in {}",
                meta.created_at,
                plural(meta.counts.atoms, "atom"),
                plural(meta.counts.worlds, "world")
            )?;
        } else {
            print_meta(&meta)?;
        }
        crate::outln!("  audit record: {}", target.join(AUDIT_FILE).display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert_eq!(normalize_url("127.0.0.1:7000/"), "http://127.0.0.1:7000");
        assert_eq!(normalize_url("https://x:1"), "https://x:1");
        assert_eq!(partial_path(Path::new("/a/b.tzst")), PathBuf::from("/a/b.tzst.partial"));
        assert_eq!(human_bytes(830), "830 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn swap_exchanges_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("new"), "n").unwrap();
        swap_in(&a, &b).unwrap();
        assert!(b.join("new").is_file() && !a.exists());
        fs::create_dir(&a).unwrap();
        fs::write(a.join("newer"), "n").unwrap();
        swap_in(&a, &b).unwrap();
        assert!(b.join("newer").is_file() && a.join("new").is_file());
    }
}
