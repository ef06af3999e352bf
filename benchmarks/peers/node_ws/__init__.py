"""The peer on node's ``ws`` (``server.js``): how to start it and whether it can start.

``make bench-peers`` (and so ``make bench``) installs ws from the committed
``package-lock.json`` with ``npm ci``; the load tool never installs anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PEER_DIR = Path(__file__).resolve().parent
SCRIPT = PEER_DIR / "server.js"


def node() -> str | None:
    return shutil.which("node")


def ws_installed() -> bool:
    return (PEER_DIR / "node_modules" / "ws" / "package.json").is_file()


def missing() -> str | None:
    """Why the peer cannot start here, or None when it can."""
    if node() is None:
        return "node is not installed (make bench-peers installs Debian's nodejs and npm)"
    if not ws_installed():
        return f"ws is not installed in {PEER_DIR} (run make bench-peers)"
    return None


def argv(host: str) -> list[str]:
    why = missing()
    if why is not None:
        raise RuntimeError(f"node-ws: {why}")
    return [str(node()), str(SCRIPT), "--host", host, "--port", "0"]
