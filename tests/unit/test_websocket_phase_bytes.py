"""The WebSocket phase alone: client bytes in, actions out, no transport and no loop.

As h11's and wsproto's own tests do, each test feeds the bytes a client would
send (framed by wsproto's client side, or by hand where a client library
would refuse) and reads what the phase asks for: bytes to write, timers,
leaving the chat, closing the transport.
"""

from __future__ import annotations

import struct

from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from rawchat.hub import Outbox
from rawchat.rooms import Session
from rawchat.websocket_phase import (
    PINGS_EACH_ANSWERED,
    Abort,
    Action,
    CancelTimer,
    CloseTransport,
    Closing,
    HalfClose,
    Leave,
    Send,
    SetTimer,
    WebSocketPhase,
)
from tests.unit.fakes import FakeTransport, Owner, Peer, make_state, masked


def plain_phase(**config: object) -> tuple[WebSocketPhase, Outbox]:
    """A plain client's phase, in the lobby; what the chat relays to it lands in the outbox."""
    state, _ = make_state(**config)
    phase = state.websocket_phase(v1=False)
    outbox = Outbox(FakeTransport(), Owner())
    phase.session = state.chat.connect_plain(outbox, Peer())
    return phase, outbox


def feed(phase: WebSocketPhase, data: bytes | bytearray) -> list[Action]:
    """One read: the bytes in, every event handled, the pings answered; what it asks for."""
    phase.receive_data(bytes(data))
    for event in phase.events():
        phase.handle(event)
    phase.answer_pings()
    return phase.take_actions()


def frames(data: bytes | bytearray) -> list[Frame]:
    """The frames in what the server wrote, as a client parses them."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(bytes(data))
    return list(client.received_frames())


def sent(actions: list[Action]) -> list[Frame]:
    return frames(b"".join(a.data for a in actions if isinstance(a, Send)))


def closes(actions: list[Action]) -> list[int]:
    return [f.payload[0] for f in sent(actions) if f.opcode is Opcode.CLOSE]


def relayed(outbox: Outbox) -> list[str]:
    """The text messages the chat queued for this client."""
    return [f.payload for f in frames(b"".join(outbox.frames)) if f.opcode is Opcode.TEXT]


def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def test_a_client_close_is_echoed_after_what_was_queued_and_tcp_is_dropped() -> None:
    phase, _ = plain_phase()
    actions = feed(phase, client().close(1000, "bye"))
    assert [type(a) for a in actions] == [Leave, Send, CloseTransport]
    assert actions[0] == Leave(flush=True), "frames queued before the close go out first"
    assert closes(actions) == [1000]
    assert phase.closing is Closing.DONE and phase.close_code == 1000


def test_a_server_close_waits_for_the_answer_then_drops_tcp() -> None:
    phase, _ = plain_phase(close_timeout=3.0)
    phase.close(1001, "going away")
    actions = phase.take_actions()
    assert actions[0] == Leave(flush=True)
    assert closes(actions) == [1001]
    assert actions[-1] == SetTimer(3.0)
    assert phase.closing is Closing.CLOSE_SENT
    assert feed(phase, client().close(1001, "")) == [CloseTransport()]
    assert phase.closing is Closing.DONE
    phase.timer_fired()  # a timer that lost the race does nothing
    assert phase.take_actions() == []


def test_a_client_that_never_answers_our_close_is_aborted_when_the_timer_fires() -> None:
    phase, _ = plain_phase()
    phase.close(1001)
    phase.take_actions()
    phase.timer_fired()
    assert phase.take_actions() == [Abort()]


def test_a_second_close_sends_no_second_frame() -> None:
    phase, _ = plain_phase()
    phase.close(1001)
    phase.take_actions()
    phase.close(1008, "too slow")
    phase.fail(1002)
    assert phase.take_actions() == []
    assert phase.close_code == 1001


def test_messages_after_our_close_reach_nobody() -> None:
    phase, outbox = plain_phase()
    phase.close(1001)
    phase.take_actions()
    outbox.frames.clear()
    feed(phase, client().send_data("late", fin=True))
    assert relayed(outbox) == []


def test_a_header_declaring_too_much_closes_1009_before_the_payload_comes() -> None:
    phase, outbox = plain_phase(max_message=1000)
    header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", 1001) + b"\x00\x00\x00\x00"
    actions = feed(phase, header)  # the header alone: not one byte of payload
    assert closes(actions) == [1009]
    assert HalfClose() in actions and phase.closing is Closing.FAILED
    assert feed(phase, b"x" * 1001) == [], "what follows is discarded"
    assert relayed(outbox) == []


def test_invalid_utf8_closes_1007_and_is_relayed_to_nobody() -> None:
    phase, outbox = plain_phase()
    actions = feed(phase, masked(0x1, b"ok \xc3\x28"))
    assert closes(actions) == [1007]
    assert HalfClose() in actions
    assert relayed(outbox) == []


def test_an_unmasked_frame_is_a_protocol_error_1002() -> None:
    phase, _ = plain_phase()
    actions = feed(phase, masked(0x1, b"naked", mask=False))
    assert closes(actions) == [1002]
    assert actions[0] == Leave(flush=False), "a client that broke the protocol gets no more"


def pongs(actions: list[Action]) -> list[bytes]:
    return [f.payload for f in sent(actions) if f.opcode is Opcode.PONG]


def test_each_ping_of_one_read_gets_its_own_pong_in_order() -> None:
    phase, _ = plain_phase()
    peer = client()
    actions = feed(phase, b"".join(peer.ping(b"ping %d" % i) for i in range(10)))
    assert pongs(actions) == [b"ping %d" % i for i in range(10)]
    assert len([a for a in actions if isinstance(a, Send)]) == 1, "one write for all of them"


def test_past_the_bound_one_read_gets_one_more_pong_for_the_latest_ping() -> None:
    phase, _ = plain_phase()
    peer = client()
    count = PINGS_EACH_ANSWERED + 24
    actions = feed(phase, b"".join(peer.ping(b"%d" % i) for i in range(count)))
    expected = [b"%d" % i for i in range(PINGS_EACH_ANSWERED)] + [b"%d" % (count - 1)]
    assert pongs(actions) == expected
    assert pongs(feed(phase, peer.ping(b"next"))) == [b"next"], "the bound is per read"


def test_pings_that_come_with_the_client_close_get_no_pong_after_it() -> None:
    phase, _ = plain_phase()
    peer = client()
    actions = feed(phase, peer.ping(b"a") + peer.ping(b"b") + peer.close(1000, ""))
    assert [f.opcode for f in sent(actions)] == [Opcode.CLOSE]


def test_a_closing_phase_answers_no_ping() -> None:
    phase, _ = plain_phase()
    phase.close(1001)
    phase.take_actions()
    assert sent(feed(phase, client().ping(b"late"))) == []


def test_fragments_are_relayed_once_whole_whatever_the_reads() -> None:
    phase, outbox = plain_phase()
    peer = client()
    data = peer.send_data("hel", fin=False) + peer.ping(b"amid") + peer.send_data("lo", fin=True)
    for i in range(len(data)):  # one byte per read
        feed(phase, data[i : i + 1])
        if i < len(data) - 1:
            assert relayed(outbox) == []
    assert relayed(outbox) == ["hello"]


def test_a_pong_at_rest_drops_the_parser_and_a_message_makes_it_again() -> None:
    phase, outbox = plain_phase()
    peer = client()
    feed(phase, peer.pong(b""))
    assert phase.parser is None
    feed(phase, peer.send_data("hi", fin=True))
    assert relayed(outbox) == ["hi"]


def test_a_v1_client_without_a_hello_is_closed_4001_when_the_timer_fires() -> None:
    state, _ = make_state(handshake_timeout=5.0)
    phase = state.websocket_phase(v1=True)
    phase.session = state.chat.connect_v1(Outbox(FakeTransport(), Owner()), Peer())
    assert phase.take_actions() == [SetTimer(5.0)]
    phase.timer_fired()
    assert closes(phase.take_actions()) == [4001]


def test_a_v1_hello_cancels_the_hello_timer_once() -> None:
    state, _ = make_state(handshake_timeout=5.0)
    phase = state.websocket_phase(v1=True)
    session: Session = state.chat.connect_v1(Outbox(FakeTransport(), Owner()), Peer())
    phase.session = session
    phase.take_actions()
    peer = client()
    assert feed(phase, peer.send_data('{"type":"hello","nick":"ada"}', fin=True)) == [CancelTimer()]
    assert session.greeted
    assert feed(phase, peer.send_data('{"type":"msg","room":"lobby","text":"hi"}', fin=True)) == []
