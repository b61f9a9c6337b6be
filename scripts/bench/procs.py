"""Reading /proc (Linux): CPU time, memory, wake-ups, children, readiness probes, waiting."""

import http.client
import os
import socket
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def now():
    """Monotonic seconds (perf_counter: the finest clock we have)."""
    return time.perf_counter()


def _stat(pid):
    """The fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def ppid(pid):
    """Parent pid, or None when gone."""
    f = _stat(pid)
    return int(f[1]) if f else None


def alive(pid):
    """Whether the process exists and is not a zombie."""
    f = _stat(pid)
    return bool(f) and f[0] != b"Z"


def cpu_seconds(pid):
    """CPU time of a process in seconds, 0 when gone: the sum over its live threads of
    /proc/PID/task/TID/schedstat (nanoseconds on a CPU), else utime + stime (clock ticks,
    10 ms here: too coarse for a 50-node spawn). Threads that already ended are not counted
    by the first; the daemons measured here keep theirs."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        total = 0
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def _status_field(pid, key):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    """VmRSS in KiB (0 when gone)."""
    return _status_field(pid, "VmRSS:")


def pss_kib(pid):
    """Proportional set size in KiB (shared pages split among their users); 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def context_switches(pid):
    """(voluntary, involuntary) context switches summed over every thread. A voluntary one is
    the thread going to sleep: each is one wake-up later. An involuntary one is a preemption
    while it runs (e.g. by a child it has just woken with a request), not a wake-up."""
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        vol += _status_field(f"{pid}/task/{tid}", "voluntary_ctxt_switches:")
        invol += _status_field(f"{pid}/task/{tid}", "nonvoluntary_ctxt_switches:")
    return vol, invol


def cmdline(pid):
    """argv of a process as strings ([] when gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def exe_name(pid):
    """Base name of the program a process runs (its /proc/PID/exe), or None."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


def children(parent):
    """Pids whose parent is `parent` (a full scan of /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and ppid(name) == parent:
            out.append(int(name))
    return out


class ChildWatch:
    """Notices new children of one process, each with the time it was first seen.

    A process shows in /proc from its fork, with its parent already set, so `first_seen` is
    the fork time to within one poll. `poll` lists /proc and reads /stat only of pids it has
    not met yet, so a poll costs a directory listing (about 0.1 ms here)."""

    def __init__(self, parent):
        self.parent = parent
        self.first_seen = {}
        # every pid listed now, children included, is "not new"
        self.others = {n for n in os.listdir("/proc") if n.isdigit()}

    def poll(self):
        """Records new children; returns them."""
        t = now()
        listed = {n for n in os.listdir("/proc") if n.isdigit()}
        fresh = []
        for name in listed - self.others:
            pid = int(name)
            if pid in self.first_seen:
                continue
            if ppid(pid) == self.parent:
                self.first_seen[pid] = t
                fresh.append(pid)
            else:
                self.others.add(name)
        self.others &= listed
        return fresh


def config_of(pid):
    """The `--config FILE` argument of a process, or None."""
    cmd = cmdline(pid)
    if "--config" in cmd[1:-1]:
        return cmd[cmd.index("--config") + 1]
    return None


def http_ok(port, path="/readyz", timeout=0.5):
    """Whether GET http://127.0.0.1:PORT/PATH answers 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def port_free(port):
    """Whether 127.0.0.1:PORT can be bound (as a server binds it: SO_REUSEADDR, so
    connections in TIME-WAIT do not count)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(cond, timeout, what, pause=0.005):
    """Polls `cond()` until it is truthy (returns its value) or raises after `timeout` s."""
    deadline = now() + timeout
    while True:
        v = cond()
        if v:
            return v
        if now() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(pause)


def loadavg():
    """The 1/5/15-minute load averages."""
    with open("/proc/loadavg", encoding="ascii") as f:
        a = f.read().split()
    return [float(a[0]), float(a[1]), float(a[2])]


def machine_cpu_busy():
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def kill(pid, sig):
    """Signals a pid; a gone process is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
