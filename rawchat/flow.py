"""Flow control: push back on senders while the fan-out is behind, evict who stays behind.

Two limits guard every client's write buffer:

* the **pressure mark** (a quarter of ``--max-buffer``) is the transport's
  high-water mark. A client past it is *congested*. When a tenth or more of the
  clients are congested at once, the fan-out itself is behind (the server is
  offered more than it can deliver): every connection that publishes is held
  (``pause_reading``) until enough of them have drained. A flood is thus slowed
  at its source, the way TCP itself would, instead of being queued or dropped,
  and clients that read as fast as the others are never evicted. A few
  congested clients among many are slow readers, not overload: they hold no one.
  (Within one loop iteration, a sender whose messages push any client past
  the mark is held until the iteration's flush, so one read cannot queue
  megabytes.)
* ``--max-buffer`` is the hard cap enforced by the hub at queueing time: a
  client that would pass it is evicted at once.

A client that stays congested for ``slow_timeout`` seconds is not keeping up:
it is evicted as too slow, so it cannot hold the chat back for longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from rawchat.hub import Hub, Outbox


class Readable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...


#: Senders are held only while at least this share of the clients is behind:
#: then the server as a whole is behind, not a few slow readers.
BEHIND_SHARE = 0.1


class Backpressure:
    __slots__ = ("hub", "loop", "slow_timeout", "clients", "congested", "_held", "holds")

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
        self._held: dict[Readable, None] = {}
        #: Times a publisher was held since start.
        self.holds = 0
        # After a flush that relieved the pressure, the senders may go on,
        # unless some client's transport is still past its high-water mark.
        hub.after_pressure = self.release

    def congest(self, box: Outbox) -> None:
        """The client's buffer passed the pressure mark (its transport's pause_writing)."""
        if box not in self.congested:
            self.congested[box] = self.loop.call_later(self.slow_timeout, self._too_slow, box)

    def relieve(self, box: Outbox) -> None:
        """The client drained (resume_writing), or it is gone."""
        timer = self.congested.pop(box, None)
        if timer is None:
            return
        timer.cancel()
        self.release()

    def behind(self) -> bool:
        """Whether so many clients are congested that the fan-out itself is behind."""
        return len(self.congested) >= max(1.0, BEHIND_SHARE * self.clients())

    def release(self) -> None:
        """Resume the held senders once the fan-out has caught up."""
        if self._held and not self.behind():
            held, self._held = self._held, {}
            for transport in held:
                if not transport.is_closing():
                    transport.resume_reading()

    def hold(self, transport: Readable) -> None:
        """Called after a connection published: stop reading it while anyone is behind."""
        if (self.hub.pressed or (self.congested and self.behind())) and transport not in self._held:
            transport.pause_reading()
            self._held[transport] = None
            self.holds += 1

    def forget(self, transport: Readable) -> None:
        self._held.pop(transport, None)

    def _too_slow(self, box: Outbox) -> None:
        self.hub.evict(box, "slow_timeout")
        self.relieve(box)  # resumes the held publishers if it was the last one behind
