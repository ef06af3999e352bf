"""rawchat behind Debian's nginx terminating TLS, configured exactly as docs/proxy.md shows.

The nginx block is read from docs/proxy.md; only the listening port, the certificate
and rawchat's port are put in. Clients connect to nginx from their own loopback
addresses (127.0.0.2, 127.0.0.3), so that rawchat sees the proxy at 127.0.0.1 and
the clients' addresses only through X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from websockets.exceptions import InvalidStatus

from rawchat.connection import Connection
from rawchat.server import Server
from tests.integration.conftest import run, serving
from tests.processes import ServerProcess, free_port, system_program

DOCS = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"
SITE = "chat.example.com"
BOUND = 5.0


def nginx_binary() -> str:
    return system_program("nginx", also_in="/usr/sbin:/sbin")


def documented_block() -> str:
    """The nginx configuration docs/proxy.md shows, as it shows it."""
    (block,) = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return block


def configuration(tmp: Path, port: int, rawchat_port: int, cert: Path, key: Path) -> str:
    """docs/proxy.md's block with this test's port, certificate and upstream put in."""
    block = documented_block()
    for documented, here in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/ssl/certs/chat.example.com.pem", str(cert)),
        ("/etc/ssl/private/chat.example.com.key", str(key)),
        ("http://127.0.0.1:8080;", f"http://127.0.0.1:{rawchat_port};"),
    ):
        assert documented in block, f"docs/proxy.md no longer says {documented!r}"
        block = block.replace(documented, here)
    # Around it, what a test needs and a system nginx.conf already has: everything
    # nginx writes stays in the temporary directory.
    temp = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return (
        "worker_processes 1;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"    uwsgi_temp_path {tmp / 'uwsgi'};\n"
        f"    scgi_temp_path {tmp / 'scgi'};\n"
        f"{block}"
        "}\n"
    )


class Nginx:
    """Debian's nginx in front of a rawchat server, serving TLS with a test certificate."""

    def __init__(self, tmp: Path, rawchat_port: int) -> None:
        binary = nginx_binary()
        authority = trustme.CA()
        cert = authority.issue_cert(SITE)
        cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        self.client_tls = ssl.create_default_context()
        authority.configure_trust(self.client_tls)
        self.port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(configuration(tmp, self.port, rawchat_port, cert_file, key_file))
        self.process = ServerProcess(
            "-p",
            str(tmp),
            "-c",
            str(conf),
            "-e",
            "stderr",
            "-g",
            f"daemon off; master_process on; pid {tmp / 'nginx.pid'}; error_log stderr notice;",
            program=[binary],
            ready="start worker process",
            own_group=True,
        )

    def connect(self, source: str, **kwargs: Any) -> Any:
        """A wss:// client of https://chat.example.com:PORT, connecting from ``source``."""
        return websockets.connect(
            f"wss://{SITE}:{self.port}/ws",
            host="127.0.0.1",
            port=self.port,
            local_addr=(source, 0),
            ssl=self.client_tls,
            proxy=None,
            open_timeout=BOUND,
            **kwargs,
        )

    def stop(self) -> None:
        self.process.stop()


def origin(nginx: Nginx) -> Any:
    """The page's own origin, as a browser on https://chat.example.com:PORT sends it."""
    return f"https://{SITE}:{nginx.port}"


def connection_from(server: Server, before: set[Connection]) -> Connection:
    assert server.state is not None
    (conn,) = server.state.websockets - before
    return conn


async def refused(connect: Any) -> int:
    with pytest.raises(InvalidStatus) as failed:
        await connect
    return failed.value.response.status_code


async def echoes(ws: Any, text: str) -> None:
    await ws.send(text)

    async def back() -> None:
        while await ws.recv() != text:
            pass

    await asyncio.wait_for(back(), BOUND)


def test_a_browser_on_https_reaches_rawchat_through_the_documented_nginx(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(trust_proxy=("127.0.0.1",), max_connections_per_ip=1) as server:
            assert server.state is not None
            nginx = Nginx(tmp_path, server.port)
            try:
                before = set(server.state.websockets)
                # A browser's handshake: the page's own https origin, and a forged
                # address that nginx passes along to the left of the real one.
                ws = await nginx.connect(
                    "127.0.0.2",
                    origin=origin(nginx),
                    additional_headers={"X-Forwarded-For": "203.0.113.9"},
                )
                conn = connection_from(server, before)
                assert conn.address == "127.0.0.2", "counted as the client nginx saw"
                await echoes(ws, "hello through nginx")
                # The same address again is past its share of one, forged header or not.
                status = await refused(
                    nginx.connect(
                        "127.0.0.2",
                        origin=origin(nginx),
                        additional_headers={"X-Forwarded-For": "198.51.100.1"},
                    )
                )
                assert status == 429
                other = await nginx.connect("127.0.0.3", origin=origin(nginx))
                await echoes(other, "another address, another share")
                # Another site's page is still refused, through the proxy too.
                for foreign in ("https://evil.example", f"http://{SITE}:{nginx.port}"):
                    assert await refused(nginx.connect("127.0.0.4", origin=foreign)) == 403, foreign
                await echoes(ws, "the first client chats on")
                for client in (ws, other):
                    await client.close()
            finally:
                nginx.stop()

    run(main)


def test_a_client_that_bypasses_nginx_cannot_claim_https_or_another_address() -> None:
    async def main() -> None:
        async with serving(trust_proxy=("127.0.0.1",), max_connections_per_ip=1) as server:
            assert server.state is not None
            url = f"ws://127.0.0.1:{server.port}/ws"
            # From 127.0.0.2: a peer that is not the proxy, whatever it writes.
            direct: dict[str, Any] = {
                "local_addr": ("127.0.0.2", 0),
                "additional_headers": {
                    "X-Forwarded-For": "203.0.113.9",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "127.0.0.1:8443",
                },
                "open_timeout": BOUND,
                "proxy": None,
            }
            for claimed in (f"https://127.0.0.1:{server.port}", "https://127.0.0.1:8443"):
                status = await refused(websockets.connect(url, origin=claimed, **direct))
                assert status == 403, f"{claimed} is not this plain-HTTP server's origin"
            before = set(server.state.websockets)
            ws = await websockets.connect(url, **direct)
            assert connection_from(server, before).address == "127.0.0.2"
            assert await refused(websockets.connect(url, **direct)) == 429
            await echoes(ws, "still one client, counted as itself")
            await ws.close()

    run(main)
