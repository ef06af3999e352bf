"""The scenarios: each takes a running server and the load parameters, returns a Result."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.client import BenchClient, RunState, close_all, connect_many
from benchmarks.report import Result, last_metric
from benchmarks.rig import BUSY_MACHINE_PCT, SATURATED, Load, Rig, RssSampler, StatusLine
from benchmarks.servers import ServerProcess, fd_limit, machine_busy_seconds

SATURATED_NOTE = "load tool saturated: ceiling not measured"
#: A fanout-max step passes with this delivery ratio and p99 latency.
PASS_RATIO = 0.99
PASS_P99_MS = 100.0
#: File descriptors kept back for the process itself (logs, listener, pipes).
FD_MARGIN = 64

Scenario = Callable[[ServerProcess, Load], Awaitable[Result]]


def _params(load: Load, *names: str) -> dict[str, Any]:
    return {n: getattr(load, n) for n in names}


def _busy_note(metrics: dict[str, Any], notes: list[str]) -> None:
    busy = metrics.get("other_cpu_pct") or 0.0
    if busy >= BUSY_MACHINE_PCT:
        notes.append(f"other processes used {busy:.0f}% of a core during the run: "
                     "the numbers are not reliable")


def _saturation_notes(metrics: dict[str, Any], notes: list[str]) -> None:
    _busy_note(metrics, notes)
    if metrics.get("tool_saturated"):
        notes.append(SATURATED_NOTE)
    if (metrics.get("server_cpu_pct") or 0) >= 100 * SATURATED:
        notes.append("server CPU saturated (one core)")


async def fanout(server: ServerProcess, load: Load) -> Result:
    rig = Rig(server, load, f"fanout {server.spec.label}")
    try:
        await rig.connect()
        metrics = await rig.window(load.rate, load.warmup, load.duration)
        metrics.update(rig.totals())
        metrics.update(rig.order_report())
        metrics["close_codes"] = rig.close_codes()
    finally:
        await rig.close()
    notes: list[str] = []
    _saturation_notes(metrics, notes)
    params = _params(load, "clients", "senders", "size", "rate", "duration", "warmup",
                     "sample_every")
    return Result("fanout", server.spec.label, params, metrics, notes)


async def big(server: ServerProcess, load: Load) -> Result:
    result = await fanout(server, load)
    result.scenario = "big"
    m = result.metrics
    m["delivered_mb_per_s"] = round(m["delivered_per_s"] * load.size / 1e6, 1)
    m["offered_mb_per_s"] = round(m["offered_deliveries_per_s"] * load.size / 1e6, 1)
    return result


def _passes(m: dict[str, Any]) -> bool:
    ratio = m.get("delivery_ratio") or 0.0
    p99 = m.get("p99_ms")
    return ratio >= PASS_RATIO and p99 is not None and p99 < PASS_P99_MS


async def fanout_max(server: ServerProcess, load: Load) -> Result:
    """Double the offered rate until a step fails, then bisect between pass and fail.

    (If the first step already fails, halve until one passes, then bisect.)

    Each step is short (``step_seconds``, a quarter of it warm-up); between
    steps the backlog drains and connections the server closed are replaced,
    so every step starts from the same state.
    """
    rig = Rig(server, load, f"fanout-max {server.spec.label}")
    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    best: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        await rig.connect()
        low, high = 0.0, None
        rate = load.start_rate
        bisections = 0
        warm = load.step_seconds / 4
        for _ in range(load.max_steps):
            if time.monotonic() - started > load.max_seconds:
                notes.append(f"stopped at the {load.max_seconds:g} s time cap")
                break
            replaced = await rig.top_up()
            m = await rig.window(rate, warm, load.step_seconds - warm, drain=5.0)
            ok = _passes(m)
            steps.append({"rate": rate, "ok": ok, "replaced_before": replaced, **m})
            if ok:
                low = rate
                if best is None or m["delivered_per_s"] > best["delivered_per_s"]:
                    best = m
                if m["tool_saturated"]:
                    # Past here the steps would measure the load tool, not the server.
                    notes.append(f"stopped: load tool saturated at {rate:g} msg/s, the "
                                 "server's ceiling is higher")
                    break
            else:
                high = rate
            if high is None:
                rate *= 2
                continue
            if low == 0:
                # Even the first step failed: come down until one passes.
                if rate <= load.start_rate / 16:
                    break
                rate /= 2
                continue
            if bisections >= load.bisect or high / low < 1.1:
                break
            bisections += 1
            rate = (low + high) / 2
        else:
            notes.append(f"stopped after {load.max_steps} steps")
        order = rig.order_report()
    finally:
        await rig.close()
    metrics: dict[str, Any] = {
        "sustainable_msg_per_s": low or None,
        "sustainable_deliveries_per_s": best["delivered_per_s"] if best else None,
        "first_failing_msg_per_s": high,
    }
    if best is not None:
        for key in ("p50_ms", "p99_ms", "delivery_ratio", "server_cpu_pct", "tool_cpu_pct"):
            metrics[f"at_best_{key}"] = best[key]
    metrics["steps"] = len(steps)
    metrics["other_cpu_pct"] = max((s["other_cpu_pct"] for s in steps), default=0.0)
    metrics["seconds"] = round(time.monotonic() - started, 1)
    metrics.update({k: order[k] for k in ("lost", "duplicated", "reordered")})
    _busy_note(metrics, notes)
    if best is None:
        notes.append(f"no step passed, down to {load.start_rate / 16:g} msg/s")
    if any(s["tool_saturated"] for s in steps if s["rate"] == high) or (
        best is not None and best["tool_saturated"]
    ):
        notes.append(SATURATED_NOTE)
    step_line = ", ".join(
        f"{s['rate']:g}{'' if s['ok'] else '✗'} ({s['delivery_ratio']}, p99 {s['p99_ms']})"
        for s in steps
    )
    notes.append(f"steps msg/s (delivery ratio, p99 ms): {step_line}")
    params = _params(load, "clients", "senders", "size", "start_rate", "step_seconds",
                     "bisect", "sample_every")
    result = Result("fanout-max", server.spec.label, params, metrics, notes)
    result.params["step_detail"] = [
        {k: s[k] for k in ("rate", "ok", "delivered_per_s", "delivery_ratio", "p99_ms",
                           "tool_cpu_pct", "server_cpu_pct", "closed_by_server")}
        for s in steps
    ]
    return result


def _cap_clients(wanted: int, notes: list[str]) -> int:
    limit = fd_limit() - FD_MARGIN
    if wanted > limit:
        notes.append(f"RLIMIT_NOFILE ({fd_limit()}) caps this run at {limit} connections "
                     f"instead of {wanted}")
        return limit
    return wanted


async def _hold_connections(
    server: ServerProcess, load: Load, scenario: str, hold: float
) -> Result:
    notes: list[str] = []
    count = _cap_clients(load.clients, notes)
    run = RunState(load.size, 1)
    status = StatusLine(load.status, load.status_lines)
    rss_before = server.rss_bytes()
    cpu_before = server.cpu_seconds()
    tool_before = time.process_time()
    machine_before = machine_busy_seconds()
    started = time.perf_counter()
    clients: list[BenchClient] = []
    status.start(lambda: f"{scenario} {server.spec.label}: "
                 f"{sum(1 for c in clients if c.open)} open, "
                 f"rss {server.rss_bytes() / 2**20:.0f} MB")
    try:
        result = await connect_many(
            server.host, server.port, count, run, load.sources, load.concurrency,
            sample_every=0,
        )
        clients = result.clients
        connect_seconds = result.seconds
        cpu_after_connect = server.cpu_seconds()
        tool_share = (time.process_time() - tool_before) / max(connect_seconds, 1e-6)
        opened = len(clients)
        metrics: dict[str, Any] = {
            "connections_wanted": count,
            "connections_opened": opened,
            "connect_seconds": round(connect_seconds, 2),
            "handshakes_per_s": round(opened / connect_seconds) if connect_seconds else None,
            "server_cpu_s": round(cpu_after_connect - cpu_before, 2),
            "server_cpu_ms_per_hs": round(1000 * (cpu_after_connect - cpu_before) / opened, 3)
            if opened else None,
            "server_cpu_pct": round(100 * (cpu_after_connect - cpu_before) / connect_seconds, 1)
            if connect_seconds else None,
            "tool_cpu_pct": round(100 * tool_share, 1),
            "tool_saturated": tool_share >= SATURATED,
        }
        if tool_share >= SATURATED:
            notes.append(SATURATED_NOTE)
        if result.errors:
            notes.append(f"connect errors: {dict(result.errors)}")
        with RssSampler(server) as rss:
            await asyncio.sleep(hold)
        rss_after = server.rss_bytes()
        still_open = sum(1 for c in clients if c.open and not c.closed)
        metrics.update({
            "held_seconds": hold,
            "still_open": still_open,
            "all_stayed_open": still_open == opened == count,
            "server_rss_before_mb": round(rss_before / 2**20, 1),
            "server_rss_after_mb": round(rss_after / 2**20, 1),
            "server_rss_peak_mb": round(rss.peak / 2**20, 1),
            "rss_kib_per_conn": round((rss_after - rss_before) / 1024 / opened, 2)
            if opened else None,
            "server_cpu_idle_pct": round(
                100 * (server.cpu_seconds() - cpu_after_connect) / hold, 1) if hold else None,
            "close_codes": {str(k): v for k, v in sorted(run.close_codes.items())},
        })
    finally:
        await status.stop()
        await close_all(clients, graceful=False)
    wall = time.perf_counter() - started
    ours = (time.process_time() - tool_before) + (server.cpu_seconds() - cpu_before)
    metrics["other_cpu_pct"] = round(
        max(0.0, 100 * ((machine_busy_seconds() - machine_before) - ours) / wall), 1)
    metrics["wall_seconds"] = round(wall, 1)
    _busy_note(metrics, notes)
    params = _params(load, "clients", "concurrency")
    params["hold"] = hold
    return Result(scenario, server.spec.label, params, metrics, notes)


async def idle(server: ServerProcess, load: Load) -> Result:
    return await _hold_connections(server, load, "idle", load.duration)


async def connect(server: ServerProcess, load: Load) -> Result:
    result = await _hold_connections(server, load, "connect", 0.0)
    for key in ("held_seconds", "server_cpu_idle_pct", "rss_kib_per_conn", "close_codes"):
        result.metrics.pop(key, None)
    return result


def sustainable_rate(label: str, load: Load, known: dict[str, float]) -> tuple[float, str]:
    if load.base_rate is not None:
        return load.base_rate, "given with --base-rate"
    if label in known:
        return known[label], "from this run's fanout-max"
    found = last_metric("fanout-max", label, "sustainable_msg_per_s")
    if found:
        return float(found), "from the last fanout-max in results.jsonl"
    return 200.0, "a guess (no fanout-max result yet; pass --base-rate)"


async def overload(
    server: ServerProcess, load: Load, known: dict[str, float] | None = None
) -> Result:
    base, source = sustainable_rate(server.spec.label, load, known or {})
    rate = base * load.factor
    rig = Rig(server, load, f"overload {server.spec.label}")
    try:
        await rig.connect()
        metrics = await rig.window(rate, 0.0, load.duration, phase=f"{rate:g} msg/s", drain=5.0)
        metrics.update(rig.order_report())
        metrics["close_codes"] = rig.close_codes()
    finally:
        await rig.close()
    notes = [f"offered {load.factor:g} x {base:g} msg/s; base rate {source}"]
    _saturation_notes(metrics, notes)
    metrics["senders_slowed_to"] = metrics["send_ratio"]
    params = _params(load, "clients", "senders", "size", "factor", "duration", "sample_every")
    params["base_rate"] = base
    return Result("overload", server.spec.label, params, metrics, notes)


async def slow(server: ServerProcess, load: Load) -> Result:
    """Fan-out with a share of clients that stop reading, against the same run without."""
    rig = Rig(server, load, f"slow {server.spec.label}")
    count = max(1, round(load.clients * load.slow_share))
    stride = load.clients // count
    # Offset by one so the slow ones are neither sampled nor senders.
    slow_ids = frozenset(i * stride + stride // 2 + 1 for i in range(count))
    try:
        await rig.connect(rcvbuf_for=slow_ids, rcvbuf=load.rcvbuf)
        slow_clients = [c for c in rig.clients if c.index in slow_ids]
        base = await rig.window(load.rate, load.warmup, load.duration, phase="all reading")
        for c in slow_clients:
            assert c.transport is not None
            c.transport.pause_reading()
        rig.excluded = set(slow_ids)
        stalled = await rig.window(load.rate, 0.0, load.duration, phase="1% stopped reading")
        for c in slow_clients:
            if c.transport is not None and not c.transport.is_closing():
                c.transport.resume_reading()
        await rig.drain(3.0)
        order = rig.order_report()
        slow_closed = sum(1 for c in slow_clients if c.closed or c.close_code is not None)
    finally:
        await rig.close()
    keys = ("delivered_per_s", "delivery_ratio", "p50_ms", "p90_ms", "p99_ms", "max_ms",
            "server_cpu_pct")
    metrics: dict[str, Any] = {"slow_clients": len(slow_ids)}
    for key in keys:
        metrics[f"plain_{key}"] = base[key]
        metrics[f"slow_{key}"] = stalled[key]
    metrics["plain_rss_growth_mb"] = base["server_rss_growth_mb"]
    metrics["slow_rss_growth_mb"] = stalled["server_rss_growth_mb"]
    metrics["slow_rss_peak_mb"] = stalled["server_rss_peak_mb"]
    metrics["slow_clients_closed"] = slow_closed
    metrics["others_closed"] = stalled["closed_by_server"] - slow_closed
    metrics["sent_ratio_while_slow"] = stalled["send_ratio"]
    metrics.update({k: order[k] for k in ("lost", "duplicated", "reordered")})
    metrics["close_codes"] = rig.close_codes()
    metrics["tool_saturated"] = base["tool_saturated"] or stalled["tool_saturated"]
    metrics["other_cpu_pct"] = max(base["other_cpu_pct"], stalled["other_cpu_pct"])
    notes: list[str] = []
    _saturation_notes(metrics, notes)
    params = _params(load, "clients", "senders", "size", "rate", "duration", "slow_share",
                     "rcvbuf")
    return Result("slow", server.spec.label, params, metrics, notes)


SCENARIOS: dict[str, Scenario] = {
    "fanout": fanout,
    "fanout-max": fanout_max,
    "big": big,
    "idle": idle,
    "connect": connect,
    "overload": overload,
    "slow": slow,
}

#: Scenario defaults that differ from :class:`Load`'s.
DEFAULTS: dict[str, dict[str, Any]] = {
    "fanout": {},
    "fanout-max": {},
    "big": {"clients": 100, "size": 16 * 1024, "rate": 500.0},
    "idle": {"clients": 10_000},
    "connect": {"clients": 10_000},
    "overload": {"warmup": 0.0},
    # Below every server's sustainable rate, so only the stalled clients differ;
    # 4 KiB messages build a backlog of 200 KB/s for each client that stops.
    "slow": {"rate": 50.0, "size": 4096},
}


def load_for(scenario: str, **overrides: Any) -> Load:
    values = {**DEFAULTS[scenario], **{k: v for k, v in overrides.items() if v is not None}}
    return dataclasses.replace(Load(), **values)
