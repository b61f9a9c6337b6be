//! TLS through the real binaries and the real curl: a node with `[node.tls]` (certificates
//! made here with rcgen) answers `curl --cacert`, refuses plain HTTP on its port, requires a
//! client certificate when `client_ca_file` is set, shows `tls: on|off` in `/health`; bad files
//! are start-up errors naming the file; two nodes swarm over https (with mTLS); a certificate
//! rotated on SIGHUP takes effect while a client keeps requesting, without a failed request;
//! the `dwbase` CLI speaks HTTPS with --cacert, --cert and --key.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use support::dwbase::Deployment;
use support::node::{start_node_env, write_config, NodeProcess, Started};
use support::{kill_pid, poll_until, run_with_deadline, Output};

const KEY: &str = "tls-test-key-0123456789abcdef";

/// A throwaway certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes `dir/<name>.crt` (the CA certificate).
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.crt"));
        std::fs::write(&p, self.issuer.pem()).unwrap();
        p
    }

    /// A leaf for localhost and 127.0.0.1 (server and client use): PEM certificate and key.
    fn leaf(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf as `dir/<name>.crt` and `dir/<name>.key`.
    fn write_leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(name);
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

fn tls_section(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut s = format!("[node.tls]\ncert_file = {:?}\nkey_file = {:?}\n", cert, key);
    if let Some(ca) = client_ca {
        s.push_str(&format!("client_ca_file = {ca:?}\n"));
    }
    s
}

/// `curl -sS` with `args`; returns the output (never panics on curl's failure).
fn curl(args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]).args(args);
    run_with_deadline(&mut cmd, Duration::from_secs(30))
}

/// (HTTP status, body) of a curl that completed an exchange.
fn curl_ok(args: &[&str]) -> (u16, String) {
    let out = curl(args);
    assert!(out.status.success(), "curl {args:?} failed:\n{out}");
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

fn atom(payload: &str) -> String {
    serde_json::json!({
        "world": "swarm", "worker": "tls-test", "kind": "observation",
        "importance": 0.5, "payload_json": payload, "labels": []
    })
    .to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `GET /readyz` over https until 200.
fn wait_ready_tls(node: &NodeProcess, ca: &Path, extra: &[&str]) {
    let url = format!("https://{}/readyz", node.addr);
    poll_until("node /readyz 200 over https", Duration::from_secs(30), || {
        let mut args = vec!["--cacert", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = curl(&args);
        (out.status.success() && out.stdout.ends_with("\n200")).then_some(())
    });
}

fn stop(mut node: NodeProcess) -> String {
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = node.wait_exit(Duration::from_secs(30)).expect("node exits on SIGTERM");
    assert!(status.success(), "{status}: {stderr}");
    stderr
}

#[test]
fn https_with_cacert_refuses_plain_http_and_reports_tls_in_health() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("dwbase test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.write_leaf(dir.path(), "node");
    let config = write_config(dir.path(), "tls", "127.0.0.1:0", &tls_section(&cert, &key, None));
    let node = NodeProcess::start(&config, &[]);
    wait_ready_tls(&node, &ca_file, &[]);
    let cacert = ca_file.to_str().unwrap();

    let (status, body) = curl_ok(&["--cacert", cacert, &format!("https://{}/health", node.addr)]);
    assert_eq!(status, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["tls"], "on", "{health}");
    assert_eq!(health["checks"]["tls"]["status"], "ok", "{health}");
    assert_eq!(health["checks"]["tls"]["client_auth"], false, "{health}");
    // The name works too (the certificate lists localhost).
    let port = node.addr.rsplit_once(':').unwrap().1;
    let (status, _) = curl_ok(&["--cacert", cacert, &format!("https://localhost:{port}/healthz")]);
    assert_eq!(status, 200);

    // Without the CA, curl does not trust the node (exit 60: peer certificate cannot be
    // authenticated).
    let out = curl(&[&format!("https://{}/health", node.addr)]);
    assert_eq!(out.code(), 60, "{out}");

    // Plain HTTP on the TLS port: not served; a 400 says to use https.
    let (status, body) = curl_ok(&[&format!("http://{}/health", node.addr)]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"], "tls_required", "{body}");
    assert!(!body.contains("disk_usage"), "the health report leaked over plain HTTP: {body}");

    let stderr = stop(node);
    assert!(!stderr.contains("clear text"), "{stderr}");

    // The same node folder without TLS: /health says off.
    let plain = write_config(dir.path(), "tls", "127.0.0.1:0", "");
    let node = NodeProcess::start(&plain, &[]);
    node.wait_ready(Duration::from_secs(30));
    let (status, body) = node.call("GET", "/health", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["tls"], "off", "{body}");
    assert!(json(&body)["checks"].get("tls").is_none(), "{body}");
    stop(node);
}

#[test]
fn env_overrides_and_the_clear_text_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("env CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.write_leaf(dir.path(), "node");
    let extra = format!("api_key = \"{KEY}\"\n");
    // Non-loopback listen without TLS: starts, warns, /health says off.
    let config = write_config(dir.path(), "lan", "0.0.0.0:0", &extra);
    let node = NodeProcess::start(&config, &[]);
    let port = node.addr.rsplit_once(':').unwrap().1.to_owned();
    let local = format!("127.0.0.1:{port}");
    poll_until("the node answers on loopback", Duration::from_secs(30), || {
        support::node::try_http("GET", &local, "/healthz", None).ok().filter(|(s, _)| *s == 200)
    });
    let (_, body) = curl_ok(&[
        "-H",
        &format!("authorization: Bearer {KEY}"),
        &format!("http://{local}/health"),
    ]);
    assert_eq!(json(&body)["tls"], "off", "{body}");
    let stderr = stop(node);
    assert!(stderr.contains("clear text") && stderr.contains("DWBASE_TLS_CERT"), "{stderr}");

    // The same config with DWBASE_TLS_CERT / DWBASE_TLS_KEY: HTTPS, no warning.
    let env =
        [("DWBASE_TLS_CERT", cert.to_str().unwrap()), ("DWBASE_TLS_KEY", key.to_str().unwrap())];
    let node = NodeProcess::start_env(&config, &[], &env);
    let port = node.addr.rsplit_once(':').unwrap().1.to_owned();
    let url = format!("https://127.0.0.1:{port}/health");
    let cacert = ca_file.to_str().unwrap();
    let (status, body) = poll_until("https /health", Duration::from_secs(30), || {
        let out = curl(&["--cacert", cacert, "-H", &format!("authorization: Bearer {KEY}"), &url]);
        out.status.success().then(|| {
            let (b, c) = out.stdout.rsplit_once('\n').unwrap();
            (c.trim().parse::<u16>().unwrap(), b.to_owned())
        })
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["tls"], "on", "{body}");
    let stderr = stop(node);
    assert!(!stderr.contains("clear text"), "{stderr}");

    // Only one of the pair: a configuration error naming the missing one.
    let env = [("DWBASE_TLS_CERT", cert.to_str().unwrap())];
    match start_node_env(&config, &[], &env, Duration::from_secs(30)) {
        Started::Listening(n) => panic!("started on {} with half a TLS pair", n.addr),
        Started::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("DWBASE_TLS_CERT") && stderr.contains("key_file"), "{stderr}");
        }
    }
}

#[test]
fn unreadable_or_mismatched_files_are_start_up_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bad files CA");
    let (cert, key) = ca.write_leaf(dir.path(), "good");
    let (_, other_key) = ca.write_leaf(dir.path(), "other");
    let missing = dir.path().join("nowhere.key");
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cases: [(&Path, &Path, &str); 3] = [
        (&cert, &missing, "nowhere.key"),
        (&cert, &other_key, "other.key"),
        (&garbage, &key, "garbage.crt"),
    ];
    for (c, k, named) in cases {
        let config = write_config(dir.path(), "bad", "127.0.0.1:0", &tls_section(c, k, None));
        match start_node_env(&config, &[], &[], Duration::from_secs(30)) {
            Started::Listening(n) => panic!("started on {} with {named}", n.addr),
            Started::Exited(status, stderr) => {
                assert_eq!(status.code(), Some(2), "{named}: {stderr}");
                assert!(stderr.contains(named), "{named} not named: {stderr}");
            }
        }
    }
}

#[test]
fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let ca_file = server_ca.write(dir.path(), "server-ca");
    let client_ca_file = client_ca.write(dir.path(), "client-ca");
    let (cert, key) = server_ca.write_leaf(dir.path(), "node");
    let (ccert, ckey) = client_ca.write_leaf(dir.path(), "client");
    let (scert, skey) = stranger_ca.write_leaf(dir.path(), "stranger");
    let config = write_config(
        dir.path(),
        "mtls",
        "127.0.0.1:0",
        &tls_section(&cert, &key, Some(&client_ca_file)),
    );
    let node = NodeProcess::start(&config, &[]);
    let (cacert, ccert, ckey) =
        (ca_file.to_str().unwrap(), ccert.to_str().unwrap(), ckey.to_str().unwrap());
    wait_ready_tls(&node, &ca_file, &["--cert", ccert, "--key", ckey]);
    let url = format!("https://{}/health", node.addr);

    let (status, body) = curl_ok(&["--cacert", cacert, "--cert", ccert, "--key", ckey, &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["checks"]["tls"]["client_auth"], true, "{body}");
    // No client certificate, or one the node's client CA did not sign: no answer.
    let out = curl(&["--cacert", cacert, &url]);
    assert!(!out.status.success(), "served without a client certificate:\n{out}");
    let out = curl(&[
        "--cacert",
        cacert,
        "--cert",
        scert.to_str().unwrap(),
        "--key",
        skey.to_str().unwrap(),
        &url,
    ]);
    assert!(!out.status.success(), "served a stranger's certificate:\n{out}");

    // The CLI with --cacert/--cert/--key (and DWBASE_CACERT), and without the client cert.
    let d = Deployment::new();
    let api = format!("https://{}", node.addr);
    let out =
        d.run(&["list-worlds", "--api", &api, "--cacert", cacert, "--cert", ccert, "--key", ckey]);
    assert!(out.status.success(), "{out}");
    let out = d
        .cmd(&["remember", "ops", "over mutual TLS", "--api", &api, "--cert", ccert, "--key", ckey])
        .env("DWBASE_CACERT", cacert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = d.run(&["--cacert", cacert, "list-worlds", "--api", &api, "--json"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("client certificate"), "{out}");
    stop(node);
}

#[test]
fn cli_speaks_https_and_says_what_to_do_without_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cli CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.write_leaf(dir.path(), "node");
    let config = write_config(dir.path(), "cli", "127.0.0.1:0", &tls_section(&cert, &key, None));
    let node = NodeProcess::start(&config, &[]);
    wait_ready_tls(&node, &ca_file, &[]);
    let d = Deployment::new();
    let api = format!("https://{}", node.addr);
    let cacert = ca_file.to_str().unwrap();

    let id =
        d.run(&["remember", "notes", "kept over https", "--api", &api, "--cacert", cacert]).ok();
    let id = id.stdout.trim().to_owned();
    let out = d.run(&["inspect", &id, "--api", &api, "--cacert", cacert, "--json"]).ok();
    assert!(out.stdout.contains("kept over https"), "{out}");
    // A backup through the API over https.
    let backup = dir.path().join("b.tzst");
    let out = d.run(&[
        "backup",
        "create",
        "--api",
        &api,
        "--cacert",
        cacert,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out}");
    assert!(backup.is_file());

    let out = d.run(&["list-worlds", "--api", &api]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("--cacert"), "{out}");
    let out = d.run(&["list-worlds", "--api", &format!("http://{}", node.addr)]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("tls_required") && out.stderr.contains("https://"), "{out}");
    let out = d.run(&["list-worlds", "--api", &api, "--cacert", key.to_str().unwrap()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("--cacert") && out.stderr.contains("node.key"), "{out}");
    stop(node);
}

#[test]
fn swarm_over_https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("swarm CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (bcert, bkey) = ca.write_leaf(dir.path(), "b");
    let (acert, akey) = ca.write_leaf(dir.path(), "a");
    // b serves https and requires client certificates from the same CA.
    let b_config =
        write_config(dir.path(), "b", "127.0.0.1:0", &tls_section(&bcert, &bkey, Some(&ca_file)));
    let b = NodeProcess::start(&b_config, &[]);
    let client = ["--cert", acert.to_str().unwrap(), "--key", akey.to_str().unwrap()];
    wait_ready_tls(&b, &ca_file, &client);
    // a pushes to b over https with its CA and a client certificate.
    let swarm = format!(
        "[node.swarm]\nenabled = true\npeers = [\"https://{}\"]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        b.addr, ca_file, acert, akey
    );
    let a_config = write_config(dir.path(), "a", "127.0.0.1:0", &swarm);
    let a = NodeProcess::start(&a_config, &[]);
    a.wait_ready(Duration::from_secs(30));
    let (status, body) = a.call("POST", "/remember", Some(&atom("crossed over tls")));
    assert!((200..300).contains(&status), "{status} {body}");
    let id: String = serde_json::from_str(&body).unwrap();
    let url = format!("https://{}/atoms/{id}", b.addr);
    let cacert = ca_file.to_str().unwrap();
    let got = poll_until("the atom reaches b over https", Duration::from_secs(30), || {
        let mut args = vec!["--cacert", cacert];
        args.extend_from_slice(&client);
        args.push(&url);
        let out = curl(&args);
        (out.status.success() && out.stdout.ends_with("\n200")).then_some(out.stdout)
    });
    assert!(got.contains("crossed over tls"), "{got}");

    // A peer with a CA that did not sign b's certificate: pushes fail verification (retried,
    // counted), the writer is not affected.
    let other = Ca::new("unrelated CA").write(dir.path(), "unrelated");
    let swarm = format!(
        "[node.swarm]\nenabled = true\npeers = [\"https://{}\"]\nca_file = {:?}\n",
        b.addr, other
    );
    let c_config = write_config(dir.path(), "c", "127.0.0.1:0", &swarm);
    let mut c = NodeProcess::start(&c_config, &[]);
    c.wait_ready(Duration::from_secs(30));
    let (status, _) = c.call("POST", "/remember", Some(&atom("never trusted")));
    assert!((200..300).contains(&status));
    poll_until("c counts a failed push", Duration::from_secs(30), || {
        let (_, m) = c.call("GET", "/metrics", None);
        m.lines()
            .any(|l| {
                l.starts_with("dwbase_swarm_pushes_total")
                    && l.contains("retry")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    });
    kill_pid(c.pid(), nix::sys::signal::Signal::SIGTERM);
    let (_, stderr) = c.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(stderr.to_ascii_lowercase().contains("certificate"), "{stderr}");
    stop(a);
    stop(b);
}

/// Writes a file as a Kubernetes secret update does: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_while_a_client_keeps_requesting() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    // The client trusts both CAs, as during a CA rollover.
    let bundle = dir.path().join("bundle.crt");
    std::fs::write(&bundle, format!("{}{}", old_ca.issuer.pem(), new_ca.issuer.pem())).unwrap();
    let (cert, key) = old_ca.write_leaf(dir.path(), "node");
    let old_der = std::fs::read(&cert).unwrap();
    let config = write_config(dir.path(), "rot", "127.0.0.1:0", &tls_section(&cert, &key, None));
    let node = NodeProcess::start(&config, &[]);
    wait_ready_tls(&node, &bundle, &[]);

    let ca_pem = std::fs::read(&bundle).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        // A fresh connection (and handshake) for every request, so each sees the certificate
        // in use at that moment.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for cert in reqwest::Certificate::from_pem_bundle(&ca_pem).unwrap() {
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().unwrap();
    let url = format!("https://{}/healthz", node.addr);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let issuers: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let served = Arc::new(AtomicU64::new(0));
    let old_pem = String::from_utf8(old_der).unwrap();
    let old_leaf = pem_der(&old_pem);
    let requester = {
        let (stop_flag, issuers, errors, served) =
            (stop_flag.clone(), issuers.clone(), errors.clone(), served.clone());
        tokio::spawn(async move {
            // Bounded: at most 20 000 requests or until told to stop.
            for _ in 0..20_000 {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        let der = resp
                            .extensions()
                            .get::<reqwest::tls::TlsInfo>()
                            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
                            .unwrap_or_default();
                        let which = if der == old_leaf { "old" } else { "new" };
                        let mut seen = issuers.lock().unwrap();
                        if seen.last().map(String::as_str) != Some(which) {
                            seen.push(which.to_owned());
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => errors.lock().unwrap().push(format!("status {}", resp.status())),
                    Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                }
            }
        })
    };
    let wait_served = |n: u64| {
        let served = served.clone();
        async move {
            support::poll_until_async("requests served", Duration::from_secs(30), || {
                let served = served.clone();
                async move { (served.load(Ordering::Relaxed) >= n).then_some(()) }
            })
            .await
        }
    };
    wait_served(20).await;

    // A broken renewal first: the node keeps the old certificate and says so in /health.
    replace(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n");
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGHUP);
    let health_url = format!("https://{}/health", node.addr);
    let b = bundle.to_str().unwrap().to_owned();
    let health = support::poll_until_async(
        "health shows the failed reload",
        Duration::from_secs(30),
        || {
            let (b, u) = (b.clone(), health_url.clone());
            async move {
                let out =
                    tokio::task::spawn_blocking(move || curl(&["--cacert", &b, &u])).await.unwrap();
                let body = out.stdout.rsplit_once('\n').map(|(b, _)| b.to_owned())?;
                let v: Value = serde_json::from_str(&body).ok()?;
                (v["checks"]["tls"]["status"] == "degraded").then_some(v)
            }
        },
    )
    .await;
    assert!(health["checks"]["tls"]["message"].as_str().unwrap().contains("node.key"), "{health}");
    let before = served.load(Ordering::Relaxed);
    wait_served(before + 20).await;

    // The real renewal: a new certificate from the new CA, then SIGHUP.
    let (new_cert, new_key) = new_ca.leaf("node");
    replace(&key, &new_key);
    replace(&cert, &new_cert);
    kill_pid(node.pid(), nix::sys::signal::Signal::SIGHUP);
    support::poll_until_async("the new certificate is served", Duration::from_secs(30), || {
        let issuers = issuers.clone();
        async move { (issuers.lock().unwrap().last().map(String::as_str) == Some("new")).then_some(()) }
    })
    .await;
    let before = served.load(Ordering::Relaxed);
    wait_served(before + 20).await;
    stop_flag.store(true, Ordering::Relaxed);
    requester.await.unwrap();

    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} failed requests during the rotation: {errors:?}", errors.len());
    assert_eq!(*issuers.lock().unwrap(), ["old", "new"]);
    let health = tokio::task::spawn_blocking({
        let (b, u) = (bundle.to_str().unwrap().to_owned(), format!("https://{}/health", node.addr));
        move || curl_ok(&["--cacert", &b, &u])
    })
    .await
    .unwrap();
    let health = json(&health.1);
    assert_eq!(health["checks"]["tls"]["status"], "ok", "{health}");
    assert_eq!(health["checks"]["tls"]["reloads"], 1, "{health}");
    let pid = node.pid();
    assert!(support::pid_alive(pid), "the node survived both reloads");
    let stderr = tokio::task::spawn_blocking(move || stop(node)).await.unwrap();
    assert!(stderr.contains("TLS certificate reloaded"), "{stderr}");
}

/// The DER bytes of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// `deploy devnet --tls`: the supervisor makes the CA and node certificates, the nodes serve
/// https and swarm over it, its probes see them ready over https (the deploy returns, a
/// killed node comes back), `status` shows the scheme, backups through `--node` find the CA,
/// the same spec again changes nothing, and without `--tls` the devnet goes back to http.
#[test]
fn deploy_devnet_tls_end_to_end() {
    let d = Deployment::new();
    let base = support::free_port_range(2);
    let deploy = |tls: bool| {
        let mut args = vec!["deploy", "devnet", "--stop-timeout", "3s", "--timeout", "60s"];
        let (nodes, port) = ("2".to_owned(), base.to_string());
        args.extend(["--nodes", &nodes, "--base-port", &port]);
        if tls {
            args.push("--tls");
        }
        d.run(&args)
    };
    let out = deploy(true).ok();
    let tls_dir = d.root.join("devnet").join("tls");
    let ca = tls_dir.join("ca.crt");
    assert!(out.stdout.contains(&format!("https: CA {}", ca.display())), "{out}");
    for f in ["ca.key", "node-a.key", "node-b.key"] {
        let mode = std::fs::metadata(tls_dir.join(f)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "{f}");
    }

    // `deploy status` exits 3 while a node is not ready: the document is on stdout either way.
    let status = |d: &Deployment| json(&d.run(&["deploy", "status", "--json"]).stdout);
    let doc = status(&d);
    let pids: Vec<u64> =
        doc["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    for (i, n) in doc["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["url"], format!("https://127.0.0.1:{}", base + i as u16), "{n}");
        assert_eq!(n["ready"], true, "{n}");
    }
    let table = d.run(&["deploy", "status"]).ok();
    assert!(table.stdout.contains("SCHEME") && table.stdout.contains("https"), "{table}");

    // The real curl with the devnet's CA; plain http on the port gets no answer to read.
    let cacert = ca.to_str().unwrap();
    let (a_url, b_url) =
        (format!("https://127.0.0.1:{base}"), format!("https://127.0.0.1:{}", base + 1));
    let (code, _) = curl_ok(&["--cacert", cacert, &format!("{a_url}/readyz")]);
    assert_eq!(code, 200);
    let (code, _) = curl_ok(&["--cacert", cacert, &format!("https://localhost:{base}/readyz")]);
    assert_eq!(code, 200, "the certificate names localhost too");
    let plain = curl(&[&format!("http://127.0.0.1:{base}/readyz")]);
    assert!(!plain.stdout.ends_with("\n200"), "plain http must not be served: {plain}");

    // Swarm across over https, verified against the devnet's CA.
    let (code, body) = curl_ok(&[
        "--cacert",
        cacert,
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        &atom("devnet over tls"),
        &format!("{a_url}/remember"),
    ]);
    assert!((200..300).contains(&code), "{code} {body}");
    let id: String = serde_json::from_str(&body).unwrap();
    let got = poll_until("the atom reaches node-b over https", Duration::from_secs(30), || {
        let out = curl(&["--cacert", cacert, &format!("{b_url}/atoms/{id}")]);
        (out.status.success() && out.stdout.ends_with("\n200")).then_some(out.stdout)
    });
    assert!(got.contains("devnet over tls"), "{got}");

    // The CLI finds the devnet's CA itself.
    let archive = d.dir.path().join("a.tzst");
    d.run(&["backup", "create", "--node", "node-a", "--out", archive.to_str().unwrap()]).ok();
    assert!(archive.is_file());

    // kill -9: the supervisor's https probes see the new process ready.
    kill_pid(pids[0] as u32, nix::sys::signal::Signal::SIGKILL);
    poll_until("node-a back and ready over https", Duration::from_secs(60), || {
        let doc = status(&d);
        let a = &doc["nodes"][0];
        (a["ready"] == true && a["pid"].as_u64() != Some(pids[0])).then_some(())
    });

    // The same spec again: nothing changes, the certificates stay.
    let cert_a = std::fs::read(tls_dir.join("node-a.crt")).unwrap();
    let ca_bytes = std::fs::read(&ca).unwrap();
    let before = status(&d);
    deploy(true).ok();
    let after = status(&d);
    for i in 0..2 {
        assert_eq!(before["nodes"][i]["pid"], after["nodes"][i]["pid"], "a no-op keeps pids");
    }
    assert_eq!(std::fs::read(tls_dir.join("node-a.crt")).unwrap(), cert_a);
    assert_eq!(std::fs::read(&ca).unwrap(), ca_bytes);

    // Without --tls: replaced one at a time, back to plain http.
    deploy(false).ok();
    let doc = status(&d);
    for (i, n) in doc["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["url"], format!("http://127.0.0.1:{}", base + i as u16), "{n}");
        assert_eq!(n["ready"], true, "{n}");
    }
    let (code, _) = curl_ok(&[&format!("http://127.0.0.1:{base}/readyz")]);
    assert_eq!(code, 200);
    d.run(&["deploy", "stop"]).ok();
}
