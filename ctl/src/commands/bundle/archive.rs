//! Writing and reading the bundle archive: a zstd-compressed tar (with zstd's content
//! checksum) whose top folder is `<name>-<version>-<target>/`, holding `MANIFEST.json`,
//! `MANIFEST.json.minisig` and then every file the manifest lists, in its order.
//!
//! Reading is one pass: the manifest and its signature come first and are verified before
//! any content is trusted; each file is then hashed as it streams by (and, when installing,
//! written to a staging folder at the same time). Every problem is collected so that a
//! tampered bundle names every file that differs, not only the first.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Cursor, Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use minisign::{PublicKey, SecretKey, SignatureBox};
use sha2::{Digest, Sha256};

use super::keys::key_id;
use super::manifest::{self, Manifest, MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE};

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The archive is not a readable bundle (not zstd, truncated, not tar, out of order).
    #[error("{}: not a valid bundle: {detail}", bundle.display())]
    Corrupt {
        /// The bundle file.
        bundle: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The manifest's signature does not verify with the given key.
    #[error("{}: the signature does not verify: {detail}", bundle.display())]
    Signature {
        /// The bundle file (or its detached signature).
        bundle: PathBuf,
        /// What minisign said.
        detail: String,
    },
    /// The signed manifest is not acceptable (newer format, unsafe paths, …).
    #[error("{}: the signed manifest is not acceptable:\n  {}", bundle.display(), detail.replace('\n', "\n  "))]
    Manifest {
        /// The bundle file.
        bundle: PathBuf,
        /// Every problem, one per line.
        detail: String,
    },
    /// Content differs from the signed manifest.
    #[error("{}: refused, its content does not match the signed manifest:\n  {}", bundle.display(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Tampered {
        /// The bundle file.
        bundle: PathBuf,
        /// Every file that differs, and how.
        problems: Vec<Problem>,
    },
}

/// One way a file differs from the signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Its content hash differs.
    #[error("{path}: sha256 {actual}, the signed manifest says {expected}")]
    Hash {
        /// The file.
        path: String,
        /// The signed hash.
        expected: String,
        /// The hash of what the archive holds.
        actual: String,
    },
    /// Its size differs.
    #[error("{path}: {actual} bytes, the signed manifest says {expected}")]
    Size {
        /// The file.
        path: String,
        /// The signed size.
        expected: u64,
        /// The size in the archive.
        actual: u64,
    },
    /// Listed in the manifest but not in the archive.
    #[error("{path}: missing from the archive")]
    Missing {
        /// The file.
        path: String,
    },
    /// In the archive but not in the manifest.
    #[error("{path}: not in the signed manifest")]
    Unexpected {
        /// The file.
        path: String,
    },
    /// In the archive twice.
    #[error("{path}: in the archive twice")]
    Duplicate {
        /// The file.
        path: String,
    },
    /// Not a plain file or folder (a link, a device, …), or a path that could escape.
    #[error("{path}: {what}")]
    BadEntry {
        /// The entry.
        path: String,
        /// What is wrong with it.
        what: String,
    },
}

impl Problem {
    /// The file the problem is about.
    pub fn path(&self) -> &str {
        match self {
            Problem::Hash { path, .. }
            | Problem::Size { path, .. }
            | Problem::Missing { path }
            | Problem::Unexpected { path }
            | Problem::Duplicate { path }
            | Problem::BadEntry { path, .. } => path,
        }
    }
}

/// A file to pack: where it is now and where it goes in the bundle.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file on disk.
    pub source: PathBuf,
    /// Its path in the bundle (relative, `/`-separated).
    pub path: String,
    /// Whether it is a program (mode 0755).
    pub executable: bool,
}

/// Hashes every input and returns the manifest's file list (sorted by path).
pub fn hash_inputs(inputs: &[Input]) -> Result<Vec<manifest::FileEntry>, BundleError> {
    let mut files = Vec::with_capacity(inputs.len());
    for i in inputs {
        let (size, sha256) = hash_file(&i.source)?;
        files.push(manifest::FileEntry {
            path: i.path.clone(),
            size,
            sha256,
            mode: manifest::mode_string(i.executable).to_owned(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn hash_file(path: &Path) -> Result<(u64, String), BundleError> {
    let f = File::open(path).map_err(|source| io_err("reading", path, source))?;
    let mut h = HashingWriter::new(io::sink());
    io::copy(&mut BufReader::with_capacity(1 << 16, f), &mut h)
        .map_err(|source| io_err("reading", path, source))?;
    Ok(h.finish())
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> BundleError {
    BundleError::Io { action, path: path.to_owned(), source }
}

/// Signs `data` with `sk`, checking the result with `pk`.
pub fn sign(
    sk: &SecretKey,
    pk: Option<&PublicKey>,
    data: impl Read,
    trusted_comment: &str,
) -> Result<String, String> {
    let untrusted = "signature from dwbase bundle secret key";
    minisign::sign(pk, sk, data, Some(trusted_comment), Some(untrusted))
        .map(|b| b.into_string())
        .map_err(|e| e.to_string())
}

/// Writes the archive to `out` (the caller picks a `.partial` name and renames): the manifest,
/// its signature, then every file in manifest order, each re-hashed as it is packed so a file
/// that changed since it was hashed is an error, not a bundle that fails to verify later.
pub fn write_archive(
    out: &Path,
    m: &Manifest,
    manifest_bytes: &[u8],
    signature: &str,
    inputs: &[Input],
    level: i32,
) -> Result<(), BundleError> {
    let top = m.stem();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|source| io_err("creating", out, source))?;
    let w = |source| io_err("writing", out, source);
    let mut enc = zstd::Encoder::new(BufWriter::with_capacity(1 << 16, file), level).map_err(w)?;
    enc.include_checksum(true).map_err(w)?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(m.created_unix.max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let mut h = header(manifest_bytes.len() as u64, 0o644);
    tar.append_data(&mut h, format!("{top}/{MANIFEST}"), manifest_bytes).map_err(w)?;
    let mut h = header(signature.len() as u64, 0o644);
    tar.append_data(&mut h, format!("{top}/{SIGNATURE}"), signature.as_bytes()).map_err(w)?;
    for entry in &m.files {
        let input = inputs
            .iter()
            .find(|i| i.path == entry.path)
            .expect("every manifest entry comes from an input");
        let f =
            File::open(&input.source).map_err(|source| io_err("reading", &input.source, source))?;
        let mut reader = HashingReader::new(f.take(entry.size + 1));
        let mut h = header(entry.size, entry.mode_bits().unwrap_or(0o644));
        tar.append_data(&mut h, format!("{top}/{}", entry.path), &mut reader)
            .map_err(|source| io_err("packing", &input.source, source))?;
        let (size, sha) = reader.finish();
        if size != entry.size || sha != entry.sha256 {
            return Err(io_err(
                "packing",
                &input.source,
                io::Error::other("the file changed while the bundle was being made; run again"),
            ));
        }
    }
    let enc = tar.into_inner().map_err(w)?;
    let buf = enc.finish().map_err(w)?;
    let file = buf.into_inner().map_err(|e| w(e.into_error()))?;
    file.sync_all().map_err(w)
}

/// What a verified bundle is.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed manifest.
    pub manifest: Manifest,
    /// SHA-256 of the manifest's bytes: the bundle's content id.
    pub manifest_sha256: String,
    /// The id of the key that signed it.
    pub key_id: String,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// Reads and verifies `bundle` with `pk`: the manifest's signature, the manifest itself, and
/// every file's size and sha256. With `extract_to`, each file is also written under that
/// folder (which must exist and be empty; on error its content is half-written and the caller
/// removes it).
pub fn read_bundle(
    bundle: &Path,
    pk: &PublicKey,
    extract_to: Option<&Path>,
) -> Result<Verified, BundleError> {
    let corrupt = |detail: String| BundleError::Corrupt { bundle: bundle.to_owned(), detail };
    let file = File::open(bundle).map_err(|source| io_err("opening", bundle, source))?;
    let dec = zstd::Decoder::new(file).map_err(|e| corrupt(format!("zstd: {e}")))?;
    let mut ar = tar::Archive::new(dec);
    let mut entries = ar.entries().map_err(|e| corrupt(format!("tar: {e}")))?;

    // The manifest and its signature, in that order, before anything else.
    let mut small = |want: &str| -> Result<(String, Vec<u8>), BundleError> {
        let mut e = match entries.next() {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(corrupt(format!("reading {want}: {e}"))),
            None => return Err(corrupt(format!("empty archive (no {want})"))),
        };
        let path = entry_path(&e).map_err(|e| corrupt(format!("reading {want}: {e}")))?;
        let Some((top, name)) = path.split_once('/') else {
            return Err(corrupt(format!(
                "the first entries must be <top>/{MANIFEST} and <top>/{SIGNATURE}, found {path:?}"
            )));
        };
        if name != want || e.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(format!("expected {top}/{want} here, found {path:?}")));
        }
        if e.size() > MAX_MANIFEST_BYTES {
            return Err(corrupt(format!(
                "{want} is {} bytes (at most {MAX_MANIFEST_BYTES})",
                e.size()
            )));
        }
        let mut buf = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut buf).map_err(|e| corrupt(format!("reading {want}: {e}")))?;
        Ok((top.to_owned(), buf))
    };
    let (top, manifest_bytes) = small(MANIFEST)?;
    let (top2, sig_bytes) = small(SIGNATURE)?;
    if top2 != top {
        return Err(corrupt(format!("{SIGNATURE} is under {top2:?}, the manifest under {top:?}")));
    }
    let sig_text = String::from_utf8(sig_bytes).map_err(|_| BundleError::Signature {
        bundle: bundle.to_owned(),
        detail: format!("{SIGNATURE} is not text"),
    })?;
    let signed = verify_signature(bundle, pk, &sig_text, &manifest_bytes)?;
    let m: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::Manifest {
            bundle: bundle.to_owned(),
            detail: format!("{MANIFEST} is not a manifest: {e}"),
        })?;
    m.validate().map_err(|detail| BundleError::Manifest { bundle: bundle.to_owned(), detail })?;
    if top != m.stem() {
        return Err(BundleError::Manifest {
            bundle: bundle.to_owned(),
            detail: format!("the top folder {top:?} is not the manifest's {:?}", m.stem()),
        });
    }

    let mut problems = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let prefix = format!("{top}/");
    for e in entries {
        let mut e = e.map_err(|err| corrupt(format!("tar: {err}")))?;
        let raw = match entry_path(&e) {
            Ok(p) => p,
            Err(err) => {
                problems.push(Problem::BadEntry { path: "?".into(), what: err });
                continue;
            }
        };
        let Some(rel) = raw.strip_prefix(&prefix).map(|r| r.trim_end_matches('/').to_owned())
        else {
            problems.push(Problem::BadEntry {
                path: raw.clone(),
                what: format!("outside the top folder {top}/"),
            });
            continue;
        };
        let kind = e.header().entry_type();
        if kind == tar::EntryType::Directory {
            if let Err(what) = manifest::check_rel_path(&rel) {
                problems.push(Problem::BadEntry { path: rel, what: what.into() });
            }
            continue;
        }
        if kind != tar::EntryType::Regular && kind != tar::EntryType::Continuous {
            problems.push(Problem::BadEntry {
                path: rel,
                what: format!("a {kind:?} entry; a bundle holds plain files only"),
            });
            continue;
        }
        let Some(expected) = m.file(&rel) else {
            problems.push(Problem::Unexpected { path: rel });
            continue;
        };
        if !seen.insert(rel.clone()) {
            problems.push(Problem::Duplicate { path: rel });
            continue;
        }
        let (size, sha256) = match extract_to {
            Some(dir) => {
                let dest = dir.join(&rel);
                let out = create_for_extract(&dest)?;
                let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, out));
                io::copy(&mut e, &mut w).map_err(|err| corrupt(format!("reading {rel}: {err}")))?;
                let (size, sha, inner) = w.finish_inner();
                let f =
                    inner.into_inner().map_err(|err| io_err("writing", &dest, err.into_error()))?;
                f.sync_all().map_err(|err| io_err("writing", &dest, err))?;
                #[cfg(unix)]
                fs::set_permissions(
                    &dest,
                    fs::Permissions::from_mode(expected.mode_bits().unwrap_or(0o644)),
                )
                .map_err(|err| io_err("setting the mode of", &dest, err))?;
                (size, sha)
            }
            None => {
                let mut w = HashingWriter::new(io::sink());
                io::copy(&mut e, &mut w).map_err(|err| corrupt(format!("reading {rel}: {err}")))?;
                w.finish()
            }
        };
        if size != expected.size {
            problems.push(Problem::Size { path: rel, expected: expected.size, actual: size });
        } else if sha256 != expected.sha256 {
            problems.push(Problem::Hash {
                path: rel,
                expected: expected.sha256.clone(),
                actual: sha256,
            });
        }
    }
    for f in &m.files {
        if !seen.contains(&f.path) && !problems.iter().any(|p| p.path() == f.path) {
            problems.push(Problem::Missing { path: f.path.clone() });
        }
    }
    if !problems.is_empty() {
        return Err(BundleError::Tampered { bundle: bundle.to_owned(), problems });
    }
    Ok(Verified {
        manifest_sha256: manifest::sha256_hex(&manifest_bytes),
        manifest: m,
        key_id: signed.0,
        trusted_comment: signed.1,
    })
}

/// Checks a minisign signature of `data`; returns (key id, trusted comment).
pub fn verify_signature(
    what: &Path,
    pk: &PublicKey,
    sig_text: &str,
    data: &[u8],
) -> Result<(String, String), BundleError> {
    let bad = |detail: String| BundleError::Signature { bundle: what.to_owned(), detail };
    let sig = SignatureBox::from_string(sig_text)
        .map_err(|e| bad(format!("unreadable signature: {e}")))?;
    let sig_id = key_id(sig.keynum());
    let pk_id = key_id(pk.keynum());
    if sig_id != pk_id {
        return Err(bad(format!("signed by key {sig_id}, the given public key is {pk_id}")));
    }
    minisign::verify(pk, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| bad(e.to_string()))?;
    let comment = sig.trusted_comment().unwrap_or_default();
    Ok((sig_id, comment))
}

/// Checks a detached signature of a whole file (streamed).
pub fn verify_detached(
    file: &Path,
    sig_file: &Path,
    pk: &PublicKey,
) -> Result<String, BundleError> {
    let bad = |detail: String| BundleError::Signature { bundle: sig_file.to_owned(), detail };
    let text =
        fs::read_to_string(sig_file).map_err(|source| io_err("reading", sig_file, source))?;
    let sig =
        SignatureBox::from_string(&text).map_err(|e| bad(format!("unreadable signature: {e}")))?;
    if key_id(sig.keynum()) != key_id(pk.keynum()) {
        return Err(bad(format!(
            "signed by key {}, the given public key is {}",
            key_id(sig.keynum()),
            key_id(pk.keynum())
        )));
    }
    let f = File::open(file).map_err(|source| io_err("reading", file, source))?;
    minisign::verify(pk, &sig, BufReader::new(f), true, false, false).map_err(|e| {
        bad(format!("{e} (the archive {} differs from what was signed)", file.display()))
    })?;
    Ok(sig.trusted_comment().unwrap_or_default())
}

fn entry_path<R: Read>(e: &tar::Entry<'_, R>) -> Result<String, String> {
    let p = e.path().map_err(|e| format!("unreadable path: {e}"))?;
    p.to_str().map(str::to_owned).ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}

fn create_for_extract(dest: &Path) -> Result<File, BundleError> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|source| io_err("creating", dir, source))?;
    }
    let mut opts = OpenOptions::new();
    // create_new: a second entry of the same name (refused above anyway) never overwrites.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(dest).map_err(|source| io_err("creating", dest, source))
}

/// Counts and hashes what passes through to `inner`.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    fn finish(self) -> (u64, String) {
        let (s, h, _) = self.finish_inner();
        (s, h)
    }

    fn finish_inner(self) -> (u64, String, W) {
        (self.size, hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts and hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
