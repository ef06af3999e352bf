"""Counters, ``/metrics`` (Prometheus, through prometheus_client) and ``/healthz``.

The counters are plain integers bumped where things happen; nothing is
computed until ``/metrics`` is asked for. A custom collector reads them, and
the hub's own counters, at scrape time: the hot path never touches
prometheus_client. Each server has its own ``CollectorRegistry`` (not the
process-wide default), so that several servers can live in one process (the
tests run many).

This module imports nothing of rawchat's above it: the server hands it what
to read as an :class:`Sources`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: The text format rawchat's names need: none is outside the legacy character set,
#: so generate_latest's output is the 0.0.4 format every Prometheus reads.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Counters:
    """What the hub and flow control don't already count."""

    __slots__ = (
        "started",
        "messages_in",
        "handshakes",
        "handshakes_paced",
        "handshake_failures",
        "close_codes",
        "rate_limited",
    )

    def __init__(self) -> None:
        self.started = time.time()
        self.messages_in = 0
        self.handshakes = 0
        #: Upgrades that waited for their turn under --handshake-rate.
        self.handshakes_paced = 0
        #: Refused upgrades, by reason: bad_request, version, method, origin, rate, full, per_ip.
        self.handshake_failures: Counter[str] = Counter()
        #: WebSocket close codes, whichever side sent them (1006: none was exchanged).
        self.close_codes: Counter[int] = Counter()
        self.rate_limited = 0


class FanOut(Protocol):
    """The hub's counters (rawchat.hub.Hub)."""

    frames_out: int
    bytes_out: int
    high_water: int
    evicted: Counter[str]


class BrokerStatus(Protocol):
    """The broker's health (rawchat.broker.Broker)."""

    up: bool
    node: str
    outages: int


class StoreStatus(Protocol):
    """The history store's health (rawchat.store.Store)."""

    path: Path
    #: Why writes fail, while they do; None when healthy.
    failing: str | None
    errors: int
    lost: int


def _no_store() -> StoreStatus | None:
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    """Where a scrape reads its values from, each read when it is asked for."""

    counters: Counters
    hub: FanOut
    #: Open TCP connections, any phase.
    connections: Callable[[], int]
    #: Open WebSocket connections by protocol ("plain", "v1").
    websockets: Callable[[], Counter[str]]
    rooms: Callable[[], int]
    #: Times a sender was held by flow control.
    holds: Callable[[], int]
    broker: Callable[[], BrokerStatus | None]
    #: Moderation actions taken and tokens refused, by kind.
    moderation: Callable[[], dict[str, int]]
    #: The history database, unless history is kept in memory only or in Redis.
    store: Callable[[], StoreStatus | None] = _no_store


class RawchatCollector(Collector):
    """Turns :class:`Sources` into metric families at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        c, hub = s.counters, s.hub
        yield _gauge(
            "rawchat_uptime_seconds",
            "Seconds since the server started.",
            round(time.time() - c.started, 3),
        )
        yield _gauge("rawchat_connections", "Open TCP connections, any phase.", s.connections())
        modes = s.websockets()
        family = GaugeMetricFamily(
            "rawchat_websockets", "Open WebSocket connections by protocol.", labels=["protocol"]
        )
        for mode in ("plain", "v1"):
            family.add_metric([mode], modes.get(mode, 0))
        yield family
        yield _gauge("rawchat_rooms", "Rooms with members or kept history.", s.rooms())
        yield _counter("rawchat_handshakes", "WebSocket upgrades accepted.", c.handshakes)
        yield _counter(
            "rawchat_handshakes_paced",
            "WebSocket upgrades that waited for their turn (--handshake-rate).",
            c.handshakes_paced,
        )
        yield _by(
            "rawchat_handshake_failures",
            "WebSocket upgrades refused, by reason.",
            "reason",
            c.handshake_failures,
        )
        yield _counter(
            "rawchat_messages_in", "WebSocket messages received from clients.", c.messages_in
        )
        yield _counter(
            "rawchat_messages_out", "WebSocket frames sent through the hub.", hub.frames_out
        )
        yield _counter(
            "rawchat_bytes_out", "Bytes of WebSocket frames sent through the hub.", hub.bytes_out
        )
        yield _by(
            "rawchat_evictions", "Clients evicted as too slow, by reason.", "reason", hub.evicted
        )
        yield _counter(
            "rawchat_senders_held", "Times a sender past --rate had its reading paused.", s.holds()
        )
        yield _counter(
            "rawchat_rate_limited",
            "Messages handled past --rate, after which reading paused for a token.",
            c.rate_limited,
        )
        yield _by(
            "rawchat_close_codes",
            "WebSocket connections closed, by close code.",
            "code",
            {str(code): n for code, n in c.close_codes.items()},
        )
        yield _by(
            "rawchat_moderation",
            "Moderation actions (kick, mute, ban, delete, owner) and refused tokens, by kind.",
            "action",
            s.moderation(),
        )
        yield _gauge(
            "rawchat_write_buffer_high_water_bytes",
            "Most bytes any one client had waiting to be sent.",
            hub.high_water,
        )
        broker = s.broker()
        if broker is not None:
            yield _gauge("rawchat_broker_up", "1 while the Redis broker is reachable.", broker.up)
            yield _counter("rawchat_broker_outages", "Times the broker was lost.", broker.outages)
        store = s.store()
        if store is not None:
            yield _counter(
                "rawchat_store_errors",
                "Batches of history the store failed to write (each is retried).",
                store.errors,
            )
            yield _counter(
                "rawchat_store_lost",
                "Messages given up after the store failed to write them for too long.",
                store.lost,
            )
            yield _gauge("rawchat_store_up", "1 while history is being written.", not store.failing)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _by(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


class Exposition:
    """One server's ``/metrics`` and ``/healthz`` bodies."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RawchatCollector(sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> bytes:
        s = self.sources
        modes = s.websockets()
        report: dict[str, object] = {
            "status": "ok",
            "connections": s.connections(),
            "websockets": modes.total(),
            "rooms": s.rooms(),
            "uptime": round(time.time() - s.counters.started, 3),
            "pid": os.getpid(),
        }
        broker = s.broker()
        if broker is not None:
            report["broker"] = {"up": broker.up, "node": broker.node, "outages": broker.outages}
            if not broker.up:
                report["status"] = "degraded"
        store = s.store()
        if store is not None:
            report["store"] = {"path": str(store.path), "failing": store.failing}
            if store.failing is not None:
                report["status"] = "degraded"
                report["reason"] = f"cannot write history to {store.path}: {store.failing}"
        return json.dumps(report).encode()
