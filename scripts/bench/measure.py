"""The measurements, each written once and run against any tool (see tools.py)."""

import os
import re
import signal
import subprocess
import tempfile
import time

import chatty
import procs
from procs import now

DEVNULL = subprocess.DEVNULL


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def pctl(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] if xs else None


def ms(seconds):
    return round(seconds * 1000, 3)


def command_ms(argv, env, reps, baselines=None):
    """Wall time of a whole command (fork, exec, its work, exit), `reps` runs: median/p90/min
    in ms and the exit codes seen. `baselines` ({name: argv}) run in the same loop, one each
    before every run of the command, so that a change of load hits both alike; their medians
    come back under "baseline_ms"."""
    samples, codes = [], set()
    base = {name: [] for name in baselines or {}}

    def once(cmd):
        t0 = now()
        rc = subprocess.run(cmd, env=env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
                            check=False).returncode
        return now() - t0, rc

    for _ in range(reps):
        for name, cmd in (baselines or {}).items():
            base[name].append(once(cmd)[0])
        t, rc = once(argv)
        samples.append(t)
        codes.add(rc)
    out = {"median_ms": ms(median(samples)), "p90_ms": ms(pctl(samples, 0.9)),
           "min_ms": ms(min(samples)), "runs": reps, "exit_codes": sorted(codes)}
    if base:
        out["baseline_ms"] = {name: ms(median(v)) for name, v in base.items()}
    return out


def memory(tool):
    """The daemon's RSS and PSS, and the PSS of its per-child helpers (log pipes), in KiB."""
    helpers = tool.helpers()
    return {
        "daemon_rss_kib": procs.rss_kib(tool.pid),
        "daemon_pss_kib": procs.pss_kib(tool.pid),
        "helpers": len(helpers),
        "helpers_pss_kib": sum(procs.pss_kib(p) for p in helpers),
    }


def node_children(watch, node_bin):
    """{config path: (pid, first seen)} of the node processes a ChildWatch saw (the earliest
    per config), read once they have exec'd."""
    base = os.path.basename(node_bin)
    found = {}
    for pid, seen in watch.first_seen.items():
        cmd = procs.cmdline(pid)
        cfg = procs.config_of(pid)
        if cfg and cmd and os.path.basename(cmd[0]) == base:
            if cfg not in found or seen < found[cfg][1]:
                found[cfg] = (pid, seen)
    return found


def spawn(tool, n, ports, node_bin, timeout=180.0):
    """Runs the tool's start command for N children and times, from launching the command:
    every node process forked (seen in /proc as a child of the daemon), every node answering
    GET /readyz 200 (polled every 2 ms), and the command's own exit."""
    for p in ports:
        procs.wait_for(lambda p=p: procs.port_free(p), 30, f"port {p} to be free")
    watch = procs.ChildWatch(tool.pid)
    out = tempfile.TemporaryFile()
    cpu0 = procs.cpu_seconds(tool.pid)
    t0 = now()
    cmd = subprocess.Popen(tool.start_argv(n), env=tool.env, stdin=DEVNULL, stdout=out,
                           stderr=DEVNULL)
    ready_at, t_cmd, next_sweep = {}, None, 0.0
    deadline = t0 + timeout
    while len(ready_at) < len(ports):
        watch.poll()
        if t_cmd is None and cmd.poll() is not None:
            t_cmd = now()
        if now() >= next_sweep:
            for p in ports:
                if p not in ready_at and procs.http_ok(p, timeout=0.2):
                    ready_at[p] = now()
                watch.poll()  # a sweep of 50 ports is long: keep the fork times sharp
            next_sweep = now() + 0.002
        if now() > deadline:
            cmd.kill()
            raise TimeoutError(f"{tool.name}: {len(ready_at)} of {n} nodes ready after "
                               f"{timeout:.0f} s")
        time.sleep(0.0005)
    watch.poll()
    cpu = procs.cpu_seconds(tool.pid) - cpu0
    if t_cmd is None:
        cmd.wait(timeout=timeout)
        t_cmd = now()
    out.seek(0)
    output = out.read().decode(errors="replace")
    nodes = node_children(watch, node_bin)
    if len(nodes) < n:
        raise RuntimeError(f"{tool.name}: saw {len(nodes)} of {n} node processes")
    seen = sorted(s for _, s in nodes.values())
    result = {
        "n": n,
        "first_pid_ms": ms(seen[0] - t0),
        "all_pids_ms": ms(seen[-1] - t0),
        "all_ready_ms": ms(max(ready_at.values()) - t0),
        "command_ms": ms(t_cmd - t0),
        "command_exit": cmd.returncode,
        "daemon_cpu_ms": ms(cpu),
        "nodes": {cfg: pid for cfg, (pid, _) in nodes.items()},
    }
    m = re.search(r'"timings":\s*(\{[^}]*\})', output)
    if m:  # dwbase's own account (from the deploy request, supervisor already up)
        result["self_reported"] = {k: int(v) for k, v in re.findall(r'"(\w+)":\s*(\d+)',
                                                                    m.group(1))}
    return result


def restart(tool, victims, timeout=30.0, never_window=3.0):
    """kill -9 of each victim node (pid only, not its group) in turn; times the first new
    node child of the daemon for the same config (polled in /proc every ~0.1 ms), then its
    GET /readyz 200 (polled every 1 ms), then — for dwbase — the supervisor's own status
    showing it ready. Victims are distinct nodes: each is a first restart, no backoff.
    A tool that does not restart (`tool.restarts` false: pueue) gets one victim, watched for
    `never_window` seconds (ten times pueue's 300 ms task loop); no new process in that time
    is reported as "never restarts", with what the tool's status then says of the child."""
    if not tool.restarts:
        victims, timeout = victims[:1], never_window
    samples = []
    for cfg, pid, port in victims:
        watch = procs.ChildWatch(tool.pid)
        pending, new = [], None
        t0 = now()
        os.kill(pid, signal.SIGKILL)
        deadline = t0 + timeout
        while new is None:
            pending += watch.poll()
            for p in list(pending):
                c = procs.config_of(p)
                if c == cfg:
                    new = p
                    break
                if c is not None or not procs.alive(p):
                    pending.remove(p)  # another child (a log pipe) or gone
            if now() > deadline:
                if tool.restarts:
                    raise TimeoutError(f"{tool.name}: no new process for {cfg} after kill -9")
                break
            time.sleep(0.0001)
        if new is None:
            samples.append({"config": cfg, "old_pid": pid, "new_pid": None,
                            "waited_s": round(now() - t0, 2),
                            "tool_reports": tool.child_report(cfg)})
            continue
        t_new = watch.first_seen[new] - t0
        procs.wait_for(lambda: procs.http_ok(port, timeout=0.2), timeout,
                       f"{cfg} ready again", pause=0.001)
        sample = {"config": cfg, "old_pid": pid, "new_pid": new, "new_pid_ms": ms(t_new),
                  "ready_ms": ms(now() - t0)}
        if tool.supervisor_ready(new) is not None:
            procs.wait_for(lambda: tool.supervisor_ready(new), timeout,
                           "the supervisor to report it ready", pause=0.002)
            sample["supervisor_ready_ms"] = ms(now() - t0)
        samples.append(sample)
    if not any(s.get("new_pid") for s in samples):
        return {"never_restarts": True, "waited_s": max(s["waited_s"] for s in samples),
                "samples": samples}
    keys = ["new_pid_ms", "ready_ms", "supervisor_ready_ms"]
    summary = {k: median([s[k] for s in samples if k in s]) for k in keys}
    summary.update({k.replace("_ms", "_max_ms"): max((s[k] for s in samples if k in s),
                                                     default=None) for k in keys})
    return {**{k: v for k, v in summary.items() if v is not None}, "samples": samples}


def idle(tool, seconds, settle=3.0):
    """CPU time (utime+stime) of the daemon and its helpers, and the daemon's wake-ups
    (voluntary context switches) and preemptions (involuntary ones), over `seconds` with
    nothing asked of them, after `settle` seconds."""
    time.sleep(settle)
    pids = [tool.pid] + tool.helpers()
    cpu0 = [procs.cpu_seconds(p) for p in pids]
    ctx0 = procs.context_switches(tool.pid)
    mach0 = procs.machine_cpu_busy()
    t0 = now()
    time.sleep(seconds)
    wall = now() - t0
    cpu1 = [procs.cpu_seconds(p) for p in pids]
    ctx1 = procs.context_switches(tool.pid)
    mach1 = procs.machine_cpu_busy()
    return {
        "seconds": round(wall, 1),
        "daemon_cpu_pct": round((cpu1[0] - cpu0[0]) / wall * 100, 3),
        "helpers_cpu_pct": round(sum(b - a for a, b in zip(cpu0[1:], cpu1[1:])) / wall * 100, 3),
        "daemon_wakeups_per_s": round((ctx1[0] - ctx0[0]) / wall, 2),
        "daemon_preemptions_per_s": round((ctx1[1] - ctx0[1]) / wall, 2),
        "machine_busy_pct": round((mach1[0] - mach0[0]) / max(1, mach1[1] - mach0[1]) * 100, 1),
        **{f"end_{k}": v for k, v in memory(tool).items()},
    }


def count_in_files(paths, needle):
    """(occurrences of `needle`, newlines, bytes) in the files, streamed. `needle` ends with
    a newline and holds no other, so counting within whole lines finds every occurrence."""
    hits, lines, total = 0, 0, 0
    for path in paths:
        carry = b""
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                total += len(block)
                lines += block.count(b"\n")
                data = carry + block
                cut = data.rfind(b"\n") + 1
                hits += data.count(needle, 0, cut)
                carry = data[cut:]
    return hits, lines, total


def _tail_has(path, mark):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256))
            return mark in f.read()
    except OSError:
        return False


def log_throughput(name, start, log, total_bytes, line_len, fifo, timeout=600.0):
    """Times one chatty child (scripts/bench/chatty.py) writing `total_bytes` of
    `line_len`-byte lines through a tool into `log`: from the go signal on the FIFO until its
    END line is in the file, then counts the lines that landed (in `log` and its rotated
    files). `start()` launches the child (and returns the pids whose CPU to charge:
    {"daemon": pid, "helpers": [...], "writer": pid}) — it must be waiting on the FIFO."""
    lines, _ = chatty.plan(total_bytes, line_len)
    payload = chatty.payload_line(line_len)
    pids = start()
    fd = procs.wait_for(lambda: _open_fifo(fifo), 60, f"{name}: the chatty child to start")
    roles = {role: ([p] if isinstance(p, int) else list(p)) for role, p in pids.items() if p}
    cpu0 = {role: sum(procs.cpu_seconds(p) for p in ps) for role, ps in roles.items()}
    t0 = now()
    os.close(fd)  # go
    procs.wait_for(lambda: _tail_has(log, chatty.END_MARK), timeout,
                   f"{name}: the END line in {log}", pause=0.002)
    wall = now() - t0
    cpu = {role: sum(procs.cpu_seconds(p) for p in ps) - cpu0[role] for role, ps in roles.items()}
    files = sorted(log.parent.glob(log.name + "*"))
    files = [f for f in files if re.fullmatch(re.escape(log.name) + r"(\.\d+)?", f.name)]
    found, _, on_disk = count_in_files(files, payload)
    for f in files:  # up to a few GB per run: do not keep them until the end
        f.unlink()
    return {
        "tool": name,
        "payload_bytes": lines * line_len,
        "line_bytes": line_len,
        "lines_written": lines,
        "lines_found": found,
        "lines_lost": lines - found,
        "seconds": round(wall, 3),
        "mb_per_s": round(lines * line_len / wall / 1e6, 1),
        "bytes_on_disk": on_disk,
        "files": len(files),
        **{f"{role}_cpu_pct": round(c / wall * 100, 1) for role, c in cpu.items()},
    }


def _open_fifo(path):
    """The FIFO's write end once the chatty child has opened its read end, else None."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


NODE_PHASE = re.compile(
    r"^(remember|ask)\s+(\d+) clients\s+(\d+) req\s+(\d+) req/s\s+p50\s+([\d.]+) ms\s+"
    r"p99\s+([\d.]+) ms\s+max\s+([\d.]+) ms\s+cpu/req node\s+(\d+) us client\s+(\d+) us"
)


def node_bench(example, atoms, asks, single, env, timeout=3600):
    """Runs node/examples/bench.rs (a real dwbase-node over HTTP on loopback) and parses its
    report."""
    t0 = now()
    proc = subprocess.run(
        [str(example), "--atoms", str(atoms), "--asks", str(asks), "--single", str(single)],
        env=env, stdin=DEVNULL, capture_output=True, timeout=timeout, check=False,
    )
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"node bench failed ({proc.returncode}):\n{text}\n"
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    phases = []
    for line in text.splitlines():
        m = NODE_PHASE.match(line.strip())
        if m:
            op, clients, n, rps, p50, p99, mx, cpu_node, cpu_client = m.groups()
            phases.append({"op": op, "clients": int(clients), "requests": int(n),
                           "req_per_s": int(rps), "p50_ms": float(p50), "p99_ms": float(p99),
                           "max_ms": float(mx), "node_cpu_us_per_req": int(cpu_node),
                           "client_cpu_us_per_req": int(cpu_client)})
    rss = re.search(r"node RSS ([\d.]+) MiB \(peak ([\d.]+) MiB\); atoms stored (\d+).*"
                    r"index (\d+) docs, (\d+) terms.*data dir ([\d.]+) MiB", text)
    info = {}
    if rss:
        info = {"node_rss_mib": float(rss.group(1)), "node_peak_rss_mib": float(rss.group(2)),
                "atoms_stored": int(rss.group(3)), "index_docs": int(rss.group(4)),
                "index_terms": int(rss.group(5)), "data_dir_mib": float(rss.group(6))}
    return {"atoms": atoms, "asks": asks, "single_client_requests": single, "phases": phases,
            **info, "seconds": round(now() - t0, 1), "raw": text}


def bare_node_ready(node_bin, port, work, reps=3):
    """A dwbase-node started directly (no supervisor) until GET /readyz answers 200, and its
    RSS then: the floor for 'ready' figures."""
    samples, rss = [], []
    for i in range(reps):
        data = work / f"bare-node-{i}"
        procs.wait_for(lambda: procs.port_free(port), 30, f"port {port} to be free")
        t0 = now()
        p = subprocess.Popen([node_bin, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
                             stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        try:
            procs.wait_for(lambda: procs.http_ok(port, timeout=0.2), 30, "a bare node ready",
                           pause=0.001)
            samples.append(now() - t0)
            rss.append(procs.rss_kib(p.pid))
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {"ready_ms": ms(median(samples)), "runs": reps, "rss_kib": median(rss)}
