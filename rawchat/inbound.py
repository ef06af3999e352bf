"""A client's messages on their way in: assembly, size and rate checks, then the chat.

Free of I/O: the connection hands each text or binary frame event in, and acts
on the :class:`Verdict` that comes back (a close, a hold by flow control).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from wsproto.events import BytesMessage, TextMessage

from rawchat.chat import Chat, Session
from rawchat.limits import TokenBucket
from rawchat.metrics import Counters


class Verdict(enum.Enum):
    #: A fragment kept; the message is not whole yet.
    PENDING = enum.auto()
    #: Handed to the chat.
    DELIVERED = enum.auto()
    #: No session (the connection is closing): nothing to do.
    IGNORED = enum.auto()
    #: Over the rate: dropped, and a v1 sender told so.
    DROPPED = enum.auto()
    #: Bigger than --max-message: close 1009.
    TOO_BIG = enum.auto()
    #: Over the rate more times in a row than the burst: close 4002.
    FLOODING = enum.auto()
    #: Binary from a rawchat.v1 client: close 1003.
    NOT_TEXT = enum.auto()


class Inbound:
    """One connection's incoming messages."""

    __slots__ = (
        "chat",
        "counters",
        "max_message",
        "rate",
        "burst",
        "clock",
        "bucket",
        "drops",
        "parts",
        "size",
    )

    def __init__(
        self,
        chat: Chat,
        counters: Counters,
        *,
        max_message: int,
        rate: float,
        burst: int,
        clock: Callable[[], float],
    ) -> None:
        self.chat = chat
        self.counters = counters
        self.max_message = max_message
        self.rate = rate
        self.burst = burst
        self.clock = clock
        #: Per-connection message rate limit, and messages dropped by it in a row.
        #: The bucket is made on the first message, and dropped at a pong once full again.
        self.bucket: TokenBucket | None = None
        self.drops = 0
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
        if bucket is not None and bucket.full(self.clock()):
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
        self.counters.messages_in += 1
        bucket = self.bucket
        if bucket is None and self.rate > 0:
            # Full, as one made at the upgrade would be by now.
            bucket = self.bucket = TokenBucket(self.rate, self.burst, self.clock())
        if bucket is not None and not bucket.take(self.clock()):
            return self._over_rate(session, data)
        self.drops = 0
        if session.plain:
            self.chat.plain_message(session, data if isinstance(data, str) else bytes(data))
        elif isinstance(data, str):
            self.chat.v1_message(session, data)
        else:
            return Verdict.NOT_TEXT
        return Verdict.DELIVERED

    def _over_rate(self, session: Session, data: str | bytes | bytearray) -> Verdict:
        """Drop one message over the rate; a client that keeps flooding is closed."""
        self.counters.rate_limited += 1
        self.drops += 1
        if self.drops > self.burst:
            return Verdict.FLOODING
        if not session.plain and isinstance(data, str):
            self.chat.refuse(session, "rate_limited", "slow down: message dropped", data)
        return Verdict.DROPPED
