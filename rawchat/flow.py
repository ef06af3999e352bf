"""Flow control: push back on senders while the fan-out is behind, evict who stays behind.

Two limits guard every client's write buffer:

* the **pressure mark** (a quarter of ``--max-buffer``) is the transport's
  high-water mark. A client past it is *congested*. While any client is
  congested, every connection that publishes a message is held: the server
  stops reading from it (``pause_reading``) until all congested clients have
  drained below the low-water mark. A flood is thus slowed at its source, the
  way TCP itself would, instead of being queued or dropped: clients that read
  as fast as the others catch up within milliseconds and are never evicted.
* ``--max-buffer`` is the hard cap enforced by the hub at queueing time: a
  client that would pass it is evicted at once.

A client that stays congested for ``slow_timeout`` seconds is not keeping up
with the others: it is evicted as too slow, so it cannot hold the chat back
for longer than that.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from rawchat.hub import Hub, Outbox


class Readable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...


class Backpressure:
    __slots__ = ("hub", "loop", "slow_timeout", "congested", "_held", "holds")

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop, slow_timeout: float) -> None:
        self.hub = hub
        self.loop = loop
        self.slow_timeout = slow_timeout
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

    def release(self) -> None:
        """Resume the held senders once nobody is behind any more."""
        if not self.congested and self._held:
            held, self._held = self._held, {}
            for transport in held:
                if not transport.is_closing():
                    transport.resume_reading()

    def hold(self, transport: Readable) -> None:
        """Called after a connection published: stop reading it while anyone is behind."""
        if (self.congested or self.hub.pressed) and transport not in self._held:
            transport.pause_reading()
            self._held[transport] = None
            self.holds += 1

    def forget(self, transport: Readable) -> None:
        self._held.pop(transport, None)

    def _too_slow(self, box: Outbox) -> None:
        self.hub.evict(box, "slow_timeout")
        self.relieve(box)  # resumes the held publishers if it was the last one behind
