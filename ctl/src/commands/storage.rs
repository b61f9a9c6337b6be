//! `dwbase storage check|reindex|migrate`: offline work on a data dir (the node must be stopped;
//! sled's lock says so otherwise).
//!
//! - `check [--path DIR]`: which format the store is in (this build's or the original DWBase's),
//!   whether it is encrypted, and whether every log entry reaches an atom that decodes (with the
//!   key, when encrypted) and every atom is in a log. Exit 1 when something is wrong or the store
//!   needs converting.
//! - `reindex [--path DIR]`: repairs what `check` finds in this build's store: log entries that
//!   point nowhere are removed, atoms that no log reaches are appended to their world's log.
//! - `migrate --from OLD --to NEW`: converts a store (the original's, or one of ours to change
//!   its encryption) into a new folder; see [`dwbase_node::migrate`].
//!
//! `--path` defaults to the local node's data dir, `<root>/local/data` (the original's default
//! was `.dwbase/local/data`, the same folder when `DWBASE_DATA_DIR` is unset).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use dwbase_node::crypto::{self, Cipher, MasterKey};
use dwbase_node::migrate::{self, MigrateOptions, TargetKey};
use dwbase_node::storage::{self, AtRest, StorageError, Store, StoreOptions, ENCRYPTION_KEY};
use dwbase_proto::Paths;
use serde::Serialize;

use crate::Silent;

/// `dwbase storage …`
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Check a stopped node's store: format, encryption, every log entry and atom.
    Check(PathArgs),
    /// Repair the log of a stopped node's store (dangling entries, unlogged atoms).
    Reindex(PathArgs),
    /// Convert a store into a new folder: an original DWBase store into this build's format,
    /// or one of ours to encrypt it, decrypt it or change its key. The source is not changed.
    Migrate(MigrateArgs),
}

/// `--path` of `check` and `reindex`.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// The data dir (default: the local node's, <root>/local/data).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `dwbase storage migrate`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target_key").args(["key_id", "plain"])))]
pub struct MigrateArgs {
    /// The store to convert (left unchanged).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The new data dir (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Encrypt the new store with this key id (master key in DWBASE_KEY_<KEY_ID>). Default: as
    /// the source (same key id, or plain).
    #[arg(long, value_name = "KEY_ID")]
    pub key_id: Option<String>,
    /// Write the new store unencrypted, even when the source is encrypted.
    #[arg(long)]
    pub plain: bool,
    /// Also convert atoms of an original store that no log entry reaches (the original's own
    /// replay does not show them).
    #[arg(long)]
    pub include_orphans: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dwbase storage …` (blocking work on a blocking thread).
pub async fn run(paths: &Paths, cmd: StorageCommand) -> Result<()> {
    let default_dir = paths.root.join("local").join("data");
    tokio::task::spawn_blocking(move || match cmd {
        StorageCommand::Check(a) => check(&a.path.unwrap_or(default_dir), a.json, false),
        StorageCommand::Reindex(a) => check(&a.path.unwrap_or(default_dir), a.json, true),
        StorageCommand::Migrate(a) => run_migrate(&a),
    })
    .await?
}

fn run_migrate(a: &MigrateArgs) -> Result<()> {
    let key = match (&a.key_id, a.plain) {
        (Some(id), _) => TargetKey::KeyId(id.clone()),
        (None, true) => TargetKey::Plain,
        (None, false) => TargetKey::SameAsSource,
    };
    let opts = MigrateOptions {
        from: std::path::absolute(&a.from)?,
        to: std::path::absolute(&a.to)?,
        key,
        include_orphans: a.include_orphans,
    };
    let report = migrate::migrate(&opts).map_err(|e| match e {
        migrate::MigrateError::Storage(StorageError::Locked { dir }) => anyhow::anyhow!(
            "{} is in use by a running node (sled lock held); stop it first",
            dir.display()
        ),
        e => e.into(),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report);
    Ok(())
}

/// The human form of a migration report (also used by `backup restore` of an original backup).
pub fn print_report(r: &migrate::Report) {
    let source = match r.source_format {
        "original" => "original DWBase store",
        _ => "dwbase store",
    };
    let enc = |ids: &[String]| {
        if ids.is_empty() {
            "plain".to_owned()
        } else {
            format!("encrypted, key id {}", ids.join(", "))
        }
    };
    println!(
        "converted {} atoms in {} worlds from {} ({source}, {}) into {} ({})",
        r.atoms,
        r.worlds.len(),
        r.from.display(),
        enc(&r.source_key_ids),
        r.to.display(),
        enc(&r.target_key_id.iter().cloned().collect::<Vec<_>>()),
    );
    for w in &r.worlds {
        let mut notes = Vec::new();
        if w.archived {
            notes.push("archived");
        }
        if w.policy {
            notes.push("policy");
        }
        let notes =
            if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
        println!("  {:<24} {} atoms{notes}", w.world, w.atoms);
    }
    if !r.renamed.is_empty() {
        println!(
            "{} atoms had an id another world's atom also used (the original restarted its ids \
             at atom-1 in every run); they were renamed ({} links rewritten):",
            r.renamed.len(),
            r.links_rewritten
        );
        for n in &r.renamed {
            println!(
                "  {} in {}: {} -> {} ({} kept {})",
                n.from, n.world, n.from, n.to, n.kept_by, n.from
            );
        }
    }
    for t in &r.truncated {
        println!(
            "note: the original's replay of {} stops at log entry {} ({}); the {} entries from \
             there on were not converted",
            t.world, t.seq, t.reason, t.entries
        );
    }
    if !r.orphans.is_empty() {
        let what = if r.orphans_converted {
            "converted too"
        } else {
            "not converted (--include-orphans converts them)"
        };
        println!("note: {} atoms no log entry reaches: {what}", r.orphans.len());
    }
    if r.unparsed_timestamps > 0 {
        println!(
            "note: {} atoms have a timestamp that is not RFC 3339 (kept as written)",
            r.unparsed_timestamps
        );
    }
}

/// What `check` / `reindex` found.
#[derive(Debug, Default, Serialize)]
struct CheckReport {
    path: PathBuf,
    format: &'static str,
    encrypted_key_id: Option<String>,
    atoms: u64,
    worlds: u64,
    log_entries: u64,
    dangling_log_entries: Vec<String>,
    unlogged_atoms: Vec<String>,
    undecodable: Vec<String>,
    repaired: bool,
    ok: bool,
}

fn check(dir: &Path, json: bool, repair: bool) -> Result<()> {
    if !dwbase_node::config::holds_store(dir) {
        bail!("{}: no store there (no sled conf and db files)", dir.display());
    }
    let db = storage::open_sled(dir, 16 << 20).map_err(|e| match e {
        StorageError::Locked { dir } => {
            anyhow::anyhow!("{} is in use by a running node; stop it first", dir.display())
        }
        e => e.into(),
    })?;
    if dwbase_node::legacy::is_original(&db)? {
        let contents = dwbase_node::legacy::read(&db, dir)?;
        drop(db);
        return original_check(dir, &contents, json, repair);
    }
    let marker = db.get(ENCRYPTION_KEY)?;
    drop(db);
    let key_id = marker.as_deref().and_then(crypto::sealed_key_id);
    let at_rest = match &key_id {
        Some(id) => AtRest::Encrypted(Arc::new(Cipher::new(MasterKey::from_env(id)?))),
        None => AtRest::Plain,
    };
    let store =
        Store::open(&StoreOptions { dir: dir.to_path_buf(), cache_bytes: 16 << 20, at_rest })
            .with_context(|| format!("opening {}", dir.display()))?;
    let mut report = CheckReport {
        path: dir.to_path_buf(),
        format: "dwbase",
        encrypted_key_id: key_id,
        ..CheckReport::default()
    };
    let scan = store.check_log(repair)?;
    report.atoms = scan.atoms;
    report.log_entries = scan.log_entries;
    report.worlds = store.worlds().len() as u64;
    report.dangling_log_entries = scan.dangling;
    report.unlogged_atoms = scan.unlogged;
    report.undecodable = scan.undecodable;
    report.repaired = repair && scan.repaired;
    let problems = report.dangling_log_entries.len() + report.unlogged_atoms.len();
    report.ok = report.undecodable.is_empty() && (problems == 0 || report.repaired);
    drop(store);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: dwbase store, {}, {} atoms in {} worlds, {} log entries",
            dir.display(),
            report
                .encrypted_key_id
                .as_deref()
                .map_or("plain".into(), |k| format!("encrypted (key id {k})")),
            report.atoms,
            report.worlds,
            report.log_entries
        );
        let verb = if report.repaired { "removed" } else { "found" };
        for id in &report.dangling_log_entries {
            println!("  log entry without its atom ({verb}): {id}");
        }
        let verb = if report.repaired { "appended to its world's log" } else { "found" };
        for id in &report.unlogged_atoms {
            println!("  atom in no log ({verb}): {id}");
        }
        for key in &report.undecodable {
            println!("  record that does not decode: {key}");
        }
        if report.ok {
            println!("storage check OK");
        } else if !repair && problems > 0 {
            println!(
                "problems found; `dwbase storage reindex --path {}` repairs the log",
                dir.display()
            );
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(Silent(1).into())
    }
}

fn original_check(
    dir: &Path,
    c: &dwbase_node::legacy::Contents,
    json: bool,
    repair: bool,
) -> Result<()> {
    let atoms: usize = c.worlds.iter().map(|w| w.atoms.len()).sum();
    if json {
        let doc = serde_json::json!({
            "path": dir, "format": "original", "atoms": atoms, "worlds": c.worlds.len(),
            "encrypted_key_ids": c.key_ids.keys().collect::<Vec<_>>(),
            "truncated": c.truncated, "orphans": c.orphans.len(), "undecodable": c.undecodable,
            "ok": false,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{}: a store written by the original DWBase: {atoms} atoms in {} worlds{}",
            dir.display(),
            c.worlds.len(),
            if c.key_ids.is_empty() {
                String::new()
            } else {
                format!(
                    ", encrypted (key id {})",
                    c.key_ids.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        );
        for t in &c.truncated {
            println!("  its replay of {} stops at log entry {}: {}", t.world, t.seq, t.reason);
        }
        if !c.orphans.is_empty() {
            println!("  {} atoms no log entry reaches", c.orphans.len());
        }
    }
    let what = if repair { "It is not changed here" } else { "This build does not serve it as is" };
    eprintln!(
        "{what}: convert it into a new folder with `dwbase storage migrate --from {} --to NEW_DIR` \
         and point node.data_dir at NEW_DIR",
        dir.display()
    );
    Err(Silent(1).into())
}
