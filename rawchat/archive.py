"""Each room's history, in memory and, unless ``--data none``, on disk (rawchat.store).

:class:`Shelf` makes the :class:`~rawchat.history.History` of every room the chat
opens. Without a store that is all there is: memory, bounded as ``--history``,
``--history-bytes``, ``--history-ttl`` and ``--history-total`` say. With one (an
:class:`Archive`), memory keeps only a recent window per room (``MEMORY_WINDOW``
messages at most) and the store keeps the room's whole retention; a room's window
is filled from the store when the room is first opened, so a restart costs no
reading of rooms nobody comes back to.

The fan-out's path only ever puts a message on the store's queue (Store.append).
Reads from the store (a page of older messages, a window when a room opens,
whether retention has dropped ids) are synchronous, on the event loop's own
connection: each is one indexed query returning at most a page (``MAX_PAGE_LIMIT``
plus one rows) or a window, a fraction of a millisecond on a warm cache. WAL lets
them run beside the writer without waiting for it.

Ids are given by the chat, per room. Every id handed out is covered by a
reservation committed beforehand (``RESERVE_BLOCK`` at a time), and this run's
rooms number their messages past the reservation that earlier runs left, so an
id a client saw before a crash never names another message after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rawchat import replies
from rawchat.config import Config
from rawchat.history import History, Ledger, UnencodedEntry
from rawchat.retention import Retention
from rawchat.store import Store

#: Ids reserved ahead, committed at once: a restart makes every room's ids jump by
#: up to this much. One commit on the event loop per this many messages.
RESERVE_BLOCK = 4096
#: The most messages a room keeps in memory when the store keeps the rest.
MEMORY_WINDOW = 200


class Archive:
    """The store as a room's history sees it (rawchat.history.Archive)."""

    def __init__(self, store: Store, *, keep: bool = True) -> None:
        self.store = store
        #: Whether messages are stored (``--history 0`` keeps none; ids still persist).
        self.keep = keep
        self.epoch = store.epoch
        #: Ids up to this may have been given out by earlier runs: this run's go past it.
        self.base = store.reserved

    @classmethod
    def open(cls, config: Config) -> Archive | None:
        """The archive ``config`` asks for: none with ``--data none`` or with a broker.

        Raises StoreError, naming the file and why, when the directory cannot be used.
        """
        if config.data is None or config.broker is not None:
            return None
        retention = Retention(config.history, config.history_bytes, config.history_ttl)
        return cls(Store(config.data, retention), keep=config.history > 0)

    def record(self, room: str, id: int, ts: float, nick: str, text: str) -> None:
        store = self.store
        if id > store.reserved:
            store.reserve(id + RESERVE_BLOCK)
        if self.keep:
            store.append(room, id, ts, nick, text)

    def delete(self, room: str, id: int) -> bool:
        return self.store.delete(room, id)

    def older(self, room: str, before: int, limit: int) -> list[UnencodedEntry]:
        rows = self.store.before(room, before, limit)
        return [(row.id, row.ts, row.nick, row.text) for row in reversed(rows)]

    def gone_through(self, room: str) -> int:
        return self.store.dropped(room)

    def fill(self, history: History) -> None:
        """Put the room's newest stored messages in its new ``history`` (not yet archived).

        ``dropped_through`` ends just below them when the store may hold older ones,
        so that reads past them go to the store.
        """
        rows = self.store.newest(history.room, history.max_count) if self.keep else []
        for row in rows:
            history.append(row.id, row.ts, row.nick, row.text, None)
        if len(rows) == history.max_count and rows:
            history.dropped_through = max(history.dropped_through, rows[0].id - 1)
        else:
            history.dropped_through = max(history.dropped_through, self.gone_through(history.room))
        history.last_id = max(history.last_id, self.base)
        history.archive = self

    @property
    def where(self) -> Path:
        return self.store.path

    def close(self) -> None:
        """Write everything queued, then close the database."""
        self.store.close()


class StoredReservations:
    """Reserved nicks (rawchat.identity.ReservedNicks) that survive a restart.

    Checked in memory; a new reservation is written with the next batch, so a
    crash can lose one made in the last batch window (its holder's next hello
    with the token makes it again).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._keys = store.reserved_nicks()

    def is_reserved(self, key: str) -> bool:
        return key in self._keys

    def reserve(self, key: str) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self.store.reserve_nick(key)


class Shelf:
    """Makes each room's history, as the config and the archive (if any) say."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.count = config.history
        self.bytes = config.history_bytes
        self.max_age = config.history_ttl
        self.clock = clock
        #: Memory's bound over every room together.
        self.ledger = Ledger(config.history_total)
        #: The store behind memory, when there is one (set by the server at start).
        self.archive: Archive | None = None

    def make(self, room: str, base: int) -> History:
        """A new history for ``room``, numbering its messages after ``base``."""
        archive = self.archive
        history = History(
            room,
            max_count=self.count if archive is None else min(self.count, MEMORY_WINDOW),
            max_bytes=self.bytes,
            encode=replies.encode_msg,
            ledger=self.ledger,
            base=base,
            max_age=self.max_age,
            clock=self.clock,
        )
        if archive is not None:
            archive.fill(history)
        return history
