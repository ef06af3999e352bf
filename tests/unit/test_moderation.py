"""Tokens, reserved nicks, moderation, direct messages and typing, with no sockets."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawchat.identity import Tokens, mixes_scripts, nick_key
from rawchat.messages import ERROR_CODES
from rawchat.moderation import Moderation
from rawchat.presence import TICK
from tests.unit.fakes import make_state
from tests.unit.test_chat import V1, hello

SECRET = b"a test secret of at least 32 bytes!"


class World:
    """A chat whose moderation accepts tokens, on a clock the test moves."""

    def __init__(self, **options: Any) -> None:
        self.state, self.loop = make_state()
        self.now = 1_000_000.0
        self.tokens = Tokens(SECRET, clock=self.clock)
        self.moderation = Moderation(tokens=self.tokens, clock=self.clock, **options)
        # The nick registry asks moderation about reserved nicks: it must see this one too.
        chat = self.state.chat
        chat.moderation = chat.names.moderation = self.moderation

    def clock(self) -> float:
        return self.now

    def token(self, nick: str, *, operator: bool = False, ttl: float = 3600) -> str:
        return self.tokens.issue(nick, ttl, operator=operator)

    def join(self, nick: str, **extra: Any) -> V1:
        client = hello(self.state, self.loop, nick, **extra)
        client.read()
        return client

    def operator(self, nick: str = "op", **extra: Any) -> V1:
        return self.join(nick, token=self.token(nick, operator=True), **extra)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [message["type"] for message in messages]


def errors(client: V1) -> list[str]:
    return [x["code"] for x in client.read() if x["type"] == "error"]


# -- tokens ------------------------------------------------------------------------


def test_a_valid_token_is_welcomed_with_its_role() -> None:
    world = World()
    ann = hello(world.state, world.loop, "Ann", token=world.token("ann"))
    welcome, joined = ann.read()
    assert welcome["type"] == "welcome" and welcome["nick"] == "Ann"
    assert (welcome["role"], welcome["verified"]) == ("user", True)
    assert joined["type"] == "joined"
    op = hello(world.state, world.loop, "op", token=world.token("op", operator=True))
    assert op.read()[0]["role"] == "operator"
    guest = hello(world.state, world.loop, "bob")
    assert (guest.read()[0]["role"], guest.read() == []) == ("guest", True)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda w: jwt.encode({"sub": "ann", "exp": w.now + 60}, b"x" * 32), id="forged"
        ),
        pytest.param(lambda w: w.token("ann", ttl=-1), id="expired"),
        pytest.param(lambda w: w.token("bob"), id="other-nick"),
        pytest.param(lambda w: "not.a.jwt", id="garbage"),
        pytest.param(
            lambda w: jwt.encode({"sub": "ann", "exp": w.now + 60}, SECRET * 2, algorithm="HS512"),
            id="other-algorithm",
        ),
        pytest.param(lambda w: jwt.encode({"sub": "ann"}, SECRET), id="no-expiry"),
    ],
)
def test_a_bad_token_gets_bad_token_and_the_connection_stays_for_a_corrected_hello(
    make: Any,
) -> None:
    world = World()
    ann = hello(world.state, world.loop, "ann", token=make(world))
    assert [(x["type"], x.get("code")) for x in ann.read()] == [("error", "bad_token")]
    assert "ann" not in world.state.chat.nicks
    ann.say(type="hello", nick="ann", token=world.token("ann"))
    welcome = ann.read()[0]
    assert welcome["type"] == "welcome" and welcome["verified"] is True
    assert ann.closes() == []
    assert world.moderation.counts["bad_token"] == 1


def test_require_token_refuses_guests() -> None:
    world = World(require_token=True)
    guest = hello(world.state, world.loop, "bob")
    assert [(x["type"], x.get("code")) for x in guest.read()] == [("error", "token_required")]
    guest.say(type="hello", nick="bob", token=world.token("bob"))
    assert kinds(guest.read()) == ["welcome", "joined"]


def test_a_token_holders_nick_is_reserved_from_guests_in_every_form() -> None:
    world = World()
    ann = world.join("ann", token=world.token("ann"))
    ann.client.conn.connection_lost(None)
    for nick in ("ann", "ANN", "ａｎｎ"):  # the fullwidth form folds to ann under NFKC
        guest = hello(world.state, world.loop, nick)
        assert errors(guest) == ["nick_reserved"], nick
    back = hello(world.state, world.loop, "ann", token=world.token("ann"))
    assert kinds(back.read()) == ["welcome", "joined"]


def test_the_token_holder_takes_its_nick_back_from_a_guest() -> None:
    world = World()
    squatter = world.join("ann")
    world.loop.advance(TICK)
    squatter.read()  # its own arrival
    ann = world.join("ann", token=world.token("ann"))
    world.loop.advance(TICK)
    (presence,) = [x for x in squatter.read() if x["type"] == "presence"]
    ((old, new),) = presence["renamed"]
    assert old == "ann" and new.startswith("guest-")
    assert presence["joined"] == ["ann"]
    ann.say(type="nick", nick="anna")
    assert errors(ann) == ["forbidden"]  # the token is for ann


def test_look_alike_nicks_are_refused_or_collide() -> None:
    assert nick_key("ＡＮＮ") == nick_key("ann")
    assert mixes_scripts("\u0430nn")  # Cyrillic а, Latin nn
    assert (
        not mixes_scripts("анна")
        and not mixes_scripts("ann 2")
        and not mixes_scripts("ひらがなカタカナ")
    )
    world = World()
    world.join("ann")
    assert errors(hello(world.state, world.loop, "\u0430nn")) == ["bad_nick"]


# -- moderation --------------------------------------------------------------------


MODERATION = [
    {"type": "kick", "room": "lobby", "nick": "bob", "reason": "spam"},
    {"type": "mute", "room": "lobby", "nick": "bob", "seconds": 60},
    {"type": "ban", "room": "lobby", "nick": "bob", "seconds": 60},
    {"type": "delete", "room": "lobby", "id": 1},
    {"type": "owner", "room": "lobby", "nick": "eve"},
]


@pytest.mark.parametrize("message", MODERATION, ids=[m["type"] for m in MODERATION])
def test_a_guest_or_plain_token_holder_may_not_moderate_and_nothing_happens(
    message: dict[str, Any],
) -> None:
    world = World()
    bob = world.join("bob")
    bob.say(type="msg", room="lobby", text="hello")
    eve, tom = world.join("eve"), world.join("tom", token=world.token("tom"))
    bob.read(), eve.read()
    for someone in (eve, tom):
        someone.say(**message)
        assert errors(someone) == ["forbidden"]
    assert bob.read() == [], "the room hears nothing"
    bob.say(type="msg", room="lobby", text="still here", cid="c")
    assert [x["text"] for x in bob.read() if x["type"] == "msg"] == ["still here"]
    late = world.join("late")
    late.say(type="join", room="lobby")
    (joined,) = late.read()
    assert [x["text"] for x in joined["history"]] == ["hello", "still here"]
    assert world.moderation.counts["forbidden"] == 2
    assert not any(world.moderation.counts[a] for a in ("kick", "mute", "ban", "delete", "owner"))


def test_kick_tells_the_room_why_and_the_kicked_may_rejoin() -> None:
    world = World()
    op, bob, cy = world.operator(), world.join("bob"), world.join("cy")
    world.loop.advance(TICK)
    cy.read()  # the arrivals
    op.say(type="kick", room="lobby", nick="BOB", reason="calm down")
    expected = {"type": "kicked", "room": "lobby", "nick": "BOB", "by": "op", "reason": "calm down"}
    assert expected in op.read() and expected in bob.read()
    assert cy.read() == [expected]
    world.loop.advance(TICK)
    (presence,) = cy.read()
    assert presence["type"] == "presence" and presence["left"] == ["bob"]
    assert world.state.chat.rooms["lobby"].nicks(10) == ["op", "cy"]
    bob.say(type="msg", room="lobby", text="hi")
    assert errors(bob) == ["not_in_room"]
    bob.say(type="join", room="lobby")
    assert kinds(bob.read()) == ["joined"]
    assert world.moderation.counts["kick"] == 1


def test_a_banned_guest_cannot_rejoin_from_its_address_under_another_nick() -> None:
    world = World()
    op, bob = world.operator(), world.join("bob")
    op.say(type="ban", room="lobby", nick="bob", seconds=60)
    assert {
        "type": "banned",
        "room": "lobby",
        "nick": "bob",
        "by": "op",
        "seconds": 60,
    } in bob.read()
    bob.say(type="join", room="lobby")
    assert errors(bob) == ["banned"]
    bob.client.conn.connection_lost(None)
    again = hello(world.state, world.loop, "robert")  # same address (the fake's 127.0.0.1)
    welcome, refused = again.read()
    assert welcome["type"] == "welcome" and refused["code"] == "banned"
    assert "robert" not in world.state.chat.rooms["lobby"].nicks(10)
    # A token holder from the same address is judged by its own nick, not the guest's address.
    ann = hello(world.state, world.loop, "ann", token=world.token("ann"))
    assert kinds(ann.read()) == ["welcome", "joined"]
    world.now += 61
    again.say(type="join", room="lobby")
    assert kinds(again.read()) == ["joined"]


def test_lifting_the_ban_of_a_guest_who_has_left_frees_its_address() -> None:
    world = World()
    op, bob = world.operator(), world.join("bob")
    op.say(type="ban", room="lobby", nick="bob", seconds=60)
    bob.client.conn.connection_lost(None)
    op.say(type="ban", room="lobby", nick="bob", seconds=0)
    again = hello(world.state, world.loop, "robert")  # bob's address
    assert kinds(again.read()) == ["welcome", "joined"]


def test_mute_refusal_is_seen_by_the_muted_sender_only_and_lifts() -> None:
    world = World()
    op, bob, cy = world.operator(), world.join("bob"), world.join("cy")
    op.read(), bob.read()
    op.say(type="mute", room="lobby", nick="bob", seconds=30)
    for client in (op, bob, cy):
        assert kinds(client.read()) == ["muted"]
    bob.say(type="msg", room="lobby", text="let me speak", cid="b1")
    (refusal,) = bob.read()
    assert (refusal["code"], refusal["cid"]) == ("muted", "b1")
    assert op.read() == [] and cy.read() == []
    op.say(type="mute", room="lobby", nick="bob", seconds=0)
    op.read(), bob.read(), cy.read()
    bob.say(type="msg", room="lobby", text="thanks")
    assert [x["text"] for x in cy.read()] == ["thanks"]
    assert world.moderation.counts["mute"] == 2 and world.moderation.counts["muted"] == 1


def test_a_mute_ends_by_itself() -> None:
    world = World()
    op, bob = world.operator(), world.join("bob")
    op.say(type="mute", room="lobby", nick="bob", seconds=5)
    world.now += 5.5
    bob.read()
    bob.say(type="msg", room="lobby", text="back")
    assert [x["text"] for x in op.read() if x["type"] == "msg"] == ["back"]


def test_delete_removes_from_history_and_tells_the_room() -> None:
    world = World()
    op, bob = world.operator(), world.join("bob")
    for text in ("one", "two", "three"):
        bob.say(type="msg", room="lobby", text=text)
    op.read(), bob.read()
    op.say(type="delete", room="lobby", id=2)
    told = {"type": "deleted", "room": "lobby", "id": 2, "by": "op"}
    assert op.read() == [told] and bob.read() == [told]
    late = world.join("late")
    late.say(type="join", room="lobby")
    (joined,) = late.read()
    assert [x["text"] for x in joined["history"]] == ["one", "three"]
    assert joined["last_id"] == 3
    # A resume still counts ids right around the hole.
    resumed = hello(world.state, world.loop, "rex", resume={"lobby": 1})
    assert [x["id"] for x in resumed.read()[1]["history"]] == [3]
    op.say(type="delete", room="lobby", id=2)
    assert errors(op) == ["no_such_message"]


def test_the_creator_of_a_room_owns_it_and_an_operator_grants_ownership() -> None:
    world = World()
    ann = world.join("ann", token=world.token("ann"))
    bob, cy = world.join("bob"), world.join("cy", token=world.token("cy"))
    ann.say(type="join", room="annex")
    bob.say(type="join", room="annex")
    cy.say(type="join", room="annex")
    ann.read(), bob.read(), cy.read()
    ann.say(type="kick", room="annex", nick="bob")
    assert "kicked" in kinds(ann.read())
    ann.say(type="kick", room="lobby", nick="bob")  # not her room
    assert errors(ann) == ["forbidden"]
    cy.say(type="mute", room="annex", nick="bob", seconds=10)
    assert errors(cy) == ["forbidden"]
    op = world.operator()
    op.say(type="owner", room="annex", nick="cy")
    assert op.read() == [
        {"type": "owner", "room": "annex", "nick": "cy", "owner": True, "by": "op"}
    ]
    cy.read()
    cy.say(type="mute", room="annex", nick="bob", seconds=10)
    assert "muted" in kinds(cy.read())


# -- direct messages and typing ------------------------------------------------------


def test_a_direct_message_reaches_only_the_two_and_is_kept_for_token_holders() -> None:
    world = World()
    ann = world.join("ann", token=world.token("ann"))
    bob = world.join("bob", token=world.token("bob"))
    cy = world.join("cy")
    ann.read(), bob.read()
    ann.say(type="msg", to="BOB", text="psst", cid="d1")
    (own,) = ann.read()
    (theirs,) = bob.read()
    assert own["cid"] == "d1" and "cid" not in theirs
    assert (theirs["nick"], theirs["to"], theirs["text"]) == ("ann", "bob", "psst")
    assert cy.read() == []
    late = world.join("late")
    late.say(type="join", room="lobby")
    assert late.read()[0]["history"] == []
    bob.read()
    bob.say(type="direct", **{"with": "ann"})
    (kept,) = bob.read()
    assert kept["with"] == "ann" and [x["text"] for x in kept["messages"]] == ["psst"]
    cy.read()
    cy.say(type="direct", **{"with": "ann"})
    assert cy.read() == [{"type": "direct", "with": "ann", "messages": []}]
    ann.read()
    cy.say(type="msg", to="ann", text="hi")  # a guest's message is delivered, not kept
    assert [x["text"] for x in ann.read()] == ["hi"]
    ann.say(type="msg", to="nobody", text="?", cid="d2")
    assert [(x["code"], x["cid"]) for x in ann.read()] == [("no_such_nick", "d2")]


def test_typing_is_relayed_to_the_room_at_most_once_per_interval() -> None:
    world = World()
    ann, bob = world.join("ann"), world.join("bob")
    ann.read()
    for _ in range(5):
        ann.say(type="typing", room="lobby")
    assert bob.read() == [{"type": "typing", "room": "lobby", "nick": "ann"}]
    assert ann.read() == []
    world.now += 2.9
    ann.say(type="typing", room="lobby")
    assert bob.read() == []
    world.now += 0.2
    ann.say(type="typing", room="lobby")
    assert kinds(bob.read()) == ["typing"]
    ann.say(type="typing", room="dev")
    assert errors(ann) == ["not_in_room"]


def test_a_message_ends_the_typing_notice_so_the_next_one_goes_out_at_once() -> None:
    """Each page drops a typist's notice when their message arrives: their next words
    must be announced again, not swallowed for the rest of the interval."""
    world = World()
    ann, bob = world.join("ann"), world.join("bob")
    ann.read()
    ann.say(type="typing", room="lobby")
    ann.say(type="msg", room="lobby", text="first")
    world.now += 1.0
    ann.say(type="typing", room="lobby")
    assert kinds(bob.read()) == ["typing", "msg", "typing"]


def test_tokens_refuse_a_short_secret() -> None:
    with pytest.raises(ValueError):
        Tokens(b"short")


def test_rawchat_token_prints_a_token_the_server_accepts(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from rawchat.cli import main

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    assert main(["token", "Ann", "--secret-file", str(secret), "--operator", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    assert Tokens(SECRET).verify(token, "ann").value == "operator"
    assert main(["token", "bob", "--secret-file", str(secret)]) == 0
    assert Tokens(SECRET).verify(capsys.readouterr().out.strip(), "bob").value == "user"
    with pytest.raises(SystemExit):
        main(["token", "bob", "--secret-file", str(tmp_path / "missing")])


def test_the_server_refuses_to_start_with_an_unusable_token_secret(tmp_path: Any) -> None:
    from rawchat.cli import config_from_args

    short = tmp_path / "short"
    short.write_bytes(b"too short")
    for path in (short, tmp_path / "missing"):
        with pytest.raises(SystemExit):
            config_from_args(["--token-secret-file", str(path)])
    with pytest.raises(SystemExit):
        config_from_args(["--require-token"])
    good = tmp_path / "good"
    good.write_bytes(SECRET)
    config = config_from_args(["--token-secret-file", str(good), "--require-token"])
    assert (config.token_secret_file, config.require_token) == (good, True)


field = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**9),
    st.floats(allow_nan=False),
    st.sampled_from(["lobby", "dev", "op", "bob", "", " ", "\u0430nn", "x" * 300, "\ud800"]),
    st.lists(st.integers(0, 3), max_size=3),
)
moderation_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["kick", "mute", "ban", "delete", "owner", "typing", "direct", "msg"]
        )
    },
    optional={
        name: field
        for name in ("room", "nick", "reason", "seconds", "id", "owner", "with", "to", "text")
    },
)


@settings(max_examples=150, deadline=None)
@given(st.lists(moderation_like, min_size=1, max_size=8))
def test_any_moderation_message_from_an_operator_is_handled_or_refused(
    messages: list[dict[str, Any]],
) -> None:
    world = World()
    op, bob = world.operator(), world.join("bob")
    bob.say(type="msg", room="lobby", text="x")
    for message in messages:
        op.say(**message)
        for reply in op.read():
            if reply["type"] == "error":
                assert reply["code"] in ERROR_CODES
    assert op.closes() == [] or op.closes() == [4000]
    assert bob.closes() == []
