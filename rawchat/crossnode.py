"""What rawchat nodes say to each other through Redis, and what a node does with it. No I/O.

rawchat/broker.py owns the link (connecting, listening, heartbeats) and rawchat/outbound.py
what is sent (the queue, its writer, the Lua scripts); this module owns the words: the keys
and channels, one :class:`Outgoing` per publication, the check
that a payload from the broker is well formed (another node's bug, or anyone who can
publish on the server, must cost a log line, never the link), and :class:`Arrivals`, which
applies what other nodes published to this node's chat.

What travels, on the room's channel (so that it keeps its place among the room's messages):
``msg``, ``presence``, ``bin`` (a plain client's binary frame), ``mod`` (kick, mute, ban;
``owner``, an owner granted or taken; ``address``, the address of a guest banned on the node
it is on) and ``del`` (a deletion). On a node's own channel: ``direct`` (a direct message for
one of its users, sent there by the Lua script that looked up who holds the nick).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rawchat import frames, replies
from rawchat import messages as m
from rawchat.identity import nick_key
from rawchat.rooms import Letter

if TYPE_CHECKING:
    from rawchat.chat import Chat
    from rawchat.rooms import Room

log = logging.getLogger("rawchat.broker")

PREFIX = "rawchat:"
#: Every room's channel, subscribed by pattern.
CHANNELS = PREFIX + "room:*"
#: A node's own channel is this plus its id.
NODE_CHANNEL = PREFIX + "to:"
#: A node's heartbeat key is this plus its id.
NODE_KEY = PREFIX + "node:"


def key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}:{name}"


def encode(fields: dict[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One publication, with what is needed to deliver it here if Redis fails, and
    ``then``, told the script's answer (or ``None`` when the link went down first)."""

    room: str
    payload: str
    kind: str
    ts: float = 0.0
    nick: str = ""
    text: str = ""
    token: int = 0
    event: str = ""
    old: str | None = None
    key: str = ""
    id: int = 0
    then: Callable[[int | None], None] | None = None


_NUMBER = (int, float)
_OPTIONAL_TEXT = (str, type(None))
#: The fields each kind of payload must have, and their types ("room" and "node" always).
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "msg": {"id": int, "ts": _NUMBER, "nick": str, "text": str, "tok": int},
    "presence": {"event": str, "nick": str, "old": _OPTIONAL_TEXT},
    "bin": {"data": str},
    "mod": {
        "action": str,
        "nick": str,
        "by": str,
        "seconds": int,
        "reason": _OPTIONAL_TEXT,
        "address": _OPTIONAL_TEXT,
    },
    "del": {"id": int, "by": str},
    "direct": {"id": int, "ts": _NUMBER, "nick": str, "to": str, "text": str, "key": str},
}
_EVENTS = {
    "presence": ("join", "leave", "nick"),
    "mod": ("kick", "mute", "ban", "owner", "address"),
}


def parse(data: object) -> dict[str, Any] | None:
    """A payload from the broker as a dict whose fields have the types its kind needs,
    or ``None`` (logged) for anything else."""
    try:
        message = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        message = None
    if isinstance(message, dict) and _well_formed(message):
        return message
    log.warning("ignored a malformed broker message: %.200r", data)
    return None


def _well_formed(message: dict[str, Any]) -> bool:
    fields = FIELDS.get(message.get("k"))  # type: ignore[arg-type]
    if fields is None or not isinstance(message.get("room"), str):
        return False
    if not isinstance(message.get("node"), str):
        return False
    for name, kind in fields.items():
        value = message.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return False
    allowed = _EVENTS.get(message["k"])
    if allowed is not None and message.get("event", message.get("action")) not in allowed:
        return False
    if message.get("action") == "address" and not message.get("address"):
        return False  # an address ban without its address
    if message["k"] == "bin":
        try:
            message["data"] = bytes.fromhex(message["data"])
        except ValueError:
            return False
    return True


class Arrivals:
    """Applies to this node's chat what the broker brings back from every node."""

    def __init__(self, chat: Chat, node: str) -> None:
        self.chat = chat
        self.node = node

    def apply(self, message: dict[str, Any]) -> None:
        """One well-formed payload (see `parse`)."""
        chat = self.chat
        kind = message["k"]
        own = message.get("node") == self.node
        if kind == "mod":
            if not own:  # penalties and owners hold on every node, whether it has the room or not
                self.moderated(message)
            return
        if kind == "del":
            if not own:
                chat.moderation.deleted(chat, message["room"], message["id"], message["by"])
            return
        if kind == "direct":
            letter = Letter(
                message["id"], message["ts"], message["nick"], message["to"], message["text"],
                message["key"], bool(message.get("kept")),
            )  # fmt: skip
            chat.moderation.direct.received(chat, letter)
            return
        # Whatever becomes of it, a message of ours is no longer awaited: an entry
        # left behind would pin its sender's outbox, transport and connection.
        sender = chat.delivery.echoed(message["tok"]) if kind == "msg" and own else None
        room = chat.rooms.get(message["room"])
        if room is None:
            return  # no local member has ever been there: nothing to keep
        if kind == "msg":
            id = message["id"]
            if id <= room.last_id:
                return  # already delivered (a reload overlapped)
            if id > room.last_id + 1 and room.loaded:
                log.info("room %s: ids jumped from %d to %d", room.name, room.last_id, id)
            chat.delivery.deliver(room, id, message["ts"], message["nick"], message["text"], sender)
        elif own:
            return  # our own presence and binary frames were delivered locally already
        elif kind == "presence":
            self.presence(room, message["event"], message["nick"], message["old"], message["node"])
        else:
            chat.hub.broadcast(frames.message(message["data"]), room.plain)

    def moderated(self, message: dict[str, Any]) -> None:
        """A kick, mute or ban to enforce here too; an owner granted or taken (``seconds`` 1
        or 0); or the address of a guest banned on the node it is on."""
        chat, name, nick, seconds = self.chat, message["room"], message["nick"], message["seconds"]
        moderation = chat.moderation
        if message["action"] == "address":
            moderation.address_bans.set(name, nick_key(nick), message["address"], seconds)
        elif message["action"] == "owner":
            moderation.owners.set(name, nick_key(nick), bool(seconds))
            room = chat.rooms.get(name)
            if room is not None:
                told = replies.encode_owner(name, nick, bool(seconds), message["by"])
                chat.hub.broadcast(frames.message(told), room.v1)
        else:
            action = m.Moderate(message["action"], name, nick, seconds, message["reason"])
            moderation.enforce(chat, action, message["by"])

    def presence(self, room: Room, event: str, nick: str, old: str | None, node: str) -> None:
        """A member of ``room`` on another node came, went or changed nick."""
        remote, presence = room.remote, self.chat.presence
        if event == "join":
            if remote.get(nick) == node:
                return  # known already: the room's load and the event crossed
            remote[nick] = node
            presence.join(room, nick)
        elif event == "leave":
            if remote.get(nick) == node:
                del remote[nick]
                presence.leave(room, nick)
        elif old is not None and remote.get(old) == node:
            del remote[old]
            remote[nick] = node
            presence.rename(room, old, nick)

    def loaded(
        self,
        room: Room,
        counter: str | None,
        entries: list[tuple[str, dict[str, str]]],
        members: dict[str, str],
        buffered: list[dict[str, Any]],
    ) -> None:
        """A room read from Redis (counter, history, members), and what arrived meanwhile."""
        chat, name = self.chat, room.name
        last_id = int(counter or 0)
        stored = [s for s in (parse(fields.get("m")) for _, fields in reversed(entries)) if s]
        room.remote = {}
        for field, nick in members.items():
            node = field.split(":", 1)[0]
            if node != self.node:
                room.remote[nick] = node
        # A token holder who created the room here owns it if no node had it yet.
        founder = chat.moderation.owners.founded(name, not (counter or entries or room.remote))
        if founder is not None and chat.relay is not None:
            chat.relay.moderate(m.Moderate("owner", name, founder, 1, None), founder)
        if room.history.untouched:
            # A room new to this node: what Redis keeps is its history, and
            # its ids go on from Redis's counter.
            for message in stored:
                id, ts, nick, text = message["id"], message["ts"], message["nick"], message["text"]
                encoded = replies.encode_msg(name, id, ts, nick, text)
                room.history.append(id, ts, nick, text, encoded)
            room.history.last_id = max(last_id, stored[-1]["id"] if stored else 0)
            chat.registry.loaded(room)
        else:
            # A reload (after an outage, or a gap): members are here and must
            # get what they missed live, after any waiting join is answered.
            chat.registry.loaded(room)
            for message in stored:
                if message["id"] > room.last_id:
                    chat.delivery.deliver(
                        room, message["id"], message["ts"], message["nick"], message["text"]
                    )
            room.history.last_id = max(last_id, room.last_id)
        for message in buffered:
            self.apply(message)
