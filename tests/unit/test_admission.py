"""Admission at the opening handshake, without sockets: proxies, origins, addresses, pacing."""

from __future__ import annotations

import base64
from typing import Any

import h11

from rawchat.connection import Connection
from rawchat.server import ServerState
from tests.unit.fakes import FakeLoop, FakeTransport, make_state, masked

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


# -- handshake pacing (--handshake-rate) ----------------------------------------------------


def paced_state() -> tuple[ServerState, FakeLoop]:
    # Two turns a second after a burst of two; a turn may be waited for 5 s at most.
    return make_state(handshake_rate=2.0, handshake_burst=2, handshake_timeout=5.0)


def test_a_churning_address_waits_for_its_turn_while_others_go_straight_in() -> None:
    state, loop = paced_state()
    for _ in range(2):
        assert upgrade_from(state, "192.0.2.9", handshake("x"))[1] == 101
    conn, transport = connect_from(state, "192.0.2.9")
    # Its first frame comes with the request, as clients that do not wait for the 101 send it.
    conn.data_received(handshake("x") + masked(0x1, b"queued hello"))
    assert transport.take() == b"", "no answer yet: it waits for its turn"
    assert not transport.reading, "and nothing more is read from it meanwhile"
    assert upgrade_from(state, "192.0.2.10", handshake("x"))[1] == 101, "others are not held"
    loop.advance(0.49)
    assert transport.take() == b""
    loop.advance(0.02)
    written = transport.take()
    assert status_of(written) == 101
    assert written.endswith(b"queued hello"), "its frame was kept and relayed after the 101"
    assert transport.reading
    assert state.metrics.handshakes_paced == 1


def test_past_a_queue_of_handshake_timeout_seconds_an_address_gets_429() -> None:
    state, loop = paced_state()
    waiting = []
    for _ in range(2 + 10):  # the burst, then 10 turns within 5 s at 2 a second
        conn, transport = connect_from(state, "192.0.2.9")
        conn.data_received(handshake("x"))
        waiting.append(transport)
    assert sum(status_of(t.take()) == 101 for t in waiting) == 2
    conn, transport = connect_from(state, "192.0.2.9")
    conn.data_received(handshake("x"))
    refused = transport.take()
    assert status_of(refused) == 429
    assert b"retry-after: 1\r\n" in refused.lower()
    assert state.metrics.handshake_failures["rate"] == 1
    loop.advance(5.0)
    assert all(status_of(t.take()) == 101 for t in waiting[2:]), "every queued one got in"


def test_a_client_that_gives_up_while_waiting_frees_its_slot() -> None:
    state, loop = make_state(
        handshake_rate=1.0, handshake_burst=1, handshake_timeout=5.0, max_connections_per_ip=2
    )
    assert upgrade_from(state, "192.0.2.9", handshake("x"))[1] == 101
    conn, transport = connect_from(state, "192.0.2.9")
    conn.data_received(handshake("x"))
    assert transport.take() == b""
    transport.close()
    loop.advance(2.0)  # its turn passes with nothing to answer
    assert transport.take() == b""
    assert state.http.occupancy.by_address == {"192.0.2.9": 1}
    assert conn.outbox is None
