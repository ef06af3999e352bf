"""The held input feeding the WebSocket phase: client bytes in, actions out, no transport.

What a connection's driver does between the two is played by a recorder: it
takes the phase's actions as they come and, as flow control would, holds the
input at a Shape or a TurnOver. Each test feeds what a client would send and
reads what reached the chat (the outbox) and what the phase asked for.
"""

from __future__ import annotations

from wsproto.frame_protocol import FrameProtocol, Opcode

from rawchat.held import AfterTurn, HeldInput, Hold
from rawchat.http_phase import Phase
from rawchat.hub import Outbox
from rawchat.websocket_phase import (
    Action,
    CloseTransport,
    Closing,
    HalfClose,
    Send,
    Shape,
    TurnOver,
    WebSocketPhase,
)
from tests.unit.fakes import masked
from tests.unit.test_websocket_phase_bytes import frames, plain_phase, relayed


class Recorder:
    """The feeder: it records the phase's actions and holds at a verdict that asks for it."""

    def __init__(self, websocket: WebSocketPhase, held: HeldInput) -> None:
        self.websocket = websocket
        self.held = held
        self.phase = Phase.WEBSOCKET
        self.actions: list[Action] = []

    def carry_out(self) -> None:
        for action in self.websocket.take_actions():
            self.actions.append(action)
            if isinstance(action, Shape | TurnOver):
                self.held.hold()  # flow control holds the publisher


def texts(*messages: str) -> bytes:
    return b"".join(FrameProtocol(client=True, extensions=[]).send_data(m) for m in messages)


def setup(**config: object) -> tuple[WebSocketPhase, Outbox, HeldInput, Recorder]:
    phase, outbox = plain_phase(**config)
    held = HeldInput()
    return phase, outbox, held, Recorder(phase, held)


def turn(held: HeldInput, phase: WebSocketPhase, feeder: Recorder) -> AfterTurn:
    """What a turn does: what waits is handled until held again or none is left."""
    held.begin_turn()
    held.receive(b"", phase, feeder)
    return held.end_turn()


def test_one_read_reaches_the_chat_whole_and_its_pings_are_answered_once_at_the_end() -> None:
    phase, outbox, held, feeder = setup()
    data = texts("a") + masked(0x9, b"p1") + texts("b") + masked(0x9, b"p2")
    held.receive(data, phase, feeder)
    assert relayed(outbox) == ["a", "b"]
    sends = [a for a in feeder.actions if isinstance(a, Send)]
    assert len(sends) == 1, "the pongs of one read go out in one write"
    assert [f.payload for f in frames(sends[0].data) if f.opcode is Opcode.PONG] == [b"p1", b"p2"]
    assert held.state is Hold.READING


def test_a_read_longer_than_a_message_is_fed_a_message_at_a_time() -> None:
    phase, outbox, held, feeder = setup(max_message=100)
    messages = [c * 100 for c in "xyz"]
    held.receive(texts(*messages), phase, feeder)
    assert relayed(outbox) == messages
    assert phase.parser is not None and phase.at_rest(), "nothing left over in wsproto"


def test_a_hold_parks_the_parsed_frames_and_keeps_the_rest_for_the_turns_in_order() -> None:
    phase, outbox, held, feeder = setup(rate=1.0, burst=2, max_message=100)
    first = texts("m0", "m1", "m2")  # one slice: parsed together
    rest = texts(*(f"n{i}" for i in range(3))) + texts("x" * 100)  # more than a slice
    held.receive(first + rest, phase, feeder)
    assert relayed(outbox) == ["m0", "m1"], "shaped at the second message: the rest waits"
    assert held.state is Hold.HELD_WITH_FRAMES and held.backlog > 0
    assert any(isinstance(a, Shape) for a in feeder.actions)
    held.receive(texts("late"), phase, feeder)  # what TLS still hands over while held
    for _ in range(10):  # each turn handles one message and is held again
        if turn(held, phase, feeder) is AfterTurn.READ:
            break
    assert relayed(outbox) == ["m0", "m1", "m2", "n0", "n1", "n2", "x" * 100, "late"]
    assert held.state is Hold.READING and held.backlog == 0


def test_a_protocol_error_stops_the_feeding_and_the_rest_is_discarded() -> None:
    phase, outbox, held, feeder = setup(max_message=100)
    bad = bytes([0x81, 0x05]) + b"hello"  # an unmasked client frame
    held.receive(texts("ok") + bad + texts("after"), phase, feeder)
    assert relayed(outbox) == ["ok"]
    assert phase.closing is Closing.FAILED
    assert HalfClose() in feeder.actions


def test_a_connection_lost_while_an_event_is_handled_stops_the_feeding() -> None:
    phase, outbox, held, feeder = setup(rate=1.0, burst=2)

    def lost_at_the_verdict() -> None:
        feeder.actions += phase.take_actions()
        feeder.phase = Phase.CLOSED  # the transport went while the action was carried out

    feeder.carry_out = lost_at_the_verdict  # type: ignore[method-assign]
    held.receive(texts("a", "b", "c", "d"), phase, feeder)
    assert relayed(outbox) == ["a", "b"], "nothing handled after the loss"
    assert CloseTransport() not in feeder.actions
