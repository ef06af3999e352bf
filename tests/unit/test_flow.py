"""Flow control: a slow reader pays alone; a sender past --rate is slowed, never dropped."""

from __future__ import annotations

from wsproto.events import CloseConnection, TextMessage

from tests.unit.fakes import Client, make_state


def texts(client: Client) -> list[str]:
    return [e.data for e in client.events if isinstance(e, TextMessage)]


def test_a_congested_client_holds_no_sender_back() -> None:
    """Before, one congested client in four held every publisher (the fan-out
    was judged behind): one slow reader froze the room."""
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, behind, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()  # its transport passed the pressure mark
    for i in range(5):
        sender.send(TextMessage(f"m{i}"))
        reader.receive()
    assert sender.transport.reading, "the sender is read as before"
    assert texts(reader) == [f"m{i}" for i in range(5)]
    assert state.flow.holds == 0


def test_a_client_that_stays_congested_is_evicted_with_1008_and_the_others_go_on() -> None:
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, stuck, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    stuck.conn.pause_writing()
    loop.advance(2.1)
    assert state.hub.evictions == 1
    stuck.receive()
    assert isinstance(stuck.events[-1], CloseConnection) and stuck.events[-1].code == 1008
    sender.send(TextMessage("after"))
    reader.receive()
    assert texts(reader) == ["after"]


def test_a_sender_past_its_rate_is_shaped_and_loses_nothing() -> None:
    state, loop = make_state(rate=10.0, burst=3)
    sender, reader = Client(state, loop), Client(state, loop)
    burst = b"".join(sender.ws.send(TextMessage(f"{i:02d}")) for i in range(12))
    sender.send_raw(burst)  # one read, twelve messages
    reader.receive()
    assert texts(reader) == ["00", "01", "02"], "the burst goes at once, then it waits"
    assert not sender.transport.reading, "no more is read from it meanwhile"
    for _ in range(20):  # a tenth of a second per message: bounded, on the fake clock
        loop.advance(0.1)
        reader.receive()
    assert texts(reader) == [f"{i:02d}" for i in range(12)], "every message, in order"
    assert sender.transport.reading, "reading again once it is within its rate"
    assert sender.transport.closed is False


def test_shaped_senders_take_turns_one_message_each() -> None:
    state, loop = make_state(rate=10.0, burst=1)
    alice, bob, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    for client, name in ((alice, "a"), (bob, "b")):
        client.send_raw(b"".join(client.ws.send(TextMessage(f"{name}{i}")) for i in range(5)))
    for _ in range(10):
        loop.advance(0.1)
        reader.receive()
    got = texts(reader)
    assert sorted(got) == sorted(f"{n}{i}" for n in "ab" for i in range(5))
    assert "".join(t[0] for t in got) == "ab" * 5, "in turns, not one sender's backlog first"


def test_a_sender_shaped_without_a_break_past_flood_timeout_is_closed_4002() -> None:
    state, loop = make_state(rate=10.0, burst=1, flood_timeout=1.0, max_message=256)
    flooder, reader = Client(state, loop), Client(state, loop)
    handled = 0
    for _ in range(30):  # 0.1 s of fake time each: a client that never lets up
        flooder.send_raw(b"".join(flooder.ws.send(TextMessage("f")) for _ in range(3)))
        loop.advance(0.1)
        reader.receive()
        handled = len(texts(reader))
        flooder.receive()
        if any(isinstance(e, CloseConnection) for e in flooder.events):
            break
    closes = [e for e in flooder.events if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [4002]
    assert 9 <= handled <= 13, "handled at its rate until then, not dropped"


def test_a_sender_that_pauses_between_bursts_is_never_closed() -> None:
    state, loop = make_state(rate=10.0, burst=5, flood_timeout=1.0)
    sender, reader = Client(state, loop), Client(state, loop)
    for round_ in range(5):
        sender.send_raw(b"".join(sender.ws.send(TextMessage(f"{round_}")) for _ in range(8)))
        loop.advance(2.0)  # the backlog is worked off, then it is quiet
        loop.advance(2.0)
        reader.receive()
    assert len(texts(reader)) == 40
    sender.receive()
    assert not any(isinstance(e, CloseConnection) for e in sender.events)


def test_a_shaped_client_that_half_closes_still_has_every_message_handled() -> None:
    state, loop = make_state(rate=10.0, burst=1)
    sender, reader = Client(state, loop), Client(state, loop)
    sender.send_raw(b"".join(sender.ws.send(TextMessage(f"h{i}")) for i in range(4)))
    if sender.conn.eof_received() is None:  # what asyncio does then: close the transport
        sender.transport.close()
    for _ in range(10):
        loop.advance(0.1)
        reader.receive()
    assert texts(reader) == ["h0", "h1", "h2", "h3"], "read before the EOF, so handled"
    assert sender.transport.closed, "and closed once they are"
