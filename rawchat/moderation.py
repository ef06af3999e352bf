"""Running a public room: roles, room owners, kicks, mutes, bans and deletions. No I/O.

The chat (rawchat/chat.py) calls in at a few places: when a hello arrives (`admit`), when a
nick is claimed (`may_take`, from rawchat/nicks.py), when a session joins (`may_join`) or
posts (`may_post`), and for every moderation message (`handle`). Everything this module
decides is kept here, keyed by nick key and room name, so that the chat's own structures
stay as they were.

Who may moderate: operators (a token with ``"role": "operator"``) everywhere; a room's
owners in that room. A room gets its first owner when a token holder creates it (joins it
while the server holds no such room), and operators grant or take ownership with ``owner``.
The lobby has no owners. Owners are named by nick key, so ownership follows the reserved
nick, not the connection.

With a broker (docs/broker.md) every node publishes what it decides, so that each holds the
same owners and penalties: a grant, a founding (confirmed only once the room's load from
Redis shows that no node has it yet) and the address of a banned guest, which only the
guest's own node knows.

Every action is logged (who, what, whom, where) and counted in `Moderation.counts`, which
the metrics module can read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from rawchat import frames, replies
from rawchat import messages as m
from rawchat.direct import DirectMessages, TypingRelay
from rawchat.identity import (
    GUEST,
    MemoryReservations,
    ReservedNicks,
    Role,
    Seat,
    Tokens,
    nick_key,
)
from rawchat.penalties import AddressBans, Owners, Penalties

if TYPE_CHECKING:
    from rawchat.config import Config
    from rawchat.rooms import Session, Venue

log = logging.getLogger("rawchat.moderation")


class Moderation:
    """Tokens, reserved nicks, owners, mutes and bans of one chat."""

    def __init__(
        self,
        *,
        tokens: Tokens | None = None,
        require_token: bool = False,
        reserved: ReservedNicks | None = None,
        history: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if require_token and tokens is None:
            raise ValueError("requiring a token needs a token secret")
        self.tokens = tokens
        self.require_token = require_token
        self.reserved: ReservedNicks = reserved or MemoryReservations()
        self.clock = clock
        self.owners = Owners()
        self.mutes = Penalties(clock)
        self.bans = Penalties(clock)
        #: Bans of guests by address: a guest can change nick, not so easily address.
        self.address_bans = AddressBans(clock)
        self.direct = DirectMessages(history, clock)
        self.typing = TypingRelay(clock)
        #: Actions taken (kick, mute, ban, delete, owner) and refusals (forbidden,
        #: bad_token, nick_reserved, muted, banned), for /metrics.
        self.counts: Counter[str] = Counter()

    @classmethod
    def from_config(cls, config: Config, clock: Callable[[], float] = time.time) -> Moderation:
        tokens = None
        if config.token_secret_file is not None:
            tokens = Tokens.from_file(config.token_secret_file)
            tokens.clock = clock
        return cls(
            tokens=tokens,
            require_token=config.require_token,
            history=config.history,
            clock=clock,
        )

    # -- identity -----------------------------------------------------------------

    def admit(self, session: Session, hello: m.Hello) -> None:
        """Check a hello's token (or its absence) and seat the session; nothing else changes."""
        if hello.token is None:
            if self.require_token:
                self.counts["token_required"] += 1
                raise m.ProtocolError("token_required", "this server admits token holders only")
            session.seat = GUEST
            return
        if self.tokens is None:
            self.counts["bad_token"] += 1
            raise m.ProtocolError("bad_token", "this server does not accept tokens")
        try:
            role = self.tokens.verify(hello.token, hello.nick)
        except m.ProtocolError:
            self.counts["bad_token"] += 1
            raise
        session.seat = Seat(role, nick_key(hello.nick))

    def may_take(self, session: Session, key: str) -> None:
        """Refuse a nick that is reserved for someone else, or a token holder's change of nick."""
        seat = session.seat
        if seat.key:
            if key != seat.key:
                raise m.ProtocolError("forbidden", "your token is for another nick")
            return
        if self.reserved.is_reserved(key):
            self.counts["nick_reserved"] += 1
            raise m.ProtocolError("nick_reserved", "this nick belongs to a token holder")

    def outranks(self, session: Session, holder: Session) -> bool:
        """Whether ``session``, holding a token for the nick, takes it from a guest using it."""
        return bool(session.seat.key) and holder.seat is GUEST

    def greeted(self, session: Session, welcome: str) -> str:
        """The session's nick is its own now: reserve it, and say so in ``welcome``."""
        seat = session.seat
        if seat.key:
            self.reserved.reserve(seat.key)
        return replies.encode_role(welcome, seat.role.value, bool(seat.key))

    # -- rooms ----------------------------------------------------------------------

    def may_join(self, chat: Venue, session: Session, name: str) -> None:
        """Refuse a banned session; make a token holder who creates a room its owner."""
        left = self.bans.remaining(name, session.key)
        if not left and session.seat is GUEST:
            left = self.address_bans.remaining(name, session.connection.address)
        if left:
            self.counts["banned"] += 1
            raise m.ProtocolError("banned", f"you are banned from {name} for {left} more seconds")
        seat = session.seat
        if seat.key and name not in chat.rooms and name != m.DEFAULT_ROOM:
            # With a broker, only once the room's load shows that no node has it.
            relay = chat.relay
            self.owners.found(name, seat.key, session.nick, wait=relay is not None and relay.up)

    def refuses_plain(self, session: Session) -> bool:
        """Whether a plain client comes from an address banned from the lobby: it is closed
        (1008, as when it was banned), having no other way to learn it."""
        address = session.connection.address
        left = self.address_bans.remaining(m.DEFAULT_ROOM, address)
        if left:
            self.counts["banned"] += 1
            log.info("refused a plain client from %s: banned for %ds", address, left)
            session.close(1008, "banned from the lobby")
        return bool(left)

    def may_post(self, session: Session, room: str, cid: str | None = None) -> None:
        left = self.mutes.remaining(room, session.key)
        if left:
            self.counts["muted"] += 1
            raise m.ProtocolError("muted", f"you are muted in {room} for {left} more seconds", cid)
        self.typing.posted(room, session.key)  # its message ends its notice on every page

    def may_moderate(self, session: Session, room: str) -> bool:
        seat = session.seat
        if seat.role is Role.OPERATOR:
            return True
        return bool(seat.key) and self.owners.holds(room, seat.key)

    # -- moderation messages ------------------------------------------------------------

    def handle(self, chat: Venue, session: Session, message: m.Extra) -> None:
        if isinstance(message, m.Typing):
            self.typing.relay(chat, session, message.room)
        elif isinstance(message, m.Direct):
            self.direct.send(chat, session, message)
        elif isinstance(message, m.DirectHistory):
            self.direct.history(chat, session, message.peer)
        elif isinstance(message, m.Owner):
            self._owner(chat, session, message)
        elif not self.may_moderate(session, message.room):
            self._forbidden(session, type(message).__name__.lower(), message.room)
        elif isinstance(message, m.Delete):
            self._delete(chat, session, message)
        else:
            self._moderate(chat, session, message)

    def _forbidden(self, session: Session, action: str, room: str) -> None:
        self.counts["forbidden"] += 1
        log.info("refused %s in %s by %s: not a moderator", action, room, session.nick)
        raise m.ProtocolError("forbidden", f"you may not moderate {room}")

    def _done(self, action: str, session: Session, whom: str, room: str, detail: str) -> None:
        self.counts[action] += 1
        log.info("%s %s in %s by %s%s", action, whom, room, session.nick, detail)

    def _moderate(self, chat: Venue, session: Session, message: m.Moderate) -> None:
        key = nick_key(message.nick)
        target = chat.nicks.get(key)
        room = chat.rooms.get(message.room)
        present = target is not None and room is not None and target.rooms.get(room.name) is room
        relay = chat.relay if chat.relay is not None and chat.relay.up else None
        # With a broker the target may be in the room on another node.
        elsewhere = room is not None and any(nick_key(nick) == key for nick in room.remote)
        if message.action == "kick" and not (present or elsewhere):
            raise m.ProtocolError("no_such_nick", f"{message.nick} is not in {message.room}")
        detail = f" for {message.seconds}s" if message.action != "kick" else ""
        reason = f": {message.reason}" if message.reason else ""
        self._done(message.action, session, message.nick, message.room, detail + reason)
        self.enforce(chat, message, session.nick)
        if room is None or session.rooms.get(room.name) is not room:
            chat.send(session, _told(message, session.nick))  # the moderator hears it anyway
        if relay is not None:
            relay.moderate(message, session.nick)  # every other node enforces it too

    def enforce(self, chat: Venue, message: m.Moderate, by: str) -> None:
        """Apply a kick, mute or ban on this node (taken here, or on another node):
        the penalty, the room told, the target removed if it is here."""
        key = nick_key(message.nick)
        target = chat.nicks.get(key)
        if message.action == "mute":
            self.mutes.set(message.room, key, message.seconds)
        elif message.action == "ban":
            self.bans.set(message.room, key, message.seconds)
            address = _guest_address(target)
            if address is not None or not message.seconds:  # a lift frees the address too
                self.address_bans.set(message.room, key, address, message.seconds)
            relay = chat.relay
            if address is not None and message.seconds and relay is not None and relay.up:
                # Only this node knows the address. Published before the guest's leave, on
                # the room's channel: a node that has seen the leave refuses the address.
                banned = dataclasses.replace(message, action="address", reason=None)
                relay.moderate(banned, by, address)
        room = chat.rooms.get(message.room)
        if room is None:
            return
        # The target hears it too, before it leaves: that is how it learns why.
        chat.hub.broadcast(frames.message(_told(message, by)), room.v1)
        removes = message.action == "kick" or (message.action == "ban" and message.seconds > 0)
        if removes and target is not None and target.rooms.get(room.name) is room:
            self._remove(chat, target, room.name)

    def _tell(self, chat: Venue, session: Session, name: str, text: str) -> None:
        """Tell a room what a moderator did; the moderator hears it even from outside."""
        room = chat.rooms.get(name)
        if room is not None:
            chat.hub.broadcast(frames.message(text), room.v1)
        if room is None or session.rooms.get(name) is not room:
            chat.send(session, text)

    def _remove(self, chat: Venue, target: Session, name: str) -> None:
        room = target.rooms[name]
        if target.plain:
            # A plain client lives in the lobby only and cannot rejoin by itself.
            target.close(1008, "removed by a moderator")
            return
        chat.exit_room(target, room)

    def _delete(self, chat: Venue, session: Session, message: m.Delete) -> None:
        room = chat.rooms.get(message.room)
        if room is None or not room.history.delete(message.id):
            raise m.ProtocolError("no_such_message", f"no message {message.id} in {message.room}")
        self._done("delete", session, f"message {message.id}", room.name, "")
        self._tell(
            chat, session, room.name, replies.encode_deleted(room.name, message.id, session.nick)
        )
        if chat.relay is not None and chat.relay.up:
            # Out of the shared history too, and out of every other node's.
            chat.relay.delete(room.name, message.id, session.nick)

    def deleted(self, chat: Venue, name: str, id: int, by: str) -> None:
        """Another node deleted message ``id`` of room ``name``."""
        room = chat.rooms.get(name)
        if room is not None:
            room.history.delete(id)
            # Told even if this node's history had dropped it: clients may still show it.
            chat.hub.broadcast(frames.message(replies.encode_deleted(name, id, by)), room.v1)

    def _owner(self, chat: Venue, session: Session, message: m.Owner) -> None:
        if session.seat.role is not Role.OPERATOR:
            self._forbidden(session, "owner", message.room)
        self.owners.set(message.room, nick_key(message.nick), message.owner)
        self._done("owner", session, message.nick, message.room, f" = {message.owner}")
        told = replies.encode_owner(message.room, message.nick, message.owner, session.nick)
        self._tell(chat, session, message.room, told)
        if chat.relay is not None and chat.relay.up:  # every node's owners are the same
            grant = m.Moderate("owner", message.room, message.nick, int(message.owner), None)
            chat.relay.moderate(grant, session.nick)


def _guest_address(target: Session | None) -> str | None:
    """The address a ban of ``target`` holds too: a guest's, here."""
    return target.connection.address if target is not None and target.seat is GUEST else None


def _told(message: m.Moderate, by: str) -> str:
    """What a room is told of a kick, mute or ban."""
    return replies.encode_moderated(
        message.action, message.room, message.nick, by, message.seconds, message.reason
    )
