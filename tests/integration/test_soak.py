"""Soak: a few thousand clients against a rawchat subprocess, with churn, for about a minute.

The server runs as a subprocess (uvloop, every limit off, pings every ten minutes so
that none happen) and the clients are raw asyncio Protocols in this process, cheap
enough to hold thousands: a "stable" set stays connected for a whole round while a
"churn" set connects, posts one message, lingers, and leaves, over and over, as
stable senders publish at a bounded rate.

What is checked:

* delivery: every v1 client sees, per room, ids that go up by one from its joined
  ``last_id``; every observer agrees on which text each id carries; the ids of a room
  carry exactly the texts sent to it, once each; stable clients see all of it up to
  the last message, and plain clients see exactly the lobby texts posted while they
  were connected, in id order;
* accounting: ``rawchat_messages_out_total`` is the frames the server wrote through
  its hub. Frames written to a client that then resets its connection (abort, no close
  handshake) may die unread in its socket, so over a phase of aborts the metric can
  only be at least what the clients counted. Over a phase where churn clients close
  gracefully (close frame, then read until the server's close) nothing is lost, and
  the metric's delta must equal the frames the clients counted, exactly;
* resources: the server's open descriptors come back to their starting count once
  every client is gone, and its RSS to near what it was after a warm-up round;
* no evictions, no close code other than 1000 (graceful) and 1006 (abort), no ERROR
  line in the server's log.

Every phase ends at a quiet point: no sends in flight (each send is acknowledged:
v1 senders get their own copy with its cid, plain senders their echo), no churn
connection left on the server (polled through ``/healthz``), and a barrier message in
every room that all stable clients must receive. The hub keeps each client's frames in
order, so once a client has the barrier it has every frame queued for it before.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import resource
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.frames import (
    HANDSHAKE_KEY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    check_upgrade_response,
    close_frame,
    mask_frame,
)
from tests.processes import RawchatProcess

HOST = "127.0.0.1"
ROOMS = ("lobby", "r1", "r2", "r3", "r4")
SEED = 20240607


@dataclass(frozen=True)
class Scale:
    """How big a run is. Chosen so the whole test takes about a minute on two cores."""

    stable_v1: int
    stable_plain: int
    churn_slots: int
    #: Stable clients that publish (the first ones of each kind).
    v1_senders: int
    plain_senders: int
    #: Messages per second published by the stable senders, all rooms together.
    rate: float
    #: Seconds a churn client stays connected after its message is acknowledged.
    linger: tuple[float, float]
    warmup_abort_seconds: float
    warmup_graceful_seconds: float
    abort_seconds: float
    graceful_seconds: float


SCALE = Scale(
    stable_v1=1000,
    stable_plain=600,
    churn_slots=400,
    v1_senders=40,
    plain_senders=10,
    rate=60.0,
    linger=(2.0, 14.0),
    warmup_abort_seconds=5.0,
    warmup_graceful_seconds=4.0,
    abort_seconds=20.0,
    graceful_seconds=14.0,
)
if os.environ.get("RAWCHAT_SOAK_SMALL"):  # a quick run while working on the test itself
    SCALE = Scale(60, 25, 15, 8, 3, 30.0, (0.5, 3.0), 2.0, 2.0, 4.0, 3.0)

#: Bounds on waiting, so that a broken server fails the test instead of hanging it.
CONNECT_TIMEOUT = 20.0
SETTLE_TIMEOUT = 30.0
#: How many opening handshakes the stable set keeps in flight while connecting.
CONNECT_CONCURRENCY = 100


# -- what every client records ---------------------------------------------------


@dataclass
class Ledger:
    """What was sent and what was seen, shared by every client of the run."""

    #: Every text the test sent, mapped to itself: received texts are swapped for these
    #: objects, so that thousands of clients' records hold references, not copies.
    canon: dict[str, str] = field(default_factory=dict)
    #: Texts sent to each room, and each sender's (room, text) in the order it sent them.
    sent: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in ROOMS})
    by_sender: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: room -> id -> text, as v1 observers saw them (all must agree).
    seen: dict[str, dict[int, str]] = field(default_factory=lambda: {r: {} for r in ROOMS})
    #: Every client ever connected, for the frame count.
    clients: list[SoakClient] = field(default_factory=list)
    #: Acknowledgements still awaited (sends in flight).
    pending: set[asyncio.Future[None]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    hard_aborts: int = 0
    graceful_closes: int = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 40:
            self.problems.append(text)

    def frames_received(self) -> int:
        return sum(c.frames for c in self.clients)


class SoakClient(asyncio.Protocol):
    """One WebSocket client: raw handshake, then every frame counted and checked.

    v1 clients parse ``msg`` and ``joined`` (ids and texts) and only count the rest;
    plain clients keep the texts they receive.
    """

    def __init__(self, ledger: Ledger, label: str, rooms: tuple[str, ...] | None) -> None:
        self.ledger = ledger
        self.label = label
        #: None for a plain client (it is in the lobby, and says no hello).
        self.rooms = rooms
        self.v1 = rooms is not None
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self._head = bytearray()
        self.reader: FrameReader | None = None
        #: Data frames and pings received: what rawchat_messages_out counts.
        self.frames = 0
        self.pings = 0
        #: v1: the id expected next in each room, and the first one (joined last_id + 1).
        self.next_id: dict[str, int] = {}
        self.first_id: dict[str, int] = {}
        #: v1: texts per room from first_id on; plain: the texts received.
        self.texts: dict[str, list[str]] = {}
        self.plain_texts: list[str] = []
        #: Texts whose arrival someone awaits (acknowledgements and barriers).
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.sent = 0
        #: v1: the cid sent with each text; the server's answer must carry it back.
        self.cids: dict[str, str] = {}
        self.closing = False
        self.aborted = False
        self.close_code: int | None = None
        #: Loop time of connection_made and connection_lost: how long it was open.
        self.opened = loop.time()
        self.closed = 0.0

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {HANDSHAKE_KEY.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
        )
        if self.v1:
            request += "Sec-WebSocket-Protocol: rawchat.v1\r\n"
        data = (request + "\r\n").encode()
        if self.rooms is not None:
            # The hello goes right behind the request: the server must hand the
            # bytes h11 read past the head over to wsproto.
            hello = {"type": "hello", "nick": self.label, "rooms": list(self.rooms)}
            data += mask_frame(OP_TEXT, json.dumps(hello).encode())
        transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            self._handshake(data)
            return
        self.reader.feed(data)
        if self.reader.error is not None:
            self.ledger.problem(f"{self.label}: {self.reader.error}")
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = asyncio.get_running_loop().time()
        if not (self.closing or self.aborted):
            self.ledger.problem(f"{self.label}: connection lost unasked ({exc!r})")
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.label}: closed before ready"))
        if not self.gone.done():
            self.gone.set_result(None)
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"{self.label}: connection lost"))

    def _handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._head[:end])
        problem = check_upgrade_response(head)
        confirmed = b"sec-websocket-protocol: rawchat.v1" in head.lower()
        if problem is None and self.v1 and not confirmed:
            problem = "rawchat.v1 not confirmed"
        if problem is not None:
            self.ledger.problem(f"{self.label}: {problem}")
            self.abort()
            return
        rest = bytes(self._head[end + 4 :])
        self._head = bytearray()
        self.reader = FrameReader(1 << 30, self._on_data, self._on_control)
        if not self.v1:
            self.ready.set_result(None)
        if rest:
            self.data_received(rest)

    # -- frames -----------------------------------------------------------------

    def _on_data(self, payload: bytes, length: int) -> None:
        self.frames += 1
        if not self.v1:
            self._arrived(payload.decode())
            return
        # The server's JSON always starts with its type: most frames (presence,
        # welcome) need counting only, not parsing.
        if payload.startswith(b'{"type":"msg"'):
            self._msg(json.loads(payload))
        elif payload.startswith(b'{"type":"joined"'):
            joined = json.loads(payload)
            room = joined["room"]
            self.first_id[room] = self.next_id[room] = joined["last_id"] + 1
            self.texts[room] = []
            assert self.rooms is not None
            if len(self.first_id) == len(self.rooms) and not self.ready.done():
                self.ready.set_result(None)
        elif payload.startswith((b'{"type":"error"', b'{"type":"left"')):
            self.ledger.problem(f"{self.label}: unexpected {payload[:200]!r}")

    def _msg(self, msg: dict[str, Any]) -> None:
        ledger = self.ledger
        room, msg_id = msg["room"], msg["id"]
        text = ledger.canon.get(msg["text"], msg["text"])
        expected = self.next_id.get(room)
        if expected is None:
            ledger.problem(f"{self.label}: msg in {room} before joined")
            return
        if msg_id != expected:
            ledger.problem(f"{self.label}: {room} id {msg_id}, expected {expected}")
        self.next_id[room] = msg_id + 1
        self.texts[room].append(text)
        agreed = ledger.seen[room].setdefault(msg_id, text)
        if agreed is not text:
            ledger.problem(f"{self.label}: {room} id {msg_id} is {text!r}, others saw {agreed!r}")
        if "cid" in msg and msg["cid"] != self.cids.get(text):
            ledger.problem(f"{self.label}: wrong cid {msg['cid']!r} for {text!r}")
        self._arrived(text)

    def _arrived(self, text: str) -> None:
        if not self.v1:
            text = self.ledger.canon.get(text, text)
            self.plain_texts.append(text)
        waiter = self.waiters.pop(text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if opcode == OP_PING:
            self.frames += 1
            self.pings += 1
            if transport is not None and not transport.is_closing():
                transport.write(mask_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self.ledger.problem(f"{self.label}: server closed with {self.close_code}")
                self.closing = True
                if transport is not None and not transport.is_closing():
                    transport.write(close_frame(1000))

    # -- what the test makes it do -------------------------------------------------

    def expect(self, text: str) -> asyncio.Future[None]:
        waiter = self.waiters.get(text)
        if waiter is None:
            waiter = self.waiters[text] = asyncio.get_running_loop().create_future()
        return waiter

    def send(self, room: str, text: str) -> asyncio.Future[None]:
        """Post ``text``; the future resolves when the server's answer comes back."""
        ledger = self.ledger
        assert self.transport is not None
        ledger.canon[text] = text
        ledger.sent[room].append(text)
        ledger.by_sender.setdefault(self.label, []).append((room, text))
        waiter = self.expect(text)
        ledger.pending.add(waiter)
        waiter.add_done_callback(ledger.pending.discard)
        if self.v1:
            cid = self.cids[text] = f"c{self.sent}"
            body = json.dumps({"type": "msg", "room": room, "text": text, "cid": cid})
            self.transport.write(mask_frame(OP_TEXT, body.encode()))
        else:
            self.transport.write(mask_frame(OP_TEXT, text.encode()))
        self.sent += 1
        return waiter

    async def close_gracefully(self) -> None:
        """Close frame, then read (and count) until the server's close and its hang-up."""
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(close_frame(1000))
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.shield(self.gone)
        if self.close_code != 1000:
            self.ledger.problem(f"{self.label}: close answered with {self.close_code}")
        self.ledger.graceful_closes += 1

    def abort(self) -> None:
        """Reset the connection: no close handshake, unread frames are lost."""
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()


def text_for(label: str, seq: int, rng: random.Random) -> str:
    """A unique text; sizes vary so that frames use both short and 16-bit lengths."""
    pad = "x" * rng.choice((0, 10, 60, 140, 400))
    return f"{label}#{seq} {pad}" + ("é" if seq % 7 == 0 else "")


async def open_client(
    ledger: Ledger, port: int, label: str, rooms: tuple[str, ...] | None
) -> SoakClient:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: SoakClient(ledger, label, rooms), HOST, port)
    client = cast(SoakClient, protocol)
    ledger.clients.append(client)
    async with asyncio.timeout(CONNECT_TIMEOUT):
        await client.ready
    return client


def pick_rooms(rng: random.Random) -> tuple[str, ...]:
    return tuple(rng.sample(ROOMS, rng.choice((1, 1, 2, 2, 3))))


# -- the server and its state -----------------------------------------------------


class SoakServer(RawchatProcess):
    """``python -m rawchat`` with every limit off, and a look at its descriptors and memory."""

    def __init__(self) -> None:
        super().__init__(
            "--uvloop",
            "--rate",
            "0",
            "--handshake-rate",
            "0",
            "--max-connections-per-ip",
            "0",
            "--max-connections",
            "0",
            "--ping-interval",
            "600",
            "--log-level",
            "info",
            host=HOST,
        )
        assert self.flavour == "uvloop"

    @property
    def pid(self) -> int:
        return self.process.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            response = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


async def metrics(port: int) -> dict[str, float]:
    """Every sample of /metrics by name, label sets summed (a counter's name ends in _total)."""
    totals: Counter[str] = Counter()
    text = (await http_get(port, "/metrics")).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
            if sample.name == "rawchat_close_codes_total":
                totals[f"close_code_{sample.labels['code']}"] += sample.value
    return dict(totals)


async def wait_for_connections(port: int, count: int) -> None:
    """Poll /healthz until the server holds ``count`` connections besides the poll's own."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = json.loads(await http_get(port, "/healthz"))
        if health["connections"] - 1 == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"server still holds {health} connections, expected {count} + 1")


async def wait_for_fds(server: SoakServer, count: int) -> None:
    """Bounded poll of the server's descriptors: closing a socket is not instant."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (now := server.fds()) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server has {now} descriptors open, {count} at the start")
        await asyncio.sleep(0.05)


# -- a round: stable clients, senders and churn -------------------------------------


class Round:
    """One set of stable clients, through phases of churn, to a graceful goodbye."""

    def __init__(self, ledger: Ledger, port: int, name: str) -> None:
        self.ledger = ledger
        self.port = port
        self.name = name
        self.stable: list[SoakClient] = []
        #: Lobby messages sent before the stable clients connected.
        self.lobby_before = 0
        self.churned = 0
        self.barriers = 0
        #: Each room's newest id at the last quiet point: what stable clients must reach.
        self.last_ids: dict[str, int] = {}

    async def connect(self) -> None:
        rng = random.Random(f"{SEED}/{self.name}/stable")
        self.lobby_before = len(self.ledger.sent["lobby"])
        plan: list[tuple[str, tuple[str, ...] | None]] = [
            (f"{self.name}-s{i}", pick_rooms(rng)) for i in range(SCALE.stable_v1)
        ]
        plan += [(f"{self.name}-p{i}", None) for i in range(SCALE.stable_plain)]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(label: str, rooms: tuple[str, ...] | None) -> SoakClient:
            async with gate:
                return await open_client(self.ledger, self.port, label, rooms)

        self.stable = list(await asyncio.gather(*(one(label, rooms) for label, rooms in plan)))
        for client in self.stable:
            if client.v1 and "lobby" in client.first_id:
                assert client.first_id["lobby"] == self.lobby_before + 1, client.label

    def senders(self) -> list[SoakClient]:
        v1 = [c for c in self.stable if c.v1][: SCALE.v1_senders]
        plain = [c for c in self.stable if not c.v1][: SCALE.plain_senders]
        return v1 + plain

    async def publish(self, phase: str, seconds: float) -> int:
        """Stable senders post at SCALE.rate for ``seconds``; returns how many they sent."""
        rng = random.Random(f"{SEED}/{self.name}/{phase}/publish")
        senders = self.senders()
        loop = asyncio.get_running_loop()
        start = loop.time()
        limit = int(SCALE.rate * seconds)
        for n in range(limit):
            due = start + n / SCALE.rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # pacing, not synchronisation
            sender = rng.choice(senders)
            room = rng.choice(sender.rooms) if sender.rooms else "lobby"
            sender.send(room, text_for(sender.label, sender.sent, rng))
        return limit

    async def churn_slot(self, slot: int, phase: str, until: float, graceful: bool) -> None:
        """Connect, post, linger, leave (abort or close), again, until ``until``."""
        rng = random.Random(f"{SEED}/{self.name}/{phase}/{slot}")
        loop = asyncio.get_running_loop()
        for cycle in range(1000):
            if loop.time() >= until:
                return
            label = f"{self.name}-{phase}{slot}.{cycle}"
            rooms = pick_rooms(rng) if rng.random() < 0.7 else None
            client = await open_client(self.ledger, self.port, label, rooms)
            room = rng.choice(rooms) if rooms else "lobby"
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.send(room, text_for(label, 0, rng))
            # How long it stays is the workload's shape, not synchronisation; the
            # last cycle of a slot ends with the phase.
            linger = min(rng.uniform(*SCALE.linger), until - loop.time())
            await asyncio.sleep(max(linger, 0.0))
            if graceful:
                await client.close_gracefully()
            else:
                client.abort()
                self.ledger.hard_aborts += 1
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await client.gone
            self.churned += 1

    async def phase(self, name: str, seconds: float, graceful: bool) -> None:
        """Publish while the churn slots come and go, then settle."""
        until = asyncio.get_running_loop().time() + seconds
        slots = [self.churn_slot(i, name, until, graceful) for i in range(SCALE.churn_slots)]
        await gather_or_cancel([self.publish(name, seconds), *slots])
        await self.settle()

    async def settle(self) -> None:
        """Reach a quiet point: nothing in flight, every stable client caught up."""
        ledger = self.ledger
        assert ledger.problem_count == 0, ledger.problems
        if ledger.pending:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await asyncio.gather(*ledger.pending)
        await wait_for_connections(self.port, len(self.stable))
        self.barriers += 1
        waiters: list[asyncio.Future[None]] = []
        for room in ROOMS:
            text = f"{self.name}-barrier{self.barriers}-{room}#0"
            sender = next(c for c in self.stable if c.rooms and room in c.rooms)
            for client in self.stable:
                if client is not sender and room in (client.rooms or ("lobby",)):
                    waiters.append(client.expect(text))
            waiters.append(sender.send(room, text))
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await asyncio.gather(*waiters)
        self.last_ids = {room: len(ledger.sent[room]) for room in ROOMS}
        for client in self.stable:
            for room in client.rooms or ():
                last = client.next_id[room] - 1
                assert last == self.last_ids[room], (client.label, room, last)

    async def goodbye(self) -> None:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await asyncio.gather(*(c.close_gracefully() for c in self.stable))
        await wait_for_connections(self.port, 0)


async def gather_or_cancel(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the checks at the end ------------------------------------------------------------


def check_delivery(ledger: Ledger, rounds: list[Round]) -> None:
    """Ids carry exactly the texts sent, and every client saw its share in order."""
    truth: dict[str, list[str]] = {}
    for room in ROOMS:
        seen = ledger.seen[room]
        sent = ledger.sent[room]
        assert sorted(seen) == list(range(1, len(sent) + 1)), f"{room}: ids are not 1..N"
        truth[room] = [seen[i] for i in range(1, len(sent) + 1)]
        assert len(set(truth[room])) == len(truth[room]), f"{room}: a text got two ids"
        assert set(truth[room]) == set(sent), f"{room}: texts delivered != texts sent"
    position = {room: {text: i for i, text in enumerate(truth[room])} for room in ROOMS}
    for label, posts in ledger.by_sender.items():
        for room in ROOMS:
            ids = [position[room][text] for r, text in posts if r == room]
            assert ids == sorted(ids), f"{label}: its {room} messages were reordered"
    lobby = truth["lobby"]
    stable = {id(c): r for r in rounds for c in r.stable}
    for client in ledger.clients:
        if client.v1:
            for room, texts in client.texts.items():
                first = client.first_id[room] - 1
                assert texts == truth[room][first : first + len(texts)], (client.label, room)
                if id(client) in stable:
                    last = stable[id(client)].last_ids[room]
                    assert first + len(texts) == last, (client.label, room)
        elif id(client) in stable:
            r = stable[id(client)]
            assert client.plain_texts == lobby[r.lobby_before : r.last_ids["lobby"]], client.label
        elif client.plain_texts:
            start = position["lobby"][client.plain_texts[0]]
            assert client.plain_texts == lobby[start : start + len(client.plain_texts)], (
                client.label
            )


# -- the test -------------------------------------------------------------------------


MiB = 1024 * 1024


@dataclass
class Snapshot:
    frames_out: float
    counted: int

    @property
    def unread(self) -> float:
        return self.frames_out - self.counted


async def soak(server: SoakServer) -> dict[str, Any]:
    ledger = Ledger()
    try:
        return await soak_rounds(server, ledger)
    finally:
        # On failure, leave no transport open for the loop's teardown to warn about.
        for client in ledger.clients:
            client.abort()
        pending = [c.gone for c in ledger.clients if not c.gone.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)


async def soak_rounds(server: SoakServer, ledger: Ledger) -> dict[str, Any]:
    port = server.port
    report: dict[str, Any] = {}
    await wait_for_connections(port, 0)
    report["fds_start"] = fds_start = server.fds()
    report["rss_start_mib"] = round(server.rss() / MiB, 1)

    async def snapshot() -> Snapshot:
        m = await metrics(port)
        return Snapshot(m.get("rawchat_messages_out_total", 0.0), ledger.frames_received())

    # Warm-up: the same shape as the real round, shorter. Python keeps most of the
    # memory it has once used (pymalloc arenas with a live object left, the
    # allocator's own caches, grown dicts and sets), so RSS is compared with what it
    # is after this round, not with the cold start.
    started = time.monotonic()
    warmup = Round(ledger, port, "w")
    await warmup.connect()
    await warmup.phase("a", SCALE.warmup_abort_seconds, graceful=False)
    await warmup.phase("g", SCALE.warmup_graceful_seconds, graceful=True)
    await warmup.goodbye()
    warm = await snapshot()
    await wait_for_fds(server, fds_start)
    report["rss_warm_mib"] = rss_warm = round(server.rss() / MiB, 1)
    report["warmup_seconds"] = round(time.monotonic() - started, 1)

    main = Round(ledger, port, "m")
    await main.connect()
    report["stable_connected_seconds"] = round(time.monotonic() - started, 1)
    await main.phase("a", SCALE.abort_seconds, graceful=False)
    after_aborts = await snapshot()
    report["rss_loaded_mib"] = round(server.rss() / MiB, 1)
    await main.phase("g", SCALE.graceful_seconds, graceful=True)
    after_graceful = await snapshot()
    report["peak_clients"] = len(main.stable) + SCALE.churn_slots
    check_delivery(ledger, [warmup, main])
    await main.goodbye()
    end = await snapshot()

    m = await metrics(port)
    report.update(
        clients_total=len(ledger.clients),
        churned=warmup.churned + main.churned,
        hard_aborts=ledger.hard_aborts,
        graceful_closes=ledger.graceful_closes,
        messages_sent=sum(len(s) for s in ledger.sent.values()),
        frames_out=end.frames_out,
        frames_counted=end.counted,
        unread_after_aborts=end.unread,
        messages_in=m.get("rawchat_messages_in_total"),
        close_codes={k: v for k, v in m.items() if k.startswith("close_code_")},
        write_buffer_high_water=m.get("rawchat_write_buffer_high_water_bytes"),
        senders_held=m.get("rawchat_senders_held_total"),
    )
    assert ledger.problem_count == 0, ledger.problems

    # The accounting. Graceful churn loses nothing: exact.
    graceful_out = after_graceful.frames_out - after_aborts.frames_out
    graceful_counted = after_graceful.counted - after_aborts.counted
    report["graceful_phase_frames"] = graceful_out
    assert graceful_out == graceful_counted
    # So does closing the stable clients (their presence leaves reach those still open).
    assert end.frames_out - after_graceful.frames_out == end.counted - after_graceful.counted
    # Over the whole run, only the abort phases may leave frames unread, and never
    # the other way round (a client counting a frame the server did not report).
    assert warm.unread >= 0 and after_aborts.unread >= warm.unread
    assert end.unread == after_aborts.unread
    # What a hard abort loses is what was in flight to it when it reset: the frames
    # since this process last read from it, plus what the server wrote before it saw
    # the reset. Both are a matter of milliseconds; a second's worth of the average
    # client's traffic per abort is a bound that holds on a loaded machine too.
    lifetimes = sum(c.closed - c.opened for c in ledger.clients)
    per_client_second = end.counted / lifetimes
    report["frames_per_client_second"] = round(per_client_second, 1)
    report["unread_per_abort"] = round(end.unread / max(ledger.hard_aborts, 1), 2)
    assert end.unread <= per_client_second * ledger.hard_aborts, report
    # Every message a client sent, and each v1 client's hello.
    hellos = sum(1 for c in ledger.clients if c.v1)
    assert m.get("rawchat_messages_in_total") == report["messages_sent"] + hellos
    assert m.get("rawchat_evictions_total", 0.0) == 0.0
    assert set(report["close_codes"]) <= {"close_code_1000", "close_code_1006"}
    assert m.get("close_code_1006", 0.0) == ledger.hard_aborts
    assert m.get("rawchat_connections") == 1.0 and m.get("rawchat_websockets") == 0.0
    assert m.get("rawchat_rooms") == len(ROOMS)  # empty, kept for their history

    # Resources: descriptors back exactly; RSS back near the warmed-up value.
    await wait_for_fds(server, fds_start)
    report["fds_end"] = server.fds()
    report["rss_end_mib"] = rss_end = round(server.rss() / MiB, 1)
    # Closed connections are freed as they close (nothing points back at one; see
    # Connection.connection_lost), so what RSS keeps after the round is the
    # allocator's fragmentation: from the warm-up to the end it moved by -0.4 to
    # 7.5 MiB in four runs. While closed connections waited for a full garbage
    # collection it moved by 0.8 to 13.8 MiB, and a fresh-clone run failed here.
    # Leaking every connection of the round, at the 4 to 5 KiB a live one costs,
    # would be 15 to 20 MiB. 12 MiB or 20 %, whichever is larger, tells them apart.
    assert rss_end <= rss_warm + max(12.0, 0.2 * rss_warm), report
    return report


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_soak_churn_delivery_accounting_and_resources() -> None:
    import uvloop

    # This process and the server (which inherits the limit) each hold a socket per client.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = SCALE.stable_v1 + SCALE.stable_plain + SCALE.churn_slots + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        started = time.monotonic()
        server = SoakServer()
        try:
            report = uvloop.run(soak(server))
        finally:
            code = server.stop(timeout=15)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    report["seconds"] = round(time.monotonic() - started, 1)
    print("soak:", json.dumps(report))
    errors = [line for line in server.log if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]
    assert not errors, errors[:20]
    assert code == 0, server.log[-20:]
