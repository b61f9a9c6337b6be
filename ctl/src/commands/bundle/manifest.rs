//! The bundle's manifest: what it holds, by size and sha256, and which build it is.
//!
//! `MANIFEST.json` is the first entry of the archive and `MANIFEST.json.minisig` (its minisign
//! signature) the second, so a reader checks the signature before it trusts a single byte of
//! content. The manifest is canonical JSON (fields in a fixed order, files sorted by path), so
//! the same inputs give the same manifest and the same content id.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The manifest's name inside the bundle's top folder.
pub const MANIFEST: &str = "MANIFEST.json";
/// The manifest signature's name inside the bundle's top folder.
pub const SIGNATURE: &str = "MANIFEST.json.minisig";
/// The largest manifest a reader accepts (it is read into memory before it is verified).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The signed record of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]); a reader refuses a newer one.
    pub format: u32,
    /// Product name ("dwbase").
    pub name: String,
    /// Version of the packed build (e.g. "0.2.0").
    pub version: String,
    /// Target triple the binaries were built for (e.g. "x86_64-unknown-linux-gnu").
    pub target: String,
    /// Git commit of the source tree the bundle was made from.
    pub git_commit: String,
    /// The source tree had uncommitted changes in the packed folders.
    pub git_dirty: bool,
    /// When it was made (Unix seconds; `SOURCE_DATE_EPOCH` when set).
    pub created_unix: i64,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path under the bundle's top folder, `/`-separated (e.g. "bin/dwbase").
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Unix mode, octal: "0755" (programs) or "0644" (everything else).
    pub mode: String,
}

impl FileEntry {
    /// The mode as a number, if it is one of the two a bundle may carry.
    pub fn mode_bits(&self) -> Option<u32> {
        match self.mode.as_str() {
            "0755" => Some(0o755),
            "0644" => Some(0o644),
            _ => None,
        }
    }
}

/// The mode string for a file that is (or is not) executable.
pub fn mode_string(executable: bool) -> &'static str {
    if executable {
        "0755"
    } else {
        "0644"
    }
}

impl Manifest {
    /// `<name>-<version>-<target>`: the bundle's file stem, its top folder and its install
    /// folder's prefix.
    pub fn stem(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.target)
    }

    /// The canonical bytes that are signed (pretty JSON with a final newline, so
    /// `minisign -Vm MANIFEST.json` users can read what they verified).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }

    /// Total size of every file.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks what a signature cannot: a format this build reads, names that cannot escape
    /// the install folder, no duplicates, the two allowed modes, well-formed hashes. Returns
    /// every problem found, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.format > FORMAT {
            problems.push(format!(
                "manifest format {} is newer than this dwbase reads ({FORMAT}); use a newer dwbase",
                self.format
            ));
        }
        for (field, v) in
            [("name", &self.name), ("version", &self.version), ("target", &self.target)]
        {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)) {
                problems.push(format!("{field} {v:?} is not a plain name"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if let Err(e) = check_rel_path(&f.path) {
                problems.push(format!("{:?}: {e}", f.path));
            }
            if f.path == MANIFEST || f.path == SIGNATURE {
                problems.push(format!("{:?}: reserved name", f.path));
            }
            if !seen.insert(f.path.as_str()) {
                problems.push(format!("{:?}: listed twice", f.path));
            }
            if f.mode_bits().is_none() {
                problems.push(format!("{:?}: mode {:?} is neither 0755 nor 0644", f.path, f.mode));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!("{:?}: sha256 {:?} is not 64 hex digits", f.path, f.sha256));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The entry for `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A relative `/`-separated path of plain components: no root, no `.` or `..`, no empty
/// component, no backslash or NUL. Anything else could write outside the install folder.
pub fn check_rel_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty path");
    }
    if p.len() > 1024 {
        return Err("path longer than 1024 bytes");
    }
    if p.contains('\\') || p.contains('\0') {
        return Err("backslash or NUL in path");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("path is not a plain relative path (empty, `.` or `..` component)");
    }
    if !Path::new(p).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("path is not a plain relative path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT,
            name: "dwbase".into(),
            version: "0.2.0".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            git_commit: "abc".into(),
            git_dirty: false,
            created_unix: 0,
            files,
        }
    }

    fn entry(path: &str) -> FileEntry {
        FileEntry { path: path.into(), size: 1, sha256: "0".repeat(64), mode: "0644".into() }
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", "a/."] {
            assert!(check_rel_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["bin/dwbase", "deploy/k8s/base/statefulset.yaml", "README.md"] {
            check_rel_path(good).unwrap();
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut m = manifest(vec![entry("a"), entry("a"), entry("../b")]);
        m.files[0].mode = "4755".into();
        m.format = FORMAT + 1;
        let err = m.validate().unwrap_err();
        assert!(err.contains("newer"), "{err}");
        assert!(err.contains("listed twice"), "{err}");
        assert!(err.contains("\"../b\""), "{err}");
        assert!(err.contains("4755"), "{err}");
        assert_eq!(err.lines().count(), 4, "{err}");
    }

    #[test]
    fn bytes_round_trip_and_stem() {
        let m = manifest(vec![entry("bin/dwbase")]);
        m.validate().unwrap();
        let back: Manifest = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.stem(), "dwbase-0.2.0-x86_64-unknown-linux-gnu");
    }
}
