"""What the browser tests drive: a real rawchat server, Chromium, and a cuttable TCP proxy.

The server runs as a subprocess exactly as a user starts it (``python -m rawchat``), on a port
the kernel picks. Chromium is Debian's (``/usr/bin/chromium``), driven through Playwright's
sync API; each chat page gets its own browser context, so its localStorage is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    Dialog,
    Locator,
    Page,
    Playwright,
    expect,
)

from rawchat.identity import Tokens
from tests.processes import RawchatProcess

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
STARTUP_TIMEOUT = 15.0

# Reconnecting waits out a randomised backoff of up to several seconds, so the default 5 s
# of auto-waiting is too tight for a loaded CI machine.
expect.set_options(timeout=20_000)


class RawchatServer:
    """``python -m rawchat`` in a subprocess; can be killed and started again on its port."""

    def __init__(self, *extra_args: str) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.extra_args = extra_args
        self.scheme = "http"
        self._process: RawchatProcess | None = None
        #: Issues tokens the server accepts, when it was started with a token secret.
        self.tokens: Tokens | None = None
        self._earlier_runs: list[str] = []

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"

    @property
    def log(self) -> list[str]:
        """What the server logged, over every run so far."""
        return self._earlier_runs + (self._process.log if self._process else [])

    def start(self, port: int = 0) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        # Run this source tree's server; an existing PYTHONPATH comes first, so the same tests
        # can be pointed at another checkout of the server.
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, str(REPO)]))
        self._process = RawchatProcess(
            *self.extra_args,
            host=self.host,
            port=port,
            cwd=ARTIFACTS,
            env=env,
            timeout=STARTUP_TIMEOUT,
        )
        self.port = self._process.port
        self.scheme = self._process.scheme

    def stop(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(signal.SIGKILL if kill else signal.SIGTERM, timeout=15)
            self._earlier_runs += process.log

    def restart(self, *, kill: bool) -> None:
        """Stop the server and start a new run on the same port.

        With `kill`, SIGKILL: the clients get no goodbye. Otherwise SIGTERM, and the server's
        graceful shutdown closes every WebSocket with 1001 first.
        """
        port = self.port
        self.stop(kill=kill)
        self.start(port)


class TcpProxy:
    """A loopback TCP proxy in front of the server, for one page's connections.

    A page loaded through the proxy opens its WebSocket through it too (same origin), so
    the test can break that page's connection without touching the server or the other
    pages: `go_down` resets every proxied connection and refuses new ones until `go_up`.
    `hold_replies` stops forwarding what the server sends, so that a request can reach the
    server while its answer is lost with the connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._down = False
        self._replies_flow = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _call(self, coroutine: Coroutine[None, None, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    async def _listen(self) -> None:
        self._replies_flow.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self._down:
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(upstream)
            pumps = [
                asyncio.ensure_future(self._pump(reader, upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer, self._replies_flow)),
            ]
            try:
                # Either side closing ends the pair: HTTP and WebSocket need no half-close.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for side in (writer, upstream):
                if side is not None:
                    self._writers.discard(side)
                    side.transport.abort()
                    side.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        gate: asyncio.Event | None = None,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()

    async def _reset_all(self) -> None:
        # abort() sends RST both ways: to the browser this is a dropped network, not a close.
        for writer in list(self._writers):
            writer.transport.abort()

    def go_down(self) -> None:
        self._down = True
        self._call(self._reset_all())

    def go_up(self) -> None:
        self._down = False
        self._call(self._set_replies(flowing=True))

    def hold_replies(self) -> None:
        self._call(self._set_replies(flowing=False))

    async def _set_replies(self, *, flowing: bool) -> None:
        if flowing:
            self._replies_flow.set()
        else:
            self._replies_flow.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()


class ChatPage:
    """One person using the chat page: what they can do and what they can see."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def open(self, url: str, nick: str) -> ChatPage:
        self.page.goto(url)
        self.page.get_by_label("Choose a nickname").fill(nick)
        self.page.get_by_role("button", name="Start chatting").click()
        expect(self.status).to_contain_text("Online")
        return self

    def open_link(self, url: str) -> ChatPage:
        """Opens a sign-in link: the page signs in with the link's token by itself."""
        self.page.goto(url)
        expect(self.status).to_contain_text("Online")
        return self

    @property
    def status(self) -> Locator:
        return self.page.get_by_test_id("status")

    @property
    def log(self) -> Locator:
        # Only the current room's log is visible, and hidden elements have no role.
        return self.page.get_by_role("log")

    @property
    def messages(self) -> Locator:
        return self.log.get_by_test_id("message")

    @property
    def members(self) -> Locator:
        return self.page.get_by_test_id("member-list").get_by_role("listitem")

    @property
    def nick_field(self) -> Locator:
        return self.page.get_by_role("textbox", name="Nickname", exact=True)

    def message(self, text: str) -> Locator:
        """The messages in the current room whose text is exactly `text`."""
        return self.messages.filter(
            has=self.page.get_by_test_id("msg-text").get_by_text(text, exact=True)
        )

    def member(self, nick: str) -> Locator:
        """The button that opens what can be done with `nick`."""
        return self.page.get_by_test_id("member-list").get_by_role(
            "button", name=f"Actions for {nick}", exact=True
        )

    def actions(self, nick: str) -> Locator:
        """Opens the actions for `nick`, from the keyboard, and returns their panel."""
        self.member(nick).focus()
        self.page.keyboard.press("Enter")
        panel = self.page.get_by_role("region", name=nick, exact=True)
        expect(panel).to_be_visible()
        return panel

    def direct_button(self, nick: str) -> Locator:
        return self.page.get_by_test_id("direct-list").get_by_role(
            "button", name=re.compile(rf"^{re.escape(nick)}(\s|$)")
        )

    def room_button(self, name: str) -> Locator:
        return self.page.get_by_test_id("room-list").get_by_role(
            "button", name=re.compile(rf"^{re.escape(name)}\b")
        )

    def send(self, text: str) -> None:
        box = self.page.get_by_role("textbox", name="Message", exact=True)
        box.fill(text)
        box.press("Enter")

    def join(self, room: str) -> None:
        field = self.page.get_by_label("Join or create a room")
        field.fill(room)
        field.press("Enter")

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (make system-deps)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def launch_chromium(playwright: Playwright, *extra_args: str) -> Browser:
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


class PageProblems:
    """What a page must never do: throw an uncaught error or open a dialog."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()
