"""``slow-room``: a small room with one client that stops reading.

Four clients in one room (plain mode: everyone). One of them has a 16 KiB
receive buffer and never reads after the upgrade. One of the three others
sends 16 KiB messages in a closed loop: the next as soon as its own echo
arrives, so it goes as fast as the readers take them. What a room's readers
should see: latency as if the slow one were not there (a broadcast must not
wait on it), and the slow one closed within the server's ``--slow-timeout``
once it stopped taking data.

When the slow one was closed comes from outside it (it reads nothing):
its TCP state in /proc (a reset or FIN from the server), and for rawchat the
eviction counter of /metrics. Its close code is read at the end, when it
reads again: what is left in its socket, up to a close frame if one came.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.client import BenchClient
from benchmarks.report import Result
from benchmarks.rig import Load, Rig, RssSampler, percentiles_ms
from benchmarks.servers import ServerProcess, eviction_metrics

#: The readers' latency target, and the longest a sender may wait for its echo.
TARGET_P99_MS = 50.0
ECHO_TIMEOUT = 2.0
#: rawchat's default --slow-timeout (its --help), when no --server-arg sets it.
RAWCHAT_SLOW_TIMEOUT = 2.0
#: How long to keep watching for the slow one's close after the sending stops.
WATCH_AFTER = 5.0


def slow_timeout(server: ServerProcess) -> float | None:
    """The server's --slow-timeout: given with --server-arg, else rawchat's default."""
    if server.spec.name != "rawchat":
        return None
    value = None
    args = list(server.spec.extra_args)
    for i, arg in enumerate(args):
        if arg.startswith("--slow-timeout="):
            value = arg.partition("=")[2]
        elif arg == "--slow-timeout" and i + 1 < len(args):
            value = args[i + 1]
    return float(value) if value is not None else RAWCHAT_SLOW_TIMEOUT


def tcp_state(local_port: int, server_port: int) -> tuple[str, int] | None:
    """(state, receive queue) of the client socket on ``local_port``, from /proc."""
    local, remote = f":{local_port:04X}", f":{server_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 5)
                    if parts[1].endswith(local) and parts[2].endswith(remote):
                        return parts[3], int(parts[4].partition(":")[2], 16)
        except OSError:
            continue
    return None


class SlowWatch:
    """Times, from ``t0``, when the slow client stalled, was evicted and was cut off."""

    def __init__(self, server: ServerProcess, client: BenchClient, t0: float) -> None:
        self.server = server
        self.t0 = t0
        assert client.transport is not None
        self.port = int(client.transport.get_extra_info("sockname")[1])
        self.stalled: float | None = None
        self.evicted: float | None = None
        self.disconnected: float | None = None
        self.evictions: dict[str, Any] = {}
        self._queue: list[int] = []

    async def run(self, every: float = 0.05) -> None:
        n = 0
        while self.disconnected is None or (self.evicted is None and self._rawchat()):
            now = time.perf_counter() - self.t0
            state = tcp_state(self.port, self.server.port)
            if state is None or state[0] != "01":  # no longer ESTABLISHED
                self.disconnected = self.disconnected or now
            elif self.stalled is None:
                self._queue.append(state[1])
                # Stalled: its receive queue held data and stopped growing.
                if len(self._queue) >= 3 and self._queue[-1] == self._queue[-3] > 0:
                    self.stalled = now
            if self._rawchat() and self.evicted is None and n % 4 == 0:
                scraped = await asyncio.to_thread(self.server.scrape_metrics, 1.0)
                if scraped is not None:
                    evictions = eviction_metrics(scraped)
                    if evictions["server_evictions_total"]:
                        self.evicted = time.perf_counter() - self.t0
                        self.evictions = evictions["server_evictions"]
            n += 1
            await asyncio.sleep(every)

    def _rawchat(self) -> bool:
        return self.server.spec.name == "rawchat" and self.server.alive()


async def _send_closed_loop(rig: Rig, until: float) -> tuple[int, float]:
    """Send one message at a time, the next when the sender's echo came back.

    Returns (messages sent, longest wait for an echo in seconds).
    """
    sender = rig.senders[0]
    client = sender.client
    longest = 0.0
    sent = 0
    while time.perf_counter() < until and client.open:
        before = client.delivered
        if not sender.send_one():
            await asyncio.sleep(0.001)  # paused: the server is not reading it
            continue
        sent += 1
        asked = time.perf_counter()
        give_up = asked + ECHO_TIMEOUT
        while client.delivered <= before and client.open:
            now = time.perf_counter()
            if now > give_up or now > until + ECHO_TIMEOUT:
                break
            await asyncio.sleep(0)  # the loop reads the echo; nothing else to do
        longest = max(longest, time.perf_counter() - asked)
    return sent, longest


async def slow_room(server: ServerProcess, load: Load) -> Result:
    """Four clients in one room, one never reads; 16 KiB messages as fast as echoes come."""
    rig = Rig(server, load, f"slow-room {server.spec.label}")
    slow_index = load.clients - 1
    timeout = slow_timeout(server)
    try:
        await rig.connect(rcvbuf_for=frozenset({slow_index}), rcvbuf=load.rcvbuf)
        slow = next(c for c in rig.clients if c.index == slow_index)
        assert slow.transport is not None
        slow.transport.pause_reading()
        rig.excluded = {slow_index}
        fast = [c for c in rig.clients if c.index != slow_index]
        t0 = time.perf_counter()
        watch = SlowWatch(server, slow, t0)
        watcher = asyncio.create_task(watch.run())
        rig.run.open_window()
        cpu0 = server.cpu_seconds()
        with RssSampler(server) as rss:
            sent, longest = await _send_closed_loop(rig, t0 + load.duration)
            rig.run.close_window()
            wall = time.perf_counter() - t0
            cpu = server.cpu_seconds() - cpu0
            await rig.drain(3.0)
        try:
            await asyncio.wait_for(asyncio.shield(watcher), WATCH_AFTER)
        except TimeoutError:
            watcher.cancel()
        for problem in await asyncio.gather(watcher, return_exceptions=True):
            if problem is not None and not isinstance(problem, asyncio.CancelledError):
                raise RuntimeError(f"watching the slow client failed: {problem!r}")
        slow.transport.resume_reading()
        try:  # what it left unread, up to a close frame or the end of the connection
            await asyncio.wait_for(asyncio.shield(slow.gone), 3.0)
        except TimeoutError:
            pass
        order = rig.order_report()
        fast_delivered = [c.delivered for c in fast]
    finally:
        await rig.close()
    code = slow.close_code if slow.close_code is not None else (
        "reset/EOF, no close frame" if slow.closed else "still open")
    close_at = watch.evicted if watch.evicted is not None else watch.disconnected
    after_stall = (round(close_at - watch.stalled, 2)
                   if close_at is not None and watch.stalled is not None else None)
    m: dict[str, Any] = {
        "messages_sent": sent,
        "msg_per_s": round(sent / wall, 1),
        "delivered_mb_per_s": round(sent * load.size * len(fast) / wall / 1e6, 1),
        **{f"fast_{k}": v for k, v in percentiles_ms(rig.run.latencies_ns).items()},
        "latency_samples": len(rig.run.latencies_ns),
        "fast_all_delivered": all(d == sent for d in fast_delivered),
        "fast_lost": order["lost"],
        "longest_echo_wait_ms": round(1000 * longest, 1),
        "slow_stalled_at_s": _r(watch.stalled),
        "slow_evicted_at_s": _r(watch.evicted),
        "slow_disconnected_at_s": _r(watch.disconnected),
        "slow_closed_after_stall_s": after_stall,
        "slow_close_code": code,
        "server_evictions": watch.evictions or None,
        "server_slow_timeout_s": timeout,
        "refused_connections": sum(rig.refused.values()),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "server_rss_peak_mb": round(rss.peak / 2**20, 1),
    }
    notes = target_notes(m)
    params = {k: getattr(load, k) for k in ("clients", "size", "rcvbuf", "duration")}
    return Result("slow-room", server.spec.label, params, m, notes)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def target_notes(m: dict[str, Any]) -> list[str]:
    p99 = m["fast_p99_ms"]
    ok_p99 = "not measured" if p99 is None else ("met" if p99 < TARGET_P99_MS else "NOT met")
    notes = [f"target: fast readers' p99 < {TARGET_P99_MS:g} ms: {p99} ms ({ok_p99})"]
    timeout, after = m["server_slow_timeout_s"], m["slow_closed_after_stall_s"]
    if timeout is None:
        notes.append("target: slow client closed within the server's slow timeout: this "
                     f"server has none; closed {after} s after it stalled")
    else:
        # The stall is seen from the client's receive queue, a little before the
        # server's write buffer passes its pressure mark: allow 0.5 s for that.
        ok = "NOT met" if after is None or after > timeout + 0.5 else "met"
        notes.append(f"target: slow client closed within --slow-timeout ({timeout:g} s) of "
                     f"stalling: {after} s, code {m['slow_close_code']} ({ok})")
    return notes
