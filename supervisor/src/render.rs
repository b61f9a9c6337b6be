//! Rendering per-node config files from a template, validating them, and checking ports.
//!
//! A template is edited as a `toml::Table` (so every key we do not rewrite survives as the
//! operator wrote it) and written to the node's folder; then it is validated with the node's
//! own loader, so a bad template is refused before anything is spawned.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use dwbase_proto::{DevnetSpec, ErrorKind, ErrorReply, Group, LocalSpec, Paths};

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
    /// The config text to write.
    pub text: String,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
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

fn read_template(
    path: &Option<PathBuf>,
    builtin: &str,
    what: &str,
) -> Result<(String, String), ErrorReply> {
    match path {
        None => Ok((builtin.to_owned(), format!("the built-in {what} template"))),
        Some(p) => std::fs::read_to_string(p)
            .map(|t| (t, p.display().to_string()))
            .map_err(|e| err(ErrorKind::BadConfig, format!("reading {}: {e}", p.display()))),
    }
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
    let (text, origin) = read_template(&spec.template, DEVNET_TEMPLATE, "devnet")?;
    let template = parse_template(&text, &origin)?;
    let base_dir = spec.template.as_ref().and_then(|p| p.parent().map(Path::to_path_buf));
    let ports: Vec<u16> = (0..n).map(|i| spec.base_port + i as u16).collect();
    let mut out = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let name = node_name(i);
        let dir = paths.node_dir(Group::Devnet, &name);
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
        let peers: Vec<toml::Value> = if spec.swarm {
            ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| toml::Value::String(format!("http://127.0.0.1:{p}")))
                .collect()
        } else {
            vec![]
        };
        let mut doc = template.clone();
        let node = node_table(&mut doc, &origin)?;
        node.insert("id".into(), toml::Value::String(name.clone()));
        node.insert("listen".into(), toml::Value::String(listen.to_string()));
        let r = rewrite_dirs(node, &dir, base_dir.as_deref(), &origin)?;
        let swarm = sub_table(node, "swarm", &origin)?;
        swarm.insert("enabled".into(), toml::Value::Boolean(spec.swarm));
        swarm.insert("peers".into(), toml::Value::Array(peers));
        let text = header(&origin)
            + &toml::to_string(&doc).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        out.push(RenderedNode { id: name.clone(), name, group: Group::Devnet, listen, text, ..r });
    }
    Ok(out)
}

/// Renders the local node's config (nothing is written yet).
pub fn render_local(paths: &Paths, spec: &LocalSpec) -> Result<RenderedNode, ErrorReply> {
    let (text, origin) = read_template(&spec.config, LOCAL_TEMPLATE, "local")?;
    let mut doc = parse_template(&text, &origin)?;
    let base_dir = spec.config.as_ref().and_then(|p| p.parent().map(Path::to_path_buf));
    let dir = paths.node_dir(Group::Local, "local");
    let node = node_table(&mut doc, &origin)?;
    let id = match node.get("id") {
        None => "local".to_owned(),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(err(
                ErrorKind::BadConfig,
                format!("{origin}: node.id must be a non-empty string"),
            ))
        }
    };
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
    let text = header(&origin)
        + &toml::to_string(&doc).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    Ok(RenderedNode { name: id.clone(), id, group: Group::Local, listen, text, ..r })
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
    })
}

/// Writes the config and creates the node's folders.
pub fn write_node(node: &RenderedNode) -> Result<(), ErrorReply> {
    for d in [&node.dir, &node.data_dir, &node.log_dir, &node.summaries_dir] {
        std::fs::create_dir_all(d)
            .map_err(|e| err(ErrorKind::Internal, format!("creating {}: {e}", d.display())))?;
    }
    let partial = node.config_path.with_extension("toml.partial");
    std::fs::write(&partial, &node.text)
        .and_then(|()| std::fs::rename(&partial, &node.config_path))
        .map_err(|e| {
            err(ErrorKind::Internal, format!("writing {}: {e}", node.config_path.display()))
        })
}

/// Validates a written config with the node's own loader.
pub fn validate(node: &RenderedNode) -> Result<(), ErrorReply> {
    dwbase_node::config::Config::load(&node.config_path)
        .map(|_| ())
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

    fn spec(nodes: u32) -> DevnetSpec {
        DevnetSpec {
            nodes,
            base_port: 7000,
            swarm: true,
            template: None,
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1000,
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
        s.template = Some(t.clone());
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
            config: Some(cfg),
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1,
        };
        let n = render_local(&paths, &spec).unwrap();
        assert_eq!(n.name, "edge-1");
        assert_eq!(n.listen.port(), 9123);
        assert_eq!(n.dir, dir.path().join("root/local"));
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
            },
        )
        .unwrap();
        assert_eq!(builtin.name, "local");
    }

    #[test]
    fn local_with_port_0_is_bad_config_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("any-port.toml");
        std::fs::write(&cfg, "[node]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let paths = Paths::new(&dir.path().join("root")).unwrap();
        let spec = LocalSpec {
            config: Some(cfg.clone()),
            restart_policy: Default::default(),
            env: vec![],
            stop_timeout_ms: 1,
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
