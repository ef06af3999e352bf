"""History on disk: SQLite in WAL mode, written in batches by a thread of its own.

The fan-out never waits for the disk. :meth:`Store.append` puts a message on a
queue and returns; a writer thread takes everything that arrived within
``window`` seconds of the first message and commits it as one transaction. A
process that dies (``kill -9``, a crash) loses at most what was queued and not
yet committed: the messages of the last window, plus the time one commit takes.
WAL mode with ``synchronous=NORMAL`` keeps every committed transaction across a
process crash; a power cut can also lose the last commits before a checkpoint.

Ids are chosen by the chat, per room, and must only grow within an epoch,
restarts included. Since the last window can be lost, the highest id written
is not enough to go on: the chat reserves ids ahead in blocks
(:meth:`Store.reserve`, committed at once), and after a restart every room
starts past the reservation, so an id that a client saw before a crash is never
given to another message. Gaps are normal; clients never assume contiguous ids.

Reads (a page of older messages, what a resuming client missed) are small
indexed queries on the event loop's own connection, which WAL lets run beside
the writer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

from rawchat.retention import Pruner, Retention, size_of

log = logging.getLogger("rawchat.store")

#: The database file inside the data directory, and the lock that keeps it to one process.
DATABASE = "history.sqlite3"
LOCK = "rawchat.lock"

#: The schema this rawchat writes (SQLite's user_version). A database at an older
#: version is brought forward by MIGRATIONS, one step at a time; a newer one is refused.
SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    room TEXT NOT NULL,
    id INTEGER NOT NULL,
    ts REAL NOT NULL,
    nick TEXT NOT NULL,
    text TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE INDEX messages_by_age ON messages (ts);
"""
#: Version 2: the newest id retention dropped from each room, so that a client resuming
#: from before it is told its view is truncated, and one resuming past it is not (ids
#: have gaps: the oldest id kept does not say which ids are gone).
DROPPED = """
CREATE TABLE dropped (room TEXT PRIMARY KEY, through INTEGER NOT NULL) WITHOUT ROWID;
"""
#: Version 3: nicks reserved by token holders (rawchat.identity), kept across restarts.
NICKS = """
CREATE TABLE reserved_nicks (key TEXT PRIMARY KEY) WITHOUT ROWID;
"""
#: version -> the script that takes a database from that version to the next.
MIGRATIONS: dict[int, str] = {0: SCHEMA, 1: DROPPED, 2: NICKS}

#: After a failed write, how long the writer waits before it tries again.
RETRY_INTERVAL = 1.0
#: Messages kept for a retry while the disk refuses writes; older ones are given up.
MAX_PENDING = 100_000


class StoreError(Exception):
    """The data directory cannot be used; the message says why and what to do."""


class Stored(NamedTuple):
    id: int
    ts: float
    nick: str
    text: str


class _Stop:
    """Tells the writer thread to commit what it has and end."""


class _Forget(NamedTuple):
    """Drop a room's history, in order with the messages queued before."""

    room: str


class _Nick(NamedTuple):
    """Reserve a nick key for its token holder."""

    key: str


class _Delete(NamedTuple):
    """Remove one message (a moderator's delete), in order with the messages queued before."""

    room: str
    id: int


_STOP = _Stop()
_Item = tuple[str, int, float, str, str]
_Work = _Item | _Forget | _Delete | _Nick


class Store:
    """One SQLite database of every room's history, its id reservation and the epoch."""

    def __init__(self, directory: Path, retention: Retention, *, window: float = 0.005) -> None:
        self.path = directory / DATABASE
        self.retention = retention
        self.window = window
        #: Why the last write failed, while writes fail (for /healthz); None when healthy.
        self.failing: str | None = None
        #: Batches that failed to commit, and messages given up after failing too long.
        self.errors = 0
        self.lost = 0
        self._lock = _lock(directory)
        try:
            self._reader = _connect(self.path)
            _migrate(self._reader, self.path)
            self.epoch = self._meta("epoch") or self._set_meta("epoch", secrets.token_urlsafe(6))
            #: Ids up to this may have been given to messages: a restart starts past it.
            self.reserved = int(self._meta("reserved") or 0)
        except StoreError:
            os.close(self._lock)
            raise
        except sqlite3.DatabaseError as error:
            os.close(self._lock)
            raise StoreError(f"{self.path} is not a rawchat history database ({error})") from None
        self._queue: queue.SimpleQueue[_Work | _Stop] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="rawchat-store", daemon=True)
        self._writer.start()

    # -- on the event loop ------------------------------------------------------------

    def last_ids(self) -> dict[str, int]:
        """Every stored room and the newest id it holds."""
        rows = self._reader.execute("SELECT room, MAX(id) FROM messages GROUP BY room")
        return {room: last for room, last in rows}

    def append(self, room: str, id: int, ts: float, nick: str, text: str) -> None:
        """Queue one message for the next batch; never blocks."""
        self._queue.put((room, id, ts, nick, text))

    def reserve(self, upto: int) -> None:
        """Record, committed before returning, that ids up to ``upto`` may be used."""
        if upto > self.reserved:
            try:
                self._set_meta("reserved", str(upto))
            except sqlite3.Error as error:
                self._failed(error)
            self.reserved = upto

    def newest(self, room: str, limit: int) -> list[Stored]:
        """The room's newest ``limit`` stored messages, oldest first."""
        return self.before(room, None, limit)

    def before(self, room: str, before: int | None, limit: int) -> list[Stored]:
        """Up to ``limit`` messages with ids below ``before`` (or the newest), oldest first."""
        rows = self._reader.execute(
            "SELECT id, ts, nick, text FROM messages WHERE room = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (room, before if before is not None else 2**63 - 1, limit),
        )
        return [Stored(*row) for row in reversed(rows.fetchall())]

    def after(self, room: str, after: int, limit: int) -> list[Stored]:
        """Up to ``limit`` messages with ids above ``after``, oldest first."""
        rows = self._reader.execute(
            "SELECT id, ts, nick, text FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
            (room, after, limit),
        )
        return [Stored(*row) for row in rows]

    def first_id(self, room: str) -> int | None:
        """The oldest id the room still holds, or None when it holds nothing."""
        row = self._reader.execute("SELECT MIN(id) FROM messages WHERE room = ?", (room,))
        first: int | None = row.fetchone()[0]
        return first

    def dropped(self, room: str) -> int:
        """The newest id retention has dropped from the room (0: none)."""
        row = self._reader.execute("SELECT through FROM dropped WHERE room = ?", (room,))
        found = row.fetchone()
        return 0 if found is None else int(found[0])

    def delete(self, room: str, id: int) -> bool:
        """Queue the removal of message ``id``; whether it is stored (or queued) now.

        A message queued and not yet written is removed all the same: the queue
        keeps the order, so the removal comes after it.
        """
        self._queue.put(_Delete(room, id))
        row = self._reader.execute("SELECT 1 FROM messages WHERE room = ? AND id = ?", (room, id))
        return row.fetchone() is not None

    def reserved_nicks(self) -> set[str]:
        """Every nick key reserved so far."""
        return {key for (key,) in self._reader.execute("SELECT key FROM reserved_nicks")}

    def reserve_nick(self, key: str) -> None:
        """Queue the reservation of nick ``key`` for the next batch."""
        self._queue.put(_Nick(key))

    def forget(self, room: str) -> None:
        """Drop a room's stored history (its ids stay reserved)."""
        self._queue.put(_Forget(room))

    def close(self) -> None:
        """Commit everything queued, then close the database."""
        self._queue.put(_STOP)
        self._writer.join()
        self._reader.close()
        os.close(self._lock)

    def _meta(self, key: str) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        with self._reader:
            self._reader.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        return value

    # -- on the writer thread -----------------------------------------------------------

    def _write_loop(self) -> None:
        db = _connect(self.path)
        pruner: Pruner | None = None
        pending: list[_Work] = []
        stopping = False
        while True:
            if not stopping:
                stopping = self._collect(pending, RETRY_INTERVAL if pending else self.window)
            try:
                with db:
                    pruner = pruner or Pruner(db, self.retention)
                    self._write(db, pruner, pending)
            except sqlite3.Error as error:
                # The transaction rolled back, tallies included: count afresh next time.
                pruner = None
                self._failed(error)
                if len(pending) > MAX_PENDING:
                    self.lost += len(pending) - MAX_PENDING
                    del pending[: len(pending) - MAX_PENDING]
                if not stopping:
                    continue
                log.error("%d messages could not be written to %s", len(pending), self.path)
            else:
                pending.clear()
                if self.failing is not None:
                    log.warning("writing to %s again", self.path)
                    self.failing = None
            if stopping:
                break
        db.close()

    def _collect(self, pending: list[_Work], window: float) -> bool:
        """Add to ``pending`` what arrives within ``window`` (waiting for a first item when
        there is none); True when the store is closing.

        The thread sleeps through the window and then takes everything at once: waking
        for each message would make it ask the event loop's thread for the GIL once
        per message, and the fan-out measurably stalls on that.
        """
        if not pending:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return True
            pending.append(first)
        time.sleep(window)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if isinstance(item, _Stop):
                return True
            pending.append(item)

    def _failed(self, error: sqlite3.Error) -> None:
        self.errors += 1
        if self.failing is None:
            log.error(
                "cannot write to %s: %s; live chat goes on, history is kept in memory"
                " and written when the disk takes it again",
                self.path,
                error,
            )
        self.failing = str(error)

    @staticmethod
    def _write(db: sqlite3.Connection, pruner: Pruner, batch: list[_Work]) -> None:
        rooms: set[str] = set()
        run: list[tuple[str, int, float, str, str, int]] = []
        for item in batch:
            if not isinstance(item, _Forget | _Delete | _Nick):
                room, id, ts, nick, text = item
                size = size_of(nick, text)
                run.append((room, id, ts, nick, text, size))
                pruner.inserted(room, size)
                rooms.add(room)
                continue
            _insert(db, run)  # what came before, first: the queue's order is kept
            if isinstance(item, _Forget):
                pruner.forget(item.room)
                rooms.discard(item.room)
            elif isinstance(item, _Delete):
                pruner.delete(item.room, item.id)
            else:
                db.execute("INSERT OR IGNORE INTO reserved_nicks VALUES (?)", item)
        _insert(db, run)
        pruner.prune(rooms)


def _insert(db: sqlite3.Connection, run: list[tuple[str, int, float, str, str, int]]) -> None:
    """Insert ``run`` (then empty it) with one statement.

    One statement is one sqlite3_step, so the writer gives up and takes back the GIL
    once, not once per row: each taking back can wait a switch interval (5 ms) for a
    busy event loop, and per row that made the writer fall seconds behind.
    """
    if run:
        db.execute(
            "INSERT OR IGNORE INTO messages SELECT value ->> 0, value ->> 1, value ->> 2,"
            " value ->> 3, value ->> 4, value ->> 5 FROM json_each(?)",
            (json.dumps(run),),
        )
        run.clear()


def _lock(directory: Path) -> int:
    """Hold the data directory for this process, or say who holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"cannot use {directory} as the data directory: {error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StoreError(
            f"{directory} is in use by another rawchat (pid {holder}); give each server its own"
            " --data directory, or share history between servers with --broker"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, refusing a database from a newer rawchat."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer rawchat (schema {version}; this one knows up to"
            f" {SCHEMA_VERSION}); upgrade rawchat or point --data elsewhere"
        )
    while version < SCHEMA_VERSION:
        db.executescript(
            f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
        )
        version += 1


def _connect(path: Path) -> sqlite3.Connection:
    # The default isolation level: `with db:` commits the transaction that a write opens.
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA busy_timeout = 5000")
    return db
