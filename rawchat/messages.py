"""The rawchat.v1 protocol, client side: parse and validate what clients send.

Every WebSocket text message is one JSON object with a ``"type"`` field. Client messages
become frozen dataclasses through `parse_client`, which raises `ProtocolError` for anything
a client can get wrong; the server turns that into an ``error`` message and keeps the
connection. What the server sends is built in :mod:`rawchat.replies`.

No I/O here. ``docs/protocol.md`` describes the protocol for client authors.
"""

from __future__ import annotations

import json
import re
import unicodedata
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

#: Every ``code`` an ``error`` message can carry (see docs/protocol.md for when).
ERROR_CODES: tuple[str, ...] = (
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
    "bad_token",
    "token_required",
    "nick_reserved",
    "forbidden",
    "muted",
    "banned",
    "no_such_nick",
    "no_such_message",
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
    #: A signed token for the nick (rawchat.identity); None for a guest.
    token: str | None = None


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_client(text: str, *, max_text: int) -> ClientMessage | Extra:
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
    if kind == "msg" and "to" in data:  # hook: direct messages (parse_direct below)
        return parse_direct(data, max_text)
    if kind == "msg":
        return _parse_msg(data, max_text)
    if kind == "history":
        return _parse_history(data)
    if isinstance(kind, str) and kind in MODERATION_TYPES:  # moderation, typing, direct history
        return parse_moderation(kind, data)
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
    token = data.get("token")  # hook: signed tokens (rawchat.identity)
    if token is not None and not isinstance(token, str):
        raise ProtocolError("bad_message", "field 'token' must be a string")
    return Hello(nick=nick, rooms=rooms, resume=resume, epoch=epoch, token=token)


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


# -- public rooms: moderation, direct messages, typing (docs/protocol.md) ----------------

#: Longest kick/ban reason, in code points.
MAX_REASON = 200
#: Longest mute or ban: a year. 0 lifts one.
MAX_PENALTY = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Moderate:
    """kick, mute or ban ``nick`` in ``room``."""

    action: str
    room: str
    nick: str
    seconds: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class Delete:
    room: str
    id: int


@dataclass(frozen=True, slots=True)
class Owner:
    """Make ``nick`` an owner of ``room`` (or no longer one)."""

    room: str
    nick: str
    owner: bool


@dataclass(frozen=True, slots=True)
class Typing:
    room: str


@dataclass(frozen=True, slots=True)
class Direct:
    """A message to one other user, not to a room."""

    to: str
    text: str
    cid: str | None


@dataclass(frozen=True, slots=True)
class DirectHistory:
    """Ask for the kept direct messages with ``peer``."""

    peer: str


Extra = Moderate | Delete | Owner | Typing | Direct | DirectHistory

MODERATION_TYPES = frozenset({"kick", "mute", "ban", "delete", "owner", "typing", "direct"})


def _seconds(data: dict[str, Any]) -> int:
    value = data.get("seconds")
    if type(value) is not int or not 0 <= value <= MAX_PENALTY:
        raise ProtocolError("bad_message", f"field 'seconds' must be an integer 0..{MAX_PENALTY}")
    return value


def parse_moderation(kind: str, data: dict[str, Any]) -> Extra:
    if kind == "direct":
        return DirectHistory(validate_nick(_required_str(data, "with")))
    room = validate_room(_required_str(data, "room"))
    if kind == "typing":
        return Typing(room)
    if kind == "delete":
        id = data.get("id")
        if type(id) is not int or id < 1:
            raise ProtocolError("bad_message", "field 'id' must be a positive integer")
        return Delete(room, id)
    nick = validate_nick(_required_str(data, "nick"))
    if kind == "owner":
        owner = data.get("owner", True)
        if not isinstance(owner, bool):
            raise ProtocolError("bad_message", "field 'owner' must be true or false")
        return Owner(room, nick, owner)
    reason = data.get("reason")
    if reason is not None and (
        not isinstance(reason, str) or len(reason) > MAX_REASON or not _is_utf8_encodable(reason)
    ):
        raise ProtocolError("bad_message", f"field 'reason' must be at most {MAX_REASON} long")
    seconds = 0 if kind == "kick" else _seconds(data)
    return Moderate(kind, room, nick, seconds, reason)


def parse_direct(data: dict[str, Any], max_text: int) -> Direct:
    """``{"type":"msg","to":NICK,"text":...,"cid":...}``: the text rules of a room msg."""
    to = validate_nick(_required_str(data, "to"))
    checked = _parse_msg({**data, "room": DEFAULT_ROOM}, max_text)
    return Direct(to, checked.text, checked.cid)
