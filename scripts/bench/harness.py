#!/usr/bin/env python3
"""The measurement side of scripts/bench.sh (stdlib only). Run through bench.sh, which builds,
installs the peers into the work dir and cleans up; `harness.py cleanup` is that clean-up.

    harness.py run --work DIR --bin-dir target/release --repo . [--quick] [--only LIST] ...
    harness.py cleanup --work DIR --bin-dir target/release --repo .
    harness.py report --json-in target/bench/bench.json   # the table again, from the JSON
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/bench/

import measure  # noqa: E402 (after the line above)
import procs  # noqa: E402
import report  # noqa: E402
import tools  # noqa: E402
from measure import ms  # noqa: E402
from procs import now  # noqa: E402

SECTIONS = ("supervision", "logs", "node")
PEERS = {"supervisord": tools.Supervisord, "pm2": tools.Pm2, "pueue": tools.Pueue}

FULL = {"nodes": [1, 10, 50], "idle_secs": 60.0, "restarts": 15, "status_runs": 20,
        "log_bytes": 1_000_000_000, "log_line": 100, "atoms": 100_000, "asks": 5_000,
        "single": 1_000}
QUICK = {"nodes": [1, 3], "idle_secs": 3.0, "restarts": 2, "status_runs": 5,
         "log_bytes": 50_000_000, "log_line": 100, "atoms": 2_000, "asks": 300, "single": 200}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def context(args):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DWBASE_", "PM2_", "CHATTY_")) and k != "NOTIFY_SOCKET"}
    return tools.Ctx(repo=Path(args.repo).resolve(), bin_dir=Path(args.bin_dir).resolve(),
                     work=Path(args.work).resolve(), base_port=args.base_port, env=env,
                     standin=Path(args.standin).resolve() if args.standin else None,
                     floor=Path(args.floor).resolve() if args.floor else None)


def _first_line(argv, env):
    try:
        out = subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False)
        return (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def machine(ctx):
    """Date, machine, versions."""
    meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    versions = {"dwbase": _first_line([ctx.dwbase, "--version"], ctx.env),
                "python": platform.python_version()}
    if ctx.has("supervisord"):
        versions["supervisord"] = _first_line(
            [str(ctx.supervisord_bin), "--version"],
            {**ctx.env, "PYTHONPATH": str(ctx.peers / "py")})
    if ctx.has("pm2"):
        # `pm2 --version` would start a daemon in ~/.pm2: read the package instead.
        pkg = ctx.peers / "npm" / "node_modules" / "pm2" / "package.json"
        versions["pm2"] = json.loads(pkg.read_text(encoding="utf-8"))["version"]
        versions["node.js"] = _first_line(["node", "--version"], ctx.env)
    if ctx.has("pueue"):
        versions["pueue"] = _first_line([str(ctx.pueued_bin), "--version"], ctx.env)
    git = _first_line(["git", "-C", str(ctx.repo), "describe", "--always", "--dirty"], ctx.env)
    changed = subprocess.run(["git", "-C", str(ctx.repo), "status", "--short"], env=ctx.env,
                             capture_output=True, timeout=30, check=False).stdout.decode()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": model.group(1).strip() if model else platform.machine(),
        "mem_total_mib": int(re.search(r"MemTotal:\s*(\d+)", meminfo).group(1)) // 1024,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "git": git,
        "uncommitted": changed.split("\n")[:-1],
        "versions": versions,
        "loadavg_start": procs.loadavg(),
    }


def make_tool(ctx, name, tag, n):
    if name == "dwbase":
        return tools.Dwbase(ctx, tag)
    programs = tools.peer_node_programs(ctx, ctx.work / f"{name}-{tag}" / "nodes", n)
    if name == "floor":
        return tools.Floor(ctx, tag, programs)
    return PEERS[name](ctx, tag, programs)


def supervision_run(ctx, name, n, p, idle_here):
    """One fresh daemon of one tool with N children (stand-ins, or real nodes without a C
    compiler): up, RSS, spawn → pids → ready, status, RSS, idle (at the largest N), kill -9 →
    new pid → ready."""
    tool = make_tool(ctx, name, f"n{n}", n)
    res = {"loadavg": procs.loadavg()}
    try:
        t0 = now()
        tool.up()
        res["daemon_up_ms"] = ms(now() - t0)
        res["mem_0"] = measure.memory(tool)
        ports = [ctx.base_port + i for i in range(n)]
        sp = measure.spawn(tool, n, ports, ctx.child_bin)
        nodes = sp.pop("nodes")
        res["spawn"] = sp
        if tool.status_argv():
            res["status"] = measure.command_ms(tool.status_argv(), tool.env, p["status_runs"],
                                               baselines={"true": ["/bin/true"]})
        res["mem_n"] = measure.memory(tool)
        if idle_here:
            log(f"{name}: {n} nodes idle for {p['idle_secs']:.0f} s")
            res["idle"] = measure.idle(tool, p["idle_secs"])
        victims = [(cfg, pid, tools.listen_port(cfg))
                   for cfg, pid in sorted(nodes.items())[:p["restarts"]]]
        res["restart"] = measure.restart(tool, victims)
    finally:
        tool.down()
    return res


def supervision(ctx, p, names):
    out = {"baseline": {}, "tools": {}}
    log("baselines")
    out["baseline"]["true"] = measure.command_ms(["/bin/true"], ctx.env, p["status_runs"])
    out["baseline"]["dwbase_version"] = measure.command_ms([ctx.dwbase, "--version"], ctx.env,
                                                           p["status_runs"])
    out["baseline"]["bare_node"] = measure.bare_node_ready(ctx.node_bin, ctx.base_port, ctx.work)
    biggest = max(p["nodes"])
    out["children"] = "stand-in (scripts/bench/standin.c)" if ctx.standin else "dwbase-node"
    if ctx.floor:
        names = names + ["floor"]
    for name in names:
        out["tools"][name] = {}
        for n in p["nodes"]:
            log(f"{name}: {n} node(s) (load {procs.loadavg()[0]:.2f})")
            out["tools"][name][str(n)] = failsafe(
                ctx, lambda name=name, n=n: supervision_run(ctx, name, n, p, n == biggest))
    # real nodes: what an operator waits for (each node's own start-up included), and dwbase
    # as shipped with the swarm on (every node a peer of every other)
    if ctx.standin:
        log(f"dwbase: {biggest} real nodes")
        out["dwbase_real"] = failsafe(ctx, lambda: real_run(ctx, biggest, p, swarm=False))
    log(f"dwbase: {biggest} real nodes with swarm on")
    out["dwbase_swarm"] = failsafe(ctx, lambda: real_run(ctx, biggest, p, swarm=True))
    return out


def real_run(ctx, n, p, swarm):
    """N real dwbase-node processes: spawn → pids → ready; without the swarm also kill -9 →
    new pid → ready."""
    tag = f"{'swarm' if swarm else 'real'}-n{n}"
    tool = tools.Dwbase(ctx, tag, swarm=swarm, node_bin=ctx.node_bin)
    try:
        tool.up()
        sp = measure.spawn(tool, n, [ctx.base_port + i for i in range(n)], ctx.node_bin)
        nodes = sp.pop("nodes")
        if swarm:
            return sp
        victims = [(cfg, pid, tools.listen_port(cfg))
                   for cfg, pid in sorted(nodes.items())[:p["restarts"]]]
        return {"spawn": sp, "restart": measure.restart(tool, victims)}
    finally:
        tool.down()


def failsafe(ctx, run_one):
    """Runs one measurement; a failure is recorded as {"error": …} (and everything it started
    is stopped) so that the other figures of the section are kept."""
    try:
        return run_one()
    except Exception as e:  # noqa: BLE001 (reported in the output)
        traceback.print_exc()
        tools.cleanup(ctx)
        return {"error": f"{type(e).__name__}: {e}"}


def logs(ctx, p, names):
    """One chatty child per tool, and the floors (its own file; a pipe into cat)."""
    chatty_py = str(Path(__file__).with_name("chatty.py"))
    fifo = ctx.work / "chatty.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    cenv = {"CHATTY_BYTES": str(p["log_bytes"]), "CHATTY_LINE": str(p["log_line"]),
            "CHATTY_FIFO": str(fifo)}
    args = (p["log_bytes"], p["log_line"], fifo)
    results = []

    def floor(label, shell):
        """chatty.py run by `sh -c SHELL chatty.py OUT`: writing its own file, or into a
        pipe that `cat` copies to the file."""
        folder = ctx.work / "floor"
        folder.mkdir(exist_ok=True)
        out = folder / f"{label.replace(' ', '-')}.log"
        sh = subprocess.Popen(["sh", "-c", shell, chatty_py, str(out)],
                              env={**ctx.env, **cenv}, stdin=subprocess.DEVNULL)

        def start():
            if "|" not in shell:
                return {"writer": sh.pid}  # sh exec'd chatty.py
            shell_exe = procs.exe_name(sh.pid)

            def execd():
                kids = procs.children(sh.pid)
                done = len(kids) == 2 and all(procs.exe_name(k) != shell_exe for k in kids)
                return kids if done else None

            kids = procs.wait_for(execd, 10, "the pipeline to start")
            cat = [k for k in kids if procs.exe_name(k) == "cat"]
            return {"writer": [k for k in kids if k not in cat], "helpers": cat}

        try:
            return measure.log_throughput(f"{label} (floor)", start, out, *args)
        finally:
            tools.reap(sh)

    log("logs: floors")
    # "--bench-work OUT": every process we start names the work dir (see tools.cleanup)
    results.append(floor("own file", 'exec "$0" --bench-work "$1" > "$1"'))
    results.append(floor("pipe into cat", '"$0" --bench-work "$1" | cat > "$1"'))
    for name in names:
        log(f"logs: {name} (load {procs.loadavg()[0]:.2f})")
        if name == "dwbase":
            tool = tools.Dwbase(ctx, "logs", restart="never", node_bin=chatty_py, run_args=[
                "--log-max-bytes", str(64 << 20), "--log-keep", "64"])
            tool.env.update(cenv)
            log_file = tool.root / "devnet" / "node-a" / "logs" / "node.log"
        else:
            folder = ctx.work / f"{name}-logs" / "chatty"
            (folder / "logs").mkdir(parents=True, exist_ok=True)
            prog = tools.Program("chatty", [chatty_py, "--bench-work", str(ctx.work)],
                                 folder / "logs" / "chatty.log", env=cenv, restart=False)
            tool = PEERS[name](ctx, "logs", [prog])
            log_file = prog.log  # pueue: its own task log, known once the task is added
        try:
            tool.up()
            if isinstance(tool, tools.Pueue):
                log_file = tool.task_log("chatty")

            def start(tool=tool):
                if subprocess.run(tool.start_argv(1), env=tool.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, timeout=120).returncode != 0:
                    raise RuntimeError(f"{tool.name}: starting the chatty child failed")
                helpers = tool.helpers()
                writer = procs.wait_for(
                    lambda: [c for c in procs.children(tool.pid) if c not in helpers
                             and chatty_py in " ".join(procs.cmdline(c))],
                    30, "the chatty child")[0]
                return {"daemon": tool.pid, "helpers": helpers, "writer": writer}

            r = failsafe(ctx, lambda: measure.log_throughput(tool.name, start, log_file, *args))
            r.setdefault("tool", tool.name)
            r["note"] = ("timestamp prefix per line (25 bytes), rotated at 64 MiB"
                         if name == "dwbase" else tool.log_note)
            results.append(r)
        finally:
            tool.down()
    return results


def node(ctx, p, example):
    log(f"node: {p['atoms']} atoms, {p['asks']} asks (load {procs.loadavg()[0]:.2f})")
    return measure.node_bench(example, p["atoms"], p["asks"], p["single"], ctx.env)


def run(args):
    ctx = context(args)
    ctx.work.mkdir(parents=True, exist_ok=True)
    p = dict(QUICK if args.quick else FULL)
    for key in ("idle_secs", "restarts", "status_runs", "log_bytes", "atoms", "asks"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    if args.nodes:
        p["nodes"] = [int(x) for x in args.nodes.split(",")]
    sections = args.only.split(",") if args.only else list(SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    names = ["dwbase"] + [n for n in PEERS if not args.no_peers and ctx.has(n)]
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if ctx.base_port <= hi and ctx.base_port + max(p["nodes"]) > lo:
        log(f"warning: ports {ctx.base_port}+ overlap the ephemeral range {lo}-{hi}: an outgoing "
            f"connection can take a node's port before it binds (choose --base-port above {hi})")
    results = {"meta": machine(ctx), "params": {**p, "quick": args.quick, "sections": sections,
                                                 "base_port": ctx.base_port, "tools": names}}
    failed = False
    try:
        for section in sections:
            try:
                if section == "supervision":
                    results["supervision"] = supervision(ctx, p, names)
                elif section == "logs":
                    results["logs"] = logs(ctx, p, names)
                elif section == "node":
                    results["node"] = node(ctx, p, args.example)
            except Exception as e:  # keep the other sections' figures
                failed = True
                traceback.print_exc()
                results.setdefault("errors", {})[section] = f"{type(e).__name__}: {e}"
                tools.cleanup(ctx)
    finally:
        tools.cleanup(ctx)
    results["meta"]["loadavg_end"] = procs.loadavg()
    failed = failed or bool(report.errors(results))
    results["goals"] = report.goals(results)
    text = report.markdown(results)
    for path, body in ((args.json_out, json.dumps(results, indent=1) + "\n"),
                       (args.md_out, text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(body, encoding="utf-8")
    print(text)
    log(f"JSON: {args.json_out}")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "cleanup", "report"])
    ap.add_argument("--work")
    ap.add_argument("--bin-dir")
    ap.add_argument("--json-in", help="report: the JSON of an earlier run")
    ap.add_argument("--repo", default=".")
    ap.add_argument("--base-port", type=int, default=62000)
    ap.add_argument("--example", help="the node bench binary (target/release/examples/bench)")
    ap.add_argument("--standin", help="the stand-in child (scripts/bench/standin.c, built)")
    ap.add_argument("--floor", help="the floor supervisor (scripts/bench/floor.c, built)")
    ap.add_argument("--json-out")
    ap.add_argument("--md-out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--nodes", help="comma list of devnet sizes")
    ap.add_argument("--idle-secs", type=float)
    ap.add_argument("--restarts", type=int)
    ap.add_argument("--status-runs", type=int)
    ap.add_argument("--log-bytes", type=int)
    ap.add_argument("--atoms", type=int)
    ap.add_argument("--asks", type=int)
    args = ap.parse_args()
    if args.command == "report":
        if not args.json_in:
            ap.error("report needs --json-in")
        print(report.markdown(json.loads(Path(args.json_in).read_text(encoding="utf-8"))), end="")
        return 0
    if not (args.work and args.bin_dir):
        ap.error(f"{args.command} needs --work and --bin-dir")
    if args.command == "cleanup":
        tools.cleanup(context(args))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
