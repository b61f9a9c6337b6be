//! First-run API keys. `dwbase deploy local --config F` with a config whose
//! `node.security.api_key_file` does not exist yet creates that file (mode 0600, 32 random bytes
//! from the OS as 64 hex digits) and says where it is and how clients use it, the way
//! Elasticsearch 8 prints its generated credentials on first start. An existing file is left
//! alone (the node checks its content), and nothing is created when the key comes from
//! elsewhere (`api_key` in the file, or `DWBASE_API_KEY`, which clears `api_key_file`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::TryRngCore;

/// Random bytes in a generated key (64 hex digits).
pub const KEY_BYTES: usize = 32;

/// A key file created by [`ensure_for_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The config that names it.
    pub config: PathBuf,
    /// The new file (absolute).
    pub path: PathBuf,
    /// The node's id in that config (`local` when it has none), the name `--node` takes.
    pub node_id: String,
}

impl Created {
    /// What to tell the user: where the key is and how clients send it.
    pub fn message(&self) -> String {
        let path = self.path.display();
        format!(
            "Created the API key file {path} named by {config} (node.security.api_key_file): \
             {KEY_BYTES} random bytes as hex, readable by this user only (0600). Keep it secret; \
             the node refuses requests without it (except /healthz, /readyz and /metrics).\n\
             Use it with:\n  \
             dwbase list-worlds --node {id}        (a deployed node: the key is read for you)\n  \
             DWBASE_API_KEY=\"$(cat {path})\" dwbase list-worlds --api http://HOST:PORT\n  \
             dwbase ask WORLD -q TEXT --api http://HOST:PORT --api-key \"$(cat {path})\"\n  \
             curl -H \"Authorization: Bearer $(cat {path})\" http://HOST:PORT/worlds",
            config = self.config.display(),
            id = self.node_id,
        )
    }
}

/// The `node.id` of a config (`local` when it has none or does not parse).
fn node_id_of(config: &Path) -> String {
    fs::read_to_string(config)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("node")?.get("id")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "local".to_owned())
}

/// The key file `config` names, resolved as the node resolves it (against the config file's
/// folder), when the node would read its key from there: `None` without `api_key_file`, with
/// `api_key` also set (a config error the node reports) or with `DWBASE_API_KEY` in `env`.
pub fn key_file_of(config: &Path, env_api_key: Option<&str>) -> Result<Option<PathBuf>> {
    let text = fs::read_to_string(config)
        .with_context(|| format!("cannot read config {}", config.display()))?;
    // A config that does not parse is reported, with its lines, by the node's own loader.
    let Ok(table) = text.parse::<toml::Table>() else { return Ok(None) };
    let security = table.get("node").and_then(|n| n.get("security"));
    let Some(file) = security.and_then(|s| s.get("api_key_file")) else { return Ok(None) };
    let Some(file) = file.as_str() else { return Ok(None) };
    if security.and_then(|s| s.get("api_key")).is_some() || env_api_key.is_some() {
        return Ok(None);
    }
    let file = Path::new(file);
    let file = file.strip_prefix(".").unwrap_or(file);
    let base = std::path::absolute(config)
        .with_context(|| format!("resolving {}", config.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(Some(base.join(file)))
}

/// The key file [`ensure_for_config`] would create for `config` (it names one that is missing).
pub fn would_create(config: &Path) -> Result<Option<PathBuf>> {
    let env_key = std::env::var(dwbase_node::config::ENV_API_KEY).ok();
    let Some(path) = key_file_of(config, env_key.as_deref())? else { return Ok(None) };
    Ok(fs::symlink_metadata(&path).is_err().then_some(path))
}

/// Creates the key file `config` names if it is missing (see the module docs); `Ok(None)` when
/// there is nothing to create.
pub fn ensure_for_config(config: &Path) -> Result<Option<Created>> {
    let Some(path) = would_create(config)? else { return Ok(None) };
    create_key_file(&path).with_context(|| {
        format!(
            "{}: node.security.api_key_file = {} does not exist and could not be created",
            config.display(),
            path.display()
        )
    })?;
    Ok(Some(Created { config: config.to_path_buf(), path, node_id: node_id_of(config) }))
}

/// Writes a new key to `path`, which must not exist: the key goes to a private temporary file
/// in the same folder, made durable, then linked into place (so `path` never holds a partial
/// key, and an existing file, even one made meanwhile, is never replaced). Missing parent
/// folders are created with mode 0700.
pub fn create_key_file(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .context("reading random bytes from the operating system")?;
    let text = format!("{}\n", hex::encode(key));

    let tmp = tempfile::Builder::new()
        .prefix(".dwbase-key-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut file = tmp.as_file();
    // The mode given at creation is filtered by the umask; make it exactly 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    fs::hard_link(tmp.path(), path).with_context(|| format!("creating {}", path.display()))?;
    drop(tmp); // removes the temporary name; the key stays at `path`
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// The permission bits of `path`.
#[cfg(test)]
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_missing_key_file_is_created_private_random_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "edge.toml",
            "[node]\nid = \"edge\"\nlisten = \"0.0.0.0:8080\"\ndata_dir = \"data\"\n\
             [node.security]\napi_key_file = \"./keys/edge.key\"\n",
        );
        let created = ensure_for_config(&config).unwrap().expect("created");
        assert_eq!(created.path, dir.path().join("keys/edge.key"));
        assert_eq!(mode_of(&created.path), 0o600);
        assert_eq!(mode_of(&dir.path().join("keys")), 0o700);
        let text = fs::read_to_string(&created.path).unwrap();
        let key = text.trim_end();
        assert_eq!(key.len(), 2 * KEY_BYTES);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        // No temporary file left beside it.
        let names: Vec<_> = fs::read_dir(dir.path().join("keys")).unwrap().collect();
        assert_eq!(names.len(), 1);
        // The node accepts the config with it and reads the same key.
        let cfg = dwbase_node::config::Config::load(&config).unwrap();
        assert_eq!(cfg.node.security.effective_api_key(), Some(key));
        let msg = created.message();
        assert!(msg.contains(&created.path.display().to_string()), "{msg}");
        assert!(msg.contains("--node edge") && msg.contains("DWBASE_API_KEY"), "{msg}");
        assert!(msg.contains("Authorization: Bearer"), "{msg}");

        // A second run keeps the key.
        assert_eq!(ensure_for_config(&config).unwrap(), None);
        assert_eq!(fs::read_to_string(&created.path).unwrap(), text);
    }

    #[test]
    fn two_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        create_key_file(&dir.path().join("a")).unwrap();
        create_key_file(&dir.path().join("b")).unwrap();
        assert_ne!(
            fs::read_to_string(dir.path().join("a")).unwrap(),
            fs::read_to_string(dir.path().join("b")).unwrap()
        );
    }

    #[test]
    fn an_existing_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "k", "mine\n");
        let err = create_key_file(&key).unwrap_err();
        assert!(format!("{err:#}").contains(&key.display().to_string()), "{err:#}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "mine\n");
        let config = write(dir.path(), "c.toml", "[node.security]\napi_key_file = \"k\"\n");
        assert_eq!(ensure_for_config(&config).unwrap(), None);
        assert_eq!(fs::read_to_string(&key).unwrap(), "mine\n");
    }

    #[test]
    fn nothing_is_created_when_the_key_comes_from_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let none = write(dir.path(), "none.toml", "[node]\nid = \"a\"\n");
        assert_eq!(key_file_of(&none, None).unwrap(), None);
        let both = write(
            dir.path(),
            "both.toml",
            "[node.security]\napi_key = \"0123456789abcdef0123\"\napi_key_file = \"k\"\n",
        );
        assert_eq!(key_file_of(&both, None).unwrap(), None);
        let file = write(dir.path(), "file.toml", "[node.security]\napi_key_file = \"k\"\n");
        assert_eq!(key_file_of(&file, Some("from-the-environment")).unwrap(), None);
        assert_eq!(key_file_of(&file, None).unwrap(), Some(dir.path().join("k")));
        let bad = write(dir.path(), "bad.toml", "[node\n");
        assert_eq!(key_file_of(&bad, None).unwrap(), None, "left to the node's loader");
        assert!(!dir.path().join("k").exists());
    }

    #[test]
    fn an_unwritable_folder_is_a_clear_error_naming_config_and_file() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the key's folder should be.
        write(dir.path(), "blocker", "");
        let config =
            write(dir.path(), "c.toml", "[node.security]\napi_key_file = \"blocker/edge.key\"\n");
        let err = format!("{:#}", ensure_for_config(&config).unwrap_err());
        assert!(err.contains("c.toml") && err.contains("blocker/edge.key"), "{err}");
    }
}
