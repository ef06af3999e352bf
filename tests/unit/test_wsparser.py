"""The parser rawchat makes: bytes in, wsproto events out, the size limit read from headers."""

from __future__ import annotations

import struct

from wsproto.events import BytesMessage, CloseConnection, TextMessage

from rawchat import wsparser
from tests.unit.fakes import masked

TEXT, BINARY, CONTINUATION = 0x1, 0x2, 0x0


def events(data: bytes, limit: int = 1000) -> list[object]:
    ws = wsparser.new_parser(limit)
    ws.receive_data(data)
    return list(ws.events())


def test_a_message_of_exactly_the_limit_passes() -> None:
    got = events(masked(BINARY, b"x" * 1000))
    assert [type(e) for e in got] == [BytesMessage]


def test_a_header_declaring_more_than_the_limit_is_1009_before_any_payload() -> None:
    header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", 1001) + b"\x00\x00\x00\x00"
    # No payload at all: the header alone is enough.
    got = events(header)
    assert [(type(e), e.code) for e in got] == [(CloseConnection, 1009)]  # type: ignore[attr-defined]


def test_garbage_after_an_oversized_header_is_never_parsed() -> None:
    # Payload that is not UTF-8 would be 1007 if wsproto read it: it must not get that far.
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 2**40) + b"\x00\x00\x00\x00"
    got = events(header + b"\xff\xfe" * 600)
    assert [(type(e), e.code) for e in got] == [(CloseConnection, 1009)]  # type: ignore[attr-defined]


def test_fragments_count_together_against_the_limit() -> None:
    data = masked(TEXT, b"a" * 600, fin=False) + masked(CONTINUATION, b"b" * 401)
    got = events(data)
    assert isinstance(got[0], TextMessage) and not got[0].message_finished
    assert [(type(e), e.code) for e in got[1:]] == [(CloseConnection, 1009)]  # type: ignore[attr-defined]


def test_a_new_message_starts_its_count_again() -> None:
    data = masked(TEXT, b"a" * 800) + masked(TEXT, b"b" * 800)
    got = events(data)
    assert [e.data for e in got] == ["a" * 800, "b" * 800]  # type: ignore[attr-defined]
