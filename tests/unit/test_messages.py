"""rawchat.v1 schema: what a client sends is parsed or rejected with the right error code,
and what the server encodes parses back to the fields it was given."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawchat.identity import nick_key
from rawchat.messages import (
    DEFAULT_ROOM,
    ERROR_CODES,
    MAX_CID,
    MAX_NICK,
    MAX_ROOM,
    PROTOCOL,
    CloseCode,
    Hello,
    HistoryRequest,
    Join,
    Leave,
    Msg,
    Nick,
    ProtocolError,
    max_text_for,
    parse_client,
    validate_nick,
    validate_room,
)
from rawchat.replies import (
    MAX_PRESENCE_LISTED,
    encode_error,
    encode_history,
    encode_joined,
    encode_left,
    encode_msg,
    encode_presence,
    encode_welcome,
)

MAX_TEXT = 100
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def parse(message: Any) -> Any:
    text = message if isinstance(message, str) else json.dumps(message)
    return parse_client(text, max_text=MAX_TEXT)


def error_of(message: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(message)
    return info.value


# -- client messages that parse -------------------------------------------------------------


def test_hello_full() -> None:
    hello = parse(
        {
            "type": "hello",
            "nick": "ann",
            "rooms": ["lobby", "dev"],
            "resume": {"lobby": 41},
            "epoch": "e1",
        }
    )
    assert hello == Hello(nick="ann", rooms=("lobby", "dev"), resume={"lobby": 41}, epoch="e1")


def test_hello_defaults() -> None:
    assert parse({"type": "hello", "nick": "ann"}) == Hello(
        nick="ann", rooms=(DEFAULT_ROOM,), resume={}, epoch=None
    )


def test_hello_null_resume_and_epoch_mean_absent() -> None:
    hello = parse({"type": "hello", "nick": "ann", "resume": None, "epoch": None})
    assert hello.resume == {} and hello.epoch is None


def test_hello_empty_rooms_joins_nothing() -> None:
    assert parse({"type": "hello", "nick": "ann", "rooms": []}).rooms == ()


def test_hello_rooms_deduplicated_in_order() -> None:
    hello = parse({"type": "hello", "nick": "ann", "rooms": ["dev", "lobby", "dev", "x"]})
    assert hello.rooms == ("dev", "lobby", "x")


def test_hello_resume_keeps_only_listed_rooms() -> None:
    hello = parse(
        {"type": "hello", "nick": "ann", "rooms": ["lobby"], "resume": {"lobby": 0, "dev": 7}}
    )
    assert hello.resume == {"lobby": 0}


def test_hello_nick_is_trimmed() -> None:
    assert parse({"type": "hello", "nick": "  ann\t"}).nick == "ann"


def test_join_leave_nick() -> None:
    assert parse({"type": "join", "room": "dev"}) == Join("dev")
    assert parse({"type": "leave", "room": "dev"}) == Leave("dev")
    assert parse({"type": "nick", "nick": " anna "}) == Nick("anna")


def test_msg_with_and_without_cid() -> None:
    assert parse({"type": "msg", "room": "lobby", "text": "hi", "cid": "c1"}) == Msg(
        "lobby", "hi", "c1"
    )
    assert parse({"type": "msg", "room": "lobby", "text": "hi"}) == Msg("lobby", "hi", None)
    assert parse({"type": "msg", "room": "lobby", "text": "hi", "cid": None}).cid is None


def test_msg_text_is_kept_verbatim() -> None:
    text = "  two\nlines\u200b \U0001f600 "
    assert parse({"type": "msg", "room": "lobby", "text": text}).text == text


def test_msg_text_at_the_limit() -> None:
    assert parse({"type": "msg", "room": "a", "text": "x" * MAX_TEXT}).text == "x" * MAX_TEXT


def test_unknown_fields_are_ignored() -> None:
    assert parse({"type": "join", "room": "dev", "future": [1, {"x": None}]}) == Join("dev")


# -- errors a client observes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "{",
        '{"type":"join","room":"dev"} trailing',
        "[]",
        '"join"',
        "42",
        "null",
        "true",
        "NaN",
        '{"type":"msg","room":"a","text":"x","n":Infinity}',
        '{"type":"msg","room":"a","text":"x","n":-Infinity}',
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "1" * 10_000,
        '{"type":"join","room":"dev","n":' + "9" * 10_000 + "}",
    ],
)
def test_bad_json(text: str) -> None:
    error = error_of(text)
    assert error.code == "bad_json"
    assert error.cid is None


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"type": "shout"},
        {"type": "Hello", "nick": "ann"},
        {"type": None},
        {"type": 1},
        {"type": ["hello"]},
        {"type": "hello"},
        {"type": "hello", "nick": 5},
        {"type": "hello", "nick": None},
        {"type": "hello", "nick": "ann", "rooms": "lobby"},
        {"type": "hello", "nick": "ann", "rooms": [1]},
        {"type": "hello", "nick": "ann", "rooms": ["lobby", None]},
        {"type": "hello", "nick": "ann", "rooms": {"lobby": 1}},
        {"type": "hello", "nick": "ann", "resume": [["lobby", 1]]},
        {"type": "hello", "nick": "ann", "resume": {"lobby": -1}},
        {"type": "hello", "nick": "ann", "resume": {"lobby": 1.0}},
        {"type": "hello", "nick": "ann", "resume": {"lobby": "41"}},
        {"type": "hello", "nick": "ann", "resume": {"lobby": True}},
        {"type": "hello", "nick": "ann", "resume": {"lobby": None}},
        {"type": "hello", "nick": "ann", "epoch": 3},
        {"type": "join"},
        {"type": "join", "room": 7},
        {"type": "leave", "room": None},
        {"type": "nick"},
        {"type": "nick", "nick": ["anna"]},
        {"type": "msg", "room": "lobby"},
        {"type": "msg", "text": "hi"},
        {"type": "msg", "room": "lobby", "text": 5},
        {"type": "msg", "room": "lobby", "text": "hi", "cid": 1},
        {"type": "msg", "room": "lobby", "text": "hi", "cid": True},
        {"type": "msg", "room": "lobby", "text": "hi", "cid": "c" * (MAX_CID + 1)},
    ],
)
def test_bad_message(message: dict[str, Any]) -> None:
    assert error_of(message).code == "bad_message"


def test_hello_resume_is_validated_even_for_unlisted_rooms() -> None:
    error = error_of({"type": "hello", "nick": "ann", "rooms": [], "resume": {"dev": -5}})
    assert error.code == "bad_message"


@pytest.mark.parametrize(
    "nick",
    [
        "",
        "   ",
        "\t\n",
        "x" * (MAX_NICK + 1),
        "an\nn",
        "an\x00n",
        "an\x7fn",
        "ann\u200b",  # zero width space (Cf)
        "\u202eann",  # right-to-left override (Cf)
        "an\u2028n",  # line separator (Zl)
        "an\u2029n",  # paragraph separator (Zp)
        "an\ud800n",  # lone surrogate (Cs)
    ],
)
def test_bad_nick(nick: str) -> None:
    assert error_of({"type": "hello", "nick": nick}).code == "bad_nick"
    assert error_of({"type": "nick", "nick": nick}).code == "bad_nick"


@pytest.mark.parametrize(
    "nick", ["a", "x" * MAX_NICK, "Ann B", "Zoë", "李雷", "\U0001f600", "a.b-c_d"]
)
def test_good_nick(nick: str) -> None:
    assert validate_nick(nick) == nick
    assert validate_nick(f"  {nick} \n") == nick


def test_nick_length_is_counted_after_trimming() -> None:
    assert validate_nick(" " + "x" * MAX_NICK + " ") == "x" * MAX_NICK


@pytest.mark.parametrize("value", [None, 1, True, ["ann"], {"nick": "ann"}])
def test_validate_nick_rejects_non_strings(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_nick(value)
    assert info.value.code == "bad_nick"


def test_nick_key_is_case_insensitive() -> None:
    assert nick_key("Ann") == nick_key("ANN") == nick_key("ann")
    assert nick_key("Straße") == nick_key("STRASSE")
    assert nick_key("ann") != nick_key("anna")


def test_a_folded_nick_is_its_own_key() -> None:
    nick = "".join(["guest-", "7"])
    assert nick_key(nick) is nick


@pytest.mark.parametrize(
    "room",
    ["", ".hidden", "..", "a b", "a/b", "a:b", "lobby\n", "é", "x" * (MAX_ROOM + 1), "ｌobby"],
)
def test_bad_room(room: str) -> None:
    for message in (
        {"type": "join", "room": room},
        {"type": "leave", "room": room},
        {"type": "hello", "nick": "ann", "rooms": ["lobby", room]},
    ):
        assert error_of(message).code == "bad_room"


@pytest.mark.parametrize("room", ["a", "lobby", "Dev", "a.b", "x" * MAX_ROOM, "-_.", "0", "a."])
def test_good_room(room: str) -> None:
    assert validate_room(room) == room
    assert parse({"type": "join", "room": room}) == Join(room)


def test_rooms_are_case_sensitive() -> None:
    assert validate_room("Lobby") != validate_room("lobby")


@pytest.mark.parametrize("value", [None, 1, ["lobby"]])
def test_validate_room_rejects_non_strings(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_room(value)
    assert info.value.code == "bad_room"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"room": "lobby", "text": ""}, "empty_text"),
        ({"room": "lobby", "text": " \n\t "}, "empty_text"),
        ({"room": "lobby", "text": "x" * (MAX_TEXT + 1)}, "text_too_long"),
        ({"room": ".x", "text": "hi"}, "bad_room"),
        ({"room": 5, "text": "hi"}, "bad_message"),
        ({"room": "lobby"}, "bad_message"),
        ({"room": "lobby", "text": "a\ud800b"}, "bad_message"),
    ],
)
def test_msg_errors_carry_the_cid(fields: dict[str, Any], code: str) -> None:
    error = error_of({"type": "msg", "cid": "c1", **fields})
    assert (error.code, error.cid) == (code, "c1")
    without_cid = error_of({"type": "msg", **fields})
    assert (without_cid.code, without_cid.cid) == (code, None)


def test_unreadable_cid_is_not_echoed() -> None:
    error = error_of({"type": "msg", "room": "lobby", "text": "", "cid": "c" * (MAX_CID + 1)})
    assert (error.code, error.cid) == ("bad_message", None)
    # A lone surrogate could not be sent back as UTF-8.
    error = error_of('{"type":"msg","room":"lobby","text":"hi","cid":"\\udc00"}')
    assert (error.code, error.cid) == ("bad_message", None)


def test_cid_at_the_limit() -> None:
    cid = "c" * MAX_CID
    assert parse({"type": "msg", "room": "lobby", "text": "hi", "cid": cid}).cid == cid


def test_protocol_error_becomes_an_error_message() -> None:
    error = error_of({"type": "msg", "room": "lobby", "text": "", "cid": "c9"})
    sent = json.loads(encode_error(error.code, error.message, error.cid))
    assert sent == {"type": "error", "code": "empty_text", "message": error.message, "cid": "c9"}
    assert error.code in ERROR_CODES
    assert str(error).startswith("empty_text: ")


# -- server messages ------------------------------------------------------------------------


def test_encode_welcome() -> None:
    text = encode_welcome(
        "s1", "ann", "ep", max_text=4000, max_rooms=16, history=100, max_bytes=16512
    )
    assert json.loads(text) == {
        "type": "welcome",
        "session": "s1",
        "nick": "ann",
        "epoch": "ep",
        "limits": {
            "max_text": 4000,
            "max_bytes": 16512,
            "max_rooms": 16,
            "max_nick": MAX_NICK,
            "history": 100,
        },
    }
    assert " " not in text


def test_encode_msg() -> None:
    text = encode_msg("lobby", 42, 1764000000.123456, "ann", "hi")
    assert text == (
        '{"type":"msg","room":"lobby","id":42,"ts":1764000000.123,"nick":"ann","text":"hi"}'
    )
    assert json.loads(encode_msg("lobby", 42, 1.0, "ann", "hi", "c1"))["cid"] == "c1"


def test_encode_msg_keeps_unicode_unescaped() -> None:
    assert "Zoë 😀" in encode_msg("lobby", 1, 0.0, "Zoë", "Zoë 😀")


def test_encode_msg_escapes_what_json_requires() -> None:
    text = 'quote " backslash \\ newline \n nul \x00 </script>'
    assert json.loads(encode_msg("lobby", 1, 0.0, "ann", text))["text"] == text


def test_encode_joined_splices_history() -> None:
    history = [encode_msg("lobby", i, 1000.0 + i, "ann", f"m{i}") for i in (40, 41)]
    text = encode_joined("lobby", iter(["ann", "bob"]), history, 41, False, more=True, count=7)
    assert json.loads(text) == {
        "type": "joined",
        "room": "lobby",
        "members": ["ann", "bob"],
        "count": 7,
        "history": [json.loads(h) for h in history],
        "more": True,
        "last_id": 41,
        "truncated": False,
    }
    assert history[0] + "," + history[1] in text


def test_encode_joined_empty() -> None:
    assert json.loads(encode_joined("dev", [], [], 0, True)) == {
        "type": "joined",
        "room": "dev",
        "members": [],
        "count": 0,
        "history": [],
        "more": False,
        "last_id": 0,
        "truncated": True,
    }


def test_encode_left() -> None:
    assert json.loads(encode_left("dev")) == {"type": "left", "room": "dev"}


def test_encode_presence_of_one_change_keeps_the_old_fields() -> None:
    assert json.loads(encode_presence("lobby", 3, joined=["bob"])) == {
        "type": "presence",
        "room": "lobby",
        "count": 3,
        "joined": ["bob"],
        "left": [],
        "renamed": [],
        "omitted": 0,
        "event": "join",
        "nick": "bob",
    }
    renamed = json.loads(encode_presence("lobby", 3, renamed=[("bob", "bobby")]))
    assert (renamed["event"], renamed["nick"], renamed["old"]) == ("nick", "bobby", "bob")
    left = json.loads(encode_presence("lobby", 2, left=["bob"]))
    assert (left["event"], left["nick"], "old" in left) == ("leave", "bob", False)


def test_encode_presence_of_many_changes_caps_its_lists() -> None:
    joined = [f"j{i}" for i in range(MAX_PRESENCE_LISTED)]
    frame = json.loads(encode_presence("lobby", 500, joined=joined, left=["x", "y"]))
    assert frame["joined"] == joined and frame["left"] == [] and frame["omitted"] == 2
    assert frame["count"] == 500 and "event" not in frame
    few = json.loads(encode_presence("lobby", 2, joined=["a"], left=["b"], renamed=[("c", "d")]))
    assert (few["joined"], few["left"], few["renamed"]) == (["a"], ["b"], [["c", "d"]])
    assert few["omitted"] == 0 and "event" not in few


def test_encode_history_splices_its_page() -> None:
    page = [encode_msg("dev", i, 1.0, "ann", f"m{i}") for i in (3, 9)]
    assert json.loads(encode_history("dev", page, True)) == {
        "type": "history",
        "room": "dev",
        "messages": [json.loads(text) for text in page],
        "more": True,
    }


def test_history_requests_are_parsed_and_checked() -> None:
    assert parse({"type": "history", "room": "dev"}) == HistoryRequest("dev", None, 50)
    assert parse({"type": "history", "room": "dev", "before": 7, "limit": 100}) == (
        HistoryRequest("dev", 7, 100)
    )
    for bad in ({"before": -1}, {"before": True}, {"limit": 0}, {"limit": 101}, {"limit": "5"}):
        assert error_of({"type": "history", "room": "dev", **bad}).code == "bad_message"
    assert error_of({"type": "history", "room": ".x"}).code == "bad_room"


def test_max_text_always_fits_max_bytes() -> None:
    for max_message in (600, 1000, 64 * 1024, 1 << 20):
        max_text = max_text_for(max_message)
        longest = {"type": "msg", "room": "r" * 64, "text": "\U0001f600" * max_text}
        widest = json.dumps({**longest, "cid": "\x01" * 64}, ensure_ascii=False)
        assert len(widest.encode()) <= max_message


def test_encode_error_without_cid() -> None:
    assert json.loads(encode_error("nick_taken", "taken")) == {
        "type": "error",
        "code": "nick_taken",
        "message": "taken",
    }


def test_encoders_are_deterministic() -> None:
    assert encode_msg("a", 1, 2.5, "n", "t") == encode_msg("a", 1, 2.5, "n", "t")
    assert encode_error("bad_json", "m") == encode_error("bad_json", "m")


# -- constants and documentation ------------------------------------------------------------


def test_close_codes() -> None:
    assert {code.name: code.value for code in CloseCode} == {
        "TOO_MANY_ERRORS": 4000,
        "HELLO_TIMEOUT": 4001,
        "RATE_LIMITED": 4002,
    }
    assert all(4000 <= code <= 4999 for code in CloseCode)


def test_docs_cover_every_error_and_close_code() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    assert PROTOCOL in docs
    for code in ERROR_CODES:
        assert f"`{code}`" in docs, code
    for close in CloseCode:
        assert str(close.value) in docs and close.name in docs, close
    for standard in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011):
        assert re.search(rf"\b{standard}\b", docs), standard


def test_docs_json_examples_parse() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    examples = re.findall(r"^(\{.*\})$", docs, flags=re.MULTILINE)
    assert len(examples) > 10
    for example in examples:
        json.loads(example)


# -- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)

# Objects that look like client messages, so validation beyond the type switch is exercised.
field_values = st.one_of(
    json_values,
    st.sampled_from(["lobby", "dev", ".x", "", " ann ", "a\u200b", "x" * 70]),
    st.lists(st.sampled_from(["lobby", "dev", "lobby", 3, ".x"])),
    st.dictionaries(st.sampled_from(["lobby", "dev"]), st.integers(-2, 50) | st.booleans()),
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "join", "leave", "nick", "msg", "other"])},
    optional={
        name: field_values for name in ("nick", "rooms", "resume", "epoch", "room", "text", "cid")
    },
)


def parse_or_protocol_error(text: str) -> None:
    try:
        parse_client(text, max_text=MAX_TEXT)
    except ProtocolError as error:
        assert error.code in ERROR_CODES
        assert error.cid is None or isinstance(error.cid, str)


@given(json_values)
def test_any_json_value_parses_or_raises_protocol_error(value: Any) -> None:
    parse_or_protocol_error(json.dumps(value))


@given(message_like)
def test_message_like_objects_parse_or_raise_protocol_error(message: dict[str, Any]) -> None:
    parse_or_protocol_error(json.dumps(message))


@given(st.text())
def test_any_text_parses_or_raises_protocol_error(text: str) -> None:
    parse_or_protocol_error(text)


@given(message_like)
def test_parsed_messages_hold_valid_fields(message: dict[str, Any]) -> None:
    try:
        parsed = parse_client(json.dumps(message), max_text=MAX_TEXT)
    except ProtocolError:
        return
    if isinstance(parsed, (Hello, Nick)):
        assert validate_nick(parsed.nick) == parsed.nick
    if isinstance(parsed, Hello):
        assert len(set(parsed.rooms)) == len(parsed.rooms)
        assert set(parsed.resume) <= set(parsed.rooms)
        assert all(type(v) is int and v >= 0 for v in parsed.resume.values())
    if isinstance(parsed, (Join, Leave, Msg)):
        assert validate_room(parsed.room) == parsed.room
    if isinstance(parsed, Msg):
        assert 0 < len(parsed.text.strip()) and len(parsed.text) <= MAX_TEXT


# Strings the server can put in messages: anything encodable as UTF-8 (no lone surrogates).
utf8_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]))
rooms = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", fullmatch=True)
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(rooms, st.integers(min_value=1), timestamps, utf8_text, utf8_text, st.none() | utf8_text)
def test_encode_msg_round_trips(
    room: str, id: int, ts: float, nick: str, text: str, cid: str | None
) -> None:
    encoded = encode_msg(room, id, ts, nick, text, cid)
    encoded.encode("utf-8")
    decoded = json.loads(encoded)
    assert decoded.pop("cid", None) == cid
    assert decoded == {
        "type": "msg",
        "room": room,
        "id": id,
        "ts": round(ts, 3),
        "nick": nick,
        "text": text,
    }


@given(
    rooms,
    st.lists(utf8_text),
    st.lists(st.tuples(st.integers(min_value=1), timestamps, utf8_text, utf8_text)),
    st.integers(min_value=0),
    st.booleans(),
)
def test_encode_joined_round_trips(
    room: str,
    members: list[str],
    history: list[tuple[int, float, str, str]],
    last_id: int,
    truncated: bool,
) -> None:
    encoded_history = [encode_msg(room, *entry) for entry in history]
    decoded = json.loads(encode_joined(room, members, encoded_history, last_id, truncated))
    assert decoded == {
        "type": "joined",
        "room": room,
        "members": members,
        "count": len(members),
        "history": [json.loads(h) for h in encoded_history],
        "more": False,
        "last_id": last_id,
        "truncated": truncated,
    }


@given(utf8_text, utf8_text, utf8_text, st.integers(), st.integers(), st.integers())
def test_encode_welcome_round_trips(
    session: str, nick: str, epoch: str, max_text: int, max_rooms: int, history: int
) -> None:
    decoded = json.loads(
        encode_welcome(
            session,
            nick,
            epoch,
            max_text=max_text,
            max_rooms=max_rooms,
            history=history,
            max_bytes=max_text * 4,
        )
    )
    assert decoded == {
        "type": "welcome",
        "session": session,
        "nick": nick,
        "epoch": epoch,
        "limits": {
            "max_text": max_text,
            "max_bytes": max_text * 4,
            "max_rooms": max_rooms,
            "max_nick": MAX_NICK,
            "history": history,
        },
    }


@given(
    rooms,
    st.integers(0, 10**6),
    st.lists(utf8_text, max_size=5),
    st.lists(utf8_text, max_size=5),
    st.lists(st.tuples(utf8_text, utf8_text), max_size=5),
)
def test_encode_presence_round_trips(
    room: str, count: int, joined: list[str], left: list[str], renamed: list[tuple[str, str]]
) -> None:
    decoded = json.loads(encode_presence(room, count, joined, left, renamed))
    for name in ("event", "nick", "old"):
        decoded.pop(name, None)
    assert decoded == {
        "type": "presence",
        "room": room,
        "count": count,
        "joined": joined,
        "left": left,
        "renamed": [list(pair) for pair in renamed],
        "omitted": 0,
    }


@given(rooms, st.sampled_from(ERROR_CODES), utf8_text, st.none() | utf8_text)
def test_encode_left_and_error_round_trip(
    room: str, code: str, message: str, cid: str | None
) -> None:
    assert json.loads(encode_left(room)) == {"type": "left", "room": room}
    decoded = json.loads(encode_error(code, message, cid))
    assert decoded.pop("cid", None) == cid
    assert decoded == {"type": "error", "code": code, "message": message}


@given(rooms, st.integers(0, 10**6), timestamps, utf8_text, utf8_text, st.none() | utf8_text)
def test_msg_sent_by_a_client_survives_the_round_trip(
    room: str, id: int, ts: float, nick: str, text: str, cid: str | None
) -> None:
    """A msg the server accepted can be encoded and is read back identically by clients."""
    request = {"type": "msg", "room": room, "text": text, "cid": cid}
    try:
        msg = parse_client(json.dumps(request), max_text=10_000)
    except ProtocolError:
        return
    assert isinstance(msg, Msg)
    decoded = json.loads(encode_msg(msg.room, id, ts, nick, msg.text, msg.cid))
    assert (decoded["room"], decoded["text"], decoded.get("cid")) == (room, text, cid)
