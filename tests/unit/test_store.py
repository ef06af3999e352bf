"""The SQLite history store: what survives a close, a reopen and a kill -9."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rawchat import store as store_module
from rawchat.store import DATABASE, SCHEMA_VERSION, Retention, Store, Stored, StoreError

NO_LIMIT = Retention()


def reopened(path: Path, retention: Retention = NO_LIMIT) -> Store:
    return Store(path, retention)


def fill(store: Store, room: str, ids: range, ts: float = 1.0) -> None:
    for id in ids:
        store.append(room, id, ts, "ann", f"m{id}")


def test_messages_epoch_and_reservation_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = Store(path, NO_LIMIT)
    epoch = store.epoch
    fill(store, "lobby", range(1, 4))
    fill(store, "dev", range(7, 9))
    store.reserve(1000)
    store.close()

    again = reopened(path)
    try:
        assert again.epoch == epoch
        assert again.reserved == 1000
        assert again.last_ids() == {"lobby": 3, "dev": 8}
        assert again.newest("lobby", 10) == [
            Stored(1, 1.0, "ann", "m1"),
            Stored(2, 1.0, "ann", "m2"),
            Stored(3, 1.0, "ann", "m3"),
        ]
    finally:
        again.close()


def test_reserve_never_moves_backwards(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", NO_LIMIT)
    store.reserve(500)
    store.reserve(200)
    store.close()
    assert reopened(tmp_path / "data").reserved == 500


def test_pages_by_id_with_gaps(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", NO_LIMIT)
    ids = [*range(1, 41), 51, 52, 60]
    for id in ids:
        store.append("lobby", id, 0.0, "bob", str(id))
    store.close()
    store = reopened(tmp_path / "data")
    try:
        assert [s.id for s in store.before("lobby", 51, 3)] == [38, 39, 40]
        assert [s.id for s in store.before("lobby", None, 2)] == [52, 60]
        assert [s.id for s in store.after("lobby", 45, 10)] == [51, 52, 60]
        assert [s.id for s in store.after("lobby", 60, 10)] == []
        assert store.first_id("lobby") == 1
        assert store.first_id("nowhere") is None
    finally:
        store.close()


def test_retention_by_count_keeps_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", Retention(count=5))
    fill(store, "lobby", range(1, 21))
    fill(store, "dev", range(1, 3))
    store.close()
    store = reopened(tmp_path / "data", Retention(count=5))
    try:
        assert [s.id for s in store.newest("lobby", 100)] == [16, 17, 18, 19, 20]
        assert [s.id for s in store.newest("dev", 100)] == [1, 2]
    finally:
        store.close()


def test_retention_by_bytes_keeps_what_fits_and_always_the_newest(tmp_path: Path) -> None:
    retention = Retention(bytes=3 * (64 + 3 + 1000))
    store = Store(tmp_path / "data", retention)
    for id in range(1, 11):
        store.append("lobby", id, 0.0, "ann", "x" * 1000)
    store.append("huge", 1, 0.0, "ann", "y" * 10_000)
    store.close()
    store = reopened(tmp_path / "data", retention)
    try:
        assert [s.id for s in store.newest("lobby", 100)] == [8, 9, 10]
        assert [s.id for s in store.newest("huge", 100)] == [1]
    finally:
        store.close()


def test_retention_by_age(tmp_path: Path) -> None:
    retention = Retention(seconds=3600)
    store = Store(tmp_path / "data", retention)
    now = time.time()
    store.append("lobby", 1, now - 7200, "ann", "old")
    store.append("lobby", 2, now, "ann", "new")
    store.close()
    store = reopened(tmp_path / "data", retention)
    try:
        assert [s.text for s in store.newest("lobby", 10)] == ["new"]
    finally:
        store.close()


def test_forget_happens_in_order_with_appends(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", Retention(count=100))
    fill(store, "lobby", range(1, 5))
    store.forget("lobby")
    fill(store, "lobby", range(5, 7))
    store.close()
    store = reopened(tmp_path / "data")
    try:
        assert [s.id for s in store.newest("lobby", 10)] == [5, 6]
    finally:
        store.close()


WRITER = """
import sys, time
from collections.abc import Callable
from pathlib import Path
from rawchat.store import Retention, Store
store = Store(Path(sys.argv[1]), Retention(), window=float(sys.argv[2]))
for id in range(1, 100_000):
    store.append("lobby", id, time.time(), "ann", "x" * 100)
    print(id, time.monotonic(), flush=True)
    time.sleep(0.0005)
"""

#: What the test grants one commit beside the batch window (a loaded CI machine).
COMMIT_ALLOWANCE = 0.2


def test_kill_9_loses_at_most_the_last_window(tmp_path: Path) -> None:
    path = tmp_path / "data"
    window = 0.005
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(window)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    sent: list[tuple[int, float]] = []
    for line in child.stdout:
        id, at = line.split()
        sent.append((int(id), float(at)))
        if len(sent) == 2000:
            break
    child.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    child.wait()
    child.stdout.close()

    store = reopened(path)
    try:
        kept = {s.id for s in store.after("lobby", 0, 200_000)}
    finally:
        store.close()
    must_have = [id for id, at in sent if at < killed - window - COMMIT_ALLOWANCE]
    assert len(must_have) > 1000
    assert [id for id in must_have if id not in kept] == []


def test_a_corrupt_database_is_refused_by_name_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / DATABASE).write_bytes(b"not a database at all, " * 100)
    before = (tmp_path / DATABASE).read_bytes()
    with pytest.raises(StoreError, match=str(tmp_path / DATABASE)):
        Store(tmp_path, NO_LIMIT)
    assert (tmp_path / DATABASE).read_bytes() == before
    # The lock was released with the refusal: the directory opens once the file is gone.
    (tmp_path / DATABASE).unlink()
    Store(tmp_path, NO_LIMIT).close()


def test_a_database_from_a_newer_rawchat_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DATABASE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer rawchat"):
        Store(tmp_path, NO_LIMIT)


def test_a_second_server_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path, NO_LIMIT)
    try:
        with pytest.raises(StoreError, match=f"in use by another rawchat \\(pid {os.getpid()}"):
            Store(tmp_path, NO_LIMIT)
    finally:
        first.close()
    Store(tmp_path, NO_LIMIT).close()


def test_a_full_disk_degrades_then_writes_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite's page limit makes "database or disk is full" on demand, on the writer's connection.
    connections: list[sqlite3.Connection] = []
    connect = store_module._connect

    def limited(path: Path) -> sqlite3.Connection:
        db = connect(path)
        connections.append(db)
        return db

    monkeypatch.setattr(store_module, "_connect", limited)
    monkeypatch.setattr(store_module, "RETRY_INTERVAL", 0.05)
    store = Store(tmp_path, NO_LIMIT)
    store.append("lobby", 1, 0.0, "ann", "fits")
    wait_for(lambda: store.newest("lobby", 10) != [])
    writer = connections[1]
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.CRITICAL, logger="rawchat.store"):
        for id in range(2, 200):
            store.append("lobby", id, 0.0, "ann", "x" * 1000)
        wait_for(lambda: store.failing is not None)
    assert "full" in (store.failing or "")
    assert store.errors >= 1
    assert [s.id for s in store.newest("lobby", 10)] == [1]

    writer.execute("PRAGMA max_page_count = 1000000")
    wait_for(lambda: store.failing is None)
    store.close()
    store = Store(tmp_path, NO_LIMIT)
    try:
        assert [s.id for s in store.after("lobby", 0, 1000)] == list(range(1, 200))
    finally:
        store.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_retention_records_what_it_dropped_and_a_delete_is_not_a_drop(tmp_path: Path) -> None:
    store = Store(tmp_path, Retention(count=3))
    fill(store, "lobby", range(1, 6))
    fill(store, "dev", range(1, 3))
    store.close()
    store = reopened(tmp_path, Retention(count=3))
    try:
        assert (store.dropped("lobby"), store.dropped("dev")) == (2, 0)
        assert store.delete("lobby", 4) is True
        assert store.delete("lobby", 99) is False
    finally:
        store.close()
    store = reopened(tmp_path)
    try:
        assert [s.id for s in store.newest("lobby", 10)] == [3, 5]
        assert store.dropped("lobby") == 2
    finally:
        store.close()


def test_a_first_version_database_is_migrated_and_keeps_its_history(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DATABASE)
    db.executescript(store_module.MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO meta VALUES ('epoch', 'old-epoch')")
    db.execute("INSERT INTO messages VALUES ('lobby', 7, 1.0, 'ann', 'hi', 70)")
    db.commit()
    db.close()
    store = Store(tmp_path, NO_LIMIT)
    try:
        assert store.epoch == "old-epoch"
        assert store.newest("lobby", 10) == [Stored(7, 1.0, "ann", "hi")]
        assert store.dropped("lobby") == 0
    finally:
        store.close()
    check = sqlite3.connect(tmp_path / DATABASE)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    check.close()
