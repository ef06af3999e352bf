"""A transport and an event loop that only record: rawchat's logic with no sockets."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import struct
from collections.abc import Callable
from typing import Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import Event, Request

from rawchat.config import Config
from rawchat.connection import Connection
from rawchat.server import ServerState


def masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame built by hand, for what a well-behaved library refuses to send."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_body(client: h11.Connection) -> bytes:
    """The body of the response whose head ``client`` (h11 as the client) just returned."""
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body
        else:
            raise AssertionError(f"truncated or malformed response: {event!r}")


class FakeTransport(asyncio.Transport):
    """Collects what the server writes; its buffer size is whatever the test says."""

    def __init__(self, loop: FakeLoop | None = None) -> None:
        super().__init__()
        self.loop = loop
        self.written = bytearray()
        self.writes = 0
        self.buffered = 0  # what get_write_buffer_size reports: a client that is not reading
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.high_water: int | None = None
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: Any) -> None:
        # As uvloop does on a closed handle, and asyncio after write_eof.
        if self.closed:
            raise RuntimeError("unable to perform operation: the handler is closed")
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        self.written += data
        self.writes += 1

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None and self.loop is not None:
                # Like asyncio: connection_lost comes in a later iteration.
                self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_soon/call_later that run only when the test says so, on a clock it moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ready: list[Callable[[], object]] = []
        self._timers: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.ready.append(lambda: callback(*args))

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle(when, lambda: callback(*args))
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def run_ready(self) -> None:
        """One loop iteration: run what was scheduled with call_soon."""
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()

    def advance(self, seconds: float) -> None:
        """Move the clock and fire the timers that fall due."""
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                handle.callback()
        self.run_ready()


class Owner:
    """Whom an outbox is for, in tests: it records the hub's evictions."""

    def __init__(self) -> None:
        self.evictions = 0

    def evicted(self) -> None:
        self.evictions += 1


def make_state(**overrides: Any) -> tuple[ServerState, FakeLoop]:
    loop = FakeLoop()
    state = ServerState(Config(**overrides), loop)  # type: ignore[arg-type]
    # The fake clock's ticks with the real CPU time would measure nothing real.
    state.flow.load.work_clock = None
    return state, loop


def connect(state: ServerState) -> tuple[Connection, FakeTransport]:
    conn = Connection(state)
    transport = FakeTransport(state.loop)  # type: ignore[arg-type]
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


class Client:
    """A wsproto client wired to one server Connection through a FakeTransport."""

    def __init__(self, state: ServerState, loop: FakeLoop, subprotocols: list[str] | None = None):
        self.loop = loop
        self.conn, self.transport = connect(state)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.conn.data_received(
            self.ws.send(Request(host="localhost", target="/ws", subprotocols=subprotocols or []))
        )
        self.events: list[Event] = []
        self.receive()  # the 101

    def send(self, event: Event) -> None:
        self.conn.data_received(self.ws.send(event))

    def send_raw(self, data: bytes) -> None:
        self.conn.data_received(data)

    def receive(self) -> list[Event]:
        """Run one loop iteration, then parse everything the server wrote."""
        self.loop.run_ready()
        self.ws.receive_data(self.transport.take())
        new = list(self.ws.events())
        self.events += new
        return new


class Peer:
    """The connection under a chat session, as the chat sees it: an address, closes asked."""

    address = "192.0.2.1"

    def __init__(self) -> None:
        self.closes: list[int] = []

    def close(self, code: int, reason: str = "") -> None:
        self.closes.append(code)
