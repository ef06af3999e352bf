"""What the connections of one server share, split by the part that uses it.

A connection (rawchat.connection) gets a :class:`Shared`: the one buffer every
read lands in, the registry of open connections, and one part per phase, each
holding only what that phase uses: :class:`rawchat.http_phase.HttpShared` for
the HTTP phase (routes, static files, the caps), :class:`WebSocketShared` for
the WebSocket phase (the hub, flow control, the chat). What reports on them,
the routes and the counters, is injected by the server (rawchat.server), which
builds on this module rather than the other way round.

The registry does not know what a connection is beyond what the chat asks of
it (rawchat.rooms.Closable): it is generic in the connection's type.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from rawchat import http
from rawchat.chat import Chat
from rawchat.config import Config
from rawchat.flow import Backpressure
from rawchat.http_phase import HttpShared, Route
from rawchat.hub import Hub, Outbox
from rawchat.inbound import Inbound, Intake
from rawchat.limits import Occupancy, PerAddress
from rawchat.metrics import Counters
from rawchat.rooms import Closable
from rawchat.websocket_phase import WebSocketPhase

log = logging.getLogger("rawchat.connection")

#: Bytes taken off a socket per read (see Connection.get_buffer).
READ_SIZE = 16 * 1024

C = TypeVar("C", bound=Closable)


class _Gone:
    """An outbox's owner once its connection has closed: an eviction does nothing more."""

    __slots__ = ()

    def evicted(self) -> None:
        pass


_GONE = _Gone()


class WebSocketShared(Generic[C]):
    """What the WebSocket phases of one server share: who is open, and what they join."""

    __slots__ = ("config", "hub", "flow", "chat", "counters", "intake", "open")

    def __init__(
        self,
        config: Config,
        hub: Hub,
        flow: Backpressure,
        chat: Chat,
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.hub = hub
        self.flow = flow
        self.chat = chat
        self.counters = counters
        #: What every connection's Inbound shares (and its clock: one bound method, not one each).
        self.intake = Intake(chat, counters, config, flow.load, clock)
        #: The open WebSockets (those that get pings and the shutdown's 1001).
        self.open: set[C] = set()

    def phase(self, *, v1: bool) -> WebSocketPhase:
        """The WebSocket phase of a client just upgraded (its session comes next)."""
        config = self.config
        return WebSocketPhase(
            Inbound(self.intake),
            None,
            close_timeout=config.close_timeout,
            hello_timeout=config.handshake_timeout if v1 else None,
        )

    def opened(self, conn: C, *, v1: bool) -> WebSocketPhase:
        """``conn`` upgraded: it is counted and open, and this is its WebSocket phase.

        Its session (``join``) comes once the connection holds the phase:
        the chat may close it at once (an address banned from the lobby).
        """
        self.counters.handshakes += 1
        self.open.add(conn)
        return self.phase(v1=v1)

    def join(
        self, conn: C, outbox: Outbox, websocket: WebSocketPhase, subprotocol: str | None
    ) -> None:
        """``conn``'s session in the chat: a plain client enters the lobby at once."""
        connect = self.chat.connect_plain if subprotocol is None else self.chat.connect_v1
        websocket.session = connect(outbox, conn)
        mode = subprotocol or "plain"
        log.info(
            "%s: websocket open (%s)",
            conn.address,
            mode,
            extra={"event": "open", "client": conn.address, "protocol": mode},
        )

    def leave(
        self, conn: C, outbox: Outbox | None, websocket: WebSocketPhase, *, flush: bool
    ) -> bytes:
        """``conn`` leaves the chat and the hub: it gets no more broadcasts.

        With ``flush``, what the hub had queued for it is returned, to be
        written before anything else goes out.
        """
        queued = b""
        if outbox is not None:
            hub = self.hub
            queued = hub.take(outbox) if flush and not outbox.closed else b""
            hub.drop(outbox)
            self.flow.relieve(outbox)
        if websocket.session is not None:
            session, websocket.session = websocket.session, None
            self.chat.disconnect(session)
        self.open.discard(conn)
        return queued

    def closed(self, websocket: WebSocketPhase, outbox: Outbox | None, address: str) -> None:
        """The transport under ``websocket`` is gone: count and log the code it ended with."""
        code = websocket.connection_lost()
        self.counters.close_codes[code] += 1
        log.info(
            "%s: websocket closed, code %d",
            address,
            code,
            extra={"event": "close", "client": address, "code": code},
        )
        if outbox is not None:
            # Nothing may point back at a connection once it is gone, so that
            # it is freed when the last reference goes rather than by the
            # garbage collector: under churn, closed connections waited for a
            # full collection by the thousand (several MiB of them).
            outbox.owner = _GONE


class Shared(Generic[C]):
    """What the connections of one server share."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        routes: Mapping[str, Route],
        counters: Counters,
    ) -> None:
        self.config = config
        self.loop = loop
        self.metrics = counters
        self.hub = Hub(config.max_buffer, loop.call_soon, config.pressure_mark)
        self.flow = Backpressure(self.hub, loop, config.slow_timeout)
        self.chat = Chat(self.hub, config, loop.call_later)
        static_dir = config.static_dir or http.default_static_dir()
        self.http = HttpShared(
            config,
            routes,
            http.StaticFiles(Path(static_dir)),
            #: Open connections, any phase: an idle HTTP connection holds a slot too.
            Occupancy(config.max_connections, config.max_connections_per_ip),
            PerAddress(config.handshake_rate, config.handshake_burst, loop.time),
            counters,
        )
        self.ws: WebSocketShared[C] = WebSocketShared(
            config, self.hub, self.flow, self.chat, counters, loop.time
        )
        #: Every open TCP connection, in any phase.
        self.connections: set[C] = set()
        #: The open WebSocket connections (those that get pings and the shutdown's 1001).
        self.websockets = self.ws.open
        #: Set during shutdown; resolved when the last connection is gone.
        self.drained: asyncio.Future[None] | None = None
        #: Where every connection's reads land (see Connection.get_buffer).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def websocket_phase(self, *, v1: bool) -> WebSocketPhase:
        """The WebSocket phase of a client just upgraded (its session comes next)."""
        return self.ws.phase(v1=v1)

    def forget(self, conn: C) -> None:
        self.connections.discard(conn)
        self.websockets.discard(conn)
        if not self.connections and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
