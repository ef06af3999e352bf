"""WebSocket wire format for the load tool, without I/O.

Only what a load generator needs: build masked client frames once per
message, walk the server's (unmasked) frames, encode and decode the probe
payload, and check per-sender sequence numbers. Everything here takes bytes
in and gives numbers or bytes out, so it is tested without sockets.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: A fixed handshake key is enough for a load tool: the server only has to
#: echo its digest, and computing it once saves work per connection.
HANDSHAKE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE_ACCEPT = base64.b64encode(hashlib.sha1(HANDSHAKE_KEY + _GUID).digest())

#: A fixed non-zero mask key. A zero key would let a server that skips
#: unmasking look correct; this one makes every frame really masked.
MASK_KEY = b"\x5a\xc3\x17\x9e"

#: First byte of every frame the fast path accepts: FIN set, opcode text.
TEXT_FIN = 0x81

#: "SSSSSSSS QQQQQQQQQQ TTTTTTTTTTTTTTTTTTT " sender, sequence, send time (ns).
PROBE_HEAD = 40
MIN_MESSAGE_SIZE = PROBE_HEAD


def upgrade_request(host: str, port: int, path: str = "/ws") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {HANDSHAKE_KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def check_upgrade_response(head: bytes) -> str | None:
    """Return None if ``head`` (up to the blank line) accepts the upgrade, else why not."""
    status, _, rest = head.partition(b"\r\n")
    parts = status.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"101":
        return f"expected 101, got {status[:80]!r}"
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() == HANDSHAKE_ACCEPT:
                return None
            return "wrong Sec-WebSocket-Accept"
    return "no Sec-WebSocket-Accept"


def response_status(head: bytes) -> int | None:
    """The status code of an HTTP response head, None if it is not one."""
    parts = head.partition(b"\r\n")[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def frame_header(opcode: int, length: int, masked: bool) -> bytes:
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, mask_bit | length)
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)


def server_frame_size(payload_len: int) -> int:
    """Bytes on the wire of one unmasked, unfragmented server frame."""
    return len(frame_header(OP_TEXT, payload_len, masked=False)) + payload_len


def _key_stream(key: bytes, length: int) -> int:
    """A 4-byte mask key repeated over ``length`` bytes, as one big integer."""
    return int.from_bytes((key * (length // 4 + 1))[:length], "big")


def apply_mask(data: bytes, key: bytes) -> bytes:
    """Mask or unmask ``data`` with ``key`` (the same XOR both ways)."""
    return (int.from_bytes(data, "big") ^ _key_stream(key, len(data))).to_bytes(len(data), "big")


class Masker:
    """Masks payloads of one fixed length with :data:`MASK_KEY`.

    XOR of two big integers runs in C; the key stream for the length is
    built once, so masking a message costs two conversions and one XOR.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self._key_int = _key_stream(MASK_KEY, length)
        self._header = frame_header(OP_TEXT, length, masked=True) + MASK_KEY

    def text_frame(self, payload: bytes) -> bytes:
        masked = int.from_bytes(payload, "big") ^ self._key_int
        return self._header + masked.to_bytes(self.length, "big")


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """Any masked frame (control frames, odd sizes); :class:`Masker` reuses its key stream."""
    masked = apply_mask(payload, MASK_KEY)
    return frame_header(opcode, len(payload), masked=True) + MASK_KEY + masked


def close_frame(code: int = 1000) -> bytes:
    return mask_frame(OP_CLOSE, struct.pack("!H", code))


class ProbeEncoder:
    """Builds the text of one sender's messages, padded to a fixed size."""

    def __init__(self, sender: int, size: int) -> None:
        if size < MIN_MESSAGE_SIZE:
            raise ValueError(f"message size must be at least {MIN_MESSAGE_SIZE} bytes")
        self.sender = sender
        self._pad = b"x" * (size - PROBE_HEAD)

    def payload(self, seq: int, sent_ns: int) -> bytes:
        return b"%08d %010d %019d " % (self.sender, seq, sent_ns) + self._pad


def decode_probe(head: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(sender, seq, sent_ns) from the first :data:`PROBE_HEAD` bytes of a payload."""
    return int(head[0:8]), int(head[9:19]), int(head[20:39])


class FrameReader:
    """Walks a stream of server frames.

    Data frames are reported with the first ``prefix`` bytes of their
    payload (the rest is skipped, never buffered, so 16 KiB frames cost no
    copies); control frames are reported whole. ``frames`` counts data
    frames whose header has been seen; ``skip`` is what remains of the
    current one's payload.
    """

    def __init__(
        self,
        prefix: int,
        on_data: Callable[[bytes, int], None] | None,
        on_control: Callable[[int, bytes], None],
    ) -> None:
        self.prefix = prefix
        self.on_data = on_data
        self.on_control = on_control
        self.frames = 0
        self.skip = 0
        self.buf = bytearray()
        self.error: str | None = None

    def feed(self, data: bytes | memoryview) -> None:
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return
            data = memoryview(data)[self.skip :]
            self.skip = 0
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                self.error = "server sent a masked frame"
                break
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            opcode = b0 & 0x0F
            if opcode < OP_CLOSE:
                want = min(length, self.prefix)
                if n - pos - hdr < want:
                    break
                self.frames += 1
                if self.on_data is not None:
                    start = pos + hdr
                    self.on_data(bytes(buf[start : start + want]), length)
                avail = n - pos - hdr
                if avail >= length:
                    pos += hdr + length
                else:
                    self.skip = length - avail
                    pos = n
                    break
            else:
                if n - pos - hdr < length:
                    break
                start = pos + hdr
                self.on_control(opcode, bytes(buf[start : start + length]))
                pos = start + length
        del buf[:pos]

    @property
    def complete_frames(self) -> int:
        return self.frames - (1 if self.skip else 0)


def count_aligned(
    frames: int, skip: int, data: bytes, frame_size: int
) -> tuple[int, int] | None:
    """Advance (frames, skip) over ``data`` if it holds back-to-back frames of one size.

    The fast path of counting connections: every message of a run has the
    same size, so frame boundaries fall at known offsets. The first byte at
    each of them is checked (one C-level slice and count, not a byte-by-byte
    parse); any other frame, a ping or a close, shows up there as a byte
    other than 0x81 and the answer is None: parse this chunk properly.
    """
    n = len(data)
    if n <= skip:
        return frames, skip - n
    heads = data[skip::frame_size]
    if heads.count(TEXT_FIN) != len(heads):
        return None
    whole, partial = divmod(n - skip, frame_size)
    if partial:
        return frames + whole + 1, frame_size - partial
    return frames + whole, 0


@dataclass
class SequenceCheck:
    """Loss, duplication and reordering of one sender's messages at one receiver.

    Delivery is expected in order, so the common case is one comparison.
    Gaps are remembered (bounded) so that a late arrival can be told apart
    from a duplicate.
    """

    expected: int = 0
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    missing: set[int] = field(default_factory=set)
    gap_overflow: int = 0

    MAX_TRACKED = 100_000

    def see(self, seq: int) -> None:
        self.received += 1
        if seq == self.expected:
            self.expected = seq + 1
        elif seq > self.expected:
            if len(self.missing) + seq - self.expected <= self.MAX_TRACKED:
                self.missing.update(range(self.expected, seq))
            else:
                self.gap_overflow += seq - self.expected
            self.expected = seq + 1
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reordered += 1
        else:
            self.duplicates += 1

    def lost(self, first: int = 0) -> int:
        """Messages skipped over: a later one arrived, this one never did.

        Messages after the last one seen are not counted here: they may
        still be on their way (the byte counts say how many are missing).
        """
        return len([s for s in self.missing if s >= first]) + self.gap_overflow
