"""A rawchat.v1 client in the test's own thread: posts what the pages are to read.

Synchronous (websockets' sync client) so that it mixes with Playwright's sync API; every
wait is for a message from the server, with a timeout.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.sync.client import ClientConnection, connect

TIMEOUT = 10.0
Message = dict[str, Any]


class Bot:
    """One rawchat.v1 connection that has said hello and been welcomed."""

    def __init__(self, port: int, nick: str, *, rooms: list[str] | None = None, **hello: Any):
        self._context = connect(
            f"ws://127.0.0.1:{port}/ws", subprotocols=["rawchat.v1"], open_timeout=TIMEOUT
        )
        self.ws: ClientConnection = self._context.__enter__()
        self._cids = itertools.count(1)
        self.send({"type": "hello", "nick": nick, "rooms": rooms or ["lobby"], **hello})
        self.welcome = self.wait_for(lambda m: m["type"] in ("welcome", "error"))
        assert self.welcome["type"] == "welcome", self.welcome
        for _ in rooms or ["lobby"]:
            self.wait_for(lambda m: m["type"] == "joined")

    def send(self, message: Message) -> None:
        self.ws.send(json.dumps(message))

    def wait_for(self, wanted: Callable[[Message], bool]) -> Message:
        """The next message `wanted` accepts; the ones before it are passed over."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server did not send the message waited for")
            message = json.loads(self.ws.recv(timeout=left))
            if wanted(message):
                return message

    def request(self, message: Message) -> Message:
        """Sends `message` with a fresh cid and returns the server's answer to it."""
        cid = f"bot-{next(self._cids)}"
        self.send({**message, "cid": cid})
        answer = self.wait_for(lambda m: m.get("cid") == cid)
        assert answer["type"] != "error", answer
        return answer

    def post(self, room: str, text: str) -> Message:
        return self.request({"type": "msg", "room": room, "text": text})

    def close(self) -> None:
        self._context.__exit__(None, None, None)
