"""Fuzzed frames over real loopback sockets, next to a healthy `websockets` client.

The unit fuzzing (tests/unit/test_fuzz.py) covers far more inputs through a fake
transport; this test checks that the same streams, cut into TCP writes, leave a
real server as they found it: the fuzzing client gets a valid frame stream (a
close frame last, or no close at all), the healthy client keeps chatting, and
the fuzzing client's connection is gone from ``state.connections``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from rawchat.connection import Connection
from tests.integration.conftest import LOOPS, run, serving, ws_url
from tests.unit.test_fuzz import MAX_MESSAGE, check_frames, frame_streams, pieces

#: A bound on each example, not a way to wait: every wait below is on an event.
BOUND = 10.0


async def open_raw(port: int, v1: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    protocol = b"Sec-WebSocket-Protocol: rawchat.v1\r\n" if v1 else b""
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + protocol + b"\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; and whether that ended in a reset."""
    received = bytearray()
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        return bytes(received), True
    return bytes(received), False


@pytest.mark.parametrize("loop_kind", LOOPS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_fuzzed_frames_over_loopback_leave_the_server_healthy(
    loop_kind: str, data: st.DataObject
) -> None:
    v1 = data.draw(st.booleans(), label="v1")
    stream = data.draw(frame_streams(v1), label="stream")
    chunks = data.draw(pieces(stream.data), label="chunks")

    async def scenario() -> None:
        async with serving(max_message=MAX_MESSAGE) as server:
            state = server.state
            assert state is not None
            async with asyncio.timeout(BOUND), connect(ws_url(server)) as healthy:
                (healthy_conn,) = state.connections
                reader, writer = await open_raw(server.port, v1)
                try:
                    (raw_conn,) = state.connections - {healthy_conn}
                    gone = asyncio.get_running_loop().create_future()
                    forget = state.forget

                    def forget_and_tell(conn: Connection) -> None:
                        forget(conn)
                        if conn is raw_conn and not gone.done():
                            gone.set_result(None)

                    state.forget = forget_and_tell  # type: ignore[method-assign]

                    for chunk in chunks:
                        writer.write(chunk)
                        try:
                            await writer.drain()
                        except ConnectionError:
                            break  # the server hung up on us: fine, it may
                    # Our EOF ends every exchange: the server must then close,
                    # whatever state the stream left it in.
                    with contextlib.suppress(ConnectionError, OSError):
                        if not writer.is_closing():
                            writer.write_eof()
                    received, reset = await read_to_eof(reader)
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
                frames = check_frames(received, stream.close_codes, truncated_ok=reset)
                closes = [f.payload[:2].hex() for f in frames if f.opcode == 0x8]
                event(f"close {closes or 'none'}{' after a reset' if reset else ''}")
                await gone

                await healthy.send("ping-after")
                while (await healthy.recv()) != "ping-after":
                    pass
                assert state.connections == {healthy_conn}

    run(scenario, loop_kind)
