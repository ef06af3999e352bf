"""rawchat over real loopback sockets, with the websockets library as an independent client."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import struct

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from wsproto.frame_protocol import FrameProtocol

from rawchat.config import KiB
from rawchat.connection import Connection
from tests.integration.conftest import RawClient, run, serving, ws_url
from tests.processes import RawchatProcess


def test_plain_broadcast_reaches_every_client_in_the_same_order(loop_kind: str) -> None:
    clients_n, senders_n, per_sender = 60, 5, 40

    async def main() -> None:
        async with serving(rate=0) as server:  # this test floods on purpose
            clients = [await websockets.connect(ws_url(server)) for _ in range(clients_n)]
            total = senders_n * per_sender

            async def collect(ws: websockets.ClientConnection) -> list[str]:
                return [str(await ws.recv()) for _ in range(total)]

            collectors = [asyncio.create_task(collect(ws)) for ws in clients]
            for i in range(per_sender):
                for s in range(senders_n):
                    await clients[s].send(f"{s}:{i}")
            received = await asyncio.gather(*collectors)
            first = received[0]
            assert sorted(first) == sorted(
                f"{s}:{i}" for s in range(senders_n) for i in range(per_sender)
            )
            for s in range(senders_n):
                mine = [m for m in first if m.startswith(f"{s}:")]
                assert mine == [f"{s}:{i}" for i in range(per_sender)], "a sender's order is kept"
            assert all(r == first for r in received), "every client sees one and the same order"
            for ws in clients:
                await ws.close()

    run(main, loop_kind)


def test_the_tutorial_behaviour_raw_text_in_same_text_out_to_all() -> None:
    async def main() -> None:
        async with serving() as server:
            a = await websockets.connect(ws_url(server))
            b = await websockets.connect(ws_url(server))
            await a.send("<b>hello</b> from the tutorial")
            assert await a.recv() == "<b>hello</b> from the tutorial"
            assert await b.recv() == "<b>hello</b> from the tutorial"
            await b.send(b"\x00\xffbinary")
            assert await a.recv() == b"\x00\xffbinary", "binary stays binary"
            await a.close()
            await b.close()

    run(main)


def test_an_oversized_message_gets_1009_and_reaches_nobody() -> None:
    async def main() -> None:
        async with serving(max_message=64 * KiB) as server:
            big = await websockets.connect(ws_url(server), max_size=None)
            other = await websockets.connect(ws_url(server))
            await big.send("x" * (64 * KiB + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await big.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await other.send("small")
            assert await other.recv() == "small", "the big message was delivered to nobody"
            await other.close()

    run(main)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ((0x1, b"naked", False), 1002),  # unmasked client frame
        ((0x1, b"bad \xc3\x28 utf-8", True), 1007),
        ((0x3, b"reserved opcode", True), 1002),
        ((0x9, b"p" * 126, True), 1002),  # control frame over 125 bytes
    ],
)
def test_protocol_errors_get_their_close_code(frame: tuple[int, bytes, bool], code: int) -> None:
    async def main() -> None:
        async with serving() as server:
            bystander = await websockets.connect(ws_url(server))
            raw = await RawClient.connect(server.port)
            opcode, payload, mask = frame
            raw.send_frame(opcode, payload, mask=mask)
            assert await raw.close_code() == code
            assert await raw.reader.read() == b"", "the server hangs up after the close frame"
            raw.close()
            await bystander.send("still fine")
            assert await bystander.recv() == "still fine"
            await bystander.close()

    run(main)


def test_a_client_close_is_answered_with_the_same_code() -> None:
    async def main() -> None:
        async with serving() as server:
            ws = await websockets.connect(ws_url(server))
            await ws.close(1000, "bye")
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None and rcvd.code == 1000

    run(main)


def test_client_pings_get_pongs_and_silent_clients_are_dropped() -> None:
    async def main() -> None:
        async with serving(ping_interval=0.05, ping_timeout=0.2) as server:
            ws = await websockets.connect(ws_url(server), ping_interval=None)
            pong = await ws.ping(b"hi")
            await asyncio.wait_for(pong, 5)
            raw = await RawClient.connect(server.port)
            opcode, _ = await raw.read_frame()
            assert opcode == 0x9, "the server pings"
            raw.send_frame(0xA, b"")  # answered: the next ping comes
            opcode, _ = await raw.read_frame()
            assert opcode == 0x9
            # Not answered this time: the server gives up with 1011.
            assert await raw.close_code() == 1011
            raw.close()
            await ws.send("alive")
            assert await ws.recv() == "alive"
            await ws.close()

    run(main)


def test_graceful_shutdown_sends_1001_to_every_client(loop_kind: str) -> None:
    async def main() -> None:
        async with serving() as server:
            clients = [await websockets.connect(ws_url(server)) for _ in range(5)]
            v1 = await websockets.connect(ws_url(server), subprotocols=["rawchat.v1"])  # type: ignore[list-item]
            await server.shutdown()
            for ws in [*clients, v1]:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert server.state is not None and not server.state.connections

    run(main, loop_kind)


def test_a_client_that_never_reads_is_evicted_and_costs_at_most_max_buffer(loop_kind: str) -> None:
    max_buffer = 1024 * KiB
    size, count = 32 * KiB, 600  # 19 MB: far more than the kernel's socket buffers hold

    async def main() -> None:
        async with serving(
            max_buffer=max_buffer, max_message=64 * KiB, slow_timeout=0.5, rate=0
        ) as server:
            state = server.state
            assert state is not None
            slow = await RawClient.connect(server.port, rcvbuf=4096)
            (slow_conn,) = list(state.websockets)
            readers = [await websockets.connect(ws_url(server), max_size=None) for _ in range(3)]
            sender = readers[0]

            received = [0] * len(readers)
            progress = asyncio.Condition()

            async def read_all(index: int, ws: websockets.ClientConnection) -> int:
                while received[index] < count:
                    message = await ws.recv()
                    assert len(message) == size
                    async with progress:
                        received[index] += 1
                        progress.notify_all()
                return received[index]

            tasks = [asyncio.create_task(read_all(i, ws)) for i, ws in enumerate(readers)]
            payload = "z" * size
            for sent in range(count):
                await sender.send(payload)
                # Readers that keep up: the sender stays within a window of
                # what they have read (a flood that outruns every reader would
                # evict them: no one is held for a slow reader any more).
                async with progress:
                    await asyncio.wait_for(
                        progress.wait_for(lambda floor=sent - 16: min(received) >= floor), 10.0
                    )
            assert await asyncio.gather(*tasks) == [count] * 3, "fast clients got everything"
            assert state.hub.evictions == 1
            assert slow_conn not in state.websockets
            assert slow_conn.outbox is not None
            frame = size + 4  # a 32 KiB text frame has a 4-byte header
            assert slow_conn.outbox.peak <= max_buffer + frame
            slow.close()
            for ws in readers:
                await ws.close()

    run(main, loop_kind)


def test_a_closed_connection_is_freed_at_once_not_by_the_garbage_collector(
    loop_kind: str,
) -> None:
    """Under churn, closed connections must not pile up until a full collection.

    Each one holds several KiB (its parser, outbox, session); before this was
    so, a soak round of thousands left megabytes for the collector.
    """

    def census() -> tuple[int, int]:
        alive = gc.get_objects()
        return (
            sum(1 for o in alive if isinstance(o, Connection)),
            sum(1 for o in alive if isinstance(o, FrameProtocol)),  # wsproto's parsers
        )

    async def main() -> tuple[int, int]:
        async with serving() as server:
            state = server.state
            assert state is not None
            gc.collect()
            gc.disable()
            try:
                before = census()
                for graceful in (True, False) * 5:
                    client = await RawClient.connect(server.port)
                    client.send_frame(0x1, b"hello")
                    assert await client.read_frame() == (0x1, b"hello")
                    if graceful:
                        client.send_frame(0x8, struct.pack("!H", 1000))
                        assert await client.close_code() == 1000
                        client.close()
                    else:
                        client.writer.transport.abort()
                    await client.writer.wait_closed()
                if state.connections:
                    state.drained = asyncio.get_running_loop().create_future()
                    await asyncio.wait_for(state.drained, 5)
                after = census()
                return after[0] - before[0], after[1] - before[1]
            finally:
                gc.enable()

    assert run(main, loop_kind) == (0, 0)


def test_a_v1_chat_over_loopback() -> None:
    async def main() -> None:
        async with serving() as server:
            ann = await websockets.connect(ws_url(server), subprotocols=["rawchat.v1"])  # type: ignore[list-item]
            assert ann.subprotocol == "rawchat.v1"
            await ann.send(json.dumps({"type": "hello", "nick": "ann"}))
            assert json.loads(await ann.recv())["type"] == "welcome"
            assert json.loads(await ann.recv())["type"] == "joined"
            plain = await websockets.connect(ws_url(server))
            # Presence is coalesced per tick: ann's own arrival may come first.
            guests: list[str] = []
            while not guests:
                presence = json.loads(await ann.recv())
                guests = [n for n in presence["joined"] if n.startswith("guest-")]
            await plain.send("hello v1")
            got = json.loads(await ann.recv())
            assert (got["nick"], got["text"]) == (guests[0], "hello v1")
            await ann.send(json.dumps({"type": "msg", "room": "lobby", "text": "hi", "cid": "1"}))
            assert json.loads(await ann.recv())["cid"] == "1"
            assert await plain.recv() == "hello v1"
            assert await plain.recv() == "hi"
            await ann.close()
            await plain.close()

    run(main)


def test_the_command_line_prints_its_port_and_exits_cleanly_on_sigterm() -> None:
    async def main() -> None:
        with RawchatProcess("--uvloop") as server:
            assert server.log[0] == server.ready.string, "the first line says where it listens"
            assert server.flavour == "uvloop"
            ws = await websockets.connect(server.ws_url)
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert await asyncio.to_thread(server.stop, None) == 0

    run(main)
