//! Every node config template shipped in `deploy/*.toml` must load with our parser.
//!
//! The templates are written by another part of the project; while none exist the test passes
//! and says so.

use std::path::PathBuf;

use dwbase_node::Config;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

#[test]
fn every_deploy_template_loads() {
    let dir = deploy_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: no {} folder yet", dir.display());
        return;
    };
    let mut templates: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    templates.sort();
    if templates.is_empty() {
        eprintln!("skipping: no *.toml templates in {} yet", dir.display());
        return;
    }
    let mut failures = Vec::new();
    for path in &templates {
        match load_template(path) {
            Ok(config) => {
                eprintln!(
                    "ok: {} (node {}, listen {})",
                    path.display(),
                    config.node.id,
                    config.node.listen
                );
                // A template that listens beyond loopback must say how it is protected.
                let listen = config.node.listen;
                if let Err(msg) = config.check_listen_security(listen) {
                    if config.node.security.api_key_file.is_none() {
                        failures.push(format!("{}: {msg}", path.display()));
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "templates that do not load:\n{}", failures.join("\n"));
}

/// Loads a template. A template may point `api_key_file` at a secret that is not in the repo
/// (it is generated at install time); then the template is loaded as if it sat in a temp folder
/// next to a generated key, so everything else in it is still checked.
fn load_template(path: &std::path::Path) -> Result<Config, dwbase_node::config::ConfigError> {
    let text = std::fs::read_to_string(path).expect("read template");
    let key_file = toml::from_str::<toml::Table>(&text).ok().and_then(|t| {
        t.get("node")?.get("security")?.get("api_key_file")?.as_str().map(PathBuf::from)
    });
    match key_file {
        Some(key) if key.is_relative() && !path.parent().unwrap().join(&key).exists() => {
            let tmp = tempfile::tempdir().unwrap();
            let key_path = tmp.path().join(&key);
            std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
            std::fs::write(&key_path, "generated-for-test\n").unwrap();
            Config::from_toml_str(&text, tmp.path().join(path.file_name().unwrap()))
        }
        _ => Config::load(path),
    }
}

#[test]
fn original_templates_still_load() {
    // The original DWBase's own templates (local, devnet, edge), verbatim keys.
    let local = r#"
[node]
listen = "127.0.0.1:8080"
data_dir = ".dwbase/local/data"
[node.security]
read_worlds = []
write_worlds = []
importance_cap = 1.0
remember_per_sec = 10
ask_per_min = 60
[node.health]
disk_usage_degraded = 0.9
"#;
    let edge = r#"
[node]
listen = "0.0.0.0:8080"
data_dir = ".dwbase/edge/data"
[node.security]
importance_cap = 0.8
remember_per_sec = 2
ask_per_min = 30
[node.health]
disk_usage_degraded = 0.85
"#;
    let c = Config::from_toml_str(local, "local.toml").unwrap();
    assert_eq!(c.node.security.remember_per_sec, 10.0);
    let c = Config::from_toml_str(edge, "edge.toml").unwrap();
    assert_eq!(c.node.security.importance_cap, 0.8);
    // The edge template binds 0.0.0.0 without a key: loading works, starting is refused.
    assert!(c.check_listen_security(c.node.listen).is_err());
}
