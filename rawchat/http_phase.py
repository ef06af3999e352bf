"""The HTTP phase of a connection: h11, the route table, static files, admission.

Every connection starts here. h11 parses requests; ``/ws`` is the opening
handshake, checked against RFC 6455 and then against rawchat's limits
(rawchat.admission), and answered at once or, under --handshake-rate, when
its turn comes; other paths are looked up in the route table the server injects
(``/healthz``, ``/metrics``), and the static files answer the rest. When a
valid upgrade arrives, the 101 goes out through h11, and whatever bytes h11
had already received past the request (a client may send its first frames
without waiting for the 101) go to the WebSocket phase.

A connection holds a slot of the connection caps (rawchat.slots) from the
moment it is accepted, in any phase: idle HTTP connections cannot exhaust the
server.

Error replies that end the connection are followed by a lingering close
(see ``_linger``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import h11

from rawchat import http
from rawchat.admission import Admission
from rawchat.config import Config
from rawchat.limits import Occupancy, PerAddress
from rawchat.metrics import Counters

log = logging.getLogger("rawchat.connection")

#: Bytes handed to h11 at a time (see HttpPhase.receive).
HEAD_SLICE = 1024

#: How long a connection whose error reply went out keeps reading (and discarding)
#: what the client still sends, so that closing with unread bytes, which makes the
#: kernel send a reset, cannot destroy the reply before the client has read it.
LINGER_SECONDS = 2.0

#: A route: a path's handler, answering a GET or HEAD with a whole reply.
Route = Callable[[], http.Reply]


class Phase(enum.Enum):
    #: h11 reads requests: static files, the routes, the opening handshake.
    HTTP = enum.auto()
    #: An error reply went out and our side is shut: what the client still sends is discarded.
    LINGER = enum.auto()
    #: wsproto reads frames.
    WEBSOCKET = enum.auto()
    CLOSED = enum.auto()


@dataclass(frozen=True, slots=True)
class HttpShared:
    """What the HTTP phases of one server share (the server injects the routes)."""

    config: Config
    #: Paths answered by a handler; every other path is a static file.
    routes: Mapping[str, Route]
    static: http.StaticFiles
    #: Open connections, any phase: an idle HTTP connection holds a slot too.
    occupancy: Occupancy
    handshake_limiter: PerAddress
    counters: Counters


class Host(Protocol):
    """The connection an HTTP phase runs in (rawchat.connection.Connection)."""

    phase: Phase
    transport: asyncio.Transport | None
    #: The client's address as limits count it.
    address: str

    @property
    def peer(self) -> str: ...

    def set_timer(self, delay: float, callback: Callable[[], Any]) -> None: ...

    def close_transport(self) -> None: ...

    def upgrade(self, decision: http.Upgrade, trailing: bytes) -> None: ...


class HttpPhase:
    """One connection's HTTP side, from its accept to its upgrade (or its end)."""

    __slots__ = ("host", "shared", "config", "h11", "_request", "admission", "slot")

    def __init__(self, host: Host, shared: HttpShared) -> None:
        self.host = host
        self.shared = shared
        self.config = config = shared.config
        self.h11: h11.Connection | None = h11.Connection(
            h11.SERVER,
            max_incomplete_event_size=max(config.max_request_head - HEAD_SLICE, 1),
        )
        self._request: h11.Request | None = None
        #: Who may upgrade, and the connection's slot of the caps (released at its end).
        self.admission = Admission(
            config, shared.occupancy, shared.handshake_limiter, shared.counters, host.address
        )
        self.slot = self.admission.slot
        host.set_timer(config.handshake_timeout, self.timed_out)

    def receive(self, data: bytes) -> bytes:
        """Feed what the client sent; return what came after an upgrade (frames), if any."""
        conn = self.h11
        assert conn is not None
        if conn.their_state is h11.IDLE and self._request is None and not self._pending():
            # A new request starts: its head must arrive within the handshake
            # bound, counted from its first byte (not restarted by each read).
            self.host.set_timer(self.config.handshake_timeout, self.timed_out)
        # h11 measures a head only while it is incomplete, so a whole one
        # arriving in one read could be any size. Fed in small slices, no
        # head longer than --max-request-head gets through (see __init__).
        for start in range(0, max(len(data), 1), HEAD_SLICE):
            if self.host.phase is Phase.WEBSOCKET:  # upgraded mid-read: the rest is frames
                return data[start:]
            transport = self.host.transport
            if self.h11 is None or transport is None or transport.is_closing():
                return b""
            self.h11.receive_data(data[start : start + HEAD_SLICE])
            self._drive()
        return b""

    def receive_eof(self) -> None:
        if self.h11 is not None:
            self.h11.receive_data(b"")
            self._drive()

    def _drive(self) -> None:
        conn = self.h11
        while self.host.phase is Phase.HTTP and conn is not None:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("%s: bad HTTP request: %s", self.host.peer, exc)
                self.fail(exc.error_status_hint)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                if self.slot.refusal is not None:
                    self._reply(self.slot.refusal, close=True)
                    return
                if event.method not in (b"GET", b"HEAD"):
                    # Answer at once and close: no need to read a body we refuse.
                    self._reply(http.error_reply(405, (b"allow", http.ALLOWED_METHODS)), close=True)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self.host.close_transport()
                return
            # h11.Data: request bodies are not used by anything rawchat serves.

    def _respond(self) -> None:
        request = self._request
        assert request is not None and self.h11 is not None
        self._request = None
        head_only = request.method == b"HEAD"
        path = http.path_of(request.target)
        if path == http.WEBSOCKET_PATH:
            decision, wait = self.admission.decide(request)
            self.host.address = self.admission.address
            if isinstance(decision, http.Upgrade):
                if wait > 0:
                    self._pace(decision, wait)
                else:
                    self._upgrade(decision)
            else:
                self._reply(decision, head_only=head_only)
        elif path in self.shared.routes:
            self._reply(self.shared.routes[path](), head_only=head_only)
        else:
            self._reply(self.shared.static.reply(request.target), head_only=head_only)

    def _pace(self, decision: http.Upgrade, wait: float) -> None:
        """Answer this upgrade in ``wait`` seconds, reading nothing more from it until then.

        What the client sends meanwhile (its first frames) stays in TCP, and
        its connection holds its slot of the caps: an address churning
        handshakes is held to its rate at the cost of its own waiting sockets.
        """
        transport = self.host.transport
        assert transport is not None
        transport.pause_reading()
        self.shared.counters.handshakes_paced += 1
        log.debug("%s: upgrade waits %.3f s for its turn", self.host.peer, wait)
        self.host.set_timer(wait, lambda: self._paced(decision))

    def _paced(self, decision: http.Upgrade) -> None:
        transport = self.host.transport
        if self.host.phase is not Phase.HTTP or self.h11 is None or transport is None:
            return
        if transport.is_closing():
            return
        # Before the upgrade: the frames it handles may pause reading again (flow control).
        transport.resume_reading()
        self._upgrade(decision)

    def _reply(self, reply: http.Reply, *, head_only: bool = False, close: bool = False) -> None:
        conn = self.h11
        assert conn is not None and self.host.transport is not None
        headers = reply.headers
        if close:
            headers = [*headers, (b"connection", b"close")]
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=http.reason(reply.status)
        )
        data = conn.send(response) or b""
        if reply.body and not head_only:
            data += conn.send(h11.Data(data=reply.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        self.host.transport.write(data)
        if conn.our_state is h11.MUST_CLOSE:
            if close:
                self._linger()
            else:
                self.host.close_transport()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.host.set_timer(self.config.keepalive_timeout, self.timed_out)

    def fail(self, status: int) -> None:
        conn = self.h11
        if conn is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._reply(http.error_reply(status), close=True)
                return
            except h11.LocalProtocolError:
                pass
        self.host.close_transport()

    def _linger(self) -> None:
        """Shut our side after an error reply, discard what comes, close at EOF or in a while.

        A socket closed with unread bytes in it makes the kernel send a reset,
        and a reset can destroy the reply before the client has read it: a
        client sending a body we refused (405) or an oversized head (431)
        would see a broken connection instead of the status.
        """
        transport = self.host.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self.host.close_transport()
            return
        self.host.phase = Phase.LINGER
        self.h11 = None
        transport.write_eof()
        self.host.set_timer(LINGER_SECONDS, self.host.close_transport)

    def timed_out(self) -> None:
        """A request head too slow to arrive gets 408; an idle keep-alive just closes."""
        if self.host.phase is not Phase.HTTP or self.h11 is None:
            return
        if self.h11.their_state is h11.IDLE and self._request is None and not self._pending():
            self.host.close_transport()
        else:
            self.fail(408)

    def _pending(self) -> bool:
        # h11 keeps received bytes it has not parsed yet; a partial head is pending.
        return bool(self.h11 is not None and self.h11.trailing_data[0])

    def _upgrade(self, decision: http.Upgrade) -> None:
        conn = self.h11
        transport = self.host.transport
        assert conn is not None and transport is not None
        transport.write(
            conn.send(
                h11.InformationalResponse(
                    status_code=101, headers=decision.headers, reason=b"Switching Protocols"
                )
            )
            or b""
        )
        trailing, _ = conn.trailing_data
        # h11 has nothing more to do: drop it, it is the biggest object we hold.
        self.h11 = None
        self.host.upgrade(decision, bytes(trailing))
