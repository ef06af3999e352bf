"""The chat page in a real browser against a real server: what a person sees and can do."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, Response, expect

from .bots import Bot
from .harness import (
    ARTIFACTS,
    DESKTOP,
    PHONE,
    ChatPage,
    PageProblems,
    RawchatServer,
    TcpProxy,
    launch_chromium,
)

pytestmark = pytest.mark.e2e

OpenChat = Callable[..., ChatPage]
RESTART_NOTICE = "The server restarted: earlier history is gone."


def test_two_people_chat(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    expect(ann.members).to_have_text(["ann(you)", "bob"])
    # Keyboard first: after picking a nickname the cursor waits in the message box.
    expect(bob.page.get_by_role("textbox", name="Message", exact=True)).to_be_focused()

    ann.send("hello bob")
    seen_by_bob = bob.message("hello bob")
    expect(seen_by_bob).to_have_count(1)
    expect(seen_by_bob.get_by_test_id("msg-nick")).to_have_text("ann")
    expect(seen_by_bob.get_by_test_id("msg-time")).to_have_text(re.compile(r"\d"))
    # Only the author sees a delivery state, and it turns to Sent on the server's ack.
    expect(seen_by_bob.get_by_test_id("msg-status")).to_have_count(0)
    expect(ann.message("hello bob").get_by_test_id("msg-status")).to_have_text("Sent")

    bob.send("hi ann, multi word reply")
    seen_by_ann = ann.message("hi ann, multi word reply")
    expect(seen_by_ann.get_by_test_id("msg-nick")).to_have_text("bob")
    expect(bob.message("hi ann, multi word reply").get_by_test_id("msg-status")).to_have_text(
        "Sent"
    )
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(
        ["hello bob", "hi ann, multi word reply"]
    )
    ann.screenshot("two-people-ann-desktop")


def test_markup_in_messages_and_nicks_is_only_text(
    open_chat: OpenChat, page_problems: PageProblems
) -> None:
    payload = "<img src=x onerror=alert(1)>"
    ann = open_chat("ann")
    eve = open_chat("<b>eve</b>")

    eve.send(payload)
    shown = ann.message(payload)
    expect(shown).to_have_count(1)
    expect(shown.get_by_test_id("msg-nick")).to_have_text("<b>eve</b>")
    expect(ann.members.filter(has_text="<b>eve</b>")).to_have_count(1)
    # Sync point: the sender's acknowledgement, then a later message, so that anything the
    # payload could have triggered has had its chance.
    expect(eve.message(payload).get_by_test_id("msg-status")).to_have_text("Sent")
    ann.send("after the payload")
    expect(eve.message("after the payload")).to_have_count(1)

    for person in (ann, eve):
        expect(person.log.locator("img")).to_have_count(0)
        expect(person.page.locator("b")).to_have_count(0)
    assert page_problems.dialogs == []
    ann.screenshot("markup-is-text-desktop")


def test_dropped_connection_comes_back_without_gaps_or_doubles(
    open_chat: OpenChat, make_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = make_proxy()
    ann = open_chat("ann", url=proxy.url)
    bob = open_chat("bob")
    bob.send("before the drop")
    expect(ann.message("before the drop")).to_have_count(1)

    proxy.go_down()
    expect(ann.status).to_contain_text(re.compile(r"Reconnecting"))
    expect(bob.members).to_have_text(["bob(you)"])
    missed = [f"while ann was away {n}" for n in range(1, 4)]
    for text in missed:
        bob.send(text)
        expect(bob.message(text).get_by_test_id("msg-status")).to_have_text("Sent")
    # Written while offline: waits, then goes out once the page is back.
    ann.send("typed while offline")
    expect(ann.message("typed while offline").get_by_test_id("msg-status")).to_have_text("Sending…")
    ann.screenshot("reconnecting-desktop")

    proxy.go_up()
    expect(ann.status).to_contain_text("Online")
    expect(ann.nick_field).to_have_value("ann")
    expect(ann.message("typed while offline").get_by_test_id("msg-status")).to_have_text("Sent")
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(
        ["before the drop", *missed, "typed while offline"]
    )
    expect(bob.messages.get_by_test_id("msg-text")).to_have_text(
        ["before the drop", *missed, "typed while offline"]
    )
    expect(ann.log.get_by_test_id("notice")).to_have_count(0)
    ann.screenshot("reconnected-desktop")


@pytest.mark.parametrize("kill", [True, False], ids=["crash", "graceful"])
def test_server_restart_is_said_plainly(
    open_chat: OpenChat, server: RawchatServer, kill: bool
) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    bob.send("before the restart")
    expect(ann.message("before the restart")).to_have_count(1)

    server.restart(kill=kill)

    for person in (ann, bob):
        expect(person.status).to_contain_text("Online")
        expect(person.log.get_by_test_id("notice")).to_have_text([RESTART_NOTICE])
    # Ids start again at 1 after a restart: the new message must not be taken for the old
    # one with the same id, nor the old one shown twice.
    bob.send("after the restart")
    expect(ann.message("after the restart")).to_have_count(1)
    expect(ann.message("before the restart")).to_have_count(1)
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(
        ["before the restart", "after the restart"]
    )
    ann.screenshot(f"server-restarted-{'crash' if kill else 'graceful'}-desktop")


def test_tutorial_page_works_unchanged(
    playwright: Playwright,
    server: RawchatServer,
    open_chat: OpenChat,
) -> None:
    # The tutorial hard-codes ws://localhost:8080/ws. Instead of hoping port 8080 is free,
    # Chromium's resolver maps localhost:8080 to this test's server; the page is loaded
    # from the same mapped origin, so nothing about it differs from the real thing.
    mapping = f"--host-resolver-rules=MAP localhost:8080 127.0.0.1:{server.port}"
    browser = launch_chromium(playwright, mapping)
    try:
        watcher = open_chat("watcher")
        pages = []
        for viewport in (DESKTOP, PHONE):
            page = browser.new_context(viewport=viewport).new_page()
            with page.expect_console_message(lambda m: m.text == "Socket opened successfully"):
                page.goto("http://localhost:8080/tutorial.html")
            pages.append(page)
        first, second = pages

        first.locator("#textbox").fill("hello from the tutorial")
        first.locator("#button").click()
        for page in pages:
            expect(page.locator("#box > div")).to_have_text(["hello from the tutorial"])
        # The v1 page sees it in the lobby, from a guest: proof the tutorial reached *this*
        # server and not whatever else might listen on the real port 8080.
        said = watcher.message("hello from the tutorial")
        expect(said.get_by_test_id("msg-nick")).to_have_text(re.compile(r"^guest-\d+$"))

        watcher.send("hello tutorial")
        for page in pages:
            expect(page.locator("#box > div")).to_have_text(
                ["hello from the tutorial", "hello tutorial"]
            )
        first.screenshot(path=ARTIFACTS / "tutorial-desktop.png")
        second.screenshot(path=ARTIFACTS / "tutorial-phone.png")
    finally:
        browser.close()


def test_markup_sent_to_the_tutorial_page_runs_nothing(
    playwright: Playwright,
    server: RawchatServer,
    open_chat: OpenChat,
) -> None:
    # The tutorial inserts what it receives with innerHTML, and plain mode relays
    # chat text verbatim. The server's Content-Security-Policy for HTML pages
    # admits only the page's own inline script, so injected handlers stay inert.
    mapping = f"--host-resolver-rules=MAP localhost:8080 127.0.0.1:{server.port}"
    browser = launch_chromium(playwright, mapping)
    try:
        page = browser.new_context(viewport=DESKTOP).new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        with page.expect_console_message(lambda m: m.text == "Socket opened successfully"):
            page.goto("http://localhost:8080/tutorial.html")
        open_chat("mallory").send('<img src=x onerror="window.pwned=1;alert(1)">')
        # The markup does land in the page (the tutorial is unchanged) ...
        expect(page.locator("#box img")).to_have_count(1)
        page.locator("#textbox").fill("after")
        page.locator("#button").click()
        expect(page.locator("#box > div")).to_have_count(2)
        # ... but its handler never ran.
        assert page.evaluate("window.pwned") is None
        assert dialogs == []
    finally:
        browser.close()


def test_rooms_are_separate_and_presence_follows(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")

    ann.join("dev")
    expect(ann.page.get_by_test_id("room-title")).to_have_text("dev")
    expect(ann.room_button("dev")).to_have_attribute("aria-current", "true")
    expect(ann.members).to_have_text(["ann(you)"])
    ann.send("only for dev")
    expect(ann.message("only for dev").get_by_test_id("msg-status")).to_have_text("Sent")

    # bob, in lobby only, hears nothing from dev; a later lobby message is the sync point.
    ann.room_button("lobby").click()
    ann.send("back in lobby")
    expect(bob.message("back in lobby")).to_have_count(1)
    expect(bob.page.get_by_text("only for dev")).to_have_count(0)
    expect(bob.room_button("dev")).to_have_count(0)

    # bob joins dev: he gets its history, and ann's list of who is there updates.
    bob.join("dev")
    expect(bob.message("only for dev")).to_have_count(1)
    ann.room_button("dev").click()
    expect(ann.members).to_have_text(["ann(you)", "bob"])
    expect(ann.log).to_contain_text("bob joined")

    # A message in a room you are not looking at shows as unread.
    ann.room_button("lobby").click()
    bob.send("psst, dev")
    expect(ann.room_button("dev")).to_contain_text("1")
    ann.room_button("dev").click()
    expect(ann.message("psst, dev")).to_have_count(1)

    bob.page.get_by_test_id("leave").click()
    expect(bob.room_button("dev")).to_have_count(0)
    expect(bob.page.get_by_test_id("room-title")).to_have_text("lobby")
    expect(ann.members).to_have_text(["ann(you)"])
    expect(ann.log).to_contain_text("bob left")

    ann.join(".hidden")
    expect(ann.page.get_by_test_id("join-hint")).to_contain_text("not starting with a dot")
    ann.screenshot("rooms-desktop")


def test_taken_nick_gets_a_variant_and_renames_show(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    other = open_chat("ANN")
    expect(other.nick_field).to_have_value("ANN2")
    expect(other.page.get_by_test_id("notice")).to_contain_text("taken")
    expect(ann.members).to_have_text(["ann(you)", "ANN2"])

    other.nick_field.fill("anne")
    other.nick_field.press("Enter")
    expect(ann.log).to_contain_text("ANN2 is now known as anne")
    expect(ann.members).to_have_text(["ann(you)", "anne"])
    expect(other.members).to_have_text(["ann", "anne(you)"])

    other.nick_field.fill("ann")
    other.nick_field.press("Enter")
    expect(other.page.get_by_test_id("notice")).to_contain_text("taken")
    expect(other.nick_field).to_have_value("anne")


def test_layout_desktop_and_phone(open_chat: OpenChat, browser: Browser) -> None:
    desktop = open_chat("ann")
    phone = open_chat("bob", viewport=PHONE)
    desktop.join("design")
    expect(desktop.page.get_by_test_id("room-title")).to_have_text("design")
    desktop.room_button("lobby").click()
    long_word = "supercalifragilisticexpialidocious" * 4
    desktop.send(f"A long word should wrap, not widen the page: {long_word}")
    phone.send("Looks fine on a phone too.\nEven with a second line.")
    desktop.send("Good. Shipping it.")
    expect(phone.message("Good. Shipping it.")).to_have_count(1)
    expect(desktop.message("Good. Shipping it.").get_by_test_id("msg-status")).to_have_text("Sent")

    for person in (desktop, phone):
        overflow = person.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0, "the page scrolls sideways"
        expect(person.page.get_by_role("textbox", name="Message", exact=True)).to_be_in_viewport()
    desktop.screenshot("chat-desktop")
    phone.screenshot("chat-phone")

    # First visit: the nickname prompt, on both sizes.
    for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        try:
            page = context.new_page()
            page.goto(desktop.page.url)
            expect(page.get_by_label("Choose a nickname")).to_be_focused()
            page.screenshot(path=ARTIFACTS / f"nickname-prompt-{name}.png")
        finally:
            context.close()


def test_lost_acknowledgement_is_not_sent_twice(
    open_chat: OpenChat, make_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = make_proxy()
    ann = open_chat("ann", url=proxy.url, viewport=PHONE)
    bob = open_chat("bob")

    # The message reaches the server, but its acknowledgement dies with the connection.
    proxy.hold_replies()
    ann.send("did this arrive?")
    expect(bob.message("did this arrive?")).to_have_count(1)
    expect(ann.message("did this arrive?").get_by_test_id("msg-status")).to_have_text("Sending…")
    proxy.go_down()
    expect(ann.status).to_contain_text("Reconnecting")
    ann.screenshot("reconnecting-phone")
    proxy.go_up()

    expect(ann.status).to_contain_text("Online")
    expect(ann.message("did this arrive?").get_by_test_id("msg-status")).to_have_text("Sent")
    ann.send("and this one")
    expect(bob.messages.get_by_test_id("msg-text")).to_have_text(
        ["did this arrive?", "and this one"]
    )
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(
        ["did this arrive?", "and this one"]
    )


@pytest.mark.server_args("--history", "3")
def test_gap_the_server_cannot_fill_is_shown(
    open_chat: OpenChat, make_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = make_proxy()
    ann = open_chat("ann", url=proxy.url)
    bob = open_chat("bob")
    bob.send("m0")
    expect(ann.message("m0")).to_have_count(1)

    proxy.go_down()
    expect(ann.status).to_contain_text("Reconnecting")
    for n in range(1, 6):
        bob.send(f"m{n}")
        expect(bob.message(f"m{n}").get_by_test_id("msg-status")).to_have_text("Sent")
    proxy.go_up()

    expect(ann.status).to_contain_text("Online")
    # Only the last three are kept: m1 and m2 are gone, and the page says so where they were.
    expect(ann.log.get_by_test_id("notice")).to_have_text(
        ["Some messages from while you were away are no longer available."]
    )
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(["m0", "m3", "m4", "m5"])
    ann.screenshot("gap-desktop")


def test_view_follows_new_messages_unless_scrolled_up(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    for n in range(1, 16):
        bob.send(f"message {n}\nsecond line\nthird line")
    last = ann.message("message 15\nsecond line\nthird line")
    expect(last).to_be_in_viewport()
    jump = ann.page.get_by_role("button", name="New messages")
    expect(jump).to_be_hidden()

    # Reading older messages: new ones must not yank the view away.
    ann.log.hover()
    ann.page.mouse.wheel(0, -5000)
    expect(ann.message("message 1\nsecond line\nthird line")).to_be_in_viewport()
    bob.send("while ann reads")
    expect(jump).to_be_visible()
    expect(ann.message("while ann reads")).not_to_be_in_viewport()
    ann.screenshot("scrolled-up-desktop")

    jump.click()
    expect(ann.message("while ann reads")).to_be_in_viewport()
    expect(jump).to_be_hidden()


# Every message counts against the rate, the hello included: hello and one fit in the
# burst of 2; two and three come too soon and wait for their tokens (a fifth of a
# second each), slowed by the server, not refused.
@pytest.mark.server_args("--rate", "5", "--burst", "2")
def test_messages_over_the_rate_are_delivered_late_not_refused(open_chat: OpenChat) -> None:
    bob = open_chat("bob")
    ann = open_chat("ann")
    for text in ("one", "two", "three"):
        ann.send(text)

    for text in ("one", "two", "three"):
        expect(ann.message(text).get_by_test_id("msg-status")).to_have_text("Sent")
    expect(bob.messages.get_by_test_id("msg-text")).to_have_text(["one", "two", "three"])


def test_page_over_tls_uses_wss(open_chat: OpenChat, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = RawchatServer("--certfile", str(cert), "--keyfile", str(key))
    server.start()
    try:
        assert server.url.startswith("https://")
        ann = open_chat("ann", url=server.url, ignore_https_errors=True)
        bob = open_chat("bob", url=server.url, ignore_https_errors=True)
        ann.send("over wss")
        expect(bob.message("over wss")).to_have_count(1)
        expect(ann.message("over wss").get_by_test_id("msg-status")).to_have_text("Sent")
    finally:
        server.stop()


@pytest.mark.server_args("--uvloop")
def test_chat_and_resume_on_uvloop(
    open_chat: OpenChat, make_proxy: Callable[[], TcpProxy], server: RawchatServer
) -> None:
    assert any("(uvloop)" in line for line in server.log), "the server did not pick uvloop"
    proxy = make_proxy()
    ann = open_chat("ann", url=proxy.url)
    bob = open_chat("bob")
    bob.send("first")
    expect(ann.message("first")).to_have_count(1)
    proxy.go_down()
    expect(ann.status).to_contain_text("Reconnecting")
    bob.send("second")
    expect(bob.message("second").get_by_test_id("msg-status")).to_have_text("Sent")
    proxy.go_up()
    expect(ann.status).to_contain_text("Online")
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(["first", "second"])


def test_text_too_big_for_the_server_is_refused_by_the_page(open_chat: OpenChat) -> None:
    # 16,000 control characters are within the server's max_text (16,256 at the
    # default 64 KiB), but JSON writes each as a six-byte escape: 96,000 bytes, over
    # the 64 KiB message limit, which would close the connection (1009) if sent.
    ann = open_chat("ann")
    bob = open_chat("bob")
    long_text = "a" + "\x01" * 16_000
    ann.send(long_text)
    expect(ann.page.get_by_test_id("notice")).to_contain_text("Not sent")
    composer = ann.page.get_by_role("textbox", name="Message", exact=True)
    expect(composer).to_have_value(long_text)
    expect(ann.messages).to_have_count(0)
    # Still connected and still able to talk: a short message goes through.
    composer.fill("short one")
    composer.press("Enter")
    expect(bob.message("short one")).to_have_count(1)
    expect(ann.status).to_contain_text("Online")
    expect(ann.message("short one").get_by_test_id("msg-status")).to_have_text("Sent")


# 120 messages kept: the page gets the newest 50 with `joined` and the rest in pages.
@pytest.mark.server_args("--history", "200")
def test_older_messages_load_when_scrolling_to_the_top(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    bot = Bot(server.port, "bot")
    texts = [f"message {n}" for n in range(1, 121)]
    for text in texts:
        bot.post("lobby", text)
    ann = open_chat("ann")
    expect(ann.message("message 120")).to_be_in_viewport()
    expect(ann.messages).to_have_count(50)

    # Scrolling to the top brings the page before in, above the view: the message read
    # stays in view and the new ones wait above it.
    ann.log.hover()
    for oldest, before in (("message 71", "message 21"), ("message 21", "message 1")):
        ann.page.mouse.wheel(0, -100_000)
        expect(ann.message(before)).to_have_count(1)
        expect(ann.message(oldest)).to_be_in_viewport()
        expect(ann.message(before)).not_to_be_in_viewport()
    ann.page.mouse.wheel(0, -100_000)
    expect(ann.message("message 1")).to_be_in_viewport()
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(texts)
    expect(ann.page.get_by_role("button", name="Load earlier messages")).to_be_hidden()
    ann.screenshot("older-messages-desktop")

    # A message arriving while the reader is at the top neither moves them nor repeats.
    bot.post("lobby", "message 121")
    expect(ann.message("message 121")).to_have_count(1)
    expect(ann.message("message 1")).to_be_in_viewport()
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text([*texts, "message 121"])
    bot.close()


@pytest.mark.server_args("--history", "200")
def test_earlier_messages_load_from_the_keyboard(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    bot = Bot(server.port, "bot")
    texts = [f"line {n}" for n in range(1, 71)]
    for text in texts:
        bot.post("lobby", text)
    ann = open_chat("ann")
    expect(ann.messages).to_have_count(50)
    load = ann.page.get_by_role("button", name="Load earlier messages")
    load.focus()
    ann.page.keyboard.press("Enter")
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(texts)
    expect(load).to_be_hidden()
    bot.close()


@pytest.mark.server_args("--history", "200")
def test_a_long_absence_is_filled_in_pages_without_doubles(
    open_chat: OpenChat, server: RawchatServer, make_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = make_proxy()
    ann = open_chat("ann", url=proxy.url)
    bot = Bot(server.port, "bot")
    bot.post("lobby", "before the drop")
    expect(ann.message("before the drop")).to_have_count(1)

    proxy.go_down()
    expect(ann.status).to_contain_text("Reconnecting")
    # More than a page missed: the resume brings the newest page, the rest comes after.
    missed = [f"missed {n}" for n in range(1, 131)]
    for text in missed:
        bot.post("lobby", text)
    proxy.go_up()

    expect(ann.status).to_contain_text("Online")
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(["before the drop", *missed])
    expect(ann.log.get_by_test_id("notice")).to_have_count(0)
    bot.close()


def test_people_arriving_and_leaving_together_are_all_shown(
    open_chat: OpenChat, server: RawchatServer, browser: Browser
) -> None:
    ann = open_chat("ann")
    count = ann.page.get_by_test_id("member-count")
    expect(count).to_have_text("1")
    bob = open_chat("bob")
    expect(ann.members).to_have_text(["ann(you)", "bob"])
    expect(bob.members).to_have_text(["ann", "bob(you)"])
    expect(ann.log).to_contain_text("bob joined")
    expect(count).to_have_text("2")

    # Arrivals within one presence tick come in one frame listing them all.
    crowd = [Bot(server.port, f"guest {n}") for n in range(1, 5)]
    expect(ann.members).to_have_text(
        ["ann(you)", "bob", "guest 1", "guest 2", "guest 3", "guest 4"]
    )
    expect(count).to_have_text("6")
    expect(bob.page.get_by_test_id("member-count")).to_have_text("6")
    for bot in crowd:
        bot.close()
    expect(ann.members).to_have_text(["ann(you)", "bob"])
    expect(count).to_have_text("2")

    bob.page.context.close()
    expect(ann.members).to_have_text(["ann(you)"])
    expect(ann.log).to_contain_text("bob left")
    expect(count).to_have_text("1")
    ann.screenshot("presence-desktop")


def test_a_crowd_past_the_listed_members_is_counted(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    # `joined` lists at most 200 members; `count` says how many there are.
    crowd = [Bot(server.port, f"member {n:03}") for n in range(1, 211)]
    ann = open_chat("ann")
    expect(ann.page.get_by_test_id("member-count")).to_have_text("211")
    listed = ann.members.filter(has_not_text=re.compile(r"^and \d+ more$"))
    expect(ann.members.last).to_have_text(re.compile(r"^and \d+ more$"))
    # The 200 listed, and ann herself, who arrived after them.
    expect(listed.filter(has_text="ann(you)")).to_have_count(1)
    shown = listed.count()
    assert shown == 201
    expect(ann.members.last).to_have_text(f"and {211 - shown} more")
    for bot in crowd[:20]:
        bot.close()
    expect(ann.page.get_by_test_id("member-count")).to_have_text("191")
    for bot in crowd[20:]:
        bot.close()
    expect(ann.page.get_by_test_id("member-count")).to_have_text("1")
    expect(ann.members).to_have_text(["ann(you)"])


def test_every_module_is_served_as_javascript(browser: Browser, server: RawchatServer) -> None:
    # Browsers refuse a module script served with any other type.
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        scripts: dict[str, str] = {}

        def seen(response: Response) -> None:
            if response.request.resource_type == "script":
                name = response.url.rsplit("/", 1)[-1]
                scripts[name] = response.headers.get("content-type", "")

        page.on("response", seen)
        page.goto(server.url)
        expect(page.get_by_label("Choose a nickname")).to_be_focused()
        modules = sorted(p.name for p in (Path(__file__).parents[2] / "static").glob("*.js"))
        assert sorted(scripts) == modules
        assert set(scripts.values()) == {"text/javascript; charset=utf-8"}
    finally:
        context.close()
