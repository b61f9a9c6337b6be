//! `dwbase deploy k8s` with the real binary: one multi-document YAML on stdout for N nodes
//! (replicas, namespace, peers), a kustomization folder with `--out` (built with
//! `kubectl kustomize` when it is installed), and `--nodes 0` refused.

mod support;

use std::io::Write;
use std::process::Command;

use support::dwbase::Deployment;
use yaml_serde::Value;

fn docs(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn check(docs: &[Value], nodes: u64, ns: &str) {
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").expect("a StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(nodes));
    for d in docs {
        if d["kind"] == "Namespace" {
            assert_eq!(d["metadata"]["name"].as_str(), Some(ns));
        } else {
            assert_eq!(d["metadata"]["namespace"].as_str(), Some(ns), "{:?}", d["kind"]);
        }
    }
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_sequence().unwrap();
    let peers = env.iter().find(|e| e["name"] == "DWBASE_SWARM_PEERS").unwrap()["value"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let want: Vec<String> = (0..nodes)
        .map(|i| {
            format!("http://dwbase-{i}.dwbase-headless.$(POD_NAMESPACE).svc.cluster.local:8080")
        })
        .collect();
    assert_eq!(peers, want);
    let pdb = docs.iter().find(|d| d["kind"] == "PodDisruptionBudget").expect("a PDB");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(nodes - 1));
}

#[test]
fn renders_3_and_5_nodes_to_stdout() {
    let d = Deployment::new();
    for (n, ns) in [(3u64, "dwbase"), (5, "swarm-ci")] {
        let o = d.run(&["deploy", "k8s", "--nodes", &n.to_string(), "--namespace", ns]).ok();
        let docs = docs(&o.stdout);
        assert_eq!(docs.len(), 7, "{}", o.stdout);
        check(&docs, n, ns);
        // The API key Secret is not rendered; how to make it is said on stderr.
        assert!(docs.iter().all(|d| d["kind"] != "Secret"));
        assert!(o.stderr.contains("create secret generic dwbase-api-key"), "{o}");
    }
}

#[test]
fn zero_nodes_is_a_usage_error() {
    let d = Deployment::new();
    let o = d.run(&["deploy", "k8s", "--nodes", "0"]).code_is(2);
    assert!(o.stderr.contains("at least 1 node"), "{o}");
    let o = d.run(&["deploy", "k8s", "--namespace", "Not_Valid"]).code_is(2);
    assert!(o.stderr.contains("namespace"), "{o}");
}

#[test]
fn out_writes_a_kustomization_folder() {
    let d = Deployment::new();
    let dir = d.dir.path().join("k8s");
    let o = d
        .run(&[
            "deploy",
            "k8s",
            "--nodes",
            "4",
            "--namespace",
            "ci",
            "--out",
            dir.to_str().unwrap(),
        ])
        .ok();
    assert!(o.stderr.contains(&format!("kubectl apply -k {}", dir.display())), "{o}");
    for f in ["kustomization.yaml", "statefulset.yaml", "node.toml", "namespace.yaml", "pdb.yaml"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) if out.status.success() => {
            let docs = docs(&String::from_utf8(out.stdout).unwrap());
            check(&docs, 4, "ci");
            let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
            let name = cm["metadata"]["name"].as_str().unwrap();
            assert!(name.starts_with("dwbase-config-"), "generated, hashed: {name}");
        }
        Ok(out) => {
            panic!("kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr))
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP building {} with kubectl kustomize: cannot run kubectl: {e}",
                dir.display()
            );
        }
    }
}
