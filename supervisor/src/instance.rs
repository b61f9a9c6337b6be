//! One supervisor per state root: the lock, the leftover-socket probe, the socket itself and
//! the pid file — and their removal on every way out.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dwbase_proto::fsutil::{self, SocketPath, UnsafePath};
use dwbase_proto::lock::{LockError, RootLock};
use dwbase_proto::Paths;
use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::ListenerOptions;
use interprocess::os::unix::local_socket::ListenerOptionsExt;

/// Starting up as the root's supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another supervisor holds the lock or answers on the socket.
    #[error("a supervisor already runs for {root} ({})", pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "pid unknown".into()))]
    AlreadyRunning {
        /// The state root.
        root: PathBuf,
        /// Its pid, from the pid file.
        pid: Option<u32>,
    },
    /// The root, its socket folder or a leftover socket is not safely ours.
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    /// A filesystem or socket operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io { action, path: path.to_owned(), source }
}

/// Holds the root: the flock on `supervisor.lock`, the socket file and the pid file. Dropping
/// it removes the socket and pid file, then releases the lock.
#[derive(Debug)]
pub struct Instance {
    _lock: RootLock,
    socket: PathBuf,
    pid_file: PathBuf,
}

fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Creates `dir` (0700) or, when it exists, tightens it to 0700: it holds the control
/// socket and every node's data and config (API keys included).
fn make_private_dir(dir: &Path) -> Result<(), InstanceError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    let mode = std::fs::metadata(dir).map_err(io("reading the mode of", dir))?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("tightening the permissions of", dir))?;
        tracing::info!(
            dir = %dir.display(),
            "tightened permissions from {:04o} to 0700 (it holds the control socket and node data)",
            mode & 0o7777
        );
    }
    Ok(())
}

impl Instance {
    /// Takes the root: lock, probe a leftover socket (live → refuse, dead → remove), bind the
    /// socket (0600) and write the pid file.
    pub fn acquire(paths: &Paths) -> Result<(Self, Listener), InstanceError> {
        make_private_dir(&paths.root)?;
        // Ours, and nobody else may write into it (the mode was just tightened if it was open).
        fsutil::check_private_dir(&paths.root)?;
        let lock = match RootLock::try_acquire(paths) {
            Ok(l) => l,
            Err(LockError::Held { holder, .. }) => {
                return Err(InstanceError::AlreadyRunning {
                    root: paths.root.clone(),
                    pid: read_pid(&paths.pid_file()).or(holder),
                })
            }
            Err(LockError::Io { action, path, source }) => {
                return Err(InstanceError::Io { action, path, source })
            }
        };
        let socket = paths.socket();
        if let Some(dir) = socket.parent() {
            make_private_dir(dir)?;
            fsutil::check_private_dir(dir)?;
        }
        // A symlink or a stranger's file there is refused, never dialled or removed.
        if fsutil::check_socket(&socket)? == SocketPath::Ours {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(_) => {
                    return Err(InstanceError::AlreadyRunning {
                        root: paths.root.clone(),
                        pid: read_pid(&paths.pid_file()),
                    })
                }
                Err(_) => {
                    tracing::info!(socket = %socket.display(), "removing a leftover socket nobody answers on");
                    std::fs::remove_file(&socket).map_err(io("removing", &socket))?;
                }
            }
        }
        let name = dwbase_proto::client::socket_name(&socket).map_err(io("naming", &socket))?;
        let listener = ListenerOptions::new()
            .name(name)
            .mode(0o600)
            .reclaim_name(false)
            .create_tokio()
            .map_err(io("binding", &socket))?;
        let pid_file = paths.pid_file();
        let instance = Self { _lock: lock, socket, pid_file };
        let mut f = File::create(&instance.pid_file).map_err(io("writing", &instance.pid_file))?;
        writeln!(f, "{}", std::process::id()).map_err(io("writing", &instance.pid_file))?;
        register_cleanup(&[instance.socket.clone(), instance.pid_file.clone()]);
        Ok((instance, listener))
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.socket);
        if read_pid(&self.pid_file) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.pid_file);
        }
        unregister_cleanup(&[self.socket.clone(), self.pid_file.clone()]);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.cleanup();
    }
}

static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register_cleanup(paths: &[PathBuf]) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.extend(paths.iter().cloned());
    }
}

fn unregister_cleanup(paths: &[PathBuf]) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.retain(|p| !paths.contains(p));
    }
}

/// Installs a panic hook that removes the socket and pid file when the main thread panics
/// (a panic there ends the process; panics inside tokio tasks do not and are left alone).
/// For the daemon binary only: a library must not own the process's panic hook.
pub fn install_panic_cleanup() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            if let Ok(v) = CLEANUP.lock() {
                for p in v.iter() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_instance_is_refused_and_cleanup_removes_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path()).unwrap();
        let (inst, listener) = Instance::acquire(&paths).unwrap();
        assert!(paths.socket().exists());
        assert_eq!(read_pid(&paths.pid_file()), Some(std::process::id()));
        let mode = std::fs::metadata(paths.socket()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let err = Instance::acquire(&paths).unwrap_err();
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        drop(listener);
        drop(inst);
        assert!(!paths.socket().exists());
        assert!(!paths.pid_file().exists());
        // Free again.
        let (_inst, _l) = Instance::acquire(&paths).unwrap();
    }

    #[tokio::test]
    async fn an_existing_open_root_is_tightened_and_the_socket_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = Paths::new(&root).unwrap();
        let (_inst, _l) = Instance::acquire(&paths).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&paths.socket()), 0o600);
    }

    #[tokio::test]
    async fn a_dead_leftover_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path()).unwrap();
        {
            // A socket file nobody listens on.
            let l = std::os::unix::net::UnixListener::bind(paths.socket()).unwrap();
            drop(l);
        }
        assert!(paths.socket().exists());
        let (_inst, _l) = Instance::acquire(&paths).unwrap();
    }

    #[tokio::test]
    async fn a_socket_symlink_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path()).unwrap();
        let target = other.path().join("victim.sock");
        let _victim = std::os::unix::net::UnixListener::bind(&target).unwrap();
        std::os::unix::fs::symlink(&target, paths.socket()).unwrap();
        let err = Instance::acquire(&paths).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(std::fs::symlink_metadata(paths.socket()).unwrap().file_type().is_symlink());
        assert!(target.exists());
    }
}
