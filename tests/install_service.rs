//! `dwbase deploy install-service --out DIR` with the real binary: the unit names the
//! `dwbase-supervisor` built beside `dwbase`, the root and the user; `systemd-analyze verify`
//! accepts it (when installed); a different existing unit is replaced only with `--force`.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::dwbase::Deployment;
use support::run_with_deadline;

fn supervisor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwbase-supervisor"))
}

/// `systemd-analyze [--user] verify UNIT`: its complaints (empty = accepted), or `None` with
/// the reason printed where the tool is missing.
fn verify(unit: &Path, user: bool, runtime_dir: &Path) -> Option<String> {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime_dir);
    }
    cmd.arg("verify").arg(unit);
    match cmd.output() {
        Ok(out) => Some(format!(
            "{}{}{}",
            if out.status.success() { "" } else { "(failed) " },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => {
            // The real stderr: libtest does not capture it, so the skip is visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP systemd-analyze verify of {}: cannot run systemd-analyze: {e}",
                unit.display()
            );
            None
        }
    }
}

#[test]
fn user_unit_with_filled_paths_is_verified_and_not_replaced_without_force() {
    let d = Deployment::new();
    let out = d.dir.path().join("units");
    let root = d.dir.path().join("state root");
    let root_s = root.to_str().unwrap();
    let args = ["deploy", "install-service", "--systemd", "--user", "--root", root_s, "--out"];
    let mut cmd = d.cmd(&args);
    cmd.arg(&out).env("HOME", d.dir.path());
    let o = run_with_deadline(&mut cmd, Duration::from_secs(30)).ok();
    let unit = out.join("dwbase-supervisor.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let sup = supervisor_bin();
    assert!(
        text.contains(&format!(
            "\nExecStart={} run --root \"{root_s}\" --foreground --metrics-addr 127.0.0.1:9464\n",
            sup.display()
        )),
        "{text}"
    );
    assert!(text.contains(&format!("\nEnvironment=\"DWBASE_DATA_DIR={root_s}\"\n")), "{text}");
    assert!(text.contains(&format!("\nExecStartPre=/bin/mkdir -p \"{root_s}\"\n")), "{text}");
    assert!(!text.contains("%h"), "every path is filled in: {text}");
    // The commands are printed (not run: --enable was not given).
    assert!(
        o.stdout.contains(
            "systemctl --user daemon-reload && systemctl --user enable --now dwbase-supervisor"
        ),
        "{o}"
    );
    assert!(o.stdout.contains(&unit.display().to_string()), "{o}");
    if let Some(complaints) = verify(&unit, true, d.dir.path()) {
        assert!(complaints.trim().is_empty(), "systemd-analyze --user verify: {complaints}");
    }

    // The same unit again: unchanged. Another one: refused without --force, then replaced.
    let mut again = d.cmd(&args);
    again.arg(&out).env("HOME", d.dir.path());
    let o = run_with_deadline(&mut again, Duration::from_secs(30)).ok();
    assert!(o.stdout.contains("unchanged"), "{o}");
    let other = d.dir.path().join("other-root");
    let other_args = |force: bool| {
        let mut c = d.cmd(&["deploy", "install-service", "--systemd", "--user", "--out"]);
        c.arg(&out).arg("--root").arg(&other).env("HOME", d.dir.path());
        if force {
            c.arg("--force");
        }
        c
    };
    let o = run_with_deadline(&mut other_args(false), Duration::from_secs(30)).code_is(1);
    assert!(o.stderr.contains("--force"), "{o}");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text, "left as it was");
    run_with_deadline(&mut other_args(true), Duration::from_secs(30)).ok();
    assert!(std::fs::read_to_string(&unit).unwrap().contains(other.to_str().unwrap()));
}

#[test]
fn system_unit_names_the_user_and_root_and_is_verified() {
    let d = Deployment::new();
    let out = d.dir.path().join("units");
    let root = d.dir.path().join("srv-dwbase");
    let mut cmd = d.cmd(&["deploy", "install-service", "--systemd", "--run-as", "dwbase-ci"]);
    cmd.arg("--root").arg(&root).arg("--out").arg(&out);
    let o = run_with_deadline(&mut cmd, Duration::from_secs(30)).ok();
    let unit = out.join("dwbase-supervisor.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nUser=dwbase-ci\n"), "{text}");
    assert!(!text.contains("\nGroup="), "the user's own group: {text}");
    assert!(text.contains(&format!("\nReadWritePaths={}\n", root.display())), "{text}");
    assert!(
        text.contains(&format!(
            "\nExecStart={} run --root {} --foreground --metrics-addr 127.0.0.1:9464\n",
            supervisor_bin().display(),
            root.display()
        )),
        "{text}"
    );
    assert!(o.stdout.contains("systemctl daemon-reload && systemctl enable --now"), "{o}");
    assert!(!root.exists(), "with --out nothing is created outside it");
    if let Some(complaints) = verify(&unit, false, d.dir.path()) {
        assert!(complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    }
}

#[test]
fn enable_needs_the_standard_place() {
    let d = Deployment::new();
    let o = d.run(&["deploy", "install-service", "--user", "--enable", "--out", "x"]).code_is(2);
    assert!(o.stderr.contains("--out"), "{o}");
}
