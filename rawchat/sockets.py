"""Socket tuning: segment sizes and kernel buffers, set where the connection decides."""

from __future__ import annotations

import asyncio
import socket

#: The largest TCP segment rawchat sends or accepts (see cap_segments).
#: Ethernet's are 1448 bytes, so this only changes loopback, whose segments are
#: 64 KiB otherwise. A 16 KiB message still goes in one segment.
SEGMENT_CAP = 32_000

#: The kernel receive buffer of a client once flow control has held it (see fix_receive_window).
#: Linux makes it 64 KiB: two segments of SEGMENT_CAP. A window that cannot
#: take two segments reopens late, on a zero-window probe, stalling the client.
HELD_RECEIVE_BUFFER = 32 * 1024


def cap_segments(listener: socket.socket) -> None:
    """Have the clients ``listener`` accepts send segments of at most SEGMENT_CAP.

    A client's segment size is agreed on in the handshake, so this is set on
    the listening socket. What a held client has sent waits in its receive
    buffer, every byte of it late; with loopback's 64 KiB segments that buffer
    could not be smaller than 128 KiB without stalling (see HELD_RECEIVE_BUFFER).
    """
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT_CAP)
    except (OSError, AttributeError):  # no TCP_MAXSEG here, or refused: segments as they come
        pass


def bound_send_buffer(transport: asyncio.Transport, max_buffer: int) -> None:
    """Fix the kernel send buffer of a client that just upgraded.

    What waits in the kernel's send buffer is invisible to
    get_write_buffer_size: left to grow (to megabytes), it would let a client
    that stopped reading cost far more than --max-buffer. A quarter of
    --max-buffer in all (Linux doubles the half asked), not the smaller
    pressure mark: room for a burst of large messages between two iterations.
    """
    _fix_kernel_buffer(transport, socket.SO_SNDBUF, max(max_buffer // 8, 16 * 1024))


def fix_receive_window(transport: asyncio.Transport) -> None:
    """Stop the kernel receive buffer of a client flow control holds from growing.

    A held client is read in bursts, a message per turn, and Linux answers
    bursts of reading by growing the receive buffer: what the client sent
    would wait there, its messages late by all of it. Fixed, its own buffers
    fill and its writes wait instead.
    """
    _fix_kernel_buffer(transport, socket.SO_RCVBUF, HELD_RECEIVE_BUFFER)


def _fix_kernel_buffer(transport: asyncio.Transport, option: int, size: int) -> None:
    """Fix one of the socket's kernel buffers (``SO_SNDBUF`` or ``SO_RCVBUF``) at ``size``.

    Linux doubles what it is given and, once it is given a size, stops
    growing that buffer on its own (autotuning, up to megabytes).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except (OSError, AttributeError):  # not a TCP socket (tests), or refused
        pass
