"""A transport for sampled connections that knows when each read arrived in the socket.

A sampled connection times every message it receives. Timed when the tool's
event loop gets round to it, a message would also carry the tool's own delay:
at 1,000 clients a broadcast makes 1,000 sockets readable at once, and the
last one read waits for the 999 callbacks before it. So sampled connections
ask the kernel to stamp what they receive (``SO_TIMESTAMPNS``) and read with
``recvmsg``, which uvloop's transports do not expose: this small transport
does, on the loop's ``add_reader``/``add_writer``. The stamp is the arrival of
the last segment a read took, so a message that came earlier in the same read
is timed a little late, never early.

It implements the part of ``asyncio.Transport`` that :class:`BenchClient`
and the rig use, with the same callbacks to the protocol.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

#: Linux's values; Python's socket module does not name them.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_STAMP = struct.Struct("qq")  # struct timespec
_ANCILLARY = socket.CMSG_SPACE(_STAMP.size)

READ_SIZE = 256 * 1024


def supported() -> bool:
    """Whether this system stamps what a TCP socket receives."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class StampedTransport:
    """A TCP transport whose reads tell the protocol when they arrived."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer = bytearray()
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused_writing = False
        self._reading = True
        self._closing = False
        self._closed = False
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._extra = {
            "socket": sock,
            "sockname": sock.getsockname(),
            "peername": sock.getpeername(),
        }
        loop.add_reader(self._fd, self._read_ready)
        protocol.connection_made(self)

    # --- reading ----------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(READ_SIZE, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        if not data:
            self._loop.remove_reader(self._fd)
            self._reading = False
            if not self._protocol.eof_received():
                self.close()
            return
        stamp = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                seconds, nanoseconds = _STAMP.unpack_from(payload)
                # The stamp is wall-clock time; the probes carry monotonic time.
                wall_ahead = time.time_ns() - time.monotonic_ns()
                stamp = seconds * 1_000_000_000 + nanoseconds - wall_ahead
        self._protocol.arrived_ns = stamp
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading

    # --- writing ----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._closed:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._force_close(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer += data
        if not self._paused_writing and len(self._buffer) > self._high:
            self._paused_writing = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del self._buffer[:sent]
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._force_close(None)
                return
        if self._paused_writing and len(self._buffer) <= self._low:
            self._paused_writing = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    # --- closing ----------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        """Close once what is buffered has been written."""
        if self._closing or self._closed:
            return
        self._closing = True
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._force_close(None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        self._reading = False
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._buffer.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)
