"""The page's sign-in, moderation, direct messages and typing, in a real browser."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, WebSocket, expect

from .bots import Bot
from .harness import DESKTOP, PageProblems, RawchatServer
from .test_chat_page import OpenChat

pytestmark = pytest.mark.e2e

DAY = 86_400


def issue(server: RawchatServer, nick: str, *, operator: bool = False) -> str:
    assert server.tokens is not None, "mark the test with @pytest.mark.tokens"
    return server.tokens.issue(nick, DAY, operator=operator)


@pytest.mark.tokens
def test_sign_in_link_signs_in_and_leaves_the_address(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    ann = open_chat("ann", token=issue(server, "ann"))
    expect(ann.nick_field).to_have_value("ann")
    expect(ann.page.get_by_test_id("role")).to_have_text("Signed in")
    assert "token" not in urlsplit(ann.page.url).query
    # The token stays with the tab: a reload is still signed in, without a prompt.
    ann.page.reload()
    expect(ann.status).to_contain_text("Online")
    expect(ann.page.get_by_test_id("role")).to_have_text("Signed in")
    ann.screenshot("signed-in-desktop")

    # A guest cannot take the reserved nick, even once its holder has gone.
    ann.page.context.close()
    guest = open_chat("bob")
    guest.nick_field.fill("ann")
    guest.nick_field.press("Enter")
    expect(guest.page.get_by_test_id("notice")).to_contain_text("reserved")
    expect(guest.nick_field).to_have_value("bob")


@pytest.mark.tokens
def test_a_pasted_token_signs_in_and_a_bad_one_is_said(
    browser: Browser, server: RawchatServer, page_problems: PageProblems
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page_problems.watch(page)
        page.goto(server.url)
        page.get_by_label("Sign-in token (optional)").fill("not.a.token")
        page.get_by_label("Choose a nickname").fill("ann")
        page.get_by_role("button", name="Start chatting").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("refused the sign-in token")
        expect(page.get_by_label("Sign-in token (optional)")).to_have_value("")
        page.screenshot(path="/tmp/login-token-refused.png")

        # Pasting a token fills the nickname it is for in.
        page.get_by_label("Choose a nickname").fill("")
        page.get_by_label("Sign-in token (optional)").fill(issue(server, "cy"))
        expect(page.get_by_label("Choose a nickname")).to_have_value("cy")
        page.get_by_label("Choose a nickname").press("Enter")
        expect(page.get_by_test_id("status")).to_contain_text("Online")
        expect(page.get_by_test_id("role")).to_have_text("Signed in")
    finally:
        context.close()


@pytest.mark.tokens
def test_operator_kicks_mutes_bans_and_deletes(open_chat: OpenChat, server: RawchatServer) -> None:
    op = open_chat("op", token=issue(server, "op", operator=True))
    bob = open_chat("bob")
    cy = open_chat("cy")
    expect(op.page.get_by_test_id("role")).to_have_text("Operator")
    cy.send("spam spam spam")
    cy.send("a fine message")
    expect(op.message("a fine message")).to_have_count(1)

    # Guests see no moderation at all: neither on members nor on messages.
    panel = bob.actions("cy")
    expect(panel.get_by_role("button", name="Message cy")).to_be_focused()
    expect(panel.get_by_role("button", name="Kick")).to_be_hidden()
    expect(bob.page.get_by_role("button", name=re.compile("^Delete message"))).to_have_count(0)
    bob.page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(bob.member("cy")).to_be_focused()

    # Delete: the message leaves every page, the others stay.
    op.message("spam spam spam").get_by_role("button", name="Delete message from cy").click()
    for person in (op, bob, cy):
        expect(person.message("spam spam spam")).to_have_count(0)
        expect(person.message("a fine message")).to_have_count(1)

    # Mute, from the keyboard: cy's next message is refused, visibly, for cy alone.
    panel = op.actions("cy")
    panel.get_by_label("Mute or ban for").select_option(label="5 minutes")
    panel.get_by_role("button", name="Mute").click()
    expect(cy.log).to_contain_text("You were muted by op for 5 minutes")
    expect(bob.log).to_contain_text("cy was muted by op for 5 minutes")
    cy.send("can you hear me?")
    expect(cy.message("can you hear me?").get_by_test_id("msg-status")).to_contain_text(
        "You are muted"
    )

    # Kick with a reason: bob is out of the lobby, and everyone is told why.
    panel = op.actions("bob")
    panel.get_by_label("Reason (optional)").fill("please stay on topic")
    op.screenshot("operator-menu-desktop")
    panel.get_by_role("button", name="Kick").click()
    expect(bob.page.get_by_test_id("notice")).to_have_text(
        "You were removed from lobby by op: please stay on topic"
    )
    expect(bob.room_button("lobby")).to_have_count(0)
    expect(cy.log).to_contain_text("bob was removed by op: please stay on topic")
    expect(op.members).to_have_text(["cy", "op(you)"])

    # Ban: cy is out, and cannot come back.
    panel = op.actions("cy")
    panel.get_by_role("button", name="Ban").click()
    expect(cy.page.get_by_test_id("notice")).to_contain_text("You were banned from lobby")
    cy.join("lobby")
    expect(cy.page.get_by_test_id("join-hint")).to_have_text("You are banned from that room.")
    expect(op.members).to_have_text(["op(you)"])
    cy.screenshot("banned-desktop")


@pytest.mark.tokens
def test_the_creator_of_a_room_moderates_it_and_only_it(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    ann = open_chat("ann", token=issue(server, "ann"))
    bob = open_chat("bob")
    expect(ann.page.get_by_test_id("role")).to_have_text("Signed in")
    # In the lobby (no owners) ann is a member like any other.
    expect(ann.actions("bob").get_by_role("button", name="Kick")).to_be_hidden()
    ann.page.keyboard.press("Escape")

    ann.join("annsroom")
    expect(ann.page.get_by_test_id("room-title")).to_have_text("annsroom")
    bob.join("annsroom")
    expect(ann.members).to_have_text(["ann(you)", "bob"])
    ann.actions("bob").get_by_role("button", name="Kick").click()
    expect(bob.room_button("annsroom")).to_have_count(0)
    expect(ann.members).to_have_text(["ann(you)"])


def test_direct_messages_have_their_own_view(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    ann.actions("bob").get_by_role("button", name="Message bob").click()
    expect(ann.page.get_by_test_id("room-title")).to_have_text("bob")
    composer = ann.page.get_by_role("textbox", name="Message", exact=True)
    expect(composer).to_be_focused()
    expect(composer).to_have_attribute("placeholder", "Message bob")
    ann.send("just between us")
    expect(ann.message("just between us").get_by_test_id("msg-status")).to_have_text("Sent")

    # bob sees the conversation appear with one unread, not the message in the lobby.
    expect(bob.direct_button("ann")).to_contain_text("1")
    expect(bob.message("just between us")).to_have_count(0)
    bob.direct_button("ann").click()
    expect(bob.message("just between us").get_by_test_id("msg-nick")).to_have_text("ann")
    bob.send("agreed")
    expect(ann.messages.get_by_test_id("msg-text")).to_have_text(["just between us", "agreed"])
    ann.screenshot("direct-desktop")

    # A new nick: the conversation follows it.
    bob.nick_field.fill("bobby")
    bob.nick_field.press("Enter")
    expect(ann.direct_button("bobby")).to_have_count(1)
    expect(ann.page.get_by_test_id("room-title")).to_have_text("bobby")
    ann.send("nice name")
    expect(bob.message("nice name")).to_have_count(1)

    # The lobby stayed the lobby; closing the conversation takes it off the page only.
    ann.room_button("lobby").click()
    expect(ann.messages).to_have_count(0)
    ann.direct_button("bobby").click()
    ann.page.get_by_test_id("leave").click()
    expect(ann.direct_button("bobby")).to_have_count(0)
    expect(ann.page.get_by_test_id("room-title")).to_have_text("lobby")


def test_a_direct_message_to_someone_gone_is_not_sent(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    ann.actions("bob").get_by_role("button", name="Message bob").click()
    bob.page.context.close()
    # Sync point: the server has seen bob go once the lobby says so.
    ann.room_button("lobby").click()
    expect(ann.log).to_contain_text("bob left")
    ann.direct_button("bob").click()
    ann.send("still there?")
    expect(ann.message("still there?").get_by_test_id("msg-status")).to_contain_text(
        "Nobody by that nickname is connected."
    )


def test_typing_is_shown_and_sent_sparingly(open_chat: OpenChat) -> None:
    ann = open_chat("ann")
    bob = open_chat("bob")
    sent: list[dict[str, object]] = []

    def watch(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: sent.append(json.loads(payload)))

    # The page's socket is already open: reconnect it under watch by reloading.
    ann.page.on("websocket", watch)
    ann.page.reload()
    expect(ann.status).to_contain_text("Online")

    composer = ann.page.get_by_role("textbox", name="Message", exact=True)
    composer.press_sequentially("hello there bob")
    typing = bob.page.get_by_test_id("typing")
    expect(typing).to_have_text("ann is typing…")
    bob.screenshot("typing-desktop")
    # Fifteen keystrokes in far less than three seconds: one notice.
    assert [m for m in sent if m["type"] == "typing"] == [{"type": "typing", "room": "lobby"}]
    composer.press("Enter")
    expect(bob.message("hello there bob")).to_have_count(1)
    # Her message ends the notice at once, well before it would expire (6 s).
    expect(typing).to_have_text("", timeout=2_000)

    # Without a message, the notice goes by itself.
    bob.page.get_by_role("textbox", name="Message", exact=True).press_sequentially("hm")
    expect(ann.page.get_by_test_id("typing")).to_have_text("bob is typing…")
    expect(ann.page.get_by_test_id("typing")).to_have_text("", timeout=10_000)


@pytest.mark.tokens
def test_markup_in_moderation_typing_and_direct_messages_is_only_text(
    open_chat: OpenChat, server: RawchatServer, page_problems: PageProblems
) -> None:
    payload = "<img src=x onerror=alert(1)>"
    op_nick = "<b>op</b>"
    op = open_chat(op_nick, token=issue(server, op_nick, operator=True))
    ann = open_chat("ann")
    eve = Bot(server.port, "<img src=x onerror=alert(2)>")
    mal = Bot(server.port, "<b>mal</b>")
    expect(ann.members).to_have_count(4)

    eve.send({"type": "typing", "room": "lobby"})
    expect(ann.page.get_by_test_id("typing")).to_have_text(
        "<img src=x onerror=alert(2)> is typing…"
    )
    eve.request({"type": "msg", "to": "ann", "text": payload})
    expect(ann.direct_button("<img src=x onerror=alert(2)>")).to_contain_text("1")
    op.send("sync")
    expect(ann.message("sync")).to_have_count(1)
    op_panel = op.actions("<img src=x onerror=alert(2)>")
    op_panel.get_by_label("Reason (optional)").fill(payload)
    op_panel.get_by_role("button", name="Kick").click()
    expect(ann.log).to_contain_text(f"<img src=x onerror=alert(2)> was removed by {op_nick}")
    op_panel = op.actions("<b>mal</b>")
    op_panel.get_by_label("Reason (optional)").fill("<script>alert(3)</script>")
    op_panel.get_by_role("button", name="Ban").click()
    expect(ann.log).to_contain_text("<b>mal</b> was banned by <b>op</b> for 1 hour: <script>")
    mal.wait_for(lambda m: m["type"] == "banned")
    # A mute names the muted and the moderator: both markup.
    op.actions("ann").get_by_role("button", name="Mute").click()
    expect(ann.log).to_contain_text(f"You were muted by {op_nick}")

    ann.direct_button("<img src=x onerror=alert(2)>").click()
    expect(ann.message(payload).get_by_test_id("msg-nick")).to_have_text(
        "<img src=x onerror=alert(2)>"
    )
    for person in (op, ann):
        expect(person.page.locator("img")).to_have_count(0)
        expect(person.page.locator("b")).to_have_count(0)
        expect(person.page.locator("body script")).to_have_count(0)
    assert page_problems.dialogs == []
    eve.close()
    mal.close()


@pytest.mark.tokens
def test_a_guest_on_a_reserved_nick_is_told_when_its_holder_arrives(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    guest = open_chat("ann")
    holder = open_chat("ann", token=issue(server, "ann"))
    expect(holder.nick_field).to_have_value("ann")
    expect(guest.nick_field).to_have_value(re.compile(r"^guest-\d+$"))
    expect(guest.page.get_by_test_id("notice")).to_contain_text(
        "“ann” belongs to the holder of its token"
    )
    expect(guest.members).to_have_text([re.compile(r"^ann$"), re.compile(r"^guest-\d+\(you\)$")])
