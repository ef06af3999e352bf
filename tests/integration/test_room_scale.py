"""Rooms over loopback at their limits:
a history larger than --max-buffer, a text past max_text, a shutdown with a full room."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import run, serving, ws_url

V1: list[Any] = ["rawchat.v1"]


async def receive(ws: websockets.ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[no-any-return]


async def next_of(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message


async def v1(url: str, nick: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, subprotocols=V1, max_size=None)
    await ws.send(json.dumps({"type": "hello", "nick": nick}))
    return ws


def test_a_history_larger_than_max_buffer_reaches_a_newcomer_in_pages() -> None:
    """19 x 60 KB in the lobby: what the room keeps (--history-bytes, 1 MiB) is nearly twice
    --max-buffer here, yet a joiner gets its welcome and joined, then the rest through
    history requests, and is never closed as too slow."""
    size, count, max_buffer = 60_000, 19, 512 * 1024

    async def main() -> None:
        async with serving(max_message=256 * 1024, max_buffer=max_buffer) as server:
            url = ws_url(server)
            poster = await websockets.connect(url, max_size=None)  # plain: text kept verbatim
            for i in range(count):
                await poster.send(f"{i:02d}" + "x" * (size - 2))
            for _ in range(count):  # its own lines come back once they are in the history
                await asyncio.wait_for(poster.recv(), 5)
            late = await v1(url, "late")
            assert (await receive(late))["type"] == "welcome"
            joined = await receive(late)
            assert joined["type"] == "joined" and joined["room"] == "lobby"
            texts = [h["text"] for h in joined["history"]]
            more, before = joined["more"], joined["history"][0]["id"]
            while more:
                await late.send(json.dumps({"type": "history", "room": "lobby", "before": before}))
                page = await next_of(late, "history")
                texts = [h["text"] for h in page["messages"]] + texts
                more, before = page["more"], page["messages"][0]["id"]
            kept = [f"{i:02d}" for i in range(count - len(texts), count)]
            assert [t[:2] for t in texts] == kept, "the newest, each once, in order"
            assert sum(map(len, texts)) > max_buffer
            await late.send(json.dumps({"type": "msg", "room": "lobby", "text": "still here"}))
            assert (await next_of(late, "msg"))["text"] == "still here"
            for ws in (poster, late):
                await ws.close()

    run(main)


def test_text_too_long_is_an_error_and_the_connection_stays() -> None:
    async def main() -> None:
        async with serving() as server:
            ann = await v1(ws_url(server), "ann")
            welcome = await next_of(ann, "welcome")
            await next_of(ann, "joined")
            too_long = "x" * (welcome["limits"]["max_text"] + 1)
            await ann.send(json.dumps({"type": "msg", "room": "lobby", "text": too_long}))
            error = await next_of(ann, "error")
            assert error["code"] == "text_too_long"
            await ann.send(json.dumps({"type": "msg", "room": "lobby", "text": "shorter"}))
            assert (await next_of(ann, "msg"))["text"] == "shorter"
            await ann.close()

    run(main)


def test_a_shutdown_tells_nobody_who_left_only_1001() -> None:
    """Telling each of n members about the others leaving is quadratic and nobody reads it."""
    count = 30

    async def main() -> None:
        async with serving() as server:
            url = ws_url(server)
            clients = [await v1(url, f"n{i}") for i in range(count)]
            for i, ws in enumerate(clients):  # wait until each has seen everyone after it join
                awaited = {f"n{j}" for j in range(i + 1, count)}
                while awaited:
                    frame = await next_of(ws, "presence")
                    awaited -= {*frame.get("joined", ()), frame.get("nick")}
            await server.shutdown()
            for ws in clients:
                leaves = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        frame = await receive(ws)
                        if frame["type"] == "presence" and (
                            frame.get("left") or frame.get("event") == "leave"
                        ):
                            leaves.append(frame)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                assert leaves == []

    run(main)
