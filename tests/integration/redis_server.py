"""A throwaway redis-server on a free loopback port, persistence off, for the broker tests."""

from __future__ import annotations

import signal

from tests.processes import ServerProcess, free_port, system_program


def redis_binary() -> str:
    return system_program("redis-server")


class RedisServer:
    """Start, kill and restart one redis-server on a fixed port."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Redis says when it is ready; wait for that line, not for a guessed time.
        self.process = ServerProcess(
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
            program=[self.binary],
            ready="Ready to accept connections",
        )

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None
