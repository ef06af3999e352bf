"""Flow control's held input on its own: the calls a connection makes, no sockets, no wsproto."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import TextMessage

from rawchat.held import AfterTurn, HeldInput, Hold
from tests.unit.fakes import Client, make_state


def held() -> HeldInput:
    held_input = HeldInput()
    held_input.hold()
    return held_input


def test_a_connection_nobody_holds_reads_freely_and_closes_at_once_at_eof() -> None:
    held_input = HeldInput()
    assert held_input.state is Hold.READING and not held_input.held
    assert held_input.backlog == 0
    assert held_input.half_close() is False, "nothing waits: the transport may close"


def test_bytes_that_arrive_while_held_wait_in_order_for_the_turn() -> None:
    held_input = held()
    held_input.keep(b"ab")
    held_input.keep(b"")
    held_input.keep(b"cd")
    assert held_input.held and held_input.backlog == 4
    held_input.begin_turn()
    assert held_input.state is Hold.TURN and not held_input.held
    assert held_input.take_parked() is False, "no frames were parked"
    assert held_input.take_backlog() == b"abcd"
    assert held_input.end_turn() is AfterTurn.READ
    assert held_input.state is Hold.READING and held_input.backlog == 0


def test_a_hold_in_the_middle_of_a_read_parks_frames_which_a_turn_hands_back_first() -> None:
    held_input = HeldInput()
    held_input.hold()  # a verdict, while wsproto's events were handled
    held_input.park()
    held_input.keep(b"rest of the read")
    assert held_input.state is Hold.HELD_WITH_FRAMES
    held_input.begin_turn()
    assert held_input.take_parked() is True
    assert held_input.take_parked() is False, "handed back once"
    assert held_input.take_backlog() == b"rest of the read"
    assert held_input.end_turn() is AfterTurn.READ


def test_held_again_while_parked_frames_are_handled_the_backlog_keeps_its_place() -> None:
    held_input = held()
    held_input.park()
    held_input.keep(b"later")
    held_input.begin_turn()
    assert held_input.take_parked()
    held_input.hold()  # the first parked frame was past the rate again
    held_input.park()
    assert held_input.take_backlog() == b"", "not fed while held"
    assert held_input.end_turn() is AfterTurn.HOLD
    assert held_input.state is Hold.HELD_WITH_FRAMES and held_input.backlog == 5
    held_input.begin_turn()
    assert held_input.take_parked() and held_input.take_backlog() == b"later"
    assert held_input.end_turn() is AfterTurn.READ


def test_a_hold_while_the_backlog_is_fed_keeps_the_unfed_rest_for_the_next_turn() -> None:
    held_input = held()
    held_input.keep(b"0123456789")
    held_input.begin_turn()
    fed = held_input.take_backlog()
    held_input.hold()  # after the first slice
    held_input.keep(fed[4:])
    assert held_input.end_turn() is AfterTurn.HOLD
    held_input.begin_turn()
    assert held_input.take_backlog() == b"456789"


def test_a_client_that_half_closes_while_held_is_closed_once_its_input_is_handled() -> None:
    held_input = held()
    held_input.keep(b"messages")
    assert held_input.half_close() is True, "kept open: its input still waits"
    held_input.begin_turn()
    held_input.take_backlog()
    held_input.hold()  # its share again: one more turn
    assert held_input.end_turn() is AfterTurn.HOLD
    held_input.begin_turn()
    assert held_input.end_turn() is AfterTurn.CLOSE


def test_a_turn_that_leaves_input_unfed_stays_held_rather_than_lose_it() -> None:
    held_input = held()
    held_input.begin_turn()
    held_input.keep(b"left over")  # kept without a hold
    assert held_input.end_turn() is AfterTurn.HOLD
    assert held_input.held


def test_the_receive_window_is_fixed_at_the_first_pause_only() -> None:
    held_input = held()
    assert held_input.first_pause() is True
    held_input.begin_turn()
    held_input.end_turn()
    held_input.hold()
    assert held_input.first_pause() is False


def test_a_gone_connection_keeps_nothing() -> None:
    held_input = held()
    held_input.keep(b"x" * 100)
    held_input.forget()
    assert held_input.backlog == 0


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=20), st.integers(0, 7))
def test_whatever_the_holds_every_byte_comes_back_once_in_order(
    reads: list[bytes], every: int
) -> None:
    """Bytes kept while held are fed back by turns, a few at a time, each exactly once."""
    held_input = HeldInput()
    fed = bytearray()

    def feed(data: bytes) -> None:
        # Like the adapter: slices of two, held again after ``every`` slices.
        for i, start in enumerate(range(0, len(data), 2)):
            if held_input.held:
                held_input.keep(data[start:])
                return
            fed.extend(data[start : start + 2])
            if every and i % every == every - 1:
                held_input.hold()

    for data in reads:
        if held_input.state is Hold.READING:
            feed(data)
        else:
            held_input.keep(data)
    for _ in range(sum(map(len, reads)) + 1):  # bounded: each turn feeds two bytes or more
        if not held_input.held:
            break
        held_input.begin_turn()
        feed(held_input.take_backlog())
        held_input.end_turn()
    assert not held_input.held
    assert bytes(fed) == b"".join(reads)


def test_through_a_connection_a_read_while_held_waits_behind_the_parked_frames() -> None:
    """TLS may hand over what it had decrypted after reading was paused."""
    state, loop = make_state(rate=10.0, burst=2)
    sender, reader = Client(state, loop), Client(state, loop)
    sender.send_raw(b"".join(sender.ws.send(TextMessage(f"a{i}")) for i in range(4)))
    assert sender.conn.input.state is Hold.HELD_WITH_FRAMES
    sender.send_raw(b"".join(sender.ws.send(TextMessage(f"b{i}")) for i in range(2)))
    assert sender.conn.input.backlog > 0 and not sender.transport.reading
    for _ in range(10):  # a tenth of a second per message: bounded, on the fake clock
        loop.advance(0.1)
    reader.receive()
    assert [e.data for e in reader.events if isinstance(e, TextMessage)] == [
        "a0",
        "a1",
        "a2",
        "a3",
        "b0",
        "b1",
    ], "every message, in the order sent"
    assert sender.conn.input.state is Hold.READING and sender.transport.reading
