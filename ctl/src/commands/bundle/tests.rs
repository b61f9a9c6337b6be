//! In-process tests of the archive format over the repository's real deploy/ and docs/ files
//! (tests/bundle.rs drives the CLI: the real binaries, Debian's minisign, tampering).

use std::path::{Path, PathBuf};

use minisign::KeyPair;

use super::archive::{self, BundleError, Input};
use super::manifest::{Manifest, FORMAT};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

struct Made {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    pair: KeyPair,
    manifest: Manifest,
}

/// A bundle of small stand-in programs plus every tracked-looking file of deploy/ and docs/.
fn make_bundle() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let mut inputs = Vec::new();
    for b in super::BINARIES {
        let p = bins.join(b);
        std::fs::write(&p, format!("#!/bin/sh\necho {b} 0.0.0\n")).unwrap();
        inputs.push(Input { source: p, path: format!("bin/{b}"), executable: true });
    }
    for rel in super::walk_source(&repo()).unwrap() {
        if rel.ends_with(".key") || rel.starts_with("deploy/checks/") {
            continue;
        }
        inputs.push(Input { source: repo().join(&rel), path: rel, executable: false });
    }
    let files = archive::hash_inputs(&inputs).unwrap();
    let m = Manifest {
        format: FORMAT,
        name: "dwbase".into(),
        version: "0.0.0".into(),
        target: "x86_64-unknown-linux-gnu".into(),
        git_commit: "0123456789abcdef".into(),
        git_dirty: false,
        created_unix: 1_700_000_000,
        files,
    };
    m.validate().unwrap();
    let pair = KeyPair::generate_unencrypted_keypair().unwrap();
    let bytes = m.to_bytes();
    let sig = archive::sign(&pair.sk, Some(&pair.pk), bytes.as_slice(), "test").unwrap();
    let bundle = dir.path().join(format!("{}.tar.zst", m.stem()));
    archive::write_archive(&bundle, &m, &bytes, &sig, &inputs, 3).unwrap();
    Made { _dir: dir, bundle, pair, manifest: m }
}

#[test]
fn round_trip_extracts_every_file_with_its_mode() {
    let made = make_bundle();
    let v = archive::read_bundle(&made.bundle, &made.pair.pk, None).unwrap();
    assert_eq!(v.manifest, made.manifest);
    assert_eq!(v.trusted_comment, "test");
    assert!(made.manifest.files.iter().any(|f| f.path == "deploy/edge.toml"));
    assert!(made.manifest.files.iter().any(|f| f.path == "docs/deployment.md"));
    assert!(made.manifest.files.iter().any(|f| f.path.starts_with("deploy/k8s/")));
    assert!(made.manifest.files.iter().any(|f| f.path.starts_with("deploy/systemd/")));

    let out = tempfile::tempdir().unwrap();
    archive::read_bundle(&made.bundle, &made.pair.pk, Some(out.path())).unwrap();
    for f in &made.manifest.files {
        let p = out.path().join(&f.path);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(super::manifest::sha256_hex(&bytes), f.sha256, "{}", f.path);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, f.mode_bits().unwrap(), "{}", f.path);
        }
    }
}

#[test]
fn another_key_is_refused_naming_both_ids() {
    let made = make_bundle();
    let other = KeyPair::generate_unencrypted_keypair().unwrap();
    let err = archive::read_bundle(&made.bundle, &other.pk, None).unwrap_err();
    assert!(matches!(err, BundleError::Signature { .. }), "{err}");
    assert!(err.to_string().contains(&super::keys::key_id(made.pair.pk.keynum())), "{err}");
}

#[test]
fn a_secret_key_in_the_source_tree_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("x.txt"), dir.path().join("x.pub"));
    super::keys::generate(&sk, &pk, true, false).unwrap();
    let err = super::refuse_secret_key(&sk).unwrap_err().to_string();
    assert!(err.contains("secret key") && err.contains("x.txt"), "{err}");
    super::refuse_secret_key(&pk).unwrap();
    super::refuse_secret_key(&repo().join("deploy/edge.toml")).unwrap();
}
