"""The markdown report and the goal verdicts, from the results dict (the JSON written)."""

PEER_ORDER = ("supervisord", "pm2", "pueue")


def _get(d, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt_ms(v):
    if v is None:
        return "–"
    if v < 10:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


def fmt_mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_pct(v):
    return "–" if v is None else f"{v:.2f} %" if v < 10 else f"{v:.0f} %"


def ratio(peer, ours):
    if not isinstance(peer, (int, float)) or not isinstance(ours, (int, float)) or not ours:
        return "–"
    r = peer / ours
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def goals(res):
    """[{goal, target, measured, met}] for the goals named in the supervision and node
    issues, evaluated on what this run measured (at its largest N)."""
    out = []
    sup = _get(res, "supervision", "tools", "dwbase") or {}
    big = max(sup, key=int) if sup else None
    at = sup.get(big, {}) if big else {}
    n = f"{big} nodes" if big else ""

    def add(goal, target, value, text, ok):
        if value is not None:
            out.append({"goal": goal, "target": target, "measured": text, "met": bool(ok)})

    fl = _get(res, "supervision", "tools", "floor", big) or {}
    st = _get(at, "status", "median_ms")
    true = _get(at, "status", "baseline_ms", "true")
    add("`deploy status` whole process (median)", "≤ 2 × `/bin/true`", st,
        f"{fmt_ms(st)} (`/bin/true`: {fmt_ms(true)})", st is not None and true and st <= 2 * true)
    rss = _get(at, "mem_n", "daemon_rss_kib")
    add(f"supervisor RSS at {n}", "< 10 MiB", rss, fmt_mib(rss), rss is not None and rss < 10240)
    sp = _get(at, "spawn", "all_pids_ms")
    own = _get(at, "spawn", "self_reported", "spawned_ms")
    add(f"{n} spawned (deploy launched → last child forked)", "≤ 50 ms", sp,
        f"{fmt_ms(sp)} (floor: {fmt_ms(_get(fl, 'spawn', 'all_pids_ms'))}; deploy's own "
        f"spawned_ms: {own} ms)", sp is not None and sp <= 50)
    for size in sorted(sup, key=int):
        s_ = _get(sup, size, "spawn") or {}
        if "command_ms" in s_ and "all_ready_ms" in s_:
            late = s_["command_ms"] - s_["all_ready_ms"]
            add(f"`deploy devnet` returns after the last of {size} is ready", "≤ 10 ms", late,
                f"{fmt_ms(late)} (ready {fmt_ms(s_['all_ready_ms'])}, returned "
                f"{fmt_ms(s_['command_ms'])})", late <= 10)
    rp = _get(at, "restart", "new_pid_ms")
    add("kill -9 → new pid (median)", "≤ 1 ms", rp,
        f"{fmt_ms(rp)} (floor: {fmt_ms(_get(fl, 'restart', 'new_pid_ms'))})",
        rp is not None and rp <= 1)
    rr = _get(at, "restart", "ready_ms")
    add("kill -9 → ready again (/readyz 200, median)", "< 200 ms", rr, fmt_ms(rr),
        rr is not None and rr < 200)
    rs = _get(at, "restart", "supervisor_ready_ms")
    add("kill -9 → `deploy status` shows ready (median)", "< 200 ms", rs,
        fmt_ms(rs), rs is not None and rs < 200)
    idle = _get(at, "idle")
    if idle:
        cpu = idle["daemon_cpu_pct"] + idle["helpers_cpu_pct"]
        add(f"idle supervisor CPU, {n}, {idle['seconds']:.0f} s", "< 0.05 % of a core", cpu,
            f"{cpu:.3f} %", cpu < 0.05)
        wk = idle["daemon_wakeups_per_s"]
        add(f"idle supervisor wake-ups, {n}", "≤ 1 per second", wk, f"{wk:.2f}/s", wk <= 1)
    ours = next((r for r in res.get("logs", []) if r["tool"] == "dwbase"), None)
    if ours and "mb_per_s" in ours:
        add("log capture, one chatty node", "≥ 400 MB/s", ours["mb_per_s"],
            f"{ours['mb_per_s']:.0f} MB/s", ours["mb_per_s"] >= 400)
        add("supervisor CPU during log capture", "< 5 %", ours.get("daemon_cpu_pct"),
            f"{fmt_pct(ours.get('daemon_cpu_pct'))} (log pipe: "
            f"{fmt_pct(ours.get('helpers_cpu_pct'))})", (ours.get("daemon_cpu_pct") or 0) < 5)
        add("log lines lost", "0", ours["lines_lost"], str(ours["lines_lost"]),
            ours["lines_lost"] == 0)
    for ph in _get(res, "node", "phases") or []:
        if ph["clients"] == 16 and ph["op"] in ("remember", "ask"):
            limit = 5 if ph["op"] == "remember" else 10
            add(f"node {ph['op']} p99 at 16 clients", f"< {limit} ms", ph["p99_ms"],
                fmt_ms(ph["p99_ms"]), ph["p99_ms"] < limit)
    return out


def errors(node, path=""):
    """[(where, message)] of every {"error": …} left by a failed measurement."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("error"), str):
            found.append((path or "run", node["error"]))
        for k, v in node.items():
            if k != "error":
                found += errors(v, f"{path}/{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            name = v.get("tool", i) if isinstance(v, dict) else i
            found += errors(v, f"{path}/{name}")
    return found


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def _supervision(res, lines):
    sup = res.get("supervision")
    if not sup:
        return
    t = sup["tools"]
    names = [x for x in ("dwbase",) + PEER_ORDER + ("floor",) if x in t]
    peers = [x for x in names if x not in ("dwbase", "floor")]
    sizes = list(t["dwbase"].keys())
    big = max(sizes, key=int)
    children = sup.get("children", "dwbase-node")
    lines += ["", f"### Supervision: N children ({children}, swarm off), a fresh daemon per N",
              "",
              "`floor` is scripts/bench/floor.c: posix_spawn of every child and an immediate "
              "respawn on exit, nothing else, measured by the same harness.", "",
              _row(["measure"] + names + [f"{p} ÷ dwbase" for p in peers]),
              _row(["---"] + ["---:"] * (len(names) + len(peers)))]

    def row(label, get, fmt, ratios=True):
        vals = [get(t[x]) for x in names]
        ours = vals[0]
        lines.append(_row([label] + [v if isinstance(v, str) else fmt(v) for v in vals]
                          + [ratio(get(t[x]), ours) if ratios else "" for x in peers]))

    def restart(d, n, key):
        r = _get(d, n, "restart") or {}
        if r.get("never_restarts"):
            return f"never restarts (none in {r['waited_s']:.0f} s)"
        return r.get(key)

    first = sizes[0]
    row("daemon RSS, 0 nodes", lambda d: _get(d, first, "mem_0", "daemon_rss_kib"), fmt_mib)
    for n in sizes:
        row(f"N={n}: start command → every node forked",
            lambda d, n=n: _get(d, n, "spawn", "all_pids_ms"), fmt_ms)
        row(f"N={n}: start command → every node ready",
            lambda d, n=n: _get(d, n, "spawn", "all_ready_ms"), fmt_ms)
        row(f"N={n}: start command returns",
            lambda d, n=n: _get(d, n, "spawn", "command_ms"), fmt_ms)
        row(f"N={n}: daemon CPU time meanwhile",
            lambda d, n=n: _get(d, n, "spawn", "daemon_cpu_ms"), fmt_ms)
        row(f"N={n}: status round trip (whole process, median)",
            lambda d, n=n: _get(d, n, "status", "median_ms"), fmt_ms)
        row(f"N={n}: … `/bin/true` in the same loop",
            lambda d, n=n: _get(d, n, "status", "baseline_ms", "true"), fmt_ms, ratios=False)
        row(f"N={n}: daemon RSS", lambda d, n=n: _get(d, n, "mem_n", "daemon_rss_kib"), fmt_mib)
        row(f"N={n}: daemon + per-node log helpers, PSS",
            lambda d, n=n: (_get(d, n, "mem_n", "daemon_pss_kib") or 0)
            + (_get(d, n, "mem_n", "helpers_pss_kib") or 0), fmt_mib)
        row(f"N={n}: kill -9 → new pid (median)",
            lambda d, n=n: restart(d, n, "new_pid_ms"), fmt_ms)
        row(f"N={n}: kill -9 → ready again (median)",
            lambda d, n=n: restart(d, n, "ready_ms"), fmt_ms)
    idle_secs = _get(t["dwbase"], big, "idle", "seconds")
    if idle_secs:
        row(f"N={big} idle {idle_secs:.0f} s: daemon + helpers CPU",
            lambda d: (_get(d, big, "idle", "daemon_cpu_pct") or 0)
            + (_get(d, big, "idle", "helpers_cpu_pct") or 0), lambda v: f"{v:.3f} %")
        row(f"N={big} idle: daemon wake-ups/s (voluntary context switches)",
            lambda d: _get(d, big, "idle", "daemon_wakeups_per_s"), lambda v: f"{v:.2f}")
        row(f"N={big} idle: … preempted while awake, /s (involuntary switches)",
            lambda d: _get(d, big, "idle", "daemon_preemptions_per_s"),
            lambda v: "–" if v is None else f"{v:.2f}")
        row(f"N={big} idle: RSS at the end",
            lambda d: _get(d, big, "idle", "end_daemon_rss_kib"), fmt_mib)
    lines += ["", "Ratios are peer ÷ dwbase: above 1 the peer takes more time or memory. "
              "\"start command returns\": dwbase's `deploy devnet` waits for every node's "
              "`/readyz`; the peers' start commands know no readiness (`supervisorctl start` "
              "waits for RUNNING, here `startsecs=0`)."]
    said = [f"N={n}: {r['samples'][0].get('tool_reports')}" for n in sizes
            for r in [_get(t.get("pueue", {}), n, "restart") or {}]
            if r.get("never_restarts") and r["samples"][0].get("tool_reports")]
    if said:
        lines += ["", "pueue after the kill -9 (its `status --json` of the task): "
                  + "; ".join(said) + "."]
    extra = []
    for n in sizes:
        own = _get(t["dwbase"], n, "spawn", "self_reported")
        if own:
            extra.append(f"N={n}: spawned {own.get('spawned_ms')} ms, ready {own.get('ready_ms')}"
                         f" ms")
    if extra:
        lines += ["", "dwbase's own account (`deploy devnet --json` timings, from the deploy "
                  "request to a running supervisor): " + "; ".join(extra) + "."]
    rs = [f"N={n}: {fmt_ms(_get(t['dwbase'], n, 'restart', 'supervisor_ready_ms'))}"
          for n in sizes if _get(t["dwbase"], n, "restart", "supervisor_ready_ms")]
    if rs:
        lines += ["", "kill -9 → `deploy status --json` shows the new pid ready (median): "
                  + "; ".join(rs) + "."]
    real = sup.get("dwbase_real")
    if real and "spawn" in real:
        sp, rs_ = real["spawn"], real.get("restart", {})
        lines += ["", f"dwbase with N={sp['n']} real `dwbase-node` processes (each node's own "
                  f"start-up included): every node forked {fmt_ms(sp['all_pids_ms'])}, every "
                  f"node ready {fmt_ms(sp['all_ready_ms'])}, command {fmt_ms(sp['command_ms'])}; "
                  f"kill -9 → new pid {fmt_ms(rs_.get('new_pid_ms'))}, → ready "
                  f"{fmt_ms(rs_.get('ready_ms'))} (medians)."]
    sw = sup.get("dwbase_swarm")
    if sw and "n" in sw:
        lines += ["", f"dwbase with swarm on (as shipped), N={sw['n']}: every node forked "
                  f"{fmt_ms(sw['all_pids_ms'])}, every node ready {fmt_ms(sw['all_ready_ms'])}, "
                  f"command {fmt_ms(sw['command_ms'])}."]
    b = sup.get("baseline", {})
    if b:
        lines += ["", f"Baselines: `/bin/true` {fmt_ms(_get(b, 'true', 'median_ms'))}, "
                  f"`dwbase --version` {fmt_ms(_get(b, 'dwbase_version', 'median_ms'))} "
                  f"(whole process, median); a bare `dwbase-node` start → ready "
                  f"{fmt_ms(_get(b, 'bare_node', 'ready_ms'))}, RSS "
                  f"{fmt_mib(_get(b, 'bare_node', 'rss_kib'))}."]


def _logs(res, lines):
    logs = res.get("logs")
    if not logs:
        return
    r0 = next((r for r in logs if "payload_bytes" in r), None)
    if not r0:
        return
    ours = next((r.get("mb_per_s") for r in logs if r["tool"] == "dwbase"), None)
    lines += ["", f"### Log capture: one chatty child, {r0['payload_bytes'] / 1e6:.0f} MB in "
              f"{r0['line_bytes']}-byte lines", "",
              _row(["path", "MB/s", "÷ dwbase", "lines lost", "daemon CPU", "log helper CPU",
                    "writer CPU", "bytes on disk", "note"]),
              _row(["---"] + ["---:"] * 7 + ["---"])]
    for r in logs:
        if "error" in r:
            lines.append(_row([r["tool"], "failed"] + [""] * 7))
            continue
        lines.append(_row([
            r["tool"], f"{r['mb_per_s']:.0f}", ratio(r["mb_per_s"], ours),
            f"{r['lines_lost']}", fmt_pct(r.get("daemon_cpu_pct")),
            fmt_pct(r.get("helpers_cpu_pct")), fmt_pct(r.get("writer_cpu_pct")),
            f"{r['bytes_on_disk'] / 1e6:.0f} MB", r.get("note", ""),
        ]))
    lines += ["", "MB = 10⁶ bytes of the child's output per second, from the go signal until its "
              "last line is in the file. CPU is % of one core over that time. Ratio: above 1 "
              "the path is faster than dwbase."]


def _node(res, lines):
    nb = res.get("node")
    if not nb:
        return
    lines += ["", f"### Node over HTTP on loopback (`node/examples/bench.rs`, real "
              f"`dwbase-node`, rate limits off)", "",
              f"Data set: {nb['atoms']} atoms remembered (the first "
              f"{nb['single_client_requests']} by 1 client into an empty store, the rest by 16), "
              f"then asks over all of them; stored {nb.get('atoms_stored', '?')} atoms, index "
              f"{nb.get('index_terms', '?')} terms, data dir {nb.get('data_dir_mib', '?')} MiB, "
              f"node RSS {nb.get('node_rss_mib', '?')} MiB (peak {nb.get('node_peak_rss_mib', '?')}"
              f" MiB).", "",
              _row(["operation", "clients", "requests", "req/s", "p50", "p99", "max",
                    "node CPU/req"]),
              _row(["---"] + ["---:"] * 7)]
    for p in nb["phases"]:
        lines.append(_row([p["op"], str(p["clients"]), str(p["requests"]), str(p["req_per_s"]),
                           fmt_ms(p["p50_ms"]), fmt_ms(p["p99_ms"]), fmt_ms(p["max_ms"]),
                           f"{p['node_cpu_us_per_req']} µs"]))


def markdown(res):
    m = res["meta"]
    v = m["versions"]
    lines = [
        f"## dwbase bench — {m['date_utc']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_mib'] / 1024:.1f} GiB RAM, "
        f"{m['kernel']}; load average {' '.join(map(str, m['loadavg_start']))} at the start, "
        f"{' '.join(map(str, m.get('loadavg_end', [])))} at the end (a shared machine). "
        f"Build {m.get('git')}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "."
        + (" Quick mode (small N, short windows)." if res["params"].get("quick") else ""),
    ]
    _supervision(res, lines)
    _logs(res, lines)
    _node(res, lines)
    g = res.get("goals") or []
    if g:
        lines += ["", "### Goals", "", _row(["goal", "target", "measured", "met"]),
                  _row(["---", "---", "---", "---"])]
        for x in g:
            lines.append(_row([x["goal"], x["target"], x["measured"],
                               "yes" if x["met"] else "**no**"]))
    for where, err in errors(res):
        lines += ["", f"**{where} failed:** {err}"]
    return "\n".join(lines) + "\n"
