"""One client connection: the asyncio protocol, a thin adapter over its phases.

Every connection starts in its HTTP phase (rawchat.http_phase: h11, the routes
the server injects, static files, admission). A valid upgrade hands h11's
leftover bytes to the WebSocket phase, which a rawchat.websocket_driver drives:
the phase itself (rawchat.websocket_phase) has no I/O of its own, the driver
feeds it what the socket brings and carries out the actions it answers with
(writes, timers, closing the transport). Outgoing chat frames come from the
hub, already encoded. What the connections of a server share comes in a
rawchat.shared.Shared, a part for each phase.

This protocol keeps what both phases use: the transport, the client's
address, the one pending timeout, and the closing of the transport.

``close`` is the one way to end a WebSocket: the chat session, the hub (an
eviction, flow control's too-slow through it), the keepalive and the server's
shutdown all ask it, and the phase decides whether a close frame is still due.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, cast

from wsproto.frame_protocol import CloseReason

from rawchat import http, sockets
from rawchat.held import HeldInput
from rawchat.http_phase import HttpPhase, Phase
from rawchat.hub import Outbox
from rawchat.shared import READ_SIZE, Shared
from rawchat.slots import Slot
from rawchat.websocket_driver import WebSocketDriver
from rawchat.websocket_phase import Closing, WebSocketPhase

log = logging.getLogger("rawchat.connection")


class Connection(asyncio.BufferedProtocol):
    __slots__ = ("shared", "transport", "address", "phase", "http", "slot", "driver", "_timer")

    def __init__(self, shared: Shared[Connection]) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        #: The client's address as limits count it (the proxy's word for it with --trust-proxy).
        self.address = "-"
        self.phase = Phase.HTTP
        #: The HTTP side (requests, routes, admission), until the upgrade.
        self.http: HttpPhase | None = None
        #: The connection's slot of the caps, from its accept to its end.
        self.slot: Slot | None = None
        #: The WebSocket side, from the upgrade to the end.
        self.driver: WebSocketDriver | None = None
        #: The one pending timeout of this connection: HTTP deadlines, the
        #: hello, then the bound on closing.
        self._timer: asyncio.TimerHandle | None = None

    @property
    def peer(self) -> str:
        """The TCP peer as "ip:port", for logs: formatted when one is written, not kept."""
        transport = self.transport
        peername = None if transport is None else transport.get_extra_info("peername")
        return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "-"

    @property
    def websocket(self) -> WebSocketPhase | None:
        return None if self.driver is None else self.driver.websocket

    @property
    def outbox(self) -> Outbox | None:
        return None if self.driver is None else self.driver.outbox

    @property
    def input(self) -> HeldInput | None:
        return None if self.driver is None else self.driver.input

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            # One string per address, however many connections come from it
            # (a proxy, a NAT): interned strings go when their last user does.
            self.address = sys.intern(str(peername[0]))
        self.shared.connections.add(self)
        self.http = HttpPhase(self, self.shared.http)
        self.slot = self.http.slot

    def get_buffer(self, sizehint: int) -> memoryview:
        # rawchat, not the event loop, decides how much one read takes off the
        # socket (uvloop reads up to 256 KiB). Flow control stops a publisher
        # at the next message; what that read brought but no message used yet
        # waits in memory, and what the client sent since stays in TCP, where
        # it slows the client down. One buffer serves every connection: each
        # read is copied out of it before the next one.
        return self.shared.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.shared.read_buffer[:nbytes]))
        driver, transport = self.driver, self.transport
        if nbytes == READ_SIZE and driver is not None and self.phase is Phase.WEBSOCKET:
            # More waits: the next read is the next iteration's (see flow.read_later).
            if not driver.input.held and transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.shared.flow.read_later(driver)

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase is Phase.WEBSOCKET:
                assert self.driver is not None
                self.driver.read(data)
            elif self.phase is Phase.HTTP and self.http is not None:
                frames = self.http.receive(data)
                if frames and self.driver is not None:  # upgraded by this read
                    self.driver.receive(frames)
        except Exception:
            # A bug, not bad input: bad input has its own answers. Close only
            # this connection and say so once, with the traceback.
            log.exception("%s: unexpected error, closing the connection", self.peer)
            self._internal_error()

    def eof_received(self) -> bool | None:
        if self.phase is Phase.HTTP and self.http is not None:
            self.http.receive_eof()
        elif self.phase is Phase.WEBSOCKET and self.driver and self.driver.input.half_close():
            # What the client sent before its EOF still waits for flow control's
            # turns: keep the transport until that is handled (see take_turn).
            return True
        # Returning None lets the transport close itself.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self.cancel_timer()
        if self.driver is not None:
            self.driver.lost(self.address)
        # Both point back here: kept, they would leave this connection for
        # the garbage collector to free (see WebSocketShared.closed).
        self.driver = self.http = None
        if self.slot is not None:
            self.slot.release()
        self.shared.forget(self)

    def pause_writing(self) -> None:
        if self.phase is Phase.WEBSOCKET and self.driver is not None:
            self.driver.pause_writing()
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.phase is Phase.WEBSOCKET and self.driver is not None:
            self.driver.resume_writing()
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.resume_reading()

    # -- the upgrade (rawchat.http_phase.Host) ------------------------------------------

    def upgrade(self, decision: http.Upgrade, trailing: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.cancel_timer()
        self.phase = Phase.WEBSOCKET
        self.http = None  # h11 and the admission are done: the slot is what stays
        shared, config = self.shared.ws, self.shared.config
        transport.set_write_buffer_limits(high=config.pressure_mark)
        sockets.bound_send_buffer(transport, config.max_buffer)
        outbox = Outbox(transport, self)
        websocket = shared.opened(self, v1=decision.subprotocol is not None)
        self.driver = driver = WebSocketDriver(self, shared, websocket, outbox)
        shared.join(self, outbox, websocket, decision.subprotocol)
        driver.carry_out()
        if trailing:
            driver.receive(trailing)

    # -- keepalive (rawchat.keepalive.Pinged) ---------------------------------------

    def expect_pong(self, deadline: float) -> None:
        if self.driver is not None:
            self.driver.websocket.expect_pong(deadline)

    def pong_overdue(self, now: float, grace: float) -> bool:
        driver = self.driver
        return driver is not None and driver.websocket.pong_overdue(
            now, grace, held=driver.input.held
        )

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Close this WebSocket: what is queued goes out, then a close frame (if still due)."""
        if self.driver is not None and self.phase is Phase.WEBSOCKET:
            self.driver.close(code, reason)

    def evicted(self) -> None:
        """Called by the hub: this client cannot keep up (what it was owed is dropped)."""
        log.debug("%s: evicted, too slow", self.peer)
        self.close(CloseReason.POLICY_VIOLATION, "too slow")

    def _internal_error(self) -> None:
        driver = self.driver
        if self.phase is Phase.WEBSOCKET and driver and driver.websocket.closing is Closing.OPEN:
            try:
                driver.fail(CloseReason.INTERNAL_ERROR, "internal error")
                return
            except Exception:
                log.exception("%s: could not send 1011", self.peer)
        if self.transport is not None:
            self.transport.abort()

    def close_transport(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            # close() waits for the write buffer to drain; a peer that stops
            # reading would keep it open forever.
            self.set_timer(self.shared.config.close_timeout, transport.abort)
        else:
            self.cancel_timer()

    # -- the one timer ------------------------------------------------------------------

    def set_timer(self, delay: float, callback: Callable[[], Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.shared.loop.call_later(delay, self._timer_fired, callback)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self, callback: Callable[[], Any]) -> None:
        # Forgotten first: the handle would keep the connection in a cycle.
        self._timer = None
        callback()
