"""Whether the server as a whole keeps up, measured from the event loop itself.

A repeating timer is due every ``interval`` seconds; how late it runs (its
*lag*) is how long the loop was busy with something else: one read, one
fan-out, one flush that took that long. Every message a client sends waits
at least that long too, so lag is the latency everyone pays, and it is what
rawchat watches. The other is downstream: when most readers are behind on
their reads at once (``behind``: past the pressure mark, rawchat.flow), what is
published is more than they can take, and every queue grows into latency for
all of them while the loop itself is on time. One stalled reader in a room of
four is not that: it pays alone (eviction), and the others are not slowed.

Lag alone misses a loop that is busy in short iterations: a flood read a
few messages at a time, each fanned out and flushed within the tick. So the
loop's thread's CPU time is read at every tick too (``work_clock``): the share
of the tick it spent working (``busy``) says how close the server is to what
it can do.

Past ``enter_lag``, or busy past ``enter_busy``, or with most readers behind,
at two ticks in a row, or past four times ``enter_lag`` once, the loop is
*overloaded* (one tick a little late may be a collection, or another process
on the core): publishers take turns (see rawchat.flow and rawchat.inbound).
Each may have ``share`` messages handled per read or per turn, then its
reading pauses and it waits behind the others. A flooding connection then gets
a turn like any other publisher, and the honest ones, who rarely send more
than one message per read, are not held at all.

While overloaded, turns are given every ``turn_ticks`` ticks (a tenth of a
second), so a publisher that has had to wait has at most ``share`` messages
handled per turn: a flood becomes a trickle, and so does the fan-out it
caused. A tick that finds the loop on time with time to spare (``spare``)
gives a turn at once: the trickle is what the loop cannot spare, not a rate.
Few turns of several messages rather than many of one: each turn costs a
flush to every recipient (and a read to each of them), whatever it carries.

Only once ``calm_needed`` ticks have measured under ``leave_lag`` since the
last late one, with no publisher waiting for its turn (``waiting``) and most
readers keeping up, does everyone read freely again; ticks in between count
for neither. A publisher that still waits is still sending past its share: the
loop keeps up *because* it takes turns, and releasing it would only bring the
lag back. When the lag had another cause, whether it is over cannot be known
without trying: leaving is that try. If the overload comes back at once (a
*relapse*), the next calm period must be twice as long (up to ``MAX_CALM``),
so that a flood that never stops costs a short burst of lag ever more rarely;
a calm period that outlasts its length resets it.

Free of I/O: it is given a clock and ``call_later``; the hot path only reads
``overloaded``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

#: Seconds between two measurements: 50 timer callbacks a second cost nothing.
INTERVAL = 0.02
#: A loop this late at LATE_TICKS ticks in a row is overloaded: a message
#: waited that long for an iteration that had nothing to do with it.
ENTER_LAG = 0.015
LATE_TICKS = 2
#: A loop that works this share of the time at LATE_TICKS ticks in a row is
#: overloaded, however short its iterations. Measured on the abuse scenario:
#: an honest room of 1,000 at 20 msg/s keeps the loop about 20% busy, with
#: ticks up to 12 ms late (each message is a thousand writes); a flood read a
#: few messages at a time kept the ticks under ENTER_LAG for 1.5 s while the
#: loop worked 75-100% of the time and the readers fell 0.7 s behind.
ENTER_BUSY = 0.75
#: While overloaded, a tick that found the loop working less than this share
#: of the time has room for another turn at once (see spare).
SPARE_BUSY = 0.5
#: CALM_TICKS ticks under this lag (half a second's) with none late between
#: them, and it is calm again. Above the millisecond an idle loop's timer may
#: be late by.
LEAVE_LAG = 0.003
CALM_TICKS = 25
#: The longest calm period a relapse doubles it to, in ticks (30 s).
MAX_CALM = 1500
#: Messages a publisher may have handled per read or turn while overloaded,
#: and the ticks from one turn to the next: 100 messages a second, twice what
#: the busiest honest load rawchat is measured with sends per connection. An
#: honest client's read rarely holds more than one; a flood's holds hundreds.
#: Measured on the abuse scenario, one turn of 10 every 100 ms left the honest
#: clients' p99 at 2-3.6x the run without abusers where 2 every 20 ms (the
#: same rate) left it at 4.3-6.7x.
SHARE = 10
TURN_TICKS = 5


class Load(enum.Enum):
    #: The loop keeps up: everyone is read freely.
    CALM = enum.auto()
    #: The loop is late: publishers are served in turn, ``share`` messages each.
    OVERLOADED = enum.auto()


class Timer(Protocol):
    def cancel(self) -> None: ...


class OverloadMonitor:
    """Samples the event loop's lag and says, with hysteresis, whether it is overloaded."""

    __slots__ = (
        "clock",
        "call_later",
        "interval",
        "enter_lag",
        "enter_busy",
        "leave_lag",
        "calm_ticks",
        "share",
        "turn_ticks",
        "on_tick",
        "waiting",
        "behind",
        "readers_behind",
        "work_clock",
        "busy",
        "overloaded",
        "lag",
        "episodes",
        "calm_needed",
        "_calm",
        "_late",
        "_left_at",
        "_due",
        "_worked",
        "_timer",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Timer],
        *,
        interval: float = INTERVAL,
        enter_lag: float = ENTER_LAG,
        enter_busy: float = ENTER_BUSY,
        leave_lag: float = LEAVE_LAG,
        calm_ticks: int = CALM_TICKS,
        share: int = SHARE,
        turn_ticks: int = TURN_TICKS,
        on_tick: Callable[[], None] | None = None,
        waiting: Callable[[], int] = lambda: 0,
        behind: Callable[[], bool] = lambda: False,
        work_clock: Callable[[], float] | None = None,
    ) -> None:
        if not 0 < leave_lag <= enter_lag:
            raise ValueError("leave_lag must be positive and at most enter_lag")
        self.clock = clock
        self.call_later = call_later
        self.interval = interval
        self.enter_lag = enter_lag
        self.enter_busy = enter_busy
        self.leave_lag = leave_lag
        self.calm_ticks = calm_ticks
        self.share = max(1, share)
        self.turn_ticks = max(1, turn_ticks)
        #: Called after every measurement: where publishers that wait get their turns.
        self.on_tick = on_tick
        #: How many publishers wait for their turn: none may, for a tick to be calm.
        self.waiting = waiting
        #: Whether most readers are behind on their reads (rawchat.flow decides).
        self.behind = behind
        #: What the latest tick found: most readers behind (else the lag alone counted).
        self.readers_behind = False
        #: CPU time of the loop's thread (time.thread_time in the server); None:
        #: the lag alone is measured.
        self.work_clock = work_clock
        #: The share of the latest tick the loop spent working.
        self.busy = 0.0
        #: Read for every message while turns may be due: a plain attribute.
        self.overloaded = False
        #: The latest lag measured, in seconds.
        self.lag = 0.0
        #: Times the loop became overloaded since start.
        self.episodes = 0
        #: Ticks in a row under ``leave_lag`` it takes to be calm again (see relapse).
        self.calm_needed = calm_ticks
        #: Ticks under ``leave_lag`` since the last late one, while overloaded.
        self._calm = 0
        #: Late ticks in a row, while calm.
        self._late = 0
        #: When it was last calm again (clock time); None before that.
        self._left_at: float | None = None
        self._due = 0.0
        #: The work clock when the latest tick was scheduled.
        self._worked = 0.0
        self._timer: Timer | None = None

    @property
    def state(self) -> Load:
        return Load.OVERLOADED if self.overloaded else Load.CALM

    def start(self) -> None:
        if self._timer is None:
            self._schedule()

    def stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.overloaded = False

    def spare(self) -> bool:
        """Whether the latest tick left the loop room for more turns than its cadence.

        Turns come at least every ``turn_ticks`` ticks; a loop that worked less
        than SPARE_BUSY of the latest tick, and is on time, gives one at every
        tick: what is spare goes to those who wait, and a publisher's share
        of it is not a fixed rate. Without a work clock it cannot know.
        """
        return (
            self.work_clock is not None and self.busy < SPARE_BUSY and self.lag < self.enter_lag
        )

    def _schedule(self) -> None:
        self._due = self.clock() + self.interval
        if self.work_clock is not None:
            self._worked = self.work_clock()
        self._timer = self.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, self.clock() - self._due)
        busy = 0.0
        if self.work_clock is not None:
            busy = (self.work_clock() - self._worked) / (self.interval + lag)
        self.measured(lag, busy)
        self._schedule()
        if self.on_tick is not None:
            self.on_tick()

    def measured(self, lag: float, busy: float = 0.0) -> None:
        """Take one tick's lag and busy share into account (the timer's, or a test's)."""
        self.lag = lag
        self.busy = busy
        behind = self.readers_behind = self.behind()
        if lag >= self.enter_lag or busy >= self.enter_busy or behind:
            self._calm = 0
            if not self.overloaded:
                self._late += 1
                if self._late >= LATE_TICKS or lag >= 4 * self.enter_lag:
                    self._enter()
        elif not self.overloaded:
            self._late = 0
        elif lag < self.leave_lag and not self.waiting():
            self._calm += 1
            if self._calm >= self.calm_needed:
                self.overloaded = False
                self._calm = 0
                self._left_at = self.clock()

    def _enter(self) -> None:
        self.overloaded = True
        self._late = 0
        self.episodes += 1
        left_at = self._left_at
        calm_period = self.calm_needed * self.interval
        if left_at is not None and self.clock() - left_at < calm_period:
            # A relapse: what caused it was still there.
            self.calm_needed = min(self.calm_needed * 2, max(MAX_CALM, self.calm_ticks))
        else:
            self.calm_needed = self.calm_ticks
