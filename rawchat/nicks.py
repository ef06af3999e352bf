"""Who holds which nick: unique on this node and, with a broker, on every node. No I/O.

Nicks are compared by key (NFKC + casefold, rawchat.identity), so "Ann" and "aNN"
are one nick, and look-alikes mixing scripts are refused. Reserved nicks and the
right of a token holder to take its nick back from a guest are moderation's to
say (rawchat.moderation).

With a broker, a claim is granted here at once and then put to the broker, which
answers whether another node holds the nick: a hello waits for that answer
before its welcome; a rename that loses makes its session a guest again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from rawchat import frames, identity, replies
from rawchat import messages as m
from rawchat.hub import Hub
from rawchat.moderation import Moderation
from rawchat.presence import Presence
from rawchat.rooms import Relay, Session

#: What a nick claim is told once the broker answers: whether another node holds the nick.
Answer = Callable[[bool], None]


class Nicks:
    """The nicks held on this node, and the guest nicks handed out."""

    def __init__(self, hub: Hub, moderation: Moderation, presence: Presence) -> None:
        self.hub = hub
        self.moderation = moderation
        self.presence = presence
        #: Nick key -> the session holding it.
        self.holders: dict[str, Session] = {}
        #: Numbers guest nicks (the broker gives each node its own block).
        self.guests = itertools.count(1)
        #: The broker, when there is one (set through Chat.relay).
        self.relay: Relay | None = None

    def guest_nick(self) -> str:
        """A guest nick that nobody holds here and that no token holder reserved."""
        nick = f"guest-{next(self.guests)}"
        while nick in self.holders or self.moderation.reserved.is_reserved(nick):
            nick = f"guest-{next(self.guests)}"
        return nick

    def holds(self, session: Session) -> bool:
        """Whether ``session`` still holds the nick it claimed last."""
        return self.holders.get(session.key) is session

    def claim(self, session: Session, nick: str, then: Answer | None = None) -> None:
        """Give ``nick`` to ``session``, or raise a ProtocolError saying why not.

        ``then`` hears whether another node holds it (at once without a broker);
        without ``then``, a nick another node holds is given up for a guest nick.
        """
        identity.check_nick(nick)  # no look-alike nicks
        key = identity.nick_key(nick)  # NFKC + casefold
        self.moderation.may_take(session, key)  # reserved nicks
        holder = self.holders.get(key)
        if holder is not None and holder is not session:
            if not self.moderation.outranks(session, holder):
                raise m.ProtocolError("nick_taken", f"{nick} is taken")
            # The nick's token holder takes it back from a guest using it.
            self.rename(holder, self.guest_nick())
        if session.key and session.key != key:
            del self.holders[session.key]
            if self.relay is not None and self.relay.up:
                self.relay.release(session.key)
        self.holders[key] = session
        session.nick = nick
        session.key = key
        if self.relay is not None and self.relay.up:  # and on every node: the broker says
            self.relay.claim(session, then or (lambda taken: self._taken(session, nick, taken)))
        elif then is not None:
            then(False)

    def _taken(self, session: Session, nick: str, taken: bool) -> None:  # yields to another node
        if taken and session.nick == nick:
            self.rename(session, self.guest_nick())
            if not session.plain:
                error = replies.encode_error("nick_taken", f"{nick} is taken")
                self.hub.send(session.outbox, frames.message(error))

    def rename(self, session: Session, nick: str) -> None:
        """``session`` takes ``nick``; its rooms hear of it."""
        old = session.nick
        if nick == old:
            return
        self.claim(session, nick)
        for room in session.rooms.values():
            self.presence.rename(room, old, nick)
            if self.relay is not None and self.relay.up:
                self.relay.presence(room.name, "nick", nick, old)

    def forfeit(self, session: Session) -> None:
        """Another node holds the nick ``session`` claimed: it holds none now."""
        del self.holders[session.key]
        session.key = session.nick = ""

    def release(self, session: Session) -> None:
        """``session`` is gone: its nick is free, here and (with a broker) everywhere."""
        if session.key and self.holders.get(session.key) is session:
            del self.holders[session.key]
            if self.relay is not None and self.relay.up:  # before the leave: see docs/broker.md
                self.relay.release(session.key)
