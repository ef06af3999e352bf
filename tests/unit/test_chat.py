"""rawchat.v1 sessions, rooms, history and resume, with no sockets."""

from __future__ import annotations

import json
from typing import Any

from wsproto.events import CloseConnection, TextMessage

from rawchat import messages as m
from rawchat import registry
from rawchat.presence import TICK
from tests.unit.fakes import Client, FakeLoop, make_state


class V1:
    """A rawchat.v1 client over the fake transport that speaks and reads JSON."""

    def __init__(self, state: Any, loop: FakeLoop) -> None:
        self.client = Client(state, loop, subprotocols=[m.PROTOCOL])
        self.seen = 0

    def say(self, **message: Any) -> None:
        self.client.send(TextMessage(json.dumps(message)))

    def read(self) -> list[dict[str, Any]]:
        """Every JSON message the server sent since the last read."""
        self.client.receive()
        texts = [e.data for e in self.client.events if isinstance(e, TextMessage)]
        new, self.seen = texts[self.seen :], len(texts)
        return [json.loads(t) for t in new]

    def closes(self) -> list[int]:
        return [e.code for e in self.client.events if isinstance(e, CloseConnection)]


def hello(state: Any, loop: FakeLoop, nick: str, **extra: Any) -> V1:
    client = V1(state, loop)
    client.say(type="hello", nick=nick, **extra)
    return client


def test_hello_gets_welcome_then_joined_lobby_with_members() -> None:
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    welcome, joined = ann.read()
    assert welcome["type"] == "welcome" and welcome["nick"] == "ann"
    assert welcome["limits"]["max_rooms"] == 16
    assert joined == {
        "type": "joined",
        "room": "lobby",
        "members": ["ann"],
        "count": 1,
        "history": [],
        "more": False,
        "last_id": 0,
        "truncated": False,
    }


def test_messages_reach_the_room_and_the_sender_gets_its_cid_back() -> None:
    state, loop = make_state()
    ann, bob = hello(state, loop, "ann"), hello(state, loop, "bob")
    ann.read(), bob.read()
    ann.say(type="msg", room="lobby", text="hi bob", cid="c1")
    (own,) = [x for x in ann.read() if x["type"] == "msg"]
    (theirs,) = [x for x in bob.read() if x["type"] == "msg"]
    assert own["cid"] == "c1" and "cid" not in theirs
    assert own["id"] == theirs["id"] == 1
    assert own["ts"] == theirs["ts"]
    assert theirs["nick"] == "ann" and theirs["text"] == "hi bob"


def test_presence_on_join_leave_and_rename() -> None:
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    loop.advance(TICK)
    ann.read()
    bob = hello(state, loop, "bob")
    bob.read()
    loop.advance(TICK)
    bob.say(type="nick", nick="bobby")
    loop.advance(TICK)
    bob.say(type="leave", room="lobby")
    assert bob.read()[-1] == {"type": "left", "room": "lobby"}
    loop.advance(TICK)
    events = [x for x in ann.read() if x["type"] == "presence"]
    assert [(x["event"], x["nick"], x.get("old"), x["count"]) for x in events] == [
        ("join", "bob", None, 2),
        ("nick", "bobby", "bob", 2),
        ("leave", "bobby", None, 1),
    ]
    assert [(x["joined"], x["renamed"], x["left"]) for x in events] == [
        (["bob"], [], []),
        ([], [["bob", "bobby"]], []),
        ([], [], ["bobby"]),
    ]


def test_nicks_are_unique_case_insensitively_and_a_taken_nick_is_not_a_disconnect() -> None:
    state, loop = make_state()
    hello(state, loop, "Ann").read()
    other = hello(state, loop, "aNN")
    (error,) = other.read()
    assert error["type"] == "error" and error["code"] == "nick_taken"
    other.say(type="hello", nick="ann2")
    assert [x["type"] for x in other.read()] == ["welcome", "joined"]
    assert other.closes() == []


def test_a_disconnect_frees_the_nick_and_tells_the_room() -> None:
    state, loop = make_state()
    ann, bob = hello(state, loop, "ann"), hello(state, loop, "bob")
    ann.read()
    loop.advance(TICK)
    ann.read()
    bob.client.transport.close()
    loop.run_ready()
    loop.advance(TICK)
    assert ann.read()[-1]["left"] == ["bob"]
    again = hello(state, loop, "bob")
    assert again.read()[0]["type"] == "welcome"


def test_rooms_are_separate() -> None:
    state, loop = make_state()
    ann, bob = hello(state, loop, "ann"), hello(state, loop, "bob")
    ann.say(type="join", room="dev")
    ann.say(type="msg", room="dev", text="dev talk")
    ann.read()
    assert [x for x in bob.read() if x["type"] == "msg"] == []
    bob.say(type="msg", room="dev", text="sneaky", cid="x")
    (error,) = [x for x in bob.read() if x["type"] == "error"]
    assert error["code"] == "not_in_room" and error["cid"] == "x"


def test_max_rooms_is_enforced() -> None:
    state, loop = make_state(max_rooms=2)
    ann = hello(state, loop, "ann")
    ann.say(type="join", room="one")
    ann.say(type="join", room="two")
    replies = ann.read()
    assert replies[-1]["code"] == "too_many_rooms"


def test_history_on_join_holds_the_last_messages() -> None:
    state, loop = make_state(history=3)
    ann = hello(state, loop, "ann")
    for i in range(5):
        ann.say(type="msg", room="lobby", text=f"m{i}")
    late = hello(state, loop, "late")
    joined = late.read()[1]
    assert [h["text"] for h in joined["history"]] == ["m2", "m3", "m4"]
    assert joined["last_id"] == 5 and joined["truncated"] is True and joined["more"] is False


def test_resume_gives_exactly_the_missed_messages() -> None:
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    for i in range(6):
        ann.say(type="msg", room="lobby", text=f"m{i}")
    epoch = ann.read()[0]["epoch"]
    back = hello(state, loop, "bob", resume={"lobby": 4}, epoch=epoch)
    joined = back.read()[1]
    assert [h["id"] for h in joined["history"]] == [5, 6]
    assert joined["truncated"] is False


def test_resume_from_another_server_run_is_truncated() -> None:
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    ann.say(type="msg", room="lobby", text="new run")
    back = hello(state, loop, "bob", resume={"lobby": 1}, epoch="another-run")
    joined = back.read()[1]
    assert joined["truncated"] is True
    assert [h["text"] for h in joined["history"]] == ["new run"]


def test_plain_and_v1_clients_share_the_lobby() -> None:
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    loop.advance(TICK)
    ann.read()
    plain = Client(state, loop)
    loop.advance(TICK)
    plain.send(TextMessage("hi from the tutorial"))
    ann.say(type="msg", room="lobby", text="hi plain")
    got = [x for x in ann.read() if x["type"] in ("msg", "presence")]
    assert got[0]["event"] == "join" and got[0]["nick"].startswith("guest-")
    assert got[1]["nick"] == got[0]["nick"] and got[1]["text"] == "hi from the tutorial"
    plain.receive()
    assert [e.data for e in plain.events if isinstance(e, TextMessage)] == [
        "hi from the tutorial",
        "hi plain",
    ]


def test_what_plain_clients_said_alone_reaches_a_v1_client_that_joins_later() -> None:
    state, loop = make_state(history=3)
    plain = Client(state, loop)
    for i in range(4):
        plain.send(TextMessage(f'p{i} "quoted" \u00e9'))
    ann = hello(state, loop, "ann")
    ann.say(type="msg", room="lobby", text="then ann")
    bob = hello(state, loop, "bob")
    history = bob.read()[1]["history"]
    assert [(h["id"], h["text"]) for h in history] == [
        (3, 'p2 "quoted" \u00e9'),
        (4, 'p3 "quoted" \u00e9'),
        (5, "then ann"),
    ]
    assert history[0]["nick"] == history[1]["nick"] and history[0]["nick"].startswith("guest-")
    assert history[2]["nick"] == "ann"
    assert all(h["type"] == "msg" and h["room"] == "lobby" for h in history)


def test_garbage_gets_errors_then_a_rawchat_close_code() -> None:
    state, loop = make_state()
    bad = hello(state, loop, "bad")
    bad.read()
    bad.client.send(TextMessage("not json"))
    assert bad.read()[0]["code"] == "bad_json"
    assert bad.closes() == []
    for _ in range(9):
        bad.client.send(TextMessage("{"))
    bad.read()
    assert bad.closes() == [m.CloseCode.TOO_MANY_ERRORS]


def test_a_v1_client_that_never_says_hello_is_closed() -> None:
    state, loop = make_state(handshake_timeout=5.0)
    mute = V1(state, loop)
    loop.advance(5.1)
    mute.read()
    assert mute.closes() == [m.CloseCode.HELLO_TIMEOUT]


def test_ids_keep_growing_after_an_idle_room_is_forgotten(monkeypatch: Any) -> None:
    """A forgotten room made again must not hand out ids its readers already saw."""
    monkeypatch.setattr(registry, "MAX_IDLE_ROOMS", 1)
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    ann.say(type="join", room="old")
    for i in range(3):
        ann.say(type="msg", room="old", text=f"before {i}")
    seen = [x["id"] for x in ann.read() if x["type"] == "msg"]
    assert seen == [1, 2, 3]
    # "old" and then "other" go idle: only one idle room is kept, so "old" is forgotten.
    ann.say(type="leave", room="old")
    ann.say(type="join", room="other")
    ann.say(type="leave", room="other")
    ann.read()
    assert "old" not in state.chat.rooms
    ann.say(type="join", room="old")
    ann.say(type="msg", room="old", text="after")
    (after,) = [x for x in ann.read() if x["type"] == "msg"]
    assert after["text"] == "after" and after["id"] > max(seen)


def test_joins_within_a_tick_cost_each_member_one_presence_frame() -> None:
    """n joins one after another were n frames to each earlier member (quadratic)."""
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    loop.advance(TICK)
    ann.read()
    others = [hello(state, loop, f"p{i}") for i in range(20)]
    loop.advance(TICK)
    (frame,) = [x for x in ann.read() if x["type"] == "presence"]
    assert frame["joined"] == [f"p{i}" for i in range(20)] and frame["count"] == 21
    assert all(len([x for x in o.read() if x["type"] == "presence"]) <= 1 for o in others)


def test_a_mass_disconnect_reaches_each_member_as_one_presence_frame() -> None:
    """A proxy restart drops everyone at once: n leaves must not be n frames to each."""
    state, loop = make_state()
    ann = hello(state, loop, "ann")
    others = [hello(state, loop, f"p{i}") for i in range(20)]
    loop.advance(TICK)
    ann.read()
    for other in others:
        other.client.transport.close()
    loop.run_ready()
    loop.advance(TICK)
    (frame,) = [x for x in ann.read() if x["type"] == "presence"]
    assert frame["left"] == [f"p{i}" for i in range(20)] and frame["count"] == 1
