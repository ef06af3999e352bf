"""``python -m benchmarks``: run one load scenario, or compare servers on several.

    python -m benchmarks fanout --server rawchat --clients 1000 --rate 20
    python -m benchmarks fanout-max --server websockets
    python -m benchmarks --compare                 # every default scenario, all servers
    python -m benchmarks --compare fanout big --servers rawchat,aiohttp
    python -m benchmarks workers                   # rawchat: 1 worker vs 2 through Redis
    python -m benchmarks autobahn --cases 1-7,10   # Autobahn|Testsuite's cases (kosoku)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.rig import Load
from benchmarks.scenarios import SCENARIOS, SELF_MANAGED, load_for, overload
from benchmarks.servers import (
    SERVER_MODULES,
    ServerProcess,
    ServerSpec,
    eviction_metrics,
    export_rawchat,
    raise_fd_limit,
)

#: What ``--compare`` runs when no scenario is named (``make bench``): sized
#: so the whole comparison of three servers stays under ten minutes on two
#: cores. Overload comes after fanout-max, whose result it multiplies.
COMPARE_DEFAULT = ["fanout", "fanout-max", "big", "idle", "connect", "slow", "overload", "scale"]
COMPARE_OVERRIDES: dict[str, dict[str, Any]] = {
    "fanout-max": {"max_seconds": 50.0, "max_steps": 10},
    "slow": {"duration": 8.0, "warmup": 1.0},
    "overload": {"duration": 6.0},
    "big": {"duration": 6.0},
    "scale": {"duration": 5.0, "warmup": 1.0},
    "idle": {"duration": 6.0},
}
DEFAULT_SERVERS = "rawchat,websockets,aiohttp,node-ws"


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


LOAD_FIELDS: list[tuple[str, Callable[[str], Any], str]] = [
    ("clients", int, "connections to open"),
    ("client_counts", _counts, "scale: client counts, comma-separated (100,1000,3000,10000)"),
    ("senders", int, "how many of them send"),
    ("size", int, "message size in bytes (at least 40)"),
    ("rate", float, "offered messages per second, all senders together"),
    ("duration", float, "measured seconds (idle: seconds held)"),
    ("warmup", float, "seconds of load before measuring"),
    ("sample_every", int, "decode probes on one connection in N, drawn at random (0: none)"),
    ("concurrency", int, "handshakes in flight while connecting"),
    ("start_rate", float, "fanout-max: first step, msg/s"),
    ("step_seconds", float, "fanout-max: seconds per step"),
    ("bisect", int, "fanout-max: bisection steps after the first failure"),
    ("max_steps", int, "fanout-max: step cap"),
    ("max_seconds", float, "fanout-max: time cap"),
    ("factor", float, "overload: multiple of the sustainable rate to offer"),
    ("base_rate", float, "overload: sustainable msg/s (default: last fanout-max result)"),
    ("socket_buffer", int, "SO_RCVBUF/SO_SNDBUF of every tool socket (overload: 16384)"),
    ("slow_share", float, "slow: share of clients that stop reading"),
    ("rcvbuf", int, "slow: SO_RCVBUF of the clients that stop reading"),
    ("workers", int, "workers: rawchat processes joined through Redis (against 1)"),
    ("burst", int, "plain-burst, v1-burst, history-join: messages sent in one write"),
]
#: rawchat counters read from /metrics after a run (not after idle or connect).
SCRAPED = {
    "rawchat_senders_held_total": "server_senders_held_total",
    "rawchat_write_buffer_high_water_bytes": "server_buffer_high_water_bytes",
    "rawchat_messages_in_total": "server_messages_in",
    "rawchat_messages_out_total": "server_frames_out",
}


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # Given both before and after the scenario name; a sub-command's own
    # default must not overwrite a value given before it.
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--no-pin", action="store_true", **d,
                        help="don't pin server and load tool to separate cores")
    parser.add_argument("--no-status", action="store_true", **d, help="no live status line")
    parser.add_argument("--status-lines", action="store_true", **d,
                        help="print the status as lines every half second, also to a file")
    parser.add_argument("--no-save", action="store_true", **d,
                        help="don't append results to the JSON lines file")
    parser.add_argument("--results", type=Path, **(d or {"default": report.RESULTS_FILE}),
                        help="JSON lines file results are appended to")
    parser.add_argument("--sources", type=int, **(d or {"default": 8}),
                        help="loopback source addresses to spread connections over "
                             "(127.0.0.2 onwards)")
    parser.add_argument("--server-arg", action="append", **(d or {"default": []}), metavar="ARG",
                        help="extra argument for rawchat, e.g. --server-arg=--max-buffer=65536")
    parser.add_argument("--rawchat-ref", metavar="COMMIT", **(d or {"default": None}),
                        help="benchmark rawchat as of this commit (e.g. HEAD) instead of "
                             "the work tree")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        allow_abbrev=False,
        description="WebSocket load generator for rawchat and its peers",
    )
    parser.add_argument("--compare", nargs="*", metavar="SCENARIO",
                        help="run these scenarios (default: all but 19k idle) on every "
                             "server, alternating, and print rawchat/peer ratios")
    parser.add_argument("--servers", default=DEFAULT_SERVERS,
                        help=f"servers for --compare (default {DEFAULT_SERVERS}; "
                             "append -asyncio for the plain asyncio loop)")
    parser.add_argument("--repeat", type=int, default=1, help="--compare rounds per scenario")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    for name in [*SCENARIOS, *SELF_MANAGED]:
        doc = (SCENARIOS.get(name) or SELF_MANAGED[name]).__doc__ or name
        p = sub.add_parser(name, help=doc.splitlines()[0])
        p.add_argument("--server", default="rawchat",
                       help=f"{', '.join(SERVER_MODULES)}; -asyncio suffix for no uvloop")
        _common(p, top=False)
        for field, kind, text in LOAD_FIELDS:
            p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, help=text)
        if name == "idle":
            p.add_argument("--max", action="store_true",
                           help="19,000 connections (as many as RLIMIT_NOFILE allows)")
    return parser


def load_from_args(scenario: str, args: argparse.Namespace) -> Load:
    overrides = {field: getattr(args, field, None) for field, _, _ in LOAD_FIELDS}
    if getattr(args, "max", False):
        overrides["clients"] = 19_000
    sources = tuple(f"127.0.0.{i}" for i in range(2, 2 + max(1, min(args.sources, 250))))
    return load_for(scenario, sources=sources, status=not args.no_status,
                    status_lines=args.status_lines, **overrides)


async def run_one(
    scenario: str, spec: ServerSpec, load: Load, args: argparse.Namespace,
    known: dict[str, float], verbose: bool = True,
) -> report.Result | None:
    if scenario in SELF_MANAGED:
        return await run_self_managed(scenario, spec, load, args)
    server = ServerProcess(spec, pin=not args.no_pin)
    started = time.monotonic()
    try:
        server.start()
        if scenario == "overload":
            result = await overload(server, load, known)
        else:
            result = await SCENARIOS[scenario](server, load)
        if scenario not in ("idle", "connect"):
            add_scraped(server, result)
        if not server.alive():
            result.notes.append(f"server exited during the run:\n{server.log_tail()}")
        tracebacks = server.log_count("Traceback")
        if tracebacks:
            result.notes.append(f"{tracebacks} tracebacks in the server log {server.log_path}")
        if server.pinned_to:
            result.params["pinned"] = True
        if args.rawchat_ref and spec.name == "rawchat":
            result.params["rawchat_ref"] = args.rawchat_ref
    except (RuntimeError, OSError) as exc:
        print(f"\n{scenario} on {spec.label} failed: {exc}", file=sys.stderr)
        print(f"server log: {server.log_path}\n{server.log_tail()}", file=sys.stderr)
        return None
    finally:
        server.stop()
    if not any("server log" in n for n in result.notes):
        server.remove_log()
    if scenario == "fanout-max" and result.metrics.get("sustainable_msg_per_s"):
        known[spec.label] = float(result.metrics["sustainable_msg_per_s"])
    if verbose:
        report.print_result(result)
    else:
        print(f"{scenario} on {spec.label}: {time.monotonic() - started:.0f} s", flush=True)
    if not args.no_save:
        report.append(result, args.results)
    return result


def add_scraped(server: ServerProcess, result: report.Result) -> None:
    """rawchat's own counters for the run (one server per run, so they cover just it)."""
    samples = server.scrape_metrics()
    if samples is None:
        return
    for name, key in SCRAPED.items():
        if name in samples:
            result.metrics[key] = int(samples[name])
    if "server_evictions" not in result.metrics:  # a run that read them itself knows better
        result.metrics.update(eviction_metrics(samples))


async def run_self_managed(
    scenario: str, spec: ServerSpec, load: Load, args: argparse.Namespace
) -> report.Result | None:
    try:
        result = await SELF_MANAGED[scenario](spec, load, not args.no_pin)
    except (RuntimeError, OSError) as exc:
        print(f"\n{scenario} on {spec.label} failed: {exc}", file=sys.stderr)
        return None
    if args.rawchat_ref:
        result.params["rawchat_ref"] = args.rawchat_ref
    report.print_result(result)
    if not args.no_save:
        report.append(result, args.results)
    return result


async def compare(args: argparse.Namespace) -> int:
    scenarios = args.compare or COMPARE_DEFAULT
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios for --compare: {', '.join(unknown)} "
              f"(run {', '.join(SELF_MANAGED)} on its own)", file=sys.stderr)
        return 2
    extra = tuple(args.server_arg)
    tree = rawchat_tree(args)
    specs = [
        ServerSpec.parse(s.strip(), extra, tree) for s in args.servers.split(",") if s.strip()
    ]
    known: dict[str, float] = {}
    started = time.monotonic()
    for scenario in scenarios:
        load = load_from_args(scenario, args)
        load = load_for(scenario, **{**vars_of(load), **COMPARE_OVERRIDES.get(scenario, {})})
        results = []
        for round_no in range(args.repeat):
            # Alternate the order between rounds so drift (heat, other work on
            # the box) doesn't always favour the same server.
            order = specs if round_no % 2 == 0 else specs[::-1]
            for spec in order:
                result = await run_one(scenario, spec, load, args, known, verbose=False)
                if result is not None:
                    results.append(result)
        report.print_comparison(scenario, report.medians(results))
    print(f"\ncompare finished in {time.monotonic() - started:.0f} s")
    return 0


def rawchat_tree(args: argparse.Namespace) -> Path | None:
    if not args.rawchat_ref:
        return None
    tree = export_rawchat(args.rawchat_ref)
    print(f"rawchat from {args.rawchat_ref}, copied to {tree}", file=sys.stderr)
    return tree


def vars_of(load: Load) -> dict[str, Any]:
    return {f: getattr(load, f) for f in load.__dataclass_fields__}


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    limit = raise_fd_limit()
    print(f"RLIMIT_NOFILE raised to {limit}", file=sys.stderr)
    if args.compare is not None:
        return await compare(args)
    spec = ServerSpec.parse(args.server, tuple(args.server_arg), rawchat_tree(args))
    result = await run_one(args.scenario, spec, load_from_args(args.scenario, args), args, {})
    return 0 if result is not None else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["autobahn"]:  # its own command line: see benchmarks/autobahn
        from benchmarks import autobahn

        return autobahn.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.compare is None and args.scenario is None:
        build_parser().print_help()
        return 2
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    try:
        return uvloop.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
