//! The root's instance lock: an exclusive `flock` on `<root>/supervisor.lock`.
//!
//! Whoever holds it owns the root's nodes and state files. A running supervisor holds it for
//! its whole life; the CLI takes it only to act without a supervisor (stop by signal, clean),
//! so the two can never both write state.json or signal the same node. The holder writes its
//! pid into the file so that a refused party can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::Paths;

/// The lock is held (by the file's pid, when it could be read).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("{path} is held by {}", holder.map(|p| format!("pid {p}")).unwrap_or_else(|| "another process".into()))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid written into it by the holder.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct RootLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// `<root>/supervisor.lock`.
pub fn lock_path(paths: &Paths) -> PathBuf {
    paths.root.join("supervisor.lock")
}

fn read_holder(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl RootLock {
    /// Takes the lock without waiting. The root must exist.
    pub fn try_acquire(paths: &Paths) -> Result<Self, LockError> {
        let path = lock_path(paths);
        let io = |action| {
            let path = path.clone();
            move |source| LockError::Io { action, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening"))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held { holder: read_holder(&path), path })
            }
            Err((_, e)) => return Err(io("locking")(e.into())),
        };
        // Best effort: who holds it is for messages only.
        let _ = lock.set_len(0);
        let _ = lock.seek(SeekFrom::Start(0));
        let _ = writeln!(&mut *lock, "{}", std::process::id());
        Ok(Self { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether someone holds the lock right now (without taking it for long).
    pub fn is_held(paths: &Paths) -> bool {
        if !lock_path(paths).exists() {
            return false;
        }
        matches!(Self::try_acquire(paths), Err(LockError::Held { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_refusal_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path()).unwrap();
        assert!(!RootLock::is_held(&paths));
        let held = RootLock::try_acquire(&paths).unwrap();
        match RootLock::try_acquire(&paths) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(RootLock::is_held(&paths));
        drop(held);
        assert!(!RootLock::is_held(&paths));
        RootLock::try_acquire(&paths).unwrap();
    }
}
