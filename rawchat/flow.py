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
client itself. Shaped publishers whose timers fall due take turns, round robin.

When the event loop as a whole falls behind (rawchat.overload measures its
lag), or most readers do at once (more than half of them past the pressure
mark: what is published is more than they can read), every publisher gets the
same share: one that had ``share`` messages
handled in a read waits, held the same way, for its turn at one of the
monitor's ticks, behind the others that wait. A flood is then served a few
messages per turn, like any client, and honest publishers (a message or two per read) are
not held at all. Nothing is dropped, and nothing is counted per message but
the share (rawchat.inbound).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from rawchat.hub import Hub, Outbox
from rawchat.overload import OverloadMonitor

log = logging.getLogger("rawchat.flow")


class Publisher(Protocol):
    """A connection that can stop and resume handling what its client sends."""

    def hold(self) -> None:
        """Stop reading and handling what the client sends."""

    def take_turn(self) -> bool:
        """Handle what waits until held again (True) or none is left (it reads again)."""


class TurnQueue:
    """Publishers waiting for a turn, in order, served round robin one pass at a time.

    The set says who waits, the deque in which order: a publisher that goes
    away leaves the set only (O(1)), and its place in the deque is skipped.
    """

    __slots__ = ("_waiting", "_order")

    def __init__(self) -> None:
        self._waiting: set[Publisher] = set()
        self._order: deque[Publisher] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, publisher: Publisher) -> bool:
        return publisher in self._waiting

    def push(self, publisher: Publisher) -> None:
        if publisher not in self._waiting:
            self._waiting.add(publisher)
            self._order.append(publisher)

    def discard(self, publisher: Publisher) -> None:
        self._waiting.discard(publisher)

    def serve(self) -> None:
        """One turn each for those waiting as the pass begins.

        One that is held again during its turn is queued again behind the
        others and waits for the next pass: a pass never serves anyone twice.
        """
        order, waiting = self._order, self._waiting
        for _ in range(len(order)):
            publisher = order.popleft()
            if publisher in waiting:  # else gone since it was queued
                waiting.discard(publisher)
                publisher.take_turn()


class Backpressure:
    __slots__ = (
        "hub",
        "loop",
        "slow_timeout",
        "congested",
        "load",
        "_shaped",
        "_due",
        "_waiting",
        "_serving",
        "_was_overloaded",
        "_ticks",
        "readers",
        "holds",
        "waits",
        "read_turns",
    )

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop, slow_timeout: float) -> None:
        self.hub = hub
        self.loop = loop
        self.slow_timeout = slow_timeout
        #: Congested clients, each with the timer that evicts it if it stays so.
        self.congested: dict[Outbox, asyncio.TimerHandle] = {}
        #: Whether the loop keeps up; started with the server (see start).
        #: Publishers that had their share while overloaded: served at the next turn.
        self._waiting = TurnQueue()
        self.load = OverloadMonitor(
            loop.time,
            loop.call_later,
            on_tick=self._next_tick,
            waiting=self._waiting.__len__,
            behind=self._most_behind,
        )
        #: How many clients read broadcasts (the server sets it: its WebSockets).
        self.readers: Callable[[], int] = lambda: 0
        #: Shaped publishers, each with the timer that gives it its next turn.
        self._shaped: dict[Publisher, asyncio.TimerHandle] = {}
        #: Served at the next iteration: shaped publishers whose timer fell due,
        #: and readers that filled a whole read (see read_later).
        self._due = TurnQueue()
        self._serving = False
        self._was_overloaded = False
        self._ticks = 0
        #: Times a publisher was shaped (past --rate), and held for its turn
        #: while overloaded, since start.
        self.holds = 0
        self.waits = 0
        #: Times a reader that filled a whole read was read again next iteration.
        self.read_turns = 0

    def start(self) -> None:
        """Start watching the loop's lag (the server does; unit tests may not)."""
        self.load.start()

    def stop(self) -> None:
        self.load.stop()
        self._waiting.serve()  # nobody waits for ticks that no longer come

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

    def _most_behind(self) -> bool:
        """Whether more than half the readers (two at least) are congested at once."""
        behind = len(self.congested)
        return behind >= 2 and 2 * behind > self.readers()

    def _too_slow(self, box: Outbox) -> None:
        self.congested.pop(box, None)
        self.hub.evict(box, "slow_timeout")

    # -- turns --------------------------------------------------------------------------

    def shape(self, publisher: Publisher, delay: float) -> None:
        """Stop handling ``publisher``'s input for ``delay`` seconds, then give it turns."""
        if publisher in self._shaped:
            return
        publisher.hold()
        self.holds += 1
        self._shaped[publisher] = self.loop.call_later(delay, self._turn_due, publisher)

    def _turn_due(self, publisher: Publisher) -> None:
        if self._shaped.pop(publisher, None) is not None:
            self._serve_next(publisher)

    def read_later(self, publisher: Publisher) -> None:
        """``publisher`` filled a whole read and stopped reading: read it again next iteration.

        libuv reads a socket up to 32 times in one iteration while its reads
        fill the buffer: a flood would have the loop fan out 512 KiB of its
        messages before anyone else is read. Like asyncio's own loop, rawchat
        takes one read per connection per iteration.
        """
        if publisher not in self._waiting:
            self.read_turns += 1
            self._serve_next(publisher)

    def _serve_next(self, publisher: Publisher) -> None:
        self._due.push(publisher)
        if not self._serving:
            self._serving = True
            self.loop.call_soon(self._serve_due)

    def _serve_due(self) -> None:
        self._serving = False
        self._due.serve()

    def wait_turn(self, publisher: Publisher) -> None:
        """The loop is overloaded and ``publisher`` had its share: hold it until its turn."""
        if publisher in self._waiting or publisher in self._shaped:
            return
        publisher.hold()
        self.waits += 1
        self._waiting.push(publisher)

    def _next_tick(self) -> None:
        load = self.load
        if load.overloaded is not self._was_overloaded:
            self._was_overloaded = load.overloaded
            self._log_change()
        self._ticks += 1
        if load.overloaded and self._ticks % load.turn_ticks and not load.spare():
            return
        # Calm again, this pass releases everyone: with no share to count, a
        # turn handles all that waits and reading resumes.
        if self._waiting:
            self._waiting.serve()

    def _log_change(self) -> None:
        load = self.load
        if load.overloaded:
            if load.readers_behind:
                why = f"{len(self.congested)} of {self.readers()} clients behind on their reads"
            elif load.lag >= load.enter_lag:
                why = f"event loop {load.lag * 1000:.0f} ms late"
            else:
                why = f"event loop {load.busy:.0%} busy"
            log.warning(
                "%s: publishers take turns, %d messages every %.1f s",
                why,
                load.share,
                load.turn_ticks * load.interval,
                extra={
                    "event": "overloaded",
                    "lag_ms": round(load.lag * 1000, 1),
                    "busy": round(load.busy, 2),
                    "behind": len(self.congested),
                },
            )
        else:
            log.info(
                "event loop keeps up again after %.1f s calm: everyone reads freely",
                load.calm_needed * load.interval,
                extra={"event": "calm"},
            )

    def forget(self, publisher: Publisher) -> None:
        """``publisher`` is gone: no more turns for it."""
        timer = self._shaped.pop(publisher, None)
        if timer is not None:
            timer.cancel()
        self._due.discard(publisher)
        self._waiting.discard(publisher)
