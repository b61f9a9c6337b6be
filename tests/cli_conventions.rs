//! CLI conventions of the real binaries: `dwbase completions bash|zsh|fish` load in their
//! shells, `dwbase man` writes a page per command, colour follows `--color` and `NO_COLOR` (log
//! lines of `dwbase` and `dwbase-node` included) and never goes into a pipe, `backup create` and
//! `restore` report progress as plain lines into a pipe and as a bar on a terminal.
//!
//! Terminals are real pseudo-terminals from util-linux `script`; every node runs under a guard
//! that kills it by pid.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::dwbase::{dwbase_bin, Deployment};
use support::node::{write_config, NodeProcess};
use support::{kill_pid, run_with_deadline, Output};

const ESC: &str = "\x1b[";

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `dwbase ARGS` on a pseudo-terminal (stdin, stdout and stderr all on it) through
/// `script`, with `env`; returns what the terminal showed.
fn on_terminal(d: &Deployment, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut line = shell_quote(dwbase_bin().to_str().unwrap());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"]);
    cmd.env("DWBASE_DATA_DIR", &d.root).current_dir(d.dir.path());
    cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE").env_remove("CLICOLOR");
    cmd.env("TERM", "xterm-256color");
    cmd.envs(env.iter().copied());
    run_with_deadline(&mut cmd, Duration::from_secs(120))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn completion_scripts_load_in_their_shells() {
    let d = Deployment::new();
    let bash = d.run(&["completions", "bash"]).ok();
    let file = d.dir.path().join("dwbase.bash");
    std::fs::write(&file, &bash.stdout).unwrap();
    let loaded = run_with_deadline(
        Command::new("bash")
            .args(["-c", &format!("source {} && complete -p dwbase", file.display())]),
        Duration::from_secs(30),
    )
    .ok();
    assert!(loaded.stdout.contains("dwbase"), "bash registers a completion: {loaded}");
    // Subcommands and flags are in it.
    for word in ["deploy", "backup", "completions", "--color"] {
        assert!(bash.stdout.contains(word), "bash script lacks {word}");
    }

    let zsh = d.run(&["completions", "zsh"]).ok();
    assert!(
        zsh.stdout.starts_with("#compdef dwbase"),
        "{}",
        &zsh.stdout[..80.min(zsh.stdout.len())]
    );
    let fish = d.run(&["completions", "fish"]).ok();
    assert!(fish.stdout.contains("complete -c dwbase"), "{fish}");
    for (shell, text) in [("zsh", &zsh.stdout), ("fish", &fish.stdout)] {
        if have(shell) {
            let f = d.dir.path().join(format!("dwbase.{shell}"));
            std::fs::write(&f, text).unwrap();
            run_with_deadline(Command::new(shell).arg("-n").arg(&f), Duration::from_secs(30)).ok();
        }
    }
    let out = d.run(&["completions", "tcsh"]).code_is(2);
    assert!(out.stderr.contains("tcsh") && out.stderr.contains("bash"), "{out}");
}

#[test]
fn man_pages_for_every_command_of_the_three_programs() {
    let d = Deployment::new();
    let page = d.run(&["man"]).ok();
    assert!(page.stdout.contains(".TH dwbase 1"), "{}", &page.stdout[..200.min(page.stdout.len())]);
    let dir = d.dir.path().join("man1");
    let out = d.run(&["man", "--out-dir", dir.to_str().unwrap()]).ok();
    for name in [
        "dwbase.1",
        "dwbase-deploy.1",
        "dwbase-deploy-devnet.1",
        "dwbase-backup-create.1",
        "dwbase-completions.1",
        "dwbase-node.1",
        "dwbase-supervisor.1",
        "dwbase-supervisor-run.1",
    ] {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
        assert!(text.contains(".TH "), "{name} is a man page");
    }
    let devnet = std::fs::read_to_string(dir.join("dwbase-deploy-devnet.1")).unwrap();
    assert!(devnet.contains("base\\-port"), "flags are documented");
    // A file where the folder should be: a clear failure.
    let file = d.dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = d.run(&["man", "--out-dir", file.to_str().unwrap()]).code_is(1);
    assert!(out.stderr.contains("a-file"), "{out}");
}

#[test]
fn log_colour_follows_the_flag_no_color_and_the_terminal() {
    let d = Deployment::new();
    // `deploy stop` with nothing deployed: exits 0 and logs its state root at debug.
    let args = ["-vv", "deploy", "stop"];
    // A pipe: no escape codes, unless asked for.
    let piped = d.run(&args).ok();
    assert!(piped.stderr.contains("state root"), "the debug line is logged: {piped}");
    assert!(!piped.stderr.contains(ESC), "{piped:?}");
    let forced = d.run(&["--color", "always", "-vv", "deploy", "stop"]).ok();
    assert!(forced.stderr.contains(ESC), "{forced}");
    let forced_env = run_with_deadline(
        d.cmd(&args).env("CLICOLOR_FORCE", "1").env_remove("NO_COLOR"),
        Duration::from_secs(60),
    )
    .ok();
    assert!(forced_env.stderr.contains(ESC), "CLICOLOR_FORCE: {forced_env}");

    // A terminal: colour by default, none with NO_COLOR or --color never.
    let tty = on_terminal(&d, &args, &[]).ok();
    assert!(tty.stdout.contains("state root") && tty.stdout.contains(ESC), "{tty:?}");
    let no_color = on_terminal(&d, &args, &[("NO_COLOR", "1")]).ok();
    assert!(no_color.stdout.contains("state root"), "{no_color}");
    assert!(!no_color.stdout.contains(ESC), "NO_COLOR on a terminal: {no_color:?}");
    let never = on_terminal(&d, &["--color=never", "-vv", "deploy", "stop"], &[]).ok();
    assert!(!never.stdout.contains(ESC), "--color never on a terminal: {never:?}");
    // clap's own output follows it too.
    let help = on_terminal(&d, &["--color", "never", "deploy", "--help"], &[]).ok();
    assert!(help.stdout.contains("devnet") && !help.stdout.contains(ESC), "{help:?}");
    let bad = d.run(&["--color", "sometimes", "deploy", "stop"]).code_is(2);
    assert!(bad.stderr.contains("sometimes") && bad.stderr.contains("never"), "{bad}");
}

#[test]
fn node_log_lines_have_colour_only_when_asked_for() {
    let d = Deployment::new();
    for (args, coloured) in [(&[][..], false), (&["--color", "always"][..], true)] {
        let dir = d.dir.path().join(format!("n{}", args.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = write_config(&dir, "n1", "127.0.0.1:0", "");
        let mut node = NodeProcess::start(&config, args);
        node.wait_ready(Duration::from_secs(30));
        kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
        let (status, stderr) = node.wait_exit(Duration::from_secs(30)).expect("exits on SIGTERM");
        assert!(status.success(), "{status}\n{stderr}");
        assert!(stderr.contains("INFO") || stderr.contains("info"), "{stderr}");
        assert_eq!(stderr.contains(ESC), coloured, "{args:?}: {stderr:?}");
    }
}

fn stopped_data_dir(d: &Deployment) -> std::path::PathBuf {
    let dir = d.dir.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, "n1", "127.0.0.1:0", "");
    let mut node = NodeProcess::start(&config, &[]);
    node.wait_ready(Duration::from_secs(30));
    for i in 0..20 {
        let body = serde_json::json!({
            "world": "w", "worker": "t", "kind": "observation", "importance": 0.5,
            "payload_json": serde_json::json!({"text": format!("fact {i}")}).to_string(),
        })
        .to_string();
        let (status, text) = node.call("POST", "/remember", Some(&body));
        assert_eq!(status, 200, "{text}");
    }
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = node.wait_exit(Duration::from_secs(30)).expect("exits on SIGTERM");
    assert!(status.success(), "{stderr}");
    dir.join("n1/data")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn backup_progress_is_plain_lines_in_a_pipe_and_a_bar_on_a_terminal() {
    let d = Deployment::new();
    let data = stopped_data_dir(&d);
    assert!(data.join("db").is_file(), "{}", data.display());
    let archive = d.dir.path().join("b.tzst");

    let out = d.run(&["backup", "create", "--data-dir", s(&data), "-o", s(&archive)]).ok();
    for step in ["copying the store of", "compressing", "verifying the archive"] {
        assert!(out.stderr.contains(step), "step {step:?} reported: {out}");
    }
    assert!(out.stderr.lines().any(|l| l.starts_with("verifying the archive: ")), "{out}");
    assert!(!out.stderr.contains(ESC) && !out.stderr.contains('\r'), "{:?}", out.stderr);
    assert!(out.stdout.contains("backed up"), "{out}");

    let target = d.dir.path().join("restored");
    let out = d.run(&["backup", "restore", "-i", s(&archive), "--data-dir", s(&target)]).ok();
    assert!(out.stderr.contains("extracting and checking"), "{out}");
    assert!(!out.stderr.contains(ESC) && !out.stderr.contains('\r'), "{:?}", out.stderr);
    assert!(target.join("db").is_file());

    // On a terminal: indicatif redraws its line (carriage returns / erase-line codes).
    let again = d.dir.path().join("c.tzst");
    let tty =
        on_terminal(&d, &["backup", "create", "--data-dir", s(&data), "-o", s(&again)], &[]).ok();
    assert!(again.is_file(), "{tty}");
    assert!(tty.stdout.contains("verifying the archive"), "{tty}");
    assert!(tty.stdout.contains("\x1b[2K") || tty.stdout.contains('\r'), "{:?}", tty.stdout);
}
