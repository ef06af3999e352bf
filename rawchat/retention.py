"""Retention: how much history each room keeps on disk, and the writer's pruning.

Runs inside the store's writer transaction (rawchat.store); the event loop never
calls it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

#: Bytes a stored message costs besides its nick and text (ids, timestamp, JSON keys).
OVERHEAD = 64
#: How often the writer deletes messages older than the retention's age limit.
EXPIRY_INTERVAL = 1.0


@dataclass(frozen=True)
class Retention:
    """How much history each room keeps; 0 means no limit of that kind."""

    count: int = 0
    bytes: int = 0
    seconds: float = 0.0


def size_of(nick: str, text: str) -> int:
    """What a message counts against a room's byte budget."""
    return len(nick.encode()) + len(text.encode()) + OVERHEAD


class Pruner:
    """Keeps each room within its retention, inside the writer's transaction.

    Each room's message count and bytes are tallied in memory (read once at
    start), so a batch costs a few indexed deletes, not a scan of the room.
    """

    def __init__(self, db: sqlite3.Connection, retention: Retention) -> None:
        self.db = db
        self.retention = retention
        self.next_expiry = 0.0
        self.tally: dict[str, list[int]] = {
            room: [count, size]
            for room, count, size in db.execute(
                "SELECT room, COUNT(*), SUM(size) FROM messages GROUP BY room"
            )
        }

    def inserted(self, room: str, size: int) -> None:
        tally = self.tally.setdefault(room, [0, 0])
        tally[0] += 1
        tally[1] += size

    def forget(self, room: str) -> None:
        self.db.execute("DELETE FROM messages WHERE room = ?", (room,))
        self.db.execute("DELETE FROM dropped WHERE room = ?", (room,))
        self.tally.pop(room, None)

    def delete(self, room: str, id: int) -> None:
        """A removal, not a loss: the room's ``dropped`` stays as it was."""
        for (size,) in self.db.execute(
            "DELETE FROM messages WHERE room = ? AND id = ? RETURNING size", (room, id)
        ).fetchall():
            self._untally(room, size)

    def prune(self, rooms: set[str]) -> None:
        retention = self.retention
        for room in rooms:
            count, size = self.tally[room]
            excess = count - retention.count if retention.count else 0
            if retention.bytes and size > retention.bytes:
                excess = max(excess, self._excess_bytes(room, size - retention.bytes))
            if excess > 0:
                self._drop_oldest(room, min(excess, count - 1))
        now = time.time()
        if retention.seconds and now >= self.next_expiry:
            self.next_expiry = now + EXPIRY_INTERVAL
            self._drop(
                "DELETE FROM messages WHERE ts < ? RETURNING room, size, id",
                (now - retention.seconds,),
            )

    def _drop_oldest(self, room: str, n: int) -> None:
        """Delete the room's ``n`` oldest messages in a few statements whatever ``n`` is
        (DELETE ... RETURNING would be a step, and a GIL hand-over, per row)."""
        dropped, size, through = self.db.execute(
            "SELECT COUNT(*), TOTAL(size), MAX(id) FROM"
            " (SELECT size, id FROM messages WHERE room = ? ORDER BY id LIMIT ?)",
            (room, n),
        ).fetchone()
        if not dropped:
            return
        self.db.execute("DELETE FROM messages WHERE room = ? AND id <= ?", (room, through))
        tally = self.tally[room]
        tally[0] -= dropped
        tally[1] -= int(size)
        if tally[0] <= 0:
            del self.tally[room]
        self._dropped_through({room: through})

    def _excess_bytes(self, room: str, over: int) -> int:
        """How many of the room's oldest messages add up to at least ``over`` bytes."""
        rows = self.db.execute("SELECT size FROM messages WHERE room = ? ORDER BY id", (room,))
        dropped = 0
        for n, (size,) in enumerate(rows, 1):
            dropped += size
            if dropped >= over:
                return n
        return 0

    def _drop(self, sql: str, args: tuple[object, ...]) -> None:
        through: dict[str, int] = {}
        for room, size, id in self.db.execute(sql, args).fetchall():
            self._untally(room, size)
            through[room] = max(through.get(room, 0), id)
        self._dropped_through(through)

    def _dropped_through(self, through: dict[str, int]) -> None:
        self.db.executemany(
            "INSERT INTO dropped VALUES (?, ?) ON CONFLICT (room)"
            " DO UPDATE SET through = MAX(through, excluded.through)",
            through.items(),
        )

    def _untally(self, room: str, size: int) -> None:
        tally = self.tally[room]
        tally[0] -= 1
        tally[1] -= size
        if not tally[0]:
            del self.tally[room]
