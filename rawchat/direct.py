"""Direct messages between two users, and typing indicators. No I/O.

A direct message is a ``msg`` addressed ``"to"`` a nick instead of a room. It reaches the
two people only: the recipient, and the sender as its acknowledgement (with its ``cid``).
It is kept, for those two only, when both hold tokens for their nicks: a guest's nick is
free again when it disconnects, and whoever takes it next must not read its messages.

Typing indicators follow IRCv3's ``+typing``: never stored, and coalesced to at most one
per user and room every `TYPING_INTERVAL` seconds; a client shows one for
`TYPING_EXPIRES` seconds unless another comes.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from rawchat import frames, replies
from rawchat import messages as m
from rawchat.identity import nick_key
from rawchat.rooms import Letter

if TYPE_CHECKING:
    from rawchat.rooms import Session, Venue

#: At most one typing notice per user and room this often (seconds).
TYPING_INTERVAL = 3.0
#: How long a client shows a typing notice (documented for clients; the server keeps none).
TYPING_EXPIRES = 6.0
#: Typing times kept before the stale ones are swept.
TYPING_SWEEP_AT = 4096
#: Conversations kept (between token holders); the oldest is forgotten past this.
MAX_CONVERSATIONS = 100_000


class DirectMessages:
    """Delivers direct messages and keeps those between token holders."""

    def __init__(self, history: int, clock: Callable[[], float]) -> None:
        #: Messages kept per conversation.
        self.keep = history
        self.clock = clock
        #: (key, key) in sorted order -> encoded messages, oldest first.
        self.kept: dict[tuple[str, str], deque[str]] = {}
        self._ids = itertools.count(1)

    def send(self, chat: Venue, session: Session, message: m.Direct) -> None:
        key = nick_key(message.to)
        target = chat.nicks.get(key)
        if target is session:
            raise m.ProtocolError("no_such_nick", "write to someone else", message.cid)
        # One id counter for all conversations: ids grow, per conversation with gaps.
        id, ts = next(self._ids), self.clock()
        relay = chat.relay
        if target is None and relay is not None and relay.up:
            # Perhaps on another node: the broker finds it, and says whether it did.
            letter = Letter(
                id, ts, session.nick, message.to, message.text, key, bool(session.seat.key)
            )
            relay.direct(
                letter, lambda reached: self._sent(chat, session, letter, message.cid, reached)
            )
            return
        if target is None or target.plain or not target.greeted:
            raise m.ProtocolError("no_such_nick", f"nobody is called {message.to}", message.cid)
        encoded = replies.encode_direct(id, ts, session.nick, target.nick, message.text)
        chat.hub.send(target.outbox, frames.message(encoded))
        own = encoded
        if message.cid is not None:
            own = replies.encode_direct(
                id, ts, session.nick, target.nick, message.text, message.cid
            )
        chat.hub.send(session.outbox, frames.message(own))
        if session.seat.key and target.seat.key:
            self._keep(session.seat.key, target.seat.key, encoded)

    def _sent(
        self, chat: Venue, session: Session, letter: Letter, cid: str | None, reached: int
    ) -> None:
        """The broker's word on a direct message for another node: 0 nobody holds the
        nick, 1 a guest does, 2 a token holder does."""
        if not reached:
            error = replies.encode_error("no_such_nick", f"nobody is called {letter.to}", cid)
            chat.send(session, error)
            return
        text = letter.text
        chat.send(
            session, replies.encode_direct(letter.id, letter.ts, letter.nick, letter.to, text, cid)
        )
        if reached == 2 and session.seat.key:
            encoded = replies.encode_direct(letter.id, letter.ts, letter.nick, letter.to, text)
            self._keep(session.seat.key, letter.key, encoded)

    def received(self, chat: Venue, letter: Letter) -> None:
        """A direct message from another node, for someone here (if still here)."""
        target = chat.nicks.get(letter.key)
        if target is None or target.plain or not target.greeted:
            return  # gone since the broker looked: the sender was answered already
        encoded = replies.encode_direct(letter.id, letter.ts, letter.nick, target.nick, letter.text)
        chat.hub.send(target.outbox, frames.message(encoded))
        if letter.kept and target.seat.key:
            self._keep(nick_key(letter.nick), target.seat.key, encoded)

    def _keep(self, one: str, other: str, encoded: str) -> None:
        """Keep a message between two token holders (named by nick key)."""
        if not self.keep:
            return
        pair = (one, other) if one <= other else (other, one)
        kept = self.kept.get(pair)
        if kept is None:
            if len(self.kept) >= MAX_CONVERSATIONS:
                del self.kept[next(iter(self.kept))]
            kept = self.kept[pair] = deque(maxlen=self.keep)
        kept.append(encoded)

    def history(self, chat: Venue, session: Session, peer: str) -> None:
        """Answer ``direct``: the kept messages with ``peer`` (none for a guest)."""
        kept: deque[str] | tuple[()] = ()
        if session.seat.key:
            pair = sorted((session.seat.key, nick_key(peer)))
            kept = self.kept.get((pair[0], pair[1]), ())
        chat.send(session, replies.encode_direct_history(peer, kept))


class TypingRelay:
    """Relays typing notices to a room, at most one per user and room per interval."""

    def __init__(self, clock: Callable[[], float], interval: float = TYPING_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        #: (room, nick key) -> when its last notice went out.
        self._last: dict[tuple[str, str], float] = {}

    def posted(self, room: str, key: str) -> None:
        """The user's message reached ``room``: pages drop their notice when it arrives,
        so the user's next notice must go out at once, not an interval later."""
        self._last.pop((room, key), None)

    def relay(self, chat: Venue, session: Session, name: str) -> None:
        room = session.rooms.get(name)
        if room is None:
            raise m.ProtocolError("not_in_room", f"you are not in {name}")
        now = self.clock()
        slot = (name, session.key)
        last = self._last.get(slot)
        if last is not None and now - last < self.interval:
            return  # coalesced: the room heard this user typing less than an interval ago
        if len(self._last) >= TYPING_SWEEP_AT:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[slot] = now
        frame = frames.message(replies.encode_typing(name, session.nick))
        chat.hub.broadcast(frame, room.v1, skip=session.outbox)
