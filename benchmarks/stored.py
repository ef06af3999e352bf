"""History on disk: persisted ingest, restart time with a full store, the crash-loss window.

``python -m benchmarks.stored [--messages N] [--rooms-history N]`` prints one JSON object:

* ``ingest_one_room`` / ``ingest_1000_rooms``: messages per second through
  ``Archive.record`` (what the fan-out's path calls), counted until the writer has
  committed the last of them (``Store.close`` waits for it); ``*_cpu_us_per_msg``: the
  CPU both threads spent per message (less sensitive to a busy machine than the rate).
* ``restart_*``: a store of 1,000 rooms x ``--rooms-history`` messages, then the time
  ``python -m rawchat --data DIR`` takes to log its listening line, against the same
  with an empty directory; and in-process, the time to open (fill from the store) the
  windows of all 1,000 rooms, which a restarted server spends lazily, room by room,
  as clients come back.
* ``commit_ms_p50`` / ``p99``: how long one batch's commit takes under the one-room
  ingest, which with the batch window bounds what a kill -9 can lose.

Everything runs in a temporary directory, on loopback, bounded in count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rawchat.archive import Archive, Shelf
from rawchat.config import Config
from rawchat.retention import Retention
from rawchat.store import Store

ROOMS = 1000


def ingest(directory: Path, messages: int, rooms: int) -> tuple[float, float]:
    """Messages per second recorded and committed, spread over ``rooms`` rooms, and the
    CPU time (both threads, microseconds) each message cost."""
    archive = Archive(Store(directory, Retention(count=100, bytes=1 << 20)))
    names = [f"room-{n}" for n in range(rooms)]
    ids = [0] * rooms
    text = "x" * 64
    started = time.perf_counter()
    cpu = time.process_time()
    for n in range(messages):
        index = n % rooms
        ids[index] += 1
        archive.record(names[index], ids[index], time.time(), "bench", text)
    archive.close()
    cpu_us = (time.process_time() - cpu) / messages * 1e6
    return messages / (time.perf_counter() - started), cpu_us


def commit_times(directory: Path, messages: int) -> list[float]:
    """Each batch's commit time (ms), timing the writer's transaction from outside."""
    store = Store(directory, Retention(count=100, bytes=1 << 20))
    times: list[float] = []
    write = Store._write

    def timed(*args: object) -> None:
        began = time.perf_counter()
        write(*args)  # type: ignore[arg-type]
        times.append((time.perf_counter() - began) * 1000)

    Store._write = staticmethod(timed)  # type: ignore[assignment]
    try:
        for id in range(1, messages + 1):
            store.append("lobby", id, time.time(), "bench", "x" * 64)
            if id % 50 == 0:
                time.sleep(0.001)  # a steady stream rather than one burst
        store.close()
    finally:
        Store._write = staticmethod(write)  # type: ignore[assignment]
    return times


def fill(directory: Path, per_room: int) -> None:
    store = Store(directory, Retention(count=per_room))
    now = time.time()
    for id in range(1, per_room + 1):
        for room in range(ROOMS):
            store.append(f"room-{room}", id, now, "bench", "x" * 64)
    store.reserve(per_room + 4096)
    store.close()


def time_to_listen(directory: str) -> float:
    """Seconds from starting ``python -m rawchat`` to its listening line."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "rawchat", "--port", "0", "--data", directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "listening on" in line:
                return time.perf_counter() - started
        raise RuntimeError("rawchat exited before listening")
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def open_every_room(directory: Path, per_room: int) -> float:
    """Seconds to make the 1,000 rooms' histories, each filled from the store."""
    config = Config(data=directory, history=per_room)
    archive = Archive.open(config)
    assert archive is not None
    shelf = Shelf(config)
    shelf.archive = archive
    started = time.perf_counter()
    for room in range(ROOMS):
        shelf.make(f"room-{room}", 0)
    elapsed = time.perf_counter() - started
    archive.close()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stored", description=__doc__)
    p.add_argument("--messages", type=int, default=200_000, help="messages per ingest run")
    p.add_argument("--rooms-history", type=int, default=100, help="messages per room, restart")
    p.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    args = p.parse_args()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stored-") as tmp:
        root = Path(tmp)
        for name, rooms in (("ingest_one_room", 1), ("ingest_1000_rooms", ROOMS)):
            runs = [ingest(root / f"{name}-{n}", args.messages, rooms) for n in range(args.repeat)]
            result[name] = round(statistics.median(rate for rate, _ in runs))
            result[f"{name}_cpu_us_per_msg"] = round(statistics.median(us for _, us in runs), 1)
        commits = sorted(commit_times(root / "commits", 20_000))
        result["commit_ms_p50"] = round(commits[len(commits) // 2], 3)
        result["commit_ms_p99"] = round(commits[int(len(commits) * 0.99)], 3)
        full, empty = root / "full", root / "empty"
        fill(full, args.rooms_history)
        result["restart_full_s"] = round(
            statistics.median(time_to_listen(str(full)) for _ in range(args.repeat)), 3
        )
        result["restart_empty_s"] = round(
            statistics.median(time_to_listen(str(empty)) for _ in range(args.repeat)), 3
        )
        opening = [open_every_room(full, args.rooms_history) for _ in range(args.repeat)]
        result["open_1000_rooms_s"] = round(statistics.median(opening), 3)
        result["store_mb"] = round((full / "history.sqlite3").stat().st_size / 2**20, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
