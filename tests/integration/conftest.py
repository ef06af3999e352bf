"""Servers on loopback port 0 for the integration tests, and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from rawchat.config import Config
from rawchat.server import Server
from tests.unit.fakes import masked

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]


def run(main: Callable[[], Awaitable[T]], loop: str = "asyncio") -> T:
    """Run one test scenario on a fresh event loop of the given kind."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[Server]:
    server = Server(Config(port=0, **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


class RawClient:
    """A WebSocket client that can do what real libraries refuse to: break rules, stop reading."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        sock = None
        if rcvbuf is not None:
            import socket

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send_frame(
        self, opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True
    ) -> None:
        self.writer.write(masked(opcode, payload, fin=fin, mask=mask))

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read frames until the server's close frame; return its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
