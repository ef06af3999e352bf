"""``python -m benchmarks autobahn``: Autobahn|Testsuite's cases against a server on loopback.

The fuzzing client is kosoku (Autobahn's own case files run by a Python 3
runner; wstest itself is Python 2 only). It lives in its own virtual
environment, ``benchmarks/autobahn/.venv``, installed exactly as
``requirements.txt`` (hashes) says, never in the project's.

rawchat runs twice by default: at its defaults, as users run it (its
handshake limit answers the suite's rapid connections with 429), and with
its limits lifted, to see the protocol alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import venv
from collections import Counter
from pathlib import Path

from benchmarks import report
from benchmarks.servers import ServerProcess, ServerSpec

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
LOCK = HERE / "requirements.txt"
MARKER = VENV / ".installed"

#: Only for the "lifted" run: not how users run rawchat.
RAWCHAT_LIMITS_LIFTED = ("--rate=0", "--handshake-rate=0", "--max-connections=0",
                         "--max-connections-per-ip=0")

#: Run inside the fuzzing client's venv: results as JSON lines on stdout.
RUNNER = """
import asyncio, json, sys
from kosoku import FailureError, run_fuzzingclient
url, include, exclude = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    results = asyncio.run(run_fuzzingclient(url, include, exclude or None))
except FailureError as failure:
    results = failure.results
for r in results:
    print(json.dumps({"case": r.case_id, "passed": r.passed, "behavior": r.behavior.value,
                      "close": r.behavior_close.value}))
"""


def ensure_venv() -> Path:
    """The fuzzing client's Python, installed from the lock when missing or outdated."""
    python = VENV / "bin" / "python"
    if MARKER.exists() and MARKER.stat().st_mtime >= LOCK.stat().st_mtime:
        return python
    print(f"installing the fuzzing client into {VENV}", file=sys.stderr)
    venv.create(VENV, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--require-hashes", "--no-deps", "-r", str(LOCK)], check=True)
    MARKER.touch()
    return python


def case_globs(text: str) -> list[str]:
    """``1-7,10`` -> ``["1.*", ..., "7.*", "10.*"]``; ``9.1.1`` stays a case id."""
    globs: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, dash, high = part.partition("-")
        if dash and low.isdigit() and high.isdigit():
            globs += [f"{n}.*" for n in range(int(low), int(high) + 1)]
        else:
            globs.append(part if "." in part else f"{part}.*")
    return globs


def run_cases(python: Path, spec: ServerSpec, include: list[str], exclude: list[str],
              timeout: float) -> list[dict[str, object]]:
    with ServerProcess(spec) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        out = subprocess.run(
            [str(python), "-c", RUNNER, url, json.dumps(include), json.dumps(exclude)],
            capture_output=True, text=True, timeout=timeout,
        )
        tail = server.log_tail()
    server.remove_log()
    if out.returncode != 0:
        raise RuntimeError(f"fuzzing client failed: {out.stderr[-800:]}\n{tail}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def summary(results: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Passed and failed per section (the case id's first number)."""
    sections: dict[str, Counter[str]] = {}
    for r in results:
        section = str(r["case"]).split(".")[0]
        sections.setdefault(section, Counter())["passed" if r["passed"] else "failed"] += 1
    return {k: {"passed": v["passed"], "failed": v["failed"]}
            for k, v in sorted(sections.items(), key=lambda kv: int(kv[0]))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks autobahn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1-7,10",
                        help="sections or case ids: 1-7,10 (default), 9 (performance), 9.1.1")
    parser.add_argument("--exclude", default="12,13",
                        help="sections or cases left out (default 12,13: compression)")
    parser.add_argument("--server", default="rawchat",
                        help="rawchat, websockets, aiohttp, node-ws, floor (-asyncio)")
    parser.add_argument("--limits", choices=("both", "default", "lifted"), default="both",
                        help="rawchat: at its default limits, with them lifted, or both")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--show-failed", type=int, default=10, help="failed cases listed")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for rawchat, e.g. --server-arg=--max-message=16M")
    parser.add_argument("--no-save", action="store_true",
                        help="don't append the result to benchmarks/results/results.jsonl")
    args = parser.parse_args(argv)
    python = ensure_venv()
    include, exclude = case_globs(args.cases), case_globs(args.exclude)
    runs: list[tuple[str, tuple[str, ...]]] = [("", ())]
    if args.server.startswith("rawchat"):
        runs = [("default limits", ()), ("limits lifted", RAWCHAT_LIMITS_LIFTED)]
        runs = [r for r in runs if args.limits in ("both", r[0].split()[0])]
    status = 0
    for label, extra in runs:
        spec = ServerSpec.parse(args.server, extra + tuple(args.server_arg))
        started = time.time()
        results = run_cases(python, spec, include, exclude, args.timeout)
        failed = [r for r in results if not r["passed"]]
        if not args.no_save:
            report.append(report.Result(
                "autobahn", spec.label,
                {"cases": args.cases, "exclude": args.exclude, "limits": label or None,
                 "server_args": list(spec.extra_args)},
                {"passed": len(results) - len(failed), "failed": len(failed),
                 "sections": summary(results),
                 "failed_cases": [f"{r['case']} {r['behavior']}/{r['close']}" for r in failed]},
                started=started))
        print(f"\n== autobahn {args.cases} on {spec.label} {label}: "
              f"{len(results) - len(failed)} passed, {len(failed)} failed ==")
        for section, counts in summary(results).items():
            print(f"  section {section:>2}: {counts['passed']:4} passed  "
                  f"{counts['failed']:4} failed")
        for r in failed[: args.show_failed]:
            print(f"  failed {r['case']}: {r['behavior']} / close {r['close']}")
        status = status or (1 if failed or not results else 0)
    return status
