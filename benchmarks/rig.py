"""A set of connected clients plus senders, and measured windows of offered load.

Scenarios build a :class:`Rig` against one running server and call
:meth:`Rig.window` for each stretch of load they want measured.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.client import BenchClient, RunState, Sender, close_all, connect_many
from benchmarks.servers import (
    ServerProcess,
    eviction_metrics,
    machine_busy_seconds,
    unread_bytes,
)

#: Share of its core above which the load tool counts as saturated.
SATURATED = 0.9


@dataclass(frozen=True)
class Load:
    """The client-side parameters of a run (see ``python -m benchmarks SCENARIO -h``)."""

    clients: int = 1000
    #: scale: the client counts it runs fanout at, one after another.
    client_counts: tuple[int, ...] = (100, 1000, 3000, 10_000)
    senders: int = 10
    size: int = 64
    rate: float = 20.0
    duration: float = 10.0
    warmup: float = 2.0
    sample_every: int = 10
    sources: tuple[str, ...] = tuple(f"127.0.0.{i}" for i in range(2, 10))
    concurrency: int = 100
    status: bool = True
    status_lines: bool = False
    # fanout-max: doubling from start_rate, then bisecting, each step short.
    start_rate: float = 50.0
    step_seconds: float = 4.0
    bisect: int = 3
    max_steps: int = 14
    max_seconds: float = 120.0
    # overload: factor x the sustainable rate (base_rate, else the last fanout-max result).
    factor: float = 10.0
    base_rate: float | None = None
    #: SO_RCVBUF and SO_SNDBUF of every tool socket (and the senders' write
    #: high-water mark), fixed instead of autotuned. Overload sets it so that
    #: what queues is the server's doing, not megabytes in the tool's kernel.
    socket_buffer: int | None = None
    # slow: this share of clients stops reading, with this SO_RCVBUF.
    slow_share: float = 0.01
    rcvbuf: int = 4096
    # workers: rawchat processes joined through Redis, against one.
    workers: int = 2
    #: plain-burst, v1-burst, history-join: messages one client sends in one write.
    burst: int = 20


@dataclass
class Snapshot:
    at: float
    tool_cpu: float
    server_cpu: float
    server_rss: int
    attempted: int
    sent: int
    delivered: int
    machine_cpu: float = 0.0
    #: CPU of processes serving alongside the server (its Redis broker).
    extra_cpu: float = 0.0


def percentiles_ms(samples: array[int]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1e6, 3)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": at(1.0)}


#: Average unread KiB per receiving socket above which the tool counts as behind.
TOOL_BEHIND_KIB = 64.0
#: CPU used by other processes on the machine (% of one core) above which a
#: run is flagged: on two cores, that work competes with server or tool.
BUSY_MACHINE_PCT = 20.0


def other_cpu_pct(a: Snapshot, b: Snapshot) -> float:
    """CPU of everything but the server and this tool between two snapshots."""
    wall = b.at - a.at
    ours = (b.tool_cpu - a.tool_cpu) + (b.server_cpu - a.server_cpu)
    ours += b.extra_cpu - a.extra_cpu
    return round(max(0.0, 100 * ((b.machine_cpu - a.machine_cpu) - ours) / wall), 1)


class StatusLine:
    """A live one-line status on a terminal; silent when stderr is not one."""

    def __init__(self, enabled: bool, lines: bool = False) -> None:
        #: ``lines``: print each status on its own line, also when not a terminal.
        self.lines = lines
        self.enabled = lines or (enabled and sys.stderr.isatty())
        self._task: asyncio.Task[None] | None = None

    def start(self, text: Callable[[], str], every: float = 0.5) -> None:
        if not self.enabled:
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                if self.lines:
                    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text()}\n")
                else:
                    sys.stderr.write("\r\x1b[K" + text()[:200])
                sys.stderr.flush()

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if not self.lines:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()


class RssSampler:
    """Samples the server's RSS every 100 ms to catch its peak.

    With ``unread`` it also samples, every fifth time, what the load tool's
    sockets hold unread: the direct sign of the tool falling behind.
    """

    def __init__(self, server: ServerProcess, every: float = 0.1, unread: bool = False) -> None:
        self.server = server
        self.every = every
        self.peak = server.rss_bytes()
        self.unread = unread
        self.unread_samples: list[int] = []
        self.skip_ports: frozenset[int] = frozenset()
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> RssSampler:
        async def loop() -> None:
            n = 0
            while True:
                self.peak = max(self.peak, self.server.rss_bytes())
                if self.unread and n % 5 == 0:
                    self.unread_samples.append(unread_bytes(self.server.port, self.skip_ports))
                n += 1
                await asyncio.sleep(self.every)

        self._task = asyncio.create_task(loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.peak = max(self.peak, self.server.rss_bytes())


class Rig:
    """Clients connected to one server, some of them senders."""

    def __init__(self, server: ServerProcess, load: Load, label: str) -> None:
        self.server = server
        self.load = load
        self.label = label
        self.run = RunState(load.size, load.senders)
        self.clients: list[BenchClient] = []
        self.senders: list[Sender] = []
        #: Clients left out of delivery accounting (the paused ones in `slow`).
        self.excluded: set[int] = set()
        self.joined_at: dict[int, int] = {}
        self.attempted = 0
        self.status = StatusLine(load.status, load.status_lines)
        self.connect_errors: dict[str, int] = {}
        #: HTTP status -> connections refused with it (rawchat's limits: 429, 503).
        self.refused: Counter[int] = Counter()

    @property
    def total_sent(self) -> int:
        return sum(self.run.sent_per_sender)

    def receivers(self) -> list[BenchClient]:
        return [c for c in self.clients if c.open and c.index not in self.excluded]

    async def connect(
        self, rcvbuf_for: frozenset[int] = frozenset(), rcvbuf: int | None = None
    ) -> None:
        load = self.load
        result = await connect_many(
            self.server.host,
            self.server.port,
            load.clients,
            self.run,
            load.sources,
            load.concurrency,
            load.sample_every,
            rcvbuf_for=rcvbuf_for,
            rcvbuf=rcvbuf,
            buffers=load.socket_buffer,
        )
        self.clients = result.clients
        self.connect_errors = dict(result.errors)
        self.refused += result.refused
        # A server that refuses some connections is measured with the rest, and
        # the refusals are reported; one that admits too few to run cannot be.
        if len(self.clients) < max(1, load.senders):
            raise RuntimeError(f"{result.failures} of {load.clients} connections failed: "
                               f"refused {dict(result.refused)}, {dict(result.errors)}")
        for c in self.clients:
            self.joined_at[c.index] = 0
        by_index = {c.index: c for c in self.clients}
        candidates = [i for i in sorted(by_index) if i not in rcvbuf_for]
        step = max(1, len(candidates) // load.senders)
        self.senders = [
            Sender(sid, by_index[candidates[(sid * step) % len(candidates)]], load.size)
            for sid in range(load.senders)
        ]
        if load.socket_buffer is not None:
            for sender in self.senders:
                if sender.client.transport is not None:
                    sender.client.transport.set_write_buffer_limits(high=load.socket_buffer)

    async def top_up(self) -> int:
        """Replace connections the server closed, so the next window has them all."""
        gone = [c for c in self.clients if c.closed or not c.open]
        if not gone:
            return 0
        sent = self.total_sent
        self.clients = [c for c in self.clients if c.open]
        for c in gone:
            c.abort()
        first = max(c.index for c in self.clients + gone) + 1
        result = await connect_many(
            self.server.host, self.server.port, len(gone), self.run, self.load.sources,
            self.load.concurrency, self.load.sample_every, first_index=first,
            buffers=self.load.socket_buffer,
        )
        self.refused += result.refused
        for c in result.clients:
            c.late = True
            self.joined_at[c.index] = sent
        self.clients.extend(result.clients)
        spare = [c for c in self.clients if c.index not in {s.client.index for s in self.senders}]
        for s in self.senders:
            if not s.client.open and spare:
                s.client = spare.pop()
        return len(result.clients)

    def excluded_ports(self) -> frozenset[int]:
        ports = set()
        for c in self.clients:
            if c.index in self.excluded and c.transport is not None:
                sockname = c.transport.get_extra_info("sockname")
                if sockname:
                    ports.add(sockname[1])
        return frozenset(ports)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            at=time.perf_counter(),
            tool_cpu=time.process_time(),
            server_cpu=self.server.cpu_seconds(),
            server_rss=self.server.rss_bytes(),
            attempted=self.attempted,
            sent=self.total_sent,
            delivered=sum(c.delivered for c in self.clients if c.index not in self.excluded),
            machine_cpu=machine_busy_seconds(),
            extra_cpu=self.server.extra_cpu_seconds(),
        )

    def pending(self) -> int:
        """Deliveries still owed to open receivers (messages sent since each joined)."""
        sent = self.total_sent
        owed = 0
        for c in self.receivers():
            owed += max(0, sent - self.joined_at.get(c.index, 0) - c.delivered)
        return owed

    async def drain(self, timeout: float = 10.0, stall: float = 2.0) -> int:
        """Wait until every open receiver has every message, or progress stops."""
        deadline = time.monotonic() + timeout
        last = self.pending()
        last_change = time.monotonic()
        while last and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now_pending = self.pending()
            if now_pending != last:
                last, last_change = now_pending, time.monotonic()
            elif time.monotonic() - last_change > stall:
                break
        return last

    async def _offer(self, rate: float, seconds: float) -> None:
        """Offer ``rate`` messages/s round-robin over the senders for ``seconds``.

        A sender whose transport asked to pause writing (the server is not
        reading fast enough) skips its turn instead of buffering: that is
        how the achieved send rate shows back-pressure.
        """
        loop = asyncio.get_running_loop()
        senders = self.senders
        n = len(senders)
        start = loop.time()
        end = start + seconds
        due_base = self.attempted
        while True:
            now = loop.time()
            if now >= end:
                break
            due = due_base + int((now - start) * rate) + 1
            while self.attempted < due:
                senders[self.attempted % n].send_one()
                self.attempted += 1
            next_at = start + (due - due_base) / rate
            await asyncio.sleep(min(max(next_at - loop.time(), 0.001), end - loop.time()))

    def status_text(self, phase: str, ref: list[Snapshot]) -> Callable[[], str]:
        def text() -> str:
            snap = self.snapshot()
            prev = ref[0]
            dt = max(snap.at - prev.at, 1e-6)
            ref[0] = snap
            return (
                f"{self.label} {phase}: conns {len(self.receivers())} "
                f"sent {(snap.sent - prev.sent) / dt:,.0f}/s "
                f"held {sum(1 for s in self.senders if not s.client.can_write)} "
                f"delivered {(snap.delivered - prev.delivered) / dt:,.0f}/s "
                f"tool cpu {100 * (snap.tool_cpu - prev.tool_cpu) / dt:.0f}% "
                f"server cpu {100 * (snap.server_cpu - prev.server_cpu) / dt:.0f}% "
                f"rss {snap.server_rss / 2**20:.0f} MB"
            )

        return text

    async def window(
        self, rate: float, warmup: float, duration: float, phase: str = "", drain: float = 10.0
    ) -> dict[str, Any]:
        """Offer load for warmup + duration seconds; measure the last ``duration``."""
        run = self.run
        run.latencies_ns = array("q")
        run.tool_delays_ns = array("q")
        closed_before = sum(1 for c in self.clients if c.closed or c.close_code is not None)
        receivers = len(self.receivers())
        ref = [self.snapshot()]
        self.status.start(self.status_text(phase or f"{rate:g} msg/s", ref))
        offer = asyncio.create_task(self._offer(rate, warmup + duration))
        try:
            with RssSampler(self.server) as rss:
                await asyncio.sleep(warmup)
                a = self.snapshot()
                run.open_window()
                rss.skip_ports = self.excluded_ports()
                rss.unread = True
                await asyncio.sleep(duration)
                rss.unread = False
                b = self.snapshot()
                run.close_window()
                await offer
                pending = await self.drain(drain) if drain > 0 else self.pending()
        finally:
            offer.cancel()
            await self.status.stop()
        # rawchat's evictions so far, read before the percentiles below keep
        # this process from reading for seconds: a server still sending then
        # rightly evicts clients that stopped reading, but that is the tool's doing.
        scraped = self.server.scrape_metrics()
        wall = b.at - a.at
        sent = b.sent - a.sent
        delivered = b.delivered - a.delivered
        expected = sent * receivers
        tool_share = (b.tool_cpu - a.tool_cpu) / wall
        samples = rss.unread_samples
        unread_kib = sum(samples) / len(samples) / receivers / 1024 if samples and receivers else 0
        # A tool that got less than its core (other work on the machine)
        # falls behind below 90% CPU: unread data in its sockets shows it.
        tool_behind = unread_kib > TOOL_BEHIND_KIB
        closed_after = sum(1 for c in self.clients if c.closed or c.close_code is not None)
        metrics: dict[str, Any] = {
            "offered_msg_per_s": round(rate, 1),
            "sent_msg_per_s": round(sent / wall, 1),
            # Achieved against offered: below 1 when senders were held back
            # (their transport paused) or the pacer itself fell behind.
            "send_ratio": round(sent / (rate * wall), 4) if rate else None,
            "held_back": (b.attempted - a.attempted) - sent,
            "receivers": receivers,
            "offered_deliveries_per_s": round(rate * receivers),
            "delivered_per_s": round(delivered / wall),
            "delivery_ratio": round(delivered / expected, 4) if expected else None,
            **percentiles_ms(run.latencies_ns),
            "latency_samples": len(run.latencies_ns),
            # How long sampled reads sat in their socket before the tool read
            # them: not part of the latency above (timed from arrival).
            **{f"tool_read_delay_{k}": v for k, v in percentiles_ms(run.tool_delays_ns).items()
               if k in ("p50_ms", "p99_ms")},
            "undelivered_after_drain": pending,
            "closed_by_server": closed_after - closed_before,
            "refused_connections": sum(self.refused.values()),
            **self.refusals(),
            "tool_cpu_pct": round(100 * tool_share, 1),
            "server_cpu_s": round(b.server_cpu - a.server_cpu, 2),
            "server_cpu_pct": round(100 * (b.server_cpu - a.server_cpu) / wall, 1),
            "server_rss_mb": round(b.server_rss / 2**20, 1),
            "server_rss_peak_mb": round(rss.peak / 2**20, 1),
            "server_rss_growth_mb": round((b.server_rss - a.server_rss) / 2**20, 2),
            "tool_unread_kib_per_conn": round(unread_kib, 1),
            "tool_behind": tool_behind,
            "tool_saturated": tool_share >= SATURATED or tool_behind,
            "other_cpu_pct": other_cpu_pct(a, b),
        }
        if scraped is not None:
            metrics.update(eviction_metrics(scraped))
        if self.server.redis is not None:
            metrics["broker_cpu_pct"] = round(100 * (b.extra_cpu - a.extra_cpu) / wall, 1)
        return metrics

    def totals(self) -> dict[str, int]:
        """Whole-run counts over open receivers, warm-up and drain included."""
        receivers = self.receivers()
        sent = self.total_sent
        return {
            "messages_sent": sent,
            "deliveries_expected": sum(sent - self.joined_at.get(c.index, 0) for c in receivers),
            "deliveries_counted": sum(c.delivered for c in receivers),
        }

    def order_report(self) -> dict[str, int]:
        """Loss, duplicates and reordering summed over sampled connections still open."""
        lost = dup = reordered = checked = 0
        sent_by = self.run.sent_per_sender
        for c in self.clients:
            if not c.sampled or not c.open or c.index in self.excluded:
                continue
            checked += 1
            for sid, check in enumerate(c.checks):
                if c.late:
                    first = c.first_seq[sid] if c.first_seq[sid] >= 0 else sent_by[sid]
                    lost += check.lost(first)
                else:
                    lost += check.lost()
                dup += check.duplicates
                reordered += check.reordered
        return {
            "sampled_connections": checked,
            "lost": lost,
            "duplicated": dup,
            "reordered": reordered,
            "unexpected_frames": self.run.unexpected_frames,
        }

    def close_codes(self) -> dict[str, int]:
        return {str(code): n for code, n in sorted(self.run.close_codes.items())}

    def refusals(self) -> dict[str, Any]:
        """What the server refused while connecting: statuses, and other failures."""
        out: dict[str, Any] = {}
        if self.refused:
            out["refused_by_status"] = {str(k): v for k, v in sorted(self.refused.items())}
        if self.connect_errors:
            out["connect_errors"] = dict(self.connect_errors)
        return out

    async def close(self) -> None:
        await close_all(self.clients)

    def abort(self, clients: Sequence[BenchClient] | None = None) -> None:
        for c in clients if clients is not None else self.clients:
            c.abort()
