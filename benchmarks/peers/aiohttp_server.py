"""Broadcast server on ``aiohttp`` (web.WebSocketResponse).

``send_str`` is a coroutine, but for uncompressed frames it writes to the
transport synchronously and suspends only once a receiver's transport is
paused and past the writer's limit. Awaiting it in a plain loop is the
idiomatic fast way; the cost is that one slow receiver stalls the sender's
loop (head-of-line blocking) instead of being dropped.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from benchmarks.peers.common import announce, parse_args, run, wait_for_signal


async def main(host: str, port: int, uvloop: bool) -> None:
    clients: set[web.WebSocketResponse] = set()

    async def relay(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    for client in list(clients):
                        if not client.closed:
                            try:
                                await client.send_str(msg.data)
                            except ConnectionError:
                                pass
        finally:
            clients.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    announce("aiohttp-peer", bound_host, bound_port, uvloop)
    try:
        await wait_for_signal()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    args = parse_args("aiohttp_server")
    run(main(args.host, args.port, args.uvloop), args.uvloop)
