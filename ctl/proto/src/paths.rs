//! Where things live on disk under a state root.
//!
//! ```text
//! <root> = $DWBASE_DATA_DIR or ./.dwbase (made absolute)
//! <root>/supervisor.sock     control socket (0600, root dir 0700)
//! <root>/notify.sock       nodes' last words to the supervisor (0600, see notify.rs)
//! <root>/supervisor.log      the supervisor's own log (rotated)
//! <root>/devnet/state.json   durable record of the devnet
//! <root>/devnet/node-a/      data/ logs/ summaries/ config.toml
//! <root>/local/state.json    durable record of the local node
//! <root>/local/              data/ logs/ summaries/ config.toml   (node id "local")
//! <root>/local/<id>/         the same, for a local node with another id
//! ```

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::messages::Group;

/// Environment variable naming the state root.
pub const ROOT_ENV: &str = "DWBASE_DATA_DIR";

/// The longest socket path the OS accepts (sun_path is 108 bytes on Linux, 104 on macOS,
/// including the terminating NUL). Paths longer than this fall back to a short runtime path.
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// The longest socket path the OS accepts.
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// The id of the default local node, whose folder is `<root>/local` itself.
pub const LOCAL_NODE_ID: &str = "local";

/// Names a local node's id cannot take: the folders of the default local node, which its
/// folder would sit in (see [`Paths::node_dir`]).
pub const RESERVED_LOCAL_IDS: &[&str] = &["data", "logs", "summaries"];

/// All paths under one state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The state root (absolute).
    pub root: PathBuf,
}

impl Paths {
    /// The root from `$DWBASE_DATA_DIR`, else `./.dwbase`, made absolute against the current
    /// directory (it is not required to exist).
    pub fn from_env() -> std::io::Result<Self> {
        let raw = std::env::var_os(ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".dwbase"));
        Self::new(&raw)
    }

    /// Paths under `root`, made absolute against the current directory.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(Self { root: normalize(&root) })
    }

    /// `<root>/supervisor.sock`, the preferred socket path.
    pub fn preferred_socket(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    /// The control socket: `<root>/supervisor.sock` when it fits the OS limit, else a short
    /// per-user path derived from the root's hash (the same on both ends, and recorded in
    /// state.json so an operator can find it).
    pub fn socket(&self) -> PathBuf {
        let preferred = self.preferred_socket();
        if preferred.as_os_str().len() <= MAX_SOCKET_PATH {
            return preferred;
        }
        runtime_dir().join(format!("{}.sock", self.root_hash()))
    }

    /// The notify socket nodes tell their last words on ([`crate::notify`]):
    /// `<root>/notify.sock`, or beside a short control socket when that path is too long.
    pub fn notify_socket(&self) -> PathBuf {
        let preferred = self.root.join("notify.sock");
        if preferred.as_os_str().len() <= MAX_SOCKET_PATH {
            return preferred;
        }
        runtime_dir().join(format!("{}.notify.sock", self.root_hash()))
    }

    /// A short stable hash of the root, for names outside it.
    pub fn root_hash(&self) -> String {
        let digest = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        hex::encode(&digest[..8])
    }

    /// `<root>/supervisor.log` (the active file; rotated ones sit beside it).
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }

    /// `<root>/supervisor.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }

    /// `<root>/devnet` or `<root>/local`.
    pub fn group_dir(&self, group: Group) -> PathBuf {
        self.root.join(group.dir_name())
    }

    /// `<root>/<group>/state.json`.
    pub fn state_file(&self, group: Group) -> PathBuf {
        self.group_dir(group).join("state.json")
    }

    /// The folder of one node: `<root>/devnet/<name>`; for the local node `<root>/local` when
    /// its id is `local` (the default config, the original DWBase's `.dwbase/local/data`), else
    /// `<root>/local/<id>`, so that configs with different ids never share a store.
    pub fn node_dir(&self, group: Group, name: &str) -> PathBuf {
        match group {
            Group::Devnet => self.group_dir(group).join(name),
            Group::Local if name == LOCAL_NODE_ID => self.group_dir(group),
            Group::Local => self.group_dir(group).join(name),
        }
    }
}

/// Directory for sockets whose natural path is too long: `$XDG_RUNTIME_DIR/dwbase`, else
/// `/tmp/dwbase-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("dwbase");
    }
    #[cfg(unix)]
    let uid = nix::unistd::getuid().as_raw();
    #[cfg(not(unix))]
    let uid = 0;
    std::env::temp_dir().join(format!("dwbase-{uid}"))
}

/// Removes `.` and resolves `..` lexically, so the same root always hashes the same.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_root_keeps_socket_inside() {
        let p = Paths::new(Path::new("/tmp/x")).unwrap();
        assert_eq!(p.socket(), PathBuf::from("/tmp/x/supervisor.sock"));
        assert_eq!(p.state_file(Group::Devnet), PathBuf::from("/tmp/x/devnet/state.json"));
        assert_eq!(p.node_dir(Group::Devnet, "node-b"), PathBuf::from("/tmp/x/devnet/node-b"));
        assert_eq!(p.node_dir(Group::Local, "local"), PathBuf::from("/tmp/x/local"));
        assert_eq!(p.node_dir(Group::Local, "edge"), PathBuf::from("/tmp/x/local/edge"));
    }

    #[test]
    fn long_root_falls_back_to_short_stable_socket() {
        let deep = format!("/tmp/{}", "d/".repeat(80));
        let p = Paths::new(Path::new(&deep)).unwrap();
        let s = p.socket();
        assert!(s.as_os_str().len() <= MAX_SOCKET_PATH, "{s:?}");
        assert!(!s.starts_with(&p.root));
        assert_eq!(s, Paths::new(Path::new(&deep)).unwrap().socket(), "stable across calls");
        let other = Paths::new(Path::new(&format!("{deep}x"))).unwrap();
        assert_ne!(s, other.socket(), "distinct roots get distinct sockets");
    }

    #[test]
    fn relative_roots_are_normalized() {
        let a = Paths::new(Path::new("/a/b/../c/./d")).unwrap();
        assert_eq!(a.root, PathBuf::from("/a/c/d"));
    }
}
