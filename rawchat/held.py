"""A connection's WebSocket input: each read fed to the phase, and flow control's holds.

``HeldInput.receive`` takes what a read brought and feeds it to the WebSocket
phase (rawchat.websocket_phase), a message's worth at a time, pulling and
handling the frames it parses one by one. The phase's verdicts may ask for a
hold: flow control (rawchat.flow) holds a publisher past ``--rate``, or past
its share while the loop is overloaded, at the next message. Reading stops,
and what was already read waits, in order, for the publisher's turns. It waits
in two places: frames wsproto had already parsed when the hold came (they stay
in its buffer: rawchat stops pulling events), and bytes read but not yet given
to wsproto (the backlog). A turn hands them back, parked frames first, until a
hold comes again or none is left; only then does reading resume.

``HeldInput`` keeps that state and makes those decisions without I/O: its
:class:`Feeder`, the connection's WebSocket driver (rawchat.websocket_driver),
carries out what the phase asks for as it comes (a hold among it), pauses and
resumes reading and closes the transport as ``end_turn`` answers. Its state is
one of ``Hold``; a client that half-closes while held is kept open until what
it sent before its EOF is handled (``half_closed``), which ``end_turn`` then
answers with ``AfterTurn.CLOSE``.
"""

from __future__ import annotations

import enum
from typing import Protocol

from rawchat.http_phase import Phase
from rawchat.websocket_phase import Closing, WebSocketPhase


class Hold(enum.Enum):
    """Where a connection's input stands with flow control."""

    #: Input is handled as it is read. The only state a connection that
    #: never sends past its rate or share ever sees.
    READING = "reading"
    #: Flow control holds it: reading is paused; bytes that still arrive (TLS
    #: hands over what it had decrypted) or were left unfed wait in the backlog.
    HELD = "held"
    #: Held in the middle of a read: the frames after the one that caused the
    #: hold wait parsed in wsproto's buffer, ahead of the backlog.
    HELD_WITH_FRAMES = "held with frames"
    #: A turn: what waited is being handled, parked frames first, until a hold
    #: comes again or none is left.
    TURN = "turn"


# Checked at every read and every event: a global is read in a few ns, an
# enum member through its class in about 80 (CPython 3.11).
_READING, _HELD, _TURN = Hold.READING, Hold.HELD, Hold.TURN
_FAILED, _WEBSOCKET = Closing.FAILED, Phase.WEBSOCKET

#: What a frame header adds to a message at most (see HeldInput.receive).
FRAME_HEAD = 14


class Feeder(Protocol):
    """Who carries out what the phase asks for (rawchat.websocket_driver.WebSocketDriver)."""

    phase: Phase

    def carry_out(self) -> None:
        """Do what the WebSocket phase asked for (it may hold this input)."""


class AfterTurn(enum.Enum):
    """What the adapter does once a turn has handled what it could."""

    #: Held again (or input still waits): it waits for its next turn.
    HOLD = "hold"
    #: Nothing waits: reading resumes.
    READ = "read"
    #: Nothing waits and the client had half-closed: it sent no close frame
    #: (1006), everything it sent is handled, the connection goes.
    CLOSE = "close"


class HeldInput:
    """The held input of one connection, and the decisions about it (no I/O)."""

    __slots__ = ("state", "half_closed", "_backlog", "_parked", "_window_fixed")

    def __init__(self) -> None:
        self.state = Hold.READING
        #: The client half-closed while some of what it sent still waited.
        self.half_closed = False
        self._backlog: bytes | None = None
        #: Set by a turn that began with frames parked in wsproto.
        self._parked = False
        #: Its kernel receive buffer no longer grows (it was paused once).
        self._window_fixed = False

    def __repr__(self) -> str:
        waiting = len(self._backlog) if self._backlog else 0
        return f"<HeldInput {self.state.value}, {waiting} bytes waiting>"

    @property
    def held(self) -> bool:
        """Whether flow control holds it: nothing it sent is handled until its turn."""
        return self.state is Hold.HELD or self.state is Hold.HELD_WITH_FRAMES

    @property
    def backlog(self) -> int:
        """Bytes read but not yet given to wsproto."""
        return len(self._backlog) if self._backlog else 0

    # -- flow control's calls -------------------------------------------------------

    def hold(self) -> None:
        """Flow control holds it: nothing more is handled until its turn."""
        if self.state is Hold.READING or self.state is Hold.TURN:
            self.state = Hold.HELD

    def first_pause(self) -> bool:
        """Reading is paused for a hold: True the first time (fix the receive window then).

        A held client's kernel buffer would otherwise grow with what it keeps
        sending (Linux autotuning): fixed once, it stays at its size.
        """
        first, self._window_fixed = not self._window_fixed, True
        return first

    def begin_turn(self) -> None:
        """A turn begins: ``parked`` and ``take_backlog`` say what to handle, in order."""
        self._parked = self.state is Hold.HELD_WITH_FRAMES
        self.state = Hold.TURN

    def end_turn(self) -> AfterTurn:
        """The turn has handled what it could: what now."""
        if self.state is Hold.TURN:
            # Input left in the backlog with no hold would never be read again.
            self.state = Hold.HELD if self._backlog else Hold.READING
        if self.held:
            return AfterTurn.HOLD
        return AfterTurn.CLOSE if self.half_closed else AfterTurn.READ

    # -- feeding the WebSocket phase -------------------------------------------------

    def receive(self, data: bytes, websocket: WebSocketPhase, feeder: Feeder) -> None:
        """What a read brought (or, in a turn, nothing more): handled up to a hold.

        The pings among it are answered once it is handled, in one write.
        """
        state = self.state
        if state is _READING and len(data) <= websocket.inbound.max_message + FRAME_HEAD:
            websocket.receive_data(data)
            self._handle_events(websocket, feeder)
        elif state is _READING:
            self._feed(data, websocket, feeder)
        elif state is _TURN:
            # The frames a hold left parsed in wsproto go first (fed more before,
            # its buffer would grow by a slice at every release), then the backlog.
            if self.take_parked():
                self._handle_events(websocket, feeder)
            if self.state is _TURN:
                self._feed(self.take_backlog() + data, websocket, feeder)
            else:
                self.keep(data)
        else:  # held: kept in order (TLS may still hand over what it had decrypted)
            self.keep(data)
        if websocket.pong_due is not None:
            websocket.answer_pings()
            if websocket.actions is not None:
                feeder.carry_out()

    def _feed(self, data: bytes, websocket: WebSocketPhase, feeder: Feeder) -> None:
        """Feed wsproto a message's worth at a time, up to a hold (the rest waits).

        wsproto keeps what it is given until events() consumes it: so its
        buffer stays within --max-message plus a frame header, however much
        one read brought.
        """
        step = websocket.inbound.max_message + FRAME_HEAD
        view = memoryview(data)
        for start in range(0, len(data), step):
            if websocket.closing is _FAILED or feeder.phase is not _WEBSOCKET:
                break
            if self.held:
                self.keep(bytes(view[start:]))
                break
            websocket.receive_data(bytes(view[start : start + step]))
            self._handle_events(websocket, feeder)

    def _handle_events(self, websocket: WebSocketPhase, feeder: Feeder) -> None:
        for event in websocket.events():
            websocket.handle(event)
            if websocket.actions is not None:
                feeder.carry_out()
            if self.state is _HELD:
                # The frames after this one stay in wsproto's buffer until
                # the next turn.
                self.park()
                return
            if websocket.closing is _FAILED or feeder.phase is not _WEBSOCKET:
                return

    # -- what the feeding does with held input ----------------------------------------

    def keep(self, data: bytes) -> None:
        """Bytes that may not be handled now (read while held, or the rest of a
        read a hold interrupted): they wait, in order, behind any earlier ones."""
        if data:
            backlog = self._backlog
            self._backlog = data if backlog is None else backlog + data

    def park(self) -> None:
        """A hold came while wsproto's events were handled: the rest stay parsed there."""
        if self.state is Hold.HELD:
            self.state = Hold.HELD_WITH_FRAMES

    def take_parked(self) -> bool:
        """In a turn: whether frames parked in wsproto are to be handled first (once)."""
        parked, self._parked = self._parked, False
        return parked

    def take_backlog(self) -> bytes:
        """In a turn, after the parked frames: the bytes to feed, if not held again."""
        if self.state is not Hold.TURN:
            return b""
        backlog, self._backlog = self._backlog, None
        return backlog or b""

    def half_close(self) -> bool:
        """The client half-closed: True if the connection must stay open meanwhile.

        What it sent before its EOF still waits for its turns and is handled
        then; with nothing waiting, the transport may close at once.
        """
        if self.state is Hold.READING:
            return False
        self.half_closed = True
        return True

    def forget(self) -> None:
        """The connection is gone: what waited goes with it."""
        self._backlog = None
