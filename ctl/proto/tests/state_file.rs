//! state.json: every released format still loads, saves are atomic, corrupt files are moved
//! aside rather than dropped.

use std::path::Path;

use dwbase_proto::state::{Desired, Loaded, StateFile, STATE_VERSION};
use dwbase_proto::{ExitKind, Group, RestartPolicy};

fn load(path: &Path) -> StateFile {
    match StateFile::load(path).unwrap() {
        Loaded::Ok(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_original_tools_file_loads() {
    let s = load(Path::new("tests/fixtures/state-v0-original.json"));
    assert_eq!(s.version, 0);
    let n = &s.nodes[0];
    assert_eq!(
        (n.id.as_str(), n.name.as_str(), n.port, n.pid),
        ("node-1", "node-1", 7000, Some(4242))
    );
    assert_eq!(n.group, Group::Devnet);
    assert_eq!(n.desired, Desired::Running);
    assert_eq!(n.start_time, None, "no start time: such a pid can never be proven ours");
}

#[test]
fn version_1_loads_every_field() {
    let s = load(Path::new("tests/fixtures/state-v1.json"));
    assert_eq!(s.version, 1);
    assert_eq!(s.supervisor.as_ref().unwrap().start_time, Some(555));
    let n = &s.nodes[0];
    assert_eq!(n.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(n.restarts, 2);
    assert_eq!(n.last_exit.as_ref().unwrap().kind, ExitKind::Signal(9));
    assert_eq!(n.env, vec![("DWBASE_MAX_RAM_MB".to_string(), "64".to_string())]);
}

#[test]
fn save_then_load_round_trips_and_leaves_no_partial() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devnet/state.json");
    let mut s = load(Path::new("tests/fixtures/state-v1.json"));
    s.version = 0;
    s.save(&path).unwrap();
    let back = load(&path);
    assert_eq!(back.version, STATE_VERSION);
    assert_eq!(back.nodes, s.nodes);
    assert!(!path.with_extension("json.partial").exists());
}

#[test]
fn a_corrupt_file_is_moved_aside_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, b"{\"nodes\": [ truncated").unwrap();
    match StateFile::load(&path).unwrap() {
        Loaded::Corrupt { moved_to, reason } => {
            assert!(!path.exists());
            assert_eq!(std::fs::read(moved_to.unwrap()).unwrap(), b"{\"nodes\": [ truncated");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_newer_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, br#"{"version": 99, "nodes": []}"#).unwrap();
    let err = StateFile::load(&path).unwrap_err().to_string();
    assert!(err.contains("99") && err.contains("newer"), "{err}");
    assert!(path.exists(), "left in place for the newer dwbase");
}
