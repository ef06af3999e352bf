"""The hub: encode-once fan-out with per-iteration coalescing and slow-client eviction.

Every WebSocket connection owns an :class:`Outbox`. A broadcast appends the one
shared frame to each recipient's outbox; the first append in an event-loop
iteration also puts the outbox on the hub's dirty list and, if needed, schedules
one ``flush`` with ``call_soon``. The flush writes each dirty outbox's frames
with a single ``transport.write``: whole frames back to back, so the client
still sees one message per frame, but the per-write overhead of the event loop
is paid once per client per iteration instead of once per message. On 1,000
clients that is the difference between tens of thousands and millions of
deliveries per second.

Eviction rule: before queueing, the hub adds the frame's size to what the
client already owes (the transport's write buffer, read once per iteration,
plus the frames queued since). If that would pass ``max_buffer`` the client is
evicted instead: the hub stops queueing to it and calls its ``on_evict``. A
client that stops reading therefore costs at most ``max_buffer`` bytes, and the
broadcast never waits for it.

No I/O happens here beyond ``transport.write``; no awaits, tasks or per-recipient
encoding happen anywhere in the fan-out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol


class WriteTransport(Protocol):
    """The two transport methods the hub relies on."""

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class Outbox:
    """What the hub knows about one recipient."""

    __slots__ = ("transport", "frames", "owed", "peak", "congested", "on_evict")

    def __init__(self, transport: WriteTransport, on_evict: Callable[[], None]) -> None:
        self.transport = transport
        #: Frames queued during this loop iteration. The one list lives as long
        #: as the client and is emptied at each flush: a list made for every
        #: recipient of every message kept Python's collector busy (at 1,000
        #: clients, a full collection every 130 messages, inside the fan-out).
        self.frames: list[bytes] = []
        #: Bytes this client owes while frames are queued: transport buffer + queued frames.
        self.owed = 0
        #: Largest ``owed`` seen at a flush: the most this client ever had waiting.
        self.peak = 0
        #: Its transport is past the pressure mark (set by flow control).
        self.congested = False
        self.on_evict = on_evict


class Hub:
    """Fan-out to outboxes, coalesced once per event-loop iteration."""

    __slots__ = (
        "max_buffer",
        "pressure_mark",
        "_schedule",
        "_dirty",
        "_flush_pending",
        "pressed",
        "after_pressure",
        "evicted",
        "frames_out",
        "bytes_out",
        "high_water",
    )

    def __init__(
        self,
        max_buffer: int,
        schedule: Callable[[Callable[[], None]], object],
        pressure_mark: int | None = None,
    ) -> None:
        self.max_buffer = max_buffer
        #: Past this many bytes owed, a client's frames are still queued for
        #: the flush, but the hub reports pressure, so that senders can be held.
        self.pressure_mark = min(pressure_mark or max_buffer, max_buffer)
        # loop.call_soon in the server; a plain list append in unit tests.
        self._schedule = schedule
        self._dirty: list[Outbox] = []
        self._flush_pending = False
        #: Some client passed the pressure mark during this iteration.
        self.pressed = False
        #: Called at the end of a flush that follows pressure (flow control's hook).
        self.after_pressure: Callable[[], None] | None = None
        #: Clients evicted as too slow since start, by reason.
        self.evicted: Counter[str] = Counter()
        #: Frames and bytes written, and the most any one client ever owed.
        self.frames_out = 0
        self.bytes_out = 0
        self.high_water = 0

    @property
    def evictions(self) -> int:
        return self.evicted.total()

    def broadcast(
        self, frame: bytes, recipients: Iterable[Outbox], skip: Outbox | None = None
    ) -> None:
        """Queue one frame for every recipient except ``skip``."""
        size = len(frame)
        mark = self.pressure_mark
        dirty = self._dirty
        slow: list[Outbox] | None = None  # made only for the rare eviction
        for box in recipients:
            if box is skip:
                continue
            frames = box.frames
            if frames:
                owed = box.owed + size
            else:  # its first frame this iteration (a flush skips it if none follows)
                owed = box.transport.get_write_buffer_size() + size
                dirty.append(box)
            if owed > mark and self._overdue(box, owed):
                if slow is None:
                    slow = []
                slow.append(box)
                continue
            frames.append(frame)
            box.owed = owed
        if dirty and not self._flush_pending:
            self._flush_pending = True
            self._schedule(self.flush)
        if slow is not None:
            # After the loop: evicting removes the client from the very
            # collections ``recipients`` may be iterating.
            for box in slow:
                self.evict(box, "buffer_full")

    def _overdue(self, box: Outbox, owed: int) -> bool:
        """The rare path of a broadcast: ``box`` would owe more than the pressure mark.

        Past ``max_buffer`` the answer is eviction (True). Below it the frame
        is queued as usual (False), and if the client was not known to be
        behind, the hub records pressure: flow control then holds every
        publisher until the flush, so that the rest of a large read is not fanned
        out before the client's transport has had its say.
        """
        if owed > self.max_buffer:
            return True
        if owed > box.peak:
            self._new_peak(box, owed)
        if not box.congested:
            self.pressed = True
        return False

    def send(self, box: Outbox, frame: bytes) -> None:
        """Queue one frame for one recipient, in order with its broadcasts."""
        self.broadcast(frame, (box,))

    def evict(self, box: Outbox, reason: str) -> None:
        """Stop queueing to ``box`` and let its owner close it."""
        box.frames.clear()
        box.owed = 0
        self.evicted[reason] += 1
        box.on_evict()

    def _new_peak(self, box: Outbox, owed: int) -> None:
        box.peak = owed
        if owed > self.high_water:
            self.high_water = owed

    def drop(self, box: Outbox) -> None:
        """Forget what is queued for a client that is going away."""
        box.frames.clear()

    def take(self, box: Outbox) -> bytes:
        """Remove and return what is queued for ``box``, to write ahead of a close frame."""
        frames = box.frames
        if not frames:
            return b""
        data = b"".join(frames)
        # The caller writes these: they count as sent.
        self.frames_out += len(frames)
        self.bytes_out += len(data)
        frames.clear()
        return data

    def flush(self) -> None:
        """Write every dirty outbox's frames in one ``transport.write`` each."""
        self._flush_pending = False
        dirty = self._dirty
        self._dirty = []
        frames_out = bytes_out = 0
        for box in dirty:
            frames = box.frames
            if not frames:  # evicted or closed since it was queued
                continue
            if box.owed > box.peak:
                self._new_peak(box, box.owed)
            count = len(frames)
            data = frames[0] if count == 1 else b"".join(frames)
            frames.clear()
            box.transport.write(data)
            frames_out += count
            bytes_out += len(data)
        self.frames_out += frames_out
        self.bytes_out += bytes_out
        if self.pressed:
            self.pressed = False
            if self.after_pressure is not None:
                self.after_pressure()
