"""The hub's fan-out: encode once, one write per client per iteration, evict the slow."""

from __future__ import annotations

import gc
from collections.abc import Callable

from rawchat.hub import Hub, Outbox
from tests.unit.fakes import FakeTransport


def make_hub(max_buffer: int = 1000) -> tuple[Hub, list[Callable[[], None]]]:
    scheduled: list[Callable[[], None]] = []
    return Hub(max_buffer, scheduled.append), scheduled


class Recorder:
    """An outbox's owner that notes, in ``evicted``, each outbox the hub evicts."""

    def __init__(self, evicted: list[Outbox] | None) -> None:
        self.evicted_boxes = evicted
        self.box: Outbox | None = None

    def evicted(self) -> None:
        if self.evicted_boxes is not None and self.box is not None:
            self.evicted_boxes.append(self.box)


def make_outbox(evicted: list[Outbox] | None = None) -> tuple[Outbox, FakeTransport]:
    transport = FakeTransport()
    owner = Recorder(evicted)
    box = owner.box = Outbox(transport, owner)
    return box, transport


def run(scheduled: list[Callable[[], None]]) -> None:
    while scheduled:
        scheduled.pop(0)()


def test_frames_of_one_iteration_go_out_in_one_write_per_client_in_order() -> None:
    hub, scheduled = make_hub()
    clients = [make_outbox() for _ in range(3)]
    boxes = {box for box, _ in clients}
    for frame in (b"one", b"two", b"three"):
        hub.broadcast(frame, boxes)
    assert len(scheduled) == 1, "one flush per iteration, however many broadcasts"
    assert all(t.writes == 0 for _, t in clients), "nothing is written before the flush"
    run(scheduled)
    for _, transport in clients:
        assert transport.writes == 1
        assert bytes(transport.written) == b"onetwothree"


def test_the_same_frame_object_is_queued_for_every_recipient() -> None:
    hub, _ = make_hub()
    boxes = [make_outbox()[0] for _ in range(4)]
    frame = b"shared frame"
    hub.broadcast(frame, boxes)
    assert all(box.frames == [frame] and box.frames[0] is frame for box in boxes)


def test_the_fan_out_leaves_the_garbage_collector_idle() -> None:
    """No container is made per recipient and message: at 1,000 clients each
    one was a list, and Python's collector then ran inside the fan-out (a full
    collection every hundred-odd messages), pausing every delivery behind it."""
    hub, scheduled = make_hub(max_buffer=1 << 30)
    clients = [make_outbox() for _ in range(1000)]
    boxes = [box for box, _ in clients]
    frame = b"x" * 80
    gc.collect()
    before = gc.get_stats()[0]["collections"]
    for _ in range(100):
        hub.broadcast(frame, boxes)
        hub.broadcast(frame, boxes[::2])  # two frames for some: joined, one write
        run(scheduled)
    assert gc.get_stats()[0]["collections"] - before < 5
    assert all(transport.writes == 100 for _, transport in clients)
    assert len(clients[0][1].written) == 100 * 2 * len(frame)


def test_skip_leaves_out_one_recipient() -> None:
    hub, scheduled = make_hub()
    (a, ta), (b, tb) = make_outbox(), make_outbox()
    hub.broadcast(b"x", {a, b}, skip=a)
    run(scheduled)
    assert ta.written == b"" and tb.written == b"x"


def test_a_client_whose_buffer_is_full_is_evicted_and_the_others_still_receive() -> None:
    evicted: list[Outbox] = []
    hub, scheduled = make_hub(max_buffer=100)
    slow, slow_t = make_outbox(evicted)
    fast, fast_t = make_outbox(evicted)
    slow_t.buffered = 101  # the kernel took nothing for a while: it owes more than max_buffer
    hub.broadcast(b"0123456789", [slow, fast])
    run(scheduled)
    assert evicted == [slow]
    assert slow_t.written == b""
    assert fast_t.written == b"0123456789"
    assert hub.evictions == 1


def test_queued_bytes_count_towards_the_limit_within_one_iteration() -> None:
    evicted: list[Outbox] = []
    hub, scheduled = make_hub(max_buffer=25)
    box, transport = make_outbox(evicted)
    for _ in range(4):
        hub.broadcast(b"0123456789", [box])
    assert evicted == [box], "at the fourth frame it already owes 30 bytes"
    run(scheduled)
    assert transport.written == b"", "an evicted client's queued frames are dropped"


def test_peak_records_the_most_a_client_owed() -> None:
    hub, scheduled = make_hub(max_buffer=1000)
    box, transport = make_outbox()
    transport.buffered = 300
    hub.broadcast(b"a" * 100, [box])
    hub.broadcast(b"b" * 100, [box])
    run(scheduled)
    assert box.peak == 500


def test_take_returns_queued_frames_and_the_flush_skips_them() -> None:
    hub, scheduled = make_hub()
    box, transport = make_outbox()
    hub.broadcast(b"ab", [box])
    hub.broadcast(b"cd", [box])
    assert hub.take(box) == b"abcd"
    run(scheduled)
    assert transport.writes == 0


def test_drop_forgets_what_was_queued() -> None:
    hub, scheduled = make_hub()
    box, transport = make_outbox()
    hub.broadcast(b"ab", [box])
    hub.drop(box)
    run(scheduled)
    assert transport.writes == 0


def test_a_message_bigger_than_max_buffer_reaches_every_reader_that_keeps_up() -> None:
    """What a client owed before a frame decides, not the frame's own size: with
    --max-message above --max-buffer, a large message must not evict the room."""
    evicted: list[Outbox] = []
    hub, scheduled = make_hub(max_buffer=100)
    clients = [make_outbox(evicted) for _ in range(3)]
    hub.broadcast(b"m" * 500, [box for box, _ in clients])
    run(scheduled)
    assert evicted == [] and hub.evictions == 0
    assert all(bytes(t.written) == b"m" * 500 for _, t in clients)


def test_a_client_still_owing_a_large_message_is_evicted_at_the_next_frame() -> None:
    evicted: list[Outbox] = []
    hub, scheduled = make_hub(max_buffer=100)
    (slow, slow_t), (fast, fast_t) = make_outbox(evicted), make_outbox(evicted)
    hub.broadcast(b"m" * 500, [slow, fast])
    run(scheduled)
    slow_t.buffered = 500  # it has not read the large message; fast has
    hub.broadcast(b"next", [slow, fast])
    run(scheduled)
    assert evicted == [slow]
    assert bytes(fast_t.written) == b"m" * 500 + b"next"


def test_an_evicted_outbox_accepts_no_more_frames() -> None:
    evicted: list[Outbox] = []
    hub, scheduled = make_hub(max_buffer=100)
    box, transport = make_outbox(evicted)
    transport.buffered = 101
    hub.broadcast(b"x", [box])
    transport.buffered = 0  # drained since, but it is closing: nothing more is queued
    hub.broadcast(b"y", [box])
    hub.send(box, b"z")
    assert box.frames == [] and box.closed
    run(scheduled)
    assert transport.writes == 0 and evicted == [box]


def test_a_write_that_raises_costs_only_its_own_client() -> None:
    """uvloop raises on a write to a closed handle, asyncio after write_eof: the
    flush goes on to every other outbox, and the broken one is closed."""
    evicted: list[Outbox] = []
    hub, scheduled = make_hub()
    clients = [make_outbox(evicted) for _ in range(3)]
    broken, broken_t = clients[1]
    broken_t.closed = True  # closed under the hub's feet: the next write raises
    hub.broadcast(b"hello", [box for box, _ in clients])
    run(scheduled)
    assert [bytes(t.written) for _, t in clients] == [b"hello", b"", b"hello"]
    assert broken.closed and broken_t.aborted
    assert hub.evicted["write_failed"] == 1
    hub.broadcast(b"again", [box for box, _ in clients])
    run(scheduled)
    assert [bytes(t.written) for _, t in clients] == [b"helloagain", b"", b"helloagain"]
