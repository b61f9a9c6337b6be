//! `dwbase deploy devnet --foreground`: stays attached, and Ctrl+C (SIGINT to the CLI alone,
//! the harshest case: the supervisor does not get it) stops every node and the supervisor.

mod support;

#[cfg(unix)]
#[test]
fn sigint_leaves_no_process() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::sys::signal::Signal;
    use support::dwbase::Deployment;
    use support::{free_port_range, pid_alive, ChildGuard};

    let d = Deployment::new();
    let base = free_port_range(2).to_string();
    let mut cmd =
        d.cmd(&["deploy", "devnet", "--nodes", "2", "--base-port", &base, "--foreground"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut cli = ChildGuard::new(cmd.spawn().unwrap());
    let stderr = support::drain(cli.child().stderr.take().unwrap());

    // Wait for the table's last line (the state file), read line by line as it streams.
    let (tx, rx) = mpsc::channel();
    let stdout = cli.child().stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let done = line.starts_with("state: ");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(e) => panic!("no table from --foreground ({e}): {seen:?}"),
        }
    }
    let nodes = d.node_pids();
    assert_eq!(nodes.len(), 2, "{seen:?}");
    let sup = d.supervisor_pid().expect("supervisor running");

    support::kill_pid(cli.id(), Signal::SIGINT);
    let status = cli.wait_deadline(Duration::from_secs(60)).expect("the CLI exits after SIGINT");
    let err = stderr.join().unwrap();
    assert!(status.success(), "{status}\n{err}");
    for (name, pid, _) in &nodes {
        assert!(!pid_alive(*pid), "{name} (pid {pid}) survived\n{err}");
    }
    assert!(!pid_alive(sup), "the supervisor (pid {sup}) survived\n{err}");
}
