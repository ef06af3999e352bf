"""A throwaway redis-server on a free loopback port, persistence off, for the broker tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading

import pytest


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (make test installs Debian's redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """Start, kill and restart one redis-server on a fixed port."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader = threading.Thread()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        # Redis says when it is ready; wait for that line, not for a guessed time.
        for line in proc.stdout:
            if b"Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited with {proc.wait()}")
        # Keep reading so the pipe never fills up; the reader ends at EOF.
        self.reader = threading.Thread(target=proc.stdout.read, daemon=True)
        self.reader.start()
        self.proc = proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.reader.join()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.proc = None
