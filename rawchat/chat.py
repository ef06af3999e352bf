"""Rooms, nicknames, history and resume: the chat itself, free of I/O.

A :class:`Session` is one connected client, in plain mode (the tutorial's raw
text) or speaking rawchat.v1 (JSON). The :class:`Chat` turns what sessions say
into frames and hands them to the hub. Every outgoing message is encoded once
per representation: one JSON text for the room's v1 members (plus one copy
carrying the sender's ``cid`` for the sender), and the verbatim text for the
room's plain members. Those frames are then fanned out unchanged.

Rooms outlive their members for a while, so that a client that drops and comes
back can resume from history even if it was alone in the room: empty rooms are
kept, oldest dropped first, up to ``MAX_IDLE_ROOMS``.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Protocol

from rawchat import frames, identity
from rawchat import messages as m
from rawchat.hub import Hub, Outbox
from rawchat.moderation import DELETED, GUEST, Moderation, Seat

#: A message kept in history before any v1 client needed its JSON: (id, ts, nick, text).
Raw = tuple[int, float, str, str]

#: Empty rooms (and their history) kept for clients that come back.
MAX_IDLE_ROOMS = 1024
#: Consecutive protocol errors after which a client is closed with TOO_MANY_ERRORS.
MAX_ERRORS_IN_A_ROW = 10


class Closable(Protocol):
    """The connection under a session (rawchat.connection.Connection)."""

    #: The client's address, as limits count it (hook: guests are banned by address).
    address: str

    def close(self, code: int, reason: str = "") -> None: ...


class Session:
    """One connected client as the chat sees it."""

    __slots__ = (
        "outbox",
        "nick",
        "key",
        "rooms",
        "plain",
        "greeted",
        "errors",
        "connection",
        "seat",
    )

    def __init__(self, outbox: Outbox, *, plain: bool, connection: Closable) -> None:
        self.outbox = outbox
        self.nick = ""
        self.key = ""
        #: Rooms this session is in, in the order it joined them.
        self.rooms: dict[str, Room] = {}
        self.plain = plain
        #: Whether a v1 client's hello was accepted (plain clients need none).
        self.greeted = plain
        self.errors = 0
        #: Kept itself, not its bound close method: one object fewer per client.
        self.connection = connection
        #: Role and token (hook: rawchat.moderation); guests share one.
        self.seat: Seat = GUEST

    def close(self, code: int, reason: str) -> None:
        """Ask the connection to close with a code and reason."""
        self.connection.close(code, reason)


class Relay(Protocol):
    """What the chat asks of a broker that joins several rawchat nodes (rawchat/broker.py).

    While ``up`` is false the chat runs on its own, as a single node does.
    """

    up: bool

    def publish(self, room: str, ts: float, nick: str, text: str, token: int) -> None: ...

    def publish_binary(self, room: str, data: bytes) -> None: ...

    def presence(self, room: str, event: str, nick: str, old: str | None) -> None: ...

    def load(self, room: Room) -> None: ...


class Room:
    __slots__ = (
        "name",
        "members",
        "v1",
        "plain",
        "history",
        "last_id",
        "remote",
        "loaded",
        "waiting",
    )

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        #: Everyone present, in the order they arrived (for ``members`` lists).
        self.members: dict[Session, None] = {}
        #: The fan-out targets, one set per representation.
        self.v1: set[Outbox] = set()
        self.plain: set[Outbox] = set()
        #: The last messages: v1 JSON (without any cid) when some v1 member
        #: needed it as it went by, else (id, ts, nick, text), encoded when a
        #: v1 client asks (a room of plain clients encodes no JSON).
        self.history: deque[str | Raw] = deque(maxlen=history)
        self.last_id = 0
        #: Members on other nodes (with a broker): nick -> node.
        self.remote: dict[str, str] = {}
        #: With a broker, a room's history and remote members come from Redis
        #: first; joins wait in ``waiting`` until they have.
        self.loaded = True
        self.waiting: list[tuple[Session, int | None, bool]] = []

    def nicks(self) -> list[str]:
        return [member.nick for member in self.members] + list(self.remote)

    def resume(self, after: int | None) -> tuple[list[str], bool]:
        """History to send a client that last saw id ``after``, and whether it is truncated.

        With no ``after`` the client gets everything kept, truncated when older
        messages are gone. A resume id newer than ``last_id`` comes from another
        server run (ids started again), so what it names is gone too.
        """
        kept = len(self.history)
        first = self.last_id - kept + 1  # id of history[0] when kept > 0
        if after is None:
            return self._encoded(self.history), first > 1
        if after > self.last_id or after < first - 1:
            return self._encoded(self.history), True
        missed = self.last_id - after
        return self._encoded(itertools.islice(self.history, kept - missed, kept)), False

    def _encoded(self, entries: Iterable[str | Raw]) -> list[str]:
        name = self.name
        # Deleted messages keep their slot (ids are counted by position) and are skipped.
        return [
            e if isinstance(e, str) else m.encode_msg(name, *e)
            for e in entries
            if e != DELETED  # hook: moderation's delete
        ]


class Chat:
    def __init__(
        self,
        hub: Hub,
        *,
        history: int,
        max_rooms: int,
        max_text: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.history = history
        self.max_rooms = max_rooms
        self.max_text = max_text
        self.clock = clock
        #: Names this server run; a client resuming with another epoch gets no resume.
        self.epoch = secrets.token_urlsafe(6)
        self.rooms: dict[str, Room] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        self.nicks: dict[str, Session] = {}
        self.guests = itertools.count(1)
        self._sessions = itertools.count(1)
        #: The broker, when there is one (set by it).
        self.relay: Relay | None = None
        #: Messages published through the relay and not seen back yet:
        #: token -> the sender's outbox and cid, for its acknowledgement.
        self.own: dict[int, tuple[Outbox, str | None]] = {}
        self._tokens = itertools.count(1)
        #: Tokens, owners, mutes, bans, direct messages, typing (hook: rawchat.moderation).
        #: The server replaces it with Moderation.from_config(config, chat.clock).
        self.moderation = Moderation(history=history, clock=clock)

    # -- sessions ---------------------------------------------------------

    def connect_plain(self, outbox: Outbox, connection: Closable) -> Session:
        """A tutorial client: a guest nick, in the lobby, at once."""
        session = Session(outbox, plain=True, connection=connection)
        self._claim_nick(session, self._guest_nick())
        self._enter(session, self.room(m.DEFAULT_ROOM))
        return session

    def _guest_nick(self) -> str:
        nick = f"guest-{next(self.guests)}"
        while nick in self.nicks or self.moderation.reserved.is_reserved(nick):
            nick = f"guest-{next(self.guests)}"
        return nick

    def connect_v1(self, outbox: Outbox, connection: Closable) -> Session:
        """A rawchat.v1 client: nothing happens until its hello."""
        return Session(outbox, plain=False, connection=connection)

    def disconnect(self, session: Session) -> None:
        for room in list(session.rooms.values()):
            self._exit(session, room)
        if session.key and self.nicks.get(session.key) is session:
            del self.nicks[session.key]
        self.hub.drop(session.outbox)

    # -- what clients say ---------------------------------------------------

    def plain_message(self, session: Session, data: str | bytes) -> None:
        """Relay a plain client's message to everyone in the lobby.

        Plain members get it verbatim, as a frame of the same type. v1 members
        get text as a chat message from the guest's nick (blank text, which a
        v1 client may not send either, is not); binary data has no place in the
        JSON protocol, so only plain members see it.
        """
        room = session.rooms.get(m.DEFAULT_ROOM)
        if room is None:
            return
        if isinstance(data, str):
            if self.moderation.mutes.remaining(room.name, session.key):  # hook: mute
                # Plain mode has no errors: the refusal comes back as text.
                self.hub.send(session.outbox, frames.message("(muted: not delivered)"))
                return
            if data.strip():
                self._publish(session, room, data, cid=None)
            else:
                self.hub.broadcast(frames.message(data), room.plain)
            return
        self.hub.broadcast(frames.message(data), room.plain)
        if self.relay is not None and self.relay.up:
            self.relay.publish_binary(room.name, data)

    def v1_message(self, session: Session, text: str) -> None:
        """Handle one JSON message from a v1 client; mistakes become ``error`` replies."""
        try:
            message = m.parse_client(text, max_text=self.max_text)
            self._dispatch(session, message)
        except m.ProtocolError as exc:
            session.errors += 1
            self._send(session, m.encode_error(exc.code, exc.message, exc.cid))
            if session.errors >= MAX_ERRORS_IN_A_ROW:
                session.close(m.CloseCode.TOO_MANY_ERRORS, "too many errors")
        else:
            session.errors = 0

    def _dispatch(self, session: Session, message: m.ClientMessage | m.Extra) -> None:
        if isinstance(message, m.Hello):
            self._hello(session, message)
        elif not session.greeted:
            raise m.ProtocolError("hello_required", "send hello first")
        elif isinstance(message, m.Msg):
            room = session.rooms.get(message.room)
            if room is None:
                raise m.ProtocolError("not_in_room", f"you are not in {message.room}", message.cid)
            self.moderation.may_post(session, room.name, message.cid)  # hook: mute
            self._publish(session, room, message.text, message.cid)
        elif isinstance(message, m.Join):
            self._join(session, message.room, None)
        elif isinstance(message, m.Leave):
            room = session.rooms.get(message.room)
            if room is None:
                raise m.ProtocolError("not_in_room", f"you are not in {message.room}")
            self._exit(session, room)
            self._send(session, m.encode_left(room.name))
        elif isinstance(message, m.Nick):
            self._rename(session, message.nick)
        else:  # hook: moderation, direct messages, typing
            self.moderation.handle(self, session, message)

    def _hello(self, session: Session, hello: m.Hello) -> None:
        if session.greeted:
            raise m.ProtocolError("already_hello", "hello was already accepted")
        if len(hello.rooms) > self.max_rooms:
            raise m.ProtocolError("too_many_rooms", f"at most {self.max_rooms} rooms")
        self.moderation.admit(session, hello)  # hook: token check
        try:
            self._claim_nick(session, hello.nick)
        except m.ProtocolError:
            session.seat = GUEST
            raise
        session.greeted = True
        welcome = m.encode_welcome(
            f"s{next(self._sessions)}",
            session.nick,
            self.epoch,
            max_text=self.max_text,
            max_rooms=self.max_rooms,
            history=self.history,
        )
        self._send(session, self.moderation.greeted(session, welcome))  # hook: role
        # Ids from another server run mean nothing here: such a client gets
        # everything kept, flagged as truncated.
        foreign = hello.epoch is not None and hello.epoch != self.epoch
        for name in hello.rooms:
            after = hello.resume.get(name)
            try:
                self._join(session, name, after, stale=foreign and after is not None)
            except m.ProtocolError as refused:  # hook: a ban refuses one room, not the hello
                self._send(session, m.encode_error(refused.code, refused.message))

    def _join(self, session: Session, name: str, after: int | None, *, stale: bool = False) -> None:
        room = session.rooms.get(name)
        if room is None:
            if len(session.rooms) >= self.max_rooms:
                raise m.ProtocolError("too_many_rooms", f"at most {self.max_rooms} rooms")
            self.moderation.may_join(self, session, name)  # hook: bans, owners
            room = self.room(name)
            self._enter(session, room)
        if room.loaded:
            self._joined(session, room, after, stale)
        else:
            room.waiting.append((session, after, stale))

    def _joined(self, session: Session, room: Room, after: int | None, stale: bool) -> None:
        history, truncated = room.resume(None if stale else after)
        self._send(
            session,
            m.encode_joined(room.name, room.nicks(), history, room.last_id, truncated or stale),
        )

    def room_loaded(self, room: Room) -> None:
        """The broker filled in a room's history and remote members: answer waiting joins."""
        room.loaded = True
        waiting, room.waiting = room.waiting, []
        for session, after, stale in waiting:
            if session.rooms.get(room.name) is room:
                self._joined(session, room, after, stale)

    def _rename(self, session: Session, nick: str) -> None:
        old = session.nick
        if nick == old:
            return
        self._claim_nick(session, nick)
        for room in session.rooms.values():
            frame = frames.message(m.encode_presence(room.name, "nick", nick, old))
            self.hub.broadcast(frame, room.v1)
            if self.relay is not None and self.relay.up:
                self.relay.presence(room.name, "nick", nick, old)

    def _publish(self, session: Session, room: Room, text: str, cid: str | None) -> None:
        ts = self.clock()
        relay = self.relay
        if relay is not None and relay.up:
            # The broker numbers the message and brings it back to every node,
            # this one included, in one order: delivery happens then.
            token = next(self._tokens)
            self.own[token] = (session.outbox, cid)
            relay.publish(room.name, ts, session.nick, text, token)
            return
        self.deliver(room, room.last_id + 1, ts, session.nick, text, (session.outbox, cid))

    def deliver(
        self,
        room: Room,
        id: int,
        ts: float,
        nick: str,
        text: str,
        own: tuple[Outbox, str | None] | None = None,
    ) -> None:
        """Record message ``id`` in the room's history and fan it out to its members."""
        room.last_id = id
        if not room.v1:
            # No JSON to send: the message is encoded if a v1 client joins for it.
            room.history.append((id, ts, nick, text))
        else:
            encoded = m.encode_msg(room.name, id, ts, nick, text)
            room.history.append(encoded)
            if own is None or own[1] is None:
                self.hub.broadcast(frames.message(encoded), room.v1)
            else:
                # The sender's copy carries its cid: that is its acknowledgement.
                self.hub.broadcast(frames.message(encoded), room.v1, skip=own[0])
                copy = m.encode_msg(room.name, id, ts, nick, text, own[1])
                self.hub.send(own[0], frames.message(copy))
        if room.plain:
            self.hub.broadcast(frames.message(text), room.plain)

    def relayed_presence(
        self, room: Room, event: str, nick: str, old: str | None, node: str
    ) -> None:
        """A member of ``room`` on another node came, went or changed nick."""
        if event == "join":
            if room.remote.get(nick) == node:
                return  # known already: the room's load and the event crossed
            room.remote[nick] = node
        elif event == "leave":
            if room.remote.get(nick) != node:
                return
            del room.remote[nick]
        elif old is not None and room.remote.get(old) == node:
            del room.remote[old]
            room.remote[nick] = node
        else:
            return
        if room.v1:
            frame = frames.message(m.encode_presence(room.name, event, nick, old))
            self.hub.broadcast(frame, room.v1)

    # -- membership -----------------------------------------------------------

    def _claim_nick(self, session: Session, nick: str) -> None:
        identity.check_nick(nick)  # hook: look-alike nicks
        key = identity.nick_key(nick)  # hook: NFKC + casefold
        self.moderation.may_take(session, key)  # hook: reserved nicks
        holder = self.nicks.get(key)
        if holder is not None and holder is not session:
            if not self.moderation.outranks(session, holder):
                raise m.ProtocolError("nick_taken", f"{nick} is taken")
            # The nick's token holder takes it back from a guest using it.
            self._rename(holder, self._guest_nick())
        if session.key and session.key != key:
            del self.nicks[session.key]
        self.nicks[key] = session
        session.nick = nick
        session.key = key

    def room(self, name: str) -> Room:
        """The room called ``name``, made (and, with a broker, loaded) if need be."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.history)
            if self.relay is not None and self.relay.up:
                room.loaded = False
                self.relay.load(room)
        else:
            self._idle.pop(name, None)
        return room

    def _enter(self, session: Session, room: Room) -> None:
        if room.v1:
            presence = m.encode_presence(room.name, "join", session.nick)
            self.hub.broadcast(frames.message(presence), room.v1)
        room.members[session] = None
        (room.plain if session.plain else room.v1).add(session.outbox)
        session.rooms[room.name] = room
        if self.relay is not None and self.relay.up:
            self.relay.presence(room.name, "join", session.nick, None)

    def _exit(self, session: Session, room: Room) -> None:
        del session.rooms[room.name]
        room.members.pop(session, None)
        (room.plain if session.plain else room.v1).discard(session.outbox)
        if room.v1:
            presence = m.encode_presence(room.name, "leave", session.nick)
            self.hub.broadcast(frames.message(presence), room.v1)
        if self.relay is not None and self.relay.up:
            self.relay.presence(room.name, "leave", session.nick, None)
        if not room.members and room.name != m.DEFAULT_ROOM:
            self._idle[room.name] = None
            while len(self._idle) > MAX_IDLE_ROOMS:
                forgotten, _ = self._idle.popitem(last=False)
                del self.rooms[forgotten]

    def refuse(self, session: Session, code: str, message: str, dropped: str) -> None:
        """Tell a v1 client that the message ``dropped`` was not handled (with its cid)."""
        self._send(session, m.encode_error(code, message, m.cid_of(dropped)))

    def _send(self, session: Session, text: str) -> None:
        self.hub.send(session.outbox, frames.message(text))
