"""Flow control: shape senders over an operator's --rate, evict the readers who fall behind.

Nobody is held for somebody else. A client that reads slowly pays alone:

* ``--max-buffer`` is the hard cap enforced by the hub at queueing time: a
  client that already owes more than that when a frame comes is evicted.
* a client whose transport stays past the pressure mark (its high-water mark)
  for ``slow_timeout`` seconds is evicted as too slow.

Publishers are never held for a slow reader: an earlier rule held every
publisher while a tenth of the clients were congested, and in a room of four one
stalled reader froze the other three for seconds.

A connection that sends faster than an explicit ``--rate`` is *shaped*: its
messages are not dropped. Reading from it stops (``pause_reading``), the
messages already read wait in order, and a timer gives it its next turn when a
token is there again; what it sends meanwhile waits in TCP, slowing the
client itself. Shaped publishers whose timers fall due take turns, one message
each, round robin.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from rawchat.hub import Hub, Outbox


class Publisher(Protocol):
    """A connection that can stop and resume handling what its client sends."""

    def hold(self) -> None:
        """Stop reading and handling what the client sends."""

    def take_turn(self) -> bool:
        """Handle one waiting message; whether more wait (else it reads again)."""


class Backpressure:
    __slots__ = (
        "hub",
        "loop",
        "slow_timeout",
        "congested",
        "_shaped",
        "_queued",
        "_turns",
        "_serving",
        "holds",
    )

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop, slow_timeout: float) -> None:
        self.hub = hub
        self.loop = loop
        self.slow_timeout = slow_timeout
        #: Congested clients, each with the timer that evicts it if it stays so.
        self.congested: dict[Outbox, asyncio.TimerHandle] = {}
        #: Shaped publishers, each with the timer that gives it its next turn.
        self._shaped: dict[Publisher, asyncio.TimerHandle] = {}
        #: Publishers waiting for a turn: the set says who, the deque in which order.
        #: A publisher that goes away leaves the set only (O(1)); its place in the
        #: deque is skipped when its turn comes.
        self._queued: dict[Publisher, None] = {}
        self._turns: deque[Publisher] = deque()
        self._serving = False
        #: Times a publisher was shaped since start.
        self.holds = 0

    # -- slow readers ---------------------------------------------------------------

    def congest(self, box: Outbox) -> None:
        """The client's buffer passed the pressure mark (its transport's pause_writing)."""
        if box not in self.congested:
            self.congested[box] = self.loop.call_later(self.slow_timeout, self._too_slow, box)

    def relieve(self, box: Outbox) -> None:
        """The client drained (resume_writing), or it is gone."""
        timer = self.congested.pop(box, None)
        if timer is not None:
            timer.cancel()

    def _too_slow(self, box: Outbox) -> None:
        self.congested.pop(box, None)
        self.hub.evict(box, "slow_timeout")

    # -- shaping ----------------------------------------------------------------------

    def shape(self, publisher: Publisher, delay: float) -> None:
        """Stop handling ``publisher``'s input for ``delay`` seconds, then give it turns."""
        if publisher in self._shaped:
            return
        publisher.hold()
        self.holds += 1
        self._shaped[publisher] = self.loop.call_later(delay, self._turn_due, publisher)

    def _turn_due(self, publisher: Publisher) -> None:
        if self._shaped.pop(publisher, None) is None:
            return
        self._queued[publisher] = None
        self._turns.append(publisher)
        if not self._serving:
            self._serving = True
            self.loop.call_soon(self._serve)

    def _serve(self) -> None:
        """One waiting message per publisher in turn, until none wait or all are shaped."""
        self._serving = False
        turns, queued, shaped = self._turns, self._queued, self._shaped
        while turns:
            publisher = turns.popleft()
            if publisher not in queued:  # gone since it was queued
                continue
            if publisher.take_turn() and publisher not in shaped:
                turns.append(publisher)
            else:
                del queued[publisher]

    def forget(self, publisher: Publisher) -> None:
        """``publisher`` is gone: no more turns for it."""
        timer = self._shaped.pop(publisher, None)
        if timer is not None:
            timer.cancel()
        self._queued.pop(publisher, None)
