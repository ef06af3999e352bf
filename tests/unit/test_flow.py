"""Flow control: a slow reader pays alone; a sender past --rate is slowed, never dropped;
an overloaded loop serves its publishers in turn."""

from __future__ import annotations

from wsproto.events import CloseConnection, TextMessage

from rawchat.server import ServerState
from rawchat.shared import READ_SIZE
from tests.unit.fakes import Client, FakeLoop, make_state


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


def test_a_sender_that_half_closes_while_a_reader_is_congested_has_every_message_relayed() -> None:
    """Send-then-shut-down while someone in the room is behind: what was read is relayed."""
    state, loop = make_state(max_buffer=4096, slow_timeout=2.0)
    sender, behind, reader = Client(state, loop), Client(state, loop), Client(state, loop)
    behind.conn.pause_writing()  # its transport passed the pressure mark
    sender.send_raw(b"".join(sender.ws.send(TextMessage(f"h{i}")) for i in range(4)))
    if sender.conn.eof_received() is None:  # what asyncio does then: close the transport
        sender.transport.close()
    behind.conn.resume_writing()
    for _ in range(10):
        loop.advance(0.1)
        reader.receive()
        behind.receive()
    assert texts(reader) == texts(behind) == ["h0", "h1", "h2", "h3"]


# -- fairness under overload (rawchat.overload) ------------------------------------------


def overload(state: ServerState, loop: FakeLoop) -> None:
    """Start watching the loop and make its next tick late: the loop falls behind."""
    state.flow.start()
    load = state.flow.load
    loop.advance(load.interval + 2 * load.enter_lag)
    loop.advance(load.interval + 2 * load.enter_lag)  # late twice in a row
    assert load.overloaded


def late_turn(state: ServerState, loop: FakeLoop) -> None:
    """Ticks up to the next turn, each late again: the loop is still behind."""
    load = state.flow.load
    for _ in range(load.turn_ticks):
        loop.advance(load.interval + load.enter_lag)
    assert load.overloaded


def flood(client: Client, name: str, count: int) -> None:
    """``count`` messages in one read: far more than one read of an honest client holds."""
    client.send_raw(b"".join(client.ws.send(TextMessage(f"{name}{i:02d}")) for i in range(count)))


def test_an_overloaded_loop_gives_flooders_and_honest_senders_equal_turns() -> None:
    state, loop = make_state()
    flooders = [Client(state, loop), Client(state, loop)]
    honest = [Client(state, loop) for _ in range(3)]
    reader = Client(state, loop)
    overload(state, loop)
    share = state.flow.load.share
    for flooder, name in zip(flooders, "fg", strict=True):
        flood(flooder, name, 8 * share)
    for tick in range(5):
        for i, client in enumerate(honest):
            client.send(TextMessage(f"h{i}-{tick}"))
        got = reader.receive()
        honest_got = [e.data for e in got if isinstance(e, TextMessage) and e.data[0] == "h"]
        assert honest_got == [f"h{i}-{tick}" for i in range(3)], "at once, never held"
        late_turn(state, loop)
    reader.receive()
    everything = texts(reader)
    for name in "fg":
        mine = [t for t in everything if t[0] == name]
        # Its share of the read, then its share of each of the five turns.
        assert mine == [f"{name}{i:02d}" for i in range(6 * share)], "a share per turn, in order"
    assert all(c.transport.reading for c in honest), "no honest sender was paused"
    assert not any(f.transport.reading for f in flooders)


def test_a_client_with_no_more_than_its_share_in_a_read_is_not_held() -> None:
    state, loop = make_state()
    sender, reader = Client(state, loop), Client(state, loop)
    overload(state, loop)
    share = state.flow.load.share
    flood(sender, "s", share)
    reader.receive()
    assert texts(reader) == [f"s{i:02d}" for i in range(share)]
    assert sender.transport.reading and state.flow.waits == 0


def test_the_flood_is_worked_off_in_turns_then_everyone_reads_freely_again() -> None:
    state, loop = make_state()
    flooder, reader = Client(state, loop), Client(state, loop)
    overload(state, loop)
    count = 8 * state.flow.load.share
    flood(flooder, "f", count)
    reader.receive()
    assert not flooder.transport.reading
    load = state.flow.load
    # On time: the loop keeps up, because the flooder takes turns.
    for _ in range(4 * load.turn_ticks):
        loop.advance(load.interval)
        reader.receive()
    assert load.overloaded, "still overloaded while it waits for turns"
    for _ in range(200):  # bounded, on the fake clock
        if not load.overloaded:
            break
        loop.advance(load.interval)
        reader.receive()
    assert not load.overloaded
    assert texts(reader) == [f"f{i:02d}" for i in range(count)], "nothing dropped, in order"
    assert flooder.transport.reading, "reading freely again"


def test_a_loop_that_keeps_up_pauses_nobody() -> None:
    state, loop = make_state()
    state.flow.start()
    flooder, reader = Client(state, loop), Client(state, loop)
    load = state.flow.load
    for round_ in range(10):
        flood(flooder, f"{round_}", 40)
        loop.advance(load.interval)  # every tick on time
        reader.receive()
        assert flooder.transport.reading
    assert len(texts(reader)) == 400
    assert not load.overloaded and load.episodes == 0
    assert state.flow.waits == 0 and state.flow.holds == 0


def test_a_flooder_held_for_its_turn_that_half_closes_has_every_message_handled() -> None:
    state, loop = make_state()
    flooder, reader = Client(state, loop), Client(state, loop)
    overload(state, loop)
    flood(flooder, "f", 12)
    if flooder.conn.eof_received() is None:  # what asyncio does then: close the transport
        flooder.transport.close()
    for _ in range(12):  # a share per turn: at most twelve turns
        late_turn(state, loop)
        reader.receive()
    assert texts(reader) == [f"f{i:02d}" for i in range(12)], "read before the EOF, so handled"
    assert flooder.transport.closed, "and closed once they are"


def test_a_reader_that_fills_a_whole_read_is_read_again_at_the_next_iteration() -> None:
    """uvloop reads a socket up to 32 times in one iteration while reads fill the
    buffer: a flood held the loop for 512 KiB of messages before anyone else."""
    state, loop = make_state()
    flooder, reader = Client(state, loop), Client(state, loop)
    data = b"".join(flooder.ws.send(TextMessage(f"{i:04d}")) for i in range(READ_SIZE // 10 + 1))
    buffer = flooder.conn.get_buffer(-1)
    buffer[:] = data[:READ_SIZE]
    flooder.conn.buffer_updated(READ_SIZE)
    assert not flooder.transport.reading, "no second read in this iteration"
    reader.receive()  # the next iteration
    assert flooder.transport.reading
    assert state.flow.waits == state.flow.holds == 0
    assert texts(reader) == [f"{i:04d}" for i in range(READ_SIZE // 10)]


def test_a_flood_that_leaves_most_readers_behind_is_served_in_turns_with_the_loop_on_time() -> None:
    """A flooder whose fan-out the readers cannot take gets turns like an overloaded loop's.

    Before, only the loop's own lag counted: a flood that the server could
    write but its readers could not read kept every honest client's queue
    growing, seconds of latency for all, with the loop on time.
    """
    state, loop = make_state()
    state.flow.start()
    load = state.flow.load
    flooder, honest = Client(state, loop), Client(state, loop)
    readers = [Client(state, loop) for _ in range(5)]
    for reader in readers[:4]:  # four of seven
        reader.conn.pause_writing()  # behind on its reads: past the pressure mark
    for _ in range(3):
        loop.advance(load.interval)  # on time
    assert load.overloaded, "most readers behind is overload too"
    share = load.share
    flood(flooder, "f", 8 * share)
    honest.send(TextMessage("hello"))
    readers[4].receive()
    got = texts(readers[4])
    assert got.count("hello") == 1, "the honest sender is not held"
    assert [t for t in got if t[0] == "f"] == [f"f{i:02d}" for i in range(share)]
    assert not flooder.transport.reading, "the flooder waits for its turn"


def test_one_reader_behind_in_a_room_of_four_is_no_overload() -> None:
    state, loop = make_state()
    state.flow.start()
    load = state.flow.load
    sender = Client(state, loop)
    readers = [Client(state, loop) for _ in range(3)]
    readers[0].conn.pause_writing()
    for _ in range(3 * load.calm_ticks):
        loop.advance(load.interval)
    assert not load.overloaded and load.episodes == 0
    flood(sender, "s", 4 * load.share)
    readers[1].receive()
    assert sender.transport.reading, "its whole read handled at once"
    assert texts(readers[1]) == [f"s{i:02d}" for i in range(4 * load.share)]


def test_turns_come_at_every_tick_while_the_overloaded_loop_has_time_to_spare() -> None:
    """Before, turns came every 0.1 s whatever the loop could do: ten heavy
    publishers were served 100 messages a second each with the loop 80% idle."""
    state, loop = make_state()
    load = state.flow.load
    worked = [0.0]
    load.work_clock = lambda: worked[0]
    flooder, reader = Client(state, loop), Client(state, loop)
    overload(state, loop)
    share = load.share

    def ticks(n: int, busy: float) -> int:
        """``n`` ticks on time, ``busy`` of each spent working: messages relayed meanwhile."""
        before = len(texts(reader))
        for _ in range(n):
            worked[0] += busy * load.interval
            loop.advance(load.interval)
            reader.receive()
        return len(texts(reader)) - before

    flood(flooder, "f", 40 * share)
    reader.receive()
    assert ticks(load.turn_ticks, 0.9) == share, "a busy loop: one turn per cadence"
    assert load.overloaded
    assert ticks(load.turn_ticks, 0.2) == load.turn_ticks * share, "time to spare: every tick"
    assert load.overloaded, "it still waits: overloaded, though on time"
    got = texts(reader)
    assert got == [f"f{i:02d}" for i in range(len(got))], "in order"
