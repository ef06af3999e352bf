"""A client's messages on their way in: assembly, size checks, the chat, then the rate.

Free of I/O: the connection hands each text or binary frame event in, and acts
on the :class:`Verdict` that comes back (a close, a hold by flow control).

Two limits may hold a client, neither drops a message: an operator's
``--rate`` (SHAPED), and, while the event loop is overloaded
(rawchat.overload), its share of each turn (TURN_OVER): after ``share``
messages in one read or turn, it waits behind the other publishers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from wsproto.events import BytesMessage, TextMessage

from rawchat.chat import Chat
from rawchat.config import Config
from rawchat.limits import TokenBucket
from rawchat.metrics import Counters
from rawchat.overload import OverloadMonitor
from rawchat.rooms import Session


class Verdict(enum.Enum):
    #: A fragment kept; the message is not whole yet.
    PENDING = enum.auto()
    #: Handed to the chat.
    DELIVERED = enum.auto()
    #: No session (the connection is closing): nothing to do.
    IGNORED = enum.auto()
    #: Handed to the chat, past --rate: reading waits ``Inbound.delay`` for a token.
    SHAPED = enum.auto()
    #: Handed to the chat; the loop is overloaded and the client had its share
    #: of this read or turn: reading waits for its next turn.
    TURN_OVER = enum.auto()
    #: Bigger than --max-message: close 1009.
    TOO_BIG = enum.auto()
    #: Shaped without a break for longer than --flood-timeout: close 4002.
    FLOODING = enum.auto()
    #: Binary from a rawchat.v1 client: close 1003.
    NOT_TEXT = enum.auto()


class Intake:
    """What the Inbound of every connection shares: where messages go, and the limits."""

    __slots__ = (
        "chat",
        "counters",
        "max_message",
        "rate",
        "burst",
        "flood_timeout",
        "load",
        "clock",
    )

    def __init__(
        self,
        chat: Chat,
        counters: Counters,
        config: Config,
        load: OverloadMonitor,
        clock: Callable[[], float],
    ) -> None:
        self.chat = chat
        self.counters = counters
        self.max_message = config.max_message
        self.rate = config.rate
        self.burst = config.burst
        self.flood_timeout = config.flood_timeout
        self.load = load
        self.clock = clock


class Inbound:
    """One connection's incoming messages."""

    __slots__ = (
        "intake",
        "max_message",
        "handled",
        "bucket",
        "shaped_since",
        "delay",
        "parts",
        "size",
    )

    def __init__(self, intake: Intake) -> None:
        #: Shared by every connection: one reference here, not seven.
        self.intake = intake
        #: --max-message, checked at every read: kept at hand.
        self.max_message = intake.max_message
        #: Messages handled since the connection's latest read or turn began
        #: (see new_turn): counted only while the loop is overloaded.
        self.handled = 0
        #: Per-connection message rate (--rate), made on the first message and
        #: dropped at a pong once full again.
        self.bucket: TokenBucket | None = None
        #: Since when the client has been shaped without a spare token (clock
        #: time), 0 while it keeps within its rate.
        self.shaped_since = 0.0
        #: After a SHAPED verdict: seconds until the bucket has a token again.
        self.delay = 0.0
        #: Fragments of the message being received, and their length so far.
        self.parts: list[Any] | None = None
        self.size = 0

    def receive(self, event: TextMessage | BytesMessage, session: Session | None) -> Verdict:
        data = event.data
        limit = self.max_message
        parts = self.parts
        if parts is None:
            if event.message_finished:
                # The common case, a message in one frame: no joining.
                return self._deliver(data, session)
            parts = self.parts = []
            self.size = 0
        # The parser refuses what the frame headers declare past the limit; this
        # bounds memory should that ever change. Characters, for text: the
        # exact byte count is checked once the message is whole.
        self.size += len(data)
        if self.size > limit:
            self.parts = None
            return Verdict.TOO_BIG
        parts.append(data)
        if not event.message_finished:
            return Verdict.PENDING
        self.parts = None
        joined: str | bytes = "".join(parts) if isinstance(data, str) else b"".join(parts)
        return self._deliver(joined, session)

    def rested(self) -> None:
        """The client is idle (a pong came): a bucket full again knows nothing; let it go."""
        bucket = self.bucket
        if bucket is not None and bucket.full(self.intake.clock()):
            self.bucket = None  # a new one is made full too

    def _deliver(self, data: str | bytes | bytearray, session: Session | None) -> Verdict:
        limit = self.max_message
        size = len(data)
        if isinstance(data, str) and size * 4 > limit and size <= limit:
            size = len(data.encode())
        if size > limit:
            return Verdict.TOO_BIG
        if session is None:
            return Verdict.IGNORED
        intake = self.intake
        intake.counters.messages_in += 1
        if session.plain:
            intake.chat.plain_message(session, data if isinstance(data, str) else bytes(data))
        elif isinstance(data, str):
            intake.chat.v1_message(session, data)
        else:
            return Verdict.NOT_TEXT
        verdict = self._spend_token() if intake.rate > 0 else Verdict.DELIVERED
        load = intake.load
        if load.overloaded and verdict is Verdict.DELIVERED:
            # Its share of the turn: a counter and a compare, nothing more per message.
            self.handled += 1
            if self.handled >= load.share:
                return Verdict.TURN_OVER
        return verdict

    def new_turn(self) -> None:
        """A read or a turn begins: while overloaded, ``share`` messages may be handled."""
        self.handled = 0

    def shaped_for(self) -> float:
        """How long the client has been over its rate without a break, in seconds."""
        return self.intake.clock() - self.shaped_since if self.shaped_since else 0.0

    def _spend_token(self) -> Verdict:
        """Count a handled message against --rate: past it, shape, never drop.

        Shaping stops reading until the next token: the messages already read
        wait in order, and what the client sends meanwhile waits in TCP.
        """
        intake = self.intake
        now = intake.clock()
        bucket = self.bucket
        if bucket is None:
            # Full, as one made at the upgrade would be by now.
            bucket = self.bucket = TokenBucket(intake.rate, intake.burst, now)
        self.delay = bucket.spend(now)
        if not self.delay:
            self.shaped_since = 0.0
            return Verdict.DELIVERED
        if not self.shaped_since:
            self.shaped_since = now
        elif intake.flood_timeout and now - self.shaped_since > intake.flood_timeout:
            return Verdict.FLOODING
        intake.counters.rate_limited += 1
        return Verdict.SHAPED
