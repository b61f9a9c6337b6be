#!/usr/bin/env python3
"""Runs the pod of a `dwbase deploy k8s` render under `podman kube play` and checks it against
the StatefulSet it came from. Called by scripts/check-containers.sh (which sets up podman).

    kube_play.py RENDER.yaml --workdir DIR [--keep]

What it does, and the only changes it makes to the render's objects:
  1. From the StatefulSet, the Pod a StatefulSet controller would create for ordinal 0: name
     `<sts>-0`, the template's labels, annotations and spec, and the volume `data` bound to the
     claim `data-<sts>-0` (a PersistentVolumeClaim made from volumeClaimTemplates; podman makes it
     a named volume). The ConfigMap goes in unchanged. The container's `http` port gets a
     hostPort on 127.0.0.1 (a free port) so the probes can be sent from here.
  2. The API key Secret the render leaves to the operator: a podman secret holding what a
     Secret's `data` would (key → base64), which is what podman reads for `secretKeyRef`.
  3. What the kubelet does and podman 4.3 does not: `$(VAR)` references in env values are
     expanded from the variables before them, and `fieldRef: metadata.namespace` becomes the
     render's namespace (podman has no namespaces). Both are written into the Pod as values.
Then it checks: the container runs as the StatefulSet's user with no capabilities on a
read-only root; every env var is what the StatefulSet says (literal, downward API name,
namespace, memory limit in MiB, secret); the node (PID 1, after the entry script) has every
other pod as a peer and not itself; the mounts (claim volume at /var/lib/dwbase, the ConfigMap
read-only at /etc/dwbase with node.toml byte for byte, an emptyDir /tmp); the startup, liveness
and readiness probes' paths and ports answer 200; the node runs from the k8s config (it refuses
a write without the API key and accepts one with it; its data is on the claim volume).
It cannot show what needs a cluster: scheduling, PVC binding, headless-Service DNS.

Needs PyYAML.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def podman(*args: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, input=input, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined earlier → its value; $$ → $; else kept."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def mebibytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", str(q))
    if not m or (m.group(2) and m.group(2) not in units):
        raise ValueError(f"unsupported quantity {q!r}")
    return int(m.group(1)) * units.get(m.group(2), 1)


class Check:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def ok(self, cond: bool, what: str, detail: str = "") -> None:
        if cond:
            print(f"  ok: {what}")
        else:
            self.problems.append(what)
            print(f"  FAIL: {what}{': ' + detail if detail else ''}")


def build(render: list[dict], secret_value: str, host_port: int) -> tuple[list[dict], dict]:
    """The kube play objects and what the pod must look like."""
    by_kind: dict[str, list[dict]] = {}
    for d in render:
        by_kind.setdefault(d["kind"], []).append(d)
    (sts,) = by_kind["StatefulSet"]
    ns = sts["metadata"]["namespace"]
    name = sts["metadata"]["name"]
    pod_name = f"{name}-0"
    tmpl = sts["spec"]["template"]
    spec = copy.deepcopy(tmpl["spec"])
    (ctr,) = [c for c in spec["containers"] if c["name"] == name]

    claims = []
    for vct in sts["spec"].get("volumeClaimTemplates", []):
        claim = f"{vct['metadata']['name']}-{pod_name}"
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": claim}, "spec": copy.deepcopy(vct["spec"])})
        spec.setdefault("volumes", []).append({"name": vct["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})

    # Expected env, computed as the kubelet would; written into the pod where podman cannot.
    limits = ctr.get("resources", {}).get("limits", {})
    env: dict[str, str] = {}
    secret_refs = {}
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
            if env[e["name"]] != e["value"]:
                e["value"] = env[e["name"]]
        elif "fieldRef" in e["valueFrom"]:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": ns}[path]
            if path == "metadata.namespace":
                e.pop("valueFrom")
                e["value"] = ns
        elif "resourceFieldRef" in e["valueFrom"]:
            r = e["valueFrom"]["resourceFieldRef"]
            env[e["name"]] = str(mebibytes(limits[r["resource"].split(".", 1)[1]]) // mebibytes(r.get("divisor", "1")))
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            secret_refs[ref["name"]] = ref["key"]
            env[e["name"]] = secret_value
    for port in ctr.get("ports", []):
        if port.get("name") == "http":
            port["hostPort"] = host_port
            port["hostIP"] = "127.0.0.1"

    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod_name, "labels": tmpl["metadata"].get("labels", {}),
                        "annotations": tmpl["metadata"].get("annotations", {})},
           "spec": spec}
    objs = [*by_kind.get("ConfigMap", []), *claims, pod]
    expect = {
        "namespace": ns, "pod": pod_name, "container": f"{pod_name}-{name}", "env": env,
        "secrets": secret_refs, "ctr": ctr, "pod_security": spec.get("securityContext", {}),
        "volumes": spec.get("volumes", []), "configmaps": {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])},
        "port": host_port,
    }
    return objs, expect


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, repr(e)


def verify(x: dict) -> list[str]:
    c = Check()
    ctr, name = x["ctr"], x["container"]
    base = f"http://127.0.0.1:{x['port']}"
    deadline = time.monotonic() + 90
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", []) if "name" in p}
    while time.monotonic() < deadline and http("GET", base + "/readyz")[0] != 200:
        time.sleep(0.5)

    # Probes: each path on the port it names answers 200 (every named port maps to the one hostPort).
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = ctr.get(kind)
        if not probe:
            continue
        get = probe["httpGet"]
        port = ports.get(get["port"], get["port"])
        status, body = http("GET", base + get["path"])
        c.ok(status == 200 and port == 8080, f"{kind} GET {get['path']} on port {get['port']} ({port}) → {status}", body[:200])

    info = json.loads(podman("inspect", name))[0]
    cfg, host = info["Config"], info["HostConfig"]
    # Security context as the StatefulSet says.
    sc, psc = ctr.get("securityContext", {}), x["pod_security"]
    uid = podman("exec", name, "id", "-u").strip()
    gid = podman("exec", name, "id", "-g").strip()
    c.ok(uid == str(psc.get("runAsUser")), f"runs as uid {uid} (runAsUser {psc.get('runAsUser')})")
    c.ok(gid == str(psc.get("runAsGroup")), f"runs as gid {gid} (runAsGroup {psc.get('runAsGroup')})")
    capeff = podman("exec", name, "awk", "/^CapEff/ {print $2}", "/proc/1/status").strip()
    c.ok(sc.get("capabilities", {}).get("drop") == ["ALL"] and int(capeff, 16) == 0, f"capabilities dropped (CapEff {capeff})")
    c.ok(bool(host.get("ReadonlyRootfs")) == bool(sc.get("readOnlyRootFilesystem")), f"read-only root filesystem: {host.get('ReadonlyRootfs')}")
    wrote = subprocess.run(["podman", "exec", name, "touch", "/usr/local/bin/x"], capture_output=True).returncode == 0
    c.ok(not wrote, "the root filesystem refuses writes")
    nnp = podman("exec", name, "awk", "/^NoNewPrivs/ {print $2}", "/proc/1/status").strip()
    c.ok(sc.get("allowPrivilegeEscalation") is False and nnp == "1", f"allowPrivilegeEscalation: false (NoNewPrivs {nnp})")

    # Env: the container's, as the runtime set it.
    got = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    for k, v in x["env"].items():
        shown = "(the secret)" if k in ("DWBASE_API_KEY",) else repr(v)
        c.ok(got.get(k) == v, f"env {k} = {shown}", f"got {got.get(k)!r}")
    # The entry script: dwbase-node is PID 1 and its peers are every pod but itself.
    environ = podman("exec", name, "cat", "/proc/1/environ")
    node_env = dict(e.split("=", 1) for e in environ.split("\0") if "=" in e)
    cmdline = podman("exec", name, "cat", "/proc/1/cmdline").split("\0")
    c.ok(cmdline[0].endswith("dwbase-node") and "--config" in cmdline, f"PID 1 is {' '.join(cmdline).strip()}")
    all_peers = x["env"]["DWBASE_SWARM_PEERS"].split(",")
    self_url = f"http://{x['pod']}.dwbase-headless.{x['namespace']}.svc.cluster.local:8080"
    want = [p for p in all_peers if p != self_url]
    c.ok(self_url in all_peers and node_env.get("DWBASE_SWARM_PEERS", "").split(",") == want,
         f"the node's peers are the other {len(want)} pods, not itself", node_env.get("DWBASE_SWARM_PEERS", ""))

    # Mounts.
    mounts = {m["Destination"]: m for m in info.get("Mounts") or []}
    vols = {v["name"]: v for v in x["volumes"]}
    for vm in ctr.get("volumeMounts", []):
        m = mounts.get(vm["mountPath"])
        v = vols[vm["name"]]
        if m is None:
            c.ok(False, f"mount {vm['mountPath']} ({vm['name']})", f"mounts: {sorted(mounts)}")
            continue
        ro = not m.get("RW", True)
        c.ok(ro == bool(vm.get("readOnly")), f"mount {vm['mountPath']} ({vm['name']}) read-only={ro}")
        if "persistentVolumeClaim" in v:
            c.ok(m.get("Type") == "volume" and m.get("Name") == v["persistentVolumeClaim"]["claimName"],
                 f"{vm['mountPath']} is the claim volume {v['persistentVolumeClaim']['claimName']}", json.dumps(m))
            probe = f"{vm['mountPath']}/.kube-play-write-test"
            w = subprocess.run(["podman", "exec", name, "sh", "-c", f"touch {probe} && rm {probe}"], capture_output=True)
            c.ok(w.returncode == 0, f"{vm['mountPath']} is writable by the node's user")
        if "configMap" in v:
            cm = x["configmaps"][v["configMap"]["name"]]
            for key, text in cm.get("data", {}).items():
                inside = podman("exec", name, "cat", f"{vm['mountPath']}/{key}")
                c.ok(inside == text, f"{vm['mountPath']}/{key} is ConfigMap {cm['metadata']['name']}'s {key}, byte for byte")
        if "emptyDir" in v:
            w = subprocess.run(["podman", "exec", name, "sh", "-c", f"touch {vm['mountPath']}/x && rm {vm['mountPath']}/x"], capture_output=True)
            c.ok(w.returncode == 0, f"{vm['mountPath']} (emptyDir) is writable")

    # The node runs from the k8s config: allow_insecure = false there, so a write needs the key.
    atom = {"world": "kube-play", "worker": "ci", "kind": "observation", "importance": 0.5, "payload_json": "{\"text\":\"hi\"}"}
    status, _ = http("POST", base + "/remember", atom)
    c.ok(status == 401, f"POST /remember without the API key → {status} (401: the k8s config needs a key)")
    status, body = http("POST", base + "/remember", atom, {"authorization": f"Bearer {x['env']['DWBASE_API_KEY']}"})
    c.ok(status == 200, f"POST /remember with the Secret's key → {status}", body[:200])
    data = subprocess.run(["podman", "exec", name, "ls", "/var/lib/dwbase/data"], capture_output=True, text=True)
    c.ok(data.returncode == 0 and data.stdout.strip() != "", "data_dir /var/lib/dwbase/data (node.toml) is on the claim volume", data.stderr)
    status, body = http("GET", base + "/health", headers={"authorization": f"Bearer {x['env']['DWBASE_API_KEY']}"})
    c.ok(status == 200 and x["pod"] in body, f"/health names the node {x['pod']} (DWBASE_NODE_ID from metadata.name)", body[:300])
    return c.problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("render")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--image-from", help="a local image to tag with the name the StatefulSet uses")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    render = [d for d in yaml.safe_load_all(Path(args.render).read_text()) if d]
    key = secrets.token_hex(32)
    if args.image_from:
        (sts,) = [d for d in render if d["kind"] == "StatefulSet"]
        image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
        # podman looks short names up under localhost/ before any registry.
        podman("tag", args.image_from, image if "/" in image else f"localhost/{image}")
        print(f"  image {image}: tagged from {args.image_from}")
    objs, expect = build(render, key, free_port())
    for ref_name, ref_key in expect["secrets"].items():
        # podman 4.3 reads a secretKeyRef's secret as a JSON map of key → base64 value (a
        # Secret's `data`).
        podman("secret", "create", ref_name, "-", input=json.dumps({ref_key: base64.b64encode(key.encode()).decode()}))
    play = work / "kube-play.yaml"
    play.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    print(f"  podman kube play {play} (pod {expect['pod']}, from the StatefulSet of {args.render})")
    out = subprocess.run(["podman", "kube", "play", str(play)], capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        print(out.stdout, out.stderr)
        print("  FAIL: podman kube play")
        return 1
    try:
        problems = verify(expect)
    finally:
        logs = podman("logs", expect["container"], check=False)
        (work / "node.log").write_text(logs)
    if problems:
        print("  --- node log (last 30 lines):")
        print("\n".join("    " + line for line in logs.splitlines()[-30:]))
        return 1
    stop = subprocess.run(["podman", "kube", "down", str(play)], capture_output=True, text=True, timeout=120)
    print(f"  podman kube down: exit {stop.returncode}")
    return stop.returncode


if __name__ == "__main__":
    sys.exit(main())
