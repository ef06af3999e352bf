"""Where things land on the page: nothing a user needs is pushed aside, covered or cut off."""

from __future__ import annotations

import pytest
from playwright.sync_api import FloatRect, Locator, expect

from .harness import PHONE, RawchatServer
from .test_chat_page import OpenChat

pytestmark = pytest.mark.e2e

DAY = 86_400


def box(locator: Locator) -> FloatRect:
    rect = locator.bounding_box()
    assert rect is not None, "not rendered"
    return rect


def overlap(a: FloatRect, b: FloatRect) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_a_conversation_and_its_unread_count_show_whole_on_a_phone(open_chat: OpenChat) -> None:
    ann = open_chat("ann", viewport=PHONE)
    bob = open_chat("bob")
    bob.actions("ann").get_by_role("button", name="Message ann").click()
    bob.send("are you on the train?")
    conversation = ann.direct_button("bob")
    expect(conversation).to_contain_text("1")

    conversations = ann.page.get_by_test_id("direct-list")
    hidden = conversations.evaluate("list => list.scrollWidth - list.clientWidth")
    assert hidden <= 0, "part of the conversations is scrolled out of sight"
    unread = box(conversation.locator(".badge"))
    assert not overlap(unread, box(ann.page.get_by_label("Join or create a room")))
    assert unread["x"] + unread["width"] <= PHONE["width"]


@pytest.mark.tokens
def test_sent_stays_at_the_end_of_a_moderators_message(
    open_chat: OpenChat, server: RawchatServer
) -> None:
    assert server.tokens is not None
    op = open_chat("op", token=server.tokens.issue("op", DAY, operator=True))
    op.send("tests are green")
    message = op.message("tests are green")
    status = message.get_by_test_id("msg-status")
    expect(status).to_have_text("Sent")
    # The Delete button (shown on hover) follows it; nothing else may come between them.
    delete = message.get_by_role("button", name="Delete")
    end = box(status)["x"] + box(status)["width"]
    row = box(message.locator(".meta"))
    assert row["x"] + row["width"] - end <= box(delete)["width"] + 16
