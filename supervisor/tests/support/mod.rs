//! In-process fixture: a supervisor from `dwbase_supervisor::run` on a tempdir root, fake
//! node programs (tiny shell scripts), a connected client, polling with a deadline, and a
//! guard that kills every node process it saw (by process group) and stops the supervisor.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use dwbase_proto::state::{Loaded, StateFile};
use dwbase_proto::{
    Client, DeployOptions, DevnetSpec, Done, ErrorKind, Event, Group, NodeStatus, Paths, Plan,
    Request, Response, RestartPolicy, StatusReport, Template,
};
use dwbase_supervisor::{Invocation, RestartRules, RunOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use dwbase_testkit::{free_port_range as free_ports, pid_alive, script};

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what` after `deadline`.
pub use dwbase_testkit::poll_until_async as poll_until;

/// A fake node that runs until killed (never ready: it serves no HTTP).
pub const SLEEPER: &str = "echo \"node $DWBASE_NODE_ID up\"\nexec sleep 1000";

/// A fake node that fails at once.
pub const CRASHER: &str = "echo \"fatal: boom on $DWBASE_NODE_ID\" >&2\nexit 3";

/// A fake node that ignores SIGTERM.
pub const STUBBORN: &str = "trap '' TERM\necho stubborn\nwhile true; do sleep 0.05; done";

/// Shrunk rules so tests do not wait for real backoffs.
pub fn quick_rules() -> RestartRules {
    RestartRules {
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        crash_max_exits: 10_000,
        ..RestartRules::default()
    }
}

/// A supervisor running in this process.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
    pub shutdown: CancellationToken,
    pub leave_running: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
    pub opts: RunOptions,
}

impl Fixture {
    /// A root in a fresh tempdir with `node_body` as the node program.
    pub async fn start(node_body: &str, rules: RestartRules) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = script(dir.path(), "fake-node.sh", node_body);
        let root = dir.path().join("root");
        let mut opts = RunOptions::new(&root, Invocation::new(node));
        opts.rules = rules;
        let paths = Paths::new(&root).unwrap();
        let mut f = Self {
            dir,
            paths,
            shutdown: CancellationToken::new(),
            leave_running: CancellationToken::new(),
            task: None,
            opts,
        };
        f.launch().await;
        f
    }

    /// Starts (again) a supervisor on the same root.
    pub async fn launch(&mut self) {
        self.shutdown = CancellationToken::new();
        self.leave_running = CancellationToken::new();
        let mut opts = self.opts.clone();
        opts.leave_running = self.leave_running.clone();
        self.task = Some(tokio::spawn(dwbase_supervisor::run(opts, self.shutdown.clone())));
        let socket = self.paths.socket();
        poll_until("the supervisor socket", Duration::from_secs(10), || {
            let socket = socket.clone();
            async move { Client::connect(&socket).await.ok().map(|_| ()) }
        })
        .await;
    }

    /// Waits for the supervisor task to end.
    pub async fn join(&mut self) -> anyhow::Result<()> {
        let t = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), t).await.expect("supervisor exits").unwrap()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.paths.socket()).await.unwrap()
    }

    pub async fn request(&self, req: Request) -> Response {
        self.client().await.request(&req).await.unwrap()
    }

    pub async fn status(&self) -> StatusReport {
        match self.request(Request::Status).await {
            Response::Status(s) => s,
            other => panic!("expected status, got {other:?}"),
        }
    }

    pub async fn node(&self, name: &str) -> NodeStatus {
        self.status().await.nodes.into_iter().find(|n| n.name == name).expect(name)
    }

    /// Sends a deploy request and reads its stream to the end.
    pub async fn deploy_request(&self, req: Request) -> DeployStream {
        let mut c = self.client().await;
        c.send(&req).await.unwrap();
        read_deploy(&mut c).await
    }

    /// Deploys `nodes` fake nodes (on free ports) and reads the deploy to its end: the fake
    /// nodes never become ready, so it ends with `RolloutFailed` once they are all spawned.
    pub async fn deploy(&self, nodes: u32, policy: RestartPolicy) -> DeployStream {
        let spec = devnet(nodes, free_ports(nodes as u16), policy);
        let out = self.deploy_request(Request::DeployDevnet(spec)).await;
        assert!(out.plan.is_some(), "the deploy was refused: {:?}", out.last);
        out
    }

    pub fn state(&self, group: Group) -> Option<StateFile> {
        match StateFile::load(&self.paths.state_file(group)).unwrap() {
            Loaded::Ok(s) => Some(s),
            _ => None,
        }
    }
}

/// A devnet spec with a short stop timeout, no swarm, and a short ready timeout (the fake
/// nodes never answer HTTP, so a deploy of them ends with `RolloutFailed` after it).
pub fn devnet(nodes: u32, base_port: u16, policy: RestartPolicy) -> DevnetSpec {
    DevnetSpec {
        nodes,
        base_port,
        swarm: false,
        tls: false,
        template: None,
        restart_policy: policy,
        env: vec![("FAKE_NODE_EXTRA".into(), "1".into())],
        stop_timeout_ms: 500,
        liveness: None,
        options: DeployOptions { ready_timeout_ms: 300, ..DeployOptions::default() },
    }
}

/// A template for a spec, read from a file.
pub fn template(path: &std::path::Path) -> Template {
    Template { path: path.to_path_buf(), text: std::fs::read_to_string(path).unwrap() }
}

/// What a deploy stream said.
#[derive(Debug)]
pub struct DeployStream {
    /// The plan (absent when the spec was refused outright).
    pub plan: Option<Plan>,
    /// The events on the way.
    pub events: Vec<Event>,
    /// The last frame: `Deployed`, `Done` (dry run) or `Error`.
    pub last: Response,
}

impl DeployStream {
    /// The error kind of the last frame (panics if it is not an error).
    pub fn error_kind(&self) -> ErrorKind {
        match &self.last {
            Response::Error(e) => e.kind,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// Reads a deploy's frames until its last one.
pub async fn read_deploy(c: &mut Client) -> DeployStream {
    let mut out = DeployStream {
        plan: None,
        events: vec![],
        last: Response::Done(Done { message: String::new() }),
    };
    loop {
        let r = tokio::time::timeout(Duration::from_secs(120), c.recv())
            .await
            .expect("deploy stream frame")
            .expect("deploy stream");
        match r {
            Response::Plan(p) => out.plan = Some(p),
            Response::Event(e) => out.events.push(e),
            other => {
                out.last = other;
                return out;
            }
        }
    }
}

/// SIGKILL to one process.
pub fn kill9(pid: u32) {
    dwbase_testkit::kill_pid(pid, dwbase_testkit::Signal::SIGKILL);
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Kill every recorded node's process group; the supervisor may already be gone.
        for group in [Group::Devnet, Group::Local] {
            if let Some(state) = self.state(group) {
                for n in state.nodes {
                    if let Some(pid) = n.pid {
                        let id = dwbase_testkit::ProcessId { pid, start_time: n.start_time };
                        drop(dwbase_testkit::GroupGuard(vec![id]));
                    }
                }
            }
        }
    }
}
