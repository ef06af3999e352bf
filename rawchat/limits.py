"""What keeps strangers in bounds: origins, client addresses, rates and connection counts.

All of it is free of I/O: the connection asks before it upgrades or relays, and
acts on the answer. A limit of 0 means no limit.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from rawchat.proxies import parse_address


@functools.lru_cache(maxsize=4096)
def _group_v6(address: str) -> str:
    parsed = parse_address(address)
    if parsed is None:
        return address
    if parsed.version == 4:  # IPv4-mapped, from a dual-stack socket
        return str(parsed)
    return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))


def group(address: str) -> str:
    """What per-address limits count ``address`` under: IPv6 clients by their /64.

    One host, one subscriber's line, usually has a whole /64 to pick addresses
    from: counted one by one, it could open as many connections as it likes.
    IPv4 addresses count one by one.
    """
    return _group_v6(address) if ":" in address else address


class TokenBucket:
    """``rate`` tokens a second, saving up at most ``burst``: a message costs one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def spend(self, now: float) -> float:
        """Spend one token, even one not there yet: the seconds until the next one is.

        0 means the client is within its rate. A shaped client is given its next
        turn only once a token is there, so its debt never passes one token.
        """
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - 1.0
        self.stamp = now
        self.tokens = tokens
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def reserve(self, now: float, most: float) -> float:
        """Seconds until the next token is there; taken if that is at most ``most``.

        Tokens not there yet are handed out in order: the k-th caller past the
        burst waits k / rate seconds. A wait over ``most`` takes nothing (the
        caller refuses), so the debt never passes ``most`` seconds' worth.
        """
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        wait = max(0.0, (1.0 - tokens) / self.rate)
        self.tokens = tokens - 1.0 if wait <= most else tokens
        return wait


class PerAddress:
    """A token bucket per client address, pacing opening handshakes.

    An address past its burst is given turns at its rate: each handshake is
    told how long to wait (see ``reserve``), so a churning address slows
    itself down and costs what its rate allows, while other addresses are not
    held at all. Buckets that have filled up again carry no information and
    are dropped when the table grows, so a scan across many addresses cannot
    grow it without bound.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float], size: int = 4096):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.size = size
        self._buckets: dict[str, TokenBucket] = {}

    def reserve(self, address: str, most: float) -> float:
        """Seconds this handshake waits for its turn (0: none); over ``most``: refused.

        A refused handshake takes no turn, so the queue of one address never
        holds more than ``most`` seconds of its rate.
        """
        if self.rate <= 0:
            return 0.0
        address = group(address)
        now = self.clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.size:
                self._sweep(now)
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, now)
        return bucket.reserve(now, most)

    def _sweep(self, now: float) -> None:
        for address in [a for a, b in self._buckets.items() if b.full(now)]:
            del self._buckets[address]
        while len(self._buckets) >= self.size:  # all busy: forget the oldest
            del self._buckets[next(iter(self._buckets))]


class Occupancy:
    """Connections open, in all and per client address (IPv6: per /64, see ``group``)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total_limit = total
        self.per_address_limit = per_address
        self.total = 0
        self.by_address: dict[str, int] = {}

    def refusal(self, address: str) -> int | None:
        """The status refusing one more connection from ``address``, or None to admit it."""
        if self.total_limit and self.total >= self.total_limit:
            return 503
        if (
            self.per_address_limit
            and self.by_address.get(group(address), 0) >= self.per_address_limit
        ):
            return 429
        return None

    def enter(self, address: str) -> None:
        address = group(address)
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1

    def leave(self, address: str) -> None:
        address = group(address)
        self.total -= 1
        left = self.by_address[address] - 1
        if left:
            self.by_address[address] = left
        else:
            del self.by_address[address]


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        return (parts.hostname or "").lower(), parts.port or _default_port(scheme)
    except ValueError:
        return None


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str], tls: bool) -> bool:
    """Whether a browser's ``Origin`` may open a WebSocket here.

    No Origin header means no browser (or one that does not need protecting), so
    it is allowed. Otherwise the origin must be the page's own (the scheme the
    page was served with, the host and port of the request's ``Host``, defaults
    filled in) or listed exactly in ``allowed``, where ``*`` lets every origin
    in. Behind a trusted proxy, ``tls`` and ``host`` are what the proxy reports
    (rawchat.proxies). This is what stops another
    site's page from opening a WebSocket with the visitor's cookies
    (cross-site WebSocket hijacking).
    """
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    if host is None or origin == "null":
        return False
    own_scheme = "https" if tls else "http"
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme != own_scheme:  # an origin is scheme, host and port
        return False
    own = _host_port(host, own_scheme)
    theirs = _host_port(netloc, scheme)
    return own is not None and theirs is not None and own == theirs
