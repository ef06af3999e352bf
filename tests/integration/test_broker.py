"""Several rawchat nodes joined through a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from rawchat.server import Server
from tests.integration.conftest import run, serving, ws_url
from tests.integration.redis_server import RedisServer
from tests.processes import LISTENING, RawchatProcess

V1 = ["rawchat.v1"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Chatter:
    """A rawchat.v1 client that reads JSON and skips what a test does not look at."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def hello(
        cls, server: Server, nick: str, **extra: Any
    ) -> tuple[Chatter, dict[str, Any], dict[str, Any]]:
        ws = await websockets.connect(ws_url(server), subprotocols=V1)  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "nick": nick, **extra}))
        chatter = cls(ws)
        welcome = await chatter.next("welcome")
        joined = await chatter.next("joined")
        return chatter, welcome, joined

    async def next(self, kind: str, **match: Any) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message  # type: ignore[no-any-return]

    async def arrival(self, nicks: set[str]) -> None:
        """Wait for presence frames (coalesced per tick) that list every one of ``nicks``."""
        missing = set(nicks)
        while missing:
            missing -= set((await self.next("presence"))["joined"])

    async def say(self, text: str, room: str = "lobby") -> None:
        await self.ws.send(json.dumps({"type": "msg", "room": room, "text": text}))


def guest_nick(server: Server) -> str:
    """The nick of the one plain client connected to ``server``."""
    assert server.state is not None
    (nick,) = [s.nick for s in server.state.chat.nicks.values() if s.plain]
    return nick


def test_clients_on_two_nodes_chat_and_agree_on_presence_and_history(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            ann, _, _ = await Chatter.hello(a, "ann")
            bob, _, joined_b = await Chatter.hello(b, "bob")
            await ann.arrival({"bob"})
            # Two nodes race: bob learns of ann from his joined, or from the
            # presence that follows it when her join reached Redis after his.
            if "ann" not in joined_b["members"]:
                await bob.arrival({"ann"})
            plain_a = await websockets.connect(ws_url(a))
            plain_b = await websockets.connect(ws_url(b))
            guest_a, guest_b = (guest_nick(node) for node in (a, b))
            for chatter in (ann, bob):  # each sees both guests arrive, whichever node they are on
                await chatter.arrival({guest_a, guest_b})

            await ann.say("from ann on A")
            await plain_b.send("from a guest on B")
            # Sent at once to two nodes, the two messages may be numbered either
            # way; what matters is that everyone sees one and the same order.
            orders = []
            for chatter in (ann, bob):
                first = await chatter.next("msg")
                second = await chatter.next("msg")
                assert second["id"] == first["id"] + 1, "one id sequence across nodes"
                orders.append([(m["id"], m["nick"], m["text"]) for m in (first, second)])
            assert orders[0] == orders[1]
            assert {(nick, text) for _, nick, text in orders[0]} == {
                ("ann", "from ann on A"),
                (guest_b, "from a guest on B"),
            }
            texts = [text for _, _, text in orders[0]]
            for plain in (plain_a, plain_b):
                assert [await plain.recv(), await plain.recv()] == texts
            assert guest_a != guest_b

            # A late joiner on either node sees the same members and history.
            views = []
            for node, nick in ((a, "cat"), (b, "dan")):
                late, _, joined = await Chatter.hello(node, nick)
                views.append(joined)
                await late.ws.close()
            histories = [[h["text"] for h in view["history"]] for view in views]
            assert histories[0] == histories[1] == texts
            assert views[0]["last_id"] == views[1]["last_id"]
            for view in views:
                assert {"ann", "bob", guest_a, guest_b} <= set(view["members"])
                assert len(view["members"]) == len(set(view["members"])), "no one twice"
            for ws in (ann.ws, bob.ws, plain_a, plain_b):
                await ws.close()

    run(main)


def test_a_client_resumes_on_the_other_node_without_gaps_or_duplicates(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            ann, welcome, _ = await Chatter.hello(a, "ann")
            talker, _, _ = await Chatter.hello(b, "talker")
            for i in range(3):
                await talker.say(f"before {i}")
            seen = [await ann.next("msg") for _ in range(3)]
            await ann.ws.close()
            for i in range(4):
                await talker.say(f"while away {i}")
            resume = {"lobby": seen[-1]["id"]}
            back, _, joined = await Chatter.hello(b, "ann", resume=resume, epoch=welcome["epoch"])
            assert joined["truncated"] is False
            await talker.say("after")
            # What node B had already received comes as history, the rest live:
            # together, every missed message exactly once, in order.
            got = list(joined["history"])
            while not got or got[-1]["text"] != "after":
                got.append(await back.next("msg"))
            assert [g["text"] for g in got] == [f"while away {i}" for i in range(4)] + ["after"]
            first = seen[-1]["id"] + 1
            assert [g["id"] for g in got] == list(range(first, first + 5))
            await back.ws.close()
            await talker.ws.close()

    run(main)


def health(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_a_redis_outage_keeps_local_chat_going_and_heals(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            assert a.broker is not None and b.broker is not None
            ann, _, _ = await Chatter.hello(a, "ann")
            amy, _, _ = await Chatter.hello(a, "amy")
            bob, _, _ = await Chatter.hello(b, "bob")

            redis_server.kill()
            await asyncio.wait_for(a.broker.disconnected.wait(), 10)
            await asyncio.wait_for(b.broker.disconnected.wait(), 10)
            report = await asyncio.to_thread(health, a)
            assert report["status"] == "degraded" and report["broker"]["up"] is False

            await ann.say("local while Redis is down")
            assert (await amy.next("msg"))["text"] == "local while Redis is down"
            assert (await ann.next("msg"))["text"] == "local while Redis is down"

            redis_server.start()
            await asyncio.wait_for(a.broker.connected.wait(), 20)
            await asyncio.wait_for(b.broker.connected.wait(), 20)
            assert (await asyncio.to_thread(health, b))["status"] == "ok"
            await bob.say("across again")
            for chatter in (ann, amy):
                assert (await chatter.next("msg", text="across again"))["nick"] == "bob"
            await ann.say("and back")
            assert (await bob.next("msg", text="and back"))["nick"] == "ann"
            for ws in (ann.ws, amy.ws, bob.ws):
                await ws.close()

    run(main)


def test_two_workers_share_a_port_and_the_supervisor_replaces_a_dead_one(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        with RawchatProcess(
            "--workers",
            "2",
            "--uvloop",
            "--broker",
            redis_server.url,
            "--log-level",
            "info",
            own_group=True,  # the workers go down with it
        ) as server:
            assert server.flavour == "uvloop, 2 workers"

            async def line_matching(pattern: str) -> re.Match[str]:
                return await asyncio.to_thread(server.line_matching, pattern)

            async def a_worker_listens() -> None:
                found = await line_matching(LISTENING)
                assert found["flavour"] == "uvloop" and found["port"] == str(server.port)

            for _ in range(2):
                await a_worker_listens()
            url = server.ws_url
            clients = [await websockets.connect(url) for _ in range(16)]
            await clients[0].send("to everyone, on both workers")
            for ws in clients:
                assert await asyncio.wait_for(ws.recv(), 10) == "to everyone, on both workers"

            # Find both workers through /healthz (the kernel spreads connections), kill one.
            pids: set[int] = set()
            for _ in range(200):
                report = await asyncio.to_thread(
                    lambda: json.loads(
                        urllib.request.urlopen(f"{server.origin}/healthz", timeout=5).read()
                    )
                )
                pids.add(report["pid"])
                if len(pids) == 2:
                    break
            assert len(pids) == 2, "both workers answer on the one port"
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            await line_matching(rf"worker {victim} exited .*starting another")
            await a_worker_listens()

            # The dead worker's connections were closed by the kernel with it;
            # the others still answer a ping.
            survivors, lost = [], []
            for ws in clients:
                try:
                    pong = await ws.ping()
                    await asyncio.wait_for(pong, 10)
                    survivors.append(ws)
                except websockets.ConnectionClosed:
                    lost.append(ws)
            assert survivors and lost, "the kernel put clients on both workers"
            newcomer = await websockets.connect(url)
            await survivors[0].send("after the crash")
            for ws in [*survivors, newcomer]:
                assert await asyncio.wait_for(ws.recv(), 10) == "after the crash"
            for ws in [*survivors, newcomer]:
                await ws.close()
            assert await asyncio.to_thread(server.stop) == 0

    run(main)


async def publish_raw(url: str, channel: str, *payloads: str) -> None:
    """Publish on the broker's channels as a faulty or hostile node would."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        for payload in payloads:
            await client.publish(channel, payload)
    finally:
        await client.aclose()


def test_malformed_broker_payloads_are_ignored_and_the_link_stays_up(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            assert a.broker is not None
            ann, _, _ = await Chatter.hello(a, "ann")
            bob, _, _ = await Chatter.hello(b, "bob")
            await ann.arrival({"bob"})
            await publish_raw(
                redis_server.url,
                "rawchat:room:lobby",
                '{"room":"lobby","k":"msg"}',  # no id, no node
                '{"room":"lobby","k":"presence","node":"x"}',  # no event, no nick
                '{"room":"lobby","k":"bin","node":"x","data":"zz"}',  # not hex
                '["not an object"]',
                "not json",
            )
            await bob.say("still across")
            assert (await ann.next("msg"))["text"] == "still across"
            assert a.broker.up and a.broker.outages == 0
            for ws in (ann.ws, bob.ws):
                await ws.close()

    run(main)


def test_an_unexpected_failure_of_a_broker_task_is_a_lost_link_that_heals(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            assert a.broker is not None
            broker = a.broker
            ann, _, _ = await Chatter.hello(a, "ann")
            bob, _, _ = await Chatter.hello(b, "bob")
            await ann.arrival({"bob"})
            # A fault of rawchat's own (not Redis's) in the heartbeat, which
            # reconnecting also goes through: the link stays down until it is fixed.
            beat = broker._beat
            faulty = True

            async def failing_beat() -> None:
                if faulty:
                    raise RuntimeError("injected fault")
                await beat()

            monkeypatch.setattr(broker, "_beat", failing_beat)
            await asyncio.wait_for(broker.disconnected.wait(), 10)
            report = await asyncio.to_thread(health, a)
            assert report["status"] == "degraded" and report["broker"]["up"] is False
            await ann.say("local meanwhile")
            assert (await ann.next("msg"))["text"] == "local meanwhile"
            faulty = False
            await asyncio.wait_for(broker.connected.wait(), 20)
            assert (await asyncio.to_thread(health, a))["status"] == "ok"
            await bob.say("across again")
            assert (await ann.next("msg", text="across again"))["nick"] == "bob"
            for ws in (ann.ws, bob.ws):
                await ws.close()

    run(main)
    # A fault of rawchat's own is a bug, and logged as one (with its traceback);
    # this one was made on purpose.
    faults = [r for r in caplog.records if r.name == "rawchat.broker" and r.exc_info]
    assert faults and all("injected fault" in r.getMessage() for r in faults)
    caplog.clear()


def test_a_stalled_redis_fills_the_bounded_queue_and_messages_still_arrive(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        import redis.asyncio as aioredis

        async with serving(broker=redis_server.url) as a:
            assert a.broker is not None
            broker = a.broker
            broker.max_outgoing = 8
            ann, _, _ = await Chatter.hello(a, "ann")
            amy, _, _ = await Chatter.hello(a, "amy")
            await ann.arrival({"amy"})
            admin = aioredis.Redis.from_url(redis_server.url)
            try:
                # Redis answers nothing for 30 s: the writer waits, the queue fills.
                await admin.execute_command("CLIENT", "PAUSE", 30_000, "ALL")
                sent = [f"m{i}" for i in range(20)]
                for text in sent:
                    await ann.say(text)
                # Every message reaches the room (here) long before Redis wakes up.
                got = [(await amy.next("msg"))["text"] for _ in sent]
                assert got == sent
                assert broker.outages == 1
                report = await asyncio.to_thread(health, a)
                assert report["status"] == "degraded"
            finally:
                redis_server.kill()  # a paused Redis would not even take an UNPAUSE
                await admin.aclose()
            for ws in (ann.ws, amy.ws):
                await ws.close()

    run(main)


async def refused_hello(server: Server, nick: str) -> dict[str, Any]:
    """Say hello as ``nick`` and return the error that comes instead of a welcome."""
    ws = await websockets.connect(ws_url(server), subprotocols=V1)  # type: ignore[list-item]
    try:
        await ws.send(json.dumps({"type": "hello", "nick": nick}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "error", reply
        return reply  # type: ignore[no-any-return]
    finally:
        await ws.close()


def test_a_nick_held_on_one_node_is_refused_on_the_other_until_it_is_free(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            ann, _, _ = await Chatter.hello(a, "ann")
            assert (await refused_hello(b, "ANN"))["code"] == "nick_taken"
            # A rename to a nick held on the other node fails the same way, visibly.
            bob, _, _ = await Chatter.hello(b, "bob")
            # Presence is coalesced per tick: what is pending (ann's arrival on B
            # among it) goes out with bob's own, and cannot cancel her leave below.
            await bob.arrival({"bob"})
            await bob.ws.send(json.dumps({"type": "nick", "nick": "Ann"}))
            assert (await bob.next("error"))["code"] == "nick_taken"
            await ann.ws.close()
            # Freed when its holder leaves, before the leave is published.
            while "ann" not in (await bob.next("presence"))["left"]:
                pass
            ws = await websockets.connect(ws_url(b), subprotocols=V1)  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "hello", "nick": "ann"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["nick"] == "ann"
            await asyncio.gather(ws.close(), bob.ws.close())

    run(main)


@pytest.fixture
def secret_file(tmp_path: Any) -> Any:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


SECRET = b"a broker test secret, long enough for HS256"


def test_an_operator_on_one_node_kicks_and_bans_a_user_on_the_other(
    redis_server: RedisServer, secret_file: Any
) -> None:
    from rawchat.identity import Tokens

    token = Tokens(SECRET).issue("op", 60, operator=True)

    async def main() -> None:
        config = {"broker": redis_server.url, "token_secret_file": secret_file}
        async with serving(**config) as a, serving(**config) as b:
            op, _, _ = await Chatter.hello(a, "op", token=token)
            bob, _, _ = await Chatter.hello(b, "bob")
            await op.arrival({"bob"})
            await op.ws.send(json.dumps({"type": "kick", "room": "lobby", "nick": "bob"}))
            kicked = await bob.next("kicked")
            assert (kicked["room"], kicked["nick"], kicked["by"]) == ("lobby", "bob", "op")
            left = await op.next("presence")
            assert "bob" in left["left"]
            await bob.say("am I still here?")
            assert (await bob.next("error"))["code"] == "not_in_room"

            await bob.ws.send(json.dumps({"type": "join", "room": "lobby"}))
            await bob.next("joined", room="lobby")
            await op.arrival({"bob"})
            mute = {"type": "mute", "room": "lobby", "nick": "bob", "seconds": 60}
            await op.ws.send(json.dumps(mute))
            assert (await bob.next("muted"))["by"] == "op"
            await bob.say("can anyone hear me?")
            assert (await bob.next("error"))["code"] == "muted"
            ban = {"type": "ban", "room": "lobby", "nick": "bob", "seconds": 60}
            await op.ws.send(json.dumps(ban))
            assert (await bob.next("banned"))["seconds"] == 60
            # Node B enforces it: bob cannot come back there.
            await bob.ws.send(json.dumps({"type": "join", "room": "lobby"}))
            assert (await bob.next("error"))["code"] == "banned"
            await asyncio.gather(op.ws.close(), bob.ws.close())

    run(main)


def test_a_delete_on_one_node_reaches_the_other_nodes_clients_and_the_shared_history(
    redis_server: RedisServer, secret_file: Any
) -> None:
    from rawchat.identity import Tokens

    token = Tokens(SECRET).issue("op", 60, operator=True)

    async def main() -> None:
        config = {"broker": redis_server.url, "token_secret_file": secret_file}
        async with serving(**config) as a, serving(**config) as b:
            op, _, _ = await Chatter.hello(a, "op", token=token)
            bob, _, _ = await Chatter.hello(b, "bob")
            await bob.say("keep this")
            await bob.say("oops")
            kept = await op.next("msg", text="keep this")
            oops = await op.next("msg", text="oops")
            await bob.next("msg", text="oops")
            delete = {"type": "delete", "room": "lobby", "id": oops["id"]}
            await op.ws.send(json.dumps(delete))
            told = await bob.next("deleted")
            assert (told["room"], told["id"], told["by"]) == ("lobby", oops["id"], "op")
            # B's history lost it, and so did Redis's: a node that starts now
            # loads the room without it.
            cat, _, joined_b = await Chatter.hello(b, "cat")
            async with serving(**config) as c:
                dan, _, joined_c = await Chatter.hello(c, "dan")
                for joined in (joined_b, joined_c):
                    ids = [m["id"] for m in joined["history"]]
                    assert kept["id"] in ids and oops["id"] not in ids
                await dan.ws.close()
            await asyncio.gather(op.ws.close(), bob.ws.close(), cat.ws.close())

    run(main)


def test_a_direct_message_reaches_its_recipient_on_another_node(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with serving(broker=redis_server.url) as a, serving(broker=redis_server.url) as b:
            ann, _, _ = await Chatter.hello(a, "ann")
            bob, _, _ = await Chatter.hello(b, "bob")
            await ann.ws.send(json.dumps({"type": "msg", "to": "Bob", "text": "psst", "cid": "d1"}))
            got = await bob.next("msg", text="psst")
            assert (got["nick"], got["to"]) == ("ann", "bob")
            ack = await ann.next("msg", cid="d1")
            assert (ack["id"], ack["text"]) == (got["id"], "psst")
            await ann.ws.send(json.dumps({"type": "msg", "to": "nobody", "text": "?", "cid": "d2"}))
            error = await ann.next("error")
            assert (error["code"], error.get("cid")) == ("no_such_nick", "d2")
            await asyncio.gather(ann.ws.close(), bob.ws.close())

    run(main)


async def plain_refused(server: Server) -> int:
    """Connect a plain client and return the close code it gets without sending anything."""
    ws = await websockets.connect(ws_url(server))
    try:
        await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code


async def wait_plain(server: Server) -> websockets.ClientConnection:
    """A plain client, once its server has it in the lobby."""
    ws = await websockets.connect(ws_url(server))
    while True:  # the chat takes it in on the upgrade; wait for that, not a fixed time
        assert server.state is not None
        if any(s.plain for s in server.state.chat.nicks.values()):
            return ws
        await asyncio.sleep(0.01)


def test_a_guest_banned_on_one_node_is_refused_by_address_on_the_other(
    redis_server: RedisServer, secret_file: Any
) -> None:
    from rawchat.identity import Tokens

    token = Tokens(SECRET).issue("op", 60, operator=True)

    async def main() -> None:
        config = {"broker": redis_server.url, "token_secret_file": secret_file}
        async with serving(**config) as a, serving(**config) as b:
            op, _, _ = await Chatter.hello(a, "op", token=token)
            bob, _, _ = await Chatter.hello(b, "bob")
            await op.arrival({"bob"})
            ban = {"type": "ban", "room": "lobby", "nick": "bob", "seconds": 60}
            await op.ws.send(json.dumps(ban))
            assert (await bob.next("banned"))["seconds"] == 60
            # B publishes bob's address before his leave, on the same channel.
            while "bob" not in (await op.next("presence"))["left"]:
                pass
            # Another guest nick from bob's address, on the node where the ban was taken:
            ws = await websockets.connect(ws_url(a), subprotocols=V1)  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "hello", "nick": "bobby"}))
            carl = Chatter(ws)
            assert (await carl.next("welcome"))["nick"] == "bobby"
            refused = await carl.next("error")
            assert refused["code"] == "banned" and "lobby" in refused["message"]
            # A plain client from that address is closed at once (it cannot read errors).
            assert await plain_refused(a) == 1008
            # Lifting the ban lifts the address too, on every node, bob being gone.
            lift = {"type": "ban", "room": "lobby", "nick": "bob", "seconds": 0}
            await op.ws.send(json.dumps(lift))
            await op.next("banned", seconds=0)
            await carl.ws.send(json.dumps({"type": "join", "room": "lobby"}))
            await carl.next("joined", room="lobby")
            await asyncio.gather(op.ws.close(), bob.ws.close(), carl.ws.close())

    run(main)


def test_a_banned_plain_client_is_closed_with_1008_when_it_comes_back(
    redis_server: RedisServer, secret_file: Any
) -> None:
    from rawchat.identity import Tokens

    token = Tokens(SECRET).issue("op", 60, operator=True)

    async def main() -> None:
        config = {"broker": redis_server.url, "token_secret_file": secret_file}
        async with serving(**config) as a, serving(**config) as b:
            op, _, _ = await Chatter.hello(a, "op", token=token)
            plain = await wait_plain(a)
            nick = guest_nick(a)
            await op.arrival({nick})
            ban = {"type": "ban", "room": "lobby", "nick": nick, "seconds": 60}
            await op.ws.send(json.dumps(ban))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(plain.recv(), 10)
            assert plain.close_code == 1008
            # Back on the same node, then on the other: closed at once, both times.
            assert await plain_refused(a) == 1008
            while nick not in (await op.next("presence"))["left"]:
                pass
            assert await plain_refused(b) == 1008
            await op.ws.close()

    run(main)


def test_room_owners_are_the_same_on_every_node(
    redis_server: RedisServer, secret_file: Any
) -> None:
    from rawchat.identity import Tokens

    tokens = Tokens(SECRET)
    op_token = tokens.issue("op", 60, operator=True)

    async def main() -> None:
        config = {"broker": redis_server.url, "token_secret_file": secret_file}
        async with serving(**config) as a, serving(**config) as b:
            # cy creates "dev" on A: its owner, on B too.
            cy, _, _ = await Chatter.hello(a, "cy", token=tokens.issue("cy", 60), rooms=["dev"])
            await cy.say("mine", room="dev")
            await cy.next("msg", text="mine")  # back from Redis: "dev" is known there
            # dan is the first token holder in "dev" on B, but "dev" is not new: not an owner.
            dan, _, _ = await Chatter.hello(b, "dan", token=tokens.issue("dan", 60), rooms=["dev"])
            bob, _, _ = await Chatter.hello(b, "bob", rooms=["dev"])
            await cy.arrival({"bob"})
            await dan.ws.send(json.dumps({"type": "kick", "room": "dev", "nick": "bob"}))
            assert (await dan.next("error"))["code"] == "forbidden"
            # cy, on B now, still owns "dev".
            await cy.ws.close()
            while "cy" not in (await dan.next("presence"))["left"]:
                pass  # A frees the nick before it publishes the leave
            cy, _, _ = await Chatter.hello(b, "cy", token=tokens.issue("cy", 60), rooms=["dev"])
            await cy.ws.send(json.dumps({"type": "kick", "room": "dev", "nick": "bob"}))
            assert (await bob.next("kicked", room="dev"))["by"] == "cy"
            # An operator on A makes dan an owner: dan, on B, may moderate "dev".
            op, _, _ = await Chatter.hello(a, "op", token=op_token)
            await op.ws.send(json.dumps({"type": "owner", "room": "dev", "nick": "dan"}))
            granted = await dan.next("owner", room="dev")
            assert (granted["nick"], granted["owner"], granted["by"]) == ("dan", True, "op")
            mute = {"type": "mute", "room": "dev", "nick": "cy", "seconds": 60}
            await dan.ws.send(json.dumps(mute))
            assert (await cy.next("muted", room="dev"))["by"] == "dan"
            await asyncio.gather(*(c.ws.close() for c in (op, cy, dan, bob)))

    run(main)
