"""Results: what one run measured, printed as tables and appended as JSON lines."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FILE = RESULTS_DIR / "results.jsonl"



@dataclasses.dataclass
class Result:
    scenario: str
    server: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.time)

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))
        record["host"] = {"python": platform.python_version(), "machine": platform.machine()}
        record["commit"] = _git_commit()
        return json.dumps(record, sort_keys=False)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=RESULTS_DIR.parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def append(result: Result, path: Path = RESULTS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(result.to_json() + "\n")


def load(path: Path = RESULTS_FILE) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def last_metric(scenario: str, server: str, metric: str, path: Path = RESULTS_FILE) -> Any:
    for record in reversed(load(path)):
        if record.get("scenario") == scenario and record.get("server") == server:
            value = record.get("metrics", {}).get(metric)
            if value is not None:
                return value
    return None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def print_result(result: Result) -> None:
    print(f"\n== {result.scenario} on {result.server} ==")
    params = ", ".join(f"{k}={fmt(v)}" for k, v in result.params.items())
    print(f"   {params}")
    rows = [[name, fmt(value)] for name, value in result.metrics.items()]
    print(table(rows, ["metric", "value"]))
    for note in result.notes:
        print(f"note: {note}")


def _ratio(ours: Any, theirs: Any) -> str:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ""
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float):
        return ""
    if theirs == 0 or math.isnan(theirs) or math.isnan(ours):
        return ""
    return f"{ours / theirs:.2f}"


def medians(results: Sequence[Result]) -> list[Result]:
    """One result per server: the median of each numeric metric over its rounds.

    Latency tails swing by 2x between runs on a small machine; the median of
    alternating rounds is what a ratio between servers can be trusted on.
    """
    by_server: dict[str, list[Result]] = {}
    for r in results:
        by_server.setdefault(r.server, []).append(r)
    merged = []
    for server, rounds in by_server.items():
        if len(rounds) == 1:
            merged.append(rounds[0])
            continue
        metrics: dict[str, Any] = {}
        for name in rounds[0].metrics:
            values = [r.metrics.get(name) for r in rounds]
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            whole = len(numbers) == len(values)
            metrics[name] = statistics.median(numbers) if whole else values[-1]
        notes = [f"median of {len(rounds)} rounds"]
        notes += sorted({n for r in rounds for n in r.notes})
        merged.append(Result(rounds[0].scenario, server, rounds[0].params, metrics, notes))
    return merged


def print_comparison(scenario: str, results: Sequence[Result]) -> None:
    """One table per scenario: a column per server, then rawchat/peer ratios."""
    if not results:
        return
    servers = [r.server for r in results]
    ours = next((r for r in results if r.server.startswith("rawchat")), None)
    peers = [r for r in results if r is not ours]
    header = ["metric", *servers]
    if ours is not None:
        header += [f"{ours.server}/{p.server}" for p in peers]
    names: list[str] = []
    for r in results:
        names += [n for n in r.metrics if n not in names]
    rows = []
    for name in names:
        row = [name, *(fmt(r.metrics.get(name)) for r in results)]
        if ours is not None:
            row += [_ratio(ours.metrics.get(name), p.metrics.get(name)) for p in peers]
        rows.append(row)
    print(f"\n==== {scenario}: {' vs '.join(servers)} ====")
    print(table(rows, header))
    if ours is not None:
        print("(ratios: above 1 is better for rate metrics; below 1 is better for "
              "latency, CPU and memory)")
    for r in results:
        for note in r.notes:
            print(f"note [{r.server}]: {note}")
