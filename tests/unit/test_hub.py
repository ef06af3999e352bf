"""The hub's fan-out: encode once, one write per client per iteration, evict the slow."""

from __future__ import annotations

import gc
from collections.abc import Callable

from rawchat.hub import Hub, Outbox
from tests.unit.fakes import FakeTransport


def make_hub(max_buffer: int = 1000) -> tuple[Hub, list[Callable[[], None]]]:
    scheduled: list[Callable[[], None]] = []
    return Hub(max_buffer, scheduled.append), scheduled


def make_outbox(evicted: list[Outbox] | None = None) -> tuple[Outbox, FakeTransport]:
    transport = FakeTransport()
    box = Outbox(transport, lambda: evicted.append(box) if evicted is not None else None)
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
    slow_t.buffered = 95  # the kernel took nothing for a while
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
    for _ in range(3):
        hub.broadcast(b"0123456789", [box])
    assert evicted == [box], "the third frame would make 30 bytes owed"
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


def test_a_client_passing_the_pressure_mark_reports_pressure_until_the_flush() -> None:
    scheduled: list[Callable[[], None]] = []
    hub = Hub(1000, scheduled.append, pressure_mark=250)
    box, transport = make_outbox()
    relieved: list[bool] = []
    hub.after_pressure = lambda: relieved.append(True)
    for _ in range(3):
        hub.broadcast(b"x" * 100, [box])
    assert hub.pressed and transport.writes == 0, "still one write per iteration"
    run(scheduled)
    assert bytes(transport.written) == b"x" * 300, "nothing lost, nothing doubled"
    assert not hub.pressed and relieved == [True]


def test_a_client_known_to_be_behind_reports_no_new_pressure() -> None:
    scheduled: list[Callable[[], None]] = []
    hub = Hub(1000, scheduled.append, pressure_mark=250)
    box, transport = make_outbox()
    transport.buffered = 400
    box.congested = True  # flow control already knows (its transport paused writing)
    hub.broadcast(b"x" * 100, [box])
    assert not hub.pressed, "a slow reader holds no one back"
    hub.broadcast(b"x" * 600, [box])
    assert hub.evictions == 1, "but it is evicted at max_buffer"
