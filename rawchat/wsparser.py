"""wsproto's side of a connection: made when needed, with the message size checked at each header.

wsproto would parse a frame's whole payload before anyone could see how long
it claims to be. :class:`MessageSizeLimit` is a wsproto extension that sees
each frame header first: a frame (or the fragments of one message so far)
declaring more than ``--max-message`` is refused with 1009 before one byte of
its payload is consumed, so what follows such a header is never parsed.

Everything here that reads wsproto's private attributes is listed in
tests/unit/test_wsproto_internals.py; if they change, memory use grows (an idle
client keeps its parser), correctness does not.
"""

from __future__ import annotations

from wsproto.connection import Connection as WebSocket
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

#: The reason sent with a 1009.
TOO_BIG = "message too big"

_NO_RSV = RsvBits(False, False, False)


class MessageSizeLimit(Extension):
    """Refuses, at the frame header, a message whose declared length passes ``limit``.

    Not negotiated with the client (never offered, never in a handshake): it
    only watches inbound headers. Payload lengths on the wire are the message's
    bytes (rawchat accepts no compression), so the check is exact, text included.
    """

    name = "rawchat-message-size"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes the message being received has declared so far.
        self.declared = 0

    def enabled(self) -> bool:
        return True  # else wsproto leaves it out

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            return _NO_RSV
        if opcode is Opcode.CONTINUATION:
            self.declared += payload_length
        else:
            self.declared = payload_length
        if self.declared > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return _NO_RSV


def new_parser(max_message: int) -> WebSocket:
    return WebSocket(ConnectionType.SERVER, extensions=[MessageSizeLimit(max_message)])


def at_rest(ws: WebSocket) -> bool:
    """Whether ``ws`` holds nothing a fresh parser would not: no part of a frame or message.

    This reads wsproto's internals (the same in 1.2 and 1.3). Anything
    unexpected counts as busy: a change there costs memory, never correctness.
    """
    try:
        proto = ws._proto
        frames = proto._frame_decoder
        return (
            ws.state is ConnectionState.OPEN
            and not ws._events
            and frames.header is None
            and not len(frames.buffer)
            and proto._message_decoder.opcode is None
            and proto._outbound_opcode is None
        )
    except AttributeError:
        return False


def release(ws: WebSocket) -> None:
    """Let go of a parser so that it is freed at once.

    Its frame parser is a generator that refers back to its owner, so the
    pair would otherwise wait for a full garbage collection; closing the
    generator breaks that loop.
    """
    try:
        ws._proto._parse_more.close()
    except AttributeError:
        pass
