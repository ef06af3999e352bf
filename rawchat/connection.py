"""One client connection: the asyncio protocol that carries out its phases.

Every connection starts in its HTTP phase (rawchat.http_phase: h11, the routes
the server injects, static files, admission). A valid upgrade hands h11's
leftover bytes to the WebSocket phase (rawchat.websocket_phase), which has no
I/O of its own: this protocol feeds it what the socket brings and carries out
the actions it answers with (writes, timers, closing the transport). Outgoing
chat frames come from the hub, already encoded.

``close`` is the one way to end a WebSocket: the chat session, the hub (an
eviction, flow control's too-slow through it), the keepalive and the server's
shutdown all ask it, and the phase decides whether a close frame is still due.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from wsproto.frame_protocol import CloseReason

from rawchat import http, sockets
from rawchat.chat import Chat
from rawchat.config import Config
from rawchat.flow import Backpressure
from rawchat.held import AfterTurn, HeldInput, Hold
from rawchat.http_phase import HttpPhase, Phase, Route
from rawchat.hub import Hub, Outbox
from rawchat.inbound import Inbound
from rawchat.limits import Occupancy, PerAddress
from rawchat.metrics import Counters
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

#: Bytes taken off a socket per read (see Connection.get_buffer).
READ_SIZE = 16 * 1024

# Checked at every read and every event: a global is read in a few ns, an
# enum member through its class in about 80 (CPython 3.11).
_READING, _HELD, _TURN = Hold.READING, Hold.HELD, Hold.TURN


def _nothing_to_evict() -> None:
    """An outbox's eviction callback once its connection has closed."""


class Shared:
    """What the connections of one server share."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.hub = Hub(config.max_buffer, loop.call_soon, config.pressure_mark)
        self.flow = Backpressure(self.hub, loop, config.slow_timeout)
        self.chat = Chat(self.hub, config, loop.call_later)
        static_dir = config.static_dir or http.default_static_dir()
        self.static = http.StaticFiles(Path(static_dir))
        #: Paths answered by a handler; every other path is a static file.
        self.routes: dict[str, Route] = {}
        #: Every open TCP connection, in any phase.
        self.connections: set[Connection] = set()
        #: The open WebSocket connections (those that get pings and the shutdown's 1001).
        self.websockets: set[Connection] = set()
        self.metrics = Counters()
        #: Open connections, any phase: an idle HTTP connection holds a slot too.
        self.occupancy = Occupancy(config.max_connections, config.max_connections_per_ip)
        self.handshake_limiter = PerAddress(
            config.handshake_rate, config.handshake_burst, loop.time
        )
        #: Set during shutdown; resolved when the last connection is gone.
        self.drained: asyncio.Future[None] | None = None
        #: Where every connection's reads land (see Connection.get_buffer).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def websocket_phase(self, *, v1: bool) -> WebSocketPhase:
        """The WebSocket phase of a client just upgraded (its session comes next)."""
        config = self.config
        inbound = Inbound(self.chat, self.metrics, config, self.flow.load, self.loop.time)
        return WebSocketPhase(
            inbound,
            None,
            close_timeout=config.close_timeout,
            hello_timeout=config.handshake_timeout if v1 else None,
        )

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.websockets.discard(conn)
        if not self.connections and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "state",
        "transport",
        "address",
        "phase",
        "http",
        "websocket",
        "outbox",
        "_timer",
        "input",
    )

    def __init__(self, state: Shared) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        #: The client's address as limits count it (the proxy's word for it with --trust-proxy).
        self.address = "-"
        self.phase = Phase.HTTP
        #: The HTTP side: requests, routes, admission, the connection's slot of the caps.
        self.http: HttpPhase | None = None
        #: The WebSocket side, from the upgrade on.
        self.websocket: WebSocketPhase | None = None
        self.outbox: Outbox | None = None
        #: The one pending timeout of this connection: HTTP deadlines, the
        #: hello, then the bound on closing.
        self._timer: asyncio.TimerHandle | None = None
        #: What flow control's holds keep from being handled (rawchat.held).
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
        state = self.state
        state.connections.add(self)
        self.http = HttpPhase(
            self,
            state.config,
            state.routes,
            state.static,
            state.occupancy,
            state.handshake_limiter,
            state.metrics,
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        # rawchat, not the event loop, decides how much one read takes off the
        # socket (uvloop reads up to 256 KiB). Flow control stops a publisher
        # at the next message; what that read brought but no message used yet
        # waits in memory, and what the client sent since stays in TCP, where
        # it slows the client down. One buffer serves every connection: each
        # read is copied out of it before the next one.
        return self.state.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.state.read_buffer[:nbytes]))
        transport = self.transport
        if nbytes == READ_SIZE and not self.input.held and self.phase is Phase.WEBSOCKET:
            # More waits: the next read is the next iteration's (see flow.read_later).
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.state.flow.read_later(self)

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase is Phase.WEBSOCKET:
                assert self.websocket is not None
                self.websocket.inbound.new_turn()  # a read or a turn: a share while overloaded
                self._ws_received(data)
            elif self.phase is Phase.HTTP and self.http is not None:
                frames = self.http.receive(data)
                if frames:
                    self._ws_received(frames)
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
        state = self.state
        websocket = self.websocket
        if websocket is not None:
            self._leave()
            code = websocket.connection_lost()
            state.metrics.close_codes[code] += 1
            log.info(
                "%s: websocket closed, code %d",
                self.address,
                code,
                extra={"event": "close", "client": self.address, "code": code},
            )
        if self.outbox is not None:
            # Nothing may point back at a connection once it is gone, so that
            # it is freed when the last reference goes rather than by the
            # garbage collector: under churn, closed connections waited for a
            # full collection by the thousand (several MiB of them).
            self.outbox.on_evict = _nothing_to_evict
        if self.http is not None:
            self.http.slot.release()
            self.http = None  # it points back here
        state.flow.forget(self)
        self.input.forget()
        state.forget(self)

    def pause_writing(self) -> None:
        # WebSocket phase: the buffer passed the pressure mark. Flow control
        # evicts this client if it does not drain within --slow-timeout.
        if self.phase is Phase.WEBSOCKET:
            websocket = self.websocket
            if self.outbox is not None and websocket and websocket.closing is Closing.OPEN:
                self.state.flow.congest(self.outbox)
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.phase is Phase.WEBSOCKET:
            if self.outbox is not None:
                self.state.flow.relieve(self.outbox)
        elif self.phase is Phase.HTTP and self.transport is not None:
            self.transport.resume_reading()

    # -- the upgrade (rawchat.http_phase.Host) ------------------------------------------

    def upgrade(self, decision: http.Upgrade, trailing: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        self.phase = Phase.WEBSOCKET
        state, config = self.state, self.state.config
        transport.set_write_buffer_limits(high=config.pressure_mark)
        sockets.bound_send_buffer(transport, config.max_buffer)
        self.outbox = Outbox(transport, self._evicted)
        state.websockets.add(self)
        state.metrics.handshakes += 1
        v1 = decision.subprotocol is not None
        self.websocket = state.websocket_phase(v1=v1)
        connect = state.chat.connect_v1 if v1 else state.chat.connect_plain
        self.websocket.session = connect(self.outbox, self)
        self._carry_out()
        mode = decision.subprotocol or "plain"
        log.info(
            "%s: websocket open (%s)",
            self.address,
            mode,
            extra={"event": "open", "client": self.address, "protocol": mode},
        )
        if trailing:
            self._ws_received(trailing)

    # -- WebSocket phase --------------------------------------------------------------

    def _ws_received(self, data: bytes) -> None:
        websocket = self.websocket
        assert websocket is not None
        state = self.input.state
        if state is _READING and len(data) <= websocket.inbound.max_message + 14:
            websocket.receive_data(data)
            self._handle_events()
        elif state is _READING:
            self._feed(data)
        elif state is _TURN:
            # The frames a hold left parsed in wsproto go first (fed more before,
            # its buffer would grow by a slice at every release), then the backlog.
            if self.input.take_parked():
                self._handle_events()
            if self.input.state is _TURN:
                self._feed(self.input.take_backlog() + data)
            else:
                self.input.keep(data)
        else:  # held: kept in order (TLS may still hand over what it had decrypted)
            self.input.keep(data)
        if websocket.pong_due is not None:
            websocket.answer_pings()
            if websocket.actions is not None:
                self._carry_out()

    def _feed(self, data: bytes) -> None:
        """Feed wsproto a message's worth at a time, up to a hold (the rest waits).

        wsproto keeps what it is given until events() consumes it: so its
        buffer stays within --max-message plus a frame header, however much
        one read brought.
        """
        websocket = self.websocket
        assert websocket is not None
        step = websocket.inbound.max_message + 14
        view = memoryview(data)
        for start in range(0, len(data), step):
            if websocket.closing is Closing.FAILED or self.phase is not Phase.WEBSOCKET:
                break
            if self.input.held:
                self.input.keep(bytes(view[start:]))
                break
            websocket.receive_data(bytes(view[start : start + step]))
            self._handle_events()

    def _handle_events(self) -> None:
        websocket = self.websocket
        assert websocket is not None
        for event in websocket.events():
            websocket.handle(event)
            if websocket.actions is not None:
                self._carry_out()
            if self.input.state is _HELD:
                # The frames after this one stay in wsproto's buffer until
                # the next turn.
                self.input.park()
                return
            if websocket.closing is Closing.FAILED or self.phase is not Phase.WEBSOCKET:
                return

    def _carry_out(self) -> None:
        """Do what the WebSocket phase asked for, in order."""
        websocket, transport = self.websocket, self.transport
        assert websocket is not None and transport is not None
        for action in websocket.take_actions():
            match action:
                case Send(data):
                    transport.write(data)
                case Shape(delay):
                    self.state.flow.shape(self, delay)
                case TurnOver():
                    if self.input.backlog or not websocket.at_rest():
                        self.state.flow.wait_turn(self)  # more waits: it goes behind the others
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
            self._carry_out()

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
                    self.state.hub.drop(self.outbox)
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
            self._carry_out()

    def _evicted(self) -> None:
        """Called by the hub: this client cannot keep up (what it was owed is dropped)."""
        log.debug("%s: evicted, too slow", self.peer)
        self.close(CloseReason.POLICY_VIOLATION, "too slow")

    def _leave(self, *, flush: bool = False) -> None:
        """Leave the chat and the hub: a closing client gets no more broadcasts.

        With ``flush``, what the hub had queued for it is written first.
        """
        state, outbox, websocket = self.state, self.outbox, self.websocket
        if outbox is not None:
            queued = state.hub.take(outbox) if flush and not outbox.closed else b""
            state.hub.drop(outbox)
            state.flow.relieve(outbox)
            if queued and self.transport is not None:
                self.transport.write(queued)
        if websocket is not None and websocket.session is not None:
            session, websocket.session = websocket.session, None
            state.chat.disconnect(session)
        state.websockets.discard(self)

    def _internal_error(self) -> None:
        websocket = self.websocket
        if self.phase is Phase.WEBSOCKET and websocket and websocket.closing is Closing.OPEN:
            try:
                websocket.fail(CloseReason.INTERNAL_ERROR, "internal error")
                self._carry_out()
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
            self.set_timer(self.state.config.close_timeout, self._abort)
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
        self._timer = self.state.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
