//! Grandchildren never survive: whatever a node leaves in its process group is swept
//! (SIGTERM, a short grace, SIGKILL) once its main process has exited — after a crash (while
//! the restart already runs: it does not wait for the sweep), after a stop before `Stop`
//! answers, and for an adopted node.
//!
//! The fake node starts a grandchild that ignores SIGTERM and records its pid, so only the
//! sweep's SIGKILL can end it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dwbase_proto::{ExitKind, Request, Response, RestartPolicy, StopSpec};
use support::*;

/// First run: leave a grandchild and exit 3 (a crash). Later runs: leave a grandchild and
/// keep running in the foreground. Every grandchild's pid is appended to `grandchildren`.
const LEAVES_GRANDCHILDREN: &str = r#"dir="$(dirname "$0")"
(trap '' TERM; exec sleep 1000) &
echo "$!" >> "$dir/grandchildren"
if [ ! -e "$dir/crashed-once" ]; then
  : > "$dir/crashed-once"
  echo "leaving a grandchild and crashing"
  exit 3
fi
echo "leaving a grandchild and running"
exec sleep 1000"#;

/// The pids recorded by the fake node so far.
fn grandchildren(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs, on drop, every recorded grandchild that is still a `sleep` (never a reused pid).
struct GrandchildGuard(PathBuf);

impl Drop for GrandchildGuard {
    fn drop(&mut self) {
        for pid in grandchildren(&self.0) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") {
                kill9(pid);
            }
        }
    }
}

async fn stop(f: &Fixture, node: &str) {
    let r = f
        .request(Request::Stop(StopSpec {
            nodes: vec![node.into()],
            group: None,
            timeout_ms: None,
        }))
        .await;
    assert!(matches!(r, Response::Done(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_are_swept_after_a_crash_and_after_a_stop() {
    let f = Fixture::start(LEAVES_GRANDCHILDREN, quick_rules()).await;
    let file = f.dir.path().join("grandchildren");
    let _guard = GrandchildGuard(file.clone());
    f.deploy(1, RestartPolicy::Always).await;

    // The first run crashed leaving grandchild #1; the restart runs and left grandchild #2.
    let n = poll_until("restarted after the crash", Duration::from_secs(20), || async {
        let n = f.node("node-a").await;
        (n.restarts == 1 && n.pid.is_some() && grandchildren(&file).len() == 2).then_some(n)
    })
    .await;
    assert_eq!(n.last_exit.as_ref().map(|e| e.kind), Some(ExitKind::Code(3)));
    let pids = grandchildren(&file);
    // The restart does not wait for the sweep: the crashed run's group is swept after it
    // (within the settle time, SIGTERM and the sweep grace).
    poll_until("the crashed run's grandchild swept", Duration::from_secs(10), || async {
        (!pid_alive(pids[0])).then_some(())
    })
    .await;
    assert!(pid_alive(pids[1]), "the running node's grandchild is left alone");

    // Stop answers only once the whole group is gone, grandchild #2 included (it ignores
    // the stop's SIGTERM, so only the sweep's SIGKILL ends it).
    stop(&f, "node-a").await;
    assert!(!pid_alive(n.pid.unwrap()), "the node itself is gone");
    assert!(!pid_alive(pids[1]), "the stopped node's grandchild {} survived", pids[1]);
    assert_eq!(grandchildren(&file).len(), 2, "no restart after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_nodes_grandchildren_are_swept_when_it_dies() {
    let mut f = Fixture::start(LEAVES_GRANDCHILDREN, quick_rules()).await;
    let file = f.dir.path().join("grandchildren");
    let _guard = GrandchildGuard(file.clone());
    // Skip the crash: every run keeps running.
    std::fs::write(f.dir.path().join("crashed-once"), "").unwrap();
    f.deploy(1, RestartPolicy::Always).await;
    let pid = poll_until("running", Duration::from_secs(10), || async {
        let pid = f.node("node-a").await.pid?;
        (grandchildren(&file).len() == 1).then_some(pid)
    })
    .await;

    // The next supervisor adopts it; then the node dies on its own.
    f.leave_running.cancel();
    f.join().await.unwrap();
    f.launch().await;
    assert_eq!(f.node("node-a").await.pid, Some(pid), "adopted, not respawned");
    kill9(pid);
    let n = poll_until("adopted node restarted", Duration::from_secs(20), || async {
        let n = f.node("node-a").await;
        (n.restarts == 1 && n.pid.is_some_and(|p| p != pid)).then_some(n)
    })
    .await;
    assert_eq!(n.last_exit.as_ref().map(|e| e.kind), Some(ExitKind::Unknown), "not our child");
    let first = grandchildren(&file)[0];
    poll_until("the adopted node's grandchild swept", Duration::from_secs(10), || async {
        (!pid_alive(first)).then_some(())
    })
    .await;
    stop(&f, "node-a").await;
    let left: Vec<(u32, String)> = grandchildren(&file)
        .into_iter()
        .filter(|p| pid_alive(*p))
        .map(|p| (p, std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default()))
        .collect();
    assert!(
        left.is_empty(),
        "grandchildren left after the stop: {left:?} (of {:?})",
        grandchildren(&file)
    );
}
