"""Broadcast server on the ``websockets`` library (its asyncio implementation).

``websockets.broadcast()`` writes the frame to every open connection
without waiting for any of them; a slow client's buffer grows without
bound until its keepalive ping times out. That is the library's documented
trade-off, kept here as it is.
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from benchmarks.peers.common import announce, parse_args, run, wait_for_signal


async def main(host: str, port: int, uvloop: bool) -> None:
    clients: set[ServerConnection] = set()

    async def relay(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                broadcast(clients, message)
        except ConnectionClosed:
            pass  # the load tool resets thousands of connections at the end of a run
        finally:
            clients.discard(ws)

    def only_ws(ws: ServerConnection, request: Request) -> Response | None:
        if request.path != "/ws":
            return ws.respond(404, "not found\n")
        return None

    async with serve(relay, host, port, process_request=only_ws, max_size=64 * 1024) as server:
        bound = next(iter(server.sockets)).getsockname()
        announce("websockets-peer", bound[0], bound[1], uvloop)
        await wait_for_signal()


if __name__ == "__main__":
    args = parse_args("websockets_server")
    run(main(args.host, args.port, args.uvloop), args.uvloop)
