"""Flow control: push back on senders while the fan-out is behind, evict who stays behind.

Two limits guard every client's write buffer:

* the **pressure mark** (``--max-buffer`` / 4, at most 64 KiB) is the
  transport's high-water mark. A client past it is *congested*. When a tenth or
  more of the clients are congested at once, the fan-out itself is behind (the
  server is offered more than it can deliver): every connection that publishes
  is held until enough of them have drained. Holding a publisher means reading
  nothing more from it (``pause_reading``) *and* handling none of the messages
  already read: they wait, in order, for its turns. A flood is thus
  slowed at its source, the way TCP itself would, instead of being queued or
  dropped, and clients that read as fast as the others are never evicted. A
  few congested clients among many are slow readers, not overload: they hold
  no one. (A client that *becomes* congested during an iteration holds every
  publisher until that iteration's flush, so that one large read cannot queue
  megabytes before anyone notices.)

  Held publishers get their waiting messages handled in turns, one message
  each, round robin, for as long as the fan-out keeps up: whoever was held
  waits as long as the others, instead of the first one released taking all
  the room there is. A publisher resumes reading once it has nothing waiting.
* ``--max-buffer`` is the hard cap enforced by the hub at queueing time: a
  client that would pass it is evicted at once.

A client that stays congested for ``slow_timeout`` seconds is not keeping up:
it is evicted as too slow, so it cannot hold the chat back for longer than that.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from rawchat.hub import Hub, Outbox


class Publisher(Protocol):
    """A connection that can stop and resume handling what its client sends."""

    def hold(self) -> None:
        """Stop reading and handling what the client sends."""

    def take_turn(self) -> bool:
        """Handle one waiting message; whether more wait (else it reads again)."""


#: Senders are held only while at least this share of the clients is behind:
#: then the server as a whole is behind, not a few slow readers.
BEHIND_SHARE = 0.1


class Backpressure:
    __slots__ = (
        "hub",
        "loop",
        "slow_timeout",
        "clients",
        "congested",
        "_held",
        "_turns",
        "_serving",
        "_overloaded",
        "holds",
    )

    def __init__(
        self,
        hub: Hub,
        loop: asyncio.AbstractEventLoop,
        slow_timeout: float,
        clients: Callable[[], int] = lambda: 1,
    ) -> None:
        self.hub = hub
        self.loop = loop
        self.slow_timeout = slow_timeout
        #: How many WebSocket clients there are, to tell a few laggards from overload.
        self.clients = clients
        #: Congested clients, each with the timer that evicts it if it stays so.
        self.congested: dict[Outbox, asyncio.TimerHandle] = {}
        self._held: dict[Publisher, None] = {}
        #: Released publishers with messages waiting, in the order of their turns.
        self._turns: deque[Publisher] = deque()
        self._serving = False
        #: Publishers were held because the fan-out as a whole was behind.
        self._overloaded = False
        #: Times a publisher was held since start.
        self.holds = 0
        # After a flush that relieved the pressure, the senders may go on,
        # unless some client's transport is still past its high-water mark.
        hub.after_pressure = self.release

    def congest(self, box: Outbox) -> None:
        """The client's buffer passed the pressure mark (its transport's pause_writing)."""
        if box not in self.congested:
            box.congested = True
            self.congested[box] = self.loop.call_later(self.slow_timeout, self._too_slow, box)

    def relieve(self, box: Outbox) -> None:
        """The client drained (resume_writing), or it is gone."""
        timer = self.congested.pop(box, None)
        if timer is None:
            return
        box.congested = False
        timer.cancel()
        self.release()

    def behind(self) -> bool:
        """Whether so many clients are congested that the fan-out itself is behind."""
        return len(self.congested) >= max(1.0, BEHIND_SHARE * self.clients())

    def release(self) -> None:
        """Let the held senders take turns once the fan-out has caught up."""
        if (self._held or self._turns) and not self.behind():
            if self._overloaded:
                self._overloaded = False
                self._restart_timers()
            self._turns.extend(self._held)
            self._held.clear()
            if not self._serving:
                self._serving = True
                self.loop.call_soon(self._serve)

    def _serve(self) -> None:
        """One waiting message per publisher in turn, until pressure or none wait."""
        self._serving = False
        turns, hub = self._turns, self.hub
        while turns:
            if hub.pressed or (self.congested and self.behind()):
                # The rest keep their places; the release after the flush
                # (or after the clients drained) serves them.
                return
            publisher = turns.popleft()
            if publisher.take_turn():
                turns.append(publisher)

    def _restart_timers(self) -> None:
        """Count the clients still behind as slow only from now on.

        While the whole fan-out was behind, every client was, through no
        fault of its own: a client that reads as fast as the others must not be
        evicted for it. A client that stays behind once the others have caught
        up is slow, and its ``slow_timeout`` runs from here.
        """
        call_later, timeout, too_slow = self.loop.call_later, self.slow_timeout, self._too_slow
        for box, timer in self.congested.items():
            timer.cancel()
            self.congested[box] = call_later(timeout, too_slow, box)

    def hold(self, publisher: Publisher) -> None:
        """Called after a connection published: hold it while the fan-out is behind."""
        overloaded = bool(self.congested) and self.behind()
        if not (overloaded or self.hub.pressed):
            return
        if overloaded:
            self._overloaded = True
        if publisher not in self._held:
            publisher.hold()
            self._held[publisher] = None
            self.holds += 1

    def forget(self, publisher: Publisher) -> None:
        if self._held.pop(publisher, None) is None and publisher in self._turns:
            self._turns.remove(publisher)

    def _too_slow(self, box: Outbox) -> None:
        self.hub.evict(box, "slow_timeout")
        self.relieve(box)  # resumes the held publishers if it was the last one behind
