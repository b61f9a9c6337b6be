#!/usr/bin/env python3
"""Figures of the "one owner" supervisor: rollout, self-healing, liveness.

  rollout   a changed spec (DWBASE_MAX_DISK_MB) rolled over N real nodes: total time of the
            deploy command, and the longest time any node was not answering /readyz (polled
            every 5 ms per node)
  heal      kill -9 of the supervisor, then `dwbase deploy status`: time until that command
            returns with every node adopted (and until all are ready under the new supervisor)
  hung      SIGSTOP of a node with the default liveness (3 x 5 s, 2 s timeout): seconds until a
            new process of that node is ready

Usage: scripts/bench/owner.py [--bin-dir target/release] [--nodes 10] [--base-port 63000]
Prints a table and one JSON object (--json-out PATH to keep it). Everything runs in a
temporary state root; every process started is stopped on exit.
"""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, threading, time


def now():
    return time.monotonic()


def readyz(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            data = s.recv(64)
            return b" 200 " in data
    except OSError:
        return False


class Env:
    def __init__(self, bin_dir, root):
        self.bin = os.path.join(bin_dir, "dwbase")
        self.env = dict(os.environ, DWBASE_DATA_DIR=root)
        for k in ("DWBASE_MAX_DISK_MB", "DWBASE_MAX_RAM_MB", "DWBASE_NODE_BIN"):
            self.env.pop(k, None)

    def run(self, *args, extra_env=None, check=True):
        env = dict(self.env, **(extra_env or {}))
        p = subprocess.run([self.bin, *args], env=env, capture_output=True, text=True, timeout=600)
        if check and p.returncode not in (0,):
            raise SystemExit(f"dwbase {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def status(self):
        p = self.run("deploy", "status", "--json", check=False)
        return json.loads(p.stdout)


def devnet(n, base):
    return ["deploy", "devnet", "--no-swarm", "--nodes", str(n), "--base-port", str(base),
            "--stop-timeout", "5s", "--timeout", "60s"]


def wait(cond, deadline, what):
    until = now() + deadline
    while now() < until:
        v = cond()
        if v:
            return v
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def bench_rollout(e, n, base):
    ports = [base + i for i in range(n)]
    down_since = {p: None for p in ports}
    longest = {p: 0.0 for p in ports}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            for p in ports:
                up = readyz(p, 0.2)
                t = now()
                if up and down_since[p] is not None:
                    longest[p] = max(longest[p], t - down_since[p])
                    down_since[p] = None
                elif not up and down_since[p] is None:
                    down_since[p] = t
            time.sleep(0.005)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = now()
    e.run(*devnet(n, base), extra_env={"DWBASE_MAX_DISK_MB": "8192"})
    total = now() - t0
    time.sleep(0.05)
    stop.set()
    th.join()
    return {"nodes": n, "total_s": round(total, 3),
            "longest_unavailable_ms": round(max(longest.values()) * 1000, 1),
            "mean_unavailable_ms": round(sum(longest.values()) / n * 1000, 1)}


def bench_heal(e, n):
    st = e.status()
    pids = {x["name"]: x["pid"] for x in st["nodes"]}
    sup = st["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    wait(lambda: not os.path.exists(f"/proc/{sup}") or
         open(f"/proc/{sup}/stat").read().split(")")[-1].split()[0] == "Z", 10, "supervisor gone")
    t0 = now()
    p = e.run("deploy", "status", "--json", check=False)
    cmd_ms = (now() - t0) * 1000
    doc = json.loads(p.stdout)
    adopted = sum(1 for x in doc["nodes"] if pids.get(x["name"]) == x["pid"])
    wait(lambda: all(x["ready"] for x in e.status()["nodes"]), 60, "all ready")
    all_ready_ms = (now() - t0) * 1000
    return {"nodes": n, "adopted": adopted, "command_ms": round(cmd_ms, 1),
            "all_ready_ms": round(all_ready_ms, 1), "said": p.stderr.strip().splitlines()[:1]}


def bench_hung(e):
    st = e.status()
    node = st["nodes"][0]
    pid = node["pid"]
    os.kill(pid, signal.SIGSTOP)
    t0 = now()

    def back():
        for x in e.status()["nodes"]:
            if x["name"] == node["name"] and x["pid"] not in (None, pid) and x["ready"]:
                return x
        return None

    x = wait(back, 120, "the hung node restarted")
    return {"node": node["name"], "restarted_after_s": round(now() - t0, 2),
            "cause": (x.get("last_exit") or {}).get("cause")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--base-port", type=int, default=63000)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dwbase-bench-owner.")
    e = Env(a.bin_dir, os.path.join(tmp, "root"))
    out = {}
    try:
        e.run(*devnet(a.nodes, a.base_port))
        wait(lambda: all(x["ready"] for x in e.status()["nodes"]), 60, "devnet ready")
        out["rollout"] = bench_rollout(e, a.nodes, a.base_port)
        out["heal"] = bench_heal(e, a.nodes)
        out["hung"] = bench_hung(e)
    finally:
        e.run("deploy", "stop", "--timeout", "3s", check=False)
    r, h, g = out["rollout"], out["heal"], out["hung"]
    print("| measure | figure |")
    print("|---|---|")
    print(f"| rollout of a changed spec over {r['nodes']} nodes, total | {r['total_s']} s |")
    print(f"| ... longest unavailability of any node | {r['longest_unavailable_ms']} ms (mean {r['mean_unavailable_ms']} ms) |")
    print(f"| supervisor kill -9 → next `deploy status` returns, {h['adopted']}/{h['nodes']} adopted | {h['command_ms']} ms |")
    print(f"| ... all nodes ready under the new supervisor | {h['all_ready_ms']} ms |")
    print(f"| SIGSTOPped node → new process ready (default liveness 3 x 5 s) | {g['restarted_after_s']} s (cause {g['cause']}) |")
    print(json.dumps(out))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
