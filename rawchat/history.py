"""What a room remembers: its last messages, bounded by count and by bytes, read in pages.

A :class:`History` is one room's messages, oldest first, searched by id (ids only
grow within an epoch, but may jump: a broker outage, a room forgotten and made
again). It answers the three questions a client asks of the past: the newest page
(on join), everything after an id (on resume), and the page before an id (when
the user scrolls up). With an :class:`Archive` behind it (rawchat.archive: the
SQLite store), memory is only the recent window: every message is handed to the
archive as it is kept, and a read that goes past the window goes on in the
archive, where retention, not memory, decides what is gone.

A message is kept as the v1 JSON text when some v1 client needed that JSON as it
went by, else as its raw fields, encoded only if a v1 client ever asks: a room of
plain clients encodes no JSON at all.

Memory is bounded four ways: ``max_count`` messages, ``max_bytes`` and ``max_age``
per room, and a :class:`Ledger` shared by every room of the server, which keeps the total
under its own limit by dropping the oldest messages of the largest rooms. Each
history remembers the newest id it dropped, so a client resuming from before it
is told its view is truncated.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Protocol

#: A message kept as it came, before any v1 client needed its JSON: (id, ts, nick, text).
UnencodedEntry = tuple[int, float, str, str]
#: Encodes a raw message as v1 JSON for its room (replies.encode_msg).
Encoder = Callable[[str, int, float, str, str], str]

#: Bytes a kept message costs beyond its text and nick (ids, timestamp, JSON framing).
OVERHEAD = 96
#: A page: at most this many messages and bytes of encoded messages (docs/protocol.md).
PAGE_LIMIT = 50
PAGE_BYTES = 64 * 1024
#: The most messages one ``history`` request may ask for.
MAX_PAGE_LIMIT = 100


class Archive(Protocol):
    """Where a room's messages are kept beyond memory (rawchat.archive.Archive)."""

    def record(self, room: str, id: int, ts: float, nick: str, text: str) -> None:
        """Keep message ``id``; never blocks (it is on the fan-out's path)."""

    def delete(self, room: str, id: int) -> bool:
        """Remove message ``id``; whether it was kept."""

    def older(self, room: str, before: int, limit: int) -> list[UnencodedEntry]:
        """Up to ``limit`` messages with ids below ``before``, newest first."""

    def gone_through(self, room: str) -> int:
        """The newest id of the room that retention dropped (0: none)."""


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Ledger:
    """The bytes kept by every room's history together, held under ``limit``.

    Past the limit the largest histories give up their oldest messages until the
    total is back under nine tenths of it: the margin makes the search for the
    largest rooms rare rather than a cost of every message.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._histories: set[History] = set()

    def add(self, history: History) -> None:
        self._histories.add(history)

    def remove(self, history: History) -> None:
        self._histories.discard(history)
        self.total -= history.bytes

    def grew(self, size: int) -> None:
        self.total += size
        if self.limit and self.total > self.limit:
            self._shrink(self.limit * 9 // 10)

    def _shrink(self, target: int) -> None:
        # Largest first; among equals, the one that has kept its messages longest.
        ranked = sorted(self._histories, key=lambda h: (h.bytes, -h.first_id), reverse=True)
        for index, history in enumerate(ranked):
            floor = ranked[index + 1].bytes if index + 1 < len(ranked) else 0
            while self.total > target and history.bytes > floor and len(history):
                history.drop_oldest()
            if self.total <= target:
                return


class History:
    """One room's kept messages, oldest first."""

    __slots__ = (
        "room",
        "max_count",
        "max_bytes",
        "ledger",
        "encode",
        "_ids",
        "_entries",
        "_sizes",
        "bytes",
        "last_id",
        "dropped_through",
        "archive",
        "max_age",
        "clock",
        "_times",
        "__weakref__",
    )

    def __init__(
        self,
        room: str,
        *,
        max_count: int,
        max_bytes: int,
        encode: Encoder,
        ledger: Ledger | None = None,
        base: int = 0,
        archive: Archive | None = None,
        max_age: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.room = room
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.encode = encode
        self.ledger = ledger
        self._ids: deque[int] = deque()
        self._entries: deque[str | UnencodedEntry] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0
        #: The newest id this room has had (``base`` before its first message): ids
        #: given out before the room was made belong to no message of it.
        self.last_id = base
        #: The newest id that is no longer kept in memory (0: nothing was dropped). With
        #: an archive it may still be kept there: ``archive.gone_through`` says.
        self.dropped_through = 0
        self.archive = archive
        #: Messages older than this many seconds (by ``clock``) are dropped; 0: kept.
        self.max_age = max_age
        self.clock = clock
        #: The kept messages' timestamps, only when ``max_age`` is set.
        self._times: deque[float] = deque()
        if ledger is not None:
            ledger.add(self)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def untouched(self) -> bool:
        """No message was ever added (nor dropped) here."""
        return not self._ids and self.dropped_through == 0

    @property
    def first_id(self) -> int:
        """The id of the oldest message kept (``last_id + 1`` when none is)."""
        return self._ids[0] if self._ids else self.last_id + 1

    def append(self, id: int, ts: float, nick: str, text: str, encoded: str | None) -> None:
        """Keep message ``id`` (newer than every kept one), as JSON if it has been encoded."""
        if self.archive is not None:
            self.archive.record(self.room, id, ts, nick, text)
        if self.max_count <= 0:
            self.last_id = id
            self.dropped_through = id
            return
        if encoded is not None:
            entry: str | UnencodedEntry = encoded
            size = _utf8_size(encoded)
        else:
            entry = (id, ts, nick, text)
            size = _utf8_size(text) + _utf8_size(nick) + OVERHEAD
        self._ids.append(id)
        self._entries.append(entry)
        self._sizes.append(size)
        self.bytes += size
        self.last_id = id
        if self.max_age:
            self._times.append(ts)
            self._expire()
        while len(self._ids) > self.max_count or (
            self.bytes > self.max_bytes and len(self._ids) > 1
        ):
            self.drop_oldest()
        if self.ledger is not None:
            self.ledger.grew(size)

    def _expire(self) -> None:
        """Drop what is older than ``max_age`` (the archive drops it too, by itself)."""
        if self.max_age and self._ids:
            horizon = self.clock() - self.max_age
            while self._ids and self._times[0] < horizon:
                self.drop_oldest()

    def drop_oldest(self) -> None:
        self.dropped_through = self._ids.popleft()
        self._entries.popleft()
        if self.max_age:
            self._times.popleft()
        size = self._sizes.popleft()
        self.bytes -= size
        if self.ledger is not None:
            self.ledger.total -= size

    def delete(self, id: int) -> bool:
        """Remove message ``id`` (a moderator's delete); whether it was kept.

        The ids around it stay as they are: a client resuming past it gets
        what it missed without it, and nothing is reported as truncated.
        """
        archived = self.archive is not None and self.archive.delete(self.room, id)
        index = bisect_left(self._ids, id)
        if index == len(self._ids) or self._ids[index] != id:
            return archived
        del self._ids[index]
        del self._entries[index]
        if self.max_age:
            del self._times[index]
        size = self._sizes[index]
        del self._sizes[index]
        self.bytes -= size
        if self.ledger is not None:
            self.ledger.total -= size
        return True

    def clear(self) -> None:
        """Forget everything (the room is gone); the ledger stops counting this history."""
        if self.ledger is not None:
            self.ledger.remove(self)
            self.ledger = None
        if self._ids:
            self.dropped_through = self._ids[-1]
        self._ids.clear()
        self._entries.clear()
        self._sizes.clear()
        self._times.clear()
        self.bytes = 0

    def after(self, id: int) -> list[str] | None:
        """Every kept message newer than ``id``, or None when some of them are gone."""
        if id < self.dropped_through or id > self.last_id:
            # Dropped by retention, or an id this room never gave (another run's).
            return None
        return self._encoded(bisect_right(self._ids, id), len(self._ids))

    def since(
        self, after: int | None, limit: int = PAGE_LIMIT, max_bytes: int = PAGE_BYTES
    ) -> tuple[list[str], bool, bool]:
        """What a joining client gets: (messages, more, truncated).

        ``after`` is the last id the client saw (None: it saw nothing). If every
        message after it fits one page, exactly those (and no "more"); otherwise the
        newest page. Truncated when messages after ``after`` are gone.
        """
        self._expire()
        seen = 0 if after is None else after
        if self.archive is not None and seen < self.dropped_through and seen <= self.last_id:
            return _since_archived(self, after, seen, limit, max_bytes)
        truncated = seen < self.dropped_through or seen > self.last_id
        page, more = self.page(None, limit, max_bytes)
        if after is None or truncated:
            return page, more, truncated
        missed = len(self._ids) - bisect_right(self._ids, after)
        if missed <= len(page):
            return page[len(page) - missed :], False, False
        return page, True, False

    def page(
        self, before: int | None = None, limit: int = PAGE_LIMIT, max_bytes: int = PAGE_BYTES
    ) -> tuple[list[str], bool]:
        """The newest messages older than ``before`` (all if None), oldest first, and
        whether older ones are kept besides.

        At most ``limit`` messages and ``max_bytes`` bytes of their encoding, but
        always one message if there is one: a message larger than a page must not
        stop a client from paging past it.
        """
        _, page, more = self._window(before, limit, max_bytes)
        return page, more

    def _window(
        self, before: int | None, limit: int, max_bytes: int
    ) -> tuple[list[int], list[str], bool]:
        """``page``, with the ids of its messages; past memory's oldest, from the archive."""
        self._expire()
        end = len(self._ids) if before is None else bisect_left(self._ids, before)
        start = end
        used = 0
        while start > 0 and end - start < limit:
            _, size = self._json_at(start - 1)
            if used + size > max_bytes and start < end:
                break
            used += size
            start -= 1
        ids = list(islice(self._ids, start, end))
        page = self._encoded(start, end)
        if start > 0 or self.archive is None or not self.dropped_through:
            return ids, page, start > 0
        # Memory has nothing older, and has dropped some: the archive may hold them.
        floor = self._ids[0] if self._ids else self.last_id + 1
        if before is not None:
            floor = min(floor, before)
        older_ids, older, more = _older(self, floor, limit - len(ids), max_bytes - used, bool(ids))
        return older_ids + ids, older + page, more

    def _encoded(self, start: int, end: int) -> list[str]:
        """Entries ``start:end`` as JSON."""
        return [self._json_at(index)[0] for index in range(start, end)]

    def _json_at(self, index: int) -> tuple[str, int]:
        """Entry ``index`` as JSON (a raw one is encoded, and stays so) and its size in bytes."""
        entry = self._entries[index]
        if isinstance(entry, str):
            return entry, self._sizes[index]
        encoded = self._entries[index] = self.encode(self.room, *entry)
        size = _utf8_size(encoded)
        grown = size - self._sizes[index]
        self._sizes[index] = size
        self.bytes += grown
        if self.ledger is not None:
            self.ledger.total += grown
        return encoded, size


def _older(
    history: History, floor: int, wanted: int, max_bytes: int, nonempty: bool
) -> tuple[list[int], list[str], bool]:
    """The rest of a page of ``history`` from its archive: up to ``wanted`` messages below
    ``floor`` within ``max_bytes`` (one at least, unless the page is ``nonempty``), oldest
    first, and whether older ones are kept besides."""
    assert history.archive is not None
    room = history.room
    rows = history.archive.older(room, floor, wanted + 1)  # one more: are there more?
    ids: list[int] = []
    page: list[str] = []
    used = 0
    for row in rows[:wanted]:
        encoded = history.encode(room, *row)
        size = _utf8_size(encoded)
        if used + size > max_bytes and (nonempty or page):
            break
        used += size
        ids.append(row[0])
        page.append(encoded)
    ids.reverse()
    page.reverse()
    return ids, page, len(page) < len(rows)


def _since_archived(
    history: History, after: int | None, seen: int, limit: int, max_bytes: int
) -> tuple[list[str], bool, bool]:
    """``History.since`` when memory lacks some messages after ``seen``: the archive may not.
    A window of one more than a page says, by reaching back to ``seen``, if they fit."""
    assert history.archive is not None
    truncated = seen < history.archive.gone_through(history.room)
    if after is None or truncated:
        _, page, more = history._window(None, limit, max_bytes)
        return page, more, truncated
    ids, page, more = history._window(None, limit + 1, max_bytes)
    missed = len(ids) - bisect_right(ids, seen)
    if missed <= limit and (missed < len(ids) or not more):
        return page[len(page) - missed :], False, False
    return page[-limit:], True, False
