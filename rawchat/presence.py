"""Presence: who came, went or changed nick, told to each room once a tick.

A frame per change made joining quadratic: the n-th member's arrival went to the
n-1 before it, so 5,000 joins cost 12.5 million frames, and a mass disconnect (or
a shutdown) cost as much again. Instead, changes are gathered per room and sent
as one frame per room every ``TICK`` seconds: n joins within a tick cost one
frame per member, whatever n is, and the frame lists at most
``replies.MAX_PRESENCE_LISTED`` changes (the rest are counted, with the room's
member count so that a client can show the truth).

Changes that cancel within a tick are not sent: a member who joins and leaves
again, a leave followed by the same nick's return. At shutdown nothing is sent at
all (`stop`): every member is about to get the server's close frame.

No I/O: frames go out through the hub, the tick is scheduled with the loop's
``call_later``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rawchat import frames, replies
from rawchat.hub import Hub

if TYPE_CHECKING:
    from rawchat.rooms import Room

#: Seconds between a room's presence frames: short enough to feel live.
TICK = 0.1

Schedule = Callable[[float, Callable[[], None]], object]


class Changes:
    """One room's membership changes since its last frame, net of those that cancel."""

    __slots__ = ("joined", "left", "renamed")

    def __init__(self) -> None:
        # Dicts as ordered sets: a change is found and cancelled in O(1).
        self.joined: dict[str, None] = {}
        self.left: dict[str, None] = {}
        #: new nick -> the nick it had at the start of the tick.
        self.renamed: dict[str, str] = {}

    def join(self, nick: str) -> None:
        if nick in self.left:
            del self.left[nick]  # gone and back within the tick: nothing to say
        else:
            self.joined[nick] = None

    def leave(self, nick: str) -> None:
        if nick in self.joined:
            del self.joined[nick]
        elif nick in self.renamed:
            self.left[self.renamed.pop(nick)] = None
        else:
            self.left[nick] = None

    def rename(self, old: str, new: str) -> None:
        if old in self.joined:
            del self.joined[old]
            self.joined[new] = None
        elif old in self.renamed:
            first = self.renamed.pop(old)
            if first != new:
                self.renamed[new] = first
        else:
            self.renamed[new] = old

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.renamed)


class Presence:
    """Gathers membership changes per room and sends each room one frame per tick."""

    def __init__(self, hub: Hub, call_later: Schedule, tick: float = TICK) -> None:
        self.hub = hub
        self._call_later = call_later
        self.tick = tick
        self._pending: dict[Room, Changes] = {}
        self._scheduled = False
        self.stopped = False

    def join(self, room: Room, nick: str) -> None:
        if not self.stopped:
            self._changes(room).join(nick)

    def leave(self, room: Room, nick: str) -> None:
        if not self.stopped:
            self._changes(room).leave(nick)

    def rename(self, room: Room, old: str, new: str) -> None:
        if not self.stopped:
            self._changes(room).rename(old, new)

    def stop(self) -> None:
        """No presence any more: the server is shutting down and everyone is leaving."""
        self.stopped = True
        self._pending.clear()

    def _changes(self, room: Room) -> Changes:
        changes = self._pending.get(room)
        if changes is None:
            changes = self._pending[room] = Changes()
        if not self._scheduled:
            self._scheduled = True
            self._call_later(self.tick, self.flush)
        return changes

    def flush(self) -> None:
        """Send every room with changes its one frame."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for room, changes in pending.items():
            if not changes or not room.v1:
                continue
            text = replies.encode_presence(
                room.name,
                room.count(),
                list(changes.joined),
                list(changes.left),
                [(old, new) for new, old in changes.renamed.items()],
            )
            self.hub.broadcast(frames.message(text), room.v1)
