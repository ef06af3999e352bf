"""The least a Python broadcast server on asyncio can do per message: a floor.

Not a server anyone should run. It answers only this load tool's upgrade
(its fixed key), trusts every frame to be whole and unfragmented, has no
limits, no flow control, no close handshake and no keepalive. Per message it
unmasks the payload, puts a header on it and writes the same bytes to every
client's transport, in the client's ``data_received``: no library, no task,
no queue. What it costs is what the event loop and the kernel cost.

It is here to measure the distance between rawchat and that floor. On
``big`` (100 clients, 16 KiB) the time of a message is mostly the kernel's
100 loopback writes, and so is every server's:
``python -m benchmarks --compare big --servers rawchat,floor,websockets``.
"""

from __future__ import annotations

import asyncio
from typing import cast

from benchmarks.frames import HANDSHAKE_ACCEPT, OP_CLOSE, apply_mask, frame_header
from benchmarks.peers.common import announce, parse_args, run, wait_for_signal

RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + HANDSHAKE_ACCEPT + b"\r\n\r\n"
)

clients: set[Floor] = set()


class Floor(asyncio.Protocol):
    transport: asyncio.Transport  # from connection_made on

    def __init__(self) -> None:
        self.pending = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        clients.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data if self.pending else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.pending = buf
                return
            self.transport.write(RESPONSE)
            self.upgraded = True
            clients.add(self)
            buf = buf[end + 4 :]
        self.pending = buf[self.relay(buf) :]

    def relay(self, buf: bytes) -> int:
        """Broadcast every whole frame in ``buf``; return how much was used."""
        pos, end = 0, len(buf)
        while end - pos >= 6:
            first, length = buf[pos], buf[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                if end - pos < 8:
                    break
                length, head = int.from_bytes(buf[head : head + 2], "big"), head + 2
            elif length == 127:
                if end - pos < 14:
                    break
                length, head = int.from_bytes(buf[head : head + 8], "big"), head + 8
            body = head + 4  # client frames are masked
            if end < body + length:
                break
            payload = apply_mask(buf[body : body + length], buf[head:body])
            pos = body + length
            opcode = first & 0x0F
            if opcode == OP_CLOSE:
                self.transport.close()
                return end
            if opcode in (0x1, 0x2):
                frame = frame_header(opcode, length, masked=False) + payload
                for client in clients:
                    client.transport.write(frame)
        return pos


async def main(host: str, port: int, uvloop: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Floor, host, port)
    bound = server.sockets[0].getsockname()
    announce("floor-peer", bound[0], bound[1], uvloop)
    await wait_for_signal()
    server.close()


if __name__ == "__main__":
    args = parse_args("floor_server")
    run(main(args.host, args.port, args.uvloop), args.uvloop)
