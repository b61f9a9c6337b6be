"""The supervisors under test behind one interface: dwbase, supervisord (PyPI), pm2 (npm), pueue
(crates.io), and the floor (scripts/bench/floor.c: posix_spawn and an immediate respawn, nothing else).

Every tool runs from its own folder under the bench's work dir, so whatever it starts has that
path on its command line; `cleanup` stops each tool with its own stop command and then
SIGKILLs, by pid, any process still naming the work dir (never by program name).
"""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import procs

DEVNULL = subprocess.DEVNULL


def node_name(i):
    """node-a … node-z, node-aa …: the names `dwbase deploy devnet` gives (bijective base 26)."""
    n, letters = i + 1, ""
    while n > 0:
        n -= 1
        letters = chr(ord("a") + n % 26) + letters
        n //= 26
    return f"node-{letters}"


def listen_port(config_path):
    """The port of `listen = "127.0.0.1:P"` in a node config."""
    with open(config_path, encoding="utf-8") as f:
        m = re.search(r'^\s*listen\s*=\s*"[^"]*:(\d+)"', f.read(), re.M)
    if not m:
        raise ValueError(f"{config_path}: no listen address")
    return int(m.group(1))


@dataclass
class Ctx:
    """Where things are."""

    repo: Path
    bin_dir: Path
    work: Path
    base_port: int
    env: dict  # the environment every child gets (DWBASE_* removed)
    # scripts/bench/standin.c built by bench.sh (None: no C compiler; real nodes then)
    standin: Path = None
    # scripts/bench/floor.c built by bench.sh (None: no floor column)
    floor: Path = None

    @property
    def dwbase(self):
        return str(self.bin_dir / "dwbase")

    @property
    def supervisor_bin(self):
        return str(self.bin_dir / "dwbase-supervisor")

    @property
    def node_bin(self):
        return str(self.bin_dir / "dwbase-node")

    @property
    def child_bin(self):
        """The children of the supervision figures: the stand-in where it was built (as the
        figures of issue 14 were taken: the supervisor's cost, not the node's start-up),
        else the real node."""
        return str(self.standin) if self.standin else self.node_bin

    @property
    def peers(self):
        return self.work / "peers"

    @property
    def supervisord_bin(self):
        return self.peers / "py" / "bin" / "supervisord"

    @property
    def supervisorctl_bin(self):
        return self.peers / "py" / "bin" / "supervisorctl"

    @property
    def pm2_bin(self):
        return self.peers / "npm" / "node_modules" / ".bin" / "pm2"

    @property
    def pueue_bin(self):
        return self.peers / "cargo" / "bin" / "pueue"

    @property
    def pueued_bin(self):
        return self.peers / "cargo" / "bin" / "pueued"

    def has(self, tool):
        """Whether a peer was installed (the dwbase binaries always are)."""
        if tool == "supervisord":
            return self.supervisord_bin.exists()
        if tool == "pm2":
            return self.pm2_bin.exists()
        if tool == "pueue":
            return self.pueue_bin.exists() and self.pueued_bin.exists()
        return True


@dataclass
class Program:
    """One child for a peer supervisor: argv, output file, extra environment."""

    name: str
    argv: list
    log: Path
    env: dict = field(default_factory=dict)
    restart: bool = True


def peer_node_programs(ctx, folder, n, swarm=False, program=None):
    """N node configs rendered like `dwbase deploy devnet` renders them (from
    deploy/devnet.toml: id, listen on base_port + i, relative data/log dirs in the node's own
    folder), and the programs that run them."""
    template = (ctx.repo / "deploy" / "devnet.toml").read_text(encoding="utf-8")
    programs = []
    for i in range(n):
        name, port = node_name(i), ctx.base_port + i
        peers = [f'"http://127.0.0.1:{ctx.base_port + j}"' for j in range(n) if j != i]
        text = template
        for pattern, value in [
            (r'^id = ".*"', f'id = "{name}"'),
            (r'^listen = ".*"', f'listen = "127.0.0.1:{port}"'),
            (r"^enabled = .*", f"enabled = {'true' if swarm else 'false'}"),
            (r"^peers = .*", f"peers = [{', '.join(peers) if swarm else ''}]"),
        ]:
            text, count = re.subn(pattern, value, text, count=1, flags=re.M)
            if count != 1:
                raise ValueError(f"deploy/devnet.toml: no line matching {pattern}")
        node_dir = folder / name
        (node_dir / "logs").mkdir(parents=True, exist_ok=True)
        config = node_dir / "config.toml"
        config.write_text(text, encoding="utf-8")
        programs.append(
            Program(name, [program or ctx.child_bin, "--config", str(config)],
                    node_dir / "logs" / "node.log")
        )
    return programs


class Tool:
    """A supervisor daemon: `up`, a command that starts its children, a status command,
    `down`. `pid` is the daemon's pid once up."""

    name = "?"
    pid = None
    env = None
    log_note = ""
    # False: the tool does not restart a child that dies (kill -9 is then watched for a
    # bounded window, see measure.restart)
    restarts = True

    def run(self, argv, timeout=120):
        return subprocess.run(
            argv, env=self.env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, timeout=timeout
        ).returncode

    def helpers(self):
        """Processes besides the daemon that the tool runs per child (log pipes)."""
        return []

    def up(self):
        raise NotImplementedError

    def start_argv(self, n):
        raise NotImplementedError

    def status_argv(self):
        raise NotImplementedError

    def down(self):
        raise NotImplementedError

    def supervisor_ready(self, pid):
        """Whether the supervisor itself reports the child with this pid ready (None: the
        tool has no such notion)."""
        return None

    def child_report(self, config):
        """What the tool's status says of the child running `config` (a short text), or
        None; recorded after a kill -9 that it does not restart."""
        return None


class Dwbase(Tool):
    """Our supervisor, started first (`dwbase-supervisor run --root`), then driven by the CLI
    the way an operator does (`dwbase deploy devnet|status|stop`)."""

    name = "dwbase"

    def __init__(self, ctx, tag, *, swarm=False, restart="always", run_args=(), node_bin=None):
        self.ctx = ctx
        self.root = ctx.work / f"dwbase-{tag}"
        self.swarm = swarm
        self.restart = restart
        self.node_bin = node_bin or ctx.child_bin
        self.run_args = list(run_args)
        self.env = {**ctx.env, "DWBASE_DATA_DIR": str(self.root)}
        self.proc = None

    def up(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.ctx.supervisor_bin, "run", "--root", str(self.root), "--node-bin",
             self.node_bin, *self.run_args],
            env=self.env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
        )
        procs.wait_for(
            lambda: self.run([self.ctx.dwbase, "supervisor", "status"]) == 0,
            20, "the dwbase supervisor to answer",
        )
        self.pid = self.proc.pid

    def start_argv(self, n):
        argv = [
            self.ctx.dwbase, "deploy", "devnet", "--nodes", str(n),
            "--base-port", str(self.ctx.base_port), "--timeout", "120s",
            "--restart", self.restart, "--json",
        ]
        return argv if self.swarm else argv + ["--no-swarm"]

    def status_argv(self):
        return [self.ctx.dwbase, "deploy", "status"]

    def helpers(self):
        """The per-node log pipes: `dwbase-logpipe` (beside the supervisor binary), else
        `dwbase-supervisor logpipe` or `dwbase supervisor logpipe`."""
        return [p for p in procs.children(self.pid) if is_logpipe(procs.cmdline(p))]

    def supervisor_ready(self, pid):
        out = subprocess.run(
            [self.ctx.dwbase, "deploy", "status", "--json"],
            env=self.env, stdin=DEVNULL, capture_output=True, timeout=30, check=False,
        ).stdout
        try:
            nodes = json.loads(out)["nodes"]
        except (ValueError, KeyError):
            return False
        return any(n.get("pid") == pid and n.get("state") == "ready" for n in nodes)

    def down(self):
        stop_dwbase_root(self.ctx, self.root)
        if self.proc:
            reap(self.proc)


def is_logpipe(argv):
    """Whether a command line is one of dwbase's log pipes (see Dwbase.helpers)."""
    return bool(argv) and (os.path.basename(argv[0]) == "dwbase-logpipe"
                           or argv[1:2] == ["logpipe"] or argv[1:3] == ["supervisor", "logpipe"])


class Floor(Tool):
    """scripts/bench/floor.c: starts every child with posix_spawn when its FIFO is written to,
    and respawns one at once when it exits. No status command."""

    name = "floor"

    def __init__(self, ctx, tag, programs):
        self.ctx = ctx
        self.dir = ctx.work / f"floor-{tag}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fifo = self.dir / "go"
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.programs = programs
        self.env = ctx.env
        self.proc = None

    def up(self):
        configs = [p.argv[2] for p in self.programs]
        self.proc = subprocess.Popen(
            [str(self.ctx.floor), str(self.fifo), self.programs[0].argv[0], *configs],
            env=self.env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
        )
        self.pid = self.proc.pid

    def start_argv(self, n):
        return ["sh", "-c", 'echo go > "$0"', str(self.fifo)]

    def status_argv(self):
        return None

    def down(self):
        if self.proc:
            if self.proc.poll() is None:
                self.proc.terminate()
            reap(self.proc)


class Supervisord(Tool):
    """supervisord 4.x from PyPI, in the foreground (-n) as our child, children defined with
    autostart=false and started by `supervisorctl start all`."""

    name = "supervisord"
    log_note = "no timestamps, no rotation (stdout_logfile_maxbytes=0)"

    def __init__(self, ctx, tag, programs):
        self.ctx = ctx
        self.dir = ctx.work / f"supervisord-{tag}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "supervisord.conf"
        self.env = {**ctx.env, "PYTHONPATH": str(ctx.peers / "py")}
        self.proc = None
        self.conf.write_text(supervisord_conf(self.dir, programs), encoding="utf-8")

    def ctl(self, *args):
        return [str(self.ctx.supervisorctl_bin), "-c", str(self.conf), *args]

    def up(self):
        out = open(self.dir / "supervisord.out", "wb")  # noqa: SIM115 (closed by reap)
        self.proc = subprocess.Popen(
            [str(self.ctx.supervisord_bin), "-n", "-c", str(self.conf)],
            env=self.env, stdin=DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        procs.wait_for(lambda: self.run(self.ctl("pid")) == 0, 30, "supervisord to answer")
        self.pid = self.proc.pid

    def start_argv(self, n):
        return self.ctl("start", "all")

    def status_argv(self):
        return self.ctl("status")

    def down(self):
        stop_supervisord(self.ctx, self.dir)
        if self.proc:
            reap(self.proc)


def supervisord_conf(folder, programs):
    lines = [
        "[unix_http_server]", f"file={folder}/supervisor.sock", "",
        "[supervisord]", f"logfile={folder}/supervisord.log", f"pidfile={folder}/supervisord.pid",
        f"childlogdir={folder}", "loglevel=warn", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{folder}/supervisor.sock", "",
    ]
    for p in programs:
        env = ",".join(f'{k}="{v}"' for k, v in p.env.items())
        lines += [
            f"[program:{p.name}]",
            "command=" + " ".join(p.argv),
            f"directory={p.log.parent.parent}",
            "autostart=false",
            f"autorestart={'true' if p.restart else 'false'}",
            "startsecs=0", "startretries=100", "stopasgroup=true", "killasgroup=true",
            "stopwaitsecs=10", "redirect_stderr=true",
            f"stdout_logfile={p.log}", "stdout_logfile_maxbytes=0",
        ]
        if env:
            lines.append(f"environment={env}")
        lines.append("")
    return "\n".join(lines)


class Pm2(Tool):
    """pm2 from npm with its own PM2_HOME; children from an ecosystem file, fork mode,
    interpreter none (the binary is executed directly)."""

    name = "pm2"
    log_note = "no timestamps, no rotation (pm2-logrotate not installed)"

    def __init__(self, ctx, tag, programs):
        self.ctx = ctx
        self.home = ctx.work / f"pm2-{tag}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**ctx.env, "PM2_HOME": str(self.home)}
        self.eco = self.home / "ecosystem.json"
        apps = [
            {
                "name": p.name, "script": p.argv[0], "args": p.argv[1:], "interpreter": "none",
                "exec_mode": "fork", "cwd": str(p.log.parent.parent), "autorestart": p.restart,
                "restart_delay": 0, "max_restarts": 100, "vizion": False,
                "out_file": str(p.log), "error_file": str(p.log) + ".err", "env": p.env,
            }
            for p in programs
        ]
        self.eco.write_text(json.dumps({"apps": apps}, indent=1), encoding="utf-8")

    def up(self):
        if self.run([str(self.ctx.pm2_bin), "ping"]) != 0:
            raise RuntimeError("pm2 ping failed")
        pid_file = self.home / "pm2.pid"
        self.pid = procs.wait_for(
            lambda: pid_file.exists() and int(pid_file.read_text() or 0), 20, "pm2's pid file"
        )

    def start_argv(self, n):
        return [str(self.ctx.pm2_bin), "start", str(self.eco)]

    def status_argv(self):
        return [str(self.ctx.pm2_bin), "ls"]

    def down(self):
        stop_pm2(self.ctx, self.home)


class Pueue(Tool):
    """pueue 4.x from crates.io: `pueued` in the foreground as our child, with its own config
    (state, task logs, unix socket and pid file in its folder, nothing in ~ or /run); one task
    per child, added stashed (`pueue add --stashed`, not timed) and force-started together by
    `pueue start ID…`. pueue runs a task as `sh -c COMMAND`: the command is `exec …` so that
    the child itself is pueued's child, as under the other tools. pueue never restarts a task
    that dies (it marks it failed)."""

    name = "pueue"
    log_note = "no timestamps, no rotation (pueue's own task log)"
    restarts = False

    def __init__(self, ctx, tag, programs):
        self.ctx = ctx
        self.dir = ctx.work / f"pueue-{tag}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "pueue.yml"
        self.conf.write_text(pueue_conf(self.dir), encoding="utf-8")
        self.env = {**ctx.env, "PUEUE_CONFIG_PATH": str(self.conf)}
        self.programs = programs
        self.ids = {}  # config path (or program name) → task id
        self.proc = None

    def ctl(self, *args):
        return [str(self.ctx.pueue_bin), "--config", str(self.conf), *args]

    def up(self):
        out = open(self.dir / "pueued.out", "wb")  # noqa: SIM115 (closed below)
        self.proc = subprocess.Popen(
            [str(self.ctx.pueued_bin), "--config", str(self.conf)],
            env=self.env, stdin=DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        procs.wait_for(lambda: self.run(self.ctl("status")) == 0, 30, "pueued to answer")
        self.pid = self.proc.pid
        for p in self.programs:
            added = subprocess.run(
                self.ctl("add", "--stashed", "--print-task-id", "--label", p.name,
                         "-w", str(p.log.parent.parent), "--",
                         "exec", *p.argv),
                env={**self.env, **p.env}, stdin=DEVNULL, capture_output=True, timeout=60,
                check=False,
            )
            if added.returncode != 0 or not added.stdout.strip().isdigit():
                raise RuntimeError(f"pueue add {p.name} failed: "
                                   f"{added.stderr.decode(errors='replace')[-500:]}")
            key = p.argv[2] if p.argv[1:2] == ["--config"] else p.name
            self.ids[key] = int(added.stdout)

    def start_argv(self, n):
        return self.ctl("start", *map(str, self.ids.values()))

    def status_argv(self):
        return self.ctl("status")

    def task_log(self, key):
        """The file pueue writes a task's output to."""
        return self.dir / "task_logs" / f"{self.ids[key]}.log"

    def child_report(self, config):
        out = subprocess.run(self.ctl("status", "--json"), env=self.env, stdin=DEVNULL,
                             capture_output=True, timeout=30, check=False).stdout
        try:
            status = json.loads(out)["tasks"][str(self.ids[config])]["status"]
        except (ValueError, KeyError):
            return None
        if isinstance(status, dict):  # {"Done": {"result": {"Failed": 137}, …}}
            (kind, detail), = status.items()
            result = detail.get("result") if isinstance(detail, dict) else None
            return f"{kind}: {json.dumps(result)}" if result is not None else kind
        return str(status)

    def down(self):
        stop_pueue(self.ctx, self.dir)
        if self.proc:
            reap(self.proc)


def pueue_conf(folder):
    """A pueue.yml that keeps everything of the daemon in `folder` (JSON is YAML)."""
    return json.dumps({
        "shared": {
            "pueue_directory": str(folder),
            "runtime_directory": str(folder),
            "use_unix_socket": True,
            "unix_socket_path": str(folder / "pueue.socket"),
            "pid_path": str(folder / "pueue.pid"),
        },
        "client": {"read_local_logs": True, "show_confirmation_questions": False},
        "daemon": {"pause_group_on_failure": False, "pause_all_on_failure": False},
    }, indent=1) + "\n"


def reap(proc, timeout=30):
    """Waits for a child we started; SIGKILL by pid if it does not exit in time."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _quiet(argv, env, timeout=60):
    try:
        subprocess.run(argv, env=env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
                       timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not procs.alive(pid)


def _pid_in(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def stop_dwbase_root(ctx, root):
    """`dwbase deploy stop` for one state root (also works without a supervisor)."""
    if (root / "supervisor.pid").exists() or any(root.glob("*/state.json")):
        env = {**ctx.env, "DWBASE_DATA_DIR": str(root)}
        _quiet([ctx.dwbase, "deploy", "stop", "--timeout", "10s"], env)


def stop_supervisord(ctx, folder):
    """`supervisorctl shutdown` (stops the children, then the daemon)."""
    pid = _pid_in(folder / "supervisord.pid")
    if pid and procs.alive(pid):
        env = {**ctx.env, "PYTHONPATH": str(ctx.peers / "py")}
        _quiet([str(ctx.supervisorctl_bin), "-c", str(folder / "supervisord.conf"), "shutdown"],
               env)
        if not _wait_gone(pid, 30):
            procs.kill(pid, signal.SIGKILL)


def stop_pm2(ctx, home):
    """`pm2 kill` (stops the children, then the daemon)."""
    pid = _pid_in(home / "pm2.pid")
    if pid and procs.alive(pid):
        _quiet([str(ctx.pm2_bin), "kill"], {**ctx.env, "PM2_HOME": str(home)})
        if not _wait_gone(pid, 30):
            procs.kill(pid, signal.SIGKILL)


def stop_pueue(ctx, folder):
    """`pueue shutdown` (pueued kills its running tasks, then exits)."""
    pid = _pid_in(folder / "pueue.pid")
    if pid and procs.alive(pid):
        _quiet([str(ctx.pueue_bin), "--config", str(folder / "pueue.yml"), "shutdown"],
               {**ctx.env, "PUEUE_CONFIG_PATH": str(folder / "pueue.yml")})
        if not _wait_gone(pid, 30):
            procs.kill(pid, signal.SIGKILL)


def cleanup(ctx):
    """Stops everything the bench may have left under ctx.work: each tool through its own
    stop command, then SIGKILL by pid for any process whose command line still names the work
    dir (every process the bench starts does). Idempotent."""
    for root in sorted(ctx.work.glob("dwbase-*")):
        stop_dwbase_root(ctx, root)
    for folder in sorted(ctx.work.glob("supervisord-*")):
        stop_supervisord(ctx, folder)
    for home in sorted(ctx.work.glob("pm2-*")):
        stop_pm2(ctx, home)
    for folder in sorted(ctx.work.glob("pueue-*")):
        if folder.is_dir():
            stop_pueue(ctx, folder)
    mine = {os.getpid()}
    p = os.getppid()
    while p and p > 1 and p not in mine:
        mine.add(p)
        p = procs.ppid(p) or 0
    marker = str(ctx.work) + "/"
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        if any(marker in a for a in procs.cmdline(name)) and procs.alive(name):
            procs.kill(int(name), signal.SIGKILL)
