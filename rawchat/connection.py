"""One client connection: the asyncio protocol, a thin adapter over its phases.

Every connection starts in its HTTP phase (rawchat.http_phase: h11, the routes
the server injects, static files, admission). A valid upgrade hands h11's
leftover bytes to the WebSocket phase (rawchat.websocket_phase), which has no
I/O of its own: the connection's held input (rawchat.held) feeds it what the
socket brings, up to flow control's holds, and this protocol carries out the
actions it answers with (writes, timers, closing the transport). Outgoing chat
frames come from the hub, already encoded. What the connections of a server
share comes in a rawchat.shared.Shared, a part for each phase.

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
from rawchat.held import AfterTurn, HeldInput
from rawchat.http_phase import HttpPhase, Phase
from rawchat.hub import Outbox
from rawchat.shared import READ_SIZE, Shared
from rawchat.slots import Slot
from rawchat.websocket_phase import (
    Abort,
    CancelTimer,
    CloseTransport,
    Closing,
    HalfClose,
    Leave,
    Send,
    SetTimer,
    Shape,
    TurnOver,
    WebSocketPhase,
)

log = logging.getLogger("rawchat.connection")

__all__ = ["READ_SIZE", "Connection"]


def _nothing_to_evict() -> None:
    """An outbox's eviction callback once its connection has closed."""


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "shared",
        "transport",
        "address",
        "phase",
        "http",
        "slot",
        "websocket",
        "outbox",
        "_timer",
        "input",
    )

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
        #: The WebSocket side, from the upgrade on.
        self.websocket: WebSocketPhase | None = None
        self.outbox: Outbox | None = None
        #: The one pending timeout of this connection: HTTP deadlines, the
        #: hello, then the bound on closing.
        self._timer: asyncio.TimerHandle | None = None
        #: What the socket brings, fed to the WebSocket phase up to flow control's holds.
        self.input = HeldInput()

    @property
    def peer(self) -> str:
        """The TCP peer as "ip:port", for logs: formatted when one is written, not kept."""
        transport = self.transport
        peername = None if transport is None else transport.get_extra_info("peername")
        return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "-"

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
        transport = self.transport
        if nbytes == READ_SIZE and not self.input.held and self.phase is Phase.WEBSOCKET:
            # More waits: the next read is the next iteration's (see flow.read_later).
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.shared.flow.read_later(self)

    def data_received(self, data: bytes) -> None:
        try:
            websocket = self.websocket
            if self.phase is Phase.WEBSOCKET:
                assert websocket is not None
                websocket.inbound.new_turn()  # a read or a turn: a share while overloaded
                self.input.receive(data, websocket, self)
            elif self.phase is Phase.HTTP and self.http is not None:
                frames = self.http.receive(data)
                if frames and self.websocket is not None:  # upgraded by this read
                    self.input.receive(frames, self.websocket, self)
        except Exception:
            # A bug, not bad input: bad input has its own answers. Close only
            # this connection and say so once, with the traceback.
            log.exception("%s: unexpected error, closing the connection", self.peer)
            self._internal_error()

    def eof_received(self) -> bool | None:
        if self.phase is Phase.HTTP and self.http is not None:
            self.http.receive_eof()
        elif self.phase is Phase.WEBSOCKET and self.input.half_close():
            # What the client sent before its EOF still waits for flow control's
            # turns: keep the transport until that is handled (see take_turn).
            return True
        # Returning None lets the transport close itself.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._cancel_timer()
        shared, websocket = self.shared, self.websocket
        if websocket is not None:
            self._leave()
            shared.ws.closed(websocket, self.address)
        if self.outbox is not None:
            # Nothing may point back at a connection once it is gone, so that
            # it is freed when the last reference goes rather than by the
            # garbage collector: under churn, closed connections waited for a
            # full collection by the thousand (several MiB of them).
            self.outbox.on_evict = _nothing_to_evict
        self.http = None  # it points back here
        if self.slot is not None:
            self.slot.release()
        shared.flow.forget(self)
        self.input.forget()
        shared.forget(self)

    def pause_writing(self) -> None:
        # WebSocket phase: the buffer passed the pressure mark. Flow control
        # evicts this client if it does not drain within --slow-timeout.
        if self.phase is Phase.WEBSOCKET:
            websocket = self.websocket
            if self.outbox is not None and websocket and websocket.closing is Closing.OPEN:
                self.shared.flow.congest(self.outbox)
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.phase is Phase.WEBSOCKET:
            if self.outbox is not None:
                self.shared.flow.relieve(self.outbox)
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.resume_reading()

    # -- the upgrade (rawchat.http_phase.Host) ------------------------------------------

    def upgrade(self, decision: http.Upgrade, trailing: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        self.phase = Phase.WEBSOCKET
        self.http = None  # h11 and the admission are done: the slot is what stays
        shared, config = self.shared.ws, self.shared.config
        transport.set_write_buffer_limits(high=config.pressure_mark)
        sockets.bound_send_buffer(transport, config.max_buffer)
        self.outbox = outbox = Outbox(transport, self._evicted)
        v1 = decision.subprotocol is not None
        self.websocket = websocket = shared.opened(self, v1=v1)
        websocket.session = shared.session(outbox, self, v1=v1)
        self.carry_out()
        mode = decision.subprotocol or "plain"
        log.info(
            "%s: websocket open (%s)",
            self.address,
            mode,
            extra={"event": "open", "client": self.address, "protocol": mode},
        )
        if trailing:
            self.input.receive(trailing, websocket, self)

    # -- the WebSocket phase's actions (rawchat.held.Feeder) ------------------------------

    def carry_out(self) -> None:
        """Do what the WebSocket phase asked for, in order."""
        websocket, transport = self.websocket, self.transport
        assert websocket is not None and transport is not None
        for action in websocket.take_actions():
            match action:
                case Send(data):
                    transport.write(data)
                case Shape(delay):
                    self.shared.flow.shape(self, delay)
                case TurnOver():
                    if self.input.backlog or not websocket.at_rest():
                        self.shared.flow.wait_turn(self)  # more waits: it goes behind the others
                case Leave(flush):
                    self._leave(flush=flush)
                case SetTimer(delay):
                    self.set_timer(delay, self._timer_fired)
                case CancelTimer():
                    self._cancel_timer()
                case HalfClose():
                    if transport.can_write_eof():
                        transport.write_eof()
                case CloseTransport():
                    self.close_transport()
                case Abort():
                    log.debug("%s: close timed out, aborting", self.peer)
                    transport.abort()

    def _timer_fired(self) -> None:
        self._timer = None
        if self.websocket is not None:
            self.websocket.timer_fired()
            self.carry_out()

    # -- keepalive (rawchat.keepalive.Pinged) ---------------------------------------

    def expect_pong(self, deadline: float) -> None:
        if self.websocket is not None:
            self.websocket.expect_pong(deadline)

    def pong_overdue(self, now: float, grace: float) -> bool:
        websocket = self.websocket
        return websocket is not None and websocket.pong_overdue(now, grace, held=self.input.held)

    # -- flow control (rawchat.flow.Publisher) -----------------------------------------

    def hold(self) -> None:
        self.input.hold()
        transport = self.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
            if self.input.first_pause():
                sockets.fix_receive_window(transport)

    def take_turn(self) -> bool:
        transport = self.transport
        if self.phase is not Phase.WEBSOCKET or transport is None or transport.is_closing():
            return False
        # What was read but not handled goes first, until a verdict holds it
        # again (past --rate, or its share while overloaded); reading resumes
        # only once none is left.
        self.input.begin_turn()
        self.data_received(b"")  # the same guard against bugs as a read
        match self.input.end_turn():
            case AfterTurn.HOLD:
                return True
            case AfterTurn.CLOSE:
                self._leave()  # it sent no close frame (1006): all it sent is handled
                if self.outbox is not None:
                    self.shared.hub.drop(self.outbox)
                self.close_transport()
            case AfterTurn.READ:
                if not transport.is_closing():
                    transport.resume_reading()
        return False

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Close this WebSocket: what is queued goes out, then a close frame (if still due)."""
        websocket = self.websocket
        if websocket is not None and self.phase is Phase.WEBSOCKET:
            websocket.close(code, reason)
            self.carry_out()

    def _evicted(self) -> None:
        """Called by the hub: this client cannot keep up (what it was owed is dropped)."""
        log.debug("%s: evicted, too slow", self.peer)
        self.close(CloseReason.POLICY_VIOLATION, "too slow")

    def _leave(self, *, flush: bool = False) -> None:
        """Leave the chat and the hub; with ``flush``, what the hub queued is written first."""
        assert self.websocket is not None
        queued = self.shared.ws.leave(self, self.outbox, self.websocket, flush=flush)
        if queued and self.transport is not None:
            self.transport.write(queued)

    def _internal_error(self) -> None:
        websocket = self.websocket
        if self.phase is Phase.WEBSOCKET and websocket and websocket.closing is Closing.OPEN:
            try:
                websocket.fail(CloseReason.INTERNAL_ERROR, "internal error")
                self.carry_out()
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
            self.set_timer(self.shared.config.close_timeout, self._abort)
        else:
            self._cancel_timer()

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- timers ---------------------------------------------------------------------

    def set_timer(self, delay: float, callback: Callable[[], Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.shared.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
