//! A state root for one test, and the `dwbase` CLI run against it. On drop: `dwbase deploy
//! stop`, then SIGKILL to every process group recorded in the state files and to the
//! supervisor — only pids whose start time (or command line) proves they are ours.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dwbase_proto::process::{self, Liveness};
use dwbase_proto::state::{Loaded, StateFile};
use dwbase_proto::{Group, Paths};

use super::{run_with_deadline, Output};

/// The `dwbase` binary under test.
pub fn dwbase_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwbase"))
}

/// Environment variables a developer's shell might carry that would change what the
/// binaries do; cleared for every command.
const CLEARED_ENV: &[&str] = &["DWBASE_NODE_BIN", "NOTIFY_SOCKET"];

/// One test's state root (a fresh temp dir) with a cleanup guard.
pub struct Deployment {
    /// Holds the temp dir; the root is `<dir>/root`, commands run in `<dir>`.
    pub dir: tempfile::TempDir,
    /// The state root.
    pub root: PathBuf,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

impl Deployment {
    /// A fresh root.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("dwb").tempdir().unwrap();
        let root = dir.path().join("root");
        Self { dir, root }
    }

    /// A fresh root inside `parent` (e.g. a small filesystem of the test's own).
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::Builder::new().prefix("dwb").tempdir_in(parent).unwrap();
        let root = dir.path().join("root");
        Self { dir, root }
    }

    /// The paths under the root.
    pub fn paths(&self) -> Paths {
        Paths::new(&self.root).unwrap()
    }

    /// A `dwbase` command with DWBASE_DATA_DIR set to the root, run from the temp dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(dwbase_bin());
        for k in dwbase_node::config::ENV_VARS.iter().chain(CLEARED_ENV) {
            cmd.env_remove(k);
        }
        cmd.env("DWBASE_DATA_DIR", &self.root).current_dir(self.dir.path()).args(args);
        cmd
    }

    /// Runs `dwbase ARGS` to completion (60 s deadline).
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_deadline(&mut self.cmd(args), Duration::from_secs(60))
    }

    /// Loads one state file (panics when corrupt).
    pub fn state(&self, group: Group) -> Option<StateFile> {
        match StateFile::load(&self.paths().state_file(group)).unwrap() {
            Loaded::Missing => None,
            Loaded::Ok(s) => Some(s),
            Loaded::Corrupt { reason, .. } => panic!("corrupt state file: {reason}"),
        }
    }

    /// Every (pid, start time) of a node recorded in either state file.
    pub fn node_pids(&self) -> Vec<(String, u32, Option<u64>)> {
        [Group::Devnet, Group::Local]
            .into_iter()
            .filter_map(|g| self.state(g))
            .flat_map(|s| s.nodes)
            .filter_map(|n| n.pid.map(|p| (n.name, p, n.start_time)))
            .collect()
    }

    /// The supervisor pid, from the state files or `supervisor.pid` (the latter only if its
    /// command line names our root).
    pub fn supervisor_pid(&self) -> Option<u32> {
        for g in [Group::Devnet, Group::Local] {
            if let Some(s) = self.state(g).and_then(|s| s.supervisor) {
                if process::liveness(s.pid, s.start_time) == Liveness::Alive {
                    return Some(s.pid);
                }
            }
        }
        let pid: u32 =
            std::fs::read_to_string(self.paths().pid_file()).ok()?.trim().parse().ok()?;
        self.cmdline_mentions_root(pid).then_some(pid)
    }

    /// Whether /proc/<pid>/cmdline mentions this test's root (proof the process is ours).
    pub fn cmdline_mentions_root(&self, pid: u32) -> bool {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let cmdline = String::from_utf8_lossy(&raw);
        cmdline.contains(self.root.to_string_lossy().as_ref())
    }

    /// The text of a node's log file.
    pub fn node_log(&self, group: Group, name: &str) -> String {
        let p = self.paths().node_dir(group, name).join("logs/node.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let nodes = self.node_pids();
        let sup = self.supervisor_pid();
        if self.root.exists() {
            let _ = run_with_deadline(
                &mut self.cmd(&["deploy", "stop", "--timeout", "3s"]),
                Duration::from_secs(60),
            );
        }
        #[cfg(unix)]
        {
            use nix::sys::signal::Signal;
            for (_, pid, start) in nodes {
                if process::liveness(pid, start) == Liveness::Alive {
                    super::kill_group(pid, Signal::SIGKILL);
                }
            }
            if let Some(pid) = sup {
                if super::pid_alive(pid) && self.cmdline_mentions_root(pid) {
                    super::kill_pid(pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// `deploy devnet` flags of the owner tests: no swarm, 3 s stop timeout, 60 s ready timeout.
pub fn devnet_args(nodes: u32, base: u16) -> Vec<String> {
    ["deploy", "devnet", "--no-swarm", "--stop-timeout", "3s", "--timeout", "60s"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--nodes".into(), nodes.to_string(), "--base-port".into(), base.to_string()])
        .collect()
}

/// Every live `dwbase-node` process whose `--config` lies under `root`: node name → pids.
pub fn node_processes(root: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let mut out: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for id in process::find_processes(|args| {
        let is_node =
            args.first().and_then(|a| Path::new(a).file_name()).is_some_and(|n| n == "dwbase-node");
        is_node && process::arg_value(args, "--config").is_some_and(|c| c.starts_with(root))
    }) {
        let Some(args) = process::cmdline(id.pid) else { continue };
        let Some(cfg) = process::arg_value(&args, "--config") else { continue };
        let name = cfg.parent().and_then(|p| p.file_name()).unwrap().to_string_lossy().into_owned();
        out.entry(name).or_default().push(id.pid);
    }
    out
}

impl Deployment {
    /// SIGKILLs this root's supervisor and waits until it is gone; returns its pid.
    pub fn kill_supervisor(&self) -> u32 {
        let sup = self.supervisor_pid().expect("supervisor pid");
        super::kill_pid(sup, nix::sys::signal::Signal::SIGKILL);
        super::poll_until("the supervisor gone", Duration::from_secs(10), || {
            (!process::pid_running(sup) || process::is_zombie(sup)).then_some(())
        });
        sup
    }
}

/// A copy of a file from the repository's `deploy/` folder, as text.
pub fn template(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Replaces the value of `key = …` lines (the first match) in TOML text.
pub fn set_toml_key(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if !done && t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
