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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(rb"listening on http://[^\s:]+:(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

#: name -> module run with ``python -m``; every one takes --host, --port and
#: --uvloop and logs "... listening on http://HOST:PORT (...)".
SERVER_MODULES = {
    "rawchat": "rawchat",
    "websockets": "benchmarks.peers.websockets_server",
    "aiohttp": "benchmarks.peers.aiohttp_server",
}


#: rawchat's internet-facing limits are off under load: the peers have none,
#: and the load tool opens thousands of connections and floods on purpose.
#: --max-buffer and other flags given with --server-arg come after and win.
RAWCHAT_UNLIMITED = (
    "--rate=0",
    "--handshake-rate=0",
    "--max-connections=0",
    "--max-connections-per-ip=0",
    "--log-level=warning",
)


@dataclass(frozen=True)
class ServerSpec:
    """Which server, on which event loop. ``websockets-asyncio`` means no uvloop."""

    name: str
    uvloop: bool = True
    extra_args: tuple[str, ...] = ()
    #: Directory ``python -m`` runs in: a copy of rawchat at some commit (see
    #: :func:`export_rawchat`), or the work tree when None.
    tree: Path | None = None

    @classmethod
    def parse(
        cls, text: str, extra_args: tuple[str, ...] = (), tree: Path | None = None
    ) -> ServerSpec:
        name, _, loop = text.partition("-")
        if name not in SERVER_MODULES or loop not in ("", "uvloop", "asyncio"):
            known = ", ".join(SERVER_MODULES)
            raise ValueError(f"unknown server {text!r}: use one of {known}, optionally -asyncio")
        if name != "rawchat":
            return cls(name, loop != "asyncio")
        return cls(name, loop != "asyncio", extra_args, tree)

    @property
    def label(self) -> str:
        return self.name if self.uvloop else f"{self.name}-asyncio"

    def argv(self, host: str) -> list[str]:
        args = [sys.executable, "-m", SERVER_MODULES[self.name], "--host", host, "--port", "0"]
        if self.uvloop:
            args.append("--uvloop")
        if self.name == "rawchat":
            known = rawchat_options(self.tree or REPO_ROOT)
            args += [a for a in RAWCHAT_UNLIMITED if a.partition("=")[0] in known]
        return args + list(self.extra_args)


@functools.cache
def rawchat_options(tree: Path) -> frozenset[str]:
    """The long options this copy of rawchat accepts (older commits lack the limits)."""
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
    """(server cores, load tool cores) when there are at least two to split."""
    cores = sorted(os.sched_getaffinity(0))
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


class ProcStats:
    """CPU seconds and memory of a process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        # The command name may hold spaces; fields after it are fixed.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


class ServerProcess:
    """A server under test, started with ``--port 0``; use as a context manager."""

    def __init__(self, spec: ServerSpec, host: str = "127.0.0.1", pin: bool = False) -> None:
        self.spec = spec
        self.host = host
        self.pin = pin
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
        self.stats = ProcStats(self.proc.pid)
        cores = pick_cores() if self.pin else None
        if cores is not None:
            os.sched_setaffinity(self.proc.pid, cores[0])
            os.sched_setaffinity(0, cores[1])
            self.pinned_to = cores[0]
        deadline = time.monotonic() + timeout
        # Polling the log file keeps the server from ever blocking on a full
        # pipe, however much it logs during a run.
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_path.read_bytes())
            port = int(match.group(1)) if match else listening_port(self.proc.pid)
            if port:
                self.port = port
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.spec.label} did not start listening:\n{tail}")

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
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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


@atexit.register
def _kill_leftovers() -> None:
    # Last resort for paths that skipped a finally block (e.g. a second Ctrl-C).
    for server in list(_live):
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
