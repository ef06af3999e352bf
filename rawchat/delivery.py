"""A chat message's way to a room: numbered, recorded, encoded once, fanned out. No I/O.

Every message is encoded once per representation: one JSON text for the room's
rawchat.v1 members (plus one copy carrying the sender's ``cid`` for the sender,
its acknowledgement), and the verbatim text for the room's plain members. Those
frames are then fanned out unchanged by the hub; nothing here is done per
recipient.

With a broker, a message is not delivered when it is said: it goes to the broker,
which numbers it and brings it back to every node in one order, this one
included (`echoed`, then `deliver`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from rawchat import frames, replies
from rawchat.hub import Hub, Outbox
from rawchat.rooms import Relay, Room, Session

#: Who sent a message that went through the broker: its outbox, and its cid if any.
Sender = tuple[Outbox, str | None]


class Delivery:
    """Publishes what sessions say in their rooms and delivers it to the members."""

    def __init__(self, hub: Hub, clock: Callable[[], float]) -> None:
        self.hub = hub
        self.clock = clock
        #: The broker, when there is one (set through Chat.relay).
        self.relay: Relay | None = None
        #: Messages published through the relay and not seen back from it yet:
        #: token -> their sender, to acknowledge them with their cid when they come back.
        self.awaiting_echo: dict[int, Sender] = {}
        self._tokens = itertools.count(1)

    def publish(self, session: Session, room: Room, text: str, cid: str | None) -> None:
        """``session`` says ``text`` in ``room``: deliver it, or hand it to the broker."""
        ts = self.clock()
        relay = self.relay
        if relay is not None and relay.up:
            # The broker numbers the message and brings it back to every node,
            # this one included, in one order: delivery happens then.
            token = next(self._tokens)
            self.awaiting_echo[token] = (session.outbox, cid)
            relay.publish(room.name, ts, session.nick, text, token)
            return
        self.deliver(room, room.last_id + 1, ts, session.nick, text, (session.outbox, cid))

    def publish_plain(self, room: Room, data: str | bytes) -> None:
        """What only plain members can see (binary data, blank text): verbatim, to them.
        Binary data goes to the other nodes' plain members too; it is not kept."""
        self.hub.broadcast(frames.message(data), room.plain)
        if isinstance(data, bytes) and self.relay is not None and self.relay.up:
            self.relay.publish_binary(room.name, data)

    def echoed(self, token: int) -> Sender | None:
        """The sender of a message published with ``token``, now back from the relay
        (or delivered without it): it is no longer awaited, whatever becomes of it."""
        return self.awaiting_echo.pop(token, None)

    def deliver(
        self,
        room: Room,
        id: int,
        ts: float,
        nick: str,
        text: str,
        sender: Sender | None = None,
    ) -> None:
        """Record message ``id`` in the room's history and fan it out to its members."""
        if not room.v1:
            # No JSON to send: the message is encoded if a v1 client joins for it.
            room.history.append(id, ts, nick, text, None)
        else:
            encoded = replies.encode_msg(room.name, id, ts, nick, text)
            room.history.append(id, ts, nick, text, encoded)
            if sender is None or sender[1] is None:
                self.hub.broadcast(frames.message(encoded), room.v1)
            else:
                # The sender's copy carries its cid: that is its acknowledgement.
                self.hub.broadcast(frames.message(encoded), room.v1, skip=sender[0])
                copy = replies.encode_msg(room.name, id, ts, nick, text, sender[1])
                self.hub.send(sender[0], frames.message(copy))
        if room.plain:
            self.hub.broadcast(frames.message(text), room.plain)
