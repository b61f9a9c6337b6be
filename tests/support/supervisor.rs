//! Running the real `dwbase-supervisor` binary against a [`super::dwbase::Deployment`] root
//! and talking to it with the protocol client (no CLI involved).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dwbase_proto::{
    Client, ClientError, DeployOptions, DevnetSpec, NodeStatus, Request, Response, RestartPolicy,
    StatusReport,
};

use super::dwbase::Deployment;
use super::{poll_until, ChildGuard};

/// The `dwbase-supervisor` binary under test.
pub fn supervisor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwbase-supervisor"))
}

/// `dwbase-supervisor run --root <root> ARGS` with stdio to /dev/null (as the CLI starts it).
pub fn supervisor_cmd(d: &Deployment, args: &[&str]) -> Command {
    let mut cmd = Command::new(supervisor_bin());
    for k in ["DWBASE_DATA_DIR", "DWBASE_NODE_BIN", "DWBASE_LISTEN", "NOTIFY_SOCKET"] {
        cmd.env_remove(k);
    }
    cmd.arg("run").arg("--root").arg(&d.root).args(args).current_dir(d.dir.path());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Starts the supervisor and waits until its socket answers.
pub fn start_supervisor(d: &Deployment, args: &[&str]) -> ChildGuard {
    let child = supervisor_cmd(d, args).spawn().expect("spawning dwbase-supervisor");
    let guard = ChildGuard::new(child);
    let socket = d.paths().socket();
    poll_until("the supervisor socket", Duration::from_secs(20), || {
        matches!(request(&socket, &Request::Ping), Ok(Response::Pong(_))).then_some(())
    });
    guard
}

/// One request on a fresh connection.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(socket).await?;
        c.request_with_timeout(req, Duration::from_secs(120)).await
    })
}

/// The status report (panics on anything else).
pub fn status(d: &Deployment) -> StatusReport {
    match request(&d.paths().socket(), &Request::Status) {
        Ok(Response::Status(s)) => s,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// One node's status.
pub fn node(d: &Deployment, name: &str) -> NodeStatus {
    status(d).nodes.into_iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no {name}"))
}

/// A devnet spec (no swarm, 3 s stop timeout).
pub fn devnet_spec(nodes: u32, base_port: u16) -> DevnetSpec {
    DevnetSpec {
        nodes,
        base_port,
        swarm: false,
        tls: false,
        template: None,
        restart_policy: RestartPolicy::Always,
        env: vec![],
        stop_timeout_ms: 3000,
        liveness: None,
        options: DeployOptions { ready_timeout_ms: 60_000, ..DeployOptions::default() },
    }
}

/// Sends a deploy and reads its stream to the end: the final frame (`Deployed`, `Done` for a
/// dry run, or `Error`).
pub fn deploy(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(socket).await?;
        c.send(req).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(180), c.recv()).await {
                Err(_) => return Err(ClientError::Timeout(Duration::from_secs(180))),
                Ok(Ok(Response::Plan(_) | Response::Event(_))) => {}
                Ok(other) => return other,
            }
        }
    })
}

/// Deploys a devnet and waits until every node is ready.
pub fn deploy_ready(d: &Deployment, spec: DevnetSpec) -> Vec<NodeStatus> {
    let n = spec.nodes as usize;
    match deploy(&d.paths().socket(), &Request::DeployDevnet(spec)) {
        Ok(Response::Deployed(_)) => {}
        other => panic!("deploy: {other:?}"),
    }
    poll_until("every node ready", Duration::from_secs(60), || {
        let s = status(d);
        (s.nodes.len() == n && s.nodes.iter().all(|n| n.ready)).then_some(s.nodes)
    })
}
