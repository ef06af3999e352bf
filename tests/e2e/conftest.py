"""Fixtures for the browser tests; the machinery itself lives in harness.py."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from rawchat.identity import Tokens

from .harness import (
    DESKTOP,
    ChatPage,
    PageProblems,
    RawchatServer,
    TcpProxy,
    launch_chromium,
    require_chromium,
)

#: Whether the test itself (not its setup or teardown) failed: fixtures read it to say more.
CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_args(*args): extra command-line arguments for the rawchat server"
    )
    config.addinivalue_line(
        "markers", "tokens: the server takes signed tokens (server.tokens issues them)"
    )


# Package scope, not session: Playwright's sync API keeps an event loop running
# in this thread while it lives, and asyncio.run() refuses to start under it, so
# the browser must be gone before any other test runs (`pytest tests` runs e2e first).
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    require_chromium()
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RawchatServer]:
    marker = request.node.get_closest_marker("server_args")
    args = [*(marker.args if marker else ())]
    tokens = None
    if request.node.get_closest_marker("tokens"):
        secret = tmp_path / "token-secret"
        secret.write_text(secrets.token_hex(32))
        args += ["--token-secret-file", str(secret)]
        tokens = Tokens.from_file(secret)
    server = RawchatServer(*args)
    server.tokens = tokens
    server.start()
    yield server
    server.stop()
    if request.node.stash.get(CALL_FAILED, False):
        # Shown with the failure: what the server said while the test ran.
        print("\n".join(server.log), file=sys.stderr)


@pytest.fixture
def make_proxy(server: RawchatServer) -> Iterator[Callable[[], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make() -> TcpProxy:
        proxy = TcpProxy(server.port)
        proxies.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def page_problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def open_chat(
    browser: Browser, server: RawchatServer, page_problems: PageProblems
) -> Iterator[Callable[..., ChatPage]]:
    """Opens the chat page as `nick` in a fresh browser context (its own localStorage)."""
    contexts: list[BrowserContext] = []

    def open_chat(
        nick: str,
        *,
        url: str | None = None,
        viewport: dict | None = None,
        token: str | None = None,
        **options: Any,
    ) -> ChatPage:
        """With `token`, through a sign-in link (no nickname prompt)."""
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        contexts.append(context)
        page = context.new_page()
        page_problems.watch(page)
        if token is not None:
            return ChatPage(page).open_link(f"{url or server.url}?token={quote(token)}")
        return ChatPage(page).open(url or server.url, nick)

    yield open_chat
    for context in contexts:
        context.close()
    assert page_problems.errors == [], "uncaught errors in the page"
    assert page_problems.dialogs == [], "the page opened a dialog"
