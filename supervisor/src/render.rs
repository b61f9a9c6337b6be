//! Rendering per-node config files from a template, validating them, and checking ports.
//!
//! A template is edited as a `toml::Table` (so every key we do not rewrite survives as the
//! operator wrote it) and written to the node's folder; then it is validated with the node's
//! own loader, so a bad template is refused before anything is spawned.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use dwbase_proto::paths::{LOCAL_NODE_ID, RESERVED_LOCAL_IDS};
use dwbase_proto::{
    DevnetSpec, ErrorKind, ErrorReply, Group, LivenessSpec, LocalSpec, Paths, Template,
};
use sha2::{Digest, Sha256};

/// The built-in devnet template.
pub const DEVNET_TEMPLATE: &str = include_str!("../../deploy/devnet.toml");
/// The built-in local template.
pub const LOCAL_TEMPLATE: &str = include_str!("../../deploy/local.toml");

/// One node's rendered config and where everything of it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedNode {
    /// node-a, … or the local node's id.
    pub name: String,
    /// The node id written into the config.
    pub id: String,
    /// Devnet or local.
    pub group: Group,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The node folder.
    pub dir: PathBuf,
    /// `<dir>/data`.
    pub data_dir: PathBuf,
    /// `<dir>/logs`.
    pub log_dir: PathBuf,
    /// `<dir>/summaries`.
    pub summaries_dir: PathBuf,
    /// `<dir>/config.toml`.
    pub config_path: PathBuf,
    /// `<dir>/logs/node.log`.
    pub log_path: PathBuf,
    /// The config text to write (a comment header, then [`RenderedNode::body`]).
    pub text: String,
    /// The TOML itself, without the header: what the fingerprint covers.
    pub body: String,
    /// The template's `[liveness]` table, if it had one (removed from the node's config: the
    /// node does not read it, the supervisor does).
    pub liveness: Option<LivenessSpec>,
    /// `deploy devnet --tls`: the folder of the devnet's CA and node certificates, which
    /// [`write_node`] makes sure hold this node's certificate.
    pub devnet_tls: Option<PathBuf>,
}

impl RenderedNode {
    /// The fingerprint of what a process of this node is started from: its config and the
    /// environment it gets. Two deploys with the same fingerprint need no restart.
    pub fn fingerprint(&self, env: &[(String, String)]) -> String {
        fingerprint(&self.body, env)
    }
}

/// sha256 over a config body and an environment (order-independent), hex.
pub fn fingerprint(body: &str, env: &[(String, String)]) -> String {
    let mut env: Vec<&(String, String)> = env.iter().collect();
    env.sort();
    let mut h = Sha256::new();
    h.update(body.as_bytes());
    for (k, v) in env {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The body of a rendered config file as written by [`write_node`] (header comments
/// dropped), for fingerprinting a node recorded by an older build.
pub fn body_of(text: &str) -> &str {
    let mut rest = text;
    while rest.starts_with('#') {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.trim_start_matches('\n')
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// node-a … node-z, node-aa, node-ab, … (bijective base 26).
pub fn node_name(i: usize) -> String {
    let mut n = i + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("node-{}", String::from_utf8(letters).expect("ascii"))
}

fn parse_template(text: &str, origin: &str) -> Result<toml::Table, ErrorReply> {
    text.parse::<toml::Table>()
        .map_err(|e| err(ErrorKind::BadConfig, format!("{origin}: not valid TOML: {e}")))
}

fn node_table<'a>(
    doc: &'a mut toml::Table,
    origin: &str,
) -> Result<&'a mut toml::Table, ErrorReply> {
    doc.entry("node")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| err(ErrorKind::BadConfig, format!("{origin}: `node` must be a table")))
}

fn sub_table<'a>(
    node: &'a mut toml::Table,
    key: &str,
    origin: &str,
) -> Result<&'a mut toml::Table, ErrorReply> {
    node.entry(key)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| err(ErrorKind::BadConfig, format!("{origin}: `node.{key}` must be a table")))
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

fn header(origin: &str) -> String {
    format!(
        "# Rendered by dwbase-supervisor from {origin}.\n# Rewritten on every deploy: edit the template, not this file.\n\n"
    )
}

fn read_template(template: &Option<Template>, builtin: &str, what: &str) -> (String, String) {
    match template {
        None => (builtin.to_owned(), format!("the built-in {what} template")),
        Some(t) => (t.text.clone(), t.path.display().to_string()),
    }
}

/// Takes the top-level `[liveness]` table out of a template: `period` and `timeout` as
/// durations ("5s", "500ms") or milliseconds, `failures` as a count; `period = 0` turns
/// liveness probing off. Unknown keys are an error naming the key.
fn take_liveness(doc: &mut toml::Table, origin: &str) -> Result<Option<LivenessSpec>, ErrorReply> {
    let Some(v) = doc.remove("liveness") else { return Ok(None) };
    let bad = |m: String| err(ErrorKind::BadConfig, format!("{origin}: [liveness] {m}"));
    let toml::Value::Table(t) = v else { return Err(bad("must be a table".into())) };
    let mut spec = LivenessSpec::DEFAULT;
    let ms = |key: &str, v: &toml::Value| -> Result<u64, ErrorReply> {
        match v {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            toml::Value::String(s) => humantime::parse_duration(s)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| bad(format!("{key} = {s:?}: {e} (e.g. \"5s\")"))),
            other => Err(bad(format!("{key} must be a duration like \"5s\", not {other}"))),
        }
    };
    for (key, v) in &t {
        match key.as_str() {
            "period" => spec.period_ms = ms(key, v)?,
            "timeout" => spec.timeout_ms = ms(key, v)?,
            "failures" => match v {
                toml::Value::Integer(n) if *n >= 1 => spec.failures = *n as u32,
                other => {
                    return Err(bad(format!("failures must be a whole number ≥ 1, not {other}")))
                }
            },
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (expected period, timeout, failures)"
                )))
            }
        }
    }
    if spec.enabled() && spec.timeout_ms >= spec.period_ms {
        return Err(bad(format!(
            "timeout ({} ms) must be shorter than period ({} ms)",
            spec.timeout_ms, spec.period_ms
        )));
    }
    Ok(Some(spec))
}

/// Renders every devnet node's config (nothing is written yet).
pub fn render_devnet(paths: &Paths, spec: &DevnetSpec) -> Result<Vec<RenderedNode>, ErrorReply> {
    if spec.nodes == 0 {
        return Err(err(ErrorKind::BadRequest, "a devnet needs at least one node (--nodes ≥ 1)"));
    }
    if spec.nodes > 1000 {
        return Err(err(ErrorKind::BadRequest, format!("{} nodes is more than 1000", spec.nodes)));
    }
    let n = spec.nodes as usize;
    let last = u32::from(spec.base_port) + spec.nodes - 1;
    if spec.base_port == 0 || last > u32::from(u16::MAX) {
        return Err(err(
            ErrorKind::BadRequest,
            format!(
                "ports {}..={last} do not fit: choose --base-port between 1 and {}",
                spec.base_port,
                u32::from(u16::MAX) + 1 - spec.nodes
            ),
        ));
    }
    let (text, origin) = read_template(&spec.template, DEVNET_TEMPLATE, "devnet");
    let mut template = parse_template(&text, &origin)?;
    let liveness = take_liveness(&mut template, &origin)?;
    let base_dir = spec.template.as_ref().and_then(|t| t.path.parent().map(Path::to_path_buf));
    let ports: Vec<u16> = (0..n).map(|i| spec.base_port + i as u16).collect();
    let tls_dir = crate::devnet_tls::dir(paths);
    let mut out = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let name = node_name(i);
        let dir = paths.node_dir(Group::Devnet, &name);
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
        let scheme = if spec.tls { "https" } else { "http" };
        let peers: Vec<toml::Value> = if spec.swarm {
            ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| toml::Value::String(format!("{scheme}://127.0.0.1:{p}")))
                .collect()
        } else {
            vec![]
        };
        let mut doc = template.clone();
        let node = node_table(&mut doc, &origin)?;
        node.insert("id".into(), toml::Value::String(name.clone()));
        node.insert("listen".into(), toml::Value::String(listen.to_string()));
        let r = rewrite_dirs(node, &dir, base_dir.as_deref(), &origin)?;
        let tls_files = spec.tls.then(|| crate::devnet_tls::Files::new(&tls_dir, &name));
        if let Some(files) = &tls_files {
            let tls = sub_table(node, "tls", &origin)?;
            tls.clear();
            tls.insert("cert_file".into(), path_value(&files.cert));
            tls.insert("key_file".into(), path_value(&files.key));
        }
        let swarm = sub_table(node, "swarm", &origin)?;
        swarm.insert("enabled".into(), toml::Value::Boolean(spec.swarm));
        swarm.insert("peers".into(), toml::Value::Array(peers));
        if let Some(files) = &tls_files {
            // Peers are verified against the devnet's own CA only.
            swarm.insert("ca_file".into(), path_value(&files.ca));
        }
        let body = toml::to_string(&doc).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        out.push(RenderedNode {
            id: name.clone(),
            name,
            group: Group::Devnet,
            listen,
            text: header(&origin) + &body,
            body,
            liveness,
            devnet_tls: spec.tls.then(|| tls_dir.clone()),
            ..r
        });
    }
    Ok(out)
}

/// Renders the local node's config (nothing is written yet).
pub fn render_local(paths: &Paths, spec: &LocalSpec) -> Result<RenderedNode, ErrorReply> {
    let (text, origin) = read_template(&spec.config, LOCAL_TEMPLATE, "local");
    let mut doc = parse_template(&text, &origin)?;
    let liveness = take_liveness(&mut doc, &origin)?;
    let base_dir = spec.config.as_ref().and_then(|t| t.path.parent().map(Path::to_path_buf));
    let node = node_table(&mut doc, &origin)?;
    let id = match node.get("id") {
        None => LOCAL_NODE_ID.to_owned(),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(err(
                ErrorKind::BadConfig,
                format!("{origin}: node.id must be a non-empty string"),
            ))
        }
    };
    // The node's folder is named by its id (so two configs never share a store): a plain
    // folder name, and none of the default local node's own folders.
    let plain = Path::new(&id).components().count() == 1
        && matches!(Path::new(&id).components().next(), Some(std::path::Component::Normal(_)));
    if !plain || RESERVED_LOCAL_IDS.contains(&id.as_str()) {
        return Err(err(
            ErrorKind::BadConfig,
            format!(
                "{origin}: node.id {id:?} cannot name the local node's folder under {}: use \
                 a plain name without '/' other than {}",
                paths.group_dir(Group::Local).display(),
                RESERVED_LOCAL_IDS.join(", ")
            ),
        ));
    }
    let dir = paths.node_dir(Group::Local, &id);
    let listen = match node.get("listen") {
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        Some(toml::Value::String(s)) => s.parse().map_err(|e| {
            err(ErrorKind::BadConfig, format!("{origin}: node.listen {s:?} is not IP:port ({e})"))
        })?,
        Some(_) => {
            return Err(err(
                ErrorKind::BadConfig,
                format!("{origin}: node.listen must be a string"),
            ))
        }
    };
    if listen.port() == 0 {
        // The node would bind some free port we never learn: readiness could not be probed
        // and the node would sit in "starting" forever.
        return Err(err(
            ErrorKind::BadConfig,
            format!("deploy local needs a fixed port in {origin} [node] listen; port 0 cannot be probed"),
        ));
    }
    let r = rewrite_dirs(node, &dir, base_dir.as_deref(), &origin)?;
    let body = toml::to_string(&doc).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    Ok(RenderedNode {
        name: id.clone(),
        id,
        group: Group::Local,
        listen,
        text: header(&origin) + &body,
        body,
        liveness,
        ..r
    })
}

/// Points data/log/summaries dirs into `dir` and makes a relative `api_key_file` absolute
/// against the template's folder (the rendered copy lives elsewhere).
fn rewrite_dirs(
    node: &mut toml::Table,
    dir: &Path,
    template_dir: Option<&Path>,
    origin: &str,
) -> Result<RenderedNode, ErrorReply> {
    let data_dir = dir.join("data");
    let log_dir = dir.join("logs");
    let summaries_dir = dir.join("summaries");
    node.insert("data_dir".into(), path_value(&data_dir));
    node.insert("log_dir".into(), path_value(&log_dir));
    node.insert("summaries_dir".into(), path_value(&summaries_dir));
    if let Some(base) = template_dir {
        if let Some(toml::Value::Table(sec)) = node.get_mut("security") {
            if let Some(toml::Value::String(f)) = sec.get("api_key_file") {
                let p = Path::new(f);
                if p.is_relative() {
                    let abs = base.join(p);
                    sec.insert("api_key_file".into(), path_value(&abs));
                }
            }
        }
    }
    let _ = origin;
    Ok(RenderedNode {
        name: String::new(),
        id: String::new(),
        group: Group::Devnet,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        config_path: dir.join("config.toml"),
        log_path: log_dir.join("node.log"),
        dir: dir.to_path_buf(),
        data_dir,
        log_dir,
        summaries_dir,
        text: String::new(),
        body: String::new(),
        liveness: None,
        devnet_tls: None,
    })
}

/// Writes the config and creates the node's folders (and, for `deploy devnet --tls`, its
/// certificate).
pub fn write_node(node: &RenderedNode) -> Result<(), ErrorReply> {
    prepare_node_dirs(node)?;
    // 0600: a config can hold an API key.
    dwbase_proto::fsutil::atomic_write(&node.config_path, node.text.as_bytes(), 0o600).map_err(
        |e| err(ErrorKind::Internal, format!("writing {}: {e}", node.config_path.display())),
    )
}

/// [`write_node`] for a node no state file lists yet: its config goes into `batch`, made
/// durable with the batch before the state file that adds the node is saved.
pub fn write_new_node(
    node: &RenderedNode,
    batch: &mut dwbase_proto::fsutil::SyncBatch,
) -> Result<(), ErrorReply> {
    prepare_node_dirs(node)?;
    batch.write(&node.config_path, node.text.as_bytes(), 0o600).map_err(|e| {
        err(ErrorKind::Internal, format!("writing {}: {e}", node.config_path.display()))
    })
}

/// Creates the node's own folder, which its config goes into. The folders inside it are made
/// by the processes that write there, as they start: the node its `data/` (sled) and
/// `summaries/`, the log pipe its `logs/` (the supervisor itself only where it opens the log,
/// [`crate::process::LogSink::Append`]). A folder creation is one of the costliest steps of a
/// deploy on ext4 (an inode allocation each), and these run beside the supervisor's next
/// spawn instead of before it; a folder that cannot be made is the node's start-up error,
/// naming it. (The node folder was just created and written to, so they can be.)
fn prepare_node_dirs(node: &RenderedNode) -> Result<(), ErrorReply> {
    std::fs::create_dir_all(&node.dir)
        .map_err(|e| err(ErrorKind::Internal, format!("creating {}: {e}", node.dir.display())))?;
    if let Some(dir) = &node.devnet_tls {
        crate::devnet_tls::ensure(dir, &node.name).map_err(|e| {
            err(ErrorKind::Internal, format!("node {}: TLS certificate: {e:#}", node.name))
        })?;
    }
    Ok(())
}

/// Validates a rendered config with the node's own parser, as if it were already written at
/// its path (nothing is written), and returns what it loaded (for [`Endpoint::of_loaded`]:
/// one parse per node in a rollout).
pub fn validate(node: &RenderedNode) -> Result<dwbase_node::config::Config, ErrorReply> {
    dwbase_node::config::Config::from_toml_str(&node.text, &node.config_path)
        .map_err(|e| err(ErrorKind::BadConfig, format!("node {}: {e}", node.name)))
}

/// Checks that the node's port is free by binding it for a moment.
pub fn check_port(node: &RenderedNode) -> Result<(), ErrorReply> {
    if node.listen.port() == 0 {
        return Ok(());
    }
    TcpListener::bind(node.listen).map(drop).map_err(|e| {
        err(
            ErrorKind::PortInUse,
            format!(
                "port {} for node {} is not free ({}): choose another --base-port or stop what uses it",
                node.listen.port(),
                node.name,
                e
            ),
        )
    })
}

/// Where and how a node's API answers on this machine: what the prober probes and the URL
/// `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address to probe (the listen address, loopback for an unspecified IP).
    pub addr: SocketAddr,
    /// `Some` when the node serves HTTPS.
    pub tls: Option<ProbeTls>,
}

/// How the prober talks to a node that serves HTTPS. Like the kubelet's HTTPS probes, it
/// does not verify the node's certificate (a probe carries no secret and goes to loopback);
/// a node that requires client certificates gets one: the swarm's client certificate of its
/// config, else its own (a `deploy devnet --tls` certificate is valid for both uses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeTls {
    /// Certificate and key to present, when the node requires one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Endpoint {
    /// A plain-HTTP endpoint at `listen`.
    pub fn plain(listen: SocketAddr) -> Self {
        Self { addr: probe_addr(listen), tls: None }
    }

    /// From a node's config text (as it is or will be written at `config_path`) and the
    /// environment the node gets (`DWBASE_TLS_*` override the file). A config that does not
    /// the node's loader refuses gives plain HTTP at its `node.listen`, else at `fallback`.
    pub fn of_config(
        text: &str,
        config_path: &Path,
        env: &[(String, String)],
        fallback: SocketAddr,
    ) -> Self {
        let Ok(cfg) = dwbase_node::config::Config::from_toml_str(text, config_path) else {
            let listen = text
                .parse::<toml::Table>()
                .ok()
                .and_then(|doc| doc.get("node")?.get("listen")?.as_str()?.parse().ok());
            return Self::plain(listen.unwrap_or(fallback));
        };
        Self::of_loaded(cfg, env)
    }

    /// From a config the node's loader accepted ([`validate`]) and the environment the node
    /// gets (`DWBASE_TLS_*` override the file).
    pub fn of_loaded(mut cfg: dwbase_node::config::Config, env: &[(String, String)]) -> Self {
        let _ = cfg.apply_env_from(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let node = &cfg.node;
        let tls = node.tls.enabled().then(|| ProbeTls {
            identity: node.tls.client_ca_file.as_ref().and_then(|_| {
                match (&node.swarm.cert_file, &node.swarm.key_file) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    _ => node.tls.cert_file.clone().zip(node.tls.key_file.clone()),
                }
            }),
        });
        Self { addr: probe_addr(node.listen), tls }
    }

    /// From a node's config file; plain HTTP at `fallback` when it cannot be read.
    pub fn of_config_file(
        config_path: &Path,
        env: &[(String, String)],
        fallback: SocketAddr,
    ) -> Self {
        match std::fs::read_to_string(config_path) {
            Ok(text) => Self::of_config(&text, config_path, env, fallback),
            Err(_) => Self::plain(fallback),
        }
    }

    /// `http://127.0.0.1:7000` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// The address to probe: the listen address, with an unspecified IP replaced by loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(p: &Path) -> Template {
        Template { path: p.to_path_buf(), text: std::fs::read_to_string(p).unwrap() }
    }

    fn spec(nodes: u32) -> DevnetSpec {
        DevnetSpec {
            nodes,
            base_port: 7000,
            swarm: true,
            tls: false,
            template: None,
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1000,
            liveness: None,
            options: Default::default(),
        }
    }

    #[test]
    fn writing_a_node_makes_its_folder_and_config_only() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::new(tmp.path()).unwrap();
        let nodes = render_devnet(&paths, &spec(2)).unwrap();
        write_node(&nodes[0]).unwrap();
        let mut batch = dwbase_proto::fsutil::SyncBatch::default();
        write_new_node(&nodes[1], &mut batch).unwrap();
        batch.sync().unwrap();
        for n in &nodes {
            let written = std::fs::read_to_string(&n.config_path).unwrap();
            assert_eq!(written, n.text);
            let mut entries: Vec<String> = std::fs::read_dir(&n.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            entries.sort();
            // data/, logs/ and summaries/ are the node's and the log pipe's to make.
            assert_eq!(entries, ["config.toml"], "{}", n.name);
        }
    }

    #[test]
    fn names_are_bijective_base_26() {
        assert_eq!(node_name(0), "node-a");
        assert_eq!(node_name(25), "node-z");
        assert_eq!(node_name(26), "node-aa");
        assert_eq!(node_name(27), "node-ab");
        assert_eq!(node_name(26 + 26 * 26), "node-aaa");
    }

    #[test]
    fn devnet_tls_renders_certificates_https_peers_and_the_ca_and_probes_https() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let nodes = render_devnet(&paths, &DevnetSpec { tls: true, ..spec(2) }).unwrap();
        let a = &nodes[0];
        assert_eq!(a.devnet_tls, Some(PathBuf::from("/tmp/root/devnet/tls")));
        let doc: toml::Table = a.text.parse().unwrap();
        let node = doc["node"].as_table().unwrap();
        assert_eq!(node["tls"]["cert_file"].as_str(), Some("/tmp/root/devnet/tls/node-a.crt"));
        assert_eq!(node["tls"]["key_file"].as_str(), Some("/tmp/root/devnet/tls/node-a.key"));
        assert_eq!(node["swarm"]["ca_file"].as_str(), Some("/tmp/root/devnet/tls/ca.crt"));
        assert_eq!(node["swarm"]["peers"][0].as_str(), Some("https://127.0.0.1:7001"));
        validate(a).unwrap();
        let endpoint = Endpoint::of_config(&a.text, &a.config_path, &[], a.listen);
        assert_eq!(endpoint.url(), "https://127.0.0.1:7000");
        assert_eq!(endpoint.tls, Some(ProbeTls { identity: None }), "no client_ca_file");
        // Without --tls: plain peers, no [node.tls], probed over http.
        let plain = &render_devnet(&paths, &spec(2)).unwrap()[0];
        assert_eq!(plain.devnet_tls, None);
        assert!(!plain.body.contains("[node.tls]"), "{}", plain.body);
        let endpoint = Endpoint::of_config(&plain.text, &plain.config_path, &[], plain.listen);
        assert_eq!(endpoint.url(), "http://127.0.0.1:7000");
    }

    #[test]
    fn devnet_rewrites_id_listen_dirs_and_peers() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let nodes = render_devnet(&paths, &spec(3)).unwrap();
        assert_eq!(nodes.len(), 3);
        let b = &nodes[1];
        assert_eq!(b.name, "node-b");
        assert_eq!(b.listen.port(), 7001);
        assert_eq!(b.config_path, PathBuf::from("/tmp/root/devnet/node-b/config.toml"));
        assert_eq!(b.log_path, PathBuf::from("/tmp/root/devnet/node-b/logs/node.log"));
        let doc: toml::Table = b.text.parse().unwrap();
        let node = doc["node"].as_table().unwrap();
        assert_eq!(node["id"].as_str(), Some("node-b"));
        assert_eq!(node["listen"].as_str(), Some("127.0.0.1:7001"));
        assert_eq!(node["data_dir"].as_str(), Some("/tmp/root/devnet/node-b/data"));
        let peers: Vec<&str> = node["swarm"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(peers, vec!["http://127.0.0.1:7000", "http://127.0.0.1:7002"]);
        // Other template keys survive.
        assert!(node["security"].as_table().unwrap().contains_key("remember_per_sec"));
    }

    #[test]
    fn devnet_without_swarm_has_no_peers() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let mut s = spec(2);
        s.swarm = false;
        let nodes = render_devnet(&paths, &s).unwrap();
        let doc: toml::Table = nodes[0].text.parse().unwrap();
        assert_eq!(doc["node"]["swarm"]["enabled"].as_bool(), Some(false));
        assert!(doc["node"]["swarm"]["peers"].as_array().unwrap().is_empty());
    }

    #[test]
    fn zero_nodes_and_port_overflow_are_bad_requests() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        assert_eq!(render_devnet(&paths, &spec(0)).unwrap_err().kind, ErrorKind::BadRequest);
        let mut s = spec(3);
        s.base_port = 65534;
        assert_eq!(render_devnet(&paths, &s).unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn a_broken_template_is_bad_config_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.toml");
        std::fs::write(&t, "[node\nid=").unwrap();
        let paths = Paths::new(dir.path()).unwrap();
        let mut s = spec(1);
        s.template = Some(tpl(&t));
        let e = render_devnet(&paths, &s).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadConfig);
        assert!(e.message.contains("t.toml"), "{}", e.message);
    }

    #[test]
    fn local_keeps_listen_and_id_and_rewrites_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("my.toml");
        std::fs::write(
            &cfg,
            "[node]\nid = \"edge-1\"\nlisten = \"127.0.0.1:9123\"\ndata_dir = \"./d\"\n[node.security]\napi_key_file = \"key.txt\"\n",
        )
        .unwrap();
        let paths = Paths::new(&dir.path().join("root")).unwrap();
        let spec = LocalSpec {
            config: Some(tpl(&cfg)),
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1,
            liveness: None,
            options: Default::default(),
        };
        let n = render_local(&paths, &spec).unwrap();
        assert_eq!(n.name, "edge-1");
        assert_eq!(n.listen.port(), 9123);
        assert_eq!(n.dir, dir.path().join("root/local/edge-1"), "a folder of its own, by id");
        let doc: toml::Table = n.text.parse().unwrap();
        assert_eq!(
            doc["node"]["security"]["api_key_file"].as_str().unwrap(),
            dir.path().join("key.txt").to_str().unwrap()
        );
        let builtin = render_local(
            &paths,
            &LocalSpec {
                config: None,
                restart_policy: Default::default(),
                env: vec![],
                stop_timeout_ms: 1,
                liveness: None,
                options: Default::default(),
            },
        )
        .unwrap();
        assert_eq!(builtin.name, "local");
        assert_eq!(builtin.dir, dir.path().join("root/local"), "the original's .dwbase/local");
    }

    #[test]
    fn local_with_port_0_is_bad_config_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("any-port.toml");
        std::fs::write(&cfg, "[node]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let paths = Paths::new(&dir.path().join("root")).unwrap();
        let spec = LocalSpec {
            config: Some(tpl(&cfg)),
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1,
            liveness: None,
            options: Default::default(),
        };
        let e = render_local(&paths, &spec).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadConfig);
        assert_eq!(
            e.message,
            format!(
                "deploy local needs a fixed port in {} [node] listen; port 0 cannot be probed",
                cfg.display()
            )
        );
    }

    #[test]
    fn the_liveness_table_is_taken_out_of_the_template_and_checked() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let mut s = spec(1);
        let text = format!(
            "{DEVNET_TEMPLATE}\n[liveness]\nperiod = \"2s\"\ntimeout = 500\nfailures = 4\n"
        );
        s.template = Some(Template { path: PathBuf::from("/t/devnet.toml"), text });
        let n = &render_devnet(&paths, &s).unwrap()[0];
        assert_eq!(
            n.liveness,
            Some(LivenessSpec { period_ms: 2000, timeout_ms: 500, failures: 4 })
        );
        assert!(!n.body.contains("liveness"), "the node never sees it");
        let text = format!("{DEVNET_TEMPLATE}\n[liveness]\nperiods = \"2s\"\n");
        s.template = Some(Template { path: PathBuf::from("/t/devnet.toml"), text });
        let e = render_devnet(&paths, &s).unwrap_err();
        assert!(
            e.message.contains("/t/devnet.toml") && e.message.contains("periods"),
            "{}",
            e.message
        );
    }

    #[test]
    fn fingerprints_cover_config_and_env_but_not_the_header() {
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let a = &render_devnet(&paths, &spec(1)).unwrap()[0];
        let env = vec![("DWBASE_MAX_DISK_MB".to_owned(), "8".to_owned())];
        assert_eq!(a.fingerprint(&[]), fingerprint(body_of(&a.text), &[]));
        assert_ne!(a.fingerprint(&[]), a.fingerprint(&env));
        let mut other = spec(1);
        other.base_port = 7100;
        let b = &render_devnet(&paths, &other).unwrap()[0];
        assert_ne!(a.fingerprint(&[]), b.fingerprint(&[]));
    }

    #[test]
    fn a_taken_port_is_port_in_use() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let paths = Paths::new(Path::new("/tmp/root")).unwrap();
        let mut s = spec(1);
        s.base_port = l.local_addr().unwrap().port();
        let nodes = render_devnet(&paths, &s).unwrap();
        let e = check_port(&nodes[0]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PortInUse);
        assert!(e.message.contains("node-a") && e.message.contains(&s.base_port.to_string()));
    }
}
