"""One client connection: the asyncio protocol that runs its phases.

Every connection starts in its HTTP phase (rawchat.http_phase: h11, the routes
the server injects, static files, admission). A valid upgrade hands h11's
leftover bytes to wsproto (rawchat.wsparser), and from then on this protocol
feeds frames in, hands messages to rawchat.inbound, answers pings (one pong per
read) and runs the closing handshake (:class:`Closing`). Outgoing chat frames
come from the hub, already encoded.

``close`` is the one way to end a WebSocket: the chat session, the hub (an
eviction), flow control (through the hub) and the keepalive all ask it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from wsproto.connection import Connection as WebSocket
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from rawchat import http, sockets, wsparser
from rawchat.chat import Chat
from rawchat.config import Config
from rawchat.flow import Backpressure
from rawchat.http_phase import HttpPhase, Phase, Route
from rawchat.hub import Hub, Outbox
from rawchat.inbound import Inbound, Verdict
from rawchat.limits import Occupancy, PerAddress
from rawchat.messages import CloseCode
from rawchat.metrics import Counters

if TYPE_CHECKING:
    from rawchat.rooms import Session

log = logging.getLogger("rawchat.connection")


class Closing(enum.Enum):
    """Where a WebSocket is in its closing handshake (RFC 6455, section 7).

    When the client closes, its close frame is echoed and the server drops the
    TCP connection first. When the server closes, it sends its close frame and
    waits (at most ``close_timeout``) for the client's. After a protocol error
    the server sends its close frame, half-closes its side and discards what
    comes, so that the frame is not lost to a TCP reset.
    """

    #: Messages flow both ways.
    OPEN = enum.auto()
    #: Our close frame went out: incoming messages are ignored until the client's answer.
    CLOSE_SENT = enum.auto()
    #: The client broke the protocol: our close frame went out, our side is shut,
    #: incoming bytes are discarded.
    FAILED = enum.auto()


#: Bytes taken off a socket per read (see Connection.get_buffer).
READ_SIZE = 16 * 1024


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
        "close_code",
        "inbound",
        "phase",
        "http",
        "_timer",
        "ws",
        "outbox",
        "session",
        "closing",
        "ping_deadline",
        "_held",
        "_parked",
        "_backlog",
        "_fixed_window",
        "_pong",
        "_eof",
    )

    def __init__(self, state: Shared) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        #: The client's address as limits count it (the proxy's word for it with --trust-proxy).
        self.address = "-"
        #: The close code exchanged (sent or received first); None before any.
        self.close_code: int | None = None
        self.inbound = Inbound(
            state.chat, state.metrics, state.config, state.flow.load, state.loop.time
        )
        self.phase = Phase.HTTP
        #: The HTTP side: requests, routes, admission, the connection's slot of the caps.
        self.http: HttpPhase | None = None
        #: The one pending timeout of this connection: HTTP deadlines, then the close bound.
        self._timer: asyncio.TimerHandle | None = None
        #: wsproto's parser, made on the first bytes after the upgrade (see _parser).
        self.ws: WebSocket | None = None
        self.outbox: Outbox | None = None
        self.session: Session | None = None
        #: We sent a close frame (or are about to): incoming messages are ignored.
        self.closing = Closing.OPEN
        #: When the outstanding ping must be answered by (loop time), 0 when none is.
        self.ping_deadline = 0.0
        #: Flow control holds this publisher: bytes read are kept, not handled.
        self._held = False
        #: A hold stopped the handling of parsed frames still in wsproto's buffer.
        self._parked = False
        self._backlog: bytes | None = None
        #: Its kernel receive buffer no longer grows (it was held once).
        self._fixed_window = False
        #: The payload of the latest ping not answered yet: one pong per read answers all.
        self._pong: bytes | None = None
        #: The client half-closed while some of what it sent still waited for its turn.
        self._eof = False

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
        if nbytes == READ_SIZE and not self._held and self.phase is Phase.WEBSOCKET:
            # More waits: the next read is the next iteration's (see flow.read_later).
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.state.flow.read_later(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:
            # A bug, not bad input: bad input has its own answers. Close only
            # this connection and say so once, with the traceback.
            log.exception("%s: unexpected error, closing the connection", self.peer)
            self._internal_error()

    def _received(self, data: bytes) -> None:
        self.inbound.new_turn()  # a read or a turn: a share of messages while overloaded
        if self.phase is Phase.WEBSOCKET:
            self._ws_received(data)
            self._send_pong()
        elif self.phase is Phase.HTTP and self.http is not None:
            frames = self.http.receive(data)
            if frames:
                self._ws_received(frames)
                self._send_pong()

    def eof_received(self) -> bool | None:
        if self.phase is Phase.HTTP and self.http is not None:
            self.http.receive_eof()
        elif self.phase is Phase.WEBSOCKET and (self._held or self._parked or self._backlog):
            # What the client sent before its EOF still waits for flow control's
            # turns: keep the transport until that is handled (see take_turn).
            self._eof = True
            return True
        # Returning None lets the transport close itself.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._cancel_timer()
        if self.session is not None:
            self.state.chat.disconnect(self.session)
            self.session = None
        state = self.state
        if self.outbox is not None:
            state.flow.relieve(self.outbox)
            code = self.close_code or CloseReason.ABNORMAL_CLOSURE
            state.metrics.close_codes[code] += 1
            log.info(
                "%s: websocket closed, code %d",
                self.address,
                code,
                extra={"event": "close", "client": self.address, "code": int(code)},
            )
        if self.http is not None:
            self.http.slot.release()
            self.http = None  # it points back here
        state.flow.forget(self)
        self._backlog = None
        state.forget(self)
        # Nothing may point back at a connection once it is gone, so that it is
        # freed when the last reference goes rather than by the garbage
        # collector: under churn, closed connections waited for a full
        # collection by the thousand (several MiB of them).
        if self.outbox is not None:
            self.outbox.on_evict = _nothing_to_evict
        self._drop_parser()

    def pause_writing(self) -> None:
        # WebSocket phase: the buffer passed the pressure mark. Flow control
        # evicts this client if it does not drain in time; nobody is held for it.
        if self.phase is Phase.WEBSOCKET:
            if self.outbox is not None and self.closing is Closing.OPEN:
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
        state = self.state
        transport.set_write_buffer_limits(high=state.config.pressure_mark)
        sockets.bound_send_buffer(transport, state.config.max_buffer)
        self.outbox = Outbox(transport, self._evicted)
        state.websockets.add(self)
        state.metrics.handshakes += 1
        if decision.subprotocol is None:
            self.session = state.chat.connect_plain(self.outbox, self)
        else:
            self.session = state.chat.connect_v1(self.outbox, self)
            self.set_timer(state.config.handshake_timeout, self._hello_timeout)
        mode = decision.subprotocol or "plain"
        log.info(
            "%s: websocket open (%s)",
            self.address,
            mode,
            extra={"event": "open", "client": self.address, "protocol": mode},
        )
        if trailing:
            self._ws_received(trailing)
            self._send_pong()

    # -- WebSocket phase --------------------------------------------------------------

    def _ws_received(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is not None:
            data = backlog + data
            self._backlog = None
        if self._parked and not self._held:
            # The frames a hold left parsed in wsproto go first, and wsproto
            # gets nothing more before they are handled: else its buffer would
            # grow by a slice at every release.
            self._parked = False
            self._ws_chunk(b"")
        if self._held:
            # Kept in order for the release. (While held, more can still arrive:
            # TLS hands over what it had decrypted.)
            if data:
                self._backlog = data
            return
        # wsproto keeps what it is given until events() consumes it. Feeding it
        # at most one message's worth at a time keeps its buffer within
        # --max-message plus a frame header, however much one read brought.
        step = self.state.config.max_message + 14
        if len(data) <= step:
            self._ws_chunk(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), step):
            if self._failed() or self.phase is not Phase.WEBSOCKET:
                return
            if self._held:
                self._backlog = bytes(view[start:])
                return
            self._ws_chunk(bytes(view[start : start + step]))

    def _parser(self) -> WebSocket:
        """wsproto's side of the connection, made when first needed.

        Made on the first bytes after the upgrade and dropped again at rest
        (see _ws_chunk): an idle client sends nothing but a pong now and then,
        and a parser costs it 1.7 KB.
        """
        ws = self.ws
        if ws is None:
            ws = self.ws = wsparser.new_parser(self.state.config.max_message)
        return ws

    def _drop_parser(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            wsparser.release(ws)

    def _send_pong(self) -> None:
        """Answer the pings of one read with one pong, for the latest (RFC 6455, 5.5.3)."""
        payload, self._pong = self._pong, None
        ws, transport = self.ws, self.transport
        if payload is None or ws is None or transport is None:
            return
        if self.closing is not Closing.OPEN:
            return
        if ws.state is ConnectionState.OPEN:
            transport.write(ws.send(Pong(payload)))

    def _failed(self) -> bool:
        """The client broke the protocol: what it sends is discarded."""
        return self.closing is Closing.FAILED

    def _ws_chunk(self, data: bytes) -> None:
        if self._failed() or (not data and self.ws is None):  # a catch-up with nothing parsed
            return
        ws = self._parser()
        if ws.state is ConnectionState.CLOSED:
            return
        ws.receive_data(data)
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if self.closing is Closing.OPEN:
                    self._message(event)  # type: ignore[arg-type]
            elif kind is Ping:
                self._pong = event.payload  # type: ignore[attr-defined]
            elif kind is Pong:
                self.ping_deadline = 0.0
                if self._pong is None and wsparser.at_rest(ws):
                    # An idle client's only traffic: drop the parser until the
                    # next bytes (nothing else is left in this chunk).
                    self._drop_parser()
                self.inbound.rested()
            elif kind is CloseConnection:
                self._close_received(event)  # type: ignore[arg-type]
            if self._held:
                # The frames after this one stay in wsproto's buffer until
                # the next turn.
                self._held = self._parked = True
                return
            if self._failed() or self.phase is not Phase.WEBSOCKET:
                return

    # -- keepalive (rawchat.keepalive.Pinged) ---------------------------------------

    def expect_pong(self, deadline: float) -> None:
        if self.ping_deadline == 0.0:
            self.ping_deadline = deadline

    def pong_overdue(self, now: float, grace: float) -> bool:
        if not 0.0 < self.ping_deadline <= now:
            return False
        if self._held:
            # Flow control stopped reading this client: its pong may be waiting
            # behind its messages. It gets a full timeout more, counted again
            # until rawchat reads from it again.
            self.ping_deadline = now + grace
            return False
        return True

    # -- flow control (rawchat.flow.Publisher) -----------------------------------------

    @property
    def held(self) -> bool:
        """Whether flow control holds this client: rawchat is not reading what it sent."""
        return self._held

    def hold(self) -> None:
        self._held = True
        transport = self.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
            if not self._fixed_window:
                self._fixed_window = True
                sockets.fix_receive_window(transport)

    def take_turn(self) -> bool:
        transport = self.transport
        if self.phase is not Phase.WEBSOCKET or transport is None or transport.is_closing():
            return False
        # What was read but not handled goes first (the frames a hold left in
        # wsproto's buffer, then the backlog), until a verdict holds it again
        # (past --rate, or its share while overloaded), and reading resumes
        # only once none is left.
        self._held = False
        self.data_received(b"")  # the same guard against bugs as a read
        if self._held or self._backlog:
            self._held = True
            return True
        if self._eof:
            # The client half-closed before its last messages were handled:
            # they have been now. It sent no close frame (1006).
            self._leave()
            if self.outbox is not None:
                self.state.hub.drop(self.outbox)
            self.close_transport()
        elif not transport.is_closing():
            transport.resume_reading()
        return False

    def _message(self, event: TextMessage | BytesMessage) -> None:
        verdict = self.inbound.receive(event, self.session)
        if verdict is Verdict.DELIVERED:
            session = self.session
            if session is not None and session.greeted and self.closing is Closing.OPEN:
                self._cancel_timer()  # the hello came: no hello timeout
        elif verdict is Verdict.SHAPED:
            self.state.flow.shape(self, self.inbound.delay)
        elif verdict is Verdict.TURN_OVER:
            if self._backlog or self.ws is None or not wsparser.at_rest(self.ws):
                self.state.flow.wait_turn(self)  # more waits: it goes behind the others
        elif verdict is Verdict.TOO_BIG:
            self.fail(CloseReason.MESSAGE_TOO_BIG, wsparser.TOO_BIG)
        elif verdict is Verdict.FLOODING:
            log.warning(
                "%s: flooding past --rate for %.0f s, closing (4002)",
                self.address,
                self.inbound.shaped_for(),
                extra={"event": "flood", "client": self.address, "code": 4002},
            )
            self.close(CloseCode.RATE_LIMITED, "too many messages")
        elif verdict is Verdict.NOT_TEXT:
            self.close(CloseReason.UNSUPPORTED_DATA, "rawchat.v1 speaks JSON text frames")

    def _close_received(self, event: CloseConnection) -> None:
        ws = self.ws
        assert ws is not None and self.transport is not None
        if self.close_code is None:
            self.close_code = event.code
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The client closes: echo its code, then drop TCP first (RFC 6455, 7.1.1).
            self._leave()
            self.transport.write(ws.send(event.response()))
            self.close_transport()
        elif ws.state is ConnectionState.CLOSED:
            # The answer to our own close frame.
            self.close_transport()
        else:
            # wsproto reports a malformed frame as a CloseConnection it made up.
            log.debug("%s: protocol error %d: %s", self.peer, event.code, event.reason)
            reason = wsparser.TOO_BIG if event.code == CloseReason.MESSAGE_TOO_BIG else event.reason
            self.fail(event.code, reason or "")

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: send what is queued, then a close frame."""
        self._send_close(code, reason, flush=True)

    def fail(self, code: int, reason: str = "") -> None:
        """The client broke the protocol: close frame, half-close, ignore the rest."""
        self._send_close(code, reason, flush=False)
        self.closing = Closing.FAILED
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def _evicted(self) -> None:
        """Called by the hub: this client cannot keep up. Close it without waiting on it."""
        log.debug("%s: evicted, too slow", self.peer)
        self._send_close(CloseReason.POLICY_VIOLATION, "too slow", flush=False)

    def _send_close(self, code: int, reason: str, *, flush: bool) -> None:
        transport = self.transport
        if self.closing is not Closing.OPEN or self.outbox is None or transport is None:
            return
        ws = self._parser()
        if ws.state is not ConnectionState.OPEN:
            return
        self.closing = Closing.CLOSE_SENT
        if self.close_code is None:
            self.close_code = code
        queued = b""
        if self.outbox is not None:
            queued = self.state.hub.take(self.outbox) if flush else b""
            self.state.hub.drop(self.outbox)
            # A closing client must not hold back the others.
            self.state.flow.relieve(self.outbox)
        self._leave()
        try:
            transport.write(queued + ws.send(CloseConnection(code=code, reason=reason)))
        except LocalProtocolError:
            self.close_transport()
            return
        self.set_timer(self.state.config.close_timeout, self._abort)

    def _leave(self) -> None:
        """Leave the chat now: a closing client gets no more broadcasts."""
        if self.session is not None:
            self.state.chat.disconnect(self.session)
            self.session = None
        self.state.websockets.discard(self)

    def _internal_error(self) -> None:
        if (
            self.phase is Phase.WEBSOCKET
            and self.outbox is not None
            and self.closing is Closing.OPEN
        ):
            try:
                self.fail(CloseReason.INTERNAL_ERROR, "internal error")
                return
            except Exception:
                log.exception("%s: could not send 1011", self.peer)
        if self.transport is not None:
            self.transport.abort()

    def _hello_timeout(self) -> None:
        self._timer = None
        self.close(CloseCode.HELLO_TIMEOUT, "no hello")

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            log.debug("%s: close timed out, aborting", self.peer)
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

    # -- timers ---------------------------------------------------------------------

    def set_timer(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.state.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
