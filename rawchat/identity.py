"""Who a client is: signed tokens, nick keys and reserved nicks. No I/O.

There is no account database. A token is a standard JWT (HS256, one secret shared by the
server and whoever issues tokens, e.g. ``rawchat token``) carrying the nick (``sub``), an
expiry (``exp``) and optionally ``"role": "operator"``, as Centrifugo's connection tokens do.
Browsers cannot set headers on a WebSocket, so the token travels in ``hello``.

A nick presented once with a valid token is *reserved*: from then on a guest (no token)
cannot take it. Reservations live in a `ReservedNicks`; `MemoryReservations` keeps them for
the life of the process, and a durable store can implement the same two methods later.
"""

from __future__ import annotations

import enum
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt

from rawchat.messages import ProtocolError

ALGORITHM = "HS256"
#: HS256 keys shorter than the hash are weak (RFC 7518 section 3.2); PyJWT warns about them.
MIN_SECRET_BYTES = 32


class Role(enum.Enum):
    """What a session may do: guests and token holders chat, operators moderate everywhere."""

    GUEST = "guest"
    USER = "user"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Seat:
    """What a session proved in its hello: its role and, with a token, whose nick it holds."""

    role: Role
    #: The nick key the token was issued for ("" for a guest).
    key: str = ""


#: Every guest shares this one: a guest costs no object here.
GUEST = Seat(Role.GUEST)


def nick_key(nick: str) -> str:
    """The key under which nicks must be unique.

    NFKC folds compatibility forms (fullwidth ``ａｎｎ``, ligatures, superscripts) and
    casefold folds case (``STRASSE`` and ``straße``), so those collide. NFKC does not map
    letters of one script onto look-alikes in another (Cyrillic ``а`` stays itself): that is
    what `mixes_scripts` refuses.
    """
    key = unicodedata.normalize("NFKC", nick).casefold()
    # A nick already folded (every guest's) is its own key: one string kept, not two.
    return nick if key == nick else key


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name (``CYRILLIC SMALL LETTER A``).

    The standard library has no Script property; the first word of a letter's name is the
    script for every alphabet where look-alikes matter (Latin, Greek, Cyrillic, Armenian,
    Cherokee...). Non-letters (digits, punctuation, emoji) belong to no script.
    """
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def mixes_scripts(nick: str) -> bool:
    """Whether the nick's letters come from more than one script (``аnn`` with Cyrillic а).

    This is the narrow part of Unicode TR39 rawchat applies: a mixed-script nick is the usual
    way to impersonate (``pаypal``). A nick written wholly in another script that happens to
    look Latin (Cyrillic ``асе`` against ``ace``) still passes: catching it needs TR39's
    confusable skeleton data, which the standard library does not ship.
    """
    scripts = {s for s in map(_script, nick) if s is not None}
    # CJK names say CJK, HIRAGANA, KATAKANA, HANGUL...: Japanese mixes them by design.
    scripts -= {"HIRAGANA", "KATAKANA", "CJK"} if scripts & {"HIRAGANA", "KATAKANA"} else set()
    return len(scripts) > 1


def check_nick(nick: str) -> None:
    """Refuse a nick that would let its holder pass for someone else."""
    if mixes_scripts(nick):
        raise ProtocolError("bad_nick", "nick must not mix letters of different scripts")


class ReservedNicks(Protocol):
    """Nick keys that belong to a token holder; guests cannot take them."""

    def is_reserved(self, key: str) -> bool: ...

    def reserve(self, key: str) -> None: ...


class MemoryReservations:
    """Reservations for the life of the process (a restart frees every nick)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def is_reserved(self, key: str) -> bool:
        return key in self._keys

    def reserve(self, key: str) -> None:
        self._keys.add(key)


class Tokens:
    """Issues and checks the signed tokens of one shared secret."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.clock = clock

    @classmethod
    def from_file(cls, path: Path) -> Tokens:
        """The secret is the file's content, surrounding whitespace removed."""
        return cls(path.read_bytes().strip())

    def issue(self, nick: str, ttl: float, *, operator: bool = False) -> str:
        claims: dict[str, object] = {"sub": nick, "exp": int(self.clock() + ttl)}
        if operator:
            claims["role"] = Role.OPERATOR.value
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, nick: str) -> Role:
        """The role ``token`` grants to ``nick``, or ProtocolError("bad_token")."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as exc:
            raise ProtocolError("bad_token", f"token refused: {exc}") from None
        # Expiry is checked against the chat's clock (PyJWT would read the wall clock).
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= self.clock():
            raise ProtocolError("bad_token", "token has expired")
        sub = claims.get("sub")
        if not isinstance(sub, str) or nick_key(sub) != nick_key(nick):
            raise ProtocolError("bad_token", "token is for another nick")
        return Role.OPERATOR if claims.get("role") == Role.OPERATOR.value else Role.USER
