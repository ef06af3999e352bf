"""``--workers N``: N rawchat processes on one port, kept alive by a small supervisor.

Each worker is an ordinary rawchat process with its own event loop, listening
on the same port with ``SO_REUSEPORT``, so the kernel spreads new connections
across them; the broker joins them into one chat. The supervisor only starts
workers, starts a new one when one dies, and on SIGINT or SIGTERM passes the
signal on and waits for every worker's graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from rawchat.config import Config

log = logging.getLogger("rawchat.workers")

#: A worker that dies sooner than this after starting is restarted only after a pause,
#: so that a worker that cannot start does not spin.
_QUICK_DEATH = 1.0


def reserve_port(config: Config) -> socket.socket:
    """Bind (without listening) to learn the port ``--port 0`` stands for, and hold it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((config.host, config.port))
    return holder


def worker_argv(argv: Sequence[str], port: int) -> list[str]:
    """The worker's command line: the supervisor's, one worker, the real port, SO_REUSEPORT."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--port"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--port=")):
            continue
        args.append(arg)
    return [sys.executable, "-m", "rawchat", *args, "--port", str(port), "--reuse-port"]


def supervise(config: Config, argv: Sequence[str]) -> int:
    holder = reserve_port(config)
    port = holder.getsockname()[1]
    command = worker_argv(argv, port)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers.values():
            proc.send_signal(signum)
        # A worker that has not finished its graceful shutdown in time is killed.
        signal.alarm(int(config.shutdown_timeout + config.close_timeout) + 2)

    def kill_stragglers(signum: int, frame: FrameType | None) -> None:
        for pid, proc in workers.items():
            log.warning("worker %d did not stop in time; killing it", pid)
            proc.kill()

    workers: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}

    def spawn() -> None:
        proc = subprocess.Popen(command)
        workers[proc.pid] = proc
        started[proc.pid] = time.monotonic()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, kill_stragglers)
    for _ in range(config.workers):
        spawn()
    scheme = "https" if config.certfile else "http"
    flavour = "uvloop" if config.use_uvloop else "asyncio"
    log.info(
        "rawchat listening on %s://%s:%d (%s, %d workers)",
        scheme,
        config.host,
        port,
        flavour,
        config.workers,
    )
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        proc = workers.pop(pid, None)
        if proc is None:
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.warning("worker %d exited (%d); starting another", pid, proc.returncode)
        if time.monotonic() - started.pop(pid, 0.0) < _QUICK_DEATH:
            time.sleep(_QUICK_DEATH)
        spawn()
    holder.close()
    return 0
