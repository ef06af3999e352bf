"""What a reverse proxy in front of rawchat says about the client, and whether to believe it.

A proxy that terminates TLS and forwards the upgrade knows three things rawchat
cannot see: the client's address, the scheme the browser used (https) and the
host it asked for. It says so in ``X-Forwarded-For``/``-Proto``/``-Host`` (nginx,
HAProxy, Caddy) or in RFC 7239's ``Forwarded``. Those headers are anyone's to
write, so they are read only on a connection whose TCP peer is one of the
proxies the operator named (``--trust-proxy 127.0.0.1,10.0.0.0/8``); from any
other peer they are ignored, and a client that reaches rawchat directly is
counted by its own address.

Free of I/O, like rawchat.limits.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Headers = Iterable[tuple[bytes, bytes]]


def parse_address(text: str) -> Address | None:
    """An IP address as a proxy or a socket spells it; IPv4-mapped IPv6 as IPv4."""
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:4711" or "[2001:db8::1]"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=16)
def networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    """The networks named in ``spec`` (addresses are networks of one); ValueError if bad.

    Parsed once per configuration, not once per connection.
    """
    found = []
    for item in spec:
        try:
            found.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--trust-proxy: {item!r} is not an IP address or network (like 10.0.0.0/8)"
            ) from None
    return tuple(found)


def trusted(address: Address | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


@dataclasses.dataclass(frozen=True, slots=True)
class Forwarded:
    """What a trusted proxy reports about the client; None where it says nothing usable."""

    address: str | None = None
    #: "http" or "https": the scheme the client used to reach the proxy.
    scheme: str | None = None
    #: The Host the client asked the proxy for, port included if it gave one.
    host: str | None = None


def _values(headers: Headers, name: bytes) -> list[str]:
    """Every comma-separated entry of every ``name`` header, in order."""
    return [
        item.strip()
        for key, value in headers
        if key == name
        for item in value.decode("latin-1").split(",")
    ]


def _forwarded_pairs(headers: Headers) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` elements, one dict per proxy hop, keys lowercased."""
    elements = []
    for element in _values(headers, b"forwarded"):
        pairs = {}
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            if key and value:
                pairs[key.lower()] = value.strip('"')
        elements.append(pairs)
    return elements


def _client(entries: list[str], proxies: Sequence[Network]) -> str | None:
    """The client in a list of hops, nearest last: the first one that is not our proxy.

    Entries left of it were written by the client itself, or by proxies we do
    not know: they are not believed.
    """
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return None
        if not trusted(address, proxies):
            return str(address)
    # Every hop is a proxy of ours: the farthest one is the client as far as we can tell.
    address = parse_address(entries[0]) if entries else None
    return None if address is None else str(address)


def _scheme(value: str | None) -> str | None:
    value = (value or "").lower()
    return value if value in ("http", "https") else None


def forwarded(headers: Headers, proxies: Sequence[Network]) -> Forwarded:
    """What the proxy that sent ``headers`` says (call only for a trusted peer).

    ``X-Forwarded-*`` is what nginx, Caddy and HAProxy set. When it is there,
    a ``Forwarded`` header can only be the client's own invention, passed along
    by a proxy that does not know it: it is believed only on its own. Of
    ``-Proto`` and ``-Host`` the last value counts, the one the nearest proxy
    set.
    """
    headers = list(headers)
    for_entries = _values(headers, b"x-forwarded-for")
    if for_entries or any(k in (b"x-forwarded-proto", b"x-forwarded-host") for k, _ in headers):
        protos = _values(headers, b"x-forwarded-proto")
        hosts = _values(headers, b"x-forwarded-host")
        return Forwarded(
            address=_client(for_entries, proxies) if for_entries else None,
            scheme=_scheme(protos[-1]) if protos else None,
            host=hosts[-1] or None if hosts else None,
        )
    elements = _forwarded_pairs(headers)
    fors = [e["for"] for e in elements if "for" in e]
    protos = [e["proto"] for e in elements if "proto" in e]
    hosts = [e["host"] for e in elements if "host" in e]
    return Forwarded(
        address=_client(fors, proxies) if fors else None,
        scheme=_scheme(protos[-1]) if protos else None,
        host=hosts[-1] if hosts else None,
    )


def client_address(peer: str, headers: Headers, proxies: Sequence[Network]) -> str:
    """The address limits count: the forwarded client's, if ``peer`` is a trusted proxy."""
    if not proxies or not trusted(parse_address(peer), proxies):
        return peer
    return forwarded(headers, proxies).address or peer
