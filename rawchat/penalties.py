"""Who may not do what where, and who owns which room: the records rawchat/moderation.py
keeps, in the same state on every node that shares a broker (rawchat/crossnode.py applies
what other nodes publish). No I/O."""

from __future__ import annotations

from collections.abc import Callable

#: Expired mutes and bans are forgotten when this many are kept (and on every check).
PRUNE_AT = 4096


class Penalties:
    """Mutes or bans: (room, who) -> the time they end. ``who`` is a nick key or an address."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def set(self, room: str, who: str, seconds: int) -> None:
        if seconds == 0:
            self._until.pop((room, who), None)
            return
        if len(self._until) >= PRUNE_AT:
            now = self.clock()
            self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[(room, who)] = self.clock() + seconds

    def remaining(self, room: str, who: str) -> int:
        """Whole seconds left (rounded up), 0 when none is in force."""
        until = self._until.get((room, who))
        if until is None:
            return 0
        left = until - self.clock()
        if left <= 0:
            del self._until[(room, who)]
            return 0
        return int(left) + (left > int(left))


class AddressBans:
    """Bans of guests by address, each remembered with the nick key it was banned as.

    A guest can change nick, not so easily address. The ban is lifted by lifting the nick's
    (the guest is gone by then, and on other nodes was never known): hence the nick key.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.penalties = Penalties(clock)
        #: (room, nick key) -> the address banned with it.
        self._addresses: dict[tuple[str, str], str] = {}

    def set(self, room: str, key: str, address: str | None, seconds: int) -> None:
        """Ban ``address`` (the guest's banned as ``key``); 0 seconds frees the address
        banned with ``key``, or ``address``."""
        if not seconds:
            address = self._addresses.pop((room, key), address)
            if address is not None:
                self.penalties.set(room, address, 0)
            return
        if address is None:
            return
        if len(self._addresses) >= PRUNE_AT:
            self._addresses = {
                (r, k): a for (r, k), a in self._addresses.items() if self.remaining(r, a)
            }
        self.penalties.set(room, address, seconds)
        self._addresses[(room, key)] = address

    def remaining(self, room: str, address: str) -> int:
        return self.penalties.remaining(room, address)


class Owners:
    """room -> nick keys of its owners (by nick key, so ownership follows the reserved nick)."""

    def __init__(self) -> None:
        self.of: dict[str, set[str]] = {}
        #: room -> (key, nick) of a token holder who created it on this node, while the
        #: room's load from the broker tells whether another node had it first.
        self.founding: dict[str, tuple[str, str]] = {}

    def holds(self, room: str, key: str) -> bool:
        return key in self.of.get(room, ())

    def set(self, room: str, key: str, owner: bool) -> None:
        if owner:
            self.of.setdefault(room, set()).add(key)
        else:
            self.of.get(room, set()).discard(key)

    def found(self, room: str, key: str, nick: str, *, wait: bool) -> None:
        """A token holder created ``room`` on this node: its owner if it has none, at once
        or, with ``wait``, once `founded` says the room is new to every node."""
        if room in self.of:
            return
        if wait:
            self.founding[room] = (key, nick)
        else:
            self.of[room] = {key}

    def founded(self, room: str, new: bool) -> str | None:
        """The broker loaded ``room``: the nick of the founder it waited for, now its owner,
        if ``new`` (no node has ids, history or members for it), else ``None``."""
        founder = self.founding.pop(room, None)
        if founder is None or not new or room in self.of:
            return None
        key, nick = founder
        self.of[room] = {key}
        return nick
