//! The CLI without a (usable) supervisor: with `--no-start`, status, logs and stop from
//! state.json after the supervisor is `kill -9`ed (stop by signal, holding the root lock); a
//! stale socket that must not block a start, a file of someone else's that is refused; and a
//! supervisor of another protocol version, which gets a message saying how to restart it.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use dwbase_proto::state::Desired;
use dwbase_proto::Group;
use support::dwbase::Deployment;
use support::{free_port_range, pid_alive, poll_until};

fn up(d: &Deployment, nodes: u16) {
    let base = free_port_range(nodes).to_string();
    d.run(&["deploy", "devnet", "--nodes", &nodes.to_string(), "--base-port", &base]).ok();
}

#[cfg(unix)]
#[test]
fn status_logs_and_stop_after_the_supervisor_is_killed() {
    use nix::sys::signal::Signal;
    let d = Deployment::new();
    up(&d, 2);
    let sup = d.supervisor_pid().expect("supervisor pid recorded");
    let nodes = d.node_pids();
    assert_eq!(nodes.len(), 2);
    support::kill_pid(sup, Signal::SIGKILL);
    poll_until("the supervisor to die", Duration::from_secs(10), || {
        (!pid_alive(sup)).then_some(())
    });

    let st = d.run(&["--no-start", "deploy", "status"]).code_is(3);
    let state_file = d.paths().state_file(Group::Devnet);
    assert!(
        st.stdout
            .contains(&format!("supervisor: not running (state from {}", state_file.display())),
        "{st}"
    );
    for (name, pid, _) in &nodes {
        let row = st.stdout.lines().find(|l| l.starts_with(name.as_str())).expect(name);
        assert!(row.contains(" alive ") && row.contains(&pid.to_string()), "{st}");
    }
    let js = d.run(&["deploy", "status", "--json", "--no-start"]).code_is(3);
    let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    assert_eq!(v["supervisor"]["running"], false);
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["state"] == "alive"), "{js}");

    // Logs straight from the files.
    let logs = d.run(&["--no-start", "deploy", "logs", "node-a", "--tail", "5"]).ok();
    assert!(!logs.stdout.is_empty(), "{logs}");
    assert!(!logs.stdout.contains("node-a |"), "one node: no prefix\n{logs}");

    let stop = d.run(&["--no-start", "deploy", "stop", "--timeout", "5s"]).ok();
    assert!(stop.stdout.contains("stopped node-a, node-b"), "{stop}");
    assert!(d.supervisor_pid().is_none(), "--no-start started a supervisor");
    for (name, pid, _) in &nodes {
        assert!(!pid_alive(*pid), "{name} (pid {pid}) survived\n{stop}");
    }
    let state = d.state(Group::Devnet).unwrap();
    assert!(state.nodes.iter().all(|n| n.desired == Desired::Stopped && n.pid.is_none()));
    // Nothing should run: plain commands start no supervisor either.
    let st = d.run(&["deploy", "status"]).code_is(3);
    assert_eq!(st.stdout.matches(" stopped ").count(), 2, "{st}");
    let again = d.run(&["deploy", "stop"]).ok();
    assert!(again.stdout.contains("nothing to stop"), "{again}");
}

fn prepare_root(d: &Deployment) {
    std::fs::create_dir_all(&d.root).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn a_file_that_is_not_a_socket_at_the_socket_path_is_refused_and_left_alone() {
    let d = Deployment::new();
    prepare_root(&d);
    std::fs::write(d.paths().socket(), "not a socket").unwrap();
    let base = free_port_range(1).to_string();
    let out = d.run(&["deploy", "devnet", "--nodes", "1", "--base-port", &base]).code_is(1);
    assert!(out.stderr.contains("not a socket"), "{out}");
    assert!(out.stderr.contains(&d.paths().socket().display().to_string()), "{out}");
    assert_eq!(std::fs::read_to_string(d.paths().socket()).unwrap(), "not a socket");
    std::fs::remove_file(d.paths().socket()).unwrap();
    up(&d, 1);
    d.run(&["deploy", "stop"]).ok();
}

#[cfg(unix)]
#[test]
fn a_dead_socket_does_not_block_a_start() {
    let d = Deployment::new();
    prepare_root(&d);
    // Bound, then closed: the file stays, nobody listens (what a crashed supervisor leaves).
    drop(std::os::unix::net::UnixListener::bind(d.paths().socket()).unwrap());
    assert!(d.paths().socket().exists());
    up(&d, 1);
    d.run(&["deploy", "stop"]).ok();
}

/// A fake supervisor speaking protocol 99: answers every handshake with its own hello.
#[cfg(unix)]
fn fake_future_supervisor(path: &std::path::Path) {
    use dwbase_proto::codec::Hello;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut hello).is_err() {
                    return;
                }
                let ours = Hello { protocol_version: 99, build_version: "9.9.9".into() }.to_bytes();
                let _ = s.write_all(&(ours.len() as u32).to_be_bytes());
                let _ = s.write_all(&ours);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
        }
    });
}

#[cfg(unix)]
#[test]
fn a_supervisor_of_another_protocol_gets_restart_advice() {
    let d = Deployment::new();
    prepare_root(&d);
    fake_future_supervisor(&d.paths().socket());

    let st = d.run(&["deploy", "status"]).code_is(1);
    assert!(st.stderr.contains("v99") && st.stderr.contains("9.9.9"), "{st}");
    assert!(st.stderr.contains("dwbase supervisor restart"), "{st}");

    let base = free_port_range(1).to_string();
    let dep = d.run(&["deploy", "devnet", "--nodes", "1", "--base-port", &base]).code_is(1);
    assert!(dep.stderr.contains("dwbase supervisor restart"), "{dep}");
    assert!(d.state(Group::Devnet).is_none(), "nothing may be deployed\n{dep}");
}

#[test]
fn a_corrupt_state_file_is_reported_loudly_and_moved_aside_by_its_owner() {
    let d = Deployment::new();
    let state = d.paths().state_file(Group::Devnet);
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, "{\"nodes\": [ this is not json").unwrap();
    // A reader says so and changes nothing.
    let st = d.run(&["deploy", "status"]).code_is(3);
    assert!(st.stderr.contains("WARNING") && st.stderr.contains("unreadable"), "{st}");
    assert!(st.stderr.contains(&state.display().to_string()), "{st}");
    assert!(state.exists(), "a reader moved the file\n{st}");
    // The owner (a supervisor starting for this root) moves it aside, and says where.
    let started = d.run(&["supervisor", "restart"]).ok();
    let moved: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{started}");
    assert!(started.stderr.contains("corrupt"), "the move is not reported\n{started}");
}
