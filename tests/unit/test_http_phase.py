"""The HTTP phase, driven byte by byte through a fake transport and parsed by an h11 client."""

from __future__ import annotations

import base64
from pathlib import Path

import h11
import pytest

from rawchat.connection import Connection
from rawchat.http_phase import LINGER_SECONDS
from tests.unit.fakes import FakeTransport, connect, make_state, read_body

KEY = base64.b64encode(b"0123456789abcdef")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "chat.js").write_text("console.log(1)")
    (root / "sub" / "page.css").write_text("body{}")
    (root / ".hidden").write_text("secret")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


def responses(
    data: bytes, method: bytes = b"GET", count: int = 1
) -> list[tuple[h11.Response | h11.InformationalResponse, bytes]]:
    """Parse ``count`` responses out of what the server wrote."""
    client = h11.Connection(h11.CLIENT)
    out: list[tuple[h11.Response | h11.InformationalResponse, bytes]] = []
    client.receive_data(data)
    for _ in range(count):
        client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        head = client.next_event()
        assert isinstance(head, (h11.Response, h11.InformationalResponse)), head
        body = b""
        if isinstance(head, h11.Response):
            body = read_body(client)
            if client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
        out.append((head, body))
    return out


def one(
    data: bytes, method: bytes = b"GET"
) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
    return responses(data, method)[0]


def header(response: h11.Response | h11.InformationalResponse, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


def get(
    site: Path, target: str, method: str = "GET", extra: str = ""
) -> tuple[FakeTransport, h11.Response | h11.InformationalResponse, bytes]:
    state, _ = make_state(static_dir=site)
    _, transport = connect(state)
    transport.protocol.data_received(  # type: ignore[union-attr]
        f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
    )
    head, body = one(transport.take(), method.encode())
    return transport, head, body


def test_root_serves_index_html(site: Path) -> None:
    _, head, body = get(site, "/")
    assert head.status_code == 200
    assert body == b"<h1>home</h1>"
    assert header(head, b"content-type") == b"text/html; charset=utf-8"
    assert header(head, b"content-length") == b"13"


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("/chat.js", b"text/javascript; charset=utf-8"),
        ("/sub/page.css", b"text/css; charset=utf-8"),
    ],
)
def test_files_get_their_content_type(site: Path, target: str, kind: bytes) -> None:
    _, head, _ = get(site, target)
    assert head.status_code == 200
    assert header(head, b"content-type") == kind


def test_head_sends_headers_without_body(site: Path) -> None:
    _, head, body = get(site, "/chat.js", "HEAD")
    assert head.status_code == 200
    assert header(head, b"content-length") == b"14"
    assert body == b""


@pytest.mark.parametrize(
    "target",
    [
        "/missing.html",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "//etc/passwd",
        "/link.txt",
        "/.hidden",
        "/chat.js%00.html",
        "/sub",
        "http://x/../secret.txt",
    ],
)
def test_nothing_outside_the_static_directory_is_served(site: Path, target: str) -> None:
    _, head, body = get(site, target)
    assert head.status_code == 404
    assert b"outside" not in body and b"secret" not in body


def test_other_methods_get_405_with_allow(site: Path) -> None:
    transport, head, _ = get(site, "/", "POST", "Content-Length: 3\r\n")
    assert head.status_code == 405
    assert header(head, b"allow") == b"GET, HEAD"
    assert_lingers(transport)


def assert_lingers(transport: FakeTransport) -> None:
    """Our side is shut but the socket stays open, reading, for the client to read the reply.

    Closed at once with the client's unread bytes in it, the socket would be reset,
    and a reset can destroy the reply before the client has read it.
    """
    assert transport.eof_written and not transport.closed
    assert transport.reading


def test_a_refused_body_is_discarded_while_lingering_then_closed_at_eof(site: Path) -> None:
    state, _ = make_state(static_dir=site)
    conn, transport = connect(state)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    head, _ = one(transport.take())
    assert head.status_code == 405
    assert_lingers(transport)
    conn.data_received(b"b" * 65536)  # the body it was sending anyway: read, not answered
    assert transport.take() == b"" and not transport.closed
    assert conn.eof_received() is None  # asyncio closes the transport itself


def test_lingering_ends_after_a_bound_if_the_client_never_hangs_up(site: Path) -> None:
    state, loop = make_state(static_dir=site, max_request_head=2048)
    conn, transport = connect(state)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 4096)
    head, _ = one(transport.take())
    assert head.status_code == 431
    assert_lingers(transport)
    loop.advance(LINGER_SECONDS + 0.1)
    assert transport.closed


def test_keep_alive_answers_pipelined_requests_in_order(site: Path) -> None:
    state, _ = make_state(static_dir=site)
    conn, transport = connect(state)
    conn.data_received(
        b"GET /chat.js HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    got = responses(transport.take(), count=3)
    assert [head.status_code for head, _ in got] == [200, 404, 200]
    assert got[2][1] == b"<h1>home</h1>"
    assert not transport.closed


def test_connection_close_is_honoured(site: Path) -> None:
    transport, head, _ = get(site, "/", extra="Connection: close\r\n")
    assert head.status_code == 200
    assert transport.closed


def test_malformed_request_gets_400_and_close(site: Path) -> None:
    state, _ = make_state(static_dir=site)
    conn, transport = connect(state)
    conn.data_received(b"GARBAGE\r\n\r\n")
    head, _ = one(transport.take())
    assert head.status_code == 400
    assert_lingers(transport)


def test_logs_name_the_tcp_peer(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    state, _ = make_state(static_dir=site)
    caplog.set_level("DEBUG", logger="rawchat.connection")
    conn, _ = connect(state)
    conn.data_received(b"GARBAGE\r\n\r\n")
    assert conn.peer == "127.0.0.1:40000"
    assert caplog.records[-1].getMessage().startswith("127.0.0.1:40000: bad HTTP request")


def test_connections_from_one_address_share_one_string(site: Path) -> None:
    state, _ = make_state(static_dir=site)
    addresses = []
    for port in (40001, 40002):
        transport = FakeTransport(state.loop)  # type: ignore[arg-type]
        peername = ("".join(["10.0.0.", "9"]), port)  # a new string each time, as from a socket
        transport.get_extra_info = lambda name, default=None, p=peername: p  # type: ignore[method-assign]
        conn = Connection(state)
        conn.connection_made(transport)
        addresses.append(conn.address)
    assert addresses[0] == "10.0.0.9"
    assert addresses[0] is addresses[1]


def test_oversized_request_head_gets_431(site: Path) -> None:
    state, _ = make_state(static_dir=site, max_request_head=2048)
    conn, transport = connect(state)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 4096)
    head, _ = one(transport.take())
    assert head.status_code == 431
    assert_lingers(transport)


def test_a_request_head_that_never_completes_times_out_with_408(site: Path) -> None:
    state, loop = make_state(static_dir=site, handshake_timeout=5.0)
    conn, transport = connect(state)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")  # slowloris: no blank line ever
    loop.advance(4.9)
    assert not transport.closed
    loop.advance(0.2)
    head, _ = one(transport.take())
    assert head.status_code == 408
    assert_lingers(transport)


def test_an_idle_keep_alive_connection_is_closed_quietly(site: Path) -> None:
    state, loop = make_state(static_dir=site, keepalive_timeout=15.0)
    conn, transport = connect(state)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    transport.take()
    loop.advance(14.0)
    assert not transport.closed
    loop.advance(1.5)
    assert transport.closed
    assert transport.take() == b""


# -- the opening handshake ------------------------------------------------------


def upgrade(
    site: Path, headers: dict[str, str], method: str = "GET", target: str = "/ws"
) -> tuple[FakeTransport, h11.Response | h11.InformationalResponse]:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    state, _ = make_state(static_dir=site)
    conn, transport = connect(state)
    conn.data_received(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    data = transport.take()
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(method=method, target=target, headers=[("host", "x"), *headers.items()])
    )
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    head = client.next_event()
    assert isinstance(head, (h11.Response, h11.InformationalResponse))
    return transport, head


GOOD = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY.decode(),
    "Sec-WebSocket-Version": "13",
}


def test_valid_handshake_gets_101_with_the_accept_token(site: Path) -> None:
    _, head = upgrade(site, GOOD)
    assert head.status_code == 101
    # The RFC 6455 example key and answer, to check the token independently.
    _, example = upgrade(site, {**GOOD, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert header(example, b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert header(head, b"sec-websocket-protocol") is None


def test_connection_header_may_list_several_tokens(site: Path) -> None:
    _, head = upgrade(site, {**GOOD, "Connection": "keep-alive, Upgrade", "Upgrade": "WebSocket"})
    assert head.status_code == 101


def test_rawchat_v1_is_chosen_when_offered(site: Path) -> None:
    _, head = upgrade(site, {**GOOD, "Sec-WebSocket-Protocol": "chat, rawchat.v1"})
    assert head.status_code == 101
    assert header(head, b"sec-websocket-protocol") == b"rawchat.v1"


def test_unknown_subprotocols_alone_mean_plain_mode(site: Path) -> None:
    _, head = upgrade(site, {**GOOD, "Sec-WebSocket-Protocol": "mqtt"})
    assert head.status_code == 101
    assert header(head, b"sec-websocket-protocol") is None


@pytest.mark.parametrize(
    "change",
    [
        {"Sec-WebSocket-Key": "too-short"},
        {"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()},
        {"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="},
        {"Sec-WebSocket-Key": None},
        {"Connection": "keep-alive"},
    ],
)
def test_malformed_handshakes_get_400_never_101(site: Path, change: dict[str, str | None]) -> None:
    headers = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    _, head = upgrade(site, headers)
    assert head.status_code == 400


@pytest.mark.parametrize("version", ["8", None, "13, 8"])
def test_wrong_version_gets_426_naming_version_13(site: Path, version: str | None) -> None:
    headers = {k: v for k, v in {**GOOD, "Sec-WebSocket-Version": version}.items() if v is not None}
    _, head = upgrade(site, headers)
    assert head.status_code == 426
    assert header(head, b"sec-websocket-version") == b"13"


def test_plain_get_of_the_websocket_path_gets_426(site: Path) -> None:
    _, head = upgrade(site, {})
    assert head.status_code == 426


def test_upgrade_with_post_gets_405(site: Path) -> None:
    transport, head = upgrade(site, {**GOOD, "Content-Length": "0"}, method="POST")
    assert head.status_code == 405


def test_html_pages_may_run_only_their_own_scripts(site: Path) -> None:
    import base64
    import hashlib

    script = b'\n  var socket = new WebSocket("ws://localhost:8080/ws");\n'
    (site / "inline.html").write_bytes(b"<p>hi</p><script>" + script + b"</script>")
    _, head, _ = get(site, "/inline.html")
    policy = header(head, b"content-security-policy")
    assert policy is not None
    digest = base64.b64encode(hashlib.sha256(script).digest())
    assert b"script-src 'self' 'sha256-" + digest + b"'" in policy
    assert b"object-src 'none'" in policy
    _, head, _ = get(site, "/chat.js")
    assert header(head, b"content-security-policy") is None


def test_responses_carry_their_reason_phrase(site: Path) -> None:
    _, head, _ = get(site, "/missing")
    assert head.reason == b"Not Found"


def test_idle_http_connections_count_against_the_connection_cap(site: Path) -> None:
    from tests.unit.fakes import Client

    state, loop = make_state(static_dir=site, max_connections=2, max_connections_per_ip=0)
    idle = [connect(state) for _ in range(2)]  # connected, no request yet: slots taken
    late = Client(state, loop)
    assert late.conn.outbox is None, "no upgrade past the cap"
    assert state.metrics.handshake_failures["full"] == 1
    for _conn, transport in idle:
        transport.close()
    loop.run_ready()
    assert state.http.occupancy.total == 0
    assert Client(state, loop).conn.outbox is not None, "slots come back when they close"


def test_a_per_address_cap_counts_http_connections_from_that_address(site: Path) -> None:
    state, _ = make_state(static_dir=site, max_connections_per_ip=1)
    first, _ = connect(state)
    conn, transport = connect(state)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _ = one(transport.take())
    assert head.status_code == 429
    assert header(head, b"retry-after") == b"5"
