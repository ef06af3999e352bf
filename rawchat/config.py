"""The server's settings: one frozen object, built once and passed down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    use_uvloop: bool = False
    #: Directory served over HTTP; None means the page shipped inside the package.
    static_dir: Path | None = None
    #: Largest WebSocket message accepted, in bytes (whole message, all fragments).
    max_message: int = 64 * KiB
    #: Per-client high-water mark: bytes waiting to be sent to one client (the
    #: transport's buffer plus the frames queued this loop iteration). A client
    #: that would go past it is evicted.
    max_buffer: int = 1 * MiB
    #: A client whose buffer stays past the pressure mark (a quarter of
    #: max_buffer) this long is evicted as too slow; until then senders are held.
    slow_timeout: float = 2.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: Time a client has to send a complete HTTP request head.
    handshake_timeout: float = 5.0
    #: Time an HTTP keep-alive connection may sit idle between requests.
    keepalive_timeout: float = 15.0
    #: Time a closing WebSocket (evicted, or after we sent a close frame) has
    #: to finish before its TCP connection is aborted.
    close_timeout: float = 2.0
    #: Time graceful shutdown waits for close handshakes before aborting.
    shutdown_timeout: float = 5.0
    #: Largest HTTP request head, in bytes; beyond it the answer is 431.
    max_request_head: int = 16 * KiB
    #: Messages kept per room for history and resume (rawchat.v1).
    history: int = 100
    #: Rooms one rawchat.v1 client may be in at once.
    max_rooms: int = 16
    log_level: str = "info"

    @property
    def pressure_mark(self) -> int:
        """Write-buffer size past which a client is congested and senders are held."""
        return max(1, self.max_buffer // 4)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for name in ("max_message", "max_buffer", "max_request_head", "max_rooms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.history < 0:
            raise ValueError("history must not be negative")
        for name in (
            "slow_timeout",
            "ping_interval",
            "ping_timeout",
            "handshake_timeout",
            "keepalive_timeout",
            "close_timeout",
            "shutdown_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
