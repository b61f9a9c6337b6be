//! `dwbase deploy k8s`: the Kubernetes manifests for N nodes, rendered from the kustomize base
//! shipped in `deploy/k8s/base` (built in with `include_str!`), either as one multi-document
//! YAML on stdout (`kubectl apply -f`) or as a kustomization folder (`kubectl apply -k`).
//!
//! What the parameters change (deploy/k8s/README.md, "Parameters"), and nothing else:
//! - every object gets `metadata.namespace: NS`, and a `Namespace` NS with the Pod Security
//!   `restricted` labels comes first (not for the built-in namespaces, which exist already
//!   and may hold other workloads);
//! - the StatefulSet's `spec.replicas: N`, and `DWBASE_SWARM_PEERS` = the headless-Service DNS
//!   names of pods 0..N-1 (`$(POD_NAMESPACE)` stays for the kubelet to expand; the entry script
//!   drops the pod's own name);
//! - the image of the `dwbase` container (default `dwbase:<this version>`, as the base's
//!   `images:` entry);
//! - the PodDisruptionBudget: `minAvailable: N-1` (one pod down at a time, as the base's
//!   `maxUnavailable: 1`), but `0` for a single node, whose PDB would otherwise block every
//!   `kubectl drain` of its host;
//! - `base/node.toml` becomes the ConfigMap `dwbase-config` (in a folder: a
//!   `configMapGenerator`, so editing node.toml and applying again rolls the pods).
//!
//! The base's own comments are kept. The `app.kubernetes.io/part-of: dwbase` label that the
//! base's kustomization adds is added the same way, so a render and `kubectl kustomize` of the
//! base describe the same objects. The API key Secret is not rendered (a key must not sit in a
//! file that is easily committed); how to create it is printed on stderr.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::Usage;

/// Largest node count accepted (every pod carries the whole peer list in its environment).
pub const MAX_NODES: u32 = 1000;

const BASE_SERVICEACCOUNT: &str = include_str!("../../../deploy/k8s/base/serviceaccount.yaml");
const BASE_SERVICE_HEADLESS: &str = include_str!("../../../deploy/k8s/base/service-headless.yaml");
const BASE_SERVICE: &str = include_str!("../../../deploy/k8s/base/service.yaml");
const BASE_STATEFULSET: &str = include_str!("../../../deploy/k8s/base/statefulset.yaml");
const BASE_PDB: &str = include_str!("../../../deploy/k8s/base/pdb.yaml");
const BASE_NODE_TOML: &str = include_str!("../../../deploy/k8s/base/node.toml");

/// The label the base's kustomization adds to every object and pod template.
const PART_OF: &str = "app.kubernetes.io/part-of: dwbase";

/// Namespaces every cluster has; a render into one of them does not emit a `Namespace`.
const BUILTIN_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// `dwbase deploy k8s`
#[derive(Debug, Clone, clap::Args)]
pub struct K8sArgs {
    /// Number of nodes: the StatefulSet's replicas, pods dwbase-0 … dwbase-(N-1).
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: u32,
    /// Namespace of every object (created by the render unless it is a built-in one).
    #[arg(long, default_value = "dwbase", value_name = "NS")]
    pub namespace: String,
    /// Write a kustomization folder here (apply with `kubectl apply -k DIR`) instead of one
    /// multi-document YAML on stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Container image of the nodes (default: dwbase:VERSION, this build's version).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// With --out: replace files that exist with other content.
    #[arg(long)]
    pub force: bool,
}

fn parse_nodes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a whole number"))?;
    if n == 0 {
        return Err("a Kubernetes deployment needs at least 1 node (got 0)".into());
    }
    if n > MAX_NODES {
        return Err(format!("{n} nodes is more than {MAX_NODES}"));
    }
    Ok(n)
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSpec {
    /// Replicas (≥ 1).
    pub nodes: u32,
    /// Namespace of every object.
    pub namespace: String,
    /// Image of the `dwbase` container.
    pub image: String,
}

/// One rendered object and the file it goes to in a folder render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// File name in a folder render (`statefulset.yaml`, …).
    pub file: &'static str,
    /// The YAML document (comments included), ending with a newline.
    pub text: String,
}

/// The default image: the base's `images:` entry, `dwbase:<version>`.
pub fn default_image() -> String {
    format!("dwbase:{}", env!("CARGO_PKG_VERSION"))
}

/// `dwbase deploy k8s`.
pub fn run(args: K8sArgs) -> Result<()> {
    let spec = RenderSpec {
        nodes: args.nodes,
        namespace: args.namespace.clone(),
        image: args.image.clone().unwrap_or_else(default_image),
    };
    check_namespace(&spec.namespace).map_err(Usage)?;
    check_image(&spec.image).map_err(Usage)?;
    let manifests = render(&spec)?;
    if BUILTIN_NAMESPACES.contains(&spec.namespace.as_str()) {
        eprintln!(
            "note: {} is a built-in namespace: no Namespace object rendered (its Pod Security \
             labels are left as they are)",
            spec.namespace
        );
    }
    match &args.out {
        None => {
            crate::output::write_stdout(format_args!("{}", multi_document(&spec, &manifests)))?;
            eprintln!("{}", next_steps(&spec, None));
        }
        Some(dir) => {
            let files = folder(&spec, &manifests);
            write_folder(dir, &files, args.force)?;
            for (name, _) in &files {
                crate::outln!("{}", dir.join(name).display())?;
            }
            eprintln!("{}", next_steps(&spec, Some(dir)));
        }
    }
    Ok(())
}

/// A DNS-1123 label, as Kubernetes requires of a namespace name.
fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--namespace {ns:?} is not a valid namespace name: at most 63 lowercase letters, \
             digits and '-', starting and ending with a letter or digit"
        ))
    }
}

fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') {
        return Err(format!("--image {image:?} is not an image reference"));
    }
    Ok(())
}

/// The peer list: every pod's headless-Service URL, `$(POD_NAMESPACE)` kept for the kubelet.
pub fn peers(nodes: u32) -> String {
    (0..nodes)
        .map(|i| {
            format!("http://dwbase-{i}.dwbase-headless.$(POD_NAMESPACE).svc.cluster.local:8080")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The objects for `spec`, in apply order (Namespace first).
pub fn render(spec: &RenderSpec) -> Result<Vec<Manifest>> {
    let ns = &spec.namespace;
    let mut out = Vec::new();
    if !BUILTIN_NAMESPACES.contains(&ns.as_str()) {
        out.push(Manifest { file: "namespace.yaml", text: namespace_doc(ns) });
    }
    for (file, base) in [
        ("serviceaccount.yaml", BASE_SERVICEACCOUNT),
        ("service-headless.yaml", BASE_SERVICE_HEADLESS),
        ("service.yaml", BASE_SERVICE),
    ] {
        let mut d = Doc::new(file, base);
        d.common(ns)?;
        out.push(Manifest { file, text: d.text() });
    }
    out.push(Manifest { file: "configmap.yaml", text: configmap_doc(ns) });

    let mut sts = Doc::new("statefulset.yaml", BASE_STATEFULSET);
    sts.common(ns)?;
    sts.replace("  replicas: 3", format!("  replicas: {}", spec.nodes))?;
    sts.insert_after("      labels:", format!("        {PART_OF}"))?;
    sts.replace("          image: dwbase", format!("          image: {}", quote(&spec.image)))?;
    sts.replace_after(
        "- name: DWBASE_SWARM_PEERS",
        "value: ",
        format!("value: {}", quote(&peers(spec.nodes))),
    )?;
    out.push(Manifest { file: "statefulset.yaml", text: sts.text() });

    let mut pdb = Doc::new("pdb.yaml", BASE_PDB);
    pdb.common(ns)?;
    let budget = if spec.nodes == 1 {
        "  # One node: minAvailable 0, so that draining its host can evict it (a budget of 1 would\n  \
         # block `kubectl drain` forever); expect downtime while it moves.\n  minAvailable: 0"
            .to_owned()
    } else {
        format!(
            "  # {n} nodes: at most one down at a time for voluntary disruptions.\n  minAvailable: {m}",
            n = spec.nodes,
            m = spec.nodes - 1
        )
    };
    pdb.replace("  maxUnavailable: 1", budget)?;
    out.push(Manifest { file: "pdb.yaml", text: pdb.text() });
    Ok(out)
}

fn namespace_doc(ns: &str) -> String {
    format!(
        "# The namespace, enforcing the restricted Pod Security Standard the pods meet.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    {PART_OF}\n    \
         pod-security.kubernetes.io/enforce: restricted\n    \
         pod-security.kubernetes.io/enforce-version: latest\n"
    )
}

fn configmap_doc(ns: &str) -> String {
    let mut text = format!(
        "# base/node.toml, mounted in every pod at /etc/dwbase/node.toml.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dwbase-config\n  namespace: {ns}\n  \
         labels:\n    {PART_OF}\ndata:\n  node.toml: |\n"
    );
    for line in BASE_NODE_TOML.lines() {
        if line.is_empty() {
            text.push('\n');
        } else {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// A YAML double-quoted scalar (the inputs have no control characters).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn command_line(spec: &RenderSpec) -> String {
    let mut cmd =
        format!("dwbase deploy k8s --nodes {} --namespace {}", spec.nodes, spec.namespace);
    if spec.image != default_image() {
        cmd.push_str(&format!(" --image {}", spec.image));
    }
    cmd
}

/// The first two comment lines of every render: what it holds and the command that made it.
fn banner(spec: &RenderSpec, extra_args: &str) -> String {
    format!(
        "# DWBase on Kubernetes: {n} node{s} in namespace {ns}, image {image}.\n\
         # Rendered by `{cmd}{extra_args}` (dwbase {v}) from deploy/k8s/base.\n",
        n = spec.nodes,
        s = if spec.nodes == 1 { "" } else { "s" },
        ns = spec.namespace,
        image = spec.image,
        cmd = command_line(spec),
        v = env!("CARGO_PKG_VERSION"),
    )
}

/// One multi-document YAML: a header comment, then every object after a `---`.
pub fn multi_document(spec: &RenderSpec, manifests: &[Manifest]) -> String {
    let mut text = format!(
        "{}# Apply with `kubectl apply -f FILE`; the pods also need the Secret dwbase-api-key\n\
         # (key api-key) in {ns}: see deploy/k8s/README.md.\n",
        banner(spec, ""),
        ns = spec.namespace,
    );
    for m in manifests {
        text.push_str("---\n");
        text.push_str(&m.text);
    }
    text
}

/// The files of a folder render: the objects (the ConfigMap as `node.toml` plus a generator)
/// and a `kustomization.yaml`.
pub fn folder(spec: &RenderSpec, manifests: &[Manifest]) -> Vec<(&'static str, String)> {
    let mut files: Vec<(&'static str, String)> = Vec::new();
    let mut resources = String::new();
    for m in manifests.iter().filter(|m| m.file != "configmap.yaml") {
        resources.push_str(&format!("  - {}\n", m.file));
        files.push((m.file, m.text.clone()));
    }
    files.push(("node.toml", BASE_NODE_TOML.to_owned()));
    let kustomization = format!(
        "{banner}\
         # Look: kubectl kustomize DIR     Apply: kubectl apply -k DIR\n\
         # node.toml becomes the ConfigMap dwbase-config-<hash>: edit it and apply again to roll\n\
         # the pods. The Secret dwbase-api-key (key api-key) is not here: see deploy/k8s/README.md.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n{resources}\
         configMapGenerator:\n  - name: dwbase-config\n    namespace: {ns}\n    files:\n      - node.toml\n    \
         options:\n      labels:\n        {PART_OF}\n",
        banner = banner(spec, " --out DIR"),
        ns = spec.namespace,
    );
    files.push(("kustomization.yaml", kustomization));
    files
}

/// Writes the files into `dir`; a file that exists with other content is an error unless
/// `force`. Every file is checked before any is written.
fn write_folder(dir: &Path, files: &[(&'static str, String)], force: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Usage(format!("--out {}: exists and is not a folder", dir.display())).into());
    }
    let differing: Vec<String> = files
        .iter()
        .filter(|(name, text)| {
            std::fs::read(dir.join(name)).is_ok_and(|old| old != text.as_bytes())
        })
        .map(|(name, _)| (*name).to_owned())
        .collect();
    if !differing.is_empty() && !force {
        bail!(
            "{} already holds {} with other content; pass --force to replace {}, or choose \
             another --out folder",
            dir.display(),
            differing.join(", "),
            if differing.len() == 1 { "it" } else { "them" }
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn next_steps(spec: &RenderSpec, dir: Option<&Path>) -> String {
    let apply = match dir {
        None => "kubectl apply -f FILE   (this output, saved)".to_owned(),
        Some(d) => format!("kubectl apply -k {}", d.display()),
    };
    format!(
        "next:\n  {apply}\n  kubectl -n {ns} create secret generic dwbase-api-key \
         --from-literal=api-key=\"$(openssl rand -hex 32)\"   (the pods wait for it)\n  \
         kubectl -n {ns} rollout status statefulset/dwbase",
        ns = spec.namespace
    )
}

/// A base file as lines, edited by exact-line anchors. Every edit must find its anchor exactly
/// once, so a change of the base that an edit no longer fits is an error (and a failing
/// test), never a silently wrong render.
struct Doc {
    file: &'static str,
    lines: Vec<String>,
}

impl Doc {
    fn new(file: &'static str, text: &str) -> Self {
        Self { file, lines: text.lines().map(str::to_owned).collect() }
    }

    fn find(&self, pred: impl Fn(&str) -> bool, what: &str) -> Result<usize> {
        let hits: Vec<usize> =
            self.lines.iter().enumerate().filter(|(_, l)| pred(l)).map(|(i, _)| i).collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            _ => Err(anyhow!(
                "deploy/k8s/base/{}: expected exactly one line {what}, found {}: the built-in \
                 base changed in a way ctl/src/k8s.rs does not know",
                self.file,
                hits.len()
            )),
        }
    }

    fn replace(&mut self, exact: &str, with: String) -> Result<()> {
        let i = self.find(|l| l == exact, &format!("{exact:?}"))?;
        self.lines[i] = with;
        Ok(())
    }

    fn insert_after(&mut self, exact: &str, line: String) -> Result<()> {
        let i = self.find(|l| l == exact, &format!("{exact:?}"))?;
        self.lines.insert(i + 1, line);
        Ok(())
    }

    /// Replaces the line right after the one whose trimmed text is `anchor`; that line's
    /// trimmed text must start with `prefix`; its indentation is kept.
    fn replace_after(&mut self, anchor: &str, prefix: &str, with: String) -> Result<()> {
        let i = self.find(|l| l.trim() == anchor, &format!("{anchor:?}"))?;
        let next = self
            .lines
            .get(i + 1)
            .ok_or_else(|| anyhow!("{}: nothing after {anchor:?}", self.file))?;
        if !next.trim_start().starts_with(prefix) {
            bail!("deploy/k8s/base/{}: the line after {anchor:?} is not {prefix:?}…", self.file);
        }
        let indent = &next[..next.len() - next.trim_start().len()];
        self.lines[i + 1] = format!("{indent}{with}");
        Ok(())
    }

    /// What every object gets: the namespace and the part-of label in its top-level metadata.
    fn common(&mut self, ns: &str) -> Result<()> {
        self.insert_after("metadata:", format!("  namespace: {ns}"))?;
        self.insert_after("  labels:", format!("    {PART_OF}"))
    }

    fn text(&self) -> String {
        let mut t = self.lines.join("\n");
        t.push('\n');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_serde::Value;

    fn spec(nodes: u32, ns: &str) -> RenderSpec {
        RenderSpec { nodes, namespace: ns.into(), image: default_image() }
    }

    fn docs(text: &str) -> Vec<Value> {
        yaml_serde::Deserializer::from_str(text)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
            .filter(|v| !v.is_null())
            .collect()
    }

    fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
    }

    fn env<'a>(sts: &'a Value, name: &str) -> &'a Value {
        sts["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    }

    fn check(nodes: u32, ns: &str) {
        let s = spec(nodes, ns);
        let text = multi_document(&s, &render(&s).unwrap());
        let docs = docs(&text);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "Service",
                "Service",
                "ConfigMap",
                "StatefulSet",
                "PodDisruptionBudget"
            ]
        );
        assert_eq!(kind(&docs, "Namespace")["metadata"]["name"], Value::from(ns));
        assert_eq!(
            kind(&docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            Value::from("restricted")
        );
        for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
            assert_eq!(d["metadata"]["namespace"], Value::from(ns), "{:?}", d["kind"]);
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/part-of"],
                Value::from("dwbase"),
                "{:?}",
                d["kind"]
            );
        }
        let sts = kind(&docs, "StatefulSet");
        assert_eq!(sts["spec"]["replicas"], Value::from(nodes));
        assert_eq!(sts["spec"]["serviceName"], Value::from("dwbase-headless"));
        let container = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], Value::from(default_image()));
        let peers: Vec<String> = env(sts, "DWBASE_SWARM_PEERS")["value"]
            .as_str()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = (0..nodes)
            .map(|i| {
                format!("http://dwbase-{i}.dwbase-headless.$(POD_NAMESPACE).svc.cluster.local:8080")
            })
            .collect();
        assert_eq!(peers, want);
        // $(POD_NAMESPACE) is only expanded when POD_NAMESPACE comes first.
        let names: Vec<&str> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("POD_NAMESPACE") < pos("DWBASE_SWARM_PEERS"));
        // Selectors untouched, pod template labelled like kustomize does.
        let labels = &sts["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/part-of"], Value::from("dwbase"));
        assert!(sts["spec"]["selector"]["matchLabels"]["app.kubernetes.io/part-of"].is_null());
        let pdb = kind(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"]["minAvailable"], Value::from(nodes - 1));
        assert!(pdb["spec"]["maxUnavailable"].is_null());
        let cm = kind(&docs, "ConfigMap");
        assert_eq!(cm["metadata"]["name"], Value::from("dwbase-config"));
        assert_eq!(cm["data"]["node.toml"].as_str().unwrap(), BASE_NODE_TOML);
        let volume_cm = sts["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .unwrap();
        assert_eq!(volume_cm, "dwbase-config");
    }

    #[test]
    fn renders_three_and_five_nodes() {
        check(3, "dwbase");
        check(5, "swarm-test");
    }

    #[test]
    fn one_node_gets_a_budget_that_does_not_block_drains() {
        let s = spec(1, "edge");
        let docs = docs(&multi_document(&s, &render(&s).unwrap()));
        assert_eq!(kind(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], Value::from(0));
        assert_eq!(kind(&docs, "StatefulSet")["spec"]["replicas"], Value::from(1));
    }

    #[test]
    fn builtin_namespaces_get_no_namespace_object() {
        let s = spec(2, "default");
        let docs = docs(&multi_document(&s, &render(&s).unwrap()));
        assert!(docs.iter().all(|d| d["kind"] != "Namespace"));
        assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "default"));
    }

    #[test]
    fn the_image_is_set_and_quoted() {
        let s = RenderSpec { image: "registry.example.com/dwbase:1.2.3".into(), ..spec(2, "x") };
        let docs = docs(&multi_document(&s, &render(&s).unwrap()));
        let sts = kind(&docs, "StatefulSet");
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["image"],
            Value::from("registry.example.com/dwbase:1.2.3")
        );
    }

    #[test]
    fn default_image_matches_the_base_kustomization() {
        let k = include_str!("../../../deploy/k8s/base/kustomization.yaml");
        let doc: Value = yaml_serde::from_str(k).unwrap();
        let tag = doc["images"][0]["newTag"].as_str().unwrap();
        assert_eq!(default_image(), format!("dwbase:{tag}"));
    }

    #[test]
    fn bad_names_and_counts_are_refused() {
        assert!(parse_nodes("0").unwrap_err().contains("at least 1 node"));
        assert!(parse_nodes("1001").is_err());
        assert_eq!(parse_nodes("4"), Ok(4));
        for bad in ["", "Dwbase", "-x", "x-", "a_b", &"a".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
        assert!(check_namespace("dwbase-ci-1").is_ok());
        assert!(check_image("a b").is_err() && check_image("").is_err());
    }

    #[test]
    fn folder_render_is_a_kustomization_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k8s");
        let s = spec(4, "ci");
        let files = folder(&s, &render(&s).unwrap());
        write_folder(&out, &files, false).unwrap();
        let k: Value =
            yaml_serde::from_str(&std::fs::read_to_string(out.join("kustomization.yaml")).unwrap())
                .unwrap();
        let resources: Vec<&str> =
            k["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        for r in &resources {
            assert!(out.join(r).is_file(), "{r}");
        }
        assert!(!resources.contains(&"configmap.yaml"));
        assert_eq!(k["configMapGenerator"][0]["name"], Value::from("dwbase-config"));
        assert_eq!(std::fs::read_to_string(out.join("node.toml")).unwrap(), BASE_NODE_TOML);
        // The same render again is fine; another one is refused without --force.
        write_folder(&out, &files, false).unwrap();
        let other = folder(&spec(5, "ci"), &render(&spec(5, "ci")).unwrap());
        let err = write_folder(&out, &other, false).unwrap_err().to_string();
        assert!(err.contains("statefulset.yaml") && err.contains("--force"), "{err}");
        write_folder(&out, &other, true).unwrap();
        assert!(std::fs::read_to_string(out.join("statefulset.yaml"))
            .unwrap()
            .contains("replicas: 5"));
    }
}
