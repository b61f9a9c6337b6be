//! `dwbase bundle keygen|create|verify|install` with the real binaries: a bundle of this
//! build round-trips, Debian's `minisign -V` accepts its signatures (and its keys work with
//! ours), a flipped byte in a file is refused naming the file, and install is all-or-nothing.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{run_with_deadline, Output};

const DEADLINE: Duration = Duration::from_secs(300);

fn dwbase(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dwbase"));
    c.args(args).env_remove("DWBASE_BUNDLE_PASSWORD").env_remove("DWBASE_BUNDLE_SECRET_KEY");
    c.env_remove("DWBASE_BUNDLE_PUBKEY");
    c
}

fn run(cmd: &mut Command) -> Output {
    run_with_deadline(cmd, DEADLINE)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dwbase")).parent().unwrap().to_owned()
}

fn stem() -> String {
    let target = Command::new("rustc").arg("-vV").output().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
    });
    format!("dwbase-{}-{}", env!("CARGO_PKG_VERSION"), target.expect("rustc -vV names the host"))
}

/// Debian's minisign, or None with a printed reason (CI installs it: .ci/run).
fn minisign() -> Option<PathBuf> {
    match Command::new("minisign").arg("-v").output() {
        Ok(o) if o.status.success() => Some(PathBuf::from("minisign")),
        _ if std::env::var_os("CI").is_some() => {
            panic!("minisign is missing in CI; .ci/run installs it (apt-get install -y minisign)")
        }
        _ => {
            eprintln!("SKIPPED the minisign cross-checks: minisign is not installed (apt-get install -y minisign)");
            None
        }
    }
}

/// Every entry of a bundle: (path, mode, bytes).
fn entries(bundle: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let dec = zstd::Decoder::new(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_str().unwrap().to_owned();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, mode, data)
        })
        .collect()
}

/// Writes entries back as a bundle without re-signing (what someone without the key can do).
fn repack(entries: &[(String, u32, Vec<u8>)], out: &Path) {
    let enc = zstd::Encoder::new(std::fs::File::create(out).unwrap(), 1).unwrap();
    let mut tar = tar::Builder::new(enc);
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// `dwbase bundle create` of the repository's files and the programs in `bins`, into `out`.
fn create(sk: &Path, out: &Path, bins: &Path) -> Command {
    let mut c = dwbase(&["bundle", "create", "--level", "1", "--secret-key"]);
    c.arg(sk).arg("--out").arg(out).arg("--bin-dir").arg(bins).arg("--source").arg(repo());
    c
}

fn verify(pk: &Path, bundle: &Path) -> Output {
    run(dwbase(&["bundle", "verify", "--pubkey"]).arg(pk).arg(bundle))
}

fn tree_listing(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(&p, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn bundle_round_trip_minisign_tamper_and_install() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (sk, pk) = (t.join("release.key"), t.join("release.pub"));

    // A password-protected key, password from the environment (as in CI).
    run(dwbase(&["bundle", "keygen", "--secret-key"])
        .arg(&sk)
        .arg("--public-key")
        .arg(&pk)
        .env("DWBASE_BUNDLE_PASSWORD", "correct horse"))
    .ok();
    let key_text = std::fs::read_to_string(&sk).unwrap();
    assert!(!key_text.contains("\n\n"), "{key_text}");

    // Without the password the encrypted key cannot sign, and says how to give one.
    let out = run(&mut create(&sk, t, &bin_dir())).code_is(1);
    assert!(out.stderr.contains("DWBASE_BUNDLE_PASSWORD"), "{out}");

    let out = run(create(&sk, t, &bin_dir()).env("DWBASE_BUNDLE_PASSWORD", "correct horse")).ok();
    let bundle = t.join(format!("{}.tar.zst", stem()));
    assert!(bundle.is_file(), "{out}");
    assert!(t.join(format!("{}.tar.zst.minisig", stem())).is_file(), "{out}");

    // verify: OK, and the JSON names the build.
    let out = run(dwbase(&["bundle", "verify", "--json", "--pubkey"]).arg(&pk).arg(&bundle)).ok();
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["name"], "dwbase");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["git_commit"].as_str().unwrap().len(), 40, "{doc}");
    assert!(doc["files"].as_u64().unwrap() > 20, "{doc}");

    // The manifest lists the programs (the log pipe too), templates, units, container and k8s files and
    // docs, each with size and sha256; no private key of any kind.
    let all = entries(&bundle);
    let top = stem();
    assert_eq!(all[0].0, format!("{top}/MANIFEST.json"));
    assert_eq!(all[1].0, format!("{top}/MANIFEST.json.minisig"));
    let manifest: serde_json::Value = serde_json::from_slice(&all[0].2).unwrap();
    let paths: Vec<&str> =
        manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for want in [
        "bin/dwbase",
        "bin/dwbase-supervisor",
        "bin/dwbase-node",
        "bin/dwbase-logpipe",
        "deploy/edge.toml",
        "deploy/systemd/dwbase-supervisor.service",
        "deploy/docker/Dockerfile",
        "deploy/k8s/base/statefulset.yaml",
        "docs/deployment.md",
        "README.md",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.ends_with(".key")), "{paths:?}");
    let node = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "bin/dwbase-node")
        .unwrap();
    assert_eq!(node["mode"], "0755");
    assert_eq!(
        node["size"].as_u64().unwrap(),
        std::fs::metadata(bin_dir().join("dwbase-node")).unwrap().len()
    );

    // Debian's minisign accepts both signatures, with our public key file as it is.
    if let Some(minisign) = minisign() {
        let out = run(Command::new(&minisign).arg("-Vm").arg(&bundle).arg("-p").arg(&pk)).ok();
        assert!(
            out.stderr.contains("Signature and comment signature verified")
                || out.stdout.contains("verified"),
            "{out}"
        );
        let m = t.join("MANIFEST.json");
        std::fs::write(&m, &all[0].2).unwrap();
        std::fs::write(t.join("MANIFEST.json.minisig"), &all[1].2).unwrap();
        let out = run(Command::new(&minisign).arg("-Vm").arg(&m).arg("-p").arg(&pk)).ok();
        assert!(format!("{out}").contains(&top), "the trusted comment names the bundle\n{out}");
        // ... and refuses a changed manifest.
        let mut changed = all[0].2.clone();
        changed[10] ^= 1;
        std::fs::write(&m, &changed).unwrap();
        assert!(!run(Command::new(&minisign).arg("-Vm").arg(&m).arg("-p").arg(&pk))
            .status
            .success());

        // A key pair made by Debian's minisign signs bundles that dwbase verifies.
        let (msk, mpk) = (t.join("mini.key"), t.join("mini.pub"));
        run(Command::new(&minisign).arg("-G").arg("-W").arg("-s").arg(&msk).arg("-p").arg(&mpk))
            .ok();
        let other = t.join("other");
        std::fs::create_dir(&other).unwrap();
        run(&mut create(&msk, &other, &bin_dir())).ok();
        let ob = other.join(format!("{top}.tar.zst"));
        verify(&mpk, &ob).ok();
        // Our key does not verify their bundle.
        let out = verify(&pk, &ob).code_is(1);
        assert!(out.stderr.contains("signed by key"), "{out}");
    }

    // A flipped byte in a program and in a template, repacked without the key: refused,
    // naming both; the detached signature gone (so the manifest check is what refuses).
    let tampered_dir = t.join("tampered");
    std::fs::create_dir(&tampered_dir).unwrap();
    let tampered = tampered_dir.join(format!("{top}.tar.zst"));
    let mut copy = all.clone();
    for name in ["bin/dwbase-node", "deploy/edge.toml"] {
        let e = copy.iter_mut().find(|e| e.0 == format!("{top}/{name}")).unwrap();
        let at = e.2.len() / 3;
        e.2[at] ^= 0x40;
    }
    repack(&copy, &tampered);
    let out = verify(&pk, &tampered).code_is(1);
    assert!(out.stderr.contains("bin/dwbase-node: sha256"), "{out}");
    assert!(out.stderr.contains("deploy/edge.toml: sha256"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    // With the original detached signature beside it, the files are still named; with only
    // the archive's bytes changed (the content intact), the detached signature refuses.
    let sig = format!("{top}.tar.zst.minisig");
    std::fs::copy(t.join(&sig), tampered_dir.join(&sig)).unwrap();
    let out = verify(&pk, &tampered).code_is(1);
    assert!(out.stderr.contains("bin/dwbase-node: sha256"), "{out}");
    let recompressed = tampered_dir.join("recompressed.tar.zst");
    repack(&all, &recompressed);
    std::fs::copy(t.join(&sig), tampered_dir.join("recompressed.tar.zst.minisig")).unwrap();
    let out = verify(&pk, &recompressed).code_is(1);
    assert!(out.stderr.contains("differs from what was signed"), "{out}");

    // install refuses the tampered bundle and leaves the prefix as it was.
    let prefix = t.join("prefix");
    let out = run(dwbase(&["bundle", "install", "--pubkey"])
        .arg(&pk)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&tampered))
    .code_is(1);
    assert!(out.stderr.contains("dwbase-node"), "{out}");
    assert_eq!(tree_listing(&prefix), vec!["lib".to_owned(), "lib/dwbase".to_owned()], "{out}");
    // ... and a bundle without a key (usage error: never unverified).
    let out = run(dwbase(&["bundle", "install", "--prefix"]).arg(&prefix).arg(&bundle)).code_is(2);
    assert!(out.stderr.contains("--pubkey"), "{out}");

    // install: the programs run from PREFIX/bin, modes are set, templates under share/.
    let out = run(dwbase(&["bundle", "install", "--pubkey"])
        .arg(&pk)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&bundle))
    .ok();
    let v = run(Command::new(prefix.join("bin/dwbase-node")).arg("--version")).ok();
    assert_eq!(v.stdout.trim(), format!("dwbase-node {}", env!("CARGO_PKG_VERSION")), "{out}");
    assert!(prefix.join("share/dwbase/deploy/edge.toml").is_file());
    assert!(prefix.join("share/dwbase/docs/deployment.md").is_file());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &str| std::fs::metadata(prefix.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/dwbase-supervisor"), 0o755);
        // The log pipe sits beside the supervisor it serves (no command of its own on PATH).
        assert_eq!(mode("lib/dwbase/current/bin/dwbase-logpipe"), 0o755);
        assert!(!prefix.join("bin/dwbase-logpipe").exists());
        assert_eq!(mode("share/dwbase/deploy/edge.toml"), 0o644);
        assert_eq!(mode("lib/dwbase/current"), 0o755);
    }
    let installed = std::fs::read_link(prefix.join("lib/dwbase/current")).unwrap();
    assert!(installed.to_string_lossy().starts_with(&top), "{installed:?}");
    assert!(!tree_listing(&prefix.join("lib/dwbase")).iter().any(|p| p.contains(".staging")));

    // Installing again is idempotent; a hand-copied file where a link goes is refused.
    run(dwbase(&["bundle", "install", "--pubkey"])
        .arg(&pk)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&bundle))
    .ok();
    assert_eq!(std::fs::read_link(prefix.join("lib/dwbase/current")).unwrap(), installed);
    std::fs::remove_file(prefix.join("bin/dwbase")).unwrap();
    std::fs::write(prefix.join("bin/dwbase"), b"hand-copied").unwrap();
    let out = run(dwbase(&["bundle", "install", "--pubkey"])
        .arg(&pk)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&bundle))
    .code_is(1);
    assert!(out.stderr.contains("bin/dwbase") && out.stderr.contains("--force"), "{out}");
    run(dwbase(&["bundle", "install", "--force", "--pubkey"])
        .arg(&pk)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&bundle))
    .ok();
    assert!(std::fs::symlink_metadata(prefix.join("bin/dwbase")).unwrap().file_type().is_symlink());
}

/// Small stand-ins for the programs (they answer --version like the real ones), so that
/// the bundle below is small enough to tamper with once per file.
fn stand_in_bins(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bins = dir.join("bins");
    std::fs::create_dir(&bins).unwrap();
    for b in ["dwbase", "dwbase-supervisor", "dwbase-node", "dwbase-logpipe"] {
        let p = bins.join(b);
        std::fs::write(&p, format!("#!/bin/sh\necho {b} {}\n", env!("CARGO_PKG_VERSION"))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bins
}

#[test]
fn a_flipped_byte_in_any_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (sk, pk) = (t.join("k.key"), t.join("k.pub"));
    run(dwbase(&["bundle", "keygen", "--unencrypted", "--secret-key"])
        .arg(&sk)
        .arg("--public-key")
        .arg(&pk))
    .ok();
    let bins = stand_in_bins(t);
    run(&mut create(&sk, t, &bins)).ok();
    let top = stem();
    let bundle = t.join(format!("{top}.tar.zst"));
    verify(&pk, &bundle).ok();
    let all = entries(&bundle);
    assert!(all.len() > 20, "{}", all.len());
    let bad = t.join("bad").join(format!("{top}.tar.zst"));
    std::fs::create_dir(bad.parent().unwrap()).unwrap();

    // Every file of the bundle, one at a time.
    for (i, (path, _, data)) in all.iter().enumerate() {
        if data.is_empty() {
            continue;
        }
        let mut copy = all.clone();
        let at = data.len() / 2;
        copy[i].2[at] ^= 0x01;
        repack(&copy, &bad);
        let out = verify(&pk, &bad).code_is(1);
        let rel = path.strip_prefix(&format!("{top}/")).unwrap();
        match i {
            // The manifest and its signature: the signature no longer verifies.
            0 | 1 => assert!(
                out.stderr.contains("signature does not verify")
                    || out.stderr.contains("not a manifest"),
                "{rel}\n{out}"
            ),
            _ => assert!(out.stderr.contains(&format!("{rel}: sha256")), "{rel}\n{out}"),
        }
    }

    // A file dropped, one added, one twice, and a truncated archive.
    let mut copy = all.clone();
    let dropped = copy.remove(5).0;
    copy.push((format!("{top}/bin/extra"), 0o755, b"#!/bin/sh\n".to_vec()));
    copy.push(all[3].clone());
    repack(&copy, &bad);
    let out = verify(&pk, &bad).code_is(1);
    let dropped = dropped.strip_prefix(&format!("{top}/")).unwrap();
    assert!(out.stderr.contains(&format!("{dropped}: missing")), "{out}");
    assert!(out.stderr.contains("bin/extra: not in the signed manifest"), "{out}");
    assert!(out.stderr.contains("in the archive twice"), "{out}");
    let bytes = std::fs::read(&bundle).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out = verify(&pk, &bad).code_is(1);
    assert!(out.stderr.contains("not a valid bundle"), "{out}");

    // A link or a path out of the top folder is refused, not followed.
    let enc = zstd::Encoder::new(std::fs::File::create(&bad).unwrap(), 1).unwrap();
    let mut tar = tar::Builder::new(enc);
    for (path, mode, data) in &all {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        tar.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(&mut h, format!("{top}/bin/sh"), "/bin/sh").unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let out = verify(&pk, &bad).code_is(1);
    assert!(out.stderr.contains("bin/sh: a Symlink entry"), "{out}");
}
