"""The HTTP side of rawchat, free of I/O: static files, error replies, upgrade checks.

The connection feeds h11 events in and sends what these functions decide. The
WebSocket opening handshake is checked here against RFC 6455, section 4.2.1;
everything that is not a valid upgrade gets an HTTP answer, never a 101.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h11
from wsproto.utilities import generate_accept_token

WEBSOCKET_PATH = "/ws"
SUBPROTOCOL = "rawchat.v1"
ALLOWED_METHODS = b"GET, HEAD"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}


def content_type(path: Path) -> str:
    known = _TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A whole HTTP response: status, headers and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


def reason(status: int) -> bytes:
    """The standard reason phrase; h11 leaves it empty unless told."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def error_reply(status: int, *extra: tuple[bytes, bytes]) -> Reply:
    body = b"%d %s\n" % (status, reason(status))
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    return Reply(status, headers, body)


class StaticFiles:
    """Maps request targets to files under one directory, and nowhere else."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, target: bytes) -> Path | None:
        """The file a request target names, or None when there is none to serve.

        The target is decoded once, split into segments and every segment that
        could climb (``..``), name the root (empty, ``/``), hide (dot-files),
        or smuggle a byte (NUL, backslash) is refused. Symlinks are resolved
        and the result must still lie under the root, so a link pointing out
        is a 404 too.
        """
        path = path_of(target)
        if not path.startswith("/"):
            return None
        try:
            path = unquote(path, errors="strict") if "%" in path else path
        except UnicodeDecodeError:
            return None
        if path.endswith("/"):
            path += "index.html"
        segments = path.split("/")[1:]
        for segment in segments:
            # Dot-files are never served: that also covers "." and "..".
            if not segment or segment.startswith(".") or "\x00" in segment or "\\" in segment:
                return None
        try:
            candidate = (self.root.joinpath(*segments)).resolve()
            if not candidate.is_relative_to(self.root) or not candidate.is_file():
                return None
        except OSError:  # a name too long for the file system, a symlink loop
            return None
        return candidate

    def reply(self, target: bytes) -> Reply:
        found = self.resolve(target)
        if found is None:
            return error_reply(404)
        try:
            body = found.read_bytes()
        except OSError:
            return error_reply(404)
        headers = [
            (b"content-type", content_type(found).encode()),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if found.suffix == ".html":
            headers.append((b"content-security-policy", script_policy(body)))
        return Reply(200, headers, body)


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def script_policy(page: bytes) -> bytes:
    """A Content-Security-Policy that lets a page run its own scripts and no others.

    Scripts from the same origin are allowed, and each inline ``<script>`` the
    file itself contains by its hash. Markup that reaches the page later (the
    tutorial's page inserts chat text with innerHTML) can then run nothing:
    an injected ``onerror=`` handler or ``<script>`` is blocked by the browser.
    """
    sources = [b"'self'"]
    for script in _INLINE_SCRIPT.findall(page):
        digest = base64.b64encode(hashlib.sha256(script).digest())
        sources.append(b"'sha256-" + digest + b"'")
    return b"script-src " + b" ".join(sources) + b"; object-src 'none'; base-uri 'none'"


def _header_tokens(request: h11.Request, name: bytes) -> list[bytes]:
    """Comma-separated tokens of every header called ``name``, lowercased."""
    tokens: list[bytes] = []
    for key, value in request.headers:
        if key == name:
            tokens.extend(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def single_header(request: h11.Request, name: bytes) -> bytes | None:
    """The value of a header that must appear once, or None."""
    values = [value for key, value in request.headers if key == name]
    return values[0] if len(values) == 1 else None


@dataclasses.dataclass(frozen=True, slots=True)
class Upgrade:
    """A valid opening handshake: the 101 to send and the subprotocol chosen."""

    headers: list[tuple[bytes, bytes]]
    subprotocol: str | None


def check_upgrade(request: h11.Request) -> Upgrade | Reply:
    """Validate a WebSocket opening handshake (RFC 6455, section 4.2.1).

    Returns the 101's headers, or the error reply: 405 for a method other than
    GET, 426 (with the versions we speak) when the client did not ask for
    WebSocket version 13, 400 for anything else malformed.
    """
    if request.method != b"GET":
        return error_reply(405, (b"allow", b"GET"))
    if request.http_version != b"1.1":
        return error_reply(400)
    if b"websocket" not in _header_tokens(request, b"upgrade"):
        return error_reply(426, (b"upgrade", b"websocket"), (b"sec-websocket-version", b"13"))
    if single_header(request, b"sec-websocket-version") != b"13":
        return error_reply(426, (b"sec-websocket-version", b"13"))
    if b"upgrade" not in _header_tokens(request, b"connection"):
        return error_reply(400)
    key = single_header(request, b"sec-websocket-key")
    if key is None or not _valid_key(key):
        return error_reply(400)
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]
    offered = _header_tokens(request, b"sec-websocket-protocol")
    subprotocol = None
    if SUBPROTOCOL.encode() in offered:
        subprotocol = SUBPROTOCOL
        headers.append((b"sec-websocket-protocol", SUBPROTOCOL.encode()))
    return Upgrade(headers, subprotocol)


def _valid_key(key: bytes) -> bool:
    """The key must be base64 of exactly 16 bytes (RFC 6455, section 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def path_of(target: bytes) -> str:
    """The path of a request target; "" for one that does not parse (no file has that name)."""
    try:
        return urlsplit(target.decode("ascii")).path
    except (UnicodeDecodeError, ValueError):
        return ""


def document(content_type: bytes, body: bytes) -> Reply:
    """A 200 with a generated body that must not be cached."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
    return Reply(200, headers, body)


def default_static_dir() -> Path:
    """The page shipped with rawchat.

    A wheel carries it inside the package (``rawchat/static``); a source
    checkout, editable installs included, has it at the top level (``static/``).
    """
    here = Path(__file__).resolve().parent
    packaged = here / "static"
    return packaged if packaged.is_dir() else here.parent / "static"
