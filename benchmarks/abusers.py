"""The abusers of the ``abuse`` scenario, in a process of their own.

    python -m benchmarks.abusers --port PORT [--source 127.0.1.1] [--seconds 10]

From one address, for a bounded time: a *flooder*, one connection that writes
messages as fast as the server reads them (it writes whenever its transport is
not paused) and reconnects when it is closed; and a *churner*, one loop that
opens a connection, completes the upgrade and resets it, as fast as it can.
At the end it prints one JSON object on stdout: what each sent, what the server
admitted, refused and closed.

Apart from the load tool so that neither abuser's loop delays the honest
clients' reads and sends: the honest latencies must show what the server
does under abuse, not what the tool's own loop did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client import IP_BIND_ADDRESS_NO_PORT, BenchClient, Refused, RunState
from benchmarks.frames import Masker, response_status, upgrade_request

#: Start of every flood message: the honest clients' probes never start so,
#: so the flooder tells its own echoes apart and the honest sampled
#: connections count them as unexpected frames, not as honest deliveries.
FLOOD_MARK = b"FLOOD"
#: Frames written per turn of the flood loop while the transport takes them.
FLOOD_BATCH = 16
#: Pause before the flooder reconnects after a refusal or a close.
RECONNECT_PAUSE = 0.1
#: Bounds on the churner besides time: connections in all, seconds per one.
CHURN_MAX = 500_000
CHURN_TIMEOUT = 2.0


@dataclass
class FloodStats:
    sent: int = 0
    admitted: int = 0  # its own messages that came back: the server relayed them
    connections: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class FloodClient(BenchClient):
    """Parses every frame (sampled) and counts the echoes of its own messages."""

    stats: FloodStats

    def _on_probe(self, head: bytes, length: int) -> None:
        if head.startswith(FLOOD_MARK):
            self.stats.admitted += 1


async def _open_flood_client(
    host: str, port: int, source: str, stats: FloodStats, size: int
) -> FloodClient:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        async with asyncio.timeout(CHURN_TIMEOUT * 2):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, upgrade_request(host, port))
    except BaseException:
        sock.close()
        raise

    def make() -> FloodClient:
        client = FloodClient(0, RunState(size, 1), sampled=True)
        client.stats = stats
        return client

    _, client = await loop.create_connection(make, sock=sock)
    try:
        async with asyncio.timeout(CHURN_TIMEOUT * 2):
            await client.upgraded
    except BaseException:
        client.abort()
        raise
    return client


async def flood(host: str, port: int, source: str, size: int, until: float) -> FloodStats:
    loop = asyncio.get_running_loop()
    stats = FloodStats()
    payload = FLOOD_MARK + b"." * max(0, size - len(FLOOD_MARK))
    batch = Masker(len(payload)).text_frame(payload) * FLOOD_BATCH
    while loop.time() < until:
        try:
            client = await _open_flood_client(host, port, source, stats, len(payload))
        except Refused as exc:
            stats.refused[exc.status] += 1
            await asyncio.sleep(RECONNECT_PAUSE)
            continue
        except (OSError, TimeoutError) as exc:
            stats.errors[type(exc).__name__] += 1
            await asyncio.sleep(RECONNECT_PAUSE)
            continue
        stats.connections += 1
        assert client.transport is not None
        while loop.time() < until and client.open and not client.closed:
            if client.can_write:
                client.transport.write(batch)
                stats.sent += FLOOD_BATCH
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.001)  # paused: the server stopped reading it
        if client.close_code is not None:
            stats.close_codes[client.close_code] += 1
        elif client.closed:
            stats.close_codes[1006] += 1  # closed without a close frame
        client.abort()
        if loop.time() < until:
            await asyncio.sleep(RECONNECT_PAUSE)
    return stats


@dataclass
class ChurnStats:
    attempts: int = 0
    upgraded: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def _churn_once(host: str, port: int, source: str, request: bytes) -> int | None:
    """One connection: upgrade, then reset (no TIME_WAIT left). The status, or None."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind((source, 0))
        async with asyncio.timeout(CHURN_TIMEOUT):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 16384:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                head += chunk
        return response_status(head)
    finally:
        sock.close()


async def churn(host: str, port: int, source: str, until: float) -> ChurnStats:
    loop = asyncio.get_running_loop()
    stats = ChurnStats()
    request = upgrade_request(host, port)
    while loop.time() < until and stats.attempts < CHURN_MAX:
        stats.attempts += 1
        try:
            status = await _churn_once(host, port, source, request)
        except (OSError, TimeoutError) as exc:
            stats.errors[type(exc).__name__] += 1
            continue
        if status == 101:
            stats.upgraded += 1
        elif status is None:
            stats.errors["closed before a response"] += 1
        else:
            stats.refused[status] += 1
    return stats


def _counts(counter: Counter[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items())}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    until = started + args.seconds
    jobs = []
    if not args.no_flood:
        jobs.append(flood(args.host, args.port, args.source, args.size, until))
    if not args.no_churn:
        jobs.append(churn(args.host, args.port, args.source, until))
    done = await asyncio.gather(*jobs)
    seconds = loop.time() - started
    out: dict[str, Any] = {"seconds": round(seconds, 2), "source": args.source}
    for stats in done:
        if isinstance(stats, FloodStats):
            out["flood"] = {
                "sent": stats.sent, "admitted": stats.admitted,
                "sent_per_s": round(stats.sent / seconds, 1),
                "admitted_per_s": round(stats.admitted / seconds, 1),
                "connections": stats.connections, "refused": _counts(stats.refused),
                "close_codes": _counts(stats.close_codes), "errors": _counts(stats.errors),
            }
        else:
            out["churn"] = {
                "attempts": stats.attempts, "upgraded": stats.upgraded,
                "handshakes_per_s": round(stats.upgraded / seconds, 1),
                "attempts_per_s": round(stats.attempts / seconds, 1),
                "refused": _counts(stats.refused), "errors": _counts(stats.errors),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.abusers", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.1.1", help="the one address both use")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=64, help="flood message size")
    parser.add_argument("--no-flood", action="store_true")
    parser.add_argument("--no-churn", action="store_true")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    started = time.monotonic()
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:
        result = asyncio.run(main_async(args))
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    # Its own CPU, so that the abuse scenario does not count it as the machine's other work.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
