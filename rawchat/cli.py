"""Command line: arguments -> Config -> run."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from rawchat import __version__
from rawchat.config import Config, KiB, MiB, default_data_dir, raise_open_files_limit
from rawchat.proxies import networks
from rawchat.store import StoreError


def _size(text: str) -> int:
    """A byte count, optionally with a K, M or G suffix (powers of 1024)."""
    units = {"k": KiB, "m": MiB, "g": 1024 * MiB}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return value


def _addresses(text: str) -> list[str]:
    """Addresses or networks separated by commas, each checked."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        networks(tuple(items))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--trust-proxy: ")) from None
    return items


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="rawchat",
        description="A WebSocket chat server built from scratch on asyncio.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # "--work 2" must not pass for "--workers 2": the supervisor hands each worker
        # its own arguments, and a worker must not read them as a call for workers.
        allow_abbrev=False,
    )
    p.add_argument("--host", default=d.host, help="address to listen on")
    p.add_argument("--port", type=int, default=d.port, help="port to listen on; 0 picks a free one")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    p.add_argument(
        "--static",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve the page from DIR instead of the one shipped with rawchat",
    )
    p.add_argument(
        "--max-message",
        type=_size,
        default=d.max_message,
        metavar="BYTES",
        help="largest WebSocket message accepted; bigger ones close with 1009",
    )
    p.add_argument(
        "--max-buffer",
        type=_size,
        default=d.max_buffer,
        metavar="BYTES",
        help="bytes that may wait to be sent to one client before it is evicted as too slow",
    )
    p.add_argument(
        "--slow-timeout",
        type=float,
        default=d.slow_timeout,
        metavar="SECONDS",
        help="how long a client may stay past the pressure mark (a quarter of --max-buffer,"
        " at most 64 KiB) while the others keep up before it is evicted",
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=d.ping_interval,
        metavar="SECONDS",
        help="how often every WebSocket is pinged",
    )
    p.add_argument(
        "--ping-timeout",
        type=float,
        default=d.ping_timeout,
        metavar="SECONDS",
        help="how long a pong may take before the connection is closed",
    )
    p.add_argument(
        "--history",
        type=int,
        default=d.history,
        metavar="N",
        help="messages kept per room for history and resume",
    )
    p.add_argument(
        "--history-bytes",
        type=_size,
        default=d.history_bytes,
        metavar="BYTES",
        help="bytes of messages kept per room (oldest dropped first)",
    )
    p.add_argument(
        "--history-total",
        type=_size,
        default=d.history_total,
        metavar="BYTES",
        help="bytes of messages kept by all rooms together (the largest rooms give way)",
    )
    p.add_argument(
        "--history-ttl",
        type=float,
        default=d.history_ttl,
        metavar="SECONDS",
        help="seconds a message is kept, in memory and on disk (0: no age limit)",
    )
    p.add_argument(
        "--data",
        default=str(default_data_dir()),
        metavar="DIR",
        help="directory of the history database, so that history survives a restart;"
        " 'none' keeps history in memory only (with --broker, Redis keeps it instead)",
    )
    p.add_argument(
        "--max-rooms",
        type=int,
        default=d.max_rooms,
        metavar="N",
        help="rooms one client may be in at once",
    )
    p.add_argument(
        "--log-level",
        default=d.log_level,
        choices=["debug", "info", "warning", "error"],
        help="logging threshold",
    )
    p.add_argument(
        "--log-format",
        default=d.log_format,
        choices=["text", "json"],
        help="json: one JSON object per line, with the client address and close code",
    )
    s = p.add_argument_group("scaling out")
    s.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help="redis://HOST:PORT/DB: join every rawchat process using it into one chat",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT); more than 1 needs --broker",
    )
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("limits and security (0 means no limit)")
    g.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed besides the page's own (repeatable); * allows any",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        metavar="N",
        help="WebSocket connections open at once; more get 503 with Retry-After"
        " (default: RLIMIT_NOFILE less 100)",
    )
    g.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=d.max_connections_per_ip,
        metavar="N",
        help="WebSocket connections open at once from one address; more get 429",
    )
    g.add_argument(
        "--trust-proxy",
        type=_addresses,
        action="extend",
        default=[],
        metavar="ADDRESSES",
        help="the reverse proxies in front of rawchat, addresses or networks separated by"
        " commas (127.0.0.1,10.0.0.0/8): from them X-Forwarded-For/-Proto/-Host and"
        " Forwarded count, from any other peer they are ignored",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        metavar="PER_SECOND",
        help="messages per second one connection may send; a faster one is slowed"
        " (rawchat stops reading it), no message is dropped",
    )
    g.add_argument(
        "--burst",
        type=int,
        default=d.burst,
        metavar="N",
        help="messages one connection may send at once under --rate",
    )
    g.add_argument(
        "--flood-timeout",
        type=float,
        default=d.flood_timeout,
        metavar="SECONDS",
        help="a connection slowed by --rate without a break this long is closed (4002)",
    )
    g.add_argument(
        "--handshake-rate",
        type=float,
        default=d.handshake_rate,
        metavar="PER_SECOND",
        help="WebSocket handshakes per second from one address past its burst: more"
        " wait for their turn, up to --handshake-timeout, then get 429"
        " (a NAT or proxy is one address: use behind --trust-proxy)",
    )
    g.add_argument(
        "--handshake-burst",
        type=int,
        default=d.handshake_burst,
        metavar="N",
        help="handshakes one address may make at once",
    )
    g.add_argument(
        "--certfile",
        type=Path,
        default=None,
        help="TLS certificate chain (PEM): serve https and wss",
    )
    g.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM)")
    # -- public rooms: signed tokens (rawchat.identity); `rawchat token` issues them --
    t = p.add_argument_group("tokens and moderation (see `rawchat token --help`)")
    t.add_argument(
        "--token-secret-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="accept tokens signed (HS256) with the secret in PATH: token holders keep their"
        " nick, operators moderate",
    )
    t.add_argument(
        "--require-token", action="store_true", help="refuse clients without a valid token"
    )
    p.add_argument("--version", action="version", version=f"rawchat {__version__}")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    args = parser().parse_args(argv)
    if args.token_secret_file is not None:
        # A secret that cannot be read must stop the start, not let everyone in as a guest.
        from rawchat.identity import Tokens

        try:
            Tokens.from_file(args.token_secret_file)
        except (OSError, ValueError) as exc:
            parser().error(f"--token-secret-file: {exc}")
    try:
        return Config(
            host=args.host,
            port=args.port,
            use_uvloop=args.uvloop,
            static_dir=args.static,
            max_message=args.max_message,
            max_buffer=args.max_buffer,
            slow_timeout=args.slow_timeout,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_timeout,
            history=args.history,
            history_bytes=args.history_bytes,
            history_total=args.history_total,
            history_ttl=args.history_ttl,
            data=None if args.data.strip().lower() in ("none", "") else Path(args.data),
            max_rooms=args.max_rooms,
            log_level=args.log_level,
            log_format=args.log_format,
            allow_origins=tuple(args.allow_origin),
            max_connections=args.max_connections,
            max_connections_per_ip=args.max_connections_per_ip,
            trust_proxy=tuple(args.trust_proxy),
            rate=args.rate,
            burst=args.burst,
            flood_timeout=args.flood_timeout,
            handshake_rate=args.handshake_rate,
            handshake_burst=args.handshake_burst,
            certfile=args.certfile,
            keyfile=args.keyfile,
            broker=args.broker,
            workers=args.workers,
            reuse_port=args.reuse_port,
            token_secret_file=args.token_secret_file,
            require_token=args.require_token,
        )
    except ValueError as exc:
        parser().error(str(exc))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; connection events carry client, protocol and code."""

    FIELDS = ("event", "client", "protocol", "code")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in self.FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _count(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["token"]:
        from rawchat.token_command import token_main

        return token_main(arguments[1:])
    before, soft, hard = raise_open_files_limit()
    config = config_from_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    try:
        if config.workers > 1:
            from rawchat.workers import supervise

            return supervise(config, sys.argv[1:] if argv is None else argv)
        from rawchat.server import run

        def started(_: object) -> None:
            # After the listening line, which stays the first one a server logs.
            logging.getLogger("rawchat").info(
                "open files: soft limit %s (%s), hard limit %s",
                _count(soft),
                "raised from " + _count(before) if soft != before else "unchanged",
                _count(hard),
            )

        run(config, started)
    except StoreError as exc:  # a corrupt or newer database, a directory in use or unusable
        logging.getLogger("rawchat").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("rawchat").error(
            "cannot listen on %s:%d: %s", config.host, config.port, exc
        )
        return 1
    return 0
