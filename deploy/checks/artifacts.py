#!/usr/bin/env python3
"""Semantic checks on the deploy/ artifacts, called by scripts/check-artifacts.sh.

The real tools (promtool, hadolint, systemd-analyze, docker compose, kubectl kustomize,
kubernetes-validate) check syntax and schemas; this file checks what they cannot know: that the
templates use exactly the node's config keys, that the compose devnet's peers are the other
nodes, that a StatefulSet's peer list matches its replica count, that the dashboard only queries
metrics DWBase exports, and so on. Each subcommand prints its problems and exits 1 on any.

Needs Python >= 3.11 (tomllib) and PyYAML (installed with kubernetes-validate).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import plistlib
import re
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# The contract (docs/deployment.md and node/src/config.rs)

# Every accepted config key and its type, mirrored from node/src/config.rs SCHEMA.
SCHEMA: dict[str, str] = {
    "node": "table",
    "node.id": "str",
    "node.listen": "str",
    "node.data_dir": "str",
    "node.log_dir": "str",
    "node.summaries_dir": "str",
    "node.embedder": "str",
    "node.security": "table",
    "node.security.read_worlds": "strarray",
    "node.security.write_worlds": "strarray",
    "node.security.importance_cap": "number",
    "node.security.remember_per_sec": "number",
    "node.security.ask_per_min": "number",
    "node.security.api_key": "str",
    "node.security.api_key_file": "str",
    "node.security.allow_insecure": "bool",
    "node.security.max_body_bytes": "uint",
    "node.health": "table",
    "node.health.disk_usage_degraded": "number",
    "node.health.index_rebuild_warn_seconds": "uint",
    "node.storage": "table",
    "node.storage.encryption_enabled": "bool",
    "node.storage.key_id": "str",
    "node.limits": "table",
    "node.limits.max_ram_mb": "uint",
    "node.limits.max_disk_mb": "uint",
    "node.limits.max_connections": "uint",
    "node.limits.header_timeout_secs": "uint",
    "node.limits.body_timeout_secs": "uint",
    "node.limits.min_free_mb": "uint",
    "node.limits.ballast_mb": "uint",
    "node.limits.stall_exit_secs": "uint",
    "node.swarm": "table",
    "node.swarm.enabled": "bool",
    "node.swarm.peers": "strarray",
    "node.swarm.ca_file": "str",
    "node.swarm.cert_file": "str",
    "node.swarm.key_file": "str",
    "node.tls": "table",
    "node.tls.cert_file": "str",
    "node.tls.key_file": "str",
    "node.tls.client_ca_file": "str",
}

ENV_VARS = [
    "DWBASE_DATA_DIR",
    "DWBASE_MAX_RAM_MB",
    "DWBASE_MAX_DISK_MB",
    "DWBASE_LISTEN",
    "DWBASE_NODE_ID",
    "DWBASE_API_KEY",
    "DWBASE_SWARM_ENABLED",
    "DWBASE_SWARM_PEERS",
]

NODE_METRICS = {
    "dwbase_http_requests_total": "counter",
    "dwbase_remember_latency_seconds": "histogram",
    "dwbase_ask_latency_seconds": "histogram",
    "dwbase_replay_latency_seconds": "histogram",
    "dwbase_atoms_stored": "gauge",
    "dwbase_worlds": "gauge",
    "dwbase_disk_used_bytes": "gauge",
    "dwbase_disk_total_bytes": "gauge",
    "dwbase_disk_used_percent": "gauge",
    "dwbase_data_dir_bytes": "gauge",
    "dwbase_disk_cap_bytes": "gauge",
    "dwbase_memory_cap_bytes": "gauge",
    "dwbase_index_docs": "gauge",
    "dwbase_index_terms": "gauge",
    "dwbase_index_freshness_seconds": "gauge",
    "dwbase_ready": "gauge",
    "dwbase_uptime_seconds": "gauge",
    "dwbase_rate_limited_total": "counter",
    "dwbase_refused_total": "counter",
    "dwbase_swarm_pushes_total": "counter",
    "dwbase_build_info": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
}

SUPERVISOR_METRICS = {
    "dwbase_supervisor_node_up": "gauge",
    "dwbase_supervisor_node_ready": "gauge",
    "dwbase_supervisor_node_desired_running": "gauge",
    "dwbase_supervisor_node_last_exit_code": "gauge",
    "dwbase_supervisor_node_crash_loop": "gauge",
    "dwbase_supervisor_node_uptime_seconds": "gauge",
    "dwbase_supervisor_uptime_seconds": "gauge",
    "dwbase_supervisor_connected_clients": "gauge",
    "dwbase_supervisor_event_streams": "gauge",
    "dwbase_supervisor_node_restarts_total": "counter",
    "dwbase_supervisor_requests_total": "counter",
    "dwbase_supervisor_node_exits_total": "counter",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
}

# Series that exist only after an event (the supervisor exports a node's last exit code once the
# node has exited); checked after the kill -9 in the end-to-end test instead.
APPEAR_LATER = {"dwbase_supervisor_node_last_exit_code"}


class Problems:
    """Collects problems; `done()` prints them and returns the exit code."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.add(msg)

    def done(self) -> int:
        for item in self.items:
            print(f"  {self.what}: {item}")
        if not self.items:
            print(f"  {self.what}: ok")
        return 1 if self.items else 0


def load_yaml_docs(path: str) -> list[dict]:
    import yaml  # PyYAML, from the tools venv

    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------------------------------------
# templates: the node config files


def _kind_ok(kind: str, value: object) -> bool:
    if kind == "table":
        return isinstance(value, dict)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "uint":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "strarray":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(kind)


def _walk(p: Problems, name: str, prefix: str, table: dict) -> None:
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        kind = SCHEMA.get(path)
        if kind is None:
            p.add(f"{name}: unknown key {path}")
            continue
        if not _kind_ok(kind, value):
            p.add(f"{name}: {path} should be {kind}, is {value!r}")
            continue
        if kind == "table":
            _walk(p, name, path, value)


def _get(cfg: dict, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


# What each shipped template must say (issue 5). key_from_env: the key comes from DWBASE_API_KEY.
TEMPLATES = {
    "deploy/local.toml": {
        "values": {
            "node.listen": "127.0.0.1:8080",
            "node.security.remember_per_sec": 10,
            "node.security.ask_per_min": 60,
            "node.swarm.enabled": False,
        },
        "data_suffix": ".dwbase/local/data",
    },
    "deploy/devnet.toml": {
        "values": {
            "node.security.remember_per_sec": 20,
            "node.security.ask_per_min": 120,
            "node.swarm.enabled": True,
        },
    },
    "deploy/edge.toml": {
        "values": {
            "node.listen": "0.0.0.0:8080",
            "node.security.importance_cap": 0.8,
            "node.security.remember_per_sec": 2,
            "node.security.ask_per_min": 30,
            "node.health.disk_usage_degraded": 0.85,
            "node.swarm.enabled": False,
            "node.security.allow_insecure": False,
        },
        "data_suffix": ".dwbase/edge/data",
        "caps": True,
        "needs_key_file": True,
    },
    "deploy/docker/node.toml": {"key_from_env": True, "values": {"node.security.allow_insecure": False}},
    "deploy/docker/devnet.toml": {"values": {"node.swarm.enabled": True}},
    "deploy/k8s/base/node.toml": {"key_from_env": True, "values": {"node.security.allow_insecure": False}},
}

HEADER_TOPICS = {
    "storage paths": r"storage",
    "memory limits": r"memory",
    "disk limits": r"disk",
    "network ports": r"port",
    "swarm": r"swarm",
    "offline mode": r"offline",
}


def cmd_templates(args: argparse.Namespace) -> int:
    p = Problems("templates")
    root = Path(args.root)
    # The mirror above must not drift from the node's own schema.
    rust = root / "node/src/config.rs"
    if rust.is_file():
        theirs = dict(re.findall(r'\("(node[a-z_.]*)",\s*Kind::(\w+)\)', rust.read_text(encoding="utf-8")))
        if theirs:
            for key in sorted(set(theirs) ^ set(SCHEMA)):
                side = "node/src/config.rs" if key in theirs else "deploy/checks/artifacts.py"
                p.add(f"schema drift: {key} only in {side}")
    for rel, expect in TEMPLATES.items():
        path = root / rel
        if not path.is_file():
            p.add(f"{rel}: missing")
            continue
        text = path.read_text(encoding="utf-8")
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            p.add(f"{rel}: TOML syntax: {e}")
            continue
        _walk(p, rel, "", cfg)
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#")).lower()
        for topic, pattern in HEADER_TOPICS.items():
            p.check(re.search(pattern, comments) is not None, f"{rel}: comments do not document {topic}")
        for key, want in expect.get("values", {}).items():
            got = _get(cfg, key)
            p.check(got == want, f"{rel}: {key} = {got!r}, expected {want!r}")
        listen = _get(cfg, "node.listen") or "127.0.0.1:8080"
        host = listen.rsplit(":", 1)[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            p.add(f"{rel}: node.listen {listen!r} is not IP:port")
            loopback = True
        has_key = _get(cfg, "node.security.api_key") is not None or _get(cfg, "node.security.api_key_file") is not None
        insecure = _get(cfg, "node.security.allow_insecure") is True
        if not loopback and not (has_key or insecure or expect.get("key_from_env")):
            p.add(f"{rel}: listens on {listen} with no api_key/api_key_file and allow_insecure unset")
        if _get(cfg, "node.security.api_key") is not None and _get(cfg, "node.security.api_key_file") is not None:
            p.add(f"{rel}: api_key and api_key_file are exclusive")
        if _get(cfg, "node.security.api_key") is not None:
            p.add(f"{rel}: ships a literal api_key; use api_key_file or DWBASE_API_KEY")
        if expect.get("needs_key_file"):
            p.check(_get(cfg, "node.security.api_key_file") is not None, f"{rel}: no api_key_file")
        if "data_suffix" in expect:
            d = _get(cfg, "node.data_dir") or ""
            p.check(d.endswith(expect["data_suffix"]), f"{rel}: data_dir {d!r} is not under {expect['data_suffix']}")
        if expect.get("caps"):
            for key in ("node.limits.max_ram_mb", "node.limits.max_disk_mb"):
                v = _get(cfg, key)
                p.check(isinstance(v, int) and v > 0, f"{rel}: {key} must be set (> 0), is {v!r}")
        cap = _get(cfg, "node.security.importance_cap")
        if cap is not None:
            p.check(0.0 <= cap <= 1.0, f"{rel}: importance_cap {cap} outside 0..1")
        deg = _get(cfg, "node.health.disk_usage_degraded")
        if deg is not None:
            p.check(0.0 < deg <= 1.0, f"{rel}: disk_usage_degraded {deg} outside 0..1")
        for peer in _get(cfg, "node.swarm.peers") or []:
            p.check(re.match(r"^https?://[^/]+(:\d+)?/?$", peer) is not None, f"{rel}: peer {peer!r} is not a base URL")
    return p.done()


# ---------------------------------------------------------------------------------------------
# compose


def cmd_compose(args: argparse.Namespace) -> int:
    p = Problems("compose")
    cfg = json.loads(Path(args.config_json).read_text(encoding="utf-8"))
    services = cfg.get("services", {})
    nodes = ["node-a", "node-b", "node-c"]
    for name in nodes + ["prometheus"]:
        p.check(name in services, f"service {name} missing")
    named_volumes = set((cfg.get("volumes") or {}).keys())
    for name in nodes:
        svc = services.get(name)
        if not svc:
            continue
        env = svc.get("environment") or {}
        p.check(env.get("DWBASE_NODE_ID") == name, f"{name}: DWBASE_NODE_ID is {env.get('DWBASE_NODE_ID')!r}")
        scheme = "https" if args.tls else "http"
        want = {f"{scheme}://{o}:8080" for o in nodes if o != name}
        got = set(filter(None, (env.get("DWBASE_SWARM_PEERS") or "").split(",")))
        p.check(got == want, f"{name}: DWBASE_SWARM_PEERS {sorted(got)} != the other two nodes {sorted(want)}")
        p.check(str(env.get("DWBASE_SWARM_ENABLED", "")).lower() in ("true", "1"), f"{name}: swarm not enabled")
        p.check(bool(svc.get("healthcheck", {}).get("test")), f"{name}: no healthcheck")
        p.check("/healthz" in json.dumps(svc.get("healthcheck", {})), f"{name}: healthcheck does not probe /healthz")
        vols = svc.get("volumes") or []
        if args.tls:
            for var in ("DWBASE_TLS_CERT", "DWBASE_TLS_KEY", "DWBASE_SWARM_CA"):
                path = env.get(var) or ""
                mount = next((v for v in vols if v.get("type") == "bind" and path.startswith(v.get("target", "") + "/")), None)
                if mount is None:
                    p.add(f"{name}: {var}={path!r} is not in a bind-mounted folder")
                    continue
                p.check(bool(mount.get("read_only")), f"{name}: the TLS folder {mount['target']} is not mounted read-only")
                local = os.path.join(mount["source"], path[len(mount["target"]) + 1:])
                p.check(os.path.isfile(local), f"{name}: {var} file {local} does not exist")
            p.check("= 400" in json.dumps(svc.get("healthcheck", {})), f"{name}: the TLS healthcheck does not expect the plain-HTTP 400")
        else:
            p.check("DWBASE_TLS_CERT" not in env, f"{name}: DWBASE_TLS_CERT set without --tls")
        data = [v for v in vols if v.get("target") == "/var/lib/dwbase"]
        p.check(
            len(data) == 1 and data[0].get("type") == "volume" and data[0].get("source") in named_volumes,
            f"{name}: /var/lib/dwbase is not a named volume",
        )
        for port in svc.get("ports") or []:
            p.check(port.get("host_ip") == "127.0.0.1", f"{name}: port {port.get('published')} published beyond 127.0.0.1")
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            if v.get("type") == "bind":
                p.check(os.path.exists(v["source"]), f"{name}: bind source {v['source']} does not exist")
    prom = services.get("prometheus") or {}
    p.check(
        any(v.get("target") == "/etc/prometheus/prometheus.yml" for v in prom.get("volumes") or []),
        "prometheus: no mounted /etc/prometheus/prometheus.yml",
    )
    p.check(bool(prom.get("healthcheck", {}).get("test")), "prometheus: no healthcheck")
    return p.done()


# ---------------------------------------------------------------------------------------------
# launchd


def cmd_plist(args: argparse.Namespace) -> int:
    p = Problems("plist")
    with open(args.plist, "rb") as f:
        d = plistlib.load(f)
    p.check(d.get("Label") == "io.dwbase.supervisor", f"Label is {d.get('Label')!r}")
    pa = d.get("ProgramArguments")
    p.check(isinstance(pa, list) and pa and all(isinstance(a, str) for a in pa), "ProgramArguments must be a list of strings")
    joined = " ".join(pa or [])
    for needle in ("dwbase-supervisor", " run ", "--root", "--foreground"):
        p.check(needle in joined, f"ProgramArguments lack {needle.strip()!r}")
    ka = d.get("KeepAlive")
    p.check(ka is True or isinstance(ka, dict), "KeepAlive missing")
    p.check(d.get("RunAtLoad") is True, "RunAtLoad should be true")
    for key in ("UserName", "GroupName"):
        p.check(key not in d, f"{key} set: not valid in a user agent")
    p.check(d.get("AbandonProcessGroup") is True, "AbandonProcessGroup should be true (nodes outlive a supervisor crash)")
    known = {
        "Label", "ProgramArguments", "Program", "EnvironmentVariables", "RunAtLoad", "KeepAlive",
        "ThrottleInterval", "AbandonProcessGroup", "ExitTimeOut", "ProcessType", "Umask",
        "SoftResourceLimits", "HardResourceLimits", "StandardOutPath", "StandardErrorPath",
        "WorkingDirectory",
    }
    for key in d:
        p.check(key in known, f"unexpected key {key}")
    if args.emit_shell and isinstance(pa, list) and len(pa) >= 3 and pa[0] == "/bin/sh" and pa[1] == "-c":
        Path(args.emit_shell).write_text("#!/bin/sh\n" + pa[2] + "\n", encoding="utf-8")
    return p.done()


# ---------------------------------------------------------------------------------------------
# grafana


def cmd_grafana(args: argparse.Namespace) -> int:
    p = Problems("grafana")
    d = json.loads(Path(args.dashboard).read_text(encoding="utf-8"))
    p.check(bool(d.get("title")) and bool(d.get("uid")), "title/uid missing")
    p.check(isinstance(d.get("schemaVersion"), int), "schemaVersion missing")
    ids: set[int] = set()
    exprs: list[tuple[str, str]] = []

    def panels(ps):
        for panel in ps:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(d.get("panels") or []):
        pid = panel.get("id")
        p.check(pid not in ids, f"duplicate panel id {pid}")
        ids.add(pid)
        g = panel.get("gridPos") or {}
        p.check(all(k in g for k in ("h", "w", "x", "y")), f"panel {pid}: gridPos incomplete")
        p.check(g.get("x", 0) + g.get("w", 0) <= 24, f"panel {pid}: wider than the 24-column grid")
        for t in panel.get("targets") or []:
            exprs.append((f"panel {pid} {panel.get('title')!r} {t.get('refId')}", t.get("expr", "")))
    p.check(bool(exprs), "no queries")
    known = set(NODE_METRICS) | set(SUPERVISOR_METRICS) | {"up"}
    for name in re.findall(r"\bup\{[^}]*\}", "\n".join(e for _, e in exprs)):
        p.check("job=" not in name, f"`{name}` selects by job: use the app_kubernetes_io_* labels (alerts.yml)")
    rules = []
    for i, (where, expr) in enumerate(exprs):
        for name in set(re.findall(r"\b(dwbase_[a-z0-9_]+|process_[a-z0-9_]+|up)\b", expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            p.check(name in known or base in known, f"{where}: unknown metric {name}")
        # Grafana's variables → values promtool can parse.
        concrete = (
            expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m").replace("$instance", ".*")
        )
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete})
    if args.rules_out:
        Path(args.rules_out).write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1), encoding="utf-8")
    return p.done()


# ---------------------------------------------------------------------------------------------
# kubernetes


PEER_RE = re.compile(r"^(?:http|https)://dwbase-(\d+)\.dwbase-headless\.(\$\(POD_NAMESPACE\)|[a-z0-9-]+)\.svc\.cluster\.local:8080$")


def cmd_k8s(args: argparse.Namespace) -> int:
    p = Problems(f"k8s {args.label}")
    docs = load_yaml_docs(args.built)
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind", "?"), []).append(d)
    for kind in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"):
        p.check(kind in by_kind, f"no {kind}")
    namespaces = {d["metadata"].get("namespace") for d in docs if d.get("kind") != "Namespace"}
    p.check(len(namespaces) == 1 and None not in namespaces, f"objects are in namespaces {namespaces}")
    ns = next(iter(namespaces)) if len(namespaces) == 1 else None
    if args.namespace:
        p.check(ns == args.namespace, f"namespace is {ns}, expected {args.namespace}")
    for n in by_kind.get("Namespace", []):
        p.check(n["metadata"]["name"] == ns, f"Namespace object {n['metadata']['name']} != {ns}")
    names = {(d.get("kind"), d["metadata"]["name"]) for d in docs}
    sts_list = by_kind.get("StatefulSet", [])
    if len(sts_list) != 1:
        p.add(f"expected one StatefulSet, found {len(sts_list)}")
        return p.done()
    sts = sts_list[0]
    spec = sts["spec"]
    replicas = spec.get("replicas")
    if args.replicas is not None:
        p.check(replicas == args.replicas, f"replicas {replicas}, expected {args.replicas}")
    p.check(sts["metadata"]["name"] == "dwbase", "StatefulSet is not named dwbase")
    p.check(spec.get("serviceName") == "dwbase-headless", "serviceName is not dwbase-headless")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get("dwbase-headless")
    p.check(headless is not None and headless["spec"].get("clusterIP") == "None", "headless Service dwbase-headless missing or not headless")
    p.check("dwbase" in services, "client Service dwbase missing")
    pod_labels = spec["template"]["metadata"].get("labels", {})
    sel = spec["selector"]["matchLabels"]
    p.check(all(pod_labels.get(k) == v for k, v in sel.items()), "StatefulSet selector does not match pod labels")
    for s in services.values():
        ssel = s["spec"].get("selector", {})
        p.check(all(pod_labels.get(k) == v for k, v in ssel.items()), f"Service {s['metadata']['name']} selector does not match pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        for key in ("maxUnavailable", "minAvailable"):
            v = pdb["spec"].get(key)
            if v is not None:
                p.check(isinstance(v, int) or re.fullmatch(r"\d+%", str(v)) is not None, f"PDB {key} {v!r} is neither an integer nor a percentage")
        psel = pdb["spec"]["selector"]["matchLabels"]
        p.check(all(pod_labels.get(k) == v for k, v in psel.items()), "PDB selector does not match pods")
    ann = spec["template"]["metadata"].get("annotations", {})
    p.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics", "Prometheus scrape annotations missing")
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext", {})
    p.check(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot is not true")
    p.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile is not RuntimeDefault")
    containers = pod["containers"]
    c = next((c for c in containers if c["name"] == "dwbase"), None)
    if c is None:
        p.add("no container named dwbase")
        return p.done()
    csc = c.get("securityContext", {})
    p.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    p.check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not dropped")
    p.check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "livenessProbe is not GET /healthz")
    p.check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readinessProbe is not GET /readyz")
    res = c.get("resources", {})
    p.check("requests" in res and "limits" in res, "resources need requests and limits")
    env = c.get("env", [])
    seen: set[str] = set()
    by_name = {}
    for e in env:
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value") or ""):
            p.check(ref in seen, f"env {e['name']} uses $({ref}) before {ref} is defined: the kubelet will not expand it")
        seen.add(e["name"])
        by_name[e["name"]] = e
    node_id = by_name.get("DWBASE_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    p.check(node_id == "metadata.name", "DWBASE_NODE_ID is not the pod name (downward API)")
    ram = by_name.get("DWBASE_MAX_RAM_MB", {}).get("valueFrom", {}).get("resourceFieldRef", {})
    p.check(ram.get("resource") == "limits.memory", "DWBASE_MAX_RAM_MB is not tied to limits.memory")
    disk = by_name.get("DWBASE_MAX_DISK_MB", {}).get("value")
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    p.check("data" in claims, "no volumeClaimTemplate named data")
    if disk and "data" in claims:
        size = claims["data"]["spec"]["resources"]["requests"]["storage"]
        m = re.match(r"^(\d+)(Mi|Gi|Ti)$", size)
        if m:
            mib = int(m.group(1)) * {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[m.group(2)]
            p.check(0 < int(disk) < mib, f"DWBASE_MAX_DISK_MB {disk} is not below the claim ({size} = {mib} MiB)")
        else:
            p.add(f"cannot read claim size {size}")
    key = by_name.get("DWBASE_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
    p.check(bool(key.get("name")), "DWBASE_API_KEY does not come from a Secret")
    if key.get("name"):
        generated = ("Secret", key["name"]) in names
        if args.secret == "generated":
            p.check(generated, f"Secret {key['name']} is not in the output")
        elif args.secret == "external":
            p.check(not generated, f"Secret {key['name']} is generated here; expected an external one")
            print(f"  k8s {args.label}: note: Secret {key['name']} must exist before the pods start (created out of band)")
    peers = (by_name.get("DWBASE_SWARM_PEERS", {}).get("value") or "").split(",")
    ordinals = []
    for peer in peers:
        m = PEER_RE.match(peer)
        if not m:
            p.add(f"peer {peer!r} is not http://dwbase-<i>.dwbase-headless.<ns>.svc.cluster.local:8080")
            continue
        ordinals.append(int(m.group(1)))
        if m.group(2) != "$(POD_NAMESPACE)":
            p.check(m.group(2) == ns, f"peer {peer} names namespace {m.group(2)}, objects are in {ns}")
    p.check(sorted(ordinals) == list(range(replicas or 0)), f"DWBASE_SWARM_PEERS names pods {sorted(ordinals)}, replicas is {replicas}")
    for vol in pod.get("volumes", []):
        cm = vol.get("configMap", {}).get("name")
        if cm:
            p.check(("ConfigMap", cm) in names, f"volume {vol['name']} refers to missing ConfigMap {cm}")
    scheme = "https" if args.tls else "http"
    for peer in peers:
        p.check(peer.startswith(f"{scheme}://"), f"peer {peer!r} is not {scheme}://")
    probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
    for k, get in probes.items():
        want = "HTTPS" if args.tls else "HTTP"
        p.check(get.get("scheme", "HTTP") == want, f"{k} scheme is {get.get('scheme', 'HTTP')}, expected {want}")
    script = "\n".join(c.get("args", []) + c.get("command", []))
    if "self=" in script:
        p.check(f'self="{scheme}://' in script, f"the entry script's self URL is not {scheme}:// (the pod would push to itself)")
    if args.tls:
        check_k8s_tls(p, docs, by_kind, c, pod, by_name, peers, ns)
    else:
        p.check("DWBASE_TLS_CERT" not in by_name, "DWBASE_TLS_CERT set without --tls")
    return p.done()


CERT_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}


def _dns_covers(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def check_k8s_tls(p, docs, by_kind, c, pod, env, peers, ns) -> None:
    """The TLS overlay: a cert-manager Certificate whose Secret is mounted where DWBASE_TLS_* point,
    naming every peer host, issued by an Issuer in the output."""
    certs = {d["metadata"]["name"]: d for d in by_kind.get("Certificate", [])}
    issuers = {(d["kind"], d["metadata"]["name"]): d for d in docs if d.get("kind") in ("Issuer", "ClusterIssuer")}
    for d in list(certs.values()) + list(issuers.values()):
        p.check(d.get("apiVersion") == "cert-manager.io/v1", f"{d['kind']} {d['metadata']['name']}: apiVersion is not cert-manager.io/v1")
    for name, cert in certs.items():
        spec = cert.get("spec", {})
        p.check(bool(spec.get("secretName")), f"Certificate {name}: no spec.secretName")
        ref = spec.get("issuerRef", {})
        kind = ref.get("kind", "Issuer")
        p.check(ref.get("group", "cert-manager.io") == "cert-manager.io", f"Certificate {name}: issuerRef.group is not cert-manager.io")
        p.check((kind, ref.get("name")) in issuers or kind == "ClusterIssuer", f"Certificate {name}: issuer {kind}/{ref.get('name')} is not in the output")
        for u in spec.get("usages", []):
            p.check(u in CERT_USAGES, f"Certificate {name}: usage {u!r} is not one cert-manager knows")
        pk = spec.get("privateKey", {})
        if pk:
            p.check(pk.get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519"), f"Certificate {name}: privateKey.algorithm {pk.get('algorithm')!r}")
            p.check(pk.get("rotationPolicy", "Always") in ("Never", "Always"), f"Certificate {name}: privateKey.rotationPolicy {pk.get('rotationPolicy')!r}")
        for key in ("duration", "renewBefore"):
            if key in spec:
                p.check(re.fullmatch(r"(\d+(\.\d+)?(h|m|s))+", str(spec[key])) is not None, f"Certificate {name}: {key} {spec[key]!r} is not a Go duration")
        if not spec.get("isCA"):
            p.check(bool(spec.get("dnsNames") or spec.get("ipAddresses")), f"Certificate {name}: no dnsNames")
    for iss in issuers.values():
        kinds = [k for k in ("selfSigned", "ca", "acme", "vault", "venafi") if k in iss.get("spec", {})]
        p.check(len(kinds) == 1, f"{iss['kind']} {iss['metadata']['name']}: needs exactly one of selfSigned, ca, acme, vault, venafi")
        ca = iss.get("spec", {}).get("ca")
        if ca is not None:
            p.check(any(cc.get("spec", {}).get("secretName") == ca.get("secretName") and cc.get("spec", {}).get("isCA") for cc in certs.values()),
                    f"Issuer {iss['metadata']['name']}: CA Secret {ca.get('secretName')} is made by no isCA Certificate here")
    secret_vols = {v["name"]: v["secret"].get("secretName") for v in pod.get("volumes", []) if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    serving = None
    for var, file in (("DWBASE_TLS_CERT", "tls.crt"), ("DWBASE_TLS_KEY", "tls.key"), ("DWBASE_SWARM_CA", "ca.crt")):
        value = env.get(var, {}).get("value")
        if not value:
            p.add(f"{var} is not set")
            continue
        vol = next((v for v, path in mounts.items() if v in secret_vols and value == f"{path.rstrip('/')}/{file}"), None)
        if vol is None:
            p.add(f"{var}={value} is not {file} of a mounted Secret volume")
            continue
        secret = secret_vols[vol]
        made = [n for n, cc in certs.items() if cc.get("spec", {}).get("secretName") == secret]
        p.check(bool(made), f"{var}: Secret {secret} is made by no Certificate in the output")
        if made and var == "DWBASE_TLS_CERT":
            serving = certs[made[0]]
    if serving is not None:
        names = serving["spec"].get("dnsNames", [])
        for peer in peers:
            m = re.match(r"^https://([^:/]+)", peer)
            if not m:
                continue
            host = m.group(1).replace("$(POD_NAMESPACE)", ns or "")
            p.check(any(_dns_covers(n, host) for n in names), f"the certificate's dnsNames {names} do not cover peer host {host}")
    for m in c.get("volumeMounts", []):
        if m["name"] in secret_vols:
            p.check(m.get("readOnly") is True, f"Secret mount {m['name']} is not readOnly")


# ---------------------------------------------------------------------------------------------
# live metrics


def cmd_metrics(args: argparse.Namespace) -> int:
    p = Problems(f"metrics {args.kind}")
    text = Path(args.exposition).read_text(encoding="utf-8", errors="replace")
    lint = Path(args.lint).read_text(encoding="utf-8", errors="replace") if args.lint else ""
    helps = set(re.findall(r"^# HELP (\S+)", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    for name in types:
        p.check(name in helps, f"{name} has no # HELP")
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
    expected = NODE_METRICS if args.kind == "node" else SUPERVISOR_METRICS
    for name, kind in expected.items():
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        declared = name in types or base in types
        if (kind == "counter" or name in APPEAR_LATER) and not declared and name not in samples:
            # A labelled family may be absent until its first increment or event.
            print(f"  metrics {args.kind}: note: {kind} {name} not exported yet")
            continue
        p.check(declared or name in samples, f"{name} ({kind}) missing")
        got = types.get(name) or types.get(base)
        if got:
            p.check(got == kind, f"{name} has type {got}, expected {kind}")
    # `promtool check metrics` must be clean: every finding is a problem.
    for line in lint.splitlines():
        if line.strip():
            p.add(f"promtool lint: {line.strip()}")
    return p.done()


# ---------------------------------------------------------------------------------------------
# Prometheus HTTP API


def _query(base: str, q: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query {q!r}: {body}")
    return body["data"]["result"]


_OPS = {
    "==": lambda a, b: a == b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
}


def _cond(cond: str, v: float) -> bool:
    """`cond` is "OP NUMBER", e.g. "== 1" or "> 0"."""
    op, num = cond.split()
    return _OPS[op](v, float(num))


def cmd_prom_wait(args: argparse.Namespace) -> int:
    """Polls an instant query until every series' value satisfies the condition and the number
    of series is at least --min-series; prints the last result."""
    deadline = time.monotonic() + args.timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            res = _query(args.url, args.query)
            last = [(r["metric"], r["value"][1]) for r in res]
            vals = [float(r["value"][1]) for r in res]
            if len(vals) >= args.min_series and all(_cond(args.cond, v) for v in vals):
                print(f"  {args.query} → {last}")
                return 0
        except (OSError, RuntimeError, ValueError) as e:
            last = repr(e)
        time.sleep(1)
    print(f"  timed out after {args.timeout}s waiting for {args.query} ({args.cond}, ≥{args.min_series} series); last: {last}")
    return 1


def cmd_prom_value(args: argparse.Namespace) -> int:
    res = _query(args.url, args.query)
    print(sum(float(r["value"][1]) for r in res) if res else "nan")
    return 0


# ---------------------------------------------------------------------------------------------
# pids from status --json / state.json


def cmd_pids(args: argparse.Namespace) -> int:
    found: set[int] = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k.endswith("pid") and isinstance(v, int) and v > 1:
                    found.add(v)
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for f in args.files:
        try:
            walk(json.loads(Path(f).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    print(" ".join(str(p) for p in sorted(found)))
    return 0


# ---------------------------------------------------------------------------------------------
# docs coverage


def cmd_docs(args: argparse.Namespace) -> int:
    p = Problems("docs")
    text = Path(args.doc).read_text(encoding="utf-8")
    for key in SCHEMA:
        if SCHEMA[key] == "table":
            continue
        leaf = key.split(".")[-1]
        p.check(f"`{leaf}`" in text or f"`{key}`" in text, f"config option {key} not documented")
    for var in ENV_VARS:
        p.check(var in text, f"env override {var} not documented")
    for cmd in [
        "dwbase deploy local", "dwbase deploy devnet", "dwbase deploy status", "dwbase deploy logs",
        "dwbase deploy restart", "dwbase deploy stop", "dwbase deploy clean", "dwbase deploy install-service",
        "dwbase deploy k8s", "dwbase backup", "dwbase test soak",
    ]:
        p.check(cmd in text, f"command {cmd!r} not shown")
    lower = text.lower()
    for failure in ["port in use", "stale socket", "disk full", "crash loop", "orphaned nodes", "version mismatch"]:
        p.check(failure in lower, f"failure mode {failure!r} not covered")
    for section in ["local", "devnet", "edge", "systemd", "launchd", "docker", "compose", "kubernetes", "prometheus"]:
        p.check(section in lower, f"{section} not covered")
    p.check("```bash" in text, "no runnable ```bash blocks")
    return p.done()


# ---------------------------------------------------------------------------------------------
# shell embedded in other files, for shellcheck


def cmd_embedded(args: argparse.Namespace) -> int:
    """Writes every shell snippet that lives inside a non-shell artifact to OUTDIR/*.sh."""
    root, out = Path(args.root), Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def emit(name: str, shell: str, body: str) -> None:
        (out / name).write_text(f"#!{shell}\n{body}\n", encoding="utf-8")
        written.append(name)

    with open(root / "deploy/launchd/io.dwbase.supervisor.plist", "rb") as f:
        pa = plistlib.load(f)["ProgramArguments"]
    if pa[:2] == ["/bin/sh", "-c"]:
        emit("launchd-program.sh", "/bin/sh", pa[2])
    for i, d in enumerate(load_yaml_docs(str(root / "deploy/k8s/base/statefulset.yaml"))):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c.get("command", [])[:2] == ["/bin/bash", "-c"]:
                emit(f"k8s-{c['name']}-entry.sh", "/bin/bash", "\n".join(c.get("args", [])))
    dockerfile = (root / "deploy/docker/Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    m = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", joined, re.M)
    if m:
        cmd = json.loads(m.group(1))
        if cmd[:2] == ["/bin/bash", "-c"]:
            emit("dockerfile-healthcheck.sh", "/bin/bash", cmd[2])
    if args.compose_json:
        cfg = json.loads(Path(args.compose_json).read_text(encoding="utf-8"))
        for name, svc in cfg.get("services", {}).items():
            test = (svc.get("healthcheck") or {}).get("test") or []
            if test[:3] == ["CMD", "/bin/bash", "-c"]:
                # compose's JSON keeps "$$" escaped; the container sees "$".
                emit(f"compose-{name}-healthcheck.sh", "/bin/bash", test[3].replace("$$", "$"))
    print("  embedded shell: " + ", ".join(written))
    return 0 if written else 1


# ---------------------------------------------------------------------------------------------
# alerts: every alert tested; the PrometheusRule of the prometheus-operator component


def cmd_alerts_tested(args: argparse.Namespace) -> int:
    """Every alert of alerts.yml fires in at least one promtool test of alerts_test.yml."""
    import yaml

    p = Problems("alert tests")
    rules = yaml.safe_load(Path(args.alerts).read_text(encoding="utf-8"))
    tests = yaml.safe_load(Path(args.tests).read_text(encoding="utf-8"))
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    fired = {
        t["alertname"]
        for test in tests.get("tests", [])
        for t in test.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    for a in alerts:
        p.check(a in fired, f"{a} has no promtool test in which it fires")
    for a in sorted(fired - set(alerts)):
        p.add(f"the tests expect {a}, which alerts.yml does not define")
    print(f"  alert tests: {len(alerts)} alerts, each fires in a test")
    return p.done()


PROMETHEUSRULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by
#   python3 deploy/checks/artifacts.py prometheusrule deploy/prometheus/alerts.yml \\
#     deploy/k8s/components/prometheus-operator/prometheusrule.yaml --write
# Do not edit: change alerts.yml and regenerate (scripts/check-artifacts.sh fails on a stale copy).
"""


def _prometheusrule(alerts_path: str) -> str:
    import yaml

    rules = yaml.safe_load(Path(alerts_path).read_text(encoding="utf-8"))
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "dwbase", "labels": {"app.kubernetes.io/name": "dwbase"}},
        "spec": {"groups": rules["groups"]},
    }
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):  # multi-line expressions as | blocks, like alerts.yml
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return PROMETHEUSRULE_HEADER + yaml.dump(obj, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)


def cmd_alert_expr(args: argparse.Namespace) -> int:
    import yaml

    rules = yaml.safe_load(Path(args.alerts).read_text(encoding="utf-8"))
    for g in rules["groups"]:
        for r in g["rules"]:
            if r.get("alert") == args.name:
                print(" ".join(r["expr"].split()))
                return 0
    print(f"no alert {args.name} in {args.alerts}", file=sys.stderr)
    return 1


def cmd_prometheusrule(args: argparse.Namespace) -> int:
    want = _prometheusrule(args.alerts)
    out = Path(args.out)
    if args.write:
        out.write_text(want, encoding="utf-8")
        print(f"  wrote {out}")
        return 0
    if not out.exists() or out.read_text(encoding="utf-8") != want:
        print(f"  {out} is not what alerts.yml generates: run the command in its header")
        return 1
    print(f"  {out.name}: up to date with {Path(args.alerts).name}")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    """An overlay built with the prometheus-operator component: the ServiceMonitor selects the
    headless Service by its labels and port, keeps only it, maps the pod labels the alerts select
    on; the PrometheusRule holds alerts.yml's groups."""
    import yaml

    p = Problems("prometheus-operator")
    docs = load_yaml_docs(args.built)
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    (sm,) = kinds.get("ServiceMonitor", [None]) or [None]
    (pr,) = kinds.get("PrometheusRule", [None]) or [None]
    if sm is None or pr is None:
        p.add("ServiceMonitor or PrometheusRule missing from the build")
        return p.done()
    services = {s["metadata"]["name"]: s for s in kinds.get("Service", [])}
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [n for n, s in services.items() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    p.check("dwbase-headless" in matched, f"selector {sel} does not match dwbase-headless (matches {matched})")
    (ep,) = sm["spec"]["endpoints"]
    ports = [pt.get("name") for pt in services.get("dwbase-headless", {}).get("spec", {}).get("ports", [])]
    p.check(ep["port"] in ports, f"endpoint port {ep['port']} not a port of dwbase-headless ({ports})")
    keep = [r for r in ep.get("relabelings", []) if r.get("action") == "keep"]
    p.check(any(re.fullmatch(r["regex"], "dwbase-headless") and not re.fullmatch(r["regex"], "dwbase") for r in keep),
            "no relabeling keeps dwbase-headless alone (pods would be scraped twice)")
    sts = kinds["StatefulSet"][0]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
        p.check(label in sm["spec"].get("podTargetLabels", []) and label in pod_labels, f"{label} not mapped from the pods")
    p.check(sm["metadata"].get("namespace") == sts["metadata"].get("namespace"), "ServiceMonitor not in the pods' namespace")
    alerts = yaml.safe_load(Path(args.alerts).read_text(encoding="utf-8"))
    p.check(pr["spec"]["groups"] == alerts["groups"], "PrometheusRule groups differ from alerts.yml")
    if args.rules_out:
        Path(args.rules_out).write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}), encoding="utf-8")
    return p.done()


# ---------------------------------------------------------------------------------------------
# k8s-scrape: the kubernetes-pods job's relabeling, applied to the rendered pod, yields the
# labels alerts.yml and the dashboard select on


def _relabel(labels: dict, rules: list) -> dict | None:
    """Prometheus' relabeling for the actions the shipped job uses (keep, drop, replace,
    labelmap); regexes are anchored as in Prometheus. None when the target is dropped."""
    labels = dict(labels)
    for r in rules:
        action = r.get("action", "replace")
        regex = re.compile(r.get("regex", "(.*)"))
        value = r.get("separator", ";").join(labels.get(n, "") for n in r.get("source_labels", []))
        repl = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", r.get("replacement", "$1"))
        if action == "keep":
            if not regex.fullmatch(value):
                return None
        elif action == "drop":
            if regex.fullmatch(value):
                return None
        elif action == "replace":
            m = regex.fullmatch(value)
            if m:
                out = m.expand(repl)
                if out:
                    labels[r["target_label"]] = out
                else:
                    labels.pop(r["target_label"], None)
        elif action == "labelmap":
            for name in list(labels):
                m = regex.fullmatch(name)
                if m:
                    labels[m.expand(repl)] = labels[name]
        else:
            raise ValueError(f"relabel action {action} not simulated here")
    return labels


def _matchers(selector: str) -> list[tuple[str, str, str]]:
    return re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"', selector)


def _selects(matchers: list[tuple[str, str, str]], labels: dict) -> bool:
    for name, op, value in matchers:
        got = labels.get(name, "")
        ok = {
            "=": got == value,
            "!=": got != value,
            "=~": re.fullmatch(value, got) is not None,
            "!~": re.fullmatch(value, got) is None,
        }[op]
        if not ok:
            return False
    return True


def cmd_k8s_scrape(args: argparse.Namespace) -> int:
    import yaml

    p = Problems("kubernetes-pods scrape")
    docs = load_yaml_docs(args.built)
    (sts,) = [d for d in docs if d.get("kind") == "StatefulSet"]
    tmpl = sts["spec"]["template"]
    sanitize = lambda k: re.sub(r"[^a-zA-Z0-9_]", "_", k)
    port = tmpl["spec"]["containers"][0]["ports"][0]["containerPort"]
    meta = {
        "__address__": f"10.1.2.3:{port}",
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
        "__meta_kubernetes_namespace": sts["metadata"].get("namespace", "default"),
        "__meta_kubernetes_pod_name": f"{sts['metadata']['name']}-0",
    }
    for k, v in tmpl["metadata"].get("labels", {}).items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = str(v)
    for k, v in tmpl["metadata"].get("annotations", {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{sanitize(k)}"] = str(v)
    config = yaml.safe_load(Path(args.scrape_config).read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kubernetes-pods"]
    meta["job"] = job["job_name"]
    target = _relabel(meta, job.get("relabel_configs", []))
    if target is None:
        p.add("the kubernetes-pods job drops the DWBase pod (prometheus.io/scrape annotation?)")
        return p.done()
    p.check(target["__address__"].endswith(f":{port}"), f"scrapes {target['__address__']}, not port {port}")
    p.check(target["__metrics_path__"] == "/metrics", f"scrapes {target['__metrics_path__']}")
    labels = {k: v for k, v in target.items() if not k.startswith("__")}
    labels["instance"] = target["__address__"]
    # Every `up{…}` selector for nodes, in the alerts and in the dashboard, selects the pod.
    texts = [Path(args.alerts).read_text(encoding="utf-8"), Path(args.dashboard).read_text(encoding="utf-8")]
    selectors = []
    for text in texts:
        text = text.replace('\\"', '"')
        selectors += [sel for sel in re.findall(r"\bup\{([^}]*)\}", text) if 'component="node"' in sel]
    p.check(bool(selectors), "no up{…component=\"node\"} selector found in the alerts or dashboard")
    for sel in selectors:
        ms = [m for m in _matchers(sel) if m[0] != "instance"]  # the dashboard's $instance
        p.check(_selects(ms, labels), f"up{{{sel}}} does not select the pod's target {labels}")
    # A pod that is not DWBase's is not selected.
    other = dict(meta, **{"__meta_kubernetes_pod_label_app_kubernetes_io_name": "cart"})
    other_t = _relabel(other, job.get("relabel_configs", []))
    if other_t:
        other_l = {k: v for k, v in other_t.items() if not k.startswith("__")}
        for sel in selectors:
            ms = [m for m in _matchers(sel) if m[0] != "instance"]
            p.check(not _selects(ms, other_l), f"up{{{sel}}} also selects another app's pod")
    print(f"  kubernetes-pods: target labels {sorted(labels.items())}; {len(selectors)} node selectors checked")
    return p.done()
def cmd_split_api(args: argparse.Namespace) -> int:
    """Writes the documents of API group `group` to `matching` and the others to `rest`, so that
    kubernetes-validate (built-in kinds only) checks the rest; cmd_k8s --tls checks the CRDs."""
    import yaml  # PyYAML, from the tools venv

    docs = load_yaml_docs(args.built)
    mine = [d for d in docs if str(d.get("apiVersion", "")).split("/")[0] == args.group]
    rest = [d for d in docs if d not in mine]
    Path(args.matching).write_text(yaml.safe_dump_all(mine, sort_keys=False), encoding="utf-8")
    Path(args.rest).write_text(yaml.safe_dump_all(rest, sort_keys=False), encoding="utf-8")
    print(f"  split {args.built}: {len(mine)} {args.group} documents, {len(rest)} others")
    return 0 if mine else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("templates"); s.add_argument("root"); s.set_defaults(fn=cmd_templates)
    s = sub.add_parser("compose"); s.add_argument("config_json"); s.add_argument("--tls", action="store_true"); s.set_defaults(fn=cmd_compose)
    s = sub.add_parser("plist"); s.add_argument("plist"); s.add_argument("--emit-shell"); s.set_defaults(fn=cmd_plist)
    s = sub.add_parser("grafana"); s.add_argument("dashboard"); s.add_argument("--rules-out"); s.set_defaults(fn=cmd_grafana)
    s = sub.add_parser("k8s"); s.add_argument("built"); s.add_argument("--label", default="build")
    s.add_argument("--replicas", type=int); s.add_argument("--namespace")
    s.add_argument("--secret", choices=["generated", "external", "any"], default="any")
    s.add_argument("--tls", action="store_true", help="the TLS overlay: https peers, HTTPS probes, a cert-manager Certificate mounted"); s.set_defaults(fn=cmd_k8s)
    s = sub.add_parser("split-api"); s.add_argument("built"); s.add_argument("group"); s.add_argument("matching"); s.add_argument("rest")
    s.set_defaults(fn=cmd_split_api)
    s = sub.add_parser("metrics"); s.add_argument("kind", choices=["node", "supervisor"]); s.add_argument("exposition")
    s.add_argument("--lint"); s.set_defaults(fn=cmd_metrics)
    s = sub.add_parser("prom-wait"); s.add_argument("url"); s.add_argument("query"); s.add_argument("--cond", default="== 1")
    s.add_argument("--min-series", type=int, default=1); s.add_argument("--timeout", type=float, default=60); s.set_defaults(fn=cmd_prom_wait)
    s = sub.add_parser("prom-value"); s.add_argument("url"); s.add_argument("query"); s.set_defaults(fn=cmd_prom_value)
    s = sub.add_parser("pids"); s.add_argument("files", nargs="*"); s.set_defaults(fn=cmd_pids)
    s = sub.add_parser("embedded"); s.add_argument("root"); s.add_argument("outdir"); s.add_argument("--compose-json")
    s.set_defaults(fn=cmd_embedded)
    s = sub.add_parser("docs"); s.add_argument("doc"); s.set_defaults(fn=cmd_docs)
    s = sub.add_parser("alerts-tested"); s.add_argument("alerts"); s.add_argument("tests"); s.set_defaults(fn=cmd_alerts_tested)
    s = sub.add_parser("alert-expr"); s.add_argument("alerts"); s.add_argument("name"); s.set_defaults(fn=cmd_alert_expr)
    s = sub.add_parser("prometheusrule"); s.add_argument("alerts"); s.add_argument("out"); s.add_argument("--write", action="store_true")
    s.set_defaults(fn=cmd_prometheusrule)
    s = sub.add_parser("operator"); s.add_argument("built"); s.add_argument("--alerts", required=True); s.add_argument("--rules-out")
    s.set_defaults(fn=cmd_operator)
    s = sub.add_parser("k8s-scrape"); s.add_argument("built"); s.add_argument("scrape_config")
    s.add_argument("--alerts", required=True); s.add_argument("--dashboard", required=True)
    s.set_defaults(fn=cmd_k8s_scrape)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
