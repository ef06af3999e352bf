"""The keepalive: one timer pings every WebSocket and asks the silent ones to close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Protocol

from wsproto.frame_protocol import CloseReason

from rawchat import frames
from rawchat.hub import Hub, Outbox

log = logging.getLogger("rawchat.keepalive")


class Pinged(Protocol):
    """What the keepalive asks of a connection (rawchat.connection.Connection)."""

    @property
    def outbox(self) -> Outbox | None: ...

    @property
    def peer(self) -> str: ...

    def expect_pong(self, deadline: float) -> None:
        """A ping went out: its pong is due by ``deadline`` unless one already is."""

    def pong_overdue(self, now: float, grace: float) -> bool:
        """Whether the pong is late. A held client's deadline moves ``grace`` on instead."""

    def close(self, code: int, reason: str = "") -> None: ...


class Keepalive:
    """Pings every WebSocket every ``interval`` and closes those that don't answer.

    One timer serves all connections, and the ping frame is the same bytes for
    everyone, so it goes out through the hub like any broadcast: a client too
    slow to take a two-byte ping is evicted like any other slow client.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        hub: Hub,
        websockets: Collection[Pinged],
        interval: float,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.hub = hub
        self.websockets = websockets
        self.interval = interval
        self.timeout = timeout
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._ping)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _ping(self) -> None:
        deadline = self.loop.time() + self.timeout
        outboxes: list[Outbox] = []
        for conn in self.websockets:
            outbox = conn.outbox
            if outbox is not None:
                conn.expect_pong(deadline)
                outboxes.append(outbox)
        self.hub.broadcast(frames.PING, outboxes)
        self.loop.call_at(deadline, self._check)
        self._handle = self.loop.call_later(self.interval, self._ping)

    def _check(self) -> None:
        now = self.loop.time()
        for conn in list(self.websockets):
            if conn.pong_overdue(now, self.timeout):
                log.debug("%s: no pong in time", conn.peer)
                conn.close(CloseReason.INTERNAL_ERROR, "ping timeout")
