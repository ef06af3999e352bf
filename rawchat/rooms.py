"""Who is where: sessions (connected clients) and rooms, free of I/O.

A :class:`Room` holds its members (in arrival order, for ``members`` lists),
its fan-out targets (one set of outboxes per representation, so that a message
is encoded once for each), its history, and with a broker its members on other
nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from rawchat import messages as m
from rawchat.history import History
from rawchat.hub import Hub, Outbox
from rawchat.identity import GUEST, Seat


class Closable(Protocol):
    """The connection under a session (rawchat.connection.Connection)."""

    #: The client's address, as limits count it (guests are banned by address).
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
        #: What its hello proved: role and token (rawchat.moderation); guests share one.
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

    def claim(self, session: Session, then: Callable[[bool], None]) -> None:
        """Hold ``session``'s nick on every node; ``then(taken)`` once the broker answers."""

    def release(self, key: str) -> None: ...

    def moderate(self, action: m.Moderate, by: str, address: str | None = None) -> None:
        """A kick, mute or ban taken here, for every other node to enforce; or an owner
        granted (``seconds`` 1) or taken (0); or the ``address`` of a guest banned here."""

    def delete(self, room: str, id: int, by: str) -> None: ...

    def direct(self, letter: Letter, then: Callable[[int], None]) -> None:
        """Send a direct message to whichever node holds ``letter.key``; ``then(reached)``:
        0 nobody, 1 a guest, 2 a token holder."""


@dataclass(frozen=True, slots=True)
class Letter:
    """A direct message on its way to another node."""

    id: int
    ts: float
    nick: str
    to: str
    text: str
    #: The recipient's nick key.
    key: str
    #: Whether the sender holds a token (the message is kept when both do).
    kept: bool


class Venue(Protocol):
    """What moderation and direct messages ask of the chat (rawchat.chat.Chat)."""

    hub: Hub
    relay: Relay | None

    @property
    def nicks(self) -> Mapping[str, Session]:
        """Nick key -> the session holding it."""

    @property
    def rooms(self) -> Mapping[str, Room]: ...

    def send(self, session: Session, text: str) -> None: ...

    def exit_room(self, session: Session, room: Room) -> None: ...


class Room:
    __slots__ = ("name", "members", "v1", "plain", "history", "remote", "loaded", "waiting")

    def __init__(self, name: str, history: History) -> None:
        self.name = name
        #: Everyone present, in the order they arrived (for ``members`` lists).
        self.members: dict[Session, None] = {}
        #: The fan-out targets, one set per representation.
        self.v1: set[Outbox] = set()
        self.plain: set[Outbox] = set()
        self.history = history
        #: Members on other nodes (with a broker): nick -> node.
        self.remote: dict[str, str] = {}
        #: With a broker, a room's history and remote members come from Redis
        #: first; joins wait in ``waiting`` until they have.
        self.loaded = True
        self.waiting: list[tuple[Session, int | None, bool]] = []

    @property
    def last_id(self) -> int:
        return self.history.last_id

    def count(self) -> int:
        """Members here and, with a broker, on other nodes."""
        return len(self.members) + len(self.remote)

    def nicks(self, limit: int) -> list[str]:
        """At most ``limit`` member nicks, local ones first in arrival order."""
        nicks = [member.nick for _, member in zip(range(limit), self.members, strict=False)]
        if len(nicks) < limit:
            nicks += [nick for _, nick in zip(range(limit - len(nicks)), self.remote, strict=False)]
        return nicks
