"""The load tool's WebSocket client: one asyncio Protocol per connection.

Thousands of these live in one process, so the receive path does as little
as it can. Most connections only count: every message in a run has the
same size, so frames follow from the byte count (``count_aligned``) as long
as every frame boundary holds a text frame's first byte. Sampled connections parse every frame
and decode the probe (sender, sequence, send time) to measure latency and
check order. They time a message from its arrival in the socket, stamped by
the kernel (see ``benchmarks.stamped``), not from when this process got to it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from benchmarks import stamped
from benchmarks.frames import (
    OP_CLOSE,
    OP_PING,
    PROBE_HEAD,
    FrameReader,
    Masker,
    ProbeEncoder,
    SequenceCheck,
    check_upgrade_response,
    close_frame,
    count_aligned,
    decode_probe,
    mask_frame,
    response_status,
    server_frame_size,
    upgrade_request,
)

# Python 3.11's socket module lacks the name; the value is Linux's.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

NEVER = 1 << 62


class Refused(ConnectionError):
    """The server answered the upgrade with an HTTP status (429, 503 ...) instead of 101."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status

#: Sampled connections time messages from the kernel's arrival stamps.
STAMPED = stamped.supported()


@dataclass
class RunState:
    """What every connection of a run shares: sizes, the latency window, tallies."""

    message_size: int
    senders: int
    frame_size: int = 0
    #: Latency is recorded for probes sent in [window_start_ns, window_end_ns).
    window_start_ns: int = NEVER
    window_end_ns: int = NEVER
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    #: How long sampled reads waited in their socket for this process (every 8th read).
    tool_delays_ns: array[int] = field(default_factory=lambda: array("q"))
    sampled_reads: int = 0
    unexpected_frames: int = 0
    protocol_errors: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    sent_per_sender: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frame_size = server_frame_size(self.message_size)
        self.sent_per_sender = [0] * self.senders

    def open_window(self) -> None:
        self.window_start_ns = time.monotonic_ns()
        self.window_end_ns = NEVER

    def close_window(self) -> None:
        self.window_end_ns = time.monotonic_ns()


class BenchClient(asyncio.Protocol):
    """A client connection: raw HTTP upgrade, then frames counted or sampled."""

    def __init__(self, index: int, run: RunState, sampled: bool) -> None:
        self.index = index
        self.run = run
        self.sampled = sampled
        self._head = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.reader: FrameReader | None = None
        self.can_write = True
        self.open = False
        self.closed = False
        self.close_code: int | None = None
        self.eof = False
        self.checks: list[SequenceCheck] = []
        #: Set for connections that join while senders run: their first
        #: message from each sender starts that sender's sequence check.
        self.late = False
        self.first_seq: list[int] = []

    # --- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            self._handshake_data(data)
            return
        if not self.sampled and not reader.buf:
            counted = count_aligned(reader.frames, reader.skip, data, self.run.frame_size)
            if counted is not None:
                reader.frames, reader.skip = counted
                return
        if self.sampled:
            now = time.monotonic_ns()
            arrived = self.arrived_ns
            if arrived:
                run = self.run
                run.sampled_reads += 1
                if run.sampled_reads & 7 == 0 and run.window_start_ns <= now < run.window_end_ns:
                    run.tool_delays_ns.append(now - arrived)
                now = arrived
            self._now = now
        reader.feed(data)
        if reader.error is not None:
            self.run.protocol_errors += 1
            self.abort()

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.gone.done():
            self.gone.set_result(None)

    def pause_writing(self) -> None:
        self.can_write = False

    def resume_writing(self) -> None:
        self.can_write = True

    # --- handshake ----------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 16384:
                self._fail("response head too large")
            return
        head = bytes(self._head[:end])
        problem = check_upgrade_response(head)
        if problem is not None:
            status = response_status(head) or 101
            self._fail(Refused(status, problem) if status != 101 else ConnectionError(problem))
            return
        rest = bytes(self._head[end + 4 :])
        self._head = bytearray()
        if self.sampled:
            self.checks = [SequenceCheck() for _ in range(self.run.senders)]
            self.first_seq = [-1] * self.run.senders
            self.reader = FrameReader(PROBE_HEAD, self._on_probe, self._on_control)
        else:
            self.reader = FrameReader(0, None, self._on_control)
        self.open = True
        self.upgraded.set_result(None)
        if rest:
            self.data_received(rest)

    def _fail(self, problem: str | ConnectionError) -> None:
        if not self.upgraded.done():
            error = problem if isinstance(problem, Exception) else ConnectionError(problem)
            self.upgraded.set_exception(error)
        self.abort()

    # --- frames -------------------------------------------------------------

    _now = 0
    #: When the read being handled arrived in the socket (set by a StampedTransport).
    arrived_ns = 0

    def _on_probe(self, head: bytes, length: int) -> None:
        run = self.run
        if length != run.message_size:
            run.unexpected_frames += 1
            return
        try:
            sender, seq, sent_ns = decode_probe(head)
            check = self.checks[sender]
        except (ValueError, IndexError):
            run.unexpected_frames += 1
            return
        if self.late and self.first_seq[sender] < 0:
            self.first_seq[sender] = seq
            check.expected = seq
        check.see(seq)
        if run.window_start_ns <= sent_ns < run.window_end_ns:
            run.latencies_ns.append(self._now - sent_ns)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if opcode == OP_PING:
            transport.write(mask_frame(0xA, payload))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_code = code
            self.run.close_codes[code] += 1
            self.open = False
            transport.write(close_frame(1000))

    # --- sending and closing ---------------------------------------------

    def send(self, frame: bytes) -> bool:
        if not self.can_write or not self.open:
            return False
        assert self.transport is not None
        self.transport.write(frame)
        return True

    @property
    def delivered(self) -> int:
        return 0 if self.reader is None else self.reader.complete_frames

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.open:
                self.transport.write(close_frame(1000))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def close_all(
    clients: Sequence[BenchClient], graceful: bool = True, timeout: float = 3.0
) -> None:
    """Close every connection and wait (bounded) until the loop has let go of them.

    ``graceful=False`` resets them: quicker for thousands of idle ones, and
    it leaves no TIME_WAIT behind.
    """
    for c in clients:
        if graceful:
            c.close()
        else:
            c.abort()
    pending = [c.gone for c in clients if not c.gone.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for c in clients:
        if not c.gone.done():
            c.abort()
    pending = [c.gone for c in clients if not c.gone.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


class Sender:
    """One sending client: builds and masks each message once, then writes it."""

    def __init__(self, sender_id: int, client: BenchClient, size: int) -> None:
        self.sender_id = sender_id
        self.client = client
        self.encoder = ProbeEncoder(sender_id, size)
        self.masker = Masker(size)
        self.seq = 0

    def send_one(self) -> bool:
        client = self.client
        if not client.can_write or not client.open:
            return False
        payload = self.encoder.payload(self.seq, time.monotonic_ns())
        assert client.transport is not None
        client.transport.write(self.masker.text_frame(payload))
        self.seq += 1
        client.run.sent_per_sender[self.sender_id] = self.seq
        return True


@dataclass
class ConnectResult:
    clients: list[BenchClient]
    failures: int
    errors: Counter[str]
    seconds: float
    #: HTTP status -> connections the server answered with it instead of 101.
    refused: Counter[int] = field(default_factory=Counter)


async def open_client(
    host: str,
    port: int,
    source: str,
    index: int,
    run: RunState,
    sampled: bool,
    rcvbuf: int | None = None,
    timeout: float = 10.0,
    buffers: int | None = None,
) -> BenchClient:
    """Connect from ``source`` (a loopback address) and finish the upgrade."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Choose the source port at connect() time, per destination, rather
        # than at bind(): ports in TIME_WAIT from earlier runs against other
        # server ports stay usable, and each source address gives ~28k ports.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if buffers is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            # Sent here, the same way for every connection, before either kind
            # of transport exists: the two are set up in different numbers of
            # loop turns, and a server that makes its per-client state at the
            # upgrade (rawchat's outbox, whose address decides where the client
            # comes in its write order) would otherwise see every sampled
            # connection's request ahead of the others'.
            await loop.sock_sendall(sock, upgrade_request(host, port))
    except BaseException:
        sock.close()
        raise
    if sampled and STAMPED:
        client = BenchClient(index, run, sampled)
        stamped.StampedTransport(loop, sock, client)
    else:
        _, client = await loop.create_connection(
            lambda: BenchClient(index, run, sampled), sock=sock
        )
    try:
        async with asyncio.timeout(timeout):
            await client.upgraded
    except BaseException:
        client.abort()
        raise
    return client


async def connect_many(
    host: str,
    port: int,
    count: int,
    run: RunState,
    sources: Sequence[str],
    concurrency: int,
    sample_every: int,
    first_index: int = 0,
    rcvbuf_for: frozenset[int] = frozenset(),
    rcvbuf: int | None = None,
    deadline: float = 120.0,
    buffers: int | None = None,
) -> ConnectResult:
    """Open ``count`` connections, ``concurrency`` handshakes in flight at a time.

    One in ``sample_every`` is sampled, drawn at random (seeded, so the same
    ones each run) among those without a special ``rcvbuf``. Not every Nth:
    a server's write order can follow the order in which connections arrived
    (rawchat's follows the addresses of its per-client objects, allocated in
    that order), and a stride then samples one end of every broadcast. For
    the same reason ``open_client`` upgrades every connection the same way.
    """
    clients: list[BenchClient] = []
    errors: Counter[str] = Counter()
    refused: Counter[int] = Counter()
    next_index = first_index
    end_index = first_index + count
    eligible = [i for i in range(first_index, end_index) if i not in rcvbuf_for]
    wanted = min(len(eligible), -(-count // sample_every)) if sample_every > 0 else 0
    sampled_ids = frozenset(random.Random(first_index).sample(eligible, wanted))
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < end_index:
            i = next_index
            next_index += 1
            sampled = i in sampled_ids
            try:
                client = await open_client(
                    host,
                    port,
                    sources[i % len(sources)],
                    i,
                    run,
                    sampled,
                    rcvbuf if i in rcvbuf_for else None,
                    buffers=buffers,
                )
            except Refused as exc:
                refused[exc.status] += 1
                continue
            except (OSError, TimeoutError) as exc:
                errors[type(exc).__name__ + ": " + str(exc)[:60]] += 1
                continue
            clients.append(client)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, count)))]
    try:
        async with asyncio.timeout(deadline):
            await asyncio.gather(*workers)
    except TimeoutError:
        errors["connect phase deadline"] += 1
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    clients.sort(key=lambda c: c.index)
    return ConnectResult(
        clients, count - len(clients), errors, time.perf_counter() - started, refused
    )
