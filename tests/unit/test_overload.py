"""The overload monitor: lag in, overloaded or not out, with hysteresis and backoff."""

from __future__ import annotations

from rawchat.overload import Load, OverloadMonitor
from tests.unit.fakes import FakeLoop


def monitor(loop: FakeLoop, **kwargs: float) -> OverloadMonitor:
    load = OverloadMonitor(loop.time, loop.call_later, **kwargs)  # type: ignore[arg-type]
    load.start()
    return load


def test_a_loop_on_time_is_calm_and_a_late_one_overloaded() -> None:
    loop = FakeLoop()
    load = monitor(loop, interval=0.02, enter_lag=0.015, leave_lag=0.003)
    for _ in range(100):
        loop.advance(0.02)
    assert load.state is Load.CALM and load.lag == 0.0
    loop.advance(0.02 + 0.030)  # the loop was busy for 30 ms past the tick
    assert abs(load.lag - 0.030) < 1e-9
    assert not load.overloaded, "once may be a collection or another process"
    loop.advance(0.02)
    loop.advance(0.02 + 0.030)
    assert not load.overloaded
    loop.advance(0.02 + 0.030)  # twice in a row
    assert load.overloaded and load.state.name == "OVERLOADED"
    assert load.episodes == 1


def test_a_tick_four_times_past_the_mark_is_overload_at_once() -> None:
    loop = FakeLoop()
    load = monitor(loop, interval=0.02, enter_lag=0.015, leave_lag=0.003)
    loop.advance(0.02 + 0.060)
    assert load.overloaded


def test_a_loop_on_time_is_not_calm_while_publishers_wait_for_their_turn() -> None:
    loop = FakeLoop()
    waiting = [1]
    load = OverloadMonitor(loop.time, loop.call_later, calm_ticks=5, waiting=waiting.__len__)
    load.start()
    loop.advance(0.1)
    for _ in range(50):
        loop.advance(load.interval)
    assert load.overloaded, "it keeps up because it takes turns"
    waiting.clear()
    for _ in range(5):
        loop.advance(load.interval)
    assert not load.overloaded


def overload(loop: FakeLoop) -> None:
    loop.advance(0.05)
    loop.advance(0.05)


def test_it_stays_overloaded_until_the_lag_stays_low_for_a_calm_period() -> None:
    loop = FakeLoop()
    load = monitor(loop, interval=0.02, enter_lag=0.015, leave_lag=0.003, calm_ticks=5)
    overload(loop)
    assert load.overloaded
    for _ in range(20):  # between the marks: not calm, not worse
        loop.advance(0.02 + 0.008)
    assert load.overloaded
    for _ in range(4):
        loop.advance(0.02)
        loop.advance(0.02 + 0.008)  # busy ticks between calm ones count for neither
    loop.advance(0.02 + 0.02)  # a late one starts the calm period again
    for _ in range(4):
        loop.advance(0.02)
    assert load.overloaded
    loop.advance(0.02)
    assert not load.overloaded


def test_a_relapse_doubles_the_calm_period_and_a_long_calm_resets_it() -> None:
    loop = FakeLoop()
    load = monitor(loop, interval=0.02, enter_lag=0.015, leave_lag=0.003, calm_ticks=10)
    overload(loop)
    assert load.calm_needed == 10
    for expected in (20, 40, 80):
        while load.overloaded:
            loop.advance(0.02)
        overload(loop)  # the flood is still there: overloaded again at once
        assert load.overloaded and load.calm_needed == expected
    while load.overloaded:
        loop.advance(0.02)
    for _ in range(81):  # calm for longer than the period it needed
        loop.advance(0.02)
    overload(loop)
    assert load.overloaded and load.calm_needed == 10


def test_each_tick_gives_turns_and_stop_ends_the_ticks() -> None:
    loop = FakeLoop()
    ticks: list[bool] = []
    load = OverloadMonitor(loop.time, loop.call_later, on_tick=lambda: ticks.append(True))
    load.start()
    for _ in range(3):
        loop.advance(load.interval)
    load.stop()
    loop.advance(1.0)
    assert len(ticks) == 3 and not load.overloaded


def test_a_loop_busy_in_short_iterations_is_overloaded_though_on_time() -> None:
    """Before, lag alone counted: a flood read a few messages at a time kept
    every tick on time while the loop worked all the time and readers fell behind."""
    loop = FakeLoop()
    worked = [0.0]
    load = monitor(loop, interval=0.02, work_clock=lambda: worked[0])  # type: ignore[arg-type]

    def tick(busy: float) -> None:
        worked[0] += busy * 0.02
        loop.advance(0.02)

    for _ in range(50):
        tick(0.2)  # an honest room of a thousand
    assert not load.overloaded and abs(load.busy - 0.2) < 1e-6
    tick(0.9)
    assert not load.overloaded, "one busy tick may be a collection"
    tick(0.5)
    tick(0.9)
    assert not load.overloaded
    tick(0.9)
    assert load.overloaded and load.lag == 0.0
