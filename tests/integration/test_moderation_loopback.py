"""Tokens and moderation over real sockets: an operator kicks and bans, a forged token fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets

from rawchat.identity import Tokens
from tests.integration.conftest import run, serving, ws_url
from tests.integration.test_protections import metric, metrics_text
from tests.integration.test_v1_loopback import V1, hello, next_of

SECRET = b"loopback secret, long enough for HS256"


def test_operator_kicks_and_bans_a_guest_over_loopback(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")  # the trailing newline an editor adds is ignored
    tokens = Tokens(SECRET)

    async def main() -> None:
        async with serving(token_secret_file=secret_file) as server:
            assert server.state is not None
            url = ws_url(server)

            forged = await websockets.connect(url, subprotocols=V1)
            bad = Tokens(b"x" * 32).issue("op", 60, operator=True)
            await forged.send(json.dumps({"type": "hello", "nick": "op", "token": bad}))
            error = await next_of(forged, "error")
            assert error["code"] == "bad_token"
            await forged.close()

            token = tokens.issue("op", 60, operator=True)
            op, welcome, _ = await hello(url, "op", token=token)
            assert (welcome["role"], welcome["verified"]) == ("operator", True)
            bob, _, _ = await hello(url, "bob")
            await next_of(op, "presence")

            await op.send(
                json.dumps({"type": "kick", "room": "lobby", "nick": "bob", "reason": "x"})
            )
            kicked: dict[str, Any] = await next_of(bob, "kicked")
            assert (kicked["nick"], kicked["by"], kicked["reason"]) == ("bob", "op", "x")
            await bob.send(json.dumps({"type": "join", "room": "lobby"}))
            assert (await next_of(bob, "joined"))["room"] == "lobby"

            await op.send(
                json.dumps({"type": "ban", "room": "lobby", "nick": "bob", "seconds": 60})
            )
            assert (await next_of(bob, "banned"))["seconds"] == 60
            await bob.close()
            again = await websockets.connect(url, subprotocols=V1)
            await again.send(json.dumps({"type": "hello", "nick": "robert"}))
            await next_of(again, "welcome")
            assert (await next_of(again, "error"))["code"] == "banned"
            await again.send(json.dumps({"type": "kick", "room": "lobby", "nick": "op"}))
            assert (await next_of(again, "error"))["code"] == "forbidden"
            exposed = await metrics_text(server)
            counted = {
                action: metric(exposed, "rawchat_moderation_total", action=action)
                for action in ("kick", "ban", "bad_token")
            }
            assert counted == {"kick": 1, "ban": 1, "bad_token": 1}
            await asyncio.gather(op.close(), again.close())

    run(main)
