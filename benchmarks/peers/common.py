"""Command line and event-loop choice shared by the peer servers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any


def parse_args(prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="broadcast peer server for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    return parser.parse_args()


def announce(name: str, host: str, port: int, uvloop: bool) -> None:
    # Same line as rawchat logs, so the load tool finds the port one way.
    loop_name = "uvloop" if uvloop else "asyncio"
    print(f"{name} listening on http://{host}:{port} ({loop_name})", file=sys.stderr, flush=True)


def run(main: Coroutine[Any, Any, None], uvloop: bool) -> None:
    try:
        if uvloop:
            import uvloop as uv

            uv.run(main)
        else:
            asyncio.run(main)
    except KeyboardInterrupt:
        pass


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT, so servers close their sockets on the way out."""
    import signal

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop
