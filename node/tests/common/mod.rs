//! In-process test fixture: a node served on `127.0.0.1:0` over a temp data dir.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::time::{Duration, Instant};

use dwbase_node::{Config, Node};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node running in this process.
pub struct TestNode {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client without proxies.
    pub client: reqwest::Client,
    /// The config it runs with.
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config for tests: loopback, any port, generous limits, data under `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.node.id = "test".into();
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.node.data_dir = dir.join("data");
    c.node.log_dir = dir.join("logs");
    c.node.summaries_dir = dir.join("summaries");
    c.node.security.remember_per_sec = 0.0;
    c.node.security.ask_per_min = 0.0;
    c
}

impl TestNode {
    /// Opens and serves a node with `config`, and waits until `/readyz` answers 200.
    pub async fn start(config: Config) -> TestNode {
        let node = TestNode::start_unready(config).await;
        node.wait_ready().await;
        node
    }

    /// Opens and serves a node without waiting for readiness.
    pub async fn start_unready(config: Config) -> TestNode {
        let listener = tokio::net::TcpListener::bind(config.node.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Node::open(config.clone()).expect("open node");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dwbase_node::serve(listener, node, async move {
            let _ = rx.await;
        }));
        TestNode {
            url: format!("http://{addr}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            config,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Polls `/readyz` until 200 (10 s deadline).
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url);
        let client = self.client.clone();
        poll_until(Duration::from_secs(10), "node ready", || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.map(|r| r.status() == 200).unwrap_or(false) }
        })
        .await;
    }

    /// Signals shutdown and waits for `serve` to return (its result).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner().await
    }

    async fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("serve returns within 15 s of shutdown")
                .expect("serve task does not panic"),
            None => Ok(()),
        }
    }

    /// Full URL of a path.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// POST JSON, returning status, headers and the JSON body (Null when not JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self.client.post(self.at(path)).json(body).send().await.unwrap();
        split(resp).await
    }

    /// GET, returning status, headers and the JSON body (Null when not JSON).
    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self.client.get(self.at(path)).send().await.unwrap();
        split(resp).await
    }

    /// Remembers an atom and returns its id (panics unless 200).
    pub async fn remember(&self, world: &str, text: &str, importance: f64) -> String {
        let (status, _, body) = self.post("/remember", &atom(world, text, importance)).await;
        assert_eq!(status, 200, "{body}");
        body.as_str().expect("id is a bare JSON string").to_owned()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Splits a response into status, headers and JSON body.
pub async fn split(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

/// A NewAtom body.
pub fn atom(world: &str, text: &str, importance: f64) -> Value {
    json!({
        "world": world,
        "worker": "agent-a",
        "kind": "observation",
        "timestamp": "",
        "importance": importance,
        "payload_json": json!({ "text": text }).to_string(),
        "vector": null,
        "flags": [],
        "labels": [],
        "links": []
    })
}

/// Polls `check` until it returns true, panicking with `what` after `deadline`.
pub async fn poll_until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}
