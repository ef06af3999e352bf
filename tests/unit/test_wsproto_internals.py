"""What rawchat reads of wsproto's private state, checked against the installed wsproto.

rawchat drops an idle client's parser and frees a closed one at once (see
``rawchat.wsparser.at_rest`` and ``rawchat.wsparser.release``). Both read attributes
wsproto does not promise to keep; the code treats their absence as "busy", which
is safe but quietly costs every idle client its parser again. These tests turn
such a change into a failure, so that an upgrade of wsproto (``make upgrade``)
says so instead.
"""

from __future__ import annotations

from wsproto.connection import Connection as WebSocket

from rawchat import wsparser
from tests.unit.fakes import masked

TEXT, PING = 0x1, 0x9


def parser() -> WebSocket:
    return wsparser.new_parser(max_message=1000)


def test_the_private_attributes_rawchat_reads_are_there() -> None:
    ws = parser()
    proto = ws._proto
    assert len(ws._events) == 0
    assert proto._frame_decoder.header is None
    assert len(proto._frame_decoder.buffer) == 0
    assert proto._message_decoder.opcode is None
    assert proto._outbound_opcode is None
    assert callable(proto._parse_more.close)


def test_a_fresh_parser_is_at_rest() -> None:
    assert wsparser.at_rest(parser())


def test_a_parser_after_a_whole_ping_is_at_rest() -> None:
    ws = parser()
    ws.receive_data(masked(PING, b"p"))
    assert [type(e).__name__ for e in ws.events()] == ["Ping"]
    assert wsparser.at_rest(ws)


def test_half_a_frame_header_is_not_rest() -> None:
    ws = parser()
    ws.receive_data(masked(TEXT, b"hello")[:1])
    list(ws.events())
    assert not wsparser.at_rest(ws)


def test_half_a_payload_is_not_rest() -> None:
    ws = parser()
    ws.receive_data(masked(TEXT, b"hello")[:8])
    list(ws.events())
    assert not wsparser.at_rest(ws)


def test_the_first_fragment_of_a_message_is_not_rest() -> None:
    ws = parser()
    ws.receive_data(masked(TEXT, b"hel", fin=False))
    list(ws.events())
    assert not wsparser.at_rest(ws)


def test_events_not_taken_yet_are_not_rest() -> None:
    ws = parser()
    ws.receive_data(masked(PING, b"p"))
    assert not wsparser.at_rest(ws)


def test_dropping_a_parser_closes_its_frame_generator() -> None:
    ws = parser()
    generator = ws._proto._parse_more
    wsparser.release(ws)
    assert generator.gi_frame is None  # closed: it no longer pins its owner
