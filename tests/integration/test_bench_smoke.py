"""Smoke test of the load tool (benchmarks/): tiny runs that must count exactly."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest

from benchmarks.abuse import abuse
from benchmarks.autobahn import case_globs
from benchmarks.chat_checks import CHECKS
from benchmarks.client import STAMPED, BenchClient, RunState
from benchmarks.frames import (
    HANDSHAKE_ACCEPT,
    OP_PING,
    PROBE_HEAD,
    FrameReader,
    ProbeEncoder,
    frame_header,
    server_frame_size,
)
from benchmarks.peers import node_ws
from benchmarks.scenarios import fanout, load_for, scale, workers
from benchmarks.servers import ServerProcess, ServerSpec
from benchmarks.slow_room import slow_room
from benchmarks.stamped import StampedTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def server_text_frame(payload: bytes) -> bytes:
    return frame_header(0x1, len(payload), masked=False) + payload


def test_byte_counting_survives_pings_and_any_chunking() -> None:
    """The fast path (byte arithmetic) and the slow path (parsing) agree on counts."""

    async def main() -> None:
        size = 64
        run = RunState(size, senders=1)
        encoder = ProbeEncoder(0, size)
        stream = bytearray()
        for seq in range(500):
            stream += server_text_frame(encoder.payload(seq, 0))
            if seq % 97 == 0:
                stream += frame_header(OP_PING, 4, masked=False) + b"ping"
        for chunk_size in (1, 7, 66, 1000, 4096):
            for sampled in (False, True):
                transport = RecordingTransport()
                client = BenchClient(0, run, sampled=sampled)
                client.connection_made(cast(asyncio.Transport, transport))
                client.data_received(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + HANDSHAKE_ACCEPT
                    + b"\r\n\r\n"
                )
                assert client.open
                for i in range(0, len(stream), chunk_size):
                    client.data_received(bytes(stream[i : i + chunk_size]))
                assert client.delivered == 500, (chunk_size, sampled)
                # One pong (masked, opcode 0xA) per ping.
                pongs = [w for w in transport.written if w[:1] == b"\x8a"]
                assert len(pongs) == 6
                if sampled:
                    assert client.checks[0].expected == 500
                    assert client.checks[0].lost() == 0

    asyncio.run(main())


def test_a_sampled_message_is_timed_from_its_arrival_not_from_when_the_tool_reads_it() -> None:
    """A busy tool must not add its own delay to the latency it reports."""
    if not STAMPED:
        pytest.fail("this kernel does not stamp TCP reads (SO_TIMESTAMPNS)")
    busy_ns = 200_000_000

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        client_sock = socket.create_connection(listener.getsockname())
        server_sock, _ = listener.accept()
        listener.close()
        run = RunState(64, senders=1)
        client = BenchClient(0, run, sampled=True)
        StampedTransport(loop, client_sock, client)
        server_sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + HANDSHAKE_ACCEPT + b"\r\n\r\n"
        )
        await client.upgraded
        run.open_window()
        payload = ProbeEncoder(0, 64).payload(0, time.monotonic_ns())
        server_sock.sendall(server_text_frame(payload))  # in the client's socket on return
        # The tool is busy elsewhere while the message waits in the socket.
        busy_until = time.monotonic_ns() + busy_ns
        while time.monotonic_ns() < busy_until:
            pass
        async with asyncio.timeout(5):
            while client.delivered < 1:
                await asyncio.sleep(0)  # lets the loop read it
        assert client.transport is not None
        client.transport.abort()
        server_sock.close()
        return list(run.latencies_ns)

    (latency,) = asyncio.run(main())
    assert 0 < latency < busy_ns // 4


def test_frame_reader_skips_large_payloads_without_buffering() -> None:
    seen: list[int] = []
    reader = FrameReader(PROBE_HEAD, lambda head, length: seen.append(length), lambda o, p: None)
    payload = ProbeEncoder(3, 16384).payload(1, 2)
    frame = server_text_frame(payload)
    assert len(frame) == server_frame_size(16384)
    for i in range(0, len(frame) * 3, 1000):
        reader.feed((frame * 3)[i : i + 1000])
        assert len(reader.buf) < 1000 + PROBE_HEAD + 10
    assert seen == [16384] * 3 and reader.complete_frames == 3


@pytest.mark.parametrize("server", ["websockets-asyncio", "rawchat-asyncio", "floor-asyncio"])
def test_fanout_counts_every_delivery(server: str) -> None:
    clients, senders = 20, 2
    load = load_for(
        "fanout",
        clients=clients,
        senders=senders,
        rate=40.0,
        duration=1.0,
        warmup=0.2,
        sample_every=3,
        status=False,
    )

    async def main() -> dict[str, Any]:
        with ServerProcess(ServerSpec.parse(server)) as process:
            try:
                result = await fanout(process, load)
            finally:
                process.remove_log()
        return result.metrics

    m = asyncio.run(main())
    assert m["messages_sent"] >= 40
    assert m["deliveries_counted"] == m["messages_sent"] * clients
    assert m["deliveries_expected"] == m["deliveries_counted"]
    assert m["undelivered_after_drain"] == 0
    assert m["lost"] == m["duplicated"] == m["reordered"] == m["unexpected_frames"] == 0
    assert m["sampled_connections"] == 7
    assert m["latency_samples"] > 0 and m["p50_ms"] is not None
    assert m["closed_by_server"] == 0


def test_scale_runs_fanout_at_each_client_count_on_fresh_connections() -> None:
    load = load_for(
        "scale",
        client_counts=(5, 20),
        senders=2,
        rate=40.0,
        duration=0.5,
        warmup=0.2,
        sample_every=2,
        status=False,
    )

    async def main() -> dict[str, Any]:
        with ServerProcess(ServerSpec.parse("rawchat-asyncio")) as process:
            try:
                result = await scale(process, load)
            finally:
                process.remove_log()
        return {"params": result.params, "metrics": result.metrics}

    found = asyncio.run(main())
    points = found["params"]["point_detail"]
    assert [p["clients"] for p in points] == [5, 20]
    for point in points:
        assert point["undelivered_after_drain"] == 0 and point["closed_by_server"] == 0
        assert point["delivered_per_s"] > 0 and point["p50_ms"] is not None
    # The comparison table gets one row per count and metric.
    assert found["metrics"]["p99_ms_at_20"] == points[1]["p99_ms"]


def _server_processes(tag: bytes) -> set[int]:
    """Pids of every redis-server and rawchat worker or supervisor started under ``tag``.

    The tag is an environment variable the test sets before starting anything: every
    process it starts inherits it, orphans included, and nobody else's processes (another
    suite's redis-server on the same machine) carry it.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv)
        if tag in environ and (
            b"redis-server" in text
            or (b"rawchat" in text and (b"--reuse-port" in text or b"--workers" in text))
        ):
            found.add(int(entry.name))
    return found


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_workers_scenario_counts_both_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"rawchat-workers-smoke-{os.getpid()}"
    monkeypatch.setenv("RAWCHAT_TEST_TAG", marker)
    tag = f"RAWCHAT_TEST_TAG={marker}".encode()
    load = load_for(
        "workers",
        clients=20,
        senders=5,
        rate=40.0,
        duration=1.0,
        warmup=0.2,
        sample_every=3,
        start_rate=40.0,
        step_seconds=1.0,
        max_steps=2,
        max_seconds=2.0,
        status=False,
    )
    result = asyncio.run(workers(ServerSpec.parse("rawchat-asyncio"), load, pin=False))
    m = result.metrics
    for prefix in ("w1", "w2"):
        assert m[f"{prefix}_fixed_delivery_ratio"] == pytest.approx(1.0, abs=0.02)
        assert m[f"{prefix}_sustainable_msg_per_s"] >= 40
        assert m[f"{prefix}_lost"] == m[f"{prefix}_duplicated"] == 0
    assert sum(m["w2_connections_per_worker"]) == 20
    assert len(m["w2_connections_per_worker"]) == 2
    assert m["ratio_sustainable_w2_over_w1"] is not None
    assert m["broker_outages_one_worker"] == 0
    assert _server_processes(tag) == set(), "redis or rawchat workers left running"


def test_abuse_reports_honest_delivery_and_what_the_abusers_got() -> None:
    load = load_for(
        "abuse",
        clients=6,
        senders=2,
        rate=10.0,
        duration=1.0,
        warmup=0.3,
        sample_every=2,
        status=False,
    )

    async def main() -> dict[str, Any]:
        with ServerProcess(ServerSpec.parse("rawchat-asyncio")) as process:
            try:
                result = await abuse(process, load)
            finally:
                process.remove_log()
        return result.metrics

    m = asyncio.run(main())
    assert m["honest_clients"] == 6 and m["refused_connections"] == 0
    assert m["quiet_delivery_ratio"] == 1.0
    assert m["abused_delivery_ratio"] is not None and m["quiet_p99_ms"] is not None
    # The abusers ran and were measured: the flood was sent, the churner connected.
    assert m["flood_sent_per_s"] > 0 and m["flood_connections"] >= 1
    assert m["churn_attempts_per_s"] > 0
    assert m["abused_server_rss_peak_mb"] > 0
    # The abusers' own CPU is reported apart from the machine's other work.
    assert m["abusers_cpu_pct"] is not None and m["abusers_cpu_pct"] > 0


def test_slow_room_times_the_readers_and_the_slow_clients_close() -> None:
    load = load_for("slow-room", duration=1.5, status=False)

    async def main() -> dict[str, Any]:
        spec = ServerSpec.parse("rawchat-asyncio", ("--slow-timeout=0.3",))
        with ServerProcess(spec) as process:
            try:
                result = await slow_room(process, load)
            finally:
                process.remove_log()
        return result.metrics

    m = asyncio.run(main())
    assert m["messages_sent"] > 0 and m["latency_samples"] > 0
    assert m["fast_p99_ms"] is not None
    assert m["server_slow_timeout_s"] == 0.3
    assert m["slow_stalled_at_s"] is not None
    assert m["slow_evicted_at_s"] is not None, "rawchat never evicted the reader that stopped"
    # Evicted alone: when it stopped reading (slow_timeout) or when what it owed
    # passed --max-buffer first (buffer_full), the fast ones go on.
    assert sum(m["server_evictions"].values()) == 1, m["server_evictions"]


def test_refused_upgrades_are_counted_not_fatal() -> None:
    """A server at its limits is measured with what it admitted; the refusals are reported."""
    load = load_for(
        "fanout",
        clients=8,
        senders=1,
        rate=10.0,
        duration=0.5,
        warmup=0.1,
        sample_every=2,
        sources=("127.0.0.2",),
        concurrency=1,
        status=False,
    )

    async def main() -> dict[str, Any]:
        spec = ServerSpec.parse("rawchat-asyncio", ("--max-connections-per-ip=5",))
        with ServerProcess(spec) as process:
            try:
                result = await fanout(process, load)
            finally:
                process.remove_log()
        return result.metrics

    m = asyncio.run(main())
    assert m["refused_connections"] == 3 and m["refused_by_status"] == {"429": 3}
    assert m["receivers"] == 5 and m["undelivered_after_drain"] == 0


# The node peer: `make test` stays offline, so it never runs npm. With node the
# script must at least parse; the relay itself is checked when `make bench-peers`
# has installed ws. Under CI a missing node is a failure, not a skip.
def test_node_ws_peer_script_parses() -> None:
    if node_ws.node() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is not installed")
        pytest.skip("node is not installed")
    out = subprocess.run(
        [str(node_ws.node()), "--check", str(node_ws.SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_node_ws_peer_relays_every_message_to_everyone() -> None:
    missing = node_ws.missing()
    if missing is not None:  # `make test` installs it (make bench-peers)
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    load = load_for(
        "fanout",
        clients=10,
        senders=2,
        rate=20.0,
        duration=1.0,
        warmup=0.2,
        sample_every=2,
        status=False,
    )

    async def main() -> dict[str, Any]:
        with ServerProcess(ServerSpec.parse("node-ws")) as process:
            try:
                result = await fanout(process, load)
            finally:
                process.remove_log()
        return result.metrics

    m = asyncio.run(main())
    assert m["deliveries_counted"] == m["messages_sent"] * 10 > 0
    assert m["lost"] == m["duplicated"] == m["reordered"] == 0


def test_autobahn_case_selection() -> None:
    assert case_globs("1-3,10") == ["1.*", "2.*", "3.*", "10.*"]
    assert case_globs("9") == ["9.*"] and case_globs("9.1.1") == ["9.1.1"]


def test_chat_checks_count_every_line_message_and_join() -> None:
    """Small runs of the chat checks: every count is what the chat must deliver."""
    spec = ServerSpec.parse("rawchat-asyncio")

    def run(name: str, **load: Any) -> dict[str, Any]:
        check = CHECKS[name]
        result = asyncio.run(check(spec, load_for(name, status=False, **load), False))
        return result.metrics

    plain = run("plain-burst", clients=5, burst=7)
    assert plain["lines_expected"] == 5 * 12 and plain["lines_delivered"] == 60
    assert plain["all_delivered"] and plain["close_codes"] == {}
    burst = run("v1-burst", burst=30)
    assert burst["delivered_to_sender"] == burst["delivered_to_watcher"] == 30
    assert burst["errors_to_sender"] == 0
    history = run("history-join", clients=2, burst=3, size=1000)
    assert history["history_posted"] == 3
    assert history["outcomes"] == {"welcome then joined": 2}
    # The joined frame carries the three messages of history.
    assert history["joined_frame_bytes"] > 3 * 1000
    join = run("v1-join", clients=40, concurrency=8, duration=5.0)
    assert join["connected"] == join["joined"] == 40 and join["all_joined"]
    assert join["sigterm_exit_code"] == 0 and join["sigterm_exit_s"] is not None
    assert join["close_codes_after_sigterm"] == {"1001": 40}
