"""The rawchat.v1 protocol: parse and validate client messages, encode server messages.

Every WebSocket text message is one JSON object with a ``"type"`` field. Client messages
become frozen dataclasses through `parse_client`, which raises `ProtocolError` for anything
a client can get wrong; the server turns that into an ``error`` message and keeps the
connection. Server messages are built by the ``encode_*`` functions as compact JSON text,
encoded once per message and sent unchanged to every recipient.

No I/O here. ``docs/protocol.md`` describes the protocol for client authors.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

PROTOCOL = "rawchat.v1"
DEFAULT_ROOM = "lobby"
MAX_NICK = 32
MAX_ROOM = 64
MAX_CID = 64
#: Bytes of a ``msg`` request besides its text: the envelope with the longest room and
#: cid, JSON-escaped (see `max_text_for`).
ENVELOPE = 512
#: Messages a ``history`` request asks for when it names no limit, and the most it may.
HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 100
#: Changes a presence frame lists; the rest are counted in its "omitted".
MAX_PRESENCE_LISTED = 100

#: Every ``code`` an ``error`` message can carry (see docs/protocol.md for when).
ERROR_CODES = (
    "bad_json",
    "bad_message",
    "hello_required",
    "already_hello",
    "bad_nick",
    "nick_taken",
    "bad_room",
    "too_many_rooms",
    "not_in_room",
    "text_too_long",
    "empty_text",
    "rate_limited",
)


class CloseCode(IntEnum):
    """rawchat's application close codes (4000-4999); standard ones come from wsproto."""

    #: The client kept sending messages that were answered with errors.
    TOO_MANY_ERRORS = 4000
    #: No hello arrived within the allowed time after the connection opened.
    HELLO_TIMEOUT = 4001
    #: Sustained flooding beyond the rate limit (more messages over it in a row than the burst).
    RATE_LIMITED = 4002


class ProtocolError(Exception):
    """A recoverable client mistake: becomes an `error` message, connection stays."""

    def __init__(self, code: str, message: str, cid: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.cid = cid

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class Hello:
    nick: str
    rooms: tuple[str, ...]
    #: Last message id seen, per room; only rooms listed in `rooms` are kept.
    resume: dict[str, int]
    epoch: str | None


@dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Nick:
    nick: str


@dataclass(frozen=True, slots=True)
class Msg:
    room: str
    text: str
    cid: str | None


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    room: str
    #: Messages older than this id; None for the newest.
    before: int | None
    limit: int


ClientMessage = Hello | Join | Leave | Nick | Msg | HistoryRequest


def max_text_for(max_message: int) -> int:
    """The longest text (in characters) that always fits a message of ``max_message`` bytes.

    UTF-8 takes at most 4 bytes a character and ENVELOPE covers the rest, so a text of
    this many characters fits however it is written (unless JSON escaping inflates
    it: control characters and quotes; the page checks the encoded size).
    """
    return max(1, (max_message - ENVELOPE) // 4)


# Invisible or line-breaking characters: with them two nicks can look identical, or one nick
# can fake a line of chat. Cs covers lone surrogates, which JSON "\ud800" escapes can produce
# and which cannot be encoded to UTF-8 on the way out.
_FORBIDDEN_NICK_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

_ROOM_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def validate_nick(nick: object) -> str:
    """Return the nick trimmed, or raise ProtocolError("bad_nick")."""
    if not isinstance(nick, str):
        raise ProtocolError("bad_nick", "nick must be a string")
    nick = nick.strip()
    if not nick:
        raise ProtocolError("bad_nick", "nick must not be empty")
    if len(nick) > MAX_NICK:
        raise ProtocolError("bad_nick", f"nick must be at most {MAX_NICK} characters")
    if any(unicodedata.category(char) in _FORBIDDEN_NICK_CATEGORIES for char in nick):
        raise ProtocolError("bad_nick", "nick must not contain control or invisible characters")
    return nick


def validate_room(room: object) -> str:
    """Return the room name unchanged, or raise ProtocolError("bad_room")."""
    if not isinstance(room, str) or len(room) > MAX_ROOM or _ROOM_RE.fullmatch(room) is None:
        raise ProtocolError(
            "bad_room",
            f"room names are 1 to {MAX_ROOM} characters of A-Z a-z 0-9 _ - . "
            "and do not start with '.'",
        )
    return room


def nick_key(nick: str) -> str:
    """The key under which nicks must be unique: "Ann" and "ANN" collide."""
    key = nick.casefold()
    # A nick already folded (every guest's) is its own key: one string kept, not two.
    return nick if key == nick else key


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_client(text: str, *, max_text: int) -> ClientMessage:
    """Parse one client text message; raise ProtocolError for anything malformed."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    # ValueError also covers integers too long to convert (sys.get_int_max_str_digits);
    # RecursionError comes from deeply nested arrays or objects.
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")

    kind = data.get("type")
    if kind == "hello":
        return _parse_hello(data)
    if kind == "join":
        return Join(validate_room(_required_str(data, "room")))
    if kind == "leave":
        return Leave(validate_room(_required_str(data, "room")))
    if kind == "nick":
        return Nick(validate_nick(_required_str(data, "nick")))
    if kind == "msg":
        return _parse_msg(data, max_text)
    if kind == "history":
        return _parse_history(data)
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "field 'type' must be a string")
    raise ProtocolError("bad_message", "unknown message type")


def _required_str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ProtocolError("bad_message", f"field {name!r} must be a string")
    return value


def _is_utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_hello(data: dict[str, Any]) -> Hello:
    nick = validate_nick(_required_str(data, "nick"))

    raw_rooms = data.get("rooms", [DEFAULT_ROOM])
    if not isinstance(raw_rooms, list) or not all(isinstance(r, str) for r in raw_rooms):
        raise ProtocolError("bad_message", "field 'rooms' must be a list of strings")
    rooms = tuple(dict.fromkeys(validate_room(room) for room in raw_rooms))

    raw_resume = data.get("resume", {})
    if raw_resume is None:
        raw_resume = {}
    if not isinstance(raw_resume, dict):
        raise ProtocolError("bad_message", "field 'resume' must be an object")
    resume: dict[str, int] = {}
    for room, last_id in raw_resume.items():
        # bool is a subclass of int: true must not pass for message id 1.
        if type(last_id) is not int or last_id < 0:
            raise ProtocolError("bad_message", "resume ids must be non-negative integers")
        if room in rooms:
            resume[room] = last_id

    epoch = data.get("epoch")
    if epoch is not None and not isinstance(epoch, str):
        raise ProtocolError("bad_message", "field 'epoch' must be a string")
    return Hello(nick=nick, rooms=rooms, resume=resume, epoch=epoch)


def _optional_int(data: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    # bool is a subclass of int: true must not pass for 1.
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ProtocolError("bad_message", f"field {name!r} must be an integer {bound}")
    return int(value)


def _parse_history(data: dict[str, Any]) -> HistoryRequest:
    room = validate_room(_required_str(data, "room"))
    before = _optional_int(data, "before", 0, None)
    limit = _optional_int(data, "limit", 1, MAX_HISTORY_LIMIT)
    return HistoryRequest(room, before, HISTORY_LIMIT if limit is None else limit)


def _parse_msg(data: dict[str, Any], max_text: int) -> Msg:
    cid = data.get("cid")
    if cid is not None and (
        not isinstance(cid, str) or len(cid) > MAX_CID or not _is_utf8_encodable(cid)
    ):
        raise ProtocolError("bad_message", f"field 'cid' must be a string of at most {MAX_CID}")
    try:
        room = validate_room(_required_str(data, "room"))
        text = _required_str(data, "text")
        if len(text) > max_text:
            raise ProtocolError("text_too_long", f"text must be at most {max_text} characters")
        if not text.strip():
            raise ProtocolError("empty_text", "text must not be empty or only whitespace")
        if not _is_utf8_encodable(text):
            raise ProtocolError("bad_message", "text must not contain lone surrogates")
    except ProtocolError as error:
        error.cid = cid
        raise
    return Msg(room=room, text=text, cid=cid)


# One shared encoder: compact, UTF-8 kept as is, and no NaN (a server bug, not valid JSON).
_dumps = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
).encode


def encode_welcome(
    session: str,
    nick: str,
    epoch: str,
    *,
    max_text: int,
    max_rooms: int,
    history: int,
    max_bytes: int,
) -> str:
    limits = {
        "max_text": max_text,
        "max_bytes": max_bytes,
        "max_rooms": max_rooms,
        "max_nick": MAX_NICK,
        "history": history,
    }
    return _dumps(
        {"type": "welcome", "session": session, "nick": nick, "epoch": epoch, "limits": limits}
    )


def encode_msg(room: str, id: int, ts: float, nick: str, text: str, cid: str | None = None) -> str:
    message: dict[str, object] = {
        "type": "msg",
        "room": room,
        "id": id,
        "ts": round(ts, 3),
        "nick": nick,
        "text": text,
    }
    if cid is not None:
        message["cid"] = cid
    return _dumps(message)


def encode_joined(
    room: str,
    members: Iterable[str],
    history: Sequence[str],
    last_id: int,
    truncated: bool,
    *,
    more: bool = False,
    count: int | None = None,
) -> str:
    # `history` holds msg texts already encoded by encode_msg (the history keeps them that
    # way): splicing them in as text avoids decoding and re-encoding a page of messages on
    # every join.
    members = list(members)
    return (
        f'{{"type":"joined","room":{_dumps(room)},"members":{_dumps(members)},'
        f'"count":{len(members) if count is None else count},'
        f'"history":[{",".join(history)}],"more":{_dumps(more)},"last_id":{_dumps(last_id)},'
        f'"truncated":{_dumps(truncated)}}}'
    )


def encode_history(room: str, messages: Sequence[str], more: bool) -> str:
    """A page of history, oldest first (messages already encoded by encode_msg)."""
    return (
        f'{{"type":"history","room":{_dumps(room)},"messages":[{",".join(messages)}],'
        f'"more":{_dumps(more)}}}'
    )


def encode_left(room: str) -> str:
    return _dumps({"type": "left", "room": room})


def encode_presence(
    room: str,
    count: int,
    joined: Sequence[str] = (),
    left: Sequence[str] = (),
    renamed: Sequence[tuple[str, str]] = (),
) -> str:
    """One room's membership changes of one tick, in one frame.

    At most MAX_PRESENCE_LISTED changes are listed (joins first, then renames, then
    leaves); "omitted" counts the others. A frame of exactly one change also has the
    fields of the frame it replaces (one per change), for clients written before.
    """
    budget = MAX_PRESENCE_LISTED
    listed_joined = joined[:budget]
    budget -= len(listed_joined)
    listed_renamed = renamed[:budget]
    budget -= len(listed_renamed)
    listed_left = left[:budget]
    total = len(joined) + len(left) + len(renamed)
    message: dict[str, object] = {
        "type": "presence",
        "room": room,
        "count": count,
        "joined": list(listed_joined),
        "left": list(listed_left),
        "renamed": [list(pair) for pair in listed_renamed],
        "omitted": total - len(listed_joined) - len(listed_left) - len(listed_renamed),
    }
    if total == 1:
        if joined:
            message.update(event="join", nick=joined[0])
        elif left:
            message.update(event="leave", nick=left[0])
        else:
            message.update(event="nick", nick=renamed[0][1], old=renamed[0][0])
    return _dumps(message)


def cid_of(text: str) -> str | None:
    """The ``cid`` of a message that will not be handled, to answer it by, if it has one."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    cid = value.get("cid") if isinstance(value, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= MAX_CID else None


def encode_error(code: str, message: str, cid: str | None = None) -> str:
    error = {"type": "error", "code": code, "message": message}
    if cid is not None:
        error["cid"] = cid
    return _dumps(error)
