"""The rawchat.v1 protocol, server side: what the server sends, as compact JSON text.

Each message is encoded once and the same text goes to every recipient (the hub
writes the same frame bytes to each). No I/O here; ``docs/protocol.md`` describes
every message for client authors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from rawchat.messages import MAX_NICK

#: Changes a presence frame lists; the rest are counted in its "omitted".
MAX_PRESENCE_LISTED = 100

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


def encode_error(code: str, message: str, cid: str | None = None) -> str:
    error = {"type": "error", "code": code, "message": message}
    if cid is not None:
        error["cid"] = cid
    return _dumps(error)


def encode_role(welcome: str, role: str, verified: bool) -> str:
    """``welcome`` with the session's role: spliced in, encode_welcome stays as it is."""
    return f'{welcome[:-1]},"role":{_dumps(role)},"verified":{_dumps(verified)}}}'


def encode_moderated(
    action: str, room: str, nick: str, by: str, seconds: int, reason: str | None
) -> str:
    """Told to a room: ``nick`` was kicked, muted or banned (``kicked``, ``muted``, ``banned``)."""
    past = {"kick": "kicked", "mute": "muted", "ban": "banned"}
    message: dict[str, object] = {"type": past[action]}
    message.update(room=room, nick=nick, by=by)
    if action != "kick":
        message["seconds"] = seconds
    if reason is not None:
        message["reason"] = reason
    return _dumps(message)


def encode_deleted(room: str, id: int, by: str) -> str:
    return _dumps({"type": "deleted", "room": room, "id": id, "by": by})


def encode_owner(room: str, nick: str, owner: bool, by: str) -> str:
    return _dumps({"type": "owner", "room": room, "nick": nick, "owner": owner, "by": by})


def encode_typing(room: str, nick: str) -> str:
    return _dumps({"type": "typing", "room": room, "nick": nick})


def encode_direct(id: int, ts: float, nick: str, to: str, text: str, cid: str | None = None) -> str:
    message: dict[str, object] = {
        "type": "msg",
        "to": to,
        "id": id,
        "ts": round(ts, 3),
        "nick": nick,
        "text": text,
    }
    if cid is not None:
        message["cid"] = cid
    return _dumps(message)


def encode_direct_history(peer: str, messages: Iterable[str]) -> str:
    return f'{{"type":"direct","with":{_dumps(peer)},"messages":[{",".join(messages)}]}}'
