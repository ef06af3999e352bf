"""Counters and the Prometheus text exposition format (version 0.0.4), by hand.

The counters are plain integers bumped where things happen; nothing is
computed until ``/metrics`` is asked for. Writing the format ourselves keeps
rawchat free of a global registry, so that several servers can live in one
process (the tests run many).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rawchat.server import ServerState

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """What the hub and the hub's own counters don't already keep."""

    def __init__(self) -> None:
        self.started = time.time()
        self.messages_in = 0
        self.handshakes = 0
        #: Refused upgrades, by reason: bad_request, version, method, origin, rate, full, per_ip.
        self.handshake_failures: Counter[str] = Counter()
        #: WebSocket close codes, whichever side sent them (1006: none was exchanged).
        self.close_codes: Counter[int] = Counter()
        self.rate_limited = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        sample_name = f"{name}_total" if kind == "counter" else name
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            label_part = "{" + rendered + "}" if rendered else ""
            number = repr(float(value)) if isinstance(value, float) else str(value)
            self.lines.append(f"{sample_name}{label_part} {number}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [({}, value)])


def render(state: ServerState) -> bytes:
    m = state.metrics
    hub = state.hub
    w = _Writer()
    w.one(
        "rawchat_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        round(time.time() - m.started, 3),
    )
    w.one(
        "rawchat_connections", "gauge", "Open TCP connections, any phase.", len(state.connections)
    )
    modes = Counter(
        "plain" if c.session is None or c.session.plain else "v1" for c in state.websockets
    )
    w.family(
        "rawchat_websockets",
        "gauge",
        "Open WebSocket connections by protocol.",
        [({"protocol": mode}, modes.get(mode, 0)) for mode in ("plain", "v1")],
    )
    w.one("rawchat_rooms", "gauge", "Rooms with members or kept history.", len(state.chat.rooms))
    w.one("rawchat_handshakes", "counter", "WebSocket upgrades accepted.", m.handshakes)
    w.family(
        "rawchat_handshake_failures",
        "counter",
        "WebSocket upgrades refused, by reason.",
        [({"reason": reason}, n) for reason, n in sorted(m.handshake_failures.items())],
    )
    w.one(
        "rawchat_messages_in", "counter", "WebSocket messages received from clients.", m.messages_in
    )
    w.one(
        "rawchat_messages_out", "counter", "WebSocket frames sent through the hub.", hub.frames_out
    )
    w.one(
        "rawchat_bytes_out",
        "counter",
        "Bytes of WebSocket frames sent through the hub.",
        hub.bytes_out,
    )
    w.family(
        "rawchat_evictions",
        "counter",
        "Clients evicted as too slow, by reason.",
        [({"reason": reason}, n) for reason, n in sorted(hub.evicted.items())],
    )
    w.one(
        "rawchat_senders_held",
        "counter",
        "Times a sender was held while a client was behind.",
        state.flow.holds,
    )
    w.one(
        "rawchat_rate_limited",
        "counter",
        "Messages dropped by the per-connection rate limit.",
        m.rate_limited,
    )
    w.family(
        "rawchat_close_codes",
        "counter",
        "WebSocket connections closed, by close code.",
        [({"code": str(code)}, n) for code, n in sorted(m.close_codes.items())],
    )
    w.one(
        "rawchat_write_buffer_high_water_bytes",
        "gauge",
        "Most bytes any one client had waiting to be sent.",
        hub.high_water,
    )
    broker = state.broker
    if broker is not None:
        w.one(
            "rawchat_broker_up", "gauge", "1 while the Redis broker is reachable.", int(broker.up)
        )
        w.one("rawchat_broker_outages", "counter", "Times the broker was lost.", broker.outages)
    return ("\n".join(w.lines) + "\n").encode()


def health(state: ServerState) -> bytes:
    report: dict[str, object] = {
        "status": "ok",
        "connections": len(state.connections),
        "websockets": len(state.websockets),
        "rooms": len(state.chat.rooms),
        "uptime": round(time.time() - state.metrics.started, 3),
        "pid": os.getpid(),
    }
    broker = state.broker
    if broker is not None:
        report["broker"] = {"up": broker.up, "node": broker.node, "outages": broker.outages}
        if not broker.up:
            report["status"] = "degraded"
    return json.dumps(report).encode()
