"""Admission at the opening handshake, without sockets: proxies, origins, addresses, pacing."""

from __future__ import annotations

import base64
from typing import Any

import h11

from rawchat.connection import Connection
from rawchat.server import ServerState
from tests.unit.fakes import FakeLoop, FakeTransport, make_state

KEY = base64.b64encode(b"0123456789abcdef").decode()


class PeerTransport(FakeTransport):
    """A fake transport whose TCP peer the test chooses."""

    def __init__(self, loop: FakeLoop, peer: str) -> None:
        super().__init__(loop)
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


def connect_from(state: ServerState, peer: str) -> tuple[Connection, PeerTransport]:
    conn = Connection(state)
    transport = PeerTransport(state.loop, peer)  # type: ignore[arg-type]
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


def handshake(host: str, **headers: str) -> bytes:
    fields = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"GET /ws HTTP/1.1\r\n{lines}\r\n".encode()


def status_of(data: bytes) -> int | None:
    """The status of the response the server wrote, None if it wrote nothing yet."""
    if not data:
        return None
    client = h11.Connection(h11.CLIENT)
    upgrade = [("host", "x"), ("connection", "upgrade"), ("upgrade", "websocket")]
    client.send(h11.Request(method="GET", target="/ws", headers=upgrade))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    head = client.next_event()
    assert isinstance(head, (h11.Response, h11.InformationalResponse)), head
    return head.status_code


def upgrade_from(state: ServerState, peer: str, request: bytes) -> tuple[Connection, int | None]:
    conn, transport = connect_from(state, peer)
    conn.data_received(request)
    return conn, status_of(transport.take())


# -- the scheme and host a trusted proxy reports --------------------------------------------

BROWSER = "https://chat.example.com"


def test_behind_a_tls_proxy_the_browsers_https_origin_is_its_own() -> None:
    state, _ = make_state(trust_proxy=("127.0.0.1",))
    for proxied in (
        {"X_Forwarded_Proto": "https", "X_Forwarded_For": "203.0.113.7"},
        {"Forwarded": "for=203.0.113.7;proto=https"},
    ):
        _, status = upgrade_from(
            state, "127.0.0.1", handshake("chat.example.com", Origin=BROWSER, **proxied)
        )
        assert status == 101, proxied


def test_a_proxy_on_another_port_reports_the_host_the_browser_used() -> None:
    state, _ = make_state(trust_proxy=("127.0.0.1",))
    _, status = upgrade_from(
        state,
        "127.0.0.1",
        handshake(
            "127.0.0.1:8080",
            Origin="https://chat.example.com:8443",
            X_Forwarded_Proto="https",
            X_Forwarded_Host="chat.example.com:8443",
        ),
    )
    assert status == 101


def test_another_site_is_still_refused_behind_the_proxy() -> None:
    state, _ = make_state(trust_proxy=("127.0.0.1",))
    for origin in ("https://evil.example", "http://chat.example.com"):
        _, status = upgrade_from(
            state,
            "127.0.0.1",
            handshake("chat.example.com", Origin=origin, X_Forwarded_Proto="https"),
        )
        assert status == 403, origin


def test_an_untrusted_peer_cannot_claim_https_or_another_host() -> None:
    state, _ = make_state(trust_proxy=("10.0.0.0/8",))
    for forged in (
        {"X_Forwarded_Proto": "https"},
        {"Forwarded": "proto=https"},
        {"X_Forwarded_Host": "chat.example.com", "Host": "127.0.0.1:8080"},
    ):
        request = handshake("chat.example.com", Origin=BROWSER, **forged)
        _, status = upgrade_from(state, "192.0.2.9", request)
        assert status == 403, forged


# -- which peers are proxies ----------------------------------------------------------------


def test_forwarding_headers_count_only_from_the_named_proxies() -> None:
    state, _ = make_state(trust_proxy=("127.0.0.1", "10.0.0.0/8"), max_connections_per_ip=1)
    forged = handshake("x", X_Forwarded_For="203.0.113.7")
    direct, status = upgrade_from(state, "192.0.2.9", forged)
    assert status == 101
    assert direct.address == "192.0.2.9", "a direct client is counted by its own address"
    _, status = upgrade_from(state, "192.0.2.9", handshake("x", X_Forwarded_For="203.0.113.8"))
    assert status == 429, "it cannot dodge its per-address cap by claiming another address"
    for proxy in ("127.0.0.1", "10.1.2.3"):
        via, status = upgrade_from(
            state, proxy, handshake("x", X_Forwarded_For=f"203.0.113.{proxy[-1]}")
        )
        assert status == 101
        assert via.address == f"203.0.113.{proxy[-1]}"


def test_without_trusted_proxies_forwarding_headers_change_nothing() -> None:
    state, _ = make_state(max_connections_per_ip=1)
    conn, status = upgrade_from(state, "127.0.0.1", handshake("x", X_Forwarded_For="203.0.113.7"))
    assert status == 101 and conn.address == "127.0.0.1"
