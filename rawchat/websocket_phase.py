"""A connection's WebSocket phase, free of I/O: bytes in, actions out.

:class:`WebSocketPhase` owns what happens after the 101: wsproto's parser,
the client's messages on their way to the chat (rawchat.inbound), the pongs,
and the closing handshake as an explicit state machine (:class:`Closing`).
It never touches a socket or a clock. What it wants done comes out as data,
:class:`Action` values its driver (rawchat.websocket_driver) carries out
in order: bytes to write, a timer to set or cancel, the chat to leave, a
half-close, the transport to close or abort. The model is websockets'
``protocol.py`` (``receive_data`` in, ``data_to_send`` out) with wsproto
doing the framing.

It is driven so (rawchat.held): ``receive_data`` with what a read brought, then
``handle`` for each of ``events()`` (it may stop between two, when flow
control holds the client), then ``answer_pings`` once per read: a pong for
each ping, up to a bound. Every close, whoever asks for it (the chat, the
hub's eviction, the keepalive, the server's shutdown), goes through ``close``
or ``fail``: the one place that decides whether a close frame is still to be sent.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from wsproto.connection import Connection as Parser
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from rawchat import wsparser
from rawchat.inbound import Inbound, Verdict
from rawchat.messages import CloseCode
from rawchat.rooms import Session

log = logging.getLogger("rawchat.connection")


class Closing(enum.Enum):
    """Where a WebSocket is in its closing handshake (RFC 6455, section 7).

    ::

        OPEN --close()-------------> CLOSE_SENT --client's close--> DONE
          |                              '------close_timeout----> DONE (abort)
          |--protocol error, fail()-> FAILED ---close_timeout----> DONE (abort)
          '--client's close (echoed)-------------------------------> DONE

    When the client closes, its close frame is echoed and the server drops the
    TCP connection first (7.1.1). When the server closes, it sends its close
    frame and waits (at most ``close_timeout``) for the client's. After a
    protocol error the server sends its close frame, half-closes its side and
    discards what comes, so that the frame is not lost to a TCP reset.
    """

    #: Messages flow both ways.
    OPEN = enum.auto()
    #: Our close frame went out: incoming messages are ignored until the client's answer.
    CLOSE_SENT = enum.auto()
    #: The client broke the protocol: our close frame went out, our side is shut,
    #: incoming bytes are discarded.
    FAILED = enum.auto()
    #: The handshake is over (or cannot happen): the transport is closing.
    DONE = enum.auto()


# -- what the phase asks its adapter to do -------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the chat and take no more broadcasts; with ``flush``, first write what
    the hub queued for this client (it goes out before the close frame that follows)."""

    flush: bool


@dataclass(frozen=True, slots=True)
class Shape:
    """The client sends faster than --rate: flow control stops reading it for ``delay`` s."""

    delay: float


@dataclass(frozen=True, slots=True)
class TurnOver:
    """The loop is overloaded and the client had its share of this turn: if more of
    what it sent waits, it waits behind the other publishers."""


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``timer_fired`` in ``delay`` seconds, replacing any timer set before."""

    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """The timer set last is not needed any more."""


@dataclass(frozen=True, slots=True)
class HalfClose:
    """Shut our sending side (write_eof): nothing more will be sent."""


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the TCP connection once what was written has gone out."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the TCP connection now, whatever is still buffered."""


Action = (
    Send | Leave | Shape | TurnOver | SetTimer | CancelTimer | HalfClose | CloseTransport | Abort
)

#: The first pings of one read, answered each with its pong, in order; of the rest,
#: only the latest (RFC 6455, 5.5.3). The bound keeps what one read queues small; it is
#: no defence, none is needed: a client's pongs are bounded by its pings, and one that
#: does not read them is evicted by the slow-reader rule like any other.
PINGS_EACH_ANSWERED = 16

_TURN_OVER = TurnOver()
_CANCEL_TIMER = CancelTimer()
_HALF_CLOSE = HalfClose()
_CLOSE_TRANSPORT = CloseTransport()
_ABORT = Abort()


class WebSocketPhase:
    """One client's WebSocket after the upgrade, as a state machine with no I/O."""

    __slots__ = (
        "inbound",
        "session",
        "close_timeout",
        "parser",
        "closing",
        "close_code",
        "ping_deadline",
        "awaiting_hello",
        "actions",
        "pong_due",
    )

    def __init__(
        self,
        inbound: Inbound,
        session: Session | None,
        *,
        close_timeout: float,
        hello_timeout: float | None = None,
    ) -> None:
        self.inbound = inbound
        #: The chat's side of this client; None once it left the chat.
        self.session = session
        self.close_timeout = close_timeout
        #: wsproto's parser, made on the first bytes and dropped again at rest
        #: (see receive_data): an idle client sends nothing but a pong now and
        #: then, and a parser costs it 1.7 KB.
        self.parser: Parser | None = None
        self.closing = Closing.OPEN
        #: The close code exchanged (sent or received first); None before any.
        self.close_code: int | None = None
        #: When the outstanding ping must be answered by (loop time), 0 when none is.
        self.ping_deadline = 0.0
        #: A rawchat.v1 client has ``hello_timeout`` seconds for its hello.
        self.awaiting_hello = hello_timeout is not None
        #: What the adapter is to carry out, in order; None when nothing (most reads).
        self.actions: list[Action] | None = None
        #: The payloads of the pings not answered yet, in order (at most
        #: PINGS_EACH_ANSWERED + 1); None when none is due, as on most reads.
        self.pong_due: list[bytes] | None = None
        if hello_timeout is not None:
            self._do(SetTimer(hello_timeout))

    def _do(self, action: Action) -> None:
        if self.actions is None:
            self.actions = [action]
        else:
            self.actions.append(action)

    def take_actions(self) -> list[Action]:
        """What is to be done since the last call, in order (and forget it)."""
        actions, self.actions = self.actions, None
        return actions or []

    # -- bytes in ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client to the parser; ``events`` then yields what they hold."""
        if self.closing is Closing.FAILED or (not data and self.parser is None):
            return  # discarded, or a catch-up with nothing parsed
        parser = self.parser
        if parser is None:
            parser = self.parser = wsparser.new_parser(self.inbound.max_message)
        if parser.state is not ConnectionState.CLOSED:
            parser.receive_data(data)

    def events(self) -> Iterator[Event]:
        """The frames parsed so far, each to be given to ``handle``.

        Stopping between two leaves the rest in wsproto's buffer, in order,
        for the next call: that is how flow control holds a client.
        """
        parser = self.parser
        if parser is None or parser.state is ConnectionState.CLOSED:
            return iter(())
        return parser.events()

    def handle(self, event: Event) -> None:
        match event:
            case TextMessage() | BytesMessage():
                if self.closing is Closing.OPEN:
                    self._message(event)
            case Ping(payload=payload):
                due = self.pong_due
                if due is None:
                    self.pong_due = [payload]
                elif len(due) <= PINGS_EACH_ANSWERED:
                    due.append(payload)
                else:
                    due[-1] = payload  # past the bound, the latest replaces the one before
            case Pong():
                self.ping_deadline = 0.0
                parser = self.parser
                if self.pong_due is None and parser is not None and wsparser.at_rest(parser):
                    # An idle client's only traffic: drop the parser until the
                    # next bytes (nothing else is left in this read).
                    self.drop_parser()
                self.inbound.rested()
            case CloseConnection():
                self._close_received(event)

    def answer_pings(self) -> None:
        """Answer the pings of one read, each with its pong, in one write.

        The adapter calls it at the end of a read when ``pong_due`` is set.
        Past ``PINGS_EACH_ANSWERED`` pings, only the latest of the rest is answered.
        Once closing, no pong: nothing may follow a close frame.
        """
        due, self.pong_due = self.pong_due, None
        parser = self.parser
        if due is None or parser is None or self.closing is not Closing.OPEN:
            return
        if parser.state is ConnectionState.OPEN:
            self._do(Send(b"".join([parser.send(Pong(payload)) for payload in due])))

    def _message(self, event: TextMessage | BytesMessage) -> None:
        verdict = self.inbound.receive(event, self.session)
        if verdict is Verdict.DELIVERED:
            session = self.session  # welcomed, or (with a broker) waiting for its word
            if self.awaiting_hello and session is not None and (session.greeted or session.key):
                self.awaiting_hello = False
                self._do(_CANCEL_TIMER)
        elif verdict is Verdict.SHAPED:
            self._do(Shape(self.inbound.delay))
        elif verdict is Verdict.TURN_OVER:
            self._do(_TURN_OVER)
        elif verdict is Verdict.TOO_BIG:
            self.fail(CloseReason.MESSAGE_TOO_BIG, wsparser.TOO_BIG)
        elif verdict is Verdict.FLOODING:
            log.warning(
                "%s: flooding past --rate for %.0f s, closing (4002)",
                self.address_for_logs,
                self.inbound.shaped_for(),
                extra={"event": "flood", "client": self.address_for_logs, "code": 4002},
            )
            self.close(CloseCode.RATE_LIMITED, "too many messages")
        elif verdict is Verdict.NOT_TEXT:
            self.close(CloseReason.UNSUPPORTED_DATA, "rawchat.v1 speaks JSON text frames")

    def _close_received(self, event: CloseConnection) -> None:
        parser = self.parser
        assert parser is not None
        if self.close_code is None:
            self.close_code = event.code
        if parser.state is ConnectionState.REMOTE_CLOSING:
            # The client closes: echo its code, then drop TCP first (RFC 6455, 7.1.1).
            self.closing = Closing.DONE
            self._do(Leave(flush=True))
            self._do(Send(parser.send(event.response())))
            self._do(_CLOSE_TRANSPORT)
        elif parser.state is ConnectionState.CLOSED:
            # The answer to our own close frame.
            self.closing = Closing.DONE
            self._do(_CLOSE_TRANSPORT)
        else:
            # wsproto reports a malformed frame as a CloseConnection it made up.
            log.debug("%s: protocol error %d: %s", self.address_for_logs, event.code, event.reason)
            reason = wsparser.TOO_BIG if event.code == CloseReason.MESSAGE_TOO_BIG else event.reason
            self.fail(event.code, reason or "")

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: what is queued goes out, then our close frame."""
        self._send_close(code, reason, flush=True)

    def fail(self, code: int, reason: str = "") -> None:
        """The client broke the protocol: close frame, half-close, ignore the rest."""
        if self._send_close(code, reason, flush=False):
            self.closing = Closing.FAILED
            self._do(_HALF_CLOSE)

    def _send_close(self, code: int, reason: str, *, flush: bool) -> bool:
        if self.closing is not Closing.OPEN:
            return False
        parser = self.parser
        if parser is None:
            parser = self.parser = wsparser.new_parser(self.inbound.max_message)
        if parser.state is not ConnectionState.OPEN:
            return False
        self.closing = Closing.CLOSE_SENT
        if self.close_code is None:
            self.close_code = code
        self._do(Leave(flush=flush))
        try:
            frame = parser.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            self.closing = Closing.DONE
            self._do(_CLOSE_TRANSPORT)
            return False
        self._do(Send(frame))
        self._do(SetTimer(self.close_timeout))
        return True

    def timer_fired(self) -> None:
        """The timer last asked for is due: the hello's, or the bound on our close."""
        if self.closing is Closing.OPEN:
            if self.awaiting_hello:
                self.awaiting_hello = False
                self.close(CloseCode.HELLO_TIMEOUT, "no hello")
        elif self.closing is not Closing.DONE:
            # The client never answered our close frame.
            self.closing = Closing.DONE
            self._do(_ABORT)

    def connection_lost(self) -> int:
        """The transport is gone: the close code it ended with (1006 if none came)."""
        self.closing = Closing.DONE
        self.drop_parser()
        return self.close_code or CloseReason.ABNORMAL_CLOSURE

    @property
    def address_for_logs(self) -> str:
        """The client's address, for logs, while it is in the chat."""
        session = self.session
        return "-" if session is None else session.connection.address

    def at_rest(self) -> bool:
        """Nothing the client sent waits in the parser (or there is none)."""
        return self.parser is None or wsparser.at_rest(self.parser)

    def drop_parser(self) -> None:
        parser, self.parser = self.parser, None
        if parser is not None:
            wsparser.release(parser)

    # -- keepalive --------------------------------------------------------------------

    def expect_pong(self, deadline: float) -> None:
        if self.ping_deadline == 0.0:
            self.ping_deadline = deadline

    def pong_overdue(self, now: float, grace: float, *, held: bool) -> bool:
        """Whether the pong is late; a ``held`` client's deadline moves ``grace`` on instead.

        Flow control stopped reading a held client: its pong may be waiting
        behind its messages. It gets a full timeout more, counted again until
        rawchat reads from it again.
        """
        if not 0.0 < self.ping_deadline <= now:
            return False
        if held:
            self.ping_deadline = now + grace
            return False
        return True
