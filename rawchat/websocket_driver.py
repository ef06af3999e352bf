"""A connection's WebSocket phase, driven: its input fed in, its actions carried out.

The WebSocket phase (rawchat.websocket_phase) has no I/O, and neither has the
held input that feeds it (rawchat.held). Once a client has upgraded, the
asyncio protocol (rawchat.connection) hands what concerns its WebSocket to a
:class:`WebSocketDriver`, as it handed its HTTP side to rawchat.http_phase
before: the driver passes each read to the held input, carries out what the
phase asks for on the connection's transport (writes, timers, leaving the
chat, closing), and is the publisher that flow control (rawchat.flow) holds
and gives turns to. It reaches the transport, the connection's one timer and
the closing of the transport through its :class:`Host`, the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from rawchat import sockets
from rawchat.held import AfterTurn, HeldInput
from rawchat.http_phase import Phase
from rawchat.hub import Outbox
from rawchat.shared import WebSocketShared
from rawchat.websocket_phase import (
    Abort,
    CancelTimer,
    CloseTransport,
    Closing,
    HalfClose,
    Leave,
    Send,
    SetTimer,
    Shape,
    TurnOver,
    WebSocketPhase,
)

log = logging.getLogger("rawchat.connection")


class Host(Protocol):
    """The connection a driver runs in (rawchat.connection.Connection)."""

    transport: asyncio.Transport | None

    @property
    def peer(self) -> str: ...

    def data_received(self, data: bytes) -> None:
        """Handle ``data`` as a read, with the same guard against bugs."""

    def set_timer(self, delay: float, callback: Callable[[], Any]) -> None: ...

    def cancel_timer(self) -> None: ...

    def close_transport(self) -> None: ...


class WebSocketDriver:
    """One connection's WebSocket side, from its upgrade to its end."""

    __slots__ = ("host", "shared", "websocket", "outbox", "input", "phase")

    def __init__(
        self, host: Host, shared: WebSocketShared[Any], websocket: WebSocketPhase, outbox: Outbox
    ) -> None:
        self.host = host
        self.shared = shared
        self.websocket = websocket
        self.outbox = outbox
        #: What the socket brings, fed to the phase up to flow control's holds.
        self.input = HeldInput()
        #: The connection's phase, for the held input to stop at once should
        #: the connection be lost while an event is handled: CLOSED from then.
        self.phase = Phase.WEBSOCKET

    def read(self, data: bytes) -> None:
        """What a read brought (or, for a turn, nothing more)."""
        websocket = self.websocket
        websocket.inbound.new_turn()  # a read or a turn: a share while overloaded
        self.input.receive(data, websocket, self)

    def receive(self, data: bytes) -> None:
        """Frames that came in the read that upgraded: the rest of that read."""
        self.input.receive(data, self.websocket, self)

    def carry_out(self) -> None:
        """Do what the WebSocket phase asked for, in order."""
        websocket, transport = self.websocket, self.host.transport
        assert transport is not None
        for action in websocket.take_actions():
            match action:
                case Send(data):
                    transport.write(data)
                case Shape(delay):
                    self.shared.flow.shape(self, delay)
                case TurnOver():
                    if self.input.backlog or not websocket.at_rest():
                        self.shared.flow.wait_turn(self)  # more waits: it goes behind the others
                case Leave(flush):
                    self.leave(flush=flush)
                case SetTimer(delay):
                    self.host.set_timer(delay, self._timer_fired)
                case CancelTimer():
                    self.host.cancel_timer()
                case HalfClose():
                    if transport.can_write_eof():
                        transport.write_eof()
                case CloseTransport():
                    self.host.close_transport()
                case Abort():
                    log.debug("%s: close timed out, aborting", self.host.peer)
                    transport.abort()

    def _timer_fired(self) -> None:
        self.websocket.timer_fired()
        self.carry_out()

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket: what is queued goes out, then a close frame (if still due)."""
        self.websocket.close(code, reason)
        self.carry_out()

    def fail(self, code: int, reason: str) -> None:
        """Close at once: a close frame (if still due), our side shut, the rest discarded."""
        self.websocket.fail(code, reason)
        self.carry_out()

    def leave(self, *, flush: bool = False) -> None:
        """Leave the chat and the hub; with ``flush``, what the hub queued is written first."""
        queued = self.shared.leave(self.host, self.outbox, self.websocket, flush=flush)
        transport = self.host.transport
        if queued and transport is not None:
            transport.write(queued)

    # -- the transport's write buffer ---------------------------------------------------

    def pause_writing(self) -> None:
        # The buffer passed the pressure mark. Flow control evicts this client
        # if it does not drain within --slow-timeout.
        if self.websocket.closing is Closing.OPEN:
            self.shared.flow.congest(self.outbox)

    def resume_writing(self) -> None:
        self.shared.flow.relieve(self.outbox)

    # -- flow control (rawchat.flow.Publisher) -----------------------------------------

    def hold(self) -> None:
        self.input.hold()
        transport = self.host.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
            if self.input.first_pause():
                sockets.fix_receive_window(transport)

    def take_turn(self) -> bool:
        transport = self.host.transport
        if self.phase is not Phase.WEBSOCKET or transport is None or transport.is_closing():
            return False
        # What was read but not handled goes first, until a verdict holds it
        # again (past --rate, or its share while overloaded); reading resumes
        # only once none is left.
        self.input.begin_turn()
        self.host.data_received(b"")  # the same guard against bugs as a read
        match self.input.end_turn():
            case AfterTurn.HOLD:
                return True
            case AfterTurn.CLOSE:
                self.leave()  # it sent no close frame (1006): all it sent is handled
                self.host.close_transport()
            case AfterTurn.READ:
                if not transport.is_closing():
                    transport.resume_reading()
        return False

    def lost(self, address: str) -> None:
        """The transport is gone: out of the chat, the hub and flow control's turns."""
        self.phase = Phase.CLOSED
        self.leave()
        self.shared.closed(self.websocket, self.outbox, address)
        self.shared.flow.forget(self)
        self.input.forget()
