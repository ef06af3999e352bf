"""History on disk over real sockets: restarts (SIGTERM, kill -9), older pages, a failing disk."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from rawchat import store as store_module
from rawchat.archive import MEMORY_WINDOW
from rawchat.store import DATABASE
from tests.integration.conftest import run, serving, ws_url
from tests.integration.test_v1_loopback import hello, next_of
from tests.processes import RAWCHAT, ServerProcess

LOBBY = "lobby"


def url_of(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def post(ws: websockets.ClientConnection, text: str, cid: str) -> dict[str, Any]:
    """Send a message and wait for its acknowledgement (the sender's copy, with its cid)."""
    await ws.send(json.dumps({"type": "msg", "room": LOBBY, "text": text, "cid": cid}))
    while True:
        message = await next_of(ws, "msg")
        if message.get("cid") == cid:
            return message


async def walk_back(ws: websockets.ClientConnection, before: int | None) -> list[dict[str, Any]]:
    """Every message older than ``before``, by ``history`` requests, oldest first."""
    found: list[dict[str, Any]] = []
    more = True
    while more:
        request: dict[str, Any] = {"type": "history", "room": LOBBY, "limit": 100}
        if before is not None:
            request["before"] = before
        await ws.send(json.dumps(request))
        page = await next_of(ws, "history")
        found = page["messages"] + found
        more = page["more"]
        if page["messages"]:
            before = page["messages"][0]["id"]
        else:
            assert not more, "an empty page cannot have more before it"
    return found


def test_a_restart_keeps_the_epoch_the_ids_and_exactly_what_a_resuming_client_missed(
    tmp_path: Path,
) -> None:
    data = str(tmp_path / "data")

    async def main() -> None:
        with ServerProcess("--port", "0", "--data", data) as first:
            first.line_matching(f"history in {re.escape(data)} ")
            ann, welcome, _ = await hello(url_of(first), "ann")
            bob, _, _ = await hello(url_of(first), "bob")
            for n in range(3):
                await post(ann, f"seen {n}", f"s{n}")
            seen = [await next_of(bob, "msg") for _ in range(3)]
            await bob.close()
            missed = [await post(ann, f"missed {n}", f"m{n}") for n in range(2)]
            await ann.close()
            assert await asyncio.to_thread(first.stop) == 0

        with ServerProcess("--port", "0", "--data", data) as second:
            bob, again, joined = await hello(
                url_of(second),
                "bob",
                rooms=[LOBBY],
                resume={LOBBY: seen[-1]["id"]},
                epoch=welcome["epoch"],
            )
            assert again["epoch"] == welcome["epoch"]
            assert joined["truncated"] is False
            assert [(m["id"], m["text"]) for m in joined["history"]] == [
                (m["id"], m["text"]) for m in missed
            ]
            cy, _, _ = await hello(url_of(second), "cy")
            new = await post(cy, "after the restart", "n1")
            assert new["id"] > missed[-1]["id"], "ids continue, never reused"
            assert (await next_of(bob, "msg"))["id"] == new["id"]
            await bob.close()
            await cy.close()

    run(main)


#: What the test grants a commit beside the store's batch window (a loaded machine).
COMMIT_ALLOWANCE = 0.2
WINDOW = 0.005


def test_kill_9_during_a_stream_loses_nothing_acknowledged_before_the_last_window(
    tmp_path: Path,
) -> None:
    data = str(tmp_path / "data")
    args = ("--port", "0", "--data", data, "--history", "100000")

    async def main() -> None:
        with ServerProcess(*args, errors_allowed=True) as first:
            ann, welcome, _ = await hello(url_of(first), "ann")
            acked: list[tuple[int, float]] = []
            deadline = time.monotonic() + 15
            # A steady stream, each message acknowledged before the next; bounded in count
            # and time. The kill lands in the middle of it.
            for n in range(100_000):
                message = await post(ann, f"m{n}", str(n))
                acked.append((message["id"], time.monotonic()))
                if len(acked) == 1500 or time.monotonic() > deadline:
                    break
            first.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.to_thread(first.stop, None)

        with ServerProcess(*args) as second:
            bob, again, _ = await hello(url_of(second), "bob")
            assert again["epoch"] == welcome["epoch"]
            kept = {m["id"] for m in await walk_back(bob, None)}
            await bob.close()
        must_have = [id for id, at in acked if at < killed - WINDOW - COMMIT_ALLOWANCE]
        # A busy machine acknowledges fewer in the time allowed; a hundred still show it.
        assert len(must_have) >= 100, f"only {len(must_have)} messages to judge by"
        assert [id for id in must_have if id not in kept] == []

    run(main)


def test_history_past_the_memory_window_comes_from_the_store(tmp_path: Path) -> None:
    count = MEMORY_WINDOW + 150

    async def main() -> None:
        async with serving(data=tmp_path, history=10_000) as server:
            ann, _, _ = await hello(ws_url(server), "ann")
            sent = [(await post(ann, f"m{n}", str(n)))["id"] for n in range(count)]
            assert server.state is not None and server.state.archive is not None
            room = server.state.chat.rooms[LOBBY]
            assert len(room.history) <= MEMORY_WINDOW < count
            # The store is a batch or so behind a loop this busy (docs/storage.md): wait
            # until it has the last message, as it has on any server a few ms later.
            store = server.state.archive.store
            deadline = time.monotonic() + 15
            while store.before(LOBBY, None, 1)[-1].id != sent[-1]:
                assert time.monotonic() < deadline, "the store did not catch up"
                await asyncio.sleep(0.005)

            # Paging back from the newest reaches the first message, each exactly once.
            assert [m["id"] for m in await walk_back(ann, None)] == sent
            # A page that starts in memory and ends in the store.
            await ann.send(
                json.dumps(
                    {
                        "type": "history",
                        "room": LOBBY,
                        "before": sent[-MEMORY_WINDOW + 5],
                        "limit": 20,
                    }
                )
            )
            page = await next_of(ann, "history")
            assert [m["id"] for m in page["messages"]] == sent[
                -MEMORY_WINDOW - 15 : -MEMORY_WINDOW + 5
            ]
            assert page["more"] is True

            # A client back from before memory's window: not truncated, the newest page and more.
            bob, _, joined = await hello(
                ws_url(server), "bob", rooms=[LOBBY], resume={LOBBY: sent[10]}
            )
            assert joined["truncated"] is False and joined["more"] is True
            assert joined["history"][-1]["id"] == sent[-1]
            older = await walk_back(bob, joined["history"][0]["id"])
            assert [m["id"] for m in older if m["id"] > sent[10]] == [
                id for id in sent[11:] if id < joined["history"][0]["id"]
            ]
            await ann.close()
            await bob.close()

    run(main)


def test_a_deleted_message_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)

    async def main() -> None:
        from rawchat.identity import Tokens

        token = Tokens.from_file(secret).issue("op", 3600, operator=True)
        async with serving(data=tmp_path, token_secret_file=secret) as server:
            op, _, _ = await hello(ws_url(server), "op", token=token)
            doomed = await post(op, "oops", "1")
            kept = await post(op, "fine", "2")
            await op.send(json.dumps({"type": "delete", "room": LOBBY, "id": doomed["id"]}))
            await next_of(op, "deleted")
            await op.close()
        async with serving(data=tmp_path, token_secret_file=secret) as server:
            ann, _, joined = await hello(ws_url(server), "ann")
            assert [m["text"] for m in joined["history"]] == ["fine"]
            assert joined["history"][0]["id"] == kept["id"]
            await ann.close()

    run(main)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def test_a_full_disk_degrades_health_counts_errors_and_live_chat_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite's page limit makes "database or disk is full" on demand, on the writer's connection.
    connections: list[sqlite3.Connection] = []
    connect = store_module._connect

    def limited(path: Path) -> sqlite3.Connection:
        db = connect(path)
        connections.append(db)
        return db

    monkeypatch.setattr(store_module, "_connect", limited)
    monkeypatch.setattr(store_module, "RETRY_INTERVAL", 0.05)

    async def main() -> None:
        async with serving(data=tmp_path) as server:
            assert (
                json.loads(await asyncio.to_thread(get, server.port, "/healthz"))["status"] == "ok"
            )
            ann, _, _ = await hello(ws_url(server), "ann")
            bob, _, _ = await hello(ws_url(server), "bob")
            writer = connections[1]
            pages = writer.execute("PRAGMA page_count").fetchone()[0]
            writer.execute(f"PRAGMA max_page_count = {pages}")
            for n in range(100):
                await post(ann, "x" * 1000, str(n))
                assert (await next_of(bob, "msg"))["text"] == "x" * 1000, "live chat goes on"
            health: dict[str, Any] = {}
            for _ in range(200):
                health = json.loads(await asyncio.to_thread(get, server.port, "/healthz"))
                if health["status"] == "degraded":
                    break
                await asyncio.sleep(0.05)
            assert health["status"] == "degraded" and "full" in health["reason"]
            metrics = (await asyncio.to_thread(get, server.port, "/metrics")).decode()
            errors = [
                line
                for line in metrics.splitlines()
                if line.startswith("rawchat_store_errors_total ")
            ]
            assert errors and float(errors[0].split()[1]) >= 1

            writer.execute("PRAGMA max_page_count = 1000000")
            for _ in range(200):
                health = json.loads(await asyncio.to_thread(get, server.port, "/healthz"))
                if health["status"] == "ok":
                    break
                await asyncio.sleep(0.05)
            assert health["status"] == "ok"
            await ann.close()
            await bob.close()

    with caplog.at_level("CRITICAL", logger="rawchat.store"):
        run(main)


def test_a_nick_reserved_by_its_token_holder_stays_reserved_after_a_restart(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)

    async def main() -> None:
        from rawchat.identity import Tokens

        token = Tokens.from_file(secret).issue("Dana", 3600)
        async with serving(data=tmp_path, token_secret_file=secret) as server:
            dana, welcome, _ = await hello(ws_url(server), "Dana", token=token)
            assert welcome["verified"] is True
            await dana.close()
        async with serving(data=tmp_path, token_secret_file=secret) as server:
            guest = await websockets.connect(ws_url(server), subprotocols=["rawchat.v1"])
            await guest.send(json.dumps({"type": "hello", "nick": "dana"}))
            refused = await next_of(guest, "error")
            assert refused["code"] == "nick_reserved"
            await guest.close()

    run(main)


def test_a_second_server_on_the_same_data_and_a_corrupt_database_are_refused_by_name(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    command = [*RAWCHAT, "--port", "0", "--data", str(data)]
    with ServerProcess("--port", "0", "--data", str(data)) as first:
        second = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"{data} is in use by another rawchat (pid {first.process.pid})" in second.stderr
        assert "listening" not in second.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / DATABASE).write_bytes(b"not a database at all, " * 100)
    refused = subprocess.run(
        [*RAWCHAT, "--port", "0", "--data", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1
    assert f"{broken / DATABASE} is not a rawchat history database" in refused.stderr
    assert (broken / DATABASE).read_bytes() == b"not a database at all, " * 100
