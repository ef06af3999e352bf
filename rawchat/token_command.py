"""``rawchat token NICK --secret-file PATH [--operator] [--ttl SECONDS]``: print a token.

For bots, tests and small deployments; a site with accounts issues the same JWTs itself
(see docs/protocol.md, "Tokens and reserved nicks").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rawchat.identity import Tokens
from rawchat.messages import ProtocolError, validate_nick


def token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rawchat token",
        description="Print a signed token for NICK (give it to the client, it goes in hello).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("nick", metavar="NICK")
    p.add_argument(
        "--secret-file", type=Path, required=True, metavar="PATH", help="the server's secret"
    )
    p.add_argument("--operator", action="store_true", help="may moderate every room")
    p.add_argument(
        "--ttl", type=float, default=30 * 24 * 3600, metavar="SECONDS", help="valid this long"
    )
    return p


def token_main(argv: Sequence[str]) -> int:
    """Parse the arguments, print the token; 0, or argparse's exit 2 with the reason."""
    p = token_parser()
    args = p.parse_args(argv)
    if args.ttl <= 0:
        p.error("--ttl must be positive")
    try:
        nick = validate_nick(args.nick)
        tokens = Tokens.from_file(args.secret_file)
    except ProtocolError as exc:
        p.error(exc.message)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    print(tokens.issue(nick, args.ttl, operator=args.operator))
    return 0
