"""Starting, pinning, measuring and stopping the servers under test.

Each server runs as a subprocess of the load tool, so its CPU time and
memory can be read from /proc without its cooperation, and so it can be
killed whatever happens to the run.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peers import node_ws

REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(rb"listening on http://[^\s:]+:(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The cores this process may run on when it starts: an unpinned run gets them
#: all back after a pinned one (servers inherit the tool's affinity).
_ALL_CORES = frozenset(os.sched_getaffinity(0))

#: name -> module run with ``python -m`` (node-ws: node runs its server.js);
#: every one takes --host, --port and --uvloop and logs
#: "... listening on http://HOST:PORT (...)".
SERVER_MODULES = {
    "rawchat": "rawchat",
    "websockets": "benchmarks.peers.websockets_server",
    "aiohttp": "benchmarks.peers.aiohttp_server",
    "floor": "benchmarks.peers.floor_server",
    "node-ws": "benchmarks.peers.node_ws",  # not Python: see its argv()
}


#: What every rawchat run gets besides --uvloop: only what a user would pass.
#: The limits stay at their defaults, as users run rawchat; what they refuse
#: or close shows in the results (``refused_connections``, ``close_codes``).
#: Flags given with --server-arg come after and win.
RAWCHAT_USER_ARGS = ("--log-level=warning",)


@dataclass(frozen=True)
class ServerSpec:
    """Which server, on which event loop. ``websockets-asyncio`` means no uvloop."""

    name: str
    uvloop: bool = True
    extra_args: tuple[str, ...] = ()
    #: Directory ``python -m`` runs in: a copy of rawchat at some commit (see
    #: :func:`export_rawchat`), or the work tree when None.
    tree: Path | None = None
    #: rawchat only: ``--workers N`` (a supervisor and N processes on one port)
    #: joined through ``--broker URL``.
    workers: int = 1
    broker: str | None = None

    @classmethod
    def parse(
        cls, text: str, extra_args: tuple[str, ...] = (), tree: Path | None = None
    ) -> ServerSpec:
        name, _, loop = text.rpartition("-")
        if name not in SERVER_MODULES or loop not in ("uvloop", "asyncio"):
            name, loop = text, ""
        if name not in SERVER_MODULES or (loop and name == "node-ws"):
            known = ", ".join(SERVER_MODULES)
            raise ValueError(f"unknown server {text!r}: use one of {known}, optionally -asyncio")
        if name != "rawchat":
            return cls(name, loop != "asyncio")
        return cls(name, loop != "asyncio", extra_args, tree)

    @property
    def label(self) -> str:
        label = self.name if self.uvloop else f"{self.name}-asyncio"
        if self.workers > 1:
            label += f"-{self.workers}w"
        return label

    def argv(self, host: str) -> list[str]:
        if self.name == "node-ws":  # node has one loop, libuv's
            return node_ws.argv(host) + list(self.extra_args)
        args = [sys.executable, "-m", SERVER_MODULES[self.name], "--host", host, "--port", "0"]
        if self.uvloop:
            args.append("--uvloop")
        if self.name == "rawchat":
            known = rawchat_options(self.tree or REPO_ROOT)
            args += [a for a in RAWCHAT_USER_ARGS if a.partition("=")[0] in known]
            if "--data" in known:
                # History on disk, as users run it, in a directory of this run's own: not the
                # user's, and not one another benchmark's server holds. --server-arg=--data=none
                # measures without it.
                data = tempfile.mkdtemp(prefix="bench-rawchat-data-")
                atexit.register(shutil.rmtree, data, ignore_errors=True)
                args.append(f"--data={data}")
            if self.broker is not None:
                args.append(f"--broker={self.broker}")
            if self.workers > 1:
                args.append(f"--workers={self.workers}")
        return args + list(self.extra_args)


@functools.cache
def rawchat_options(tree: Path) -> frozenset[str]:
    """The long options this copy of rawchat accepts (older commits lack some)."""
    out = subprocess.run(
        [sys.executable, "-m", "rawchat", "--help"], cwd=tree, capture_output=True, text=True,
        timeout=30,
    ).stdout
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", out))


def export_rawchat(ref: str) -> Path:
    """Copy rawchat (and its static files) as of commit ``ref`` into a temporary directory.

    Benchmarks then measure a known commit while the work tree keeps changing.
    """
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"bench-rawchat-{commit}-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "rawchat", "static"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    return target


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the new soft limit.

    Servers started afterwards inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pick_cores() -> tuple[set[int], set[int]] | None:
    """(server cores, load tool cores) when there are at least two to split.

    From the cores the tool started with: its own affinity is one core after
    the first pinned run, which used to leave every second run unpinned.
    """
    cores = sorted(_ALL_CORES)
    if len(cores) < 2:
        return None
    return {cores[0]}, {cores[1]}


def listening_port(pid: int) -> int | None:
    """The TCP port process ``pid`` listens on, from /proc: no need for it to log it."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                    if parts[3] == "0A" and parts[9] in inodes:
                        return int(parts[1].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return None


def unread_bytes(server_port: int, skip_ports: frozenset[int] = frozenset()) -> int:
    """Bytes the kernel holds for the client side of connections to ``server_port``.

    That is what the load tool has not read yet: close to zero while it keeps
    up, growing when it is the bottleneck (loopback receive buffers may hold
    tens of MB per socket, so a lagging tool shows up as latency, not loss).
    ``skip_ports``: local ports of sockets that stopped reading on purpose.
    """
    suffix = f":{server_port:04X}"
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 5)
                    if parts[2].endswith(suffix):
                        if skip_ports and int(parts[1].rpartition(":")[2], 16) in skip_ports:
                            continue
                        total += int(parts[4].partition(":")[2], 16)
        except OSError:
            continue
    return total


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = child_pids(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += child_pids(child)
    return out


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may hold spaces; fields after it are fixed.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class ProcStats:
    """CPU seconds and memory of a process, read from /proc.

    With ``tree`` the numbers are summed over the process and its
    descendants (rawchat's ``--workers`` supervisor and its workers). A
    worker that exits takes its CPU seconds out of the sum.
    """

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.pid = pid
        self.tree = tree

    def pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)] if self.tree else [self.pid]

    def _sum(self, read: Callable[[int], float]) -> float:
        pids = self.pids()
        total = read(pids[0])  # the top process gone: let the caller see it
        for pid in pids[1:]:
            try:
                total += read(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def cpu_seconds(self) -> float:
        return self._sum(_cpu_of)

    def rss_bytes(self) -> int:
        return int(self._sum(_rss_of))


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


def eviction_metrics(samples: dict[str, float]) -> dict[str, Any]:
    """rawchat's evictions in a scrape, in all and by reason
    (``rawchat_evictions_total{reason="slow_timeout"} 3`` -> ``{"slow_timeout": 3}``)."""
    by_reason = {
        name.partition('reason="')[2].rstrip('"}'): int(value)
        for name, value in samples.items()
        if name.startswith("rawchat_evictions_total{") and value
    }
    return {"server_evictions_total": sum(by_reason.values()), "server_evictions": by_reason}


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_count(pid: int, port: int) -> int:
    """TCP connections on local ``port`` that process ``pid`` holds open."""
    inodes = _socket_inodes(pid)
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and parts[1].endswith(suffix) and parts[9] in inodes:
                        count += 1
        except OSError:
            continue
    return count


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL whatever is left.

    The group is signalled only while ``proc`` is not yet reaped, so its id
    cannot have been reused; members that outlive it are killed one by one.
    """
    pgid = proc.pid
    members = [p for p in descendants(pgid) if _pgid_of(p) == pgid]
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            members += [p for p in descendants(pgid) if p not in members]
            if not any(_pgid_of(p) == pgid for p in members) and proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            members += [p for p in descendants(pgid) if p not in members]
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    for pid in members:
        if _pgid_of(pid) == pgid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pgid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[2])


class RedisProcess:
    """A throw-away ``redis-server`` on a free loopback port, no persistence."""

    READY = b"Ready to accept connections"

    def __init__(self, binary: str = "redis-server", host: str = "127.0.0.1") -> None:
        self.binary = shutil.which(binary) or binary
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: ProcStats | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="bench-redis-", suffix=".log",
                                                delete=False)
        self.log_path = Path(self._log.name)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(3):
            self.port = free_port(self.host)
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", self.host,
                 "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _live_redis.add(self)
            self.stats = ProcStats(self.proc.pid)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.READY in self.log_path.read_bytes():
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            # The port was taken in between, or redis is stuck: try another.
            self.stop(remove_log=False)
        raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        try:
            return self.stats.cpu_seconds() if self.stats else 0.0
        except (FileNotFoundError, ProcessLookupError):
            return float("nan")

    def rss_bytes(self) -> int:
        try:
            return self.stats.rss_bytes() if self.stats else 0
        except (FileNotFoundError, ProcessLookupError):
            return 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, remove_log: bool = True) -> None:
        if self.proc is not None:
            _kill_group(self.proc, grace=2.0)
        _live_redis.discard(self)
        if remove_log:
            if not self._log.closed:
                self._log.close()
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """A server under test, started with ``--port 0``; use as a context manager.

    With ``spec.workers`` > 1 the process started is rawchat's supervisor:
    CPU and memory are summed over it and its workers, the server counts as
    started once every worker listens, and stopping kills its whole process
    group. ``redis``: a broker whose CPU is measured alongside (not included
    in the server's).
    """

    def __init__(
        self, spec: ServerSpec, host: str = "127.0.0.1", pin: bool = False,
        redis: RedisProcess | None = None,
    ) -> None:
        self.spec = spec
        self.host = host
        self.pin = pin
        self.redis = redis
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: ProcStats | None = None
        self.pinned_to: set[int] | None = None
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"bench-{spec.label}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)

    def start(self, timeout: float = 15.0) -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cores = pick_cores() if self.pin else None
        if cores is None:
            # Undo an earlier run's pinning before the server inherits it.
            os.sched_setaffinity(0, _ALL_CORES)
        # Own session: a Ctrl-C in the terminal reaches the load tool, which
        # then kills the server itself, instead of racing its shutdown.
        self.proc = subprocess.Popen(
            self.spec.argv(self.host),
            cwd=self.spec.tree or REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        _live.add(self)
        self.stats = ProcStats(self.proc.pid, tree=self.spec.workers > 1)
        if cores is not None:
            os.sched_setaffinity(self.proc.pid, cores[0])
            os.sched_setaffinity(0, cores[1])
            self.pinned_to = cores[0]
        deadline = time.monotonic() + timeout
        # Polling the log file keeps the server from ever blocking on a full
        # pipe, however much it logs during a run.
        while time.monotonic() < deadline:
            port = self._find_port()
            if port:
                self.port = port
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.spec.label} did not start listening:\n{tail}")

    def _find_port(self) -> int | None:
        assert self.proc is not None
        if self.spec.workers <= 1:
            match = _LISTENING.search(self.log_path.read_bytes())
            return int(match.group(1)) if match else listening_port(self.proc.pid)
        # The supervisor only holds the port; ready once every worker listens
        # (each connects to the broker first), else the first gets them all.
        ports = {listening_port(pid) for pid in self.worker_pids()}
        if len(self.worker_pids()) == self.spec.workers and len(ports) == 1 and None not in ports:
            return ports.pop()
        return None

    def worker_pids(self) -> list[int]:
        if self.proc is None or self.spec.workers <= 1:
            return []
        return child_pids(self.proc.pid)

    def connections_per_worker(self) -> list[int]:
        """Established connections each worker holds (how SO_REUSEPORT spread them)."""
        return sorted((established_count(pid, self.port) for pid in self.worker_pids()),
                      reverse=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        assert self.stats is not None
        try:
            return self.stats.cpu_seconds()
        except (FileNotFoundError, ProcessLookupError):
            return float("nan")

    def rss_bytes(self) -> int:
        assert self.stats is not None
        try:
            return self.stats.rss_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return 0

    def extra_cpu_seconds(self) -> float:
        """CPU of processes serving alongside (the broker); 0 without one."""
        return self.redis.cpu_seconds() if self.redis is not None else 0.0

    def scrape_metrics(self, timeout: float = 3.0) -> dict[str, float] | None:
        """GET /metrics (rawchat): sample name (with labels) -> value; None on failure.

        Blocking, but short: called between runs, not under load. With
        workers, one worker answers, for itself only.
        """
        if self.spec.name != "rawchat" or not self.alive():
            return None
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                chunks = []
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except OSError:
            return None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None
        samples: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
        return samples

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, grace=3.0 if self.spec.workers <= 1 else 5.0)
        _live.discard(self)
        if not self._log.closed:
            self._log.close()

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_live: set[ServerProcess] = set()
_live_redis: set[RedisProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort for paths that skipped a finally block (e.g. a second Ctrl-C).
    for proc in [s.proc for s in list(_live)] + [r.proc for r in list(_live_redis)]:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
