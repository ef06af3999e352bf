"""Refreshes the README's screenshots: ``python -m tests.e2e.screenshots [OUT_DIR]``.

Starts a rawchat server with sign-in tokens, opens three people's pages in Chromium and
plays a short conversation: a few messages in the lobby, an operator (maya) with a direct
message waiting, lee typing and maya's actions for sam open. maya's page is taken at a
desktop size, sam's at a phone size. OUT_DIR defaults to ``docs/``; look at both images
before committing them.

Not collected by pytest (no ``test_`` prefix); it waits on what the pages show, as the
tests do, so a broken page fails it instead of producing a misleading picture.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Browser, Locator, ViewportSize, expect, sync_playwright

from rawchat.identity import Tokens

from .harness import DESKTOP, PHONE, REPO, ChatPage, RawchatServer, launch_chromium

DAY = 86_400
LOBBY = [
    ("lee", "Morning! Is the release still on for ten?"),
    ("maya", "Yes, once the browser tests are green."),
    ("sam", "They are. I'm watching the latency graphs."),
    ("lee", "Then I'll write the notes: paged history, typing, direct messages."),
]


def open_page(
    browser: Browser, server: RawchatServer, nick: str, viewport: dict[str, int], token: str = ""
) -> ChatPage:
    # A fixed clock and locale, so that refreshed images differ only where the page did.
    size = ViewportSize(width=viewport["width"], height=viewport["height"])
    context = browser.new_context(viewport=size, locale="en-US", timezone_id="UTC")
    page = ChatPage(context.new_page())
    if token:
        return page.open_link(f"{server.url}?token={quote(token)}")
    return page.open(server.url, nick)


def composer(chat: ChatPage) -> Locator:
    return chat.page.get_by_role("textbox", name="Message", exact=True)


def play(browser: Browser, server: RawchatServer, tokens: Tokens, out: Path) -> None:
    maya = open_page(browser, server, "maya", DESKTOP, tokens.issue("maya", DAY, operator=True))
    lee = open_page(browser, server, "lee", DESKTOP)
    sam = open_page(browser, server, "sam", PHONE)
    people = {"maya": maya, "lee": lee, "sam": sam}
    # Everyone in before anyone speaks, so the joins come first in every log.
    for chat in people.values():
        expect(chat.page.get_by_test_id("member-count")).to_have_text("3")
    for nick, text in LOBBY:
        people[nick].send(text)
        for chat in people.values():
            expect(chat.message(text)).to_have_count(1)

    # sam asks maya something in private, then goes back to the lobby.
    sam.actions("maya").get_by_role("button", name="Message maya").click()
    sam.send("Could you make me an owner of #design?")
    expect(maya.direct_button("sam")).to_contain_text("1")
    sam.room_button("lobby").click()

    # lee starts the next message at a person's pace (a page sends one notice per 3 s and
    # lee's last one went with the message above), and maya opens her actions for sam.
    composer(lee).press_sequentially("Notes are up, have a look", delay=150)
    expect(maya.page.get_by_test_id("typing")).to_have_text("lee is typing…")
    panel = maya.actions("sam")
    panel.get_by_label("Reason (optional)").fill("Owner of #design")
    expect(maya.page.get_by_test_id("typing")).to_have_text("lee is typing…")
    maya.page.screenshot(path=out / "screenshot-desktop.png")

    # maya answers sam; sam's phone shows the lobby with the answer waiting.
    maya.page.keyboard.press("Escape")
    maya.direct_button("sam").click()
    maya.send("Sure, right after the release.")
    expect(sam.direct_button("maya")).to_contain_text("1")
    composer(lee).press_sequentially(" when you can", delay=150)
    expect(sam.page.get_by_test_id("typing")).to_have_text("lee is typing…")
    sam.page.screenshot(path=out / "screenshot-phone.png")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "token-secret"
        secret.write_text(secrets.token_hex(32))
        server = RawchatServer("--uvloop", "--token-secret-file", str(secret))
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                try:
                    play(browser, server, Tokens.from_file(secret), out)
                finally:
                    browser.close()
        finally:
            server.stop()
    for name in ("screenshot-desktop.png", "screenshot-phone.png"):
        print(out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
