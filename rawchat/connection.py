"""One client connection: an asyncio protocol with an HTTP phase and a WebSocket phase.

The HTTP phase is driven by h11: static files, error replies, and the opening
handshake. When a valid upgrade arrives, the 101 goes out through h11, and
whatever bytes h11 had already received past the request (a client may send its
first frames without waiting for the 101) are handed to a wsproto
``Connection`` as ``trailing_data``. From then on wsproto parses incoming frames,
and outgoing chat frames come from the hub, already encoded.

Closing follows RFC 6455 section 7: when the client closes, the close frame is
echoed and the server drops the TCP connection first; when the server closes, it
sends its close frame and waits (at most ``close_timeout``) for the client's.
After a protocol error the server stops reading frames, sends its close frame,
half-closes its side and lets the client hang up, so the close frame is not
lost to a TCP reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, cast

import h11
from wsproto.connection import Connection as WebSocket
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from rawchat import http, limits, metrics
from rawchat.hub import Outbox
from rawchat.limits import TokenBucket
from rawchat.messages import CloseCode

if TYPE_CHECKING:
    from rawchat.rooms import Session
    from rawchat.server import ServerState

log = logging.getLogger("rawchat.connection")

_HTTP, _WEBSOCKET, _CLOSED = 0, 1, 2

#: Bytes handed to h11 at a time (see _received).
_HEAD_SLICE = 1024

#: Bytes taken off a socket per read (see Connection.get_buffer).
READ_SIZE = 16 * 1024

#: The largest TCP segment rawchat sends or accepts (see cap_segments).
#: Ethernet's are 1448 bytes, so this only changes loopback, whose segments are
#: 64 KiB otherwise. A 16 KiB message still goes in one segment.
SEGMENT_CAP = 32_000

#: The kernel receive buffer of a client once flow control has held it (see hold).
#: Linux makes it 64 KiB: two segments of SEGMENT_CAP. A window that cannot
#: take two segments reopens late, on a zero-window probe, stalling the client.
HELD_RECEIVE_BUFFER = 32 * 1024


def _gone() -> None:
    """An outbox's eviction callback once its connection is gone."""


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "state",
        "transport",
        "address",
        "close_code",
        "_bucket",
        "_shaped_since",
        "phase",
        "http",
        "_request",
        "_timer",
        "ws",
        "outbox",
        "session",
        "_parts",
        "_size",
        "_closing",
        "_failed",
        "ping_deadline",
        "_held",
        "_turn",
        "_parked",
        "_backlog",
        "_eof",
        "_fixed_window",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        #: The client's address as limits count it (the proxy's word for it with --trust-proxy).
        self.address = "-"
        #: The close code exchanged (sent or received first); None before any.
        self.close_code: int | None = None
        #: Per-connection message rate (--rate), made on the first message and
        #: dropped at a pong once full again; since when it has been shaped
        #: without a spare token (loop time), 0 when it is within its rate.
        self._bucket: TokenBucket | None = None
        self._shaped_since = 0.0
        self.phase = _HTTP
        self.http: h11.Connection | None = None
        self._request: h11.Request | None = None
        #: The one pending timeout of this connection: HTTP deadlines, then the close bound.
        self._timer: asyncio.TimerHandle | None = None
        #: wsproto's parser, made on the first bytes after the upgrade (see _parser).
        self.ws: WebSocket | None = None
        self.outbox: Outbox | None = None
        self.session: Session | None = None
        #: Fragments of the message being received, and their length so far.
        self._parts: list[Any] | None = None
        self._size = 0
        #: We sent a close frame (or are about to): incoming messages are ignored.
        self._closing = False
        #: The peer broke the protocol: incoming bytes are discarded.
        self._failed = False
        #: When the outstanding ping must be answered by (loop time), 0 when none is.
        self.ping_deadline = 0.0
        #: Flow control holds this publisher: bytes read are kept, not handled.
        self._held = False
        #: Flow control's turn: handle one message, then stop again.
        self._turn = False
        #: A hold stopped the handling of parsed frames still in wsproto's buffer.
        self._parked = False
        self._backlog: bytes | None = None
        #: The client half-closed while messages it sent waited: closed once handled.
        self._eof = False
        #: Its kernel receive buffer no longer grows (it was held once).
        self._fixed_window = False

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
        self.http = h11.Connection(
            h11.SERVER,
            max_incomplete_event_size=max(self.state.config.max_request_head - _HEAD_SLICE, 1),
        )
        self._set_timer(self.state.config.handshake_timeout, self._http_timeout)
        self.state.connections.add(self)

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

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:
            # A bug, not bad input: bad input has its own answers. Close only
            # this connection and say so once, with the traceback.
            log.exception("%s: unexpected error, closing the connection", self.peer)
            self._internal_error()

    def _received(self, data: bytes) -> None:
        if self.phase == _WEBSOCKET:
            self._ws_received(data)
        elif self.phase == _HTTP:
            assert self.http is not None
            if self.http.their_state is h11.IDLE and self._request is None and not self._pending():
                # A new request starts: its head must arrive within the handshake
                # bound, counted from its first byte (not restarted by each read).
                self._set_timer(self.state.config.handshake_timeout, self._http_timeout)
            # h11 measures a head only while it is incomplete, so a whole one
            # arriving in one read could be any size. Fed in small slices, no
            # head longer than --max-request-head gets through (see connection_made).
            if len(data) <= _HEAD_SLICE:
                self.http.receive_data(data)
                self._drive_http()
                return
            for start in range(0, len(data), _HEAD_SLICE):
                if self.phase == _WEBSOCKET:  # upgraded mid-read: the rest is frames
                    self._ws_received(data[start:])
                    return
                if self.phase != _HTTP or self.transport is None or self.transport.is_closing():
                    return
                self.http.receive_data(data[start : start + _HEAD_SLICE])
                self._drive_http()

    def eof_received(self) -> bool | None:
        if self.phase == _HTTP and self.http is not None:
            self.http.receive_data(b"")
            self._drive_http()
        elif self.phase == _WEBSOCKET and (self._held or self._parked or self._backlog):
            # Messages read but not handled yet are handled first (see take_turn).
            self._eof = True
            return True
        # Returning None lets the transport close itself.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = _CLOSED
        self._cancel_timer()
        if self.session is not None:
            self.state.chat.disconnect(self.session)
            self.session = None
        state = self.state
        if self.outbox is not None:
            state.flow.relieve(self.outbox)
            state.occupancy.leave(self.address)
            code = self.close_code or CloseReason.ABNORMAL_CLOSURE
            state.metrics.close_codes[code] += 1
            log.info(
                "%s: websocket closed, code %d",
                self.address,
                code,
                extra={"event": "close", "client": self.address, "code": int(code)},
            )
        state.flow.forget(self)
        self._backlog = None
        state.forget(self)
        # Nothing may point back at a connection once it is gone, so that it is
        # freed when the last reference goes rather than by the garbage
        # collector: under churn, closed connections waited for a full
        # collection by the thousand (several MiB of them).
        if self.outbox is not None:
            self.outbox.on_evict = _gone
        self._drop_parser()

    def pause_writing(self) -> None:
        # WebSocket phase: the buffer passed the pressure mark. Flow control
        # holds the senders until this client drains, or evicts it if it doesn't.
        if self.phase == _WEBSOCKET:
            if self.outbox is not None and not self._closing:
                self.state.flow.congest(self.outbox)
        elif self.phase == _HTTP and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.phase == _WEBSOCKET:
            if self.outbox is not None:
                self.state.flow.relieve(self.outbox)
        elif self.phase == _HTTP and self.transport is not None:
            self.transport.resume_reading()

    # -- HTTP phase -----------------------------------------------------------------

    def _drive_http(self) -> None:
        conn = self.http
        while self.phase == _HTTP and conn is not None:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("%s: bad HTTP request: %s", self.peer, exc)
                self._http_fail(exc.error_status_hint)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                if event.method not in (b"GET", b"HEAD"):
                    # Answer at once and close: no need to read a body we refuse.
                    self._reply(http.error_reply(405, (b"allow", http.ALLOWED_METHODS)), close=True)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self._close_transport()
                return
            # h11.Data: request bodies are not used by anything rawchat serves.

    def _respond(self) -> None:
        request = self._request
        assert request is not None and self.http is not None
        self._request = None
        head_only = request.method == b"HEAD"
        path = http.path_of(request.target)
        if path == http.WEBSOCKET_PATH:
            decision = self._admit(request)
            if isinstance(decision, http.Upgrade):
                self._upgrade(decision)
            else:
                self._reply(decision, head_only=head_only)
        elif path == "/healthz":
            body = metrics.health(self.state)
            self._reply(http.document(b"application/json", body), head_only=head_only)
        elif path == "/metrics":
            body = metrics.render(self.state)
            self._reply(http.document(metrics.CONTENT_TYPE, body), head_only=head_only)
        else:
            self._reply(self.state.static.reply(request.target), head_only=head_only)

    def _admit(self, request: h11.Request) -> http.Upgrade | http.Reply:
        """Check an opening handshake against the RFC, then against our limits."""
        state = self.state
        config = state.config
        decision = http.check_upgrade(request)
        reason = None
        if isinstance(decision, http.Reply):
            reason = {405: "method", 426: "version"}.get(decision.status, "bad_request")
        else:
            self.address = limits.client_address(self.address, request.headers, config.trust_proxy)
            origin = http.header(request, b"origin")
            host = http.header(request, b"host")
            if not limits.origin_allowed(
                None if origin is None else origin.decode("latin-1"),
                None if host is None else host.decode("latin-1"),
                config.allow_origins,
                tls=config.certfile is not None,
            ):
                reason, decision = "origin", http.error_reply(403)
            elif not state.handshake_limiter.allow(self.address):
                reason, decision = "rate", http.error_reply(429, (b"retry-after", b"1"))
            else:
                status = state.occupancy.refusal(self.address)
                if status is not None:
                    reason = "full" if status == 503 else "per_ip"
                    decision = http.error_reply(status, (b"retry-after", b"5"))
        if reason is not None:
            state.metrics.handshake_failures[reason] += 1
            log.debug("%s: refused upgrade (%s)", self.peer, reason)
        return decision

    def _reply(self, reply: http.Reply, *, head_only: bool = False, close: bool = False) -> None:
        conn = self.http
        assert conn is not None and self.transport is not None
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
        self.transport.write(data)
        if conn.our_state is h11.MUST_CLOSE:
            self._close_transport()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._set_timer(self.state.config.keepalive_timeout, self._http_timeout)

    def _http_fail(self, status: int) -> None:
        conn = self.http
        if conn is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._reply(http.error_reply(status), close=True)
            except h11.LocalProtocolError:
                pass
        self._close_transport()

    def _http_timeout(self) -> None:
        """A request head too slow to arrive gets 408; an idle keep-alive just closes."""
        self._timer = None
        if self.phase != _HTTP or self.http is None:
            return
        if self.http.their_state is h11.IDLE and self._request is None and not self._pending():
            self._close_transport()
        else:
            self._http_fail(408)

    def _pending(self) -> bool:
        # h11 keeps received bytes it has not parsed yet; a partial head is pending.
        return bool(self.http is not None and self.http.trailing_data[0])

    # -- the upgrade ----------------------------------------------------------------

    def _upgrade(self, decision: http.Upgrade) -> None:
        conn = self.http
        transport = self.transport
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
        self.http = None
        self._cancel_timer()
        self.phase = _WEBSOCKET
        state = self.state
        transport.set_write_buffer_limits(high=state.config.pressure_mark)
        # What waits in the kernel's send buffer is invisible to
        # get_write_buffer_size: left to grow (to megabytes), it would let a
        # client that stopped reading cost far more than --max-buffer. A
        # quarter of --max-buffer in all (Linux doubles the half asked), not
        # the smaller pressure mark: room for a burst of large messages
        # between two iterations.
        sndbuf = max(state.config.max_buffer // 8, 16 * 1024)
        _fix_kernel_buffer(transport, socket.SO_SNDBUF, sndbuf)
        self.outbox = Outbox(transport, self._evicted)
        state.websockets.add(self)
        state.occupancy.enter(self.address)
        state.metrics.handshakes += 1
        if decision.subprotocol is None:
            self.session = state.chat.connect_plain(self.outbox, self)
        else:
            self.session = state.chat.connect_v1(self.outbox, self)
            self._set_timer(state.config.handshake_timeout, self._hello_timeout)
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
            if self._failed or self.phase != _WEBSOCKET:
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
            ws = self.ws = WebSocket(ConnectionType.SERVER)
        return ws

    def _drop_parser(self) -> None:
        """Let go of wsproto's side of the connection, freed at once.

        Its frame parser is a generator that refers back to its owner, so the
        pair would otherwise wait for a full garbage collection; closing the
        generator breaks that loop. (wsproto internals, as in _at_rest: if they
        change, the collector frees the parser as before.)
        """
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws._proto._parse_more.close()
            except AttributeError:
                pass

    @staticmethod
    def _at_rest(ws: WebSocket) -> bool:
        """Whether ``ws`` holds nothing a fresh parser would not: no part of a frame or message.

        This reads wsproto's internals (the same in 1.2 and 1.3). Anything
        unexpected counts as busy: a change there costs memory, never correctness.
        """
        try:
            proto = ws._proto
            frames = proto._frame_decoder
            return (
                ws.state is ConnectionState.OPEN
                and not ws._events
                and frames.header is None
                and not len(frames.buffer)
                and proto._message_decoder.opcode is None
                and proto._outbound_opcode is None
            )
        except AttributeError:
            return False

    def _ws_chunk(self, data: bytes) -> None:
        if self._failed or (not data and self.ws is None):  # a catch-up with nothing parsed
            return
        ws = self._parser()
        if ws.state is ConnectionState.CLOSED:
            return
        ws.receive_data(data)
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if not self._closing:
                    self._message_part(event)  # type: ignore[arg-type]
            elif kind is Ping:
                if not self._closing and self.transport is not None:
                    self.transport.write(ws.send(event.response()))  # type: ignore[attr-defined]
            elif kind is Pong:
                self.ping_deadline = 0.0
                if self._at_rest(ws):
                    # An idle client's only traffic: drop the parser until the
                    # next bytes (nothing else is left in this chunk).
                    self._drop_parser()
                bucket = self._bucket
                if bucket is not None and bucket.full(self.state.loop.time()):
                    self._bucket = None  # a new one is made full too
            elif kind is CloseConnection:
                self._close_received(event)  # type: ignore[arg-type]
            if self._held or self._turn:
                # The frames after this one stay in wsproto's buffer until
                # the next turn.
                self._held = self._parked = True
                return
            if self._failed or self.phase != _WEBSOCKET:
                return

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
                # A held client is read in bursts, a message per turn, and Linux
                # answers bursts of reading by growing the receive buffer: what
                # the client sent would wait there, its messages late by all of
                # it. Fixed, its own buffers fill and its writes wait instead.
                self._fixed_window = True
                _fix_kernel_buffer(transport, socket.SO_RCVBUF, HELD_RECEIVE_BUFFER)

    def take_turn(self) -> bool:
        transport = self.transport
        if self.phase != _WEBSOCKET or transport is None or transport.is_closing():
            return False
        # What was read but not handled goes first (the frames a hold left in
        # wsproto's buffer, then the backlog), one message per turn, and
        # reading resumes only once none is left: otherwise each turn would
        # let one more read in while handling one message.
        self._held, self._turn = False, True
        self.data_received(b"")  # the same guard against bugs as a read
        self._turn = False
        if self._held or self._backlog:
            self._held = True
            return True
        if self._eof:
            self._close_transport()
        elif not transport.is_closing():
            transport.resume_reading()
        return False

    def _message_part(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        limit = self.state.config.max_message
        parts = self._parts
        if parts is None:
            if event.message_finished:
                # The common case, a message in one frame: no joining.
                self._deliver(data, limit)
                return
            parts = self._parts = []
            self._size = 0
        # Characters, for text: a bound on memory; the exact byte count is checked
        # once the message is whole.
        self._size += len(data)
        if self._size > limit:
            self._parts = None
            self.fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return
        parts.append(data)
        if event.message_finished:
            self._parts = None
            joined: str | bytes = "".join(parts) if isinstance(data, str) else b"".join(parts)
            self._deliver(joined, limit)

    def _deliver(self, data: str | bytes | bytearray, limit: int) -> None:
        size = len(data)
        if isinstance(data, str) and size * 4 > limit and size <= limit:
            size = len(data.encode())
        if size > limit:
            self.fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return
        session = self.session
        if session is None:
            return
        state = self.state
        state.metrics.messages_in += 1
        if session.plain:
            payload = data if isinstance(data, str) else bytes(data)
            state.chat.plain_message(session, payload)
        elif isinstance(data, str):
            state.chat.v1_message(session, data)
            if session.greeted and self._timer is not None and not self._closing:
                self._cancel_timer()
        else:
            self.close(CloseReason.UNSUPPORTED_DATA, "rawchat.v1 speaks JSON text frames")
            return
        if state.config.rate > 0:
            self._spend_token()

    def _spend_token(self) -> None:
        """Count a handled message against --rate: past it, shape, never drop.

        Reading stops until the next token (the messages already read wait in
        order, what the client sends meanwhile waits in TCP). Only a client
        shaped without a break for --flood-timeout is closed, with 4002.
        """
        state = self.state
        now = state.loop.time()
        bucket = self._bucket
        if bucket is None:
            # Full, as one made at the upgrade would be by now.
            bucket = self._bucket = TokenBucket(state.config.rate, state.config.burst, now)
        delay = bucket.spend(now)
        if not delay:
            self._shaped_since = 0.0
            return
        if not self._shaped_since:
            self._shaped_since = now
        elif state.config.flood_timeout and now - self._shaped_since > state.config.flood_timeout:
            log.warning(
                "%s: flooding past --rate for %.0f s, closing (4002)",
                self.address,
                now - self._shaped_since,
                extra={"event": "flood", "client": self.address, "code": 4002},
            )
            self.close(CloseCode.RATE_LIMITED, "too many messages")
            return
        state.metrics.rate_limited += 1
        state.flow.shape(self, delay)

    def _close_received(self, event: CloseConnection) -> None:
        ws = self.ws
        assert ws is not None and self.transport is not None
        if self.close_code is None:
            self.close_code = event.code
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The client closes: echo its code, then drop TCP first (RFC 6455, 7.1.1).
            self._leave()
            self.transport.write(ws.send(event.response()))
            self._close_transport()
        elif ws.state is ConnectionState.CLOSED:
            # The answer to our own close frame.
            self._close_transport()
        else:
            # wsproto reports a malformed frame as a CloseConnection it made up.
            log.debug("%s: protocol error %d: %s", self.peer, event.code, event.reason)
            self.fail(event.code, event.reason or "")

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: send what is queued, then a close frame."""
        self._send_close(code, reason, flush=True)

    def fail(self, code: int, reason: str = "") -> None:
        """The client broke the protocol: close frame, half-close, ignore the rest."""
        self._failed = True
        self._send_close(code, reason, flush=False)
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def _evicted(self) -> None:
        """Called by the hub: this client cannot keep up. Close it without waiting on it."""
        log.debug("%s: evicted, too slow", self.peer)
        self._send_close(CloseReason.POLICY_VIOLATION, "too slow", flush=False)

    def _send_close(self, code: int, reason: str, *, flush: bool) -> None:
        transport = self.transport
        if self._closing or self.outbox is None or transport is None:
            return
        ws = self._parser()
        if ws.state is not ConnectionState.OPEN:
            return
        self._closing = True
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
            self._close_transport()
            return
        self._set_timer(self.state.config.close_timeout, self._abort)

    def _leave(self) -> None:
        """Leave the chat now: a closing client gets no more broadcasts."""
        if self.session is not None:
            self.state.chat.disconnect(self.session)
            self.session = None
        self.state.websockets.discard(self)

    def _internal_error(self) -> None:
        if self.phase == _WEBSOCKET and self.outbox is not None and not self._closing:
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

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            # close() waits for the write buffer to drain; a peer that stops
            # reading would keep it open forever.
            self._set_timer(self.state.config.close_timeout, self._abort)
        else:
            self._cancel_timer()

    # -- timers ---------------------------------------------------------------------

    def _set_timer(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.state.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def cap_segments(listener: socket.socket) -> None:
    """Have the clients ``listener`` accepts send segments of at most SEGMENT_CAP.

    A client's segment size is agreed on in the handshake, so this is set on
    the listening socket. What a held client has sent waits in its receive
    buffer, every byte of it late; with loopback's 64 KiB segments that buffer
    could not be smaller than 128 KiB without stalling (see HELD_RECEIVE_BUFFER).
    """
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT_CAP)
    except (OSError, AttributeError):  # no TCP_MAXSEG here, or refused: segments as they come
        pass


def _fix_kernel_buffer(transport: asyncio.Transport, option: int, size: int) -> None:
    """Fix one of the socket's kernel buffers (``SO_SNDBUF`` or ``SO_RCVBUF``) at ``size``.

    Linux doubles what it is given and, once it is given a size, stops
    growing that buffer on its own (autotuning, up to megabytes).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except (OSError, AttributeError):  # not a TCP socket (tests), or refused
        pass
