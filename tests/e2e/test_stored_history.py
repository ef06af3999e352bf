"""History on disk, seen from the page: a restart of the server keeps the conversation."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from rawchat.store import DATABASE

from .harness import DESKTOP, ChatPage, PageProblems, RawchatServer

pytestmark = pytest.mark.e2e


def wait_until_stored(data: Path, text: str, timeout: float = 10) -> None:
    """Until the server has written ``text`` to its database (a kill -9 loses at most the
    last batch window: this waits that window out by seeing the write itself)."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(f"file:{data / DATABASE}?mode=ro", uri=True)
        try:
            if db.execute("SELECT 1 FROM messages WHERE text = ?", (text,)).fetchone():
                return
        except sqlite3.OperationalError:
            pass  # the schema is not there yet
        finally:
            db.close()
        assert time.monotonic() < deadline, f"{text!r} was not written within {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def stored_server(tmp_path: Path) -> Iterator[RawchatServer]:
    """A server keeping history in a data directory of the test's own."""
    server = RawchatServer("--data", str(tmp_path / "data"))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("kill", [False, True], ids=["graceful", "crash"])
def test_history_is_there_after_a_restart_and_a_reload_shows_each_message_once(
    browser: Browser,
    stored_server: RawchatServer,
    page_problems: PageProblems,
    tmp_path: Path,
    kill: bool,
) -> None:
    server = stored_server
    data = tmp_path / "data"
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page_problems.watch(page)
        ann = ChatPage(page).open(server.url, "ann")
        ann.send("before the restart")
        ann.send("still before")
        expect(ann.message("still before")).to_have_count(1)
        wait_until_stored(data, "still before")

        server.restart(kill=kill)

        # The page reconnects and resumes: same epoch, so nothing is said to be lost.
        expect(ann.status).to_contain_text("Online")
        ann.send("after the restart")
        expect(ann.message("after the restart")).to_have_count(1)
        expect(ann.log.get_by_test_id("notice")).to_have_count(0)

        # A reload keeps only the nick (the page starts with it): the history comes from
        # the server.
        ann.page.reload()
        expect(ann.status).to_contain_text("Online")
        expect(ann.messages.get_by_test_id("msg-text")).to_have_text(
            ["before the restart", "still before", "after the restart"]
        )
        expect(ann.log.get_by_test_id("notice")).to_have_count(0)
        ann.screenshot(f"stored-history-{'crash' if kill else 'graceful'}-desktop")
    finally:
        context.close()
    assert page_problems.errors == [] and page_problems.dialogs == []
