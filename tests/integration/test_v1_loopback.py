"""rawchat.v1 over real sockets: two v1 clients and a plain one, presence, history, resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.integration.conftest import run, serving, ws_url

V1: list[Any] = ["rawchat.v1"]


async def next_of(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of one type; the others are not what this test looks at."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]


async def hello(
    url: str, nick: str, **extra: Any
) -> tuple[websockets.ClientConnection, dict[str, Any], dict[str, Any]]:
    ws = await websockets.connect(url, subprotocols=V1)
    await ws.send(json.dumps({"type": "hello", "nick": nick, **extra}))
    return ws, await next_of(ws, "welcome"), await next_of(ws, "joined")


async def change(ws: Any, field: str, value: Any) -> dict[str, Any]:
    """The next presence frame (they are coalesced per tick) whose ``field`` lists ``value``."""
    while True:
        frame = await next_of(ws, "presence")
        if value in frame[field]:
            return frame


def test_two_v1_clients_and_a_plain_one_chat_with_presence_and_history() -> None:
    async def main() -> None:
        async with serving() as server:
            url = ws_url(server)
            ann, _, _ = await hello(url, "ann")
            bob, _, joined = await hello(url, "bob")
            assert joined["members"] == ["ann", "bob"]
            assert (await change(ann, "joined", "bob"))["room"] == "lobby"
            plain = await websockets.connect(url)
            while True:
                frame = await next_of(ann, "presence")
                guests = [n for n in frame["joined"] if n.startswith("guest-")]
                if guests:
                    guest = guests[0]
                    break
            await change(bob, "joined", guest)

            await ann.send(
                json.dumps({"type": "msg", "room": "lobby", "text": "hi all", "cid": "a1"})
            )
            await plain.send("hi from the tutorial")
            for ws in (ann, bob):
                first, second = await next_of(ws, "msg"), await next_of(ws, "msg")
                assert (first["nick"], first["text"]) == ("ann", "hi all")
                assert (second["nick"], second["text"]) == (guest, "hi from the tutorial")
                assert second["id"] == first["id"] + 1
                assert ("cid" in first) == (ws is ann), "only the sender's copy carries the cid"
            assert [await plain.recv(), await plain.recv()] == ["hi all", "hi from the tutorial"]

            await bob.send(json.dumps({"type": "nick", "nick": "bobby"}))
            await change(ann, "renamed", ["bob", "bobby"])
            await bob.close()
            await change(ann, "left", "bobby")

            cat, _, joined = await hello(url, "cat")
            assert [(h["nick"], h["text"]) for h in joined["history"]] == [
                ("ann", "hi all"),
                (guest, "hi from the tutorial"),
            ]
            assert set(joined["members"]) == {"ann", guest, "cat"}
            for ws in (ann, cat, plain):
                await ws.close()

    run(main)


def test_resume_after_a_dropped_connection_gives_exactly_the_missed_messages() -> None:
    async def main() -> None:
        async with serving() as server:
            url = ws_url(server)
            talker, _, _ = await hello(url, "talker")
            ann, welcome, _ = await hello(url, "ann")
            for i in range(3):
                await talker.send(json.dumps({"type": "msg", "room": "lobby", "text": f"seen {i}"}))
            last = [await next_of(ann, "msg") for _ in range(3)][-1]
            # The Wi-Fi blinks: the TCP connection just dies, no close handshake.
            ann.transport.abort()
            await ann.wait_closed()
            for i in range(4):
                await talker.send(
                    json.dumps({"type": "msg", "room": "lobby", "text": f"missed {i}"})
                )
            # The server acknowledges each message to its sender: all four are in.
            echoes = [await next_of(talker, "msg") for _ in range(7)]
            assert echoes[-1]["text"] == "missed 3"
            back, _, joined = await hello(
                url, "ann", resume={"lobby": last["id"]}, epoch=welcome["epoch"]
            )
            assert joined["truncated"] is False
            assert [h["text"] for h in joined["history"]] == [f"missed {i}" for i in range(4)]
            assert [h["id"] for h in joined["history"]] == [last["id"] + i for i in range(1, 5)]
            await talker.send(json.dumps({"type": "msg", "room": "lobby", "text": "live again"}))
            assert (await next_of(back, "msg"))["id"] == last["id"] + 5
            await back.close()
            await talker.close()

    run(main)
