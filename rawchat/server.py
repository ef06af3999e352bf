"""The listener: wiring, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from wsproto.frame_protocol import CloseReason

from rawchat import http, metrics
from rawchat.archive import Archive, StoredReservations
from rawchat.config import Config
from rawchat.connection import Connection
from rawchat.http_phase import Phase, Route
from rawchat.keepalive import Keepalive
from rawchat.metrics import Counters, Exposition, Sources
from rawchat.shared import Shared
from rawchat.sockets import cap_segments

if TYPE_CHECKING:
    from rawchat.broker import Broker

log = logging.getLogger("rawchat")


class ServerState(Shared[Connection]):
    """What the connections share, wired to the routes that report on them."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        #: Paths answered by a handler (filled below, once there is something to report).
        self.routes: dict[str, Route] = {}
        super().__init__(config, loop, routes=self.routes, counters=Counters())
        self.flow.readers = self.websockets.__len__  # who may fall behind on broadcasts
        self.flow.load.work_clock = time.thread_time  # how busy the loop is (overload)
        self.broker: Broker | None = None
        #: The history on disk, unless --data none or --broker (set by Server.start).
        self.archive: Archive | None = None
        self.exposition = Exposition(
            Sources(
                counters=self.metrics,
                hub=self.hub,
                connections=lambda: len(self.connections),
                websockets=self.websocket_modes,
                rooms=lambda: len(self.chat.rooms),
                holds=lambda: self.flow.holds,
                broker=lambda: self.broker,
                moderation=lambda: self.chat.moderation.counts,
                store=lambda: None if self.archive is None else self.archive.store,
            )
        )
        exposition = self.exposition
        self.routes["/healthz"] = lambda: http.document(b"application/json", exposition.health())
        self.routes["/metrics"] = lambda: http.document(metrics.CONTENT_TYPE, exposition.render())

    def websocket_modes(self) -> Counter[str]:
        modes: Counter[str] = Counter()
        for conn in self.websockets:
            session = None if conn.websocket is None else conn.websocket.session
            modes["plain" if session is None or session.plain else "v1"] += 1
        return modes


def keepalive(state: Shared[Connection]) -> Keepalive:
    """The keepalive of ``state``'s WebSockets, as its config sets it."""
    config = state.config
    return Keepalive(
        state.loop, state.hub, state.websockets, config.ping_interval, config.ping_timeout
    )


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
        # Before any room is made: rooms fill their window from it, ids go past its own.
        archive = state.archive = Archive.open(self.config)
        if archive is not None:
            state.chat.registry.shelf.archive = archive
            state.chat.epoch = archive.epoch
            state.chat.moderation.reserved = StoredReservations(archive.store)
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
        self._keepalive = keepalive(state)
        self._keepalive.start()
        state.flow.start()  # watches the loop's lag: publishers take turns when it falls behind

    async def shutdown(self) -> None:
        """Stop accepting, send 1001 to every WebSocket, wait for them with a bound."""
        if self._server is None or self.state is None:
            return
        state = self.state
        self._server.close()
        if self._keepalive is not None:
            self._keepalive.stop()
        state.flow.stop()
        for conn in list(state.connections):
            if conn.phase is Phase.HTTP and conn.transport is not None:  # no handshake to do
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
        if state.archive is not None:
            state.archive.close()  # the last batch: a few milliseconds of writing


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


def history_line(config: Config) -> str:
    """Where history is kept, logged right after the listening line."""
    if config.broker is not None:
        return "history in Redis (--broker)"
    if config.data is None:
        return "history in memory only (--data none)"
    return f"history in {config.data} (--data)"


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
        log.info("%s", history_line(config))
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("rawchat shutting down")
        await server.shutdown()


def run(config: Config, ready: Callable[[Server], None] | None = None) -> None:
    if config.use_uvloop:
        import uvloop

        uvloop.run(serve(config, ready))
    else:
        asyncio.run(serve(config, ready))
