"""The WebSocket phase through a fake transport: a wsproto client on the other end, no sockets."""

from __future__ import annotations

import struct

import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from tests.unit.fakes import Client, make_state, masked


def closes(client: Client) -> list[CloseConnection]:
    return [e for e in client.events if isinstance(e, CloseConnection)]


def texts(client: Client) -> list[str]:
    return [e.data for e in client.events if isinstance(e, TextMessage)]


def test_plain_text_goes_to_every_plain_client_sender_included() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send(TextMessage("hello"))
    a.receive(), b.receive()
    assert texts(a) == ["hello"] and texts(b) == ["hello"]


def test_binary_is_relayed_as_binary() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send(BytesMessage(b"\xff\x00\xfe"))
    b.receive()
    assert [e.data for e in b.events if isinstance(e, BytesMessage)] == [b"\xff\x00\xfe"]


def test_a_fragmented_message_arrives_whole_as_one_message() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send(TextMessage("hel", message_finished=False))
    a.send(TextMessage("lo", message_finished=True))
    b.receive()
    assert texts(b) == ["hello"]


def test_first_frames_sent_with_the_handshake_are_not_lost() -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request

    from tests.unit.fakes import connect

    state, loop = make_state()
    other = Client(state, loop)
    conn, transport = connect(state)
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="x", target="/ws"))
    # The frame rides in the same segment as the request, before any 101.
    conn.data_received(request + masked(0x1, b"early bird"))
    other.receive()
    assert texts(other) == ["early bird"]


def test_an_unmasked_client_frame_is_a_protocol_error_1002() -> None:
    state, loop = make_state()
    a = Client(state, loop)
    a.send_raw(masked(0x1, b"naked", mask=False))
    a.receive()
    assert [c.code for c in closes(a)] == [1002]
    assert a.transport.eof_written, "the server half-closes after a protocol error"


def test_invalid_utf8_closes_with_1007_and_is_delivered_to_nobody() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send_raw(masked(0x1, b"ok \xc3\x28"))
    a.receive(), b.receive()
    assert [c.code for c in closes(a)] == [1007]
    assert texts(b) == []


def test_an_oversized_message_closes_with_1009_and_is_delivered_to_nobody() -> None:
    state, loop = make_state(max_message=1000)
    a, b = Client(state, loop), Client(state, loop)
    a.send(TextMessage("x" * 1001))
    a.receive(), b.receive()
    assert [c.code for c in closes(a)] == [1009]
    assert texts(b) == []


def test_multibyte_text_is_measured_in_bytes() -> None:
    state, loop = make_state(max_message=1000)
    a, b = Client(state, loop), Client(state, loop)
    a.send(TextMessage("é" * 400))  # 800 bytes: fits
    a.send(TextMessage("é" * 501))  # 1002 bytes in 501 characters: too big
    a.receive(), b.receive()
    assert texts(b) == ["é" * 400]
    assert [c.code for c in closes(a)] == [1009]


def test_an_oversized_fragmented_message_is_refused_before_it_is_whole() -> None:
    state, loop = make_state(max_message=1000)
    a, b = Client(state, loop), Client(state, loop)
    a.send(BytesMessage(b"x" * 600, message_finished=False))
    assert closes(a) == []
    a.send(BytesMessage(b"x" * 600, message_finished=False))
    a.receive(), b.receive()
    assert [c.code for c in closes(a)] == [1009]
    assert not any(isinstance(e, BytesMessage) for e in b.events)


def test_a_frame_claiming_a_huge_length_is_refused_without_buffering_it() -> None:
    state, loop = make_state(max_message=1000)
    a = Client(state, loop)
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**62) + b"\x00\x00\x00\x00"
    a.send_raw(header + b"y" * 1200)
    a.receive()
    assert [c.code for c in closes(a)] == [1009]


def test_a_client_close_is_echoed_and_the_server_drops_tcp() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send(CloseConnection(code=1000, reason="bye"))
    a.receive()
    assert [c.code for c in closes(a)] == [1000]
    assert a.transport.closed
    loop.run_ready()  # connection_lost
    b.send(TextMessage("after"))
    b.receive()
    assert a.transport.take() == b""


def test_what_was_queued_for_a_client_goes_out_before_the_echo_of_its_close() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    b.send(TextMessage("just before"))  # queued for a, flushed at the end of the iteration
    a.send(CloseConnection(code=1000, reason="bye"))
    loop.run_ready()
    data = a.transport.take()
    close = masked(0x8, struct.pack("!H", 1000) + b"bye", mask=False)
    assert data.endswith(close), "nothing may follow the close frame"
    a.ws.receive_data(data)
    assert [type(e) for e in a.ws.events()] == [TextMessage, CloseConnection]


def test_pings_are_answered_with_pongs() -> None:
    state, loop = make_state()
    a = Client(state, loop)
    a.send(Ping(b"are you there"))
    a.receive()
    assert [e.payload for e in a.events if isinstance(e, Pong)] == [b"are you there"]


def test_keepalive_pings_and_closes_a_client_that_never_answers() -> None:
    from rawchat.server import keepalive as Keepalive

    state, loop = make_state(ping_interval=20.0, ping_timeout=10.0)
    keepalive = Keepalive(state)
    keepalive.start()
    alive, silent = Client(state, loop), Client(state, loop)
    loop.advance(20.0)
    for client in (alive, silent):
        client.receive()
        assert any(isinstance(e, Ping) for e in client.events)
    alive.send(Pong(b""))
    loop.advance(10.0)
    alive.receive(), silent.receive()
    assert [c.code for c in closes(silent)] == [1011]
    assert closes(alive) == []


def test_keepalive_waits_for_a_client_it_holds_and_times_it_out_once_it_reads() -> None:
    from rawchat.server import keepalive as Keepalive

    state, loop = make_state(ping_interval=20.0, ping_timeout=10.0)
    Keepalive(state).start()
    held = Client(state, loop)
    loop.advance(20.0)
    assert held.conn.driver is not None
    held.conn.driver.hold()  # flow control reads nothing from it: its pong cannot arrive
    loop.advance(30.0)  # a deadline passes, and the next ping's too
    held.receive()
    assert closes(held) == []
    assert not held.conn.driver.take_turn()  # released, and reading again: now silence counts
    loop.advance(40.0)
    held.receive()
    assert [c.code for c in closes(held)] == [1011]


def test_an_idle_client_holds_no_parser_between_pongs() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    assert a.conn.websocket.parser is None  # nothing received since the upgrade
    a.send(Pong(b""))
    assert a.conn.websocket.parser is None  # made for the pong, dropped after it
    a.send(TextMessage("hello"))
    assert a.conn.websocket.parser is not None
    a.send(Pong(b""))
    assert a.conn.websocket.parser is None
    a.send(TextMessage("again"))
    b.receive()
    assert texts(b) == ["hello", "again"]


def test_a_pong_amid_a_fragmented_message_keeps_the_parser() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    a.send(TextMessage("frag", message_finished=False))
    a.send(Pong(b""))
    assert a.conn.websocket.parser is not None
    a.send_raw(masked(0x0, b"mented"))
    b.receive()
    assert texts(b) == ["fragmented"]


def test_a_pong_with_more_bytes_behind_it_keeps_the_parser() -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)
    hello = masked(0x1, b"hello")
    a.send_raw(masked(0xA, b"") + hello[:8])  # a pong, then a frame not yet whole
    assert a.conn.websocket.parser is not None
    a.send_raw(hello[8:])
    a.send_raw(masked(0xA, b"") + masked(0x8, struct.pack("!H", 1000)))  # pong and close
    a.receive()
    assert [c.code for c in closes(a)] == [1000]
    b.receive()
    assert texts(b) == ["hello"]


def test_the_rate_bucket_is_made_by_a_message_and_dropped_once_full() -> None:
    state, loop = make_state(rate=1.0, burst=2)
    a, b = Client(state, loop), Client(state, loop)
    assert a.conn.websocket.inbound.bucket is None
    for text in ("1", "2"):  # the whole burst
        a.send(TextMessage(text))
    assert a.conn.websocket.inbound.bucket is not None
    a.send(Pong(b""))
    assert a.conn.websocket.inbound.bucket is not None  # not full yet: what it knows still counts
    loop.advance(2.0)
    a.send(Pong(b""))
    assert a.conn.websocket.inbound.bucket is None
    for text in ("3", "4", "5"):  # a full burst again, then one more: it waits, not dropped
        a.send(TextMessage(text))
    b.receive()
    assert texts(b) == ["1", "2", "3", "4"]
    loop.advance(1.0)
    b.receive()
    assert texts(b) == ["1", "2", "3", "4", "5"]


def test_the_server_can_close_a_client_it_never_parsed_for() -> None:
    state, loop = make_state()
    a = Client(state, loop)
    assert a.conn.websocket.parser is None
    a.conn.close(1001, "going away")
    a.receive()
    assert [c.code for c in closes(a)] == [1001]


def test_a_client_that_does_not_answer_our_close_is_aborted() -> None:
    state, loop = make_state(close_timeout=2.0)
    a = Client(state, loop)
    a.conn.close(1001, "going away")
    a.receive()
    assert [c.code for c in closes(a)] == [1001]
    loop.advance(2.1)
    assert a.transport.aborted


def test_a_slow_client_is_evicted_with_1008_and_aborted() -> None:
    state, loop = make_state(max_buffer=4096, close_timeout=2.0)
    fast, slow = Client(state, loop), Client(state, loop)
    slow.transport.buffered = 4097  # it stopped reading: it owes more than max_buffer
    fast.send(TextMessage("y" * 200))
    fast.receive()
    assert texts(fast) == ["y" * 200]
    slow.receive()
    assert texts(slow) == []
    assert [c.code for c in closes(slow)] == [1008]
    assert state.hub.evictions == 1
    loop.advance(2.1)
    assert slow.transport.aborted
    fast.send(TextMessage("still here"))
    fast.receive()
    assert texts(fast)[-1] == "still here"


def test_a_bug_while_handling_a_message_closes_only_that_connection_with_1011(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state, loop = make_state()
    a, b = Client(state, loop), Client(state, loop)

    def broken(session: object, data: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(state.chat, "plain_message", broken)
    a.send(TextMessage("boom"))
    a.receive()
    assert [c.code for c in closes(a)] == [1011]
    assert not b.transport.closed
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.exc_info is not None
    caplog.clear()  # this test expects the error that the suite otherwise forbids


def test_many_pings_in_one_read_get_a_bounded_number_of_pongs_in_order() -> None:
    from rawchat.websocket_phase import PINGS_EACH_ANSWERED

    state, loop = make_state()
    a = Client(state, loop)
    a.send_raw(b"".join(a.ws.send(Ping(b"%d" % i)) for i in range(100)))
    a.receive()
    expected = [b"%d" % i for i in range(PINGS_EACH_ANSWERED)] + [b"99"]
    assert [e.payload for e in a.events if isinstance(e, Pong)] == expected


def test_a_closing_server_answers_no_ping() -> None:
    state, loop = make_state()
    a = Client(state, loop)
    a.conn.close(1001, "going away")
    a.send(Ping(b"late"))
    a.receive()
    assert [e for e in a.events if isinstance(e, Pong)] == []
