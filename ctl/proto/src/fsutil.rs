//! Files that cannot be aimed elsewhere: atomic writes whose temp file is created exclusively
//! without following links, and checks of the socket and folders before they are trusted.
//!
//! The threat is a same-host process (or a careless script) planting a symlink where we are
//! about to write or dial: `state.json.partial → ~/.bashrc`, or `supervisor.sock → another
//! root's socket`. Every check here looks at the path itself (`lstat`), never through it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: `<path>.partial` is created exclusively (`O_EXCL |
/// O_NOFOLLOW`, mode `mode`) after removing whatever sat there (a stale file or a planted
/// link — `unlink` removes the link, never its target), written, fsynced, renamed over
/// `path`, and the folder is fsynced. A crash leaves the old file or the new one.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    write_and_rename(path, bytes, mode, true)?;
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn write_and_rename(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    match fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut f = create_exclusive(&partial, mode)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    fs::rename(&partial, path)
}

/// Files written now and made durable together later: a supervisor that adds 50 nodes in
/// one turn writes 50 configs and 50 records, then pays for one journal commit instead of
/// two hundred fsyncs.
///
/// [`SyncBatch::write`] writes like [`atomic_write`] (exclusive temp file, no links followed,
/// rename) but without its fsyncs; [`SyncBatch::sync`] fsyncs every file written and then
/// their folders. Until then a crash can leave a written file empty or missing, so use it
/// only for files that nothing durable refers to yet — a new node's config before the state
/// file that lists it is saved (after `sync`) — or whose loss is harmless (a node's record,
/// which is read as missing when damaged).
#[derive(Debug, Default)]
pub struct SyncBatch {
    files: Vec<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
}

impl SyncBatch {
    /// Writes `path` (readable at once), to be made durable by [`SyncBatch::sync`].
    pub fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        write_and_rename(path, bytes, mode, false)?;
        self.files.push(path.to_owned());
        self.dirs.insert(path.parent().unwrap_or(Path::new(".")).to_owned());
        Ok(())
    }

    /// How many files wait for `sync`.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing waits for `sync`.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Makes every file written since the last call durable (its data, then the folder entries
    /// of all of them). A file removed meanwhile is skipped; the first other error is
    /// returned, after trying the rest.
    ///
    /// Each fsync costs a journal commit (~0.3 ms on this kind of VM disk: 150 of them for
    /// a rollout of 50 nodes, ~45 ms during which the supervisor's runner sees no probe
    /// answer). On Linux a batch of more than [`SYNCFS_FROM`] paths on one filesystem is
    /// made durable with one `syncfs` of that filesystem instead (~2 ms for the same batch):
    /// a superset of the fsyncs — every write and rename on it so far reaches the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        let mut first_error = None;
        let files = std::mem::take(&mut self.files);
        let dirs = std::mem::take(&mut self.dirs);
        // Folders cannot be opened for syncing everywhere; where they can (unix) the rename
        // is durable only once its folder is.
        let dirs: Vec<PathBuf> = if cfg!(unix) { dirs.into_iter().collect() } else { vec![] };
        let mut paths: Vec<&PathBuf> = files.iter().chain(&dirs).collect();
        #[cfg(target_os = "linux")]
        syncfs_large_batches(&mut paths, &mut first_error);
        for path in paths {
            match fs::File::open(path).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("syncing {}: {e}", path.display()),
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// More paths than this on one filesystem in one [`SyncBatch::sync`] are made durable with one
/// `syncfs` instead of one fsync each.
pub const SYNCFS_FROM: usize = 8;

/// Syncs each filesystem that holds more than [`SYNCFS_FROM`] of `paths` as a whole, and takes
/// its paths out of `paths`. A `syncfs` that fails is recorded in `first_error` (its paths
/// are not fsynced one by one: they would report the same error); where the path that opens
/// the filesystem is gone, its paths stay for their own fsyncs.
#[cfg(target_os = "linux")]
fn syncfs_large_batches(paths: &mut Vec<&PathBuf>, first_error: &mut Option<io::Error>) {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    if paths.len() <= SYNCFS_FROM {
        return;
    }
    let mut by_device: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, p) in paths.iter().enumerate() {
        if let Ok(m) = fs::symlink_metadata(p) {
            by_device.entry(m.dev()).or_default().push(i);
        }
    }
    let mut done = vec![false; paths.len()];
    for members in by_device.values().filter(|m| m.len() > SYNCFS_FROM) {
        let synced = fs::File::open(paths[members[0]])
            .and_then(|f| nix::unistd::syncfs(&f).map_err(io::Error::from));
        match synced {
            Ok(()) => members.iter().for_each(|&i| done[i] = true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("syncing the filesystem of {}: {e}", paths[members[0]].display()),
                ));
                // Counted as done: its fsyncs would report the same error for each path.
                members.iter().for_each(|&i| done[i] = true);
            }
        }
    }
    let mut i = 0;
    paths.retain(|_| {
        i += 1;
        !done[i - 1]
    });
}

#[cfg(unix)]
fn create_exclusive(path: &Path, mode: u32) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(not(unix))]
fn create_exclusive(path: &Path, _mode: u32) -> io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// What is at a socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketPath {
    /// Nothing.
    Missing,
    /// A socket owned by us: safe to dial or to remove.
    Ours,
}

/// A path we were about to trust is not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    /// A symlink where a file or socket of ours must be.
    #[error("refusing {path}: it is a symbolic link (to {target}); remove it if you did not put it there")]
    Symlink {
        /// The path.
        path: PathBuf,
        /// Where it points.
        target: String,
    },
    /// Something other than a socket where our socket must be.
    #[error("refusing {path}: it is not a socket; remove it if you did not put it there")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Owned by another user.
    #[error("refusing {path}: it belongs to uid {owner}, not to us (uid {ours})")]
    Foreign {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// A private folder that others may write to.
    #[error(
        "refusing {path}: its mode {mode:04o} lets other users write to it; `chmod 700 {path}`"
    )]
    OpenToOthers {
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The check itself failed.
    #[error("checking {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

#[cfg(unix)]
fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks a control-socket path before it is dialled or removed: it must be missing, or a
/// socket (not a link to one) owned by our effective uid.
#[cfg(unix)]
pub fn check_socket(path: &Path) -> Result<SocketPath, UnsafePath> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SocketPath::Missing),
        Err(source) => return Err(UnsafePath::Io { path: path.to_owned(), source }),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        return Err(UnsafePath::Symlink { path: path.to_owned(), target });
    }
    if !ft.is_socket() {
        return Err(UnsafePath::NotASocket { path: path.to_owned() });
    }
    if meta.uid() != euid() {
        return Err(UnsafePath::Foreign { path: path.to_owned(), owner: meta.uid(), ours: euid() });
    }
    Ok(SocketPath::Ours)
}

/// Checks a control-socket path (named pipes have no path to plant: always fine).
#[cfg(not(unix))]
pub fn check_socket(_path: &Path) -> Result<SocketPath, UnsafePath> {
    Ok(SocketPath::Ours)
}

/// Checks a folder that must be private to us (the state root, the socket fallback folder):
/// owned by our effective uid and not writable by group or others. A symlink to such a folder
/// is fine (operators point roots at other disks); the folder it names is what is checked.
/// A missing folder passes (it will be created 0700).
#[cfg(unix)]
pub fn check_private_dir(path: &Path) -> Result<(), UnsafePath> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(UnsafePath::Io { path: path.to_owned(), source }),
    };
    if meta.uid() != euid() {
        return Err(UnsafePath::Foreign { path: path.to_owned(), owner: meta.uid(), ours: euid() });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(UnsafePath::OpenToOthers { path: path.to_owned(), mode: meta.mode() & 0o7777 });
    }
    Ok(())
}

/// Checks a private folder (not on this platform).
#[cfg(not(unix))]
pub fn check_private_dir(_path: &Path) -> Result<(), UnsafePath> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_sync_batch_writes_at_once_and_syncs_what_is_left_later() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("sub/b.json"));
        fs::create_dir(dir.path().join("sub")).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("a.toml.partial")).unwrap();
        let mut batch = SyncBatch::default();
        assert!(batch.is_empty());
        batch.write(&a, b"one", 0o600).unwrap();
        batch.write(&b, b"two", 0o600).unwrap();
        batch.write(&a, b"three", 0o600).unwrap();
        // readable before the sync, links at the temp path replaced rather than followed
        assert_eq!(fs::read_to_string(&a).unwrap(), "three");
        assert_eq!(fs::read_to_string(&b).unwrap(), "two");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_file(&b).unwrap();
        assert!(!batch.is_empty());
        batch.sync().expect("a file removed before the sync is skipped");
        assert!(batch.is_empty());
        assert!(!dir.path().join("a.toml.partial").exists());
        // a file and folder removed before the sync are skipped
        batch.write(&dir.path().join("sub/c"), b"x", 0o600).unwrap();
        fs::remove_file(dir.path().join("sub/c")).unwrap();
        fs::remove_dir(dir.path().join("sub")).unwrap();
        batch.sync().expect("a removed folder is skipped too");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_batch_is_synced_by_filesystem_and_skips_what_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut batch = SyncBatch::default();
        let n = SYNCFS_FROM * 2;
        for i in 0..n {
            let sub = dir.path().join(format!("node-{i}"));
            fs::create_dir(&sub).unwrap();
            batch.write(&sub.join("config.toml"), format!("n = {i}").as_bytes(), 0o600).unwrap();
        }
        // One node's folder is gone by the time of the sync.
        fs::remove_dir_all(dir.path().join("node-0")).unwrap();
        let mut paths: Vec<PathBuf> = batch.files.clone();
        paths.extend(batch.dirs.iter().cloned());
        let mut refs: Vec<&PathBuf> = paths.iter().collect();
        let mut err = None;
        syncfs_large_batches(&mut refs, &mut err);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(refs.len(), 2, "the removed file and folder are left to their own fsyncs");
        batch.sync().expect("synced, the removed one skipped");
        assert!(batch.is_empty());
        for i in 1..n {
            let text =
                fs::read_to_string(dir.path().join(format!("node-{i}/config.toml"))).unwrap();
            assert_eq!(text, format!("n = {i}"));
        }
    }

    #[test]
    fn a_planted_link_at_the_partial_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, dir.path().join("state.json.partial")).unwrap();
        atomic_write(&target, b"{}", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&target).unwrap(), "{}");
        assert!(!dir.path().join("state.json.partial").exists());
    }

    #[test]
    fn sockets_are_checked_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        assert_eq!(check_socket(&sock).unwrap(), SocketPath::Missing);
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(check_socket(&sock).unwrap(), SocketPath::Ours);
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(matches!(check_socket(&link), Err(UnsafePath::Symlink { .. })));
        let file = dir.path().join("plain");
        fs::write(&file, "").unwrap();
        assert!(matches!(check_socket(&file), Err(UnsafePath::NotASocket { .. })));
    }

    #[test]
    fn private_dirs_must_not_be_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("root");
        check_private_dir(&d).unwrap();
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check_private_dir(&d), Err(UnsafePath::OpenToOthers { .. })));
    }
}
