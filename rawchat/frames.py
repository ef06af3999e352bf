"""Outgoing WebSocket frames, built once and shared by every recipient.

A server's frames are never masked (RFC 6455, section 5.1), so a message has
exactly one encoding on the wire whoever receives it. rawchat builds that
encoding once per message with wsproto's frame serialiser and hands the same
``bytes`` object to every recipient's transport: the cost of a broadcast is
one encode plus one list append per recipient.
"""

from __future__ import annotations

from wsproto.frame_protocol import FrameProtocol

# One serialiser for the whole process. It carries state only between the
# fragments of one message, and rawchat always writes whole messages (fin=True),
# so sharing it is safe.
_serialiser = FrameProtocol(client=False, extensions=[])


def message(payload: str | bytes) -> bytes:
    """One complete frame: text for ``str``, binary for ``bytes``."""
    return bytes(_serialiser.send_data(payload, True))


#: The keepalive ping: empty payload, the same bytes for every connection.
PING = bytes(_serialiser.ping(b""))
