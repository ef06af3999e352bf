"""The chat itself, free of I/O: what sessions say, handled and answered.

A :class:`~rawchat.rooms.Session` is one connected client, in plain mode (the
tutorial's raw text) or speaking rawchat.v1 (JSON). :class:`Chat` is where the
connections hand over what their clients say; it checks it, and leaves the rest
to the pieces it is made of, each readable on its own:

- rawchat.registry: the rooms, idle rooms kept for resumes, joins answered;
- rawchat.nicks: who holds which nick, guests, claims through the broker;
- rawchat.delivery: a message encoded once and fanned out (the hot path);
- rawchat.presence: who came and went, told once a tick;
- rawchat.moderation: tokens, roles, mutes, bans, direct messages, typing.

With a broker (rawchat.broker), setting `Chat.relay` links every piece to it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from functools import partial

from rawchat import frames, replies
from rawchat import messages as m
from rawchat.archive import Shelf
from rawchat.config import Config
from rawchat.delivery import Delivery
from rawchat.history import PAGE_BYTES
from rawchat.hub import Hub, Outbox
from rawchat.identity import GUEST
from rawchat.moderation import Moderation
from rawchat.nicks import Nicks
from rawchat.presence import Presence, Schedule
from rawchat.registry import RoomRegistry
from rawchat.rooms import Closable, Relay, Room, Session

#: Consecutive protocol errors after which a client is closed with TOO_MANY_ERRORS.
MAX_ERRORS_IN_A_ROW = 10


class Chat:
    """Where sessions come, go and speak: checked here, handled by the chat's pieces."""

    def __init__(
        self,
        hub: Hub,
        config: Config,
        call_later: Schedule,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.config = config
        self.max_rooms = config.max_rooms
        self.max_text = m.max_text_for(config.max_message)
        #: Names this server run; a client resuming with another epoch gets no resume.
        self.epoch = secrets.token_urlsafe(6)
        self._sessions = itertools.count(1)
        #: Tokens, reserved nicks, owners, mutes, bans, direct messages, typing. The nick
        #: registry asks it about reserved nicks too: replace it there as well.
        self.moderation = Moderation.from_config(config, clock)
        self.presence = Presence(hub, call_later)
        self.registry = RoomRegistry(hub, Shelf(config, clock), self.presence)
        self.names = Nicks(hub, self.moderation, self.presence)
        self.delivery = Delivery(hub, clock)

    @property
    def relay(self) -> Relay | None:
        """The broker, when there is one (it sets itself here)."""
        return self.delivery.relay

    @relay.setter
    def relay(self, relay: Relay | None) -> None:
        self.registry.relay = self.names.relay = self.delivery.relay = relay

    @property
    def rooms(self) -> Mapping[str, Room]:
        return self.registry.rooms

    @property
    def nicks(self) -> Mapping[str, Session]:
        """Nick key -> the session holding it."""
        return self.names.holders

    # -- sessions ---------------------------------------------------------

    def connect_plain(self, outbox: Outbox, connection: Closable) -> Session:
        """A tutorial client: a guest nick, in the lobby, at once."""
        session = Session(outbox, plain=True, connection=connection)
        if self.moderation.refuses_plain(session):  # its address is banned from the lobby
            return session
        self.names.claim(session, self.names.guest_nick())
        self.registry.enter(session, self.registry.room(m.DEFAULT_ROOM))
        return session

    def connect_v1(self, outbox: Outbox, connection: Closable) -> Session:
        """A rawchat.v1 client: nothing happens until its hello."""
        return Session(outbox, plain=False, connection=connection)

    def close(self) -> None:
        """The server is shutting down: no presence any more, for anyone.

        Every client is about to get a close frame; telling each of n clients
        about the n-1 others leaving would be quadratic, and nobody is left to
        read it. With a broker, other nodes drop this node's members when its
        heartbeat expires.
        """
        self.registry.closing = True
        self.presence.stop()

    def disconnect(self, session: Session) -> None:
        self.names.release(session)  # before the leave: see docs/broker.md
        for room in list(session.rooms.values()):
            self.registry.exit(session, room)
        self.hub.drop(session.outbox)

    def exit_room(self, session: Session, room: Room) -> None:
        self.registry.exit(session, room)

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
        if isinstance(data, str) and self.moderation.mutes.remaining(room.name, session.key):
            # Plain mode has no errors: the refusal comes back as text.
            self.hub.send(session.outbox, frames.message("(muted: not delivered)"))
        elif isinstance(data, str) and data.strip():
            self.delivery.publish(session, room, data, cid=None)
        else:
            self.delivery.publish_plain(room, data)

    def v1_message(self, session: Session, text: str) -> None:
        """Handle one JSON message from a v1 client; mistakes become ``error`` replies."""
        try:
            message = m.parse_client(text, max_text=self.max_text)
            self._dispatch(session, message)
        except m.ProtocolError as exc:
            session.errors += 1
            self.send(session, replies.encode_error(exc.code, exc.message, exc.cid))
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
            self.moderation.may_post(session, room.name, message.cid)
            self.delivery.publish(session, room, message.text, message.cid)
        elif isinstance(message, m.Join):
            self._join(session, message.room, None)
        elif isinstance(message, m.Leave):
            room = session.rooms.get(message.room)
            if room is None:
                raise m.ProtocolError("not_in_room", f"you are not in {message.room}")
            self.registry.exit(session, room)
            self.send(session, replies.encode_left(room.name))
        elif isinstance(message, m.Nick):
            self.names.rename(session, message.nick)
        elif isinstance(message, m.HistoryRequest):
            room = session.rooms.get(message.room)
            if room is None:
                raise m.ProtocolError("not_in_room", f"you are not in {message.room}")
            page, more = room.history.page(message.before, message.limit, PAGE_BYTES)
            self.send(session, replies.encode_history(room.name, page, more))
        else:  # moderation, direct messages, typing
            self.moderation.handle(self, session, message)

    def _hello(self, session: Session, hello: m.Hello) -> None:
        if session.greeted or session.key:  # accepted, or waiting for the broker's word
            raise m.ProtocolError("already_hello", "hello was already accepted")
        if len(hello.rooms) > self.max_rooms:
            raise m.ProtocolError("too_many_rooms", f"at most {self.max_rooms} rooms")
        self.moderation.admit(session, hello)  # its token, if any
        try:  # with a broker, the welcome waits for its word: nicks are unique on every node
            self.names.claim(session, hello.nick, partial(self._welcome, session, hello))
        except m.ProtocolError:
            session.seat = GUEST
            raise

    def _welcome(self, session: Session, hello: m.Hello, taken: bool) -> None:
        if not self.names.holds(session):
            return  # gone while the broker was asked
        if taken:
            self.names.forfeit(session)  # its seat goes with its next hello
            self.send(session, replies.encode_error("nick_taken", f"{hello.nick} is taken"))
            return
        session.greeted = True
        welcome = replies.encode_welcome(
            f"s{next(self._sessions)}",
            session.nick,
            self.epoch,
            max_text=self.max_text,
            max_rooms=self.max_rooms,
            history=self.config.history,
            max_bytes=self.config.max_message,
        )
        self.send(session, self.moderation.greeted(session, welcome))  # with its role
        # Ids from another server run mean nothing here: such a client gets
        # everything kept, flagged as truncated.
        foreign = hello.epoch is not None and hello.epoch != self.epoch
        for name in hello.rooms:
            after = hello.resume.get(name)
            try:
                self._join(session, name, after, stale=foreign and after is not None)
            except m.ProtocolError as refused:  # a ban refuses one room, not the hello
                self.send(session, replies.encode_error(refused.code, refused.message))

    def _join(self, session: Session, name: str, after: int | None, *, stale: bool = False) -> None:
        if name not in session.rooms:
            if len(session.rooms) >= self.max_rooms:
                raise m.ProtocolError("too_many_rooms", f"at most {self.max_rooms} rooms")
            self.moderation.may_join(self, session, name)  # bans, owners
        self.registry.join(session, name, after, stale)

    def send(self, session: Session, text: str) -> None:
        self.hub.send(session.outbox, frames.message(text))
