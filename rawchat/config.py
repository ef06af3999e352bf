"""The server's settings: one frozen object, built once and passed down."""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path

from rawchat.proxies import networks

KiB = 1024
MiB = 1024 * KiB


#: File descriptors kept for everything but WebSockets: the listener, static
#: files being served, HTTP requests before their upgrade, the broker, logs.
FD_RESERVE = 100


def default_max_connections() -> int:
    """As many WebSockets as the process may open files, less a reserve.

    A cap above RLIMIT_NOFILE means nothing (accept fails with EMFILE, and the
    client gets a reset instead of an answer); at it, a client past the cap gets
    a clean 503 with Retry-After. A fixed 10,000 refused honest load on a host
    allowed more, and promised what a host allowed fewer could not keep.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(soft - FD_RESERVE, 1)


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one: (soft before, soft now, hard).

    Every client is a file descriptor, and distributions start processes with a
    soft limit of 1024 under a hard one of many thousands: left alone, rawchat
    would turn clients away (EMFILE, or a 503 at the default --max-connections)
    that the host allows it to serve. Done before the configuration is built,
    whose default --max-connections follows the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses a soft limit above fs.nr_open, even under an infinite hard one.
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return soft, soft, hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, soft, hard
    return soft, target, hard


def default_data_dir() -> Path:
    """Where history is kept unless --data says otherwise: $XDG_DATA_HOME/rawchat, or
    ~/.local/share/rawchat (the XDG default), the same for `make run` and an install."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "rawchat"


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
    #: A client whose buffer stays past the pressure mark (see pressure_mark)
    #: this long while the others keep up is evicted as too slow.
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
    #: Bytes of messages kept per room, and by all rooms together (oldest messages of
    #: the largest rooms go first).
    history_bytes: int = 1 * MiB
    history_total: int = 64 * MiB
    #: Seconds a message is kept (0: no age limit), in memory and in the store.
    history_ttl: float = 0.0
    #: Directory of the history database (rawchat.store); None keeps history in memory
    #: only. Not used with a broker: Redis holds the history then. The command line's
    #: default is default_data_dir(); a Config built in code keeps to memory.
    data: Path | None = None
    #: Rooms one rawchat.v1 client may be in at once.
    max_rooms: int = 16
    log_level: str = "info"
    #: "text" for people, "json" for log collectors: one object per line.
    log_format: str = "text"

    # -- facing the internet (0 means no limit) ------------------------------
    #: Browser origins allowed besides the page's own; "*" allows any.
    allow_origins: tuple[str, ...] = ()
    #: WebSocket connections open at once; the next upgrade gets 503.
    max_connections: int = dataclasses.field(default_factory=default_max_connections)
    #: WebSocket connections open at once from one client address (429 beyond).
    #: Off by default: a NAT, a proxy or a load generator is one address.
    max_connections_per_ip: int = 0
    #: The reverse proxies (addresses or networks) whose X-Forwarded-For/-Proto/-Host
    #: and Forwarded headers count; from any other peer they are ignored.
    trust_proxy: tuple[str, ...] = ()
    #: Messages per second one connection may send, and the burst it may save up:
    #: past it the connection is slowed (shaped), never has messages dropped.
    rate: float = 0.0
    burst: int = 20
    #: A connection shaped without a break this long is closed with 4002 (0: never).
    flood_timeout: float = 30.0
    #: Opening handshakes per second from one client address, and their burst.
    handshake_rate: float = 0.0
    handshake_burst: int = 100
    # -- beyond one process ----------------------------------------------------
    #: redis://HOST:PORT/DB joining several rawchat processes into one chat.
    broker: str | None = None
    #: Worker processes sharing the port (SO_REUSEPORT); more than 1 needs a broker.
    workers: int = 1
    #: Listen with SO_REUSEPORT (set for each worker by the supervisor).
    reuse_port: bool = False
    #: TLS: serve https:// and wss:// with this certificate chain and key.
    certfile: Path | None = None
    keyfile: Path | None = None
    # -- public rooms (rawchat.identity, rawchat.moderation) ---------------------
    #: File holding the HS256 secret that signs session tokens; None: no tokens, all guests.
    token_secret_file: Path | None = None
    #: Refuse a hello without a valid token (no guests).
    require_token: bool = False

    @property
    def pressure_mark(self) -> int:
        """Write-buffer size past which a client is congested and senders are held.

        Everything queued past it is latency for every reader at once when the
        whole fan-out is behind: 64 KiB is hundreds of chat messages.
        """
        return max(1, min(self.max_buffer // 4, 64 * KiB))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for name in ("max_message", "max_buffer", "max_rooms", "history_bytes", "history_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_request_head < 2048:
            raise ValueError("max_request_head must be at least 2048")
        if self.history < 0:
            raise ValueError("history must not be negative")
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "rate",
            "burst",
            "handshake_rate",
            "handshake_burst",
            "flood_timeout",
            "history_ttl",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative (0 means no limit)")
        networks(self.trust_proxy)  # ValueError naming the entry that is not a network
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and self.broker is None:
            raise ValueError(
                "--workers greater than 1 needs --broker: worker processes share no memory,"
                " so without a broker their clients could not talk to each other"
            )
        if self.broker is not None and not self.broker.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("broker must be a redis:// (or rediss://, unix://) URL")
        if self.require_token and self.token_secret_file is None:
            raise ValueError("--require-token needs --token-secret-file")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both a certificate file and a key file")
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
