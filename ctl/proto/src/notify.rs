//! A node's last words: why it is about to exit, told to its supervisor over a datagram
//! socket that does not depend on the node's log (which may sit on the very disk that is full).
//!
//! As systemd's `NOTIFY_SOCKET`: the supervisor binds a Unix datagram socket
//! ([`crate::Paths::notify_socket`], 0600 in the private root, so only its user can send) and
//! gives its path to every node it starts in [`NOTIFY_ENV`]. A node that exits because it
//! cannot run (its store does not open, its config is refused, its store is stuck) sends one
//! datagram, `PID=<pid>\nLAST_WORDS=<reason>`, right before it exits. The send never blocks and
//! its failure is ignored: without a supervisor listening the node exits exactly as before.
//!
//! Ordering is what makes this simple: the datagram sits in the supervisor's socket buffer
//! before the process exits, so the supervisor reads its socket when it handles the exit
//! ([`NotifyReceiver::drain`]) and finds the reason there — no task, no race.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The environment variable naming the supervisor's notify socket.
pub const NOTIFY_ENV: &str = "DWBASE_NOTIFY_SOCKET";

/// The longest reason sent (longer ones are cut at a character boundary, marked with `…`).
pub const MAX_REASON: usize = 2048;

/// Reasons kept for pids whose exit has not been handled yet; older ones are dropped.
const MAX_PENDING: usize = 256;

fn encode(pid: u32, reason: &str) -> String {
    let mut text = reason.trim();
    let mut cut = false;
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
        cut = true;
    }
    format!("PID={pid}\nLAST_WORDS={text}{}", if cut { "…" } else { "" })
}

fn decode(datagram: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(datagram).ok()?;
    let (first, rest) = text.split_once('\n')?;
    let pid = first.strip_prefix("PID=")?.parse().ok()?;
    let reason = rest.strip_prefix("LAST_WORDS=")?;
    Some((pid, reason.to_owned()))
}

/// Tells the supervisor named in [`NOTIFY_ENV`] (if any) why this process is about to exit.
/// Never blocks, never fails the caller.
pub fn last_words(reason: &str) {
    #[cfg(unix)]
    {
        let Some(path) = std::env::var_os(NOTIFY_ENV).filter(|p| !p.is_empty()) else { return };
        let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
        let _ = sock.set_nonblocking(true);
        let _ = sock.send_to(encode(std::process::id(), reason).as_bytes(), Path::new(&path));
    }
    #[cfg(not(unix))]
    let _ = reason;
}

/// The supervisor's end: a bound datagram socket, read when an exit is handled.
#[derive(Debug)]
pub struct NotifyReceiver {
    path: PathBuf,
    #[cfg(unix)]
    sock: std::os::unix::net::UnixDatagram,
    pending: HashMap<u32, String>,
    order: std::collections::VecDeque<u32>,
}

impl NotifyReceiver {
    /// Binds `path` (0600), replacing a leftover socket file there. The caller holds the
    /// root's lock, so no live supervisor can own that file.
    #[cfg(unix)]
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket (left alone)", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sock = std::os::unix::net::UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        sock.set_nonblocking(true)?;
        Ok(Self { path: path.to_owned(), sock, pending: HashMap::new(), order: Default::default() })
    }

    /// The socket's path (what nodes get in [`NOTIFY_ENV`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every datagram waiting, then takes the reason `pid` left, if it left one.
    pub fn take(&mut self, pid: u32) -> Option<String> {
        self.drain();
        let reason = self.pending.remove(&pid);
        if reason.is_some() {
            self.order.retain(|p| *p != pid);
        }
        reason
    }

    /// Reads every datagram waiting into the pending reasons (without blocking).
    pub fn drain(&mut self) {
        #[cfg(unix)]
        {
            let mut buf = vec![0u8; MAX_REASON + 64];
            while let Ok(n) = self.sock.recv(&mut buf) {
                let Some((pid, reason)) = decode(&buf[..n]) else { continue };
                if self.pending.insert(pid, reason).is_none() {
                    self.order.push_back(pid);
                }
                while self.order.len() > MAX_PENDING {
                    if let Some(old) = self.order.pop_front() {
                        self.pending.remove(&old);
                    }
                }
            }
        }
    }
}

impl Drop for NotifyReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_reason_round_trips_and_is_cut_at_a_character_boundary() {
        assert_eq!(
            decode(encode(42, "  no space left\n").as_bytes()),
            Some((42, "no space left".into()))
        );
        let long = "é".repeat(MAX_REASON);
        let (_, r) = decode(encode(1, &long).as_bytes()).unwrap();
        assert!(r.len() <= MAX_REASON + "…".len() && r.ends_with('…'), "{}", r.len());
        assert_eq!(decode(b"garbage"), None);
        assert_eq!(decode(b"PID=x\nLAST_WORDS=y"), None);
    }

    #[test]
    fn the_reason_left_before_an_exit_is_there_when_the_exit_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        // A leftover socket file is replaced; anything else is refused.
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let mut rx = NotifyReceiver::bind(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // What a node does: a child process with the variable set tells, then exits.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "notify::tests::child_tells", "--test-threads=1"])
            .env(NOTIFY_ENV, &path)
            .env("DWBASE_NOTIFY_TEST_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        assert_eq!(rx.take(pid + 1), None, "another pid left nothing");
        assert_eq!(
            rx.take(pid).as_deref(),
            Some("opening the store: No space left on device (os error 28)")
        );
        assert_eq!(rx.take(pid), None, "taken once");
        drop(rx);
        assert!(!path.exists(), "the socket file goes with the receiver");
        std::fs::write(&path, b"x").unwrap();
        assert!(NotifyReceiver::bind(&path).is_err(), "a regular file is not replaced");
    }

    #[test]
    fn child_tells() {
        if std::env::var_os("DWBASE_NOTIFY_TEST_CHILD").is_some() {
            last_words("opening the store: No space left on device (os error 28)");
        }
    }
}
