"""A connection's slot of the connection caps, held from its accept in any phase.

Idle HTTP connections count too, so that they cannot exhaust the server. Behind
a trusted proxy the TCP peer is the proxy: its clients are told apart, and
counted per address, at the upgrade (see ``move``).
"""

from __future__ import annotations

from rawchat import http
from rawchat.limits import Occupancy
from rawchat.metrics import Counters


class Slot:
    """Where one connection is counted, or the refusal it gets if it could not be."""

    __slots__ = ("occupancy", "counted", "refusal")

    def __init__(
        self, occupancy: Occupancy, counters: Counters, address: str, *, behind_proxy: bool
    ) -> None:
        self.occupancy = occupancy
        #: The address this connection is counted under, if any.
        self.counted: str | None = None
        #: The answer to any request on a connection past the caps (503 or 429).
        self.refusal: http.Reply | None = None
        # A proxy's connections are its clients': only the total applies until the
        # upgrade names the client (see ``move``).
        status = occupancy.refusal("" if behind_proxy else address)
        if status is None:
            occupancy.enter(address)
            self.counted = address
        else:
            counters.handshake_failures["full" if status == 503 else "per_ip"] += 1
            self.refusal = http.error_reply(status, (b"retry-after", b"5"))

    def move(self, address: str) -> int | None:
        """Count this connection under ``address``, or say why it may not be (503, 429)."""
        occupancy, previous = self.occupancy, self.counted
        if previous is not None:
            occupancy.leave(previous)
        status = occupancy.refusal(address)
        if status is not None:
            if previous is not None:  # refused: it stays counted where it was
                occupancy.enter(previous)
            return status
        occupancy.enter(address)
        self.counted = address
        return None

    def release(self) -> None:
        if self.counted is not None:
            self.occupancy.leave(self.counted)
            self.counted = None
