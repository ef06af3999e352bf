"""Flow control: senders are held while a client is behind, and released when it catches up."""

from __future__ import annotations

from wsproto.events import TextMessage

from tests.unit.fakes import Client, make_state


def test_a_sender_is_held_while_a_client_is_congested_and_released_when_it_drains() -> None:
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, behind = Client(state, loop), Client(state, loop)
    assert behind.conn.outbox is not None
    behind.conn.pause_writing()  # its transport passed the pressure mark
    sender.send(TextMessage("hello"))
    assert not sender.transport.reading, "the server stops reading the sender"
    behind.conn.resume_writing()
    loop.run_ready()
    assert sender.transport.reading, "and resumes once nobody is behind"
    assert state.hub.evictions == 0


def test_a_client_that_stays_congested_is_evicted_and_senders_go_on() -> None:
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, stuck = Client(state, loop), Client(state, loop)
    stuck.conn.pause_writing()
    sender.send(TextMessage("hello"))
    assert not sender.transport.reading
    loop.advance(2.1)
    assert state.hub.evictions == 1
    loop.run_ready()
    assert sender.transport.reading
    stuck.receive()
    assert stuck.events[-1].code == 1008  # type: ignore[attr-defined]


def test_a_flood_within_one_iteration_holds_the_sender_until_the_flush() -> None:
    state, loop = make_state(max_buffer=4096)  # pressure mark: 1024 bytes
    sender, reader = Client(state, loop), Client(state, loop)
    flood = b"".join(sender.ws.send(TextMessage("y" * 100)) for _ in range(20))
    sender.send_raw(flood)  # one read, twenty messages
    assert not sender.transport.reading, "held once the queues passed the pressure mark"
    assert state.hub.high_water <= 1024 + 102, "the rest of the read waits, unhandled"
    while loop.ready:  # the held messages are handled after the release, in order
        reader.receive()
    assert sender.transport.reading, "released by the flush, then reading again"
    assert [e.data for e in reader.events if isinstance(e, TextMessage)] == ["y" * 100] * 20
    assert state.hub.evictions == 0


def test_bytes_read_while_held_are_handled_in_order_after_the_release() -> None:
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, behind, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()  # one client of three: a third are behind
    sender.send(TextMessage("first"))
    assert not sender.transport.reading
    sender.send(TextMessage("second"))  # a read already under way when the pause came
    reader.receive()
    assert [e.data for e in reader.events if isinstance(e, TextMessage)] == ["first"]
    behind.conn.resume_writing()
    sender.send(TextMessage("third"))  # arrives before the held bytes were handled
    while loop.ready:
        reader.receive()
    texts = [e.data for e in reader.events if isinstance(e, TextMessage)]
    assert texts == ["first", "second", "third"]


def test_holds_again_and_again_keep_wsproto_fed_one_message_at_a_time() -> None:
    state, loop = make_state(max_buffer=4096, max_message=256, rate=0)
    sender, behind, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()
    flood = (sender.ws.send(TextMessage(f"{i:03d}" + "y" * 97)) for i in range(100))
    sender.send_raw(b"".join(flood))
    step = 256 + 14  # what rawchat hands wsproto at a time: --max-message plus a header
    for _ in range(20):  # a release, then behind again before the held sender catches up
        behind.conn.resume_writing()
        behind.conn.pause_writing()
        loop.run_ready()
        assert sender.conn.ws is not None
        # wsproto's own buffer (read here because nothing else shows it): the
        # frames a hold left in it are handled before it gets more.
        assert len(sender.conn.ws._proto._frame_decoder.buffer) <= step
    behind.conn.resume_writing()
    while loop.ready:
        reader.receive()
    texts = [e.data for e in reader.events if isinstance(e, TextMessage)]
    assert [t[:3] for t in texts] == [f"{i:03d}" for i in range(100)]


def test_held_senders_take_turns_one_message_each() -> None:
    state, loop = make_state(max_buffer=4096, rate=0)
    alice, bob = Client(state, loop), Client(state, loop)
    behind, reader = Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()  # a quarter of the clients: the fan-out is behind
    for client, name in ((alice, "a"), (bob, "b")):
        client.send_raw(b"".join(client.ws.send(TextMessage(f"{name}{i:02d}")) for i in range(20)))
    behind.conn.resume_writing()
    while loop.ready:
        reader.receive()
    texts = [e.data for e in reader.events if isinstance(e, TextMessage)]
    assert sorted(texts) == [f"{name}{i:02d}" for name in "ab" for i in range(20)]
    assert "".join(t[0] for t in texts) == "ab" * 20, "in turns, not one sender's backlog first"
    assert alice.transport.reading and bob.transport.reading, "both read again once caught up"


def test_messages_waiting_for_their_turn_survive_the_senders_eof() -> None:
    state, loop = make_state(max_buffer=4096, rate=0)
    sender, behind, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()
    sender.send_raw(b"".join(sender.ws.send(TextMessage(f"m{i}")) for i in range(5)))
    assert not sender.transport.reading, "held, with messages still waiting"
    # The client hangs up (sends FIN) having said all it had to say.
    if not sender.conn.eof_received():
        sender.transport.close()  # what asyncio does when eof_received returns a false value
    loop.run_ready()
    behind.conn.resume_writing()
    while loop.ready:
        reader.receive()
    texts = [e.data for e in reader.events if isinstance(e, TextMessage)]
    assert texts == [f"m{i}" for i in range(5)]
    assert sender.transport.closed, "closed once what it sent was handled"
