"""Small bounded checks of what a chat user sees: nothing refused, nothing lost, no stall.

Unlike the load scenarios these speak the chat itself (plain lines and rawchat.v1
JSON), each with a handful of clients or one big room, and report counts and
times rather than latency distributions:

* ``plain-burst``: 50 plain clients each say one line, then one of them sends 20
  lines in one write. Plain mode has no error channel: every client must get all
  70 lines.
* ``v1-burst``: a rawchat.v1 client posts 120 messages in one write; it and a
  second member of the room must each get all 120.
* ``history-join``: 19 messages of 60 KB posted in ``lobby``, then rawchat.v1
  clients join it one after another: each must get ``welcome`` and ``joined``
  (not a 1008), timed from its connect.
* ``v1-join``: 10,000 rawchat.v1 clients join one room (every client reads
  everything it is sent): time until every one has its ``joined``, who was
  closed meanwhile; then SIGTERM with all of them in the room: time until the
  server exits, and the close codes the clients got.

The clients run in this process, the server in its own (as every scenario).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.client import IP_BIND_ADDRESS_NO_PORT
from benchmarks.frames import (
    OP_CLOSE,
    OP_PING,
    FrameReader,
    check_upgrade_response,
    close_frame,
    mask_frame,
    response_status,
    upgrade_request,
)
from benchmarks.report import Result
from benchmarks.rig import Load, RssSampler
from benchmarks.servers import ServerProcess, ServerSpec, eviction_metrics, machine_busy_seconds

OP_TEXT, OP_PONG = 0x1, 0xA
#: Enough of a frame's payload to tell a rawchat.v1 reply's type.
PREFIX = 24


def text_frame(payload: str | bytes) -> bytes:
    return mask_frame(OP_TEXT, payload.encode() if isinstance(payload, str) else payload)


def v1_type(prefix: bytes) -> str:
    """``{"type":"joined",...`` -> ``joined`` (replies put the type first)."""
    head = prefix[len(b'{"type":"'):]
    return head.partition(b'"')[0].decode(errors="replace")


class ChatClient(asyncio.Protocol):
    """A raw client: upgrade (with a subprotocol or none), then count text frames by type."""

    def __init__(self, host: str, port: int, subprotocol: str | None) -> None:
        request = upgrade_request(host, port)
        if subprotocol:
            request = request[:-2] + f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n".encode()
        self.request = request
        self.v1 = subprotocol is not None
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self.reader = FrameReader(PREFIX, self._on_data, self._on_control)
        self.texts = 0
        self.types: Counter[str] = Counter()
        #: (type, payload length, perf_counter) of each text frame, when ``keep`` is set.
        self.log: list[tuple[str, int, float]] = []
        self.keep = False
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.refused: int | None = None
        #: Called with the client and the frame's type on every text frame.
        self.on_text: Callable[[ChatClient, str], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end])
            problem = check_upgrade_response(head)
            if problem is not None:
                self.refused = response_status(head)
                self.upgraded.set_exception(ConnectionError(problem))
                self.abort()
                return
            self.upgraded.set_result(None)
            data = bytes(self._head[end + 4:])
            self._head = bytearray()
        if data:
            self.reader.feed(data)

    def _on_data(self, prefix: bytes, length: int) -> None:
        self.texts += 1
        kind = v1_type(prefix) if self.v1 else "text"
        self.types[kind] += 1
        if self.keep:
            self.log.append((kind, length, time.perf_counter()))
        if self.on_text is not None:
            self.on_text(self, kind)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.send(mask_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE and self.close_code is None:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.closed_at = time.perf_counter()
            self.send(close_frame(self.close_code if self.close_code < 4000 else 1000))

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_at is None:
            self.closed_at = time.perf_counter()
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.gone.done():
            self.gone.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def lost(self) -> bool:
        return self.gone.done()


async def open_chat(server: ServerProcess, source: str, subprotocol: str | None,
                    timeout: float = 10.0) -> ChatClient:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (server.host, server.port))
    except BaseException:
        sock.close()
        raise
    _, client = await loop.create_connection(
        lambda: ChatClient(server.host, server.port, subprotocol), sock=sock)
    try:
        async with asyncio.timeout(timeout):
            await client.upgraded
    except BaseException:
        client.abort()
        raise
    return client


def hello(nick: str, rooms: tuple[str, ...] = ("lobby",)) -> bytes:
    return text_frame(json.dumps({"type": "hello", "nick": nick, "rooms": list(rooms)}))


def post(text: str, room: str = "lobby") -> bytes:
    return text_frame(json.dumps({"type": "msg", "room": room, "text": text}))


async def until(check: Callable[[], bool], timeout: float, every: float = 0.01) -> bool:
    """Wait (bounded) for ``check``; True if it held before ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


async def close_clients(clients: list[ChatClient]) -> None:
    for c in clients:
        c.abort()
    pending = [c.gone for c in clients if not c.gone.done()]
    if pending:
        await asyncio.wait(pending, timeout=5.0)


def codes(clients: list[ChatClient]) -> dict[str, int]:
    counted = Counter(str(c.close_code) for c in clients if c.close_code is not None)
    counted["no close frame, connection lost"] = sum(
        1 for c in clients if c.close_code is None and c.lost)
    return {k: v for k, v in sorted(counted.items()) if v}


def _busy(notes: list[str]) -> None:
    notes.append("machine shared with other work (2 cores): times are upper bounds")


async def plain_burst(spec: ServerSpec, load: Load, pin: bool) -> Result:
    """50 plain clients say one line each, then one sends 20 lines at once: all get all."""
    lines, burst = load.clients, load.burst
    with ServerProcess(spec, pin=pin) as server:
        clients = [await open_chat(server, load.sources[i % len(load.sources)], None)
                   for i in range(load.clients)]
        try:
            for i, c in enumerate(clients):
                c.send(text_frame(f"line from client {i}"))
            started = time.perf_counter()
            clients[0].send(b"".join(text_frame(f"burst {n}") for n in range(burst)))
            expected = lines + burst
            done = await until(lambda: all(c.texts >= expected or c.lost for c in clients), 15.0)
            seconds = time.perf_counter() - started
            got = [c.texts for c in clients]
            close = codes(clients)
        finally:
            await close_clients(clients)
    m = {"connected": len(clients), "lines_expected_per_client": expected,
         "lines_min_per_client": min(got), "lines_delivered": sum(got),
         "lines_expected": expected * len(clients), "all_delivered": done and min(got) == expected,
         "seconds_to_all": round(seconds, 3) if done else None, "close_codes": close}
    notes: list[str] = []
    _busy(notes)
    return Result("plain-burst", spec.label, {"clients": load.clients, "burst": burst}, m, notes)


async def v1_burst(spec: ServerSpec, load: Load, pin: bool) -> Result:
    """A rawchat.v1 client posts 120 messages in one write; it and a watcher get all 120."""
    count = load.burst
    with ServerProcess(spec, pin=pin) as server:
        sender = await open_chat(server, load.sources[0], "rawchat.v1")
        watcher = await open_chat(server, load.sources[-1], "rawchat.v1")
        clients = [sender, watcher]
        try:
            for i, c in enumerate(clients):
                c.send(hello(f"burst{i}"))
            await until(lambda: all(c.types["joined"] for c in clients), 5.0)
            started = time.perf_counter()
            sender.send(b"".join(post(f"message {n}") for n in range(count)))
            done = await until(lambda: all(c.types["msg"] >= count or c.lost for c in clients),
                               float(load.duration) + 5.0)
            seconds = time.perf_counter() - started
            got = {"sender": sender.types["msg"], "watcher": watcher.types["msg"]}
            errors = sender.types["error"]
            close = codes(clients)
        finally:
            await close_clients(clients)
    m = {"posted": count, "delivered_to_sender": got["sender"],
         "delivered_to_watcher": got["watcher"], "errors_to_sender": errors,
         "all_delivered": done and min(got.values()) == count,
         "seconds_to_all": round(seconds, 3) if done else None, "close_codes": close}
    notes: list[str] = []
    _busy(notes)
    return Result("v1-burst", spec.label, {"messages": count}, m, notes)


async def history_join(spec: ServerSpec, load: Load, pin: bool) -> Result:
    """19 messages of 60 KB in lobby, then v1 joiners: welcome + joined, timed, not 1008."""
    count, size, joiners = load.burst, load.size, load.clients
    times: list[float] = []
    outcomes: Counter[str] = Counter()
    joined_bytes = 0
    with ServerProcess(spec, pin=pin) as server:
        poster = await open_chat(server, load.sources[0], "rawchat.v1")
        try:
            poster.send(hello("poster"))
            await until(lambda: poster.types["joined"] > 0, 5.0)
            for n in range(count):
                poster.send(post(f"{n:04d}" + "x" * (size - 4)))
            posted = await until(lambda: poster.types["msg"] >= count or poster.lost, 20.0)
            for i in range(joiners):
                started = time.perf_counter()
                joiner = await open_chat(server, load.sources[i % len(load.sources)],
                                         "rawchat.v1")
                joiner.keep = True
                joiner.send(hello(f"joiner{i}"))
                await until(lambda j=joiner: j.types["joined"] > 0 or j.lost, 10.0)  # type: ignore[misc]
                kinds = [k for k, _, _ in joiner.log[:2]]
                if kinds == ["welcome", "joined"]:
                    outcomes["welcome then joined"] += 1
                    times.append(joiner.log[1][2] - started)
                    joined_bytes = joiner.log[1][1]
                else:
                    outcomes[f"{kinds} close {joiner.close_code}"] += 1
                await close_clients([joiner])
            scraped = server.scrape_metrics()
        finally:
            await close_clients([poster])
    m: dict[str, Any] = {
        "history_posted": poster.types["msg"] if posted else f"{poster.types['msg']} (stalled)",
        "errors_to_poster": poster.types["error"],
        "joiners": joiners, "outcomes": dict(outcomes),
        "join_ms_median": round(1000 * statistics.median(times), 1) if times else None,
        "join_ms_max": round(1000 * max(times), 1) if times else None,
        "joined_frame_bytes": joined_bytes,
        **(eviction_metrics(scraped) if scraped else {}),
    }
    notes: list[str] = []
    _busy(notes)
    params = {"messages": count, "text_bytes": size, "joiners": joiners}
    return Result("history-join", spec.label, params, m, notes)


async def v1_join(spec: ServerSpec, load: Load, pin: bool) -> Result:
    """N rawchat.v1 clients join one room (time, evictions), then SIGTERM (exit time)."""
    clients: list[ChatClient] = []
    joined_at: list[float] = []
    notes: list[str] = []

    def on_text(client: ChatClient, kind: str) -> None:
        if kind == "joined" and client.types["joined"] == 1:
            joined_at.append(time.perf_counter())

    server = ServerProcess(spec, pin=pin)
    server.start()
    try:
        started = time.perf_counter()
        cpu0 = server.cpu_seconds()
        tool0, machine0 = time.process_time(), machine_busy_seconds()
        refused: Counter[str] = Counter()

        async def worker(indexes: range) -> None:
            for i in indexes:
                try:
                    c = await open_chat(server, load.sources[i % len(load.sources)],
                                        "rawchat.v1")
                except (OSError, TimeoutError) as exc:
                    refused[type(exc).__name__ + " " + str(exc)[:40]] += 1
                    continue
                c.on_text = on_text
                c.send(hello(f"u{i}"))
                clients.append(c)

        n, k = load.clients, max(1, load.concurrency)
        with RssSampler(server) as rss:
            async with asyncio.timeout(load.duration + 60):
                await asyncio.gather(*(worker(range(j, n, k)) for j in range(k)))
            connected_s = time.perf_counter() - started
            all_joined = await until(lambda: len(joined_at) >= len(clients), load.duration)
            join_s = (max(joined_at) - started) if joined_at else None
            # Let the last presence ticks go out before counting who was closed.
            await asyncio.sleep(0.5)
        join_cpu = server.cpu_seconds() - cpu0
        join_wall = time.perf_counter() - started
        tool_cpu = time.process_time() - tool0
        other = (machine_busy_seconds() - machine0) - tool_cpu - join_cpu
        scraped = server.scrape_metrics() or {}
        closed_while_joining = codes(clients)
        frames_before = sum(c.texts for c in clients)
        assert server.proc is not None
        term_at = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        exited = await until(lambda: server.proc is not None and server.proc.poll() is not None,
                             15.0, every=0.005)
        exit_s = time.perf_counter() - term_at
        exit_code = server.proc.poll()
        await until(lambda: all(c.lost for c in clients), 3.0)
        got_close = [c.closed_at - term_at for c in clients if c.closed_at is not None]
    finally:
        server.stop()
        await close_clients(clients)
    m: dict[str, Any] = {
        "clients": n,
        "connected": len(clients),
        "refused_or_failed": dict(refused),
        "joined": len(joined_at),
        "all_joined": all_joined and len(joined_at) == n,
        "connect_s": round(connected_s, 2),
        "all_joined_s": round(join_s, 2) if join_s is not None else None,
        "closed_while_joining": closed_while_joining,
        **eviction_metrics(scraped),
        "server_cpu_join_s": round(join_cpu, 2),
        "tool_cpu_pct": round(100 * tool_cpu / join_wall, 1),
        "other_cpu_pct": round(max(0.0, 100 * other / join_wall), 1),
        "server_rss_peak_mb": round(rss.peak / 2**20, 1),
        "frames_per_client_mean": round(frames_before / max(1, len(clients)), 1),
        "presence_frames_per_client_mean": round(
            sum(c.types["presence"] for c in clients) / max(1, len(clients)), 1),
        "sigterm_exit_s": round(exit_s, 3) if exited else None,
        "sigterm_exit_code": exit_code,
        "close_codes_after_sigterm": codes(clients),
        "last_close_after_sigterm_s": round(max(got_close), 3) if got_close else None,
    }
    notes.append(f"targets: all joined < 10 s, none evicted: {m['all_joined_s']} s, "
                 f"{m.get('server_evictions_total')} evicted; SIGTERM exit < 2 s: "
                 f"{m['sigterm_exit_s']} s")
    _busy(notes)
    params = {"clients": n, "concurrency": k, "room": "lobby"}
    return Result("v1-join", spec.label, params, m, notes)


CHECKS = {
    "plain-burst": plain_burst,
    "v1-burst": v1_burst,
    "history-join": history_join,
    "v1-join": v1_join,
}
