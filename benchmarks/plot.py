"""Charts from benchmarks/results/results.jsonl: ``python -m benchmarks.plot``.

Uses the latest result of each (scenario, server) pair under the load most
servers of that scenario ran with, and writes PNGs next to the results file:

* ``latency.png``: p50/p90/p99 per server for fanout, big, slow and overload;
* ``deliveries.png``: deliveries per second per server (fanout, fanout-max,
  overload) and fanout-max's steps, delivered against offered;
* ``clients.png``: p50 and p99 against the number of clients (``scale``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_FILE, load

LATENCY_PANELS = [
    ("fanout", "fanout", ""),
    ("big", "big (16 KiB)", ""),
    ("slow", "slow: others, 1% stopped", "slow_"),
    ("overload", "overload", ""),
]
PERCENTILES = ["p50", "p90", "p99"]


#: Parameters that differ between servers of one comparison, or only describe a run.
_NOT_COMPARED = {"base_rate", "pinned", "rawchat_ref", "step_detail", "point_detail"}


def _load_key(record: dict[str, Any]) -> str:
    params = {k: v for k, v in record.get("params", {}).items()
              if k not in _NOT_COMPARED and not k.endswith("step_detail")}
    return json.dumps(params, sort_keys=True, default=str)


def latest(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per scenario, the latest result of each server under one and the same load.

    That load is the one the most servers were run with (the latest such on a
    tie), so a one-off run of a single server at another rate (e.g. ``fanout
    --rate 320``) doesn't stand beside the others' default runs.
    """
    groups: dict[str, dict[str, dict[tuple[str, str], dict[str, Any]]]] = {}
    order: dict[tuple[str, str], int] = {}
    for i, record in enumerate(records):
        scenario = record["scenario"]
        key = _load_key(record)
        groups.setdefault(scenario, {}).setdefault(key, {})[(scenario, record["server"])] = record
        order[(scenario, key)] = i
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for scenario, by_load in groups.items():
        best = max(by_load, key=lambda k: (len(by_load[k]), order[(scenario, k)]))
        found.update(by_load[best])
    return found


def servers_of(found: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    names = sorted({server for _, server in found})
    # rawchat first, so it has the same colour in every chart.
    return sorted(names, key=lambda n: (not n.startswith("rawchat"), n))


def plot(path: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = latest(load(path))
    if not found:
        raise SystemExit(f"no results in {path}")
    servers = servers_of(found)
    colours = {s: f"C{i}" for i, s in enumerate(servers)}
    written = []

    panels = [p for p in LATENCY_PANELS if any((p[0], s) in found for s in servers)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
        for ax, (scenario, title, prefix) in zip(axes[0], panels, strict=True):
            width = 0.8 / len(servers)
            for i, server in enumerate(servers):
                metrics = found.get((scenario, server), {}).get("metrics", {})
                values = [metrics.get(f"{prefix}{p}_ms") or 0 for p in PERCENTILES]
                xs = [x + i * width for x in range(len(PERCENTILES))]
                ax.bar(xs, values, width, label=server, color=colours[server])
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(PERCENTILES))], PERCENTILES)
            ax.set_yscale("log")
            ax.set_title(title)
            ax.set_ylabel("latency, ms (log)")
        axes[0][0].legend()
        fig.suptitle("End-to-end latency on sampled receivers")
        fig.tight_layout()
        target = out_dir / "latency.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)

    fig, (bars, steps) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [
        ("fanout", "delivered_per_s", "fanout"),
        ("fanout-max", "sustainable_deliveries_per_s", "fanout-max\nsustainable"),
        ("overload", "delivered_per_s", "overload"),
    ]
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        values = [
            (found.get((sc, server), {}).get("metrics", {}).get(key) or 0) for sc, key, _ in labels
        ]
        bars.bar([x + i * width for x in range(len(labels))], values, width, label=server,
                 color=colours[server])
        record = found.get(("fanout-max", server))
        if record:
            detail = sorted(record["params"].get("step_detail", []), key=lambda s: s["rate"])
            clients = record["params"].get("clients", 1)
            steps.plot([s["rate"] * clients for s in detail],
                       [s["delivered_per_s"] for s in detail], "o-", label=server,
                       color=colours[server])
    bars.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], [t for *_, t in labels])
    bars.set_yscale("log")
    bars.set_ylabel("deliveries per second (log)")
    bars.set_title("Deliveries per second")
    bars.legend()
    steps.set_xscale("log")
    steps.set_yscale("log")
    steps.set_xlabel("offered deliveries/s")
    steps.set_ylabel("delivered/s")
    steps.set_title("fanout-max steps")
    if steps.has_data():
        steps.legend()
    fig.tight_layout()
    target = out_dir / "deliveries.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    written.append(target)

    scaled = [s for s in servers if found.get(("scale", s), {}).get("params", {}).get(
        "point_detail")]
    if scaled:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        rate = None
        any_behind = False
        for server in scaled:
            record = found[("scale", server)]
            rate = record["params"].get("rate")
            points = sorted(record["params"]["point_detail"], key=lambda p: p["clients"])
            xs = [p["clients"] for p in points]
            for key, style in (("p99_ms", "o-"), ("p50_ms", "o--")):
                ax.plot(xs, [p[key] for p in points], style, color=colours[server],
                        label=f"{server} {key[:3]}")
            # Where a server fell behind, its latency is a queue that grows.
            behind = [p for p in points if (p.get("delivery_ratio") or 0) < 0.99]
            ax.plot([p["clients"] for p in behind], [p["p99_ms"] for p in behind], "kx",
                    markersize=11, label="_behind")
            any_behind = any_behind or bool(behind)
        if any_behind:
            ax.plot([], [], "kx", markersize=11, label="delivered < 99% of it")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients in the room")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(f"Latency against clients, {rate:g} messages/s to all")
        ax.legend(fontsize="small")
        ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        target = out_dir / "clients.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    parser.add_argument("--out", type=Path, default=None, help="directory for the PNGs")
    args = parser.parse_args(argv)
    out_dir = args.out or args.results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for target in plot(args.results, out_dir):
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
