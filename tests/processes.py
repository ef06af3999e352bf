"""A server in a subprocess, started and stopped the same way by every test that needs one.

The tests read what the server logs: that it listens and on which port, what it did since.
A thread keeps draining its output for as long as it runs, or the server would block on a
full pipe in the middle of a test. Every wait is bounded, so a server that hangs fails the
test with its log instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import pytest

#: What rawchat logs once its socket is bound, plain or inside a JSON log line:
#: "rawchat listening on http://127.0.0.1:8080 (uvloop)", or "(uvloop, 2 workers)" from
#: the supervisor of --workers, which logs it before any worker does.
LISTENING = (
    r"rawchat listening on (?P<scheme>https?)://(?P<host>\[[^\]]+\]|[^\s:\[]+):(?P<port>\d+)"
    r" \((?P<flavour>[^)]*)\)"
)
RAWCHAT = (sys.executable, "-m", "rawchat")
#: Arguments every rawchat a test starts gets after --host and --port, ahead of its own:
#: the one place for a flag that every test server needs.
COMMON_ARGS: tuple[str, ...] = ()
#: A line of rawchat's log that shows a bug: an error (its own or the event loop's), a traceback.
ERROR = re.compile(r" (ERROR|CRITICAL) |^Traceback \(most recent call last\)")


def memory_only(args: Sequence[str]) -> tuple[str, ...]:
    """`args` with ``--data none`` unless they name a data directory: a test server must
    not keep history in the user's home (rawchat's default --data)."""
    if any(arg == "--data" or arg.startswith("--data=") for arg in args):
        return tuple(args)
    return (*args, "--data", "none")


class ServerProcess:
    """``python -m rawchat *args`` (or another `program`), running once `ready` is logged.

    `ready` is the match of the `ready` pattern; its ``port`` group, if any, is `port`.
    Used as a context manager, the process is killed on the way out if it still runs.
    """

    def __init__(
        self,
        *args: str,
        program: Sequence[str] = RAWCHAT,
        ready: str = LISTENING,
        timeout: float = 20,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        own_group: bool = False,
        errors_allowed: bool = False,
    ) -> None:
        # A supervisor in its own process group can be killed together with its workers.
        self.own_group = own_group
        #: A rawchat that logs an error or a traceback fails the test (see check_errors),
        #: unless the test provokes one on purpose.
        self.errors_allowed = errors_allowed or tuple(program) != RAWCHAT
        if tuple(program) == RAWCHAT and args[:1] != ("token",):
            args = memory_only(args)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [*program, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=own_group,
        )
        self._reader = threading.Thread(target=self._drain, name="server-output", daemon=True)
        self._reader.start()
        try:
            self.ready = self.line_matching(ready, timeout)
        except BaseException:
            self.kill()
            raise

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            self._lines.put(self.log[-1])
        self._lines.put(None)

    def next_line(self, timeout: float = 20) -> str:
        """The next line the server logs, waiting at most `timeout` seconds for it."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            silent = f"the server logged nothing for {timeout:.3g} s:\n{self.tail()}"
            raise AssertionError(silent) from None
        if line is None:
            self._lines.put(None)  # so that a later call fails at once too
            raise AssertionError(f"the server exited with {self.process.wait()}:\n{self.tail()}")
        return line

    def line_matching(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first line from here on that matches `pattern`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.next_line(max(deadline - time.monotonic(), 0)))
            if found:
                return found

    def errors(self) -> list[str]:
        """The lines where the server logged an error, or a traceback began."""
        return [line for line in self.log if ERROR.search(line)]

    def check_errors(self) -> None:
        """Fail if rawchat logged an error: a bug, whatever the test sent it."""
        if self.errors_allowed:
            return
        found = self.errors()
        assert not found, "the server logged errors:\n" + "\n".join(found) + "\n" + self.tail()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log[-lines:])

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send `sig` (None if the test sent its own), wait up to `timeout` s, else kill.

        Returns the exit code, or None if it had to be killed. Fails if rawchat logged
        an error (see check_errors).
        """
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        code: int | None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            self.process.wait()
            code = None
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        if sig is not None:
            self.check_errors()
        return code

    def kill(self) -> None:
        """SIGKILL, to the whole group if it has one; then reap it and close the pipe."""
        if self.process.poll() is None:
            self._kill()
        self.stop(None)

    def _kill(self) -> None:
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
        if kind is None:
            self.check_errors()


class RawchatProcess(ServerProcess):
    """``python -m rawchat --host 127.0.0.1 --port 0 *COMMON_ARGS *args``, once it listens.

    Every test that needs rawchat in a process of its own starts it here, and reads
    where it listens from `origin`, `ws_url`, `port` and `flavour` rather than from the log.
    """

    def __init__(
        self,
        *args: str,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 20,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        own_group: bool = False,
        errors_allowed: bool = False,
    ) -> None:
        super().__init__(
            "--host",
            host,
            "--port",
            str(port),
            *COMMON_ARGS,
            *args,
            timeout=timeout,
            cwd=cwd,
            env=env,
            own_group=own_group,
            errors_allowed=errors_allowed,
        )

    @property
    def scheme(self) -> str:
        return self.ready["scheme"]

    @property
    def host(self) -> str:
        return self.ready["host"]

    @property
    def flavour(self) -> str:
        """What the listening line says it runs on: "uvloop", "asyncio, 2 workers"."""
        return self.ready["flavour"]

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:8080``: a path goes after it."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://{self.host}:{self.port}/ws"


def system_program(name: str, *, also_in: str = "") -> str:
    """Where a program from Debian's packages is, for a test that runs it.

    `make test` installs it when missing; should it still be missing, the test fails under
    CI (a prerequisite is never skipped there) and is skipped elsewhere.
    """
    found = shutil.which(name) or (shutil.which(name, path=also_in) if also_in else None)
    if found is None:
        message = f"{name} is not installed (make test installs Debian's {name})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    """A loopback port nobody listens on now (for programs that cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
