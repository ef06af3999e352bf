"""The chat's rooms: made when first joined, kept idle for resumes, answered on join. No I/O.

Rooms outlive their members for a while, so that a client that drops and comes
back can resume from history even if it was alone in the room: empty rooms are
kept, oldest dropped first, up to ``MAX_IDLE_ROOMS``. A room made again after
being forgotten numbers its messages after every id the server gave before, so
an id never names two messages within an epoch.

With a broker, a room's history and remote members come from Redis when it is
made; joins wait in ``Room.waiting`` until the broker says it is `loaded`.
"""

from __future__ import annotations

from collections import OrderedDict

from rawchat import frames, replies
from rawchat import messages as m
from rawchat.archive import Shelf
from rawchat.history import PAGE_BYTES
from rawchat.hub import Hub
from rawchat.presence import Presence
from rawchat.rooms import Relay, Room, Session

#: Empty rooms (and their history) kept for clients that come back.
MAX_IDLE_ROOMS = 1024
#: Nicks a ``joined`` reply lists; its "count" is the room's true size. A full list
#: made joining quadratic: the n-th member got n nicks.
MAX_MEMBERS_LISTED = 200


class RoomRegistry:
    """Every room this node holds, who is in each, and the idle ones kept for resumes."""

    def __init__(self, hub: Hub, shelf: Shelf, presence: Presence) -> None:
        self.hub = hub
        #: Makes each room's history: memory, and the store behind it (rawchat.archive).
        self.shelf = shelf
        self.presence = presence
        self.rooms: dict[str, Room] = {}
        #: Empty rooms, oldest first (a dict as an ordered set).
        self._idle: OrderedDict[str, None] = OrderedDict()
        #: The newest id of any room forgotten: a room made again numbers after it.
        self.forgotten_ids = 0
        #: The broker, when there is one (set through Chat.relay).
        self.relay: Relay | None = None
        #: Set at shutdown: members leave untold, and no room is kept (see Chat.close).
        self.closing = False

    def room(self, name: str) -> Room:
        """The room called ``name``, made (and, with a broker, loaded) if need be."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.shelf.make(name, self.forgotten_ids))
            if self.relay is not None and self.relay.up:
                room.loaded = False
                self.relay.load(room)
        else:
            self._idle.pop(name, None)
        return room

    def enter(self, session: Session, room: Room) -> None:
        self.presence.join(room, session.nick)
        room.members[session] = None
        (room.plain if session.plain else room.v1).add(session.outbox)
        session.rooms[room.name] = room
        if self.relay is not None and self.relay.up:
            self.relay.presence(room.name, "join", session.nick, None)

    def exit(self, session: Session, room: Room) -> None:
        del session.rooms[room.name]
        room.members.pop(session, None)
        (room.plain if session.plain else room.v1).discard(session.outbox)
        if self.closing:
            return  # nobody is told, and no room is worth keeping now
        self.presence.leave(room, session.nick)
        if self.relay is not None and self.relay.up:
            self.relay.presence(room.name, "leave", session.nick, None)
        if not room.members and room.name != m.DEFAULT_ROOM:
            self._idle[room.name] = None
            while len(self._idle) > MAX_IDLE_ROOMS:
                name, _ = self._idle.popitem(last=False)
                self.forget(self.rooms[name])

    def forget(self, room: Room) -> None:
        """Drop a room and its history; ids go on from its last one if it is made again."""
        del self.rooms[room.name]
        self.forgotten_ids = max(self.forgotten_ids, room.last_id)
        room.history.clear()

    # -- joins ------------------------------------------------------------------

    def join(self, session: Session, name: str, after: int | None, stale: bool) -> None:
        """Put ``session`` in room ``name`` (once the chat has allowed it) and answer it,
        at once or when the room is loaded. ``after`` is the id it resumes from;
        ``stale`` says that id is another server run's."""
        room = session.rooms.get(name)
        if room is None:
            room = self.room(name)
            self.enter(session, room)
        if room.loaded:
            self._joined(session, room, after, stale)
        else:
            room.waiting.append((session, after, stale))

    def loaded(self, room: Room) -> None:
        """The broker filled in a room's history and remote members: answer waiting joins."""
        room.loaded = True
        waiting, room.waiting = room.waiting, []
        for session, after, stale in waiting:
            if session.rooms.get(room.name) is room:
                self._joined(session, room, after, stale)

    def _joined(self, session: Session, room: Room, after: int | None, stale: bool) -> None:
        """Answer a join: the members, and the newest page of history or what was missed.

        A resume whose missed messages fit one page gets exactly those; otherwise
        the newest page, with "more" for the client to page back through. It is
        truncated when messages after its id are gone (or the id is another run's).
        """
        if stale:
            page, more = room.history.page(None, m.HISTORY_LIMIT, PAGE_BYTES)
            truncated = True
        else:
            page, more, truncated = room.history.since(after, m.HISTORY_LIMIT, PAGE_BYTES)
        joined = replies.encode_joined(
            room.name,
            room.nicks(MAX_MEMBERS_LISTED),
            page,
            room.last_id,
            truncated,
            more=more,
            count=room.count(),
        )
        self.hub.send(session.outbox, frames.message(joined))
