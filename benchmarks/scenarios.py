"""The scenarios: each takes a running server and the load parameters, returns a Result."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.abuse import abuse
from benchmarks.chat_checks import CHECKS
from benchmarks.client import BenchClient, RunState, close_all, connect_many
from benchmarks.report import Result, last_metric
from benchmarks.rig import BUSY_MACHINE_PCT, SATURATED, Load, Rig, RssSampler, StatusLine
from benchmarks.servers import (
    RedisProcess,
    ServerProcess,
    ServerSpec,
    fd_limit,
    machine_busy_seconds,
)
from benchmarks.slow_room import slow_room

SATURATED_NOTE = "load tool saturated: ceiling not measured"
#: A fanout-max step passes with this delivery ratio and p99 latency.
PASS_RATIO = 0.99
PASS_P99_MS = 100.0
#: File descriptors kept back for the process itself (logs, listener, pipes).
FD_MARGIN = 64

Scenario = Callable[[ServerProcess, Load], Awaitable[Result]]


def _params(load: Load, *names: str) -> dict[str, Any]:
    return {n: getattr(load, n) for n in names}


def _busy_note(metrics: dict[str, Any], notes: list[str], where: str = "") -> None:
    busy = metrics.get("other_cpu_pct") or 0.0
    if busy >= BUSY_MACHINE_PCT:
        notes.append(f"{where}other processes used {busy:.0f}% of a core during the run: "
                     "the numbers are not reliable")


def _saturation_notes(metrics: dict[str, Any], notes: list[str], where: str = "") -> None:
    """Say what was busy during a window; ``where`` names the window when a run has several."""
    _busy_note(metrics, notes, where)
    if metrics.get("tool_saturated"):
        notes.append(where + SATURATED_NOTE)
    if (metrics.get("server_cpu_pct") or 0) >= 100 * SATURATED:
        notes.append(f"{where}server CPU saturated (one core)")


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


#: What ``scale`` keeps of each client count's window.
SCALE_KEYS = ("delivered_per_s", "delivery_ratio", "p50_ms", "p90_ms", "p99_ms", "max_ms",
              "server_cpu_pct", "tool_cpu_pct", "server_rss_mb", "closed_by_server",
              "undelivered_after_drain")


async def scale(server: ServerProcess, load: Load) -> Result:
    """fanout at one rate for each client count in turn: latency against clients.

    The offered messages per second stay the same, so deliveries grow with the
    clients (20 msg/s: 2,000 deliveries/s at 100 clients, 200,000 at 10,000).
    Each count gets fresh connections on the same server, and its own window.
    """
    notes: list[str] = []
    points: list[dict[str, Any]] = []
    for count in load.client_counts:
        step = dataclasses.replace(load, clients=count)
        rig = Rig(server, step, f"scale {server.spec.label} {count}")
        try:
            await rig.connect()
            window = await rig.window(step.rate, step.warmup, step.duration)
        except RuntimeError as exc:  # the descriptor limit, or a server that gave up
            notes.append(f"{count} clients: {exc}")
            break
        finally:
            await rig.close()
        points.append({"clients": count, **{k: window.get(k) for k in SCALE_KEYS}})
        _saturation_notes(window, notes, f"{count} clients: ")
    metrics: dict[str, Any] = {}
    for key in ("p50_ms", "p99_ms", "delivery_ratio", "server_cpu_pct"):
        for point in points:
            metrics[f"{key}_at_{point['clients']}"] = point[key]
    params = _params(load, "client_counts", "senders", "size", "rate", "duration", "warmup",
                     "sample_every")
    result = Result("scale", server.spec.label, params, metrics, notes)
    result.params["point_detail"] = points
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
    notes: list[str] = []
    started = time.monotonic()
    try:
        await rig.connect()
        stepping = await step_up(rig, load, started, notes)
        order = rig.order_report()
    finally:
        await rig.close()
    metrics = stepping.metrics()
    metrics["seconds"] = round(time.monotonic() - started, 1)
    metrics.update({k: order[k] for k in ("lost", "duplicated", "reordered")})
    _busy_note(metrics, notes)
    notes += stepping.notes(load)
    params = _params(load, "clients", "senders", "size", "start_rate", "step_seconds",
                     "bisect", "sample_every")
    result = Result("fanout-max", server.spec.label, params, metrics, notes)
    result.params["step_detail"] = stepping.detail()
    return result


@dataclasses.dataclass
class Stepping:
    """What :func:`step_up` found: every step, the best passing one, the bounds."""

    steps: list[dict[str, Any]]
    best: dict[str, Any] | None
    low: float
    high: float | None

    def metrics(self) -> dict[str, Any]:
        best = self.best
        metrics: dict[str, Any] = {
            "sustainable_msg_per_s": self.low or None,
            "sustainable_deliveries_per_s": best["delivered_per_s"] if best else None,
            "first_failing_msg_per_s": self.high,
        }
        if best is not None:
            for key in ("p50_ms", "p99_ms", "delivery_ratio", "server_cpu_pct",
                        "broker_cpu_pct", "tool_cpu_pct"):
                if key in best:
                    metrics[f"at_best_{key}"] = best[key]
        metrics["steps"] = len(self.steps)
        metrics["other_cpu_pct"] = max((s["other_cpu_pct"] for s in self.steps), default=0.0)
        return metrics

    def notes(self, load: Load) -> list[str]:
        notes = []
        if self.best is None:
            notes.append(f"no step passed, down to {load.start_rate / 16:g} msg/s")
        elif self.high is None:
            notes.append(f"no step failed: the ceiling is above {self.low:g} msg/s "
                         "(stopped by a cap, not by the server)")
        if self.tool_limited():
            notes.append(SATURATED_NOTE)
        busy = [s["rate"] for s in self.steps if s["ok"] and s["tool_cpu_pct"] >= 100 * SATURATED
                and not s["tool_behind"]]
        if busy:
            notes.append("the load tool used 90% of its core or more at "
                         f"{', '.join(f'{r:g}' for r in busy)} msg/s but kept up "
                         "(those steps passed with nothing piling up unread)")
        step_line = ", ".join(
            f"{s['rate']:g}{'' if s['ok'] else '✗'} ({s['delivery_ratio']}, p99 {s['p99_ms']})"
            for s in self.steps
        )
        notes.append(f"steps msg/s (delivery ratio, p99 ms): {step_line}")
        return notes

    def tool_limited(self) -> bool:
        """Whether the tool, not the server, set the bound: behind at the first
        failing step, or at the best passing one (where stepping then stopped)."""
        return any(s["tool_behind"] for s in self.steps if s["rate"] == self.high) or (
            self.best is not None and self.best["tool_behind"]
        )

    def detail(self) -> list[dict[str, Any]]:
        keys = ("rate", "ok", "delivered_per_s", "delivery_ratio", "p99_ms", "tool_cpu_pct",
                "tool_unread_kib_per_conn", "server_cpu_pct", "broker_cpu_pct",
                "closed_by_server")
        return [{k: s[k] for k in keys if k in s} for s in self.steps]


async def step_up(rig: Rig, load: Load, started: float, notes: list[str]) -> Stepping:
    """fanout-max's stepping on a connected rig, until a bound, a step cap or the time cap."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
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
            if m["tool_behind"]:
                # Past here the steps would measure the load tool, not the server.
                # (High tool CPU alone is no reason to stop: the server batches
                # frames at higher rates, so the tool's cost per delivery falls;
                # a step that passes shows both kept up.)
                notes.append(f"stopped: load tool behind at {rate:g} msg/s "
                             f"({m['tool_unread_kib_per_conn']} KiB unread per "
                             "connection), the server's ceiling is higher")
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
    return Stepping(steps, best, low, high)


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
            "refused_connections": sum(result.refused.values()),
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
        if result.errors or result.refused:
            notes.append(f"refused {dict(result.refused)}, errors {dict(result.errors)}")
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
    # Offset by one so the slow ones are not senders (nor sampled: see connect_many).
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
        # The slow ones learn of an eviction only by reading again (the close
        # frame, EOF or reset waits behind what they left unread): give them
        # up to 3 s to, or they would count as still open.
        settle = time.monotonic() + 3.0
        while time.monotonic() < settle and not all(
            c.closed or c.close_code is not None for c in slow_clients
        ):
            await asyncio.sleep(0.05)
        order = rig.order_report()
        slow_closed = sum(1 for c in slow_clients if c.closed or c.close_code is not None)
        others_closed = sum(1 for c in rig.clients if c.index not in slow_ids
                            and (c.closed or c.close_code is not None))
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
    metrics["others_closed"] = others_closed
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


WORKERS_SHARED_NOTE = (
    "{n} workers, Redis and the load tool share the machine's {cores} cores (no pinning); "
    "the 1-worker run is pinned as usual (server one core, tool the other). On two cores "
    "the 2-worker run is not a scaling measurement: tool, workers and Redis compete."
)


async def _worker_phase(
    server: ServerProcess, load: Load, notes: list[str]
) -> dict[str, Any]:
    """One configuration: fixed-rate fan-out, then fanout-max's stepping, one set of clients."""
    rig = Rig(server, load, f"workers {server.spec.label}")
    started = time.monotonic()
    out: dict[str, Any] = {}
    try:
        await rig.connect()
        spread = server.connections_per_worker()
        fixed = await rig.window(load.rate, load.warmup, load.duration, phase="fixed rate")
        step_notes: list[str] = []
        stepping = await step_up(rig, load, time.monotonic(), step_notes)
        order = rig.order_report()
        if server.alive():
            out["metrics_scrape"] = server.scrape_metrics()
    finally:
        await rig.close()
    out["fixed"] = fixed
    out["stepping"] = stepping
    out["spread"] = spread
    out["order"] = order
    out["seconds"] = round(time.monotonic() - started, 1)
    notes += [f"[{server.spec.label}] {n}" for n in step_notes + stepping.notes(load)]
    return out


def _phase_metrics(prefix: str, phase: dict[str, Any]) -> dict[str, Any]:
    fixed = phase["fixed"]
    stepping: Stepping = phase["stepping"]
    best = stepping.best or {}
    m: dict[str, Any] = {
        f"{prefix}_fixed_delivered_per_s": fixed["delivered_per_s"],
        f"{prefix}_fixed_delivery_ratio": fixed["delivery_ratio"],
        f"{prefix}_fixed_p50_ms": fixed["p50_ms"],
        f"{prefix}_fixed_p99_ms": fixed["p99_ms"],
        f"{prefix}_fixed_server_cpu_pct": fixed["server_cpu_pct"],
        f"{prefix}_sustainable_msg_per_s": stepping.low or None,
        f"{prefix}_sustainable_deliveries_per_s": best.get("delivered_per_s"),
        f"{prefix}_first_failing_msg_per_s": stepping.high,
        f"{prefix}_at_best_p99_ms": best.get("p99_ms"),
        f"{prefix}_at_best_server_cpu_pct": best.get("server_cpu_pct"),
        f"{prefix}_at_best_tool_cpu_pct": best.get("tool_cpu_pct"),
        f"{prefix}_tool_limited": stepping.tool_limited(),
    }
    if "broker_cpu_pct" in fixed:
        m[f"{prefix}_fixed_broker_cpu_pct"] = fixed["broker_cpu_pct"]
        m[f"{prefix}_at_best_broker_cpu_pct"] = best.get("broker_cpu_pct")
    if phase["spread"]:
        m[f"{prefix}_connections_per_worker"] = phase["spread"]
    m[f"{prefix}_lost"] = phase["order"]["lost"]
    m[f"{prefix}_duplicated"] = phase["order"]["duplicated"]
    m[f"{prefix}_reordered"] = phase["order"]["reordered"]
    m[f"{prefix}_other_cpu_pct"] = max(
        [fixed["other_cpu_pct"], *(s["other_cpu_pct"] for s in stepping.steps)])
    m[f"{prefix}_seconds"] = phase["seconds"]
    return m


async def workers(spec: ServerSpec, load: Load, pin: bool = True) -> Result:
    """rawchat on 1 worker (no broker) against N workers joined through a Redis of our own.

    The same fan-out for both: a fixed-rate window, then fanout-max's stepping
    (``max_seconds`` per configuration). The ratio is N workers / 1 worker.
    """
    if spec.name != "rawchat":
        raise RuntimeError("the workers scenario runs rawchat only")
    n = load.workers
    cores = len(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    notes: list[str] = []
    metrics: dict[str, Any] = {}
    single = dataclasses.replace(spec, workers=1, broker=None)
    phases: dict[str, dict[str, Any]] = {}
    server = ServerProcess(single, pin=pin)
    try:
        server.start()
        phases["one"] = await _worker_phase(server, load, notes)
    except (RuntimeError, OSError) as exc:
        notes.append(f"1 worker failed: {exc}\n{server.log_tail()}")
    finally:
        server.stop()
        _server_log_note(server, notes)
    redis = RedisProcess()
    multi: ServerProcess | None = None
    try:
        redis.start()
        multi = ServerProcess(dataclasses.replace(spec, workers=n, broker=redis.url),
                              pin=False, redis=redis)
        multi.start(timeout=30.0)
        phases["many"] = await _worker_phase(multi, load, notes)
        redis_rss = redis.rss_bytes()
    except (RuntimeError, OSError) as exc:
        tail = multi.log_tail() if multi is not None else redis.log_tail()
        notes.append(f"{n} workers failed: {exc}\n{tail}")
        redis_rss = 0
    finally:
        if multi is not None:
            multi.stop()
            _server_log_note(multi, notes)
        redis.stop()
    if "one" in phases:
        metrics.update(_phase_metrics("w1", phases["one"]))
    if "many" in phases:
        metrics.update(_phase_metrics(f"w{n}", phases["many"]))
        metrics["redis_rss_mb"] = round(redis_rss / 2**20, 1)
        scrape = phases["many"].get("metrics_scrape") or {}
        if scrape:
            metrics["broker_outages_one_worker"] = scrape.get("rawchat_broker_outages_total")
    one_rate = metrics.get("w1_sustainable_deliveries_per_s")
    many_rate = metrics.get(f"w{n}_sustainable_deliveries_per_s")
    metrics[f"ratio_sustainable_w{n}_over_w1"] = (
        round(many_rate / one_rate, 3) if one_rate and many_rate else None)
    one_fixed = metrics.get("w1_fixed_delivered_per_s")
    many_fixed = metrics.get(f"w{n}_fixed_delivered_per_s")
    metrics[f"ratio_fixed_w{n}_over_w1"] = (
        round(many_fixed / one_fixed, 3) if one_fixed and many_fixed else None)
    notes.insert(0, WORKERS_SHARED_NOTE.format(n=n, cores=cores))
    for key in ("w1_other_cpu_pct", f"w{n}_other_cpu_pct"):
        if (metrics.get(key) or 0) >= BUSY_MACHINE_PCT:
            notes.append(f"{key} = {metrics[key]}%: other processes were busy, the numbers "
                         "are not reliable")
    for key in ("w1_tool_limited", f"w{n}_tool_limited"):
        if metrics.get(key):
            notes.append(f"{key}: {SATURATED_NOTE}")
    params = _params(load, "clients", "senders", "size", "rate", "duration", "warmup",
                     "start_rate", "step_seconds", "bisect", "max_seconds", "sample_every",
                     "workers")
    params["broker"] = "redis-server (own, loopback, no persistence)"
    params["pinned"] = {"w1": pin, f"w{n}": False}
    result = Result("workers", spec.label, params, metrics, notes)
    if "one" in phases:
        result.params["w1_step_detail"] = phases["one"]["stepping"].detail()
    if "many" in phases:
        result.params[f"w{n}_step_detail"] = phases["many"]["stepping"].detail()
    return result


def _server_log_note(server: ServerProcess, notes: list[str]) -> None:
    tracebacks = server.log_count("Traceback")
    if tracebacks:
        notes.append(f"{tracebacks} tracebacks in the server log {server.log_path}")
    else:
        server.remove_log()


SCENARIOS: dict[str, Scenario] = {
    "fanout": fanout,
    "fanout-max": fanout_max,
    "big": big,
    "idle": idle,
    "connect": connect,
    "overload": overload,
    "slow": slow,
    "scale": scale,
    "abuse": abuse,  # scenarios in modules of their own
    "slow-room": slow_room,
}

#: Scenarios that start their own servers: ``python -m benchmarks NAME``, not in --compare.
SELF_MANAGED: dict[str, Callable[[ServerSpec, Load, bool], Awaitable[Result]]] = {
    "workers": workers,
    **CHECKS,  # the chat checks of benchmarks.chat_checks
}

#: Scenario defaults that differ from :class:`Load`'s.
DEFAULTS: dict[str, dict[str, Any]] = {
    "fanout": {},
    "fanout-max": {},
    "big": {"clients": 100, "size": 16 * 1024, "rate": 500.0},
    "idle": {"clients": 10_000},
    "connect": {"clients": 10_000},
    # The tool's sockets get fixed 16 KiB buffers, as a client that honours
    # back-pressure would: autotuned, a loopback sender's kernel buffer grows
    # to megabytes the server never asked for, all of it timed as latency.
    "overload": {"warmup": 0.0, "socket_buffer": 16 * 1024},
    # Below every server's sustainable rate, so only the stalled clients differ;
    # 4 KiB messages build a backlog of 200 KB/s for each client that stops.
    "slow": {"rate": 50.0, "size": 4096},
    "scale": {},
    "abuse": {},
    "slow-room": {"clients": 4, "senders": 1, "size": 16 * 1024, "rcvbuf": 16 * 1024,
                  "sample_every": 1, "warmup": 0.0},
    # Per configuration: fixed-rate window, then at most a minute of stepping.
    "workers": {"max_seconds": 60.0},
    "plain-burst": {"clients": 50, "burst": 20},
    "v1-burst": {"burst": 120},
    # 19 messages of 60 KB (issue 15's lobby), then 5 joiners one after another.
    "history-join": {"clients": 5, "burst": 19, "size": 60_000},
    # duration: how long to wait for the last joined once everyone is connected.
    "v1-join": {"clients": 10_000, "duration": 20.0},
}


def load_for(scenario: str, **overrides: Any) -> Load:
    values = {**DEFAULTS[scenario], **{k: v for k, v in overrides.items() if v is not None}}
    return dataclasses.replace(Load(), **values)
