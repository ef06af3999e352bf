"""The listener: shared state, keepalive, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wsproto.frame_protocol import CloseReason

from rawchat import frames, http
from rawchat.chat import Chat
from rawchat.config import Config
from rawchat.connection import READ_SIZE, Connection, cap_segments
from rawchat.flow import Backpressure
from rawchat.hub import Hub, Outbox
from rawchat.limits import Occupancy, PerAddress
from rawchat.metrics import Metrics

if TYPE_CHECKING:
    from rawchat.broker import Broker

log = logging.getLogger("rawchat")


class ServerState:
    """Everything the connections of one server share."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.hub = Hub(config.max_buffer, loop.call_soon, config.pressure_mark)
        self.flow = Backpressure(self.hub, loop, config.slow_timeout)
        self.chat = Chat(self.hub, config, loop.call_later)
        static_dir = config.static_dir or http.default_static_dir()
        self.static = http.StaticFiles(Path(static_dir))
        #: Every open TCP connection, in any phase.
        self.connections: set[Connection] = set()
        #: The open WebSocket connections (those that get pings and the shutdown's 1001).
        self.websockets: set[Connection] = set()
        self.metrics = Metrics()
        self.occupancy = Occupancy(config.max_connections, config.max_connections_per_ip)
        self.handshake_limiter = PerAddress(
            config.handshake_rate, config.handshake_burst, loop.time
        )
        self.broker: Broker | None = None
        #: Set during shutdown; resolved when the last connection is gone.
        self.drained: asyncio.Future[None] | None = None
        #: Where every connection's reads land (see Connection.get_buffer).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.websockets.discard(conn)
        if not self.connections and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Keepalive:
    """Pings every WebSocket every ``interval`` and closes those that don't answer.

    One timer serves all connections, and the ping frame is the same bytes for
    everyone, so it goes out through the hub like any broadcast: a client too
    slow to take a two-byte ping is evicted like any other slow client.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.state.loop.call_later(self.state.config.ping_interval, self._ping)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _ping(self) -> None:
        state = self.state
        now = state.loop.time()
        deadline = now + state.config.ping_timeout
        outboxes: list[Outbox] = []
        for conn in state.websockets:
            if conn.outbox is None:
                continue
            if conn.ping_deadline == 0.0:
                conn.ping_deadline = deadline
            outboxes.append(conn.outbox)
        state.hub.broadcast(frames.PING, outboxes)
        state.loop.call_at(deadline, self._check)
        self._handle = state.loop.call_later(state.config.ping_interval, self._ping)

    def _check(self) -> None:
        now = self.state.loop.time()
        for conn in list(self.state.websockets):
            if 0.0 < conn.ping_deadline <= now:
                if conn.held:
                    # Flow control stopped reading this client: its pong may
                    # be waiting behind its messages. It gets a full timeout
                    # more, counted again until rawchat reads from it again.
                    conn.ping_deadline = now + self.state.config.ping_timeout
                    continue
                log.debug("%s: no pong in time", conn.peer)
                conn.close(CloseReason.INTERNAL_ERROR, "ping timeout")


class Server:
    """A running rawchat server: start it, then ``serve_forever`` or ``shutdown``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state: ServerState | None = None
        self._server: asyncio.Server | None = None
        self._keepalive: Keepalive | None = None
        self.broker: Broker | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.state = state = ServerState(self.config, loop)
        if self.config.broker is not None:
            from rawchat.broker import Broker

            self.broker = state.broker = Broker(self.config.broker, state.chat, self.config.history)
            await self.broker.start()
        self._server = await loop.create_server(
            lambda: Connection(state),
            self.config.host,
            self.config.port,
            backlog=4096,
            ssl=tls_context(self.config),
            ssl_handshake_timeout=self.config.handshake_timeout if self.config.certfile else None,
            reuse_port=self.config.reuse_port or None,
            start_serving=False,
        )
        for listener in self._server.sockets:
            cap_segments(listener)  # before it listens: every client gets it
        await self._server.start_serving()
        self._keepalive = Keepalive(state)
        self._keepalive.start()

    async def shutdown(self) -> None:
        """Stop accepting, send 1001 to every WebSocket, wait for them with a bound."""
        if self._server is None or self.state is None:
            return
        state = self.state
        self._server.close()
        if self._keepalive is not None:
            self._keepalive.stop()
        for conn in list(state.connections):
            if conn.phase == 0 and conn.transport is not None:  # still HTTP: just close
                conn.transport.close()
        state.chat.close()
        for conn in list(state.websockets):
            conn.close(CloseReason.GOING_AWAY, "server shutting down")
        if state.connections:
            state.drained = state.loop.create_future()
            try:
                await asyncio.wait_for(state.drained, self.config.shutdown_timeout)
            except TimeoutError:
                log.info("%d connections did not close in time", len(state.connections))
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self._server.wait_closed()
        if self.broker is not None:
            await self.broker.stop()


def tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS 1.2 or newer with the standard library's defaults, when a certificate is given."""
    if config.certfile is None or config.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.certfile, config.keyfile)
    return context


def listening_line(config: Config, port: int) -> str:
    flavour = "uvloop" if config.use_uvloop else "asyncio"
    scheme = "https" if config.certfile else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"rawchat listening on {scheme}://{host}:{port} ({flavour})"


async def serve(config: Config, ready: Callable[[Server], None] | None = None) -> None:
    # Signals are caught before anything starts, so that one arriving while
    # the broker connects still ends in a graceful shutdown.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = Server(config)
    try:
        await server.start()
        log.info("%s", listening_line(config, server.port))
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("rawchat shutting down")
        await server.shutdown()


def run(config: Config) -> None:
    if config.use_uvloop:
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
