//! Adoption across a supervisor crash: kill -9 the supervisor, the nodes keep running (and
//! keep logging through their log pipes), a new supervisor adopts the same pids instead of
//! starting duplicates, and restarts an adopted node that dies.

mod support;

use std::time::Duration;

use dwbase_proto::Group;
use nix::sys::signal::Signal;
use support::dwbase::Deployment;
use support::supervisor::*;
use support::*;

#[test]
fn kill_9_the_supervisor_then_the_next_one_adopts_and_restarts() {
    let d = Deployment::new();
    let mut sup = start_supervisor(&d, &[]);
    let nodes = deploy_ready(&d, devnet_spec(2, free_port_range(2)));
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid.unwrap()).collect();

    kill_pid(sup.id(), Signal::SIGKILL);
    sup.wait_deadline(Duration::from_secs(10)).expect("supervisor gone");
    assert!(pids.iter().all(|p| pid_alive(*p)), "nodes outlive a crashed supervisor");
    // The crashed supervisor left its socket file; the next one probes it and takes over.
    let _sup2 = start_supervisor(&d, &[]);
    let s = status(&d);
    let adopted: Vec<u32> = s.nodes.iter().filter_map(|n| n.pid).collect();
    assert_eq!(adopted, pids, "same processes, no duplicates");
    assert!(s.nodes.iter().all(|n| n.restarts == 0));
    poll_until("adopted nodes ready", Duration::from_secs(20), || {
        status(&d).nodes.iter().all(|n| n.ready).then_some(())
    });
    let st = d.state(Group::Devnet).unwrap();
    assert_ne!(st.supervisor.as_ref().unwrap().pid, sup.id(), "the new supervisor recorded itself");

    // The log pipe of an adopted node still writes timestamped lines.
    let log = d.node_log(Group::Devnet, "node-a");
    assert!(log.lines().any(|l| l.len() > 24 && l.as_bytes()[23] == b'Z'), "{log}");

    // kill -9 an adopted node: it is restarted, the other one is left alone.
    kill_pid(pids[0], Signal::SIGKILL);
    let a = poll_until("node-a restarted and ready", Duration::from_secs(30), || {
        let n = node(&d, "node-a");
        (n.pid.is_some_and(|p| p != pids[0]) && n.ready).then_some(n)
    });
    assert_eq!(a.restarts, 1);
    assert_eq!(node(&d, "node-b").pid, Some(pids[1]));
}

#[test]
fn sigusr1_exits_leaving_nodes_for_the_next_supervisor() {
    let d = Deployment::new();
    let mut sup = start_supervisor(&d, &[]);
    let nodes = deploy_ready(&d, devnet_spec(1, free_port_range(1)));
    let pid = nodes[0].pid.unwrap();
    kill_pid(sup.id(), Signal::SIGUSR1);
    let st = sup.wait_deadline(Duration::from_secs(20)).expect("supervisor exits on SIGUSR1");
    assert!(st.success(), "{st}");
    assert!(pid_alive(pid));
    assert!(!d.paths().socket().exists(), "socket removed on a clean exit");
    assert!(!d.paths().pid_file().exists(), "pid file removed on a clean exit");
    let _sup2 = start_supervisor(&d, &[]);
    assert_eq!(node(&d, "node-a").pid, Some(pid));
}
