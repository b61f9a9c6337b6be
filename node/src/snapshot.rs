//! Consistent snapshots of a node's store, and the `.tzst` backup format.
//!
//! # What a snapshot guarantees
//!
//! [`snapshot_store`] copies the store into a fresh sled database while every writer is paused
//! ([`Store::with_writes_paused`] holds the lock each remember, swarm ingest and world update
//! holds while it applies its batch). A write is acknowledged only after its batch was applied
//! (and flushed), so **every write acknowledged before the snapshot began is in it**, and as
//! batches are atomic and none runs during the copy, **nothing is half written**: an atom is in
//! the snapshot with its log entry and world record, or not at all. A write that was applied
//! but not yet acknowledged when the snapshot began (its flush still running) may be in it; its
//! client may still see a failure if that flush fails — the usual "unknown outcome" of a write
//! interrupted by a crash. Writers wait (they are not refused) while the copy runs; reads go
//! on. The copy is a logical one (keys and values), so sled's own files, which its background
//! threads may rewrite at any time, are never copied while in use.
//!
//! The copy renumbers the per-world log sequence numbers (`l/<world>/<seq>` keys, see
//! [`crate::storage`]) densely from 0 in the same order: a fresh sled database starts its id
//! generator at 0, and the store takes `seq` from that generator, so keeping the source's
//! numbers (which jump by millions at every restart) would let a restored node reuse a `seq`
//! and overwrite a log entry. Renumbered, the restored generator is always past every `seq`.
//!
//! # The archive (`.tzst`, `format_version` 1)
//!
//! A zstd stream (with zstd's content checksum) of a tar holding, in this order:
//! - `metadata.json` — a [`Metadata`]: format version, creation time, node id, dwbase version,
//!   source, counts, the index metadata (the node's `GET /index/status`; empty offline) and the
//!   sha256 and size of every file under `data/`;
//! - `data/` — the snapshot's sled database (`conf`, `db`, `snap.*`, `blobs/`), which is a
//!   node data dir as is: restoring means putting this folder in place.
//!
//! [`read_archive`] checks every file against `metadata.json` (and rejects unlisted, missing,
//! unsafe or truncated entries) while it extracts into a staging folder, or only verifies.
//!
//! # Hostile archives
//!
//! An archive from elsewhere may be a decompression bomb. Before anything is written:
//! - the sizes `metadata.json` declares must fit the archive's size at most
//!   [`MAX_COMPRESSION_RATIO`]:1 (plus [`RATIO_ALLOWANCE`]), and, when extracting, the free
//!   space of the staging folder's filesystem minus its reserve ([`crate::disk::auto_reserve`]);
//! - every entry must be listed there with the size its tar header gives, so an entry is
//!   never written past its declared size (the tar reader stops at the header's size);
//! - while decoding, the bytes out may never exceed the bytes read at that ratio, so even a
//!   verify (which writes nothing) stops a bomb early instead of decompressing it all.
//!
//! Absolute paths, `..`, links and devices stay refused.
//! The original DWBase wrote `{format_version, created_at, index_metadata}` with no checksums;
//! such archives cannot be verified and are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::model::now_rfc3339;
use crate::node::{Node, VERSION};
use crate::storage::{AtRest, StorageError, Store, StoreOptions};

/// The archive format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the metadata entry in the archive.
pub const METADATA_FILE: &str = "metadata.json";
/// Name of the data folder in the archive.
pub const DATA_DIR: &str = "data";
/// The audit record a restore writes into the restored data dir.
pub const AUDIT_FILE: &str = ".snapshot_metadata.json";
/// zstd level of new archives (fast; sled files compress well at any level).
pub const ZSTD_LEVEL: i32 = 3;
/// Largest `metadata.json` accepted (it lists one line per file).
const MAX_METADATA_BYTES: u64 = 64 << 20;
/// Most bytes an archive may decode to per byte it holds. sled's files are mostly zero
/// padding on a small store, so real archives reach a few hundred to one; a bomb goes far
/// past it.
pub const MAX_COMPRESSION_RATIO: u64 = 1000;
/// Bytes an archive may decode to on top of the ratio (small archives of empty stores).
pub const RATIO_ALLOWANCE: u64 = 16 << 20;
/// sled cache when a store is opened just to back it up.
const OFFLINE_CACHE_BYTES: u64 = 16 << 20;

/// The store's log key prefix (`l/<world len u16 BE><world><seq u64 BE>`, see
/// [`crate::storage`]); the copy renumbers the trailing `seq`.
const LOG_PREFIX: &[u8] = b"l/";
const ATOM_PREFIX: &[u8] = b"a/";
const WORLD_PREFIX: &[u8] = b"w/";

/// Snapshot and archive failures. Each names the file or folder involved.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Opening or reading the source store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing the copy failed.
    #[error("writing the snapshot database in {}: {source}", dir.display())]
    Copy {
        /// The snapshot's folder.
        dir: PathBuf,
        /// The cause.
        source: sled::Error,
    },
    /// A file's content does not match its checksum.
    #[error(
        "{file}: checksum mismatch (metadata.json says sha256 {expected}, the archive holds \
         {actual}): the archive is corrupt"
    )]
    Checksum {
        /// The file (`data/...`).
        file: String,
        /// The recorded sha256.
        expected: String,
        /// The computed sha256.
        actual: String,
    },
    /// A file's size does not match.
    #[error(
        "{file}: size mismatch (metadata.json says {expected} bytes, the archive holds {actual})"
    )]
    Size {
        /// The file.
        file: String,
        /// The recorded size.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// The archive could not be decoded (corrupt or truncated).
    #[error("{}: corrupt or truncated archive, while reading {file}: {message}", archive.display())]
    Corrupt {
        /// The archive.
        archive: PathBuf,
        /// The entry being read (or where reading stopped).
        file: String,
        /// The decoder's message.
        message: String,
    },
    /// A listed file is not in the archive.
    #[error("{file}: listed in metadata.json but missing from the archive (truncated?)")]
    Missing {
        /// The file.
        file: String,
    },
    /// The archive holds a file metadata.json does not list.
    #[error("{file}: in the archive but not listed in metadata.json")]
    Unlisted {
        /// The file.
        file: String,
    },
    /// An entry with an absolute or `..` path, or of a type other than file or folder.
    #[error("{file}: refusing an unsafe archive entry ({why})")]
    Unsafe {
        /// The entry's path.
        file: String,
        /// Why.
        why: String,
    },
    /// The archive has no metadata.json.
    #[error("{}: no metadata.json: not a dwbase backup (or truncated)", archive.display())]
    NoMetadata {
        /// The archive.
        archive: PathBuf,
    },
    /// The archive decodes (or says it decodes) to far more than it holds.
    #[error(
        "{}: refusing a decompression bomb: {message} (the cap is {MAX_COMPRESSION_RATIO}:1 \
         plus {} MiB); nothing past the declared sizes was written",
        archive.display(),
        RATIO_ALLOWANCE >> 20
    )]
    Bomb {
        /// The archive.
        archive: PathBuf,
        /// What was found.
        message: String,
    },
    /// Extracting would leave less than the reserve free.
    #[error(
        "{}: restoring needs {needed} bytes but the filesystem of {} has {free} bytes free \
         above its reserve of {reserve} bytes; free space or restore elsewhere (nothing was \
         written)",
        archive.display(),
        dir.display()
    )]
    NoRoom {
        /// The archive.
        archive: PathBuf,
        /// The staging folder.
        dir: PathBuf,
        /// Bytes the archive holds.
        needed: u64,
        /// Bytes free above the reserve.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// metadata.json is unreadable or unusable.
    #[error("{}: metadata.json: {message}", archive.display())]
    BadMetadata {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { action, path: path.to_path_buf(), source }
}

/// Checksum and size of one archived file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Atoms (`a/` keys).
    pub atoms: u64,
    /// Log entries (`l/` keys; one per atom normally).
    pub log_entries: u64,
    /// World records (`w/` keys).
    pub worlds: u64,
    /// Every key copied.
    pub keys: u64,
    /// Files under `data/`.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
}

/// `metadata.json`. Keys of the original format first (`format_version`, `created_at`,
/// `index_metadata`); everything else was added by this build and is optional when reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// RFC 3339 UTC time the snapshot was taken.
    pub created_at: String,
    /// The node's `GET /index/status` at snapshot time; empty for an offline backup.
    #[serde(default)]
    pub index_metadata: Vec<serde_json::Value>,
    /// The node's id, when known.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The dwbase version that wrote the snapshot.
    #[serde(default)]
    pub dwbase_version: Option<String>,
    /// `api` (taken by a running node) or `offline` (from a stopped node's data dir).
    #[serde(default)]
    pub source: Option<String>,
    /// The data dir the snapshot was taken from.
    #[serde(default)]
    pub source_data_dir: Option<PathBuf>,
    /// What the snapshot holds.
    #[serde(default)]
    pub counts: Counts,
    /// sha256 and size of every file, keyed by archive path (`data/db`, …).
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
    /// Every folder under `data/` (`data/blobs`, …), so a reader knows the order of entries.
    #[serde(default)]
    pub dirs: Vec<String>,
}

impl Metadata {
    /// Metadata for a snapshot being taken now.
    pub fn new(source: &str, node_id: Option<String>, source_data_dir: Option<PathBuf>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            created_at: now_rfc3339(),
            index_metadata: Vec::new(),
            node_id,
            dwbase_version: Some(VERSION.to_owned()),
            source: Some(source.to_owned()),
            source_data_dir,
            counts: Counts::default(),
            files: BTreeMap::new(),
            dirs: Vec::new(),
        }
    }
}

/// Copies `src` into a new sled database at `target` (which must not exist), renumbering log
/// sequence numbers densely (see the module docs). The caller makes sure nothing writes to
/// `src` meanwhile. The new database is flushed and closed on return.
pub fn copy_db(src: &sled::Db, target: &Path) -> Result<Counts, SnapshotError> {
    if target.exists() {
        return Err(SnapshotError::Io {
            action: "creating the snapshot folder",
            path: target.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "already exists"),
        });
    }
    let copy_err = |source| SnapshotError::Copy { dir: target.to_path_buf(), source };
    let fresh = sled::Config::new()
        .path(target)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(OFFLINE_CACHE_BYTES)
        .open()
        .map_err(copy_err)?;
    let mut counts = Counts::default();
    for item in src.iter() {
        let (key, value) =
            item.map_err(|source| StorageError::Sled { action: "reading", source })?;
        counts.keys += 1;
        let new_key = match renumber_log_key(&key, || fresh.generate_id()) {
            Some(k) => {
                counts.log_entries += 1;
                k.map_err(copy_err)?
            }
            None => {
                if key.starts_with(ATOM_PREFIX) {
                    counts.atoms += 1;
                } else if key.starts_with(WORLD_PREFIX) {
                    counts.worlds += 1;
                }
                key.to_vec()
            }
        };
        fresh.insert(new_key, value).map_err(copy_err)?;
    }
    // The store keeps everything in the default tree; copy any other tree verbatim anyway.
    let default_name = fresh.name();
    for name in src.tree_names() {
        if name == default_name {
            continue;
        }
        let from = src
            .open_tree(&name)
            .map_err(|source| StorageError::Sled { action: "opening a tree", source })?;
        let to = fresh.open_tree(&name).map_err(copy_err)?;
        for item in from.iter() {
            let (k, v) = item.map_err(|source| StorageError::Sled { action: "reading", source })?;
            counts.keys += 1;
            to.insert(k, v).map_err(copy_err)?;
        }
    }
    fresh.flush().map_err(copy_err)?;
    drop(fresh);
    Ok(counts)
}

/// For a log key, `Some(new key with the next seq)`; `None` for any other key.
fn renumber_log_key(
    key: &[u8],
    next: impl FnOnce() -> sled::Result<u64>,
) -> Option<sled::Result<Vec<u8>>> {
    let rest = key.strip_prefix(LOG_PREFIX)?;
    let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    if rest.len() != 2 + len + 8 {
        return None;
    }
    let head = &key[..LOG_PREFIX.len() + 2 + len];
    Some(next().map(|seq| [head, &seq.to_be_bytes()].concat()))
}

/// A consistent snapshot of a live store into `target` (a new folder): see the module docs
/// for the guarantee. Blocking; writers wait while the copy runs.
pub fn snapshot_store(store: &Store, target: &Path) -> Result<Counts, SnapshotError> {
    store.with_writes_paused(|db| copy_db(db, target))?
}

/// A snapshot of a stopped node's data dir into `target`. Opening the store takes sled's
/// lock, so this fails (with [`StorageError::Locked`]) when a node runs on `data_dir`.
pub fn snapshot_offline(data_dir: &Path, target: &Path) -> Result<Counts, SnapshotError> {
    // Copy-only: an encrypted store is backed up as it is, without its key.
    let store = Store::open(&StoreOptions {
        dir: data_dir.to_path_buf(),
        cache_bytes: OFFLINE_CACHE_BYTES,
        at_rest: AtRest::Opaque,
    })?;
    let counts = snapshot_store(&store, target)?;
    drop(store);
    Ok(counts)
}

/// Every file and folder under `dir`, as (relative path with `/`, absolute path, is_dir),
/// sorted, folders before their content.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, SnapshotError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let mut children: Vec<_> = fs::read_dir(&abs)
            .map_err(io_err("listing", &abs))?
            .collect::<Result<_, _>>()
            .map_err(io_err("listing", &abs))?;
        children.sort_by_key(|e| e.file_name());
        for child in children.into_iter().rev() {
            let name = child.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let path = child.path();
            let ty = child.file_type().map_err(io_err("reading the type of", &path))?;
            if ty.is_dir() {
                stack.push((child_rel.clone(), path.clone()));
                out.push((child_rel, path, true));
            } else if ty.is_file() {
                out.push((child_rel, path, false));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<FileEntry, SnapshotError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher).map_err(io_err("reading", path))?;
    Ok(FileEntry { sha256: hex::encode(hasher.finalize()), bytes })
}

/// Writes the archive of the snapshot database in `snapshot_dir` to `out`, filling in
/// `meta.files`, `meta.dirs` and the file counts first (metadata.json comes first in the
/// archive).
///
/// Every tar entry (header, content, padding) is its own zstd frame with its own checksum, so
/// damage is confined to one entry and [`read_archive`] can name it; the result is still one
/// ordinary zstd stream (`zstd -dc x.tzst | tar t` works).
pub fn write_archive(
    snapshot_dir: &Path,
    meta: &mut Metadata,
    out: impl Write,
) -> Result<(), SnapshotError> {
    write_archive_frames(snapshot_dir, meta, out).map(drop)
}

/// [`write_archive`], returning where each entry's frame starts in the output (for tests).
fn write_archive_frames(
    snapshot_dir: &Path,
    meta: &mut Metadata,
    out: impl Write,
) -> Result<Vec<(String, u64)>, SnapshotError> {
    let entries = walk(snapshot_dir)?;
    meta.files.clear();
    meta.dirs.clear();
    for (rel, abs, is_dir) in &entries {
        if *is_dir {
            meta.dirs.push(format!("{DATA_DIR}/{rel}"));
        } else {
            meta.files.insert(format!("{DATA_DIR}/{rel}"), sha256_file(abs)?);
        }
    }
    meta.counts.files = meta.files.len() as u64;
    meta.counts.bytes = meta.files.values().map(|f| f.bytes).sum();
    let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| SnapshotError::Io {
        action: "encoding metadata.json for",
        path: snapshot_dir.to_path_buf(),
        source: io::Error::other(e),
    })?;

    let ctx = snapshot_dir;
    let frames = FrameWriter::new(Counting { inner: out, written: 0 })
        .map_err(io_err("starting zstd for", ctx))?;
    let mut tar = tar::Builder::new(frames);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut starts = vec![(METADATA_FILE.to_owned(), 0)];
    let mut header = file_header(meta_json.len() as u64);
    tar.append_data(&mut header, METADATA_FILE, meta_json.as_slice())
        .map_err(io_err("archiving metadata.json of", ctx))?;
    let mut cut = |tar: &mut tar::Builder<FrameWriter<_>>, next: String| {
        let frames = tar.get_mut();
        frames.cut().map_err(io_err("archiving", ctx))?;
        starts.push((next, frames.position()));
        Ok::<_, SnapshotError>(())
    };
    cut(&mut tar, DATA_DIR.to_owned())?;
    let mut dir_header = tar::Header::new_gnu();
    dir_header.set_entry_type(tar::EntryType::Directory);
    dir_header.set_mode(0o755);
    dir_header.set_size(0);
    tar.append_data(&mut dir_header.clone(), format!("{DATA_DIR}/"), io::empty())
        .map_err(io_err("archiving", ctx))?;
    for (rel, abs, is_dir) in &entries {
        let name = format!("{DATA_DIR}/{rel}");
        cut(&mut tar, name.clone())?;
        if *is_dir {
            tar.append_data(&mut dir_header.clone(), format!("{name}/"), io::empty())
                .map_err(io_err("archiving", abs))?;
            continue;
        }
        let expected = &meta.files[&name];
        let file = File::open(abs).map_err(io_err("opening", abs))?;
        let mut header = file_header(expected.bytes);
        // `take` guards against a file that grew after hashing (it cannot: the snapshot
        // database is closed), so the tar stays well-formed whatever happens.
        tar.append_data(&mut header, &name, file.take(expected.bytes))
            .map_err(io_err("archiving", abs))?;
    }
    cut(&mut tar, "the end of the archive".to_owned())?;
    let frames = tar.into_inner().map_err(io_err("finishing the tar of", ctx))?;
    let mut out = frames.finish().map_err(io_err("finishing zstd for", ctx))?;
    out.flush().map_err(io_err("flushing the archive of", ctx))?;
    Ok(starts)
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A zstd writer that can end the current frame and start a new one.
struct FrameWriter<W: Write> {
    encoder: Option<zstd::stream::write::Encoder<'static, Counting<W>>>,
}

impl<W: Write> FrameWriter<W> {
    fn encoder(out: Counting<W>) -> io::Result<zstd::stream::write::Encoder<'static, Counting<W>>> {
        let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
        e.include_checksum(true)?;
        Ok(e)
    }

    fn new(out: Counting<W>) -> io::Result<Self> {
        Ok(Self { encoder: Some(Self::encoder(out)?) })
    }

    fn current(&mut self) -> io::Result<&mut zstd::stream::write::Encoder<'static, Counting<W>>> {
        self.encoder.as_mut().ok_or_else(|| io::Error::other("zstd writer already finished"))
    }

    /// Ends the current frame; what is written next starts a new one.
    fn cut(&mut self) -> io::Result<()> {
        let e = self.encoder.take().ok_or_else(|| io::Error::other("zstd writer finished"))?;
        self.encoder = Some(Self::encoder(e.finish()?)?);
        Ok(())
    }

    /// Bytes of compressed output so far (frames already ended).
    fn position(&mut self) -> u64 {
        self.encoder.as_mut().map_or(0, |e| e.get_mut().written)
    }

    fn finish(mut self) -> io::Result<W> {
        let e = self.encoder.take().ok_or_else(|| io::Error::other("zstd writer finished"))?;
        Ok(e.finish()?.inner)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.current()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.current()?.flush()
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h
}

/// The `/`-joined relative path of an archive entry, or why it is unsafe.
fn safe_name(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err("absolute path or `..`".into()),
        }
    }
    if parts.is_empty() {
        return Err("empty path".into());
    }
    Ok(parts.join("/"))
}

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decodes a zstd stream frame by frame, counting frames, so that an error can be traced to
/// the frame (and so the tar entry, one per frame in our archives) it happened in. A frame's
/// checksum is checked before the next frame is touched.
struct Frames<R: io::BufRead> {
    decoder: Option<zstd::stream::read::Decoder<'static, R>>,
    /// Index of the frame being decoded.
    frame: std::rc::Rc<std::cell::Cell<usize>>,
    /// Bytes read from the archive file so far.
    read_in: std::rc::Rc<std::cell::Cell<u64>>,
    /// Bytes decoded so far.
    out: u64,
}

impl<R: io::BufRead> Frames<R> {
    fn new(
        reader: R,
        frame: std::rc::Rc<std::cell::Cell<usize>>,
        read_in: std::rc::Rc<std::cell::Cell<u64>>,
    ) -> io::Result<Self> {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)?.single_frame();
        Ok(Self { decoder: Some(decoder), frame, read_in, out: 0 })
    }
}

/// The bytes an archive that has yielded `read_in` bytes may have decoded to.
fn ratio_cap(read_in: u64) -> u64 {
    read_in.saturating_mul(MAX_COMPRESSION_RATIO).saturating_add(RATIO_ALLOWANCE)
}

/// The decoder's error for an archive past [`MAX_COMPRESSION_RATIO`] (see [`bomb_in`]).
#[derive(Debug)]
struct RatioExceeded(String);

impl std::fmt::Display for RatioExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RatioExceeded {}

/// The [`RatioExceeded`] message inside `e`, if that is what it is.
fn bomb_in(e: &io::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<RatioExceeded>() {
            return Some(r.0.clone());
        }
        source = err.source();
    }
    None
}

impl<R: io::BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(decoder) = self.decoder.as_mut() else { return Ok(0) };
            let n = decoder.read(buf)?;
            if n > 0 {
                self.out += n as u64;
                let read_in = self.read_in.get();
                if self.out > ratio_cap(read_in) {
                    return Err(io::Error::other(RatioExceeded(format!(
                        "{} bytes decoded from the first {read_in} bytes of the archive",
                        self.out
                    ))));
                }
                return Ok(n);
            }
            // This frame is complete (checksum verified): go on with the next, if any.
            let mut reader = self.decoder.take().expect("checked above").finish();
            if reader.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.frame.set(self.frame.get() + 1);
            self.decoder = Some(zstd::stream::read::Decoder::with_buffer(reader)?.single_frame());
        }
    }
}

/// Counts the bytes read from the archive file (for the ratio cap).
struct CountingReader<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// What an extraction may still write: the free space of the staging folder's filesystem
/// minus its reserve ([`crate::disk::auto_reserve`]), read once before the first entry.
struct Budget {
    archive: PathBuf,
    dir: PathBuf,
    left: u64,
    reserve: u64,
}

impl Budget {
    fn of(archive: &Path, dir: &Path) -> Result<Budget, SnapshotError> {
        let usage = crate::health::disk_usage(dir).ok_or_else(|| SnapshotError::Io {
            action: "reading the free space of",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        })?;
        let reserve = crate::disk::auto_reserve(usage.total_bytes);
        Ok(Budget {
            archive: archive.to_path_buf(),
            dir: dir.to_path_buf(),
            left: usage.available_bytes.saturating_sub(reserve),
            reserve,
        })
    }

    fn check(&self, bytes: u64) -> Result<(), SnapshotError> {
        if bytes > self.left {
            return Err(SnapshotError::NoRoom {
                archive: self.archive.clone(),
                dir: self.dir.clone(),
                needed: bytes,
                free: self.left,
                reserve: self.reserve,
            });
        }
        Ok(())
    }

    fn take(&mut self, bytes: u64) -> Result<(), SnapshotError> {
        self.check(bytes)?;
        self.left -= bytes;
        Ok(())
    }
}

/// Reads the archive at `path`, checking every file against `metadata.json`, and returns the
/// metadata. With `extract_to` (an existing, empty folder), the archive's `data/` content is
/// written there (files fsynced); on error the caller removes that folder. Every mismatch,
/// missing, unlisted, unsafe or undecodable entry is an error naming the file.
pub fn read_archive(path: &Path, extract_to: Option<&Path>) -> Result<Metadata, SnapshotError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    read_archive_from(path, file, extract_to)
}

/// [`read_archive`] of the archive `path` already opened as `file` (a caller can count the
/// bytes read for a progress bar); errors name `path`.
pub fn read_archive_from(
    path: &Path,
    file: impl Read,
    extract_to: Option<&Path>,
) -> Result<Metadata, SnapshotError> {
    let archive_len = fs::metadata(path).map_err(io_err("reading the size of", path))?.len();
    let corrupt = |file: &str, e: &dyn std::fmt::Display| SnapshotError::Corrupt {
        archive: path.to_path_buf(),
        file: file.to_owned(),
        message: e.to_string(),
    };
    let bomb = |message: String| SnapshotError::Bomb { archive: path.to_path_buf(), message };
    let mut budget = match extract_to {
        Some(dir) => Some(Budget::of(path, dir)?),
        None => None,
    };
    let frame = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let read_in = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counted = CountingReader { inner: file, count: read_in.clone() };
    let frames = Frames::new(io::BufReader::new(counted), frame.clone(), read_in)
        .map_err(|e| corrupt(METADATA_FILE, &e))?;
    let mut archive = tar::Archive::new(frames);
    let mut meta_bytes: Option<Vec<u8>> = None;
    let mut seen: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut last = String::new();
    // Our archives hold one entry per zstd frame, in an order metadata.json (the first entry)
    // tells: damage found in frame i is then reported against entry i, even when it hit the
    // entry's tar header. Archives of another shape fall back to "the entry after …".
    let mut order: Vec<String> = vec![METADATA_FILE.to_owned()];
    let mut framed = true;
    let mut index = 0usize;
    let mut early: Option<Metadata> = None;
    let blame = |order: &[String], framed: bool, last: &str, current: Option<&str>| {
        let i = frame.get();
        if framed && i < order.len() {
            return order[i].clone();
        }
        if framed && i == order.len() && order.len() > 1 {
            return format!("the end of the archive (after {last})");
        }
        match current {
            Some(name) => name.to_owned(),
            None if last.is_empty() => "the first entry".to_owned(),
            None => format!("the entry after {last}"),
        }
    };
    {
        let entries = archive.entries().map_err(|e| corrupt(METADATA_FILE, &e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(&blame(&order, framed, &last, None), &e))?;
            let raw = entry.path().map_err(|e| corrupt(&blame(&order, framed, &last, None), &e))?;
            let name = safe_name(&raw)
                .map_err(|why| SnapshotError::Unsafe { file: raw.display().to_string(), why })?;
            if frame.get() != index {
                framed = false;
            }
            last = name.clone();
            index += 1;
            let kind = entry.header().entry_type();
            if name == METADATA_FILE {
                if entry.size() > MAX_METADATA_BYTES {
                    return Err(SnapshotError::BadMetadata {
                        archive: path.to_path_buf(),
                        message: format!("{} bytes is too large", entry.size()),
                    });
                }
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(|e| match bomb_in(&e) {
                    Some(m) => bomb(m),
                    None => corrupt(&name, &e),
                })?;
                if index == 1 {
                    if let Ok(m) = serde_json::from_slice::<Metadata>(&buf) {
                        // Refuse a bomb before writing anything: what it says it holds must
                        // fit the archive at the ratio cap, and the free space.
                        let declared: u64 = m.files.values().map(|f| f.bytes).sum();
                        if declared > ratio_cap(archive_len) {
                            return Err(bomb(format!(
                                "metadata.json declares {declared} bytes in a {archive_len}-byte \
                                 archive"
                            )));
                        }
                        if let Some(b) = &budget {
                            b.check(declared)?;
                        }
                        let mut rest: Vec<String> =
                            m.files.keys().cloned().chain(m.dirs.iter().cloned()).collect();
                        rest.sort();
                        order.push(DATA_DIR.to_owned());
                        order.extend(rest);
                        early = Some(m);
                    }
                }
                meta_bytes = Some(buf);
                continue;
            }
            let Some(rel) = name.strip_prefix(&format!("{DATA_DIR}/")).map(str::to_owned) else {
                if name == DATA_DIR && kind.is_dir() {
                    continue;
                }
                return Err(SnapshotError::Unlisted { file: name });
            };
            if extract_to.is_some() && early.is_none() {
                return Err(SnapshotError::BadMetadata {
                    archive: path.to_path_buf(),
                    message: format!(
                        "{name} comes before a readable metadata.json, which must be the first \
                         entry: refusing to extract files whose sizes and checksums cannot be \
                         checked before they are written"
                    ),
                });
            }
            if kind.is_dir() {
                if let Some(dir) = extract_to {
                    let d = dir.join(&rel);
                    fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
                }
                continue;
            }
            if !kind.is_file() {
                return Err(SnapshotError::Unsafe {
                    file: name,
                    why: format!("entry type {kind:?} (only files and folders are restored)"),
                });
            }
            // Before writing a byte: the entry must be listed, with the size its header gives
            // (the tar reader never yields more than that), within the space left.
            if let Some(m) = &early {
                let Some(want) = m.files.get(&name) else {
                    return Err(SnapshotError::Unlisted { file: name });
                };
                if entry.size() != want.bytes {
                    return Err(SnapshotError::Size {
                        file: name,
                        expected: want.bytes,
                        actual: entry.size(),
                    });
                }
            }
            if let Some(b) = budget.as_mut() {
                b.take(entry.size())?;
            }
            let on_err =
                |e: &dyn std::fmt::Display| corrupt(&blame(&order, framed, &last, Some(&name)), e);
            let entry_info = match extract_to {
                Some(dir) => {
                    let dest = dir.join(&rel);
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
                    }
                    let out = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dest)
                        .map_err(io_err("creating", &dest))?;
                    let mut w = Hashing { inner: out, hasher: Sha256::new(), bytes: 0 };
                    copy_entry(&mut entry, &mut w, &dest, &on_err, &bomb)?;
                    w.inner.sync_all().map_err(io_err("syncing", &dest))?;
                    FileEntry { sha256: hex::encode(w.hasher.finalize()), bytes: w.bytes }
                }
                None => {
                    let mut w = Hashing { inner: io::sink(), hasher: Sha256::new(), bytes: 0 };
                    copy_entry(&mut entry, &mut w, path, &on_err, &bomb)?;
                    FileEntry { sha256: hex::encode(w.hasher.finalize()), bytes: w.bytes }
                }
            };
            // With metadata.json first (always, in our archives), check each file as soon as
            // it is read, before decoding anything after it.
            if let Some(want) = early.as_ref().and_then(|m| m.files.get(&name)) {
                check_file(&name, want, &entry_info)?;
            }
            if seen.insert(name.clone(), entry_info).is_some() {
                return Err(SnapshotError::Unsafe { file: name, why: "appears twice".into() });
            }
        }
    }
    // Per-file checks come before the zstd stream's own end checks so that damage is reported
    // against the file it hit; without metadata.json, the end check says "truncated" first.
    let mut rest = archive.into_inner();
    let end = format!("the end of the archive (after {last})");
    let mut drain = move || -> Result<(), SnapshotError> {
        io::copy(&mut rest, &mut io::sink()).map(drop).map_err(|e| match bomb_in(&e) {
            Some(m) => bomb(m),
            None => corrupt(&end, &e),
        })
    };
    let Some(meta_bytes) = meta_bytes else {
        drain()?;
        return Err(SnapshotError::NoMetadata { archive: path.to_path_buf() });
    };
    let bad = |message: String| SnapshotError::BadMetadata { archive: path.to_path_buf(), message };
    let meta: Metadata = serde_json::from_slice(&meta_bytes).map_err(|e| bad(e.to_string()))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format_version {} is not supported (this build reads {FORMAT_VERSION})",
            meta.format_version
        )));
    }
    if meta.files.is_empty() {
        return Err(bad(
            "no per-file checksums (\"files\"): written by the original DWBase or damaged; \
             it cannot be verified, so it is not restored"
                .into(),
        ));
    }
    for (name, want) in &meta.files {
        let Some(got) = seen.get(name) else {
            return Err(SnapshotError::Missing { file: name.clone() });
        };
        check_file(name, want, got)?;
    }
    let listed: BTreeSet<&String> = meta.files.keys().collect();
    if let Some(extra) = seen.keys().find(|k| !listed.contains(k)) {
        return Err(SnapshotError::Unlisted { file: extra.clone() });
    }
    drain()?;
    Ok(meta)
}

fn check_file(name: &str, want: &FileEntry, got: &FileEntry) -> Result<(), SnapshotError> {
    if got.sha256 != want.sha256 {
        return Err(SnapshotError::Checksum {
            file: name.to_owned(),
            expected: want.sha256.clone(),
            actual: got.sha256.clone(),
        });
    }
    if got.bytes != want.bytes {
        return Err(SnapshotError::Size {
            file: name.to_owned(),
            expected: want.bytes,
            actual: got.bytes,
        });
    }
    Ok(())
}

fn copy_entry(
    entry: &mut impl Read,
    w: &mut impl Write,
    dest: &Path,
    corrupt: &impl Fn(&dyn std::fmt::Display) -> SnapshotError,
    bomb: &impl Fn(String) -> SnapshotError,
) -> Result<(), SnapshotError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match bomb_in(&e) {
                    Some(m) => bomb(m),
                    None => corrupt(&e),
                })
            }
        };
        w.write_all(&buf[..n]).map_err(io_err("writing", dest))?;
    }
}

/// `metadata.json` of a backup written by the original DWBase CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginalMetadata {
    /// Always 1.
    pub format_version: u32,
    /// When it was made.
    pub created_at: String,
    /// The node's `/index/status` then.
    #[serde(default)]
    pub index_metadata: Vec<serde_json::Value>,
}

/// Whether `path` is a backup written by the original DWBase CLI: its tar starts with the
/// `data/` folder (ours start with `metadata.json`). Reads only the first entry.
pub fn is_original_archive(path: &Path) -> Result<bool, SnapshotError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let corrupt = |e: &dyn std::fmt::Display| SnapshotError::Corrupt {
        archive: path.to_path_buf(),
        file: "the first entry".into(),
        message: e.to_string(),
    };
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| corrupt(&e))?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(|e| corrupt(&e))?;
    let Some(first) = entries.next() else { return Ok(false) };
    let first = first.map_err(|e| corrupt(&e))?;
    let name = first.path().map_err(|e| corrupt(&e))?;
    let name = safe_name(&name).unwrap_or_default();
    Ok(name == DATA_DIR || name.starts_with(&format!("{DATA_DIR}/")))
}

/// Reads a backup written by the original DWBase CLI (a zstd tar of `data/` then
/// `metadata.json`, with no checksums of its own) and extracts its `data/` into `extract_to`
/// (an existing, empty folder; files fsynced). Unsafe, unexpected or undecodable entries are
/// errors naming the entry; so is a missing `metadata.json` or sled store.
pub fn read_original_archive(
    path: &Path,
    extract_to: &Path,
) -> Result<OriginalMetadata, SnapshotError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let corrupt = |entry: &str, e: &dyn std::fmt::Display| SnapshotError::Corrupt {
        archive: path.to_path_buf(),
        file: entry.to_owned(),
        message: e.to_string(),
    };
    let archive_len = file.metadata().map_err(io_err("reading the size of", path))?.len();
    let bomb = |message: String| SnapshotError::Bomb { archive: path.to_path_buf(), message };
    let mut budget = Budget::of(path, extract_to)?;
    let frame = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let read_in = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counted = CountingReader { inner: file, count: read_in.clone() };
    let decoder = Frames::new(io::BufReader::new(counted), frame, read_in)
        .map_err(|e| corrupt("the start", &e))?;
    let mut archive = tar::Archive::new(decoder);
    let mut meta = None;
    let mut last = String::from("the start");
    for entry in archive.entries().map_err(|e| corrupt(&last, &e))? {
        let mut entry = entry.map_err(|e| corrupt(&format!("the entry after {last}"), &e))?;
        let raw = entry.path().map_err(|e| corrupt(&last, &e))?.into_owned();
        let name = safe_name(&raw)
            .map_err(|why| SnapshotError::Unsafe { file: raw.display().to_string(), why })?;
        last = name.clone();
        let kind = entry.header().entry_type();
        if name == METADATA_FILE {
            if entry.size() > MAX_METADATA_BYTES {
                return Err(SnapshotError::BadMetadata {
                    archive: path.to_path_buf(),
                    message: format!("{} bytes is too large", entry.size()),
                });
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| match bomb_in(&e) {
                Some(m) => bomb(m),
                None => corrupt(&name, &e),
            })?;
            let m: OriginalMetadata = serde_json::from_slice(&buf).map_err(|e| {
                SnapshotError::BadMetadata { archive: path.to_path_buf(), message: e.to_string() }
            })?;
            meta = Some(m);
            continue;
        }
        if name == DATA_DIR && kind.is_dir() {
            continue;
        }
        let Some(rel) = name.strip_prefix(&format!("{DATA_DIR}/")) else {
            return Err(SnapshotError::Unlisted { file: name });
        };
        let dest = extract_to.join(rel);
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(io_err("creating", &dest))?;
            continue;
        }
        if !kind.is_file() {
            return Err(SnapshotError::Unsafe {
                file: name,
                why: format!("entry type {kind:?} (only files and folders are restored)"),
            });
        }
        // No checksums to check against: the ratio cap and the space left bound what an entry
        // of this archive may write.
        if entry.size() > ratio_cap(archive_len) {
            return Err(bomb(format!(
                "{name} says it holds {} bytes in a {archive_len}-byte archive",
                entry.size()
            )));
        }
        budget.take(entry.size())?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(io_err("creating", &dest))?;
        copy_entry(&mut entry, &mut out, &dest, &|e| corrupt(&name, e), &bomb)?;
        out.sync_all().map_err(io_err("syncing", &dest))?;
    }
    let meta = meta.ok_or_else(|| SnapshotError::NoMetadata { archive: path.to_path_buf() })?;
    if !crate::config::holds_store(extract_to) {
        return Err(SnapshotError::Missing { file: format!("{DATA_DIR}/db and {DATA_DIR}/conf") });
    }
    Ok(meta)
}

/// A folder removed (recursively) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `parent/.{prefix}-<ulid>`.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<Self> {
        let path = parent.join(format!(".{prefix}-{}", ulid::Ulid::new()));
        fs::create_dir_all(parent)?;
        fs::create_dir(&path)?;
        Ok(Self(path))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a snapshot folder");
            }
        }
    }
}

/// A finished archive of a live node, in a temp folder beside its data dir.
#[derive(Debug)]
pub struct NodeArchive {
    /// Holds the folder; dropping it deletes the archive.
    pub dir: TempDir,
    /// The archive file.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// What it holds.
    pub meta: Metadata,
}

/// Takes a consistent snapshot of `node` and archives it into a temp folder beside the data
/// dir (same filesystem, outside the data dir so it does not count against `max_disk_mb`).
/// Blocking.
pub fn archive_node(node: &Node) -> Result<NodeArchive, SnapshotError> {
    let data_dir = node.store().dir().to_path_buf();
    let parent = data_dir.parent().map_or_else(std::env::temp_dir, Path::to_path_buf);
    // Beside the data dir (same filesystem); the temp dir when that folder is not writable.
    let dir = TempDir::new_in(&parent, "dwbase-snapshot")
        .or_else(|_| TempDir::new_in(&std::env::temp_dir(), "dwbase-snapshot"))
        .map_err(io_err("creating a snapshot folder in", &parent))?;
    let cfg = &node.config().node;
    let mut meta = Metadata::new("api", Some(cfg.id.clone()), Some(data_dir));
    let snap = dir.path().join(DATA_DIR);
    meta.counts = snapshot_store(node.store(), &snap)?;
    meta.index_metadata =
        node.index_status().iter().filter_map(|s| serde_json::to_value(s).ok()).collect();
    let path = dir.path().join("snapshot.tzst");
    let file = File::create(&path).map_err(io_err("creating", &path))?;
    let mut writer = io::BufWriter::new(file);
    write_archive(&snap, &mut meta, &mut writer)?;
    let file = writer.into_inner().map_err(|e| SnapshotError::Io {
        action: "writing",
        path: path.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err("syncing", &path))?;
    let len = file.metadata().map_err(io_err("reading the size of", &path))?.len();
    // The copy is archived; free its space before the archive is streamed.
    let _ = fs::remove_dir_all(&snap);
    Ok(NodeArchive { dir, path, len, meta })
}

/// One snapshot at a time per process: each holds the write lock while it copies.
static SNAPSHOT_GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Header carrying the snapshot's atom count.
pub const ATOMS_HEADER: &str = "x-dwbase-snapshot-atoms";

/// `POST /admin/snapshot`: a consistent snapshot of this node as a `.tzst` archive (the body;
/// `Content-Length` set). Needs the API key when one is configured, like every route but the
/// probes. Writers wait while the store is copied (not while the archive is compressed or
/// sent).
pub async fn snapshot_route(State(node): State<Node>) -> Result<Response, ApiError> {
    let _one = SNAPSHOT_GATE.lock().await;
    let started = std::time::Instant::now();
    let n = node.clone();
    let archive = tokio::task::spawn_blocking(move || archive_node(&n))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "snapshot failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", e.to_string())
        })?;
    tracing::info!(
        atoms = archive.meta.counts.atoms,
        bytes = archive.len,
        elapsed = ?started.elapsed(),
        "snapshot taken"
    );
    let file = tokio::fs::File::open(&archive.path).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", e.to_string())
    })?;
    let len = archive.len;
    let atoms = archive.meta.counts.atoms;
    let filename = format!(
        "{}-{}.tzst",
        node.config().node.id,
        archive.meta.created_at.replace([':', '.'], "-")
    );
    // The stream owns the temp folder: it is deleted once the body is sent or dropped.
    let stream = futures::stream::unfold((file, Some(archive)), |(mut file, guard)| async move {
        use tokio::io::AsyncReadExt as _;
        guard.as_ref()?;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, io::Error>(Bytes::from(buf)), (file, guard)))
            }
            Err(e) => Some((Err(e), (file, None))),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(ATOMS_HEADER, HeaderValue::from(atoms));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AtomFilter, AtomKind};
    use crate::storage::Inserted;

    fn opts(dir: &Path) -> StoreOptions {
        StoreOptions { dir: dir.to_path_buf(), cache_bytes: 8 << 20, at_rest: AtRest::Plain }
    }

    fn atom(id: &str, world: &str) -> crate::model::Atom {
        crate::model::Atom {
            id: id.into(),
            world: world.into(),
            worker: "w".into(),
            kind: AtomKind::Observation,
            timestamp: now_rfc3339(),
            importance: 0.5,
            payload_json: format!("payload of {id}"),
            vector: None,
            flags: vec![],
            labels: vec![],
            links: vec![],
        }
    }

    fn ids(store: &Store, world: &str) -> Vec<String> {
        let all = AtomFilter::default().compile().unwrap();
        store.replay(world, &all).unwrap().into_iter().map(|a| a.id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_round_trip_keeps_order_and_never_reuses_a_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let src_dir = tmp.path().join("src");
        // Several restarts make sled's id generator jump by millions.
        for round in 0..3 {
            let store = Store::open(&opts(&src_dir)).unwrap();
            for i in 0..5 {
                let id = format!("r{round}-{i}");
                store
                    .insert_new(&atom(&id, if i % 2 == 0 { "even" } else { "odd" }))
                    .await
                    .unwrap();
            }
        }
        let snap_dir = tmp.path().join("snap");
        let counts = tokio::task::block_in_place(|| snapshot_offline(&src_dir, &snap_dir)).unwrap();
        assert_eq!((counts.atoms, counts.log_entries, counts.worlds), (15, 15, 2));

        let src = Store::open(&opts(&src_dir)).unwrap();
        let (even, odd) = (ids(&src, "even"), ids(&src, "odd"));
        drop(src);
        for round in 0..2 {
            let restored = Store::open(&opts(&snap_dir)).unwrap();
            assert_eq!(ids(&restored, "even")[..9], even[..], "round {round}");
            assert_eq!(ids(&restored, "odd")[..6], odd[..]);
            // New atoms land after the old ones and overwrite nothing, before and after a
            // reopen of the restored store.
            let id = format!("new{round}");
            assert!(matches!(
                restored.insert_new(&atom(&id, "even")).await.unwrap(),
                Inserted::Stored
            ));
            let now = ids(&restored, "even");
            assert_eq!(now.len(), 9 + round + 1);
            assert_eq!(now.last().unwrap(), &id);
            assert_eq!(restored.atom_count(), 15 + round as u64 + 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archive_verifies_extracts_and_names_a_corrupt_file() {
        let tmp = tempfile::tempdir().unwrap();
        let src_dir = tmp.path().join("src");
        {
            let store = Store::open(&opts(&src_dir)).unwrap();
            for i in 0..50 {
                store.insert_new(&atom(&format!("id{i:03}"), "w")).await.unwrap();
            }
        }
        let snap = tmp.path().join("snap");
        let mut meta = Metadata::new("offline", Some("n1".into()), None);
        meta.counts = tokio::task::block_in_place(|| snapshot_offline(&src_dir, &snap)).unwrap();
        let archive = tmp.path().join("b.tzst");
        write_archive(&snap, &mut meta, File::create(&archive).unwrap()).unwrap();
        assert!(meta.files.contains_key("data/db"), "{:?}", meta.files.keys());

        let verified = read_archive(&archive, None).unwrap();
        assert_eq!(verified, meta);
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        read_archive(&archive, Some(&out)).unwrap();
        let restored = Store::open(&opts(&out)).unwrap();
        assert_eq!(ids(&restored, "w").len(), 50);
        drop(restored);

        // Flip one byte in the middle: detected, with a file named.
        let mut bytes = fs::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        let bad = tmp.path().join("bad.tzst");
        fs::write(&bad, &bytes).unwrap();
        let err = read_archive(&bad, None).unwrap_err().to_string();
        assert!(err.contains("data/") || err.contains("metadata.json"), "{err}");

        // Truncated.
        let cut = tmp.path().join("cut.tzst");
        fs::write(&cut, &fs::read(&archive).unwrap()[..mid]).unwrap();
        let err = read_archive(&cut, None).unwrap_err().to_string();
        assert!(err.contains("truncated") || err.contains("missing"), "{err}");
    }

    fn decoded(bytes: &[u8]) -> Option<Vec<u8>> {
        zstd::stream::decode_all(bytes).ok()
    }

    /// Flips every byte of a small archive in turn: each flip is detected, and the error names
    /// the entry whose zstd frame holds that byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_flipped_byte_is_detected_and_blamed_on_its_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let src_dir = tmp.path().join("src");
        {
            let store = Store::open(&opts(&src_dir)).unwrap();
            for i in 0..20 {
                store.insert_new(&atom(&format!("id{i:03}"), "w")).await.unwrap();
            }
        }
        let snap = tmp.path().join("snap");
        let mut meta = Metadata::new("offline", None, None);
        meta.counts = tokio::task::block_in_place(|| snapshot_offline(&src_dir, &snap)).unwrap();
        let mut bytes = Vec::new();
        let starts = write_archive_frames(&snap, &mut meta, &mut bytes).unwrap();
        let archive = tmp.path().join("a.tzst");
        let mut wrong = Vec::new();
        // Every other byte keeps the test quick and still hits every frame many times.
        for pos in (0..bytes.len()).step_by(2) {
            let mut b = bytes.clone();
            b[pos] ^= 0x20;
            fs::write(&archive, &b).unwrap();
            let owner = &starts.iter().rev().find(|(_, start)| *start <= pos as u64).unwrap().0;
            match read_archive(&archive, None) {
                // A flip zstd ignores (a frame header bit without effect) changes nothing.
                Ok(_) if decoded(&b) == decoded(&bytes) => {}
                Ok(_) => wrong.push(format!("{pos} ({owner}): not detected")),
                Err(e) => {
                    let msg = e.to_string();
                    let named = msg.contains(owner.trim_end_matches('/'))
                        || (owner.starts_with("the end") && msg.contains("the end"));
                    if !named {
                        wrong.push(format!("{pos} ({owner}): {msg}"));
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} flips misreported:\n{}",
            wrong.len(),
            bytes.len() / 2,
            wrong.join("\n")
        );
    }

    /// A zstd tar with `metadata.json` first (listing `declared`) when given, then each
    /// `(name, header size, content bytes of zeros)`.
    fn crafted(path: &Path, declared: Option<&[(&str, u64)]>, entries: &[(&str, u64, u64)]) {
        let file = File::create(path).unwrap();
        let enc = zstd::stream::write::Encoder::new(file, 19).unwrap().auto_finish();
        let mut tar = tar::Builder::new(enc);
        if let Some(declared) = declared {
            let mut meta = Metadata::new("crafted", None, None);
            for (name, bytes) in declared {
                meta.files.insert(
                    (*name).to_owned(),
                    FileEntry { sha256: "00".repeat(32), bytes: *bytes },
                );
            }
            let json = serde_json::to_vec(&meta).unwrap();
            let mut h = file_header(json.len() as u64);
            tar.append_data(&mut h, METADATA_FILE, json.as_slice()).unwrap();
        }
        for (name, header_size, content) in entries {
            let mut h = file_header(*header_size);
            h.set_cksum();
            tar.append_data(&mut h, name, io::repeat(0).take(*content)).unwrap();
        }
        let _ = tar.into_inner().map(drop);
    }

    #[test]
    fn bombs_are_refused_before_more_than_their_declared_size_is_written() {
        const BIG: u64 = 256 << 20;
        let tmp = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, Option<Vec<(&'a str, u64)>>, Vec<(&'a str, u64, u64)>, &'a str);
        let cases: Vec<Case> = vec![
            // Says what it holds: far more than fits the archive at the ratio cap.
            ("declared", Some(vec![("data/db", BIG)]), vec![("data/db", BIG, BIG)], "bomb"),
            // Says 1000 bytes, its tar header says 256 MiB.
            ("header", Some(vec![("data/db", 1000)]), vec![("data/db", BIG, BIG)], "size mismatch"),
            // An entry metadata.json does not list.
            (
                "unlisted",
                Some(vec![("data/db", 1000)]),
                vec![("data/evil", BIG, BIG)],
                "not listed",
            ),
            // No metadata.json first: nothing can be checked before writing.
            ("nometa", None, vec![("data/db", BIG, BIG)], "first entry"),
        ];
        for (name, declared, entries, expect) in cases {
            let archive = tmp.path().join(format!("{name}.tzst"));
            crafted(&archive, declared.as_deref(), &entries);
            let len = fs::metadata(&archive).unwrap().len();
            let out = tmp.path().join(format!("{name}-out"));
            fs::create_dir(&out).unwrap();
            let err = read_archive(&archive, Some(&out)).unwrap_err().to_string();
            let written = crate::health::dir_size(&out);
            println!("{name}: {len}-byte archive refused after writing {written} bytes: {err}");
            assert!(err.contains(expect), "{name}: {err}");
            assert_eq!(written, 0, "{name}: nothing written before the refusal");
            // Verifying decodes nothing past the ratio cap either.
            let err = read_archive(&archive, None).unwrap_err().to_string();
            assert!(err.contains(expect) || err.contains("bomb"), "{name} (verify): {err}");
        }
        // The stream check on its own: a verify of the archive without metadata stops at the
        // ratio cap instead of decoding all 256 MiB.
        let err = read_archive(&tmp.path().join("nometa.tzst"), None).unwrap_err();
        assert!(matches!(err, SnapshotError::Bomb { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_archive_larger_than_the_free_space_above_the_reserve_is_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let total = crate::health::disk_usage(tmp.path()).unwrap().total_bytes;
        let mut b = Budget::of(Path::new("a.tzst"), tmp.path()).unwrap();
        // The filesystem's automatic reserve is kept out of what may be written. (Its free
        // space is not compared with a reading of our own: it moves with whatever else runs on
        // the machine between the two readings, e.g. the tests beside this one.)
        assert_eq!(b.reserve, crate::disk::auto_reserve(total));
        assert!(b.reserve > 0 && b.reserve <= crate::disk::AUTO_RESERVE_MAX, "{}", b.reserve);
        let err = b.take(b.left + 1).unwrap_err().to_string();
        assert!(err.contains("reserve"), "{err}");
        b.take(1).unwrap();
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert_eq!(safe_name(Path::new("data/./db")).unwrap(), "data/db");
        assert!(safe_name(Path::new("../etc/passwd")).is_err());
        assert!(safe_name(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn only_log_keys_are_renumbered() {
        let mut key = b"l/".to_vec();
        key.extend_from_slice(&3u16.to_be_bytes());
        key.extend_from_slice(b"abc");
        key.extend_from_slice(&9_000_000u64.to_be_bytes());
        let new = renumber_log_key(&key, || Ok(7)).unwrap().unwrap();
        assert_eq!(&new[..key.len() - 8], &key[..key.len() - 8]);
        assert_eq!(&new[key.len() - 8..], &7u64.to_be_bytes());
        assert!(renumber_log_key(b"a/l/xyz", || Ok(0)).is_none());
        assert!(renumber_log_key(b"l/\x00\x09short", || Ok(0)).is_none());
    }
}
