"""``abuse``: honest fan-out beside a flooder and a connection churner from one address.

The honest load is fanout's (1,000 clients, 20 msg/s in one room). It is
measured twice on the same connections: first alone, then while
``benchmarks.abusers`` (a process of its own) floods from one connection and
opens and resets connections in a loop, both from one other address.

Honest delivery is counted on the sampled connections from per-sender
sequence numbers: the flood's messages reach every client too (one room), so
the byte counts of the other connections hold flood frames as well.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from benchmarks.report import Result
from benchmarks.rig import Load, Rig
from benchmarks.servers import ServerProcess

#: The abusers' one address: outside the honest clients' 127.0.0.2-251.
ABUSER_SOURCE = "127.0.1.1"
#: Seconds the abusers run before the measured window opens.
ABUSE_WARMUP = 1.0
#: Targets printed beside the results.
TARGET_RATIO = 1.0
TARGET_P99_FACTOR = 1.5
TARGET_RSS_GROWTH_MB = 64.0


def honest_tally(rig: Rig) -> tuple[int, int]:
    """(expected, received) honest messages over the sampled connections, closed ones
    included: a client the server closed stops receiving, and that counts as loss."""
    sent = rig.run.sent_per_sender
    expected = got = 0
    for c in rig.clients:
        if not c.sampled or c.late or c.index in rig.excluded or not c.checks:
            continue
        expected += sum(sent)
        got += sum(check.received - check.duplicates for check in c.checks)
    return expected, got


async def settle(rig: Rig, timeout: float = 10.0, stall: float = 2.0) -> None:
    """Wait until the open sampled connections have every honest message, or progress stops."""
    deadline = time.monotonic() + timeout
    last, changed = honest_tally(rig)[1], time.monotonic()
    while time.monotonic() < deadline:
        sent = sum(rig.run.sent_per_sender)
        if all(sum(ch.received - ch.duplicates for ch in c.checks) >= sent
               for c in rig.clients if c.sampled and c.open and c.checks):
            return
        await asyncio.sleep(0.05)
        got = honest_tally(rig)[1]
        if got != last:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > stall:
            return


def _abusers_cpu_pct(found: dict[str, Any]) -> float | None:
    """The abusers' process's CPU over its run, in % of one core."""
    cpu, wall = found.get("cpu_seconds"), found.get("wall_seconds")
    return round(100 * cpu / wall, 1) if cpu is not None and wall else None


def _ratio(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    expected, got = b[0] - a[0], b[1] - a[1]
    return round(got / expected, 4) if expected else None


async def run_abusers(server: ServerProcess, seconds: float, size: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.abusers", "--host", server.host,
        "--port", str(server.port), "--source", ABUSER_SOURCE, "--seconds", f"{seconds:g}",
        "--size", str(size), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"abusers failed ({proc.returncode}): {err.decode()[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def abuse(server: ServerProcess, load: Load) -> Result:
    """Honest fan-out alone, then beside a flooder and a churner from one address."""
    rig = Rig(server, load, f"abuse {server.spec.label}")
    abusers: asyncio.Task[dict[str, Any]] | None = None
    try:
        await rig.connect()
        start = honest_tally(rig)
        quiet = await rig.window(load.rate, load.warmup, load.duration, phase="no abusers")
        await settle(rig)
        mid = honest_tally(rig)
        closed_mid = sum(1 for c in rig.clients if c.closed or c.close_code is not None)
        abusers = asyncio.create_task(
            run_abusers(server, ABUSE_WARMUP + load.duration + 0.5, load.size))
        loud = await rig.window(load.rate, ABUSE_WARMUP, load.duration, phase="with abusers")
        found = await abusers
        await settle(rig)
        end = honest_tally(rig)
        closed_end = sum(1 for c in rig.clients if c.closed or c.close_code is not None)
        order = rig.order_report()
    finally:
        if abusers is not None and not abusers.done():
            abusers.cancel()
            await asyncio.gather(abusers, return_exceptions=True)
        await rig.close()
    flood, churn = found.get("flood", {}), found.get("churn", {})
    m: dict[str, Any] = {
        "honest_clients": len(rig.clients),
        "refused_connections": quiet["refused_connections"],
        "sent_msg_per_s": quiet["sent_msg_per_s"],
        "quiet_delivery_ratio": _ratio(start, mid),
        "abused_delivery_ratio": _ratio(mid, end),
        "quiet_p50_ms": quiet["p50_ms"],
        "abused_p50_ms": loud["p50_ms"],
        "quiet_p99_ms": quiet["p99_ms"],
        "abused_p99_ms": loud["p99_ms"],
        "p99_abused_over_quiet": round(loud["p99_ms"] / quiet["p99_ms"], 2)
        if loud["p99_ms"] and quiet["p99_ms"] else None,
        "abused_send_ratio": loud["send_ratio"],
        "honest_closed_by_server": closed_end - closed_mid,
        "honest_close_codes": rig.close_codes(),
        "flood_sent_per_s": flood.get("sent_per_s"),
        "flood_admitted_per_s": flood.get("admitted_per_s"),
        "flood_connections": flood.get("connections"),
        "flood_refused": flood.get("refused"),
        "flood_close_codes": flood.get("close_codes"),
        "churn_handshakes_per_s": churn.get("handshakes_per_s"),
        "churn_attempts_per_s": churn.get("attempts_per_s"),
        "churn_refused": churn.get("refused"),
        "churn_errors": churn.get("errors"),
        "quiet_server_rss_peak_mb": quiet["server_rss_peak_mb"],
        "abused_server_rss_peak_mb": loud["server_rss_peak_mb"],
        "abused_server_rss_growth_mb": round(
            loud["server_rss_peak_mb"] - quiet["server_rss_peak_mb"], 1),
        "quiet_server_cpu_pct": quiet["server_cpu_pct"],
        "abused_server_cpu_pct": loud["server_cpu_pct"],
        "tool_cpu_pct": max(quiet["tool_cpu_pct"], loud["tool_cpu_pct"]),
        "flood_frames_at_sampled": order["unexpected_frames"],
        "abusers_cpu_pct": _abusers_cpu_pct(found),
        # The abusers' own process is not the machine's other work.
        "other_cpu_pct": max(
            quiet["other_cpu_pct"],
            round(max(0.0, loud["other_cpu_pct"] - (_abusers_cpu_pct(found) or 0.0)), 1),
        ),
    }
    notes = target_notes(m)
    if m["other_cpu_pct"] >= 20:
        notes.append(f"other processes used {m['other_cpu_pct']:.0f}% of a core: "
                     "the numbers are not reliable")
    params = {k: getattr(load, k) for k in ("clients", "senders", "size", "rate", "duration",
                                            "warmup", "sample_every")}
    params["abuser_source"] = ABUSER_SOURCE
    return Result("abuse", server.spec.label, params, m, notes)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def target_notes(m: dict[str, Any]) -> list[str]:
    ratio = m["abused_delivery_ratio"]
    factor = m["p99_abused_over_quiet"]
    growth = m["abused_server_rss_growth_mb"]
    return [
        f"target: honest delivery ratio {TARGET_RATIO:g} with abusers: {ratio} "
        f"({_verdict(None if ratio is None else ratio >= TARGET_RATIO)})",
        f"target: honest p99 within {TARGET_P99_FACTOR:g}x of the run without abusers: "
        f"{m['abused_p99_ms']} ms against {m['quiet_p99_ms']} ms, {factor}x "
        f"({_verdict(None if factor is None else factor <= TARGET_P99_FACTOR)})",
        f"target: server RSS bounded (peak at most {TARGET_RSS_GROWTH_MB:g} MB above the "
        f"run without abusers): +{growth} MB ({_verdict(growth <= TARGET_RSS_GROWTH_MB)})",
    ]
