//! `dwbase deploy top` in a real terminal: Debian's tmux runs it against a real devnet, the
//! test types with `send-keys` and reads the screen with `capture-pane`. The table shows the
//! nodes; `r` (confirmed with `y`) restarts the selected node and its new pid appears; the log
//! pane shows lines the node writes after the view opened, also after the restart; `q` leaves
//! the terminal as it was (main screen, cursor shown, cooked mode with echo). Without a
//! supervisor the view says so and shows state.json; when one is back it resumes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::dwbase::{dwbase_bin, Deployment};
use support::{free_port_range, http, kill_pid, pid_alive, poll_until, script, Signal};

/// A tmux server of our own (its own socket), killed on drop by its recorded pid.
struct Tmux {
    socket: PathBuf,
    server_pid: u32,
}

impl Tmux {
    /// Runs `program` in a new detached session of `w`×`h` cells.
    fn start(dir: &Path, program: &Path, w: u16, h: u16) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("tmux is missing in CI; .ci/run installs it (apt-get install -y tmux)");
            }
            eprintln!("SKIPPED: tmux is not installed (apt-get install -y tmux)");
            return None;
        }
        let socket = dir.join("tmux.sock");
        let out = Command::new("tmux")
            .args(["-S"])
            .arg(&socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "top"])
            .args(["-x", &w.to_string(), "-y", &h.to_string()])
            .arg(program)
            .env_remove("TMUX")
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        let mut t = Self { socket, server_pid: 0 };
        t.server_pid = t.display("#{pid}").trim().parse().expect("tmux server pid");
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tmux format evaluated for the pane.
    fn display(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "top", format])
    }

    /// The screen as text.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Types keys (tmux key names: "r", "y", "Down", "Escape", …).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Waits until the screen satisfies `pred`; panics with the screen after `deadline`.
    fn wait_for(&self, what: &str, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until(what, deadline, || {
                last = self.screen();
                pred(&last).then(|| last.clone())
            })
        }));
        match r {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for {what}; the screen:\n{}", self.screen()),
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
        if self.server_pid > 1 && pid_alive(self.server_pid) {
            kill_pid(self.server_pid, Signal::SIGKILL);
        }
    }
}

/// The table row of `node` (not the log pane's title), split into cells.
fn row<'a>(screen: &'a str, node: &str) -> Option<Vec<&'a str>> {
    screen.lines().find_map(|l| {
        let cells: Vec<&str> = l
            .split(|c: char| c.is_whitespace() || c == '│' || c == '▶')
            .filter(|c| !c.is_empty())
            .collect();
        (cells.first() == Some(&node)).then_some(cells)
    })
}

/// The pid shown in `node`'s row (the 4th column: NODE STATE READY PID).
fn pid_on_screen(screen: &str, node: &str) -> Option<u32> {
    row(screen, node)?.get(3)?.parse().ok()
}

/// `deploy status --json` (exit 0, or 3 while a node is not ready yet).
fn status(d: &Deployment) -> serde_json::Value {
    let out = d.run(&["deploy", "status", "--json", "--no-start"]);
    assert!(matches!(out.code(), 0 | 3), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

fn node_pid(doc: &serde_json::Value, node: &str) -> Option<u32> {
    doc["nodes"].as_array()?.iter().find(|n| n["name"] == node)?["pid"].as_u64().map(|p| p as u32)
}

/// The script tmux runs: the view, then (after it exits) its exit code and the terminal's
/// mode, then it waits for the server to go.
fn top_script(d: &Deployment, extra_env: &str) -> PathBuf {
    let body = format!(
        "cd '{dir}'\nunset TMUX\nexport DWBASE_DATA_DIR='{root}' {extra_env}\n'{bin}' deploy top \
         --interval 500ms\necho \"top exited $?\"\nstty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ' '\necho\nexec cat\n",
        dir = d.dir.path().display(),
        root = d.root.display(),
        bin = dwbase_bin().display(),
    );
    script(d.dir.path(), "top.sh", &body)
}

fn devnet(d: &Deployment) -> u16 {
    let base = free_port_range(2);
    d.run(&["deploy", "devnet", "--nodes", "2", "--base-port", &base.to_string()]).ok();
    base
}

#[test]
fn top_shows_nodes_restarts_follows_the_log_and_restores_the_terminal() {
    let d = Deployment::new();
    let base = devnet(&d);
    let doc = status(&d);
    let (pid_a, pid_b) = (node_pid(&doc, "node-a").unwrap(), node_pid(&doc, "node-b").unwrap());
    let Some(t) = Tmux::start(d.dir.path(), &top_script(&d, ""), 200, 60) else { return };

    // The table: both nodes, ready, with their pids and ports.
    let s = t.wait_for("both nodes ready in the table", Duration::from_secs(20), |s| {
        pid_on_screen(s, "node-a") == Some(pid_a)
            && pid_on_screen(s, "node-b") == Some(pid_b)
            && row(s, "node-a").is_some_and(|r| r[1] == "ready" && r[2] == "yes")
            && row(s, "node-b").is_some_and(|r| r.contains(&(base + 1).to_string().as_str()))
            // The selected node's log is shown below.
            && s.contains("log: node-a")
            && s.contains("dwbase-node listening")
    });
    // CPU% and RSS come from /proc within a sampling interval or two.
    t.wait_for("RSS of node-a", Duration::from_secs(10), |s| {
        row(s, "node-a").is_some_and(|r| r.iter().any(|c| c.ends_with("MiB")))
    });

    // Requests to node-a give it a request rate and a p99 (its /metrics, over the interval).
    let addr_a = format!("127.0.0.1:{base}");
    let mut sent = 0;
    poll_until("a request rate and p99 for node-a", Duration::from_secs(20), || {
        // One worker per request: remember is rate-limited per worker.
        for _ in 0..5 {
            sent += 1;
            let atom = serde_json::json!({
                "world": "top", "worker": format!("top-test-{sent}"), "kind": "observation",
                "importance": 0.5, "payload_json": "{}", "labels": []
            });
            let (code, body) = http("POST", &addr_a, "/remember", Some(&atom.to_string()));
            assert_eq!(code, 200, "{body}");
        }
        let s = t.screen();
        let r = row(&s, "node-a")?;
        let (rate, p99) = (r[r.len() - 2], r[r.len() - 1]);
        (rate.parse::<f64>().is_ok_and(|v| v > 0.0) && p99.ends_with("ms")).then_some(())
    });

    // A line node-a writes after the view opened shows up in the pane.
    assert!(!s.contains("snapshot taken"), "{s}");
    let (code, _) = http("POST", &addr_a, "/admin/snapshot", None);
    assert_eq!(code, 200);
    t.wait_for("the snapshot log line", Duration::from_secs(10), |s| s.contains("snapshot taken"));

    // r asks; y restarts node-a; the new pid replaces the old on screen.
    t.keys(&["r"]);
    t.wait_for("the restart question", Duration::from_secs(5), |s| s.contains("Restart node-a?"));
    t.keys(&["y"]);
    let new_pid = poll_until("the supervisor to report a new pid", Duration::from_secs(30), || {
        node_pid(&status(&d), "node-a").filter(|p| *p != pid_a)
    });
    t.wait_for("node-a's new pid on screen", Duration::from_secs(10), |s| {
        pid_on_screen(s, "node-a") == Some(new_pid) && pid_on_screen(s, "node-b") == Some(pid_b)
    });
    assert_eq!(node_pid(&status(&d), "node-b"), Some(pid_b), "node-b was left alone");

    // The pane still follows node-a's log after the restart: a second snapshot line.
    t.wait_for("node-a ready again", Duration::from_secs(30), |s| {
        row(s, "node-a").is_some_and(|r| r[1] == "ready")
    });
    let (code, _) = http("POST", &addr_a, "/admin/snapshot", None);
    assert_eq!(code, 200);
    t.wait_for("a second snapshot line, from the new process", Duration::from_secs(10), |s| {
        s.matches("snapshot taken").count() >= 2
    });

    // j selects node-b and the pane switches to its log; s asks before stopping.
    t.keys(&["j"]);
    t.wait_for("node-b's log", Duration::from_secs(5), |s| s.contains("log: node-b"));
    t.keys(&["s"]);
    t.wait_for("the stop question", Duration::from_secs(5), |s| s.contains("Stop node-b?"));
    t.keys(&["n"]);
    t.wait_for("the question to go", Duration::from_secs(5), |s| !s.contains("Stop node-b?"));
    assert_eq!(node_pid(&status(&d), "node-b"), Some(pid_b), "n did not stop it");

    // q: the view exits 0 and the terminal is as it was.
    assert_eq!(t.display("#{alternate_on}").trim(), "1", "the view uses the alternate screen");
    t.keys(&["q"]);
    let s = t.wait_for("the view to exit and stty to answer", Duration::from_secs(10), |s| {
        s.contains("top exited") && s.contains("icanon")
    });
    assert!(s.contains("top exited 0"), "{s}");
    assert!(
        s.contains("icanon echo") && !s.contains("-icanon") && !s.contains("-echo"),
        "raw mode was left (stty shows icanon echo when it is not):\n{s}"
    );
    assert_eq!(t.display("#{alternate_on}").trim(), "0", "back on the main screen");
    assert_eq!(t.display("#{cursor_flag}").trim(), "1", "cursor shown");
}

#[test]
fn top_without_a_supervisor_shows_state_json_and_resumes() {
    let d = Deployment::new();
    devnet(&d);
    let doc = status(&d);
    let pid_a = node_pid(&doc, "node-a").unwrap();
    let sup = doc["supervisor"]["pid"].as_u64().unwrap() as u32;
    let Some(t) = Tmux::start(d.dir.path(), &top_script(&d, "NO_COLOR=1"), 160, 40) else {
        return;
    };
    t.wait_for("the table", Duration::from_secs(20), |s| {
        pid_on_screen(s, "node-a") == Some(pid_a) && s.contains(&format!("supervisor pid {sup}"))
    });

    // SIGUSR1: the supervisor exits and leaves the nodes running.
    kill_pid(sup, Signal::SIGUSR1);
    poll_until("the supervisor to exit", Duration::from_secs(20), || {
        (!pid_alive(sup)).then_some(())
    });
    // It says so, names the state file, and shows what it records (pids checked: alive).
    t.wait_for("the state.json view", Duration::from_secs(10), |s| {
        s.contains("SUPERVISOR AWAY")
            && s.contains("state.json")
            && row(s, "node-a").is_some_and(|r| r[1] == "alive")
            && pid_on_screen(s, "node-a") == Some(pid_a)
    });
    // Actions need a supervisor: r says so instead of asking.
    t.keys(&["r"]);
    t.wait_for("the refusal", Duration::from_secs(5), |s| s.contains("no supervisor"));

    // A command that needs one starts a new supervisor, which adopts the nodes: the view
    // resumes on its own.
    d.run(&["deploy", "restart", "node-b"]).ok();
    let new_sup = poll_until("a new supervisor", Duration::from_secs(20), || {
        status(&d)["supervisor"]["pid"].as_u64().map(|p| p as u32)
    });
    assert_ne!(new_sup, sup);
    // node-a was adopted, not restarted: same pid, supervised again.
    t.wait_for("the live view again", Duration::from_secs(15), |s| {
        s.contains(&format!("supervisor pid {new_sup}"))
            && !s.contains("SUPERVISOR AWAY")
            && row(s, "node-a").is_some_and(|r| r[1] == "ready")
            && pid_on_screen(s, "node-a") == Some(pid_a)
    });
    t.keys(&["q"]);
    let s = t.wait_for("the view to exit", Duration::from_secs(10), |s| s.contains("top exited"));
    assert!(s.contains("top exited 0"), "{s}");
}

#[test]
fn top_refuses_without_a_terminal() {
    let d = Deployment::new();
    let out = d.run(&["deploy", "top"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("needs a terminal"), "{}", out.stderr);
}

#[test]
fn status_watch_prints_the_table_every_interval() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use support::ChildGuard;

    let d = Deployment::new();
    devnet(&d);
    // Not a terminal: rounds one after another, each after a time line.
    let mut child = ChildGuard::new(
        d.cmd(&["deploy", "status", "--watch", "--interval", "200ms"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.child().stdout.take().unwrap()).lines();
    let mut rounds = Vec::<Vec<String>>::new();
    while rounds.len() < 3 {
        let line = lines.next().expect("status --watch ended early").unwrap();
        if line.starts_with("--- ") {
            rounds.push(Vec::new());
        } else {
            rounds.last_mut().expect("a time line comes first").push(line);
        }
    }
    for r in &rounds[..2] {
        assert!(r[0].starts_with("supervisor: pid"), "{r:?}");
        assert!(
            r.iter().any(|l| l.starts_with("node-a "))
                && r.iter().any(|l| l.starts_with("node-b ")),
            "{r:?}"
        );
    }
    drop(lines);
    drop(child);

    // --json: one document per line.
    let mut child = ChildGuard::new(
        d.cmd(&["deploy", "status", "--watch", "--json", "--interval", "200ms"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.child().stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let doc: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(doc["nodes"].as_array().unwrap().len(), 2, "{doc}");
        assert_eq!(doc["supervisor"]["running"], true);
    }
    drop(lines);
    drop(child);

    // --interval needs --watch.
    let out = d.run(&["deploy", "status", "--interval", "1s"]);
    assert_eq!(out.code(), 2, "{out:?}");
}
