"""Who may open a WebSocket: an opening handshake checked against the RFC and our limits.

The checks, in order: RFC 6455 (rawchat.http), the browser's origin, the
connection caps (the connection's slot moves to the client's address behind a
proxy), then the handshake pace (--handshake-rate). Behind a proxy named by
--trust-proxy, the client's address, scheme and host are what the proxy
reports (rawchat.proxies); from any other peer, what the socket says.

Free of I/O: the HTTP phase (rawchat.http_phase) asks, then answers, waits or
upgrades.
"""

from __future__ import annotations

import logging
import math

import h11

from rawchat import http, limits, proxies
from rawchat.config import Config
from rawchat.limits import Occupancy, PerAddress
from rawchat.metrics import Counters
from rawchat.slots import Slot

log = logging.getLogger("rawchat.connection")


class Admission:
    """One connection's admission: where it is counted, and what its upgrades get."""

    __slots__ = ("config", "limiter", "counters", "proxies", "peer", "trusted", "address", "slot")

    def __init__(
        self,
        config: Config,
        occupancy: Occupancy,
        limiter: PerAddress,
        counters: Counters,
        peer: str,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.counters = counters
        self.proxies = proxies.networks(config.trust_proxy)
        #: The TCP peer's address.
        self.peer = peer
        #: The peer is one of the proxies --trust-proxy names: its forwarding headers count.
        self.trusted = proxies.trusted(proxies.parse_address(peer), self.proxies)
        #: The client's address as limits count it: the proxy's word for it, if trusted.
        self.address = peer
        #: This connection's slot of the connection caps, held from its accept.
        self.slot = Slot(occupancy, counters, peer, behind_proxy=self.trusted)

    def decide(self, request: h11.Request) -> tuple[http.Upgrade | http.Reply, float]:
        """The answer to an opening handshake, and for an upgrade the seconds it waits.

        The wait is its turn under --handshake-rate (0 at or under the rate).
        """
        config = self.config
        decision = http.check_upgrade(request)
        reason = None
        wait = 0.0
        if isinstance(decision, http.Reply):
            reason = {405: "method", 426: "version"}.get(decision.status, "bad_request")
        else:
            origin = http.single_header(request, b"origin")
            host = http.single_header(request, b"host")
            scheme = "https" if config.certfile is not None else "http"
            if self.trusted:
                # The proxy knows what the browser used: https, and the host it
                # asked for. The origin check compares the Origin with those.
                said = proxies.forwarded(request.headers, self.proxies)
                self.address = said.address or self.peer
                scheme = said.scheme or scheme
                if said.host is not None:
                    host = said.host.encode("latin-1")
            if not limits.origin_allowed(
                None if origin is None else origin.decode("latin-1"),
                None if host is None else host.decode("latin-1"),
                config.allow_origins,
                tls=scheme == "https",
            ):
                reason, decision = "origin", http.error_reply(403)
            elif self.slot.counted != self.address and (
                status := self.slot.move(self.address)  # behind a proxy: the client's
            ):
                reason = "full" if status == 503 else "per_ip"
                decision = http.error_reply(status, (b"retry-after", b"5"))
            else:
                # Past its burst, an address waits for its turn rather than being
                # refused, up to --handshake-timeout; only past that is it turned away.
                most = config.handshake_timeout
                wait = self.limiter.reserve(self.address, most)
                if wait > most:
                    retry = str(max(1, math.ceil(wait - most))).encode()
                    reason, decision = "rate", http.error_reply(429, (b"retry-after", retry))
        if reason is not None:
            self.counters.handshake_failures[reason] += 1
            log.debug("%s: refused upgrade (%s)", self.peer, reason)
        return decision, wait
