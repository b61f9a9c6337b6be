//! The CLI's HTTP client for nodes: HTTPS with `--cacert` (`DWBASE_CACERT`) instead of the
//! system's roots, and `--cert`/`--key` (`DWBASE_CLIENT_CERT`/`DWBASE_CLIENT_KEY`) for nodes
//! that require client certificates. Used by the node commands, backups through the API and
//! the soak harness; the flags are global (before or after the command).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use clap::Args;
use dwbase_node::tls::ClientTls;

/// `--cacert`, `--cert`, `--key`.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// CA certificate(s) (PEM) that https:// nodes' certificates must chain to, instead of the
    /// system's roots (a private CA, or `deploy devnet --tls`'s ca.crt).
    #[arg(long, global = true, env = "DWBASE_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require one (node.tls.client_ca_file); with
    /// --key.
    #[arg(long, global = true, env = "DWBASE_CLIENT_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "DWBASE_CLIENT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

static GLOBAL: OnceLock<TlsArgs> = OnceLock::new();

/// Records the flags (called once by `main`, before dispatch).
pub fn set_global(args: TlsArgs) {
    let _ = GLOBAL.set(args);
}

/// The names of the flags, for messages.
const FLAGS: (&str, &str, &str) = ("--cacert", "--cert", "--key");

/// A client builder that speaks HTTPS as the flags say. A deployed node's CA
/// (`default_ca`, e.g. a devnet's `tls/ca.crt`) is used when `--cacert` is not given.
pub fn builder_with(default_ca: Option<&Path>) -> Result<reqwest::ClientBuilder> {
    let args = GLOBAL.get().cloned().unwrap_or_default();
    let tls = ClientTls {
        ca_file: args.cacert.or_else(|| default_ca.map(Path::to_path_buf)),
        cert_file: args.cert,
        key_file: args.key,
    };
    Ok(tls.apply(reqwest::Client::builder(), FLAGS)?)
}

/// The base URL of a node deployed on this machine on `port`: `https://` when its config
/// serves TLS, with the CA a devnet generated for it (`tls/ca.crt` beside the node folders).
pub fn deployed_node(config_path: &Path, port: u16) -> (String, Option<PathBuf>) {
    let tls = dwbase_node::config::Config::load(config_path)
        .map(|c| c.node.tls.enabled())
        .unwrap_or(false);
    if !tls {
        return (format!("http://127.0.0.1:{port}"), None);
    }
    (format!("https://127.0.0.1:{port}"), deployed_ca(config_path))
}

/// The CA a deployment generated for the node whose config is `config_path`: `tls/ca.crt` in
/// the node's folder, its group's (`deploy devnet --tls`) or the root's.
pub fn deployed_ca(config_path: &Path) -> Option<PathBuf> {
    config_path
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("tls").join("ca.crt"))
        .find(|p| p.is_file())
}

/// Why a request did not get an answer, with the causes reqwest keeps in its source chain
/// (a certificate the client does not trust, a TLS client talking to a plain port, …) and
/// what to do about them.
pub fn describe(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.iter().any(|c: &String| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let detail = causes.last().cloned().unwrap_or_default();
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        " — the node's certificate is not signed by a CA this client trusts: pass --cacert FILE \
         (or set DWBASE_CACERT) with the CA that signed it"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        " — the node's certificate does not name the host in the URL: use a name it lists"
    } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        " — the node does not speak TLS on that port: use http://"
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        " — the node requires a client certificate: pass --cert FILE --key FILE"
    } else if lower.contains("badcertificate") || lower.contains("bad certificate") {
        " — the node refused the client certificate (not signed by its client CA?)"
    } else {
        ""
    };
    let what = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() && causes.iter().any(|c| c.contains("refused")) {
        "connection refused".to_owned()
    } else if detail.is_empty() {
        e.to_string()
    } else {
        detail
    };
    format!("{what}{hint}")
}
