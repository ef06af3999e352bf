"""The chat's pieces on their own (rawchat.registry, nicks, delivery): fakes, no Chat."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from rawchat import messages as m
from rawchat import registry as registry_module
from rawchat.archive import Shelf
from rawchat.config import Config
from rawchat.delivery import Delivery
from rawchat.hub import Hub, Outbox
from rawchat.identity import Role, Seat
from rawchat.moderation import Moderation
from rawchat.nicks import Nicks
from rawchat.presence import Presence
from rawchat.registry import RoomRegistry
from rawchat.rooms import Letter, Room, Session
from tests.unit.fakes import FakeTransport, Peer


class FakeRelay:
    """A broker that is up and records what it is asked; claims wait for `answer`."""

    up = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.claims: list[tuple[Session, Callable[[bool], None]]] = []

    def publish(self, room: str, ts: float, nick: str, text: str, token: int) -> None:
        self.calls.append(("publish", room, nick, text, token))

    def publish_binary(self, room: str, data: bytes) -> None:
        self.calls.append(("binary", room, data))

    def presence(self, room: str, event: str, nick: str, old: str | None) -> None:
        self.calls.append(("presence", room, event, nick, old))

    def load(self, room: Room) -> None:
        self.calls.append(("load", room.name))

    def claim(self, session: Session, then: Callable[[bool], None]) -> None:
        self.claims.append((session, then))

    def release(self, key: str) -> None:
        self.calls.append(("release", key))

    def moderate(self, action: m.Moderate, by: str, address: str | None = None) -> None:
        raise AssertionError("not asked of the chat's pieces")

    def delete(self, room: str, id: int, by: str) -> None:
        raise AssertionError("not asked of the chat's pieces")

    def direct(self, letter: Letter, then: Callable[[int], None]) -> None:
        raise AssertionError("not asked of the chat's pieces")


class Parts:
    """A hub whose flushes and a presence whose ticks run only when the test says."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], object]] = []
        self.hub = Hub(1 << 20, self.scheduled.append)
        self.presence = Presence(self.hub, lambda _, tick: self.scheduled.append(tick))
        self.moderation = Moderation()
        self.transports: dict[Outbox, FakeTransport] = {}

    def session(self, nick: str = "", *, plain: bool = False) -> Session:
        transport = FakeTransport()
        outbox = Outbox(transport, lambda: None)
        self.transports[outbox] = transport
        session = Session(outbox, plain=plain, connection=Peer())
        session.nick = nick
        return session

    def frames(self, session: Session) -> list[bytes]:
        """The frames queued for ``session`` (the very objects), before any flush."""
        return list(session.outbox.frames)

    def said(self, session: Session) -> list[Any]:
        """What ``session`` was sent: JSON decoded, plain text as is, binary as bytes."""
        parser = FrameProtocol(client=True, extensions=[])
        parser.receive_bytes(b"".join(session.outbox.frames))
        out: list[Any] = []
        for frame in parser.received_frames():
            if frame.opcode is Opcode.TEXT:
                text = str(frame.payload)
                out.append(text if session.plain else json.loads(text))
            else:
                out.append(bytes(frame.payload))
        return out

    def registry(self) -> RoomRegistry:
        return RoomRegistry(self.hub, Shelf(Config(), lambda: 0.0), self.presence)

    def nicks(self) -> Nicks:
        return Nicks(self.hub, self.moderation, self.presence)


# -- the room registry ------------------------------------------------------------


def test_idle_rooms_are_kept_and_the_oldest_is_forgotten_first(monkeypatch: Any) -> None:
    monkeypatch.setattr(registry_module, "MAX_IDLE_ROOMS", 2)
    parts = Parts()
    rooms = parts.registry()
    ann = parts.session("ann")
    for name in ("one", "two", "three"):
        room = rooms.room(name)
        rooms.enter(ann, room)
        room.history.append(room.last_id + 1, 0.0, "ann", "hi", None)
        rooms.exit(ann, room)
    assert sorted(rooms.rooms) == ["three", "two"]
    # Made again, "one" numbers its messages after every id it gave before.
    assert rooms.room("one").last_id == 1 and rooms.forgotten_ids == 1


def test_a_room_taken_up_again_is_no_longer_idle(monkeypatch: Any) -> None:
    monkeypatch.setattr(registry_module, "MAX_IDLE_ROOMS", 1)
    parts = Parts()
    rooms = parts.registry()
    ann = parts.session("ann")
    rooms.enter(ann, rooms.room("kept"))
    rooms.exit(ann, rooms.rooms["kept"])
    kept = rooms.room("kept")  # someone joins it again...
    rooms.enter(ann, kept)
    rooms.enter(ann, rooms.room("other"))
    rooms.exit(ann, rooms.rooms["other"])
    rooms.enter(ann, rooms.room("third"))
    rooms.exit(ann, rooms.rooms["third"])  # ...so only "other" was ever in line to go
    assert rooms.rooms["kept"] is kept and "other" not in rooms.rooms


def test_the_lobby_is_never_idle() -> None:
    parts = Parts()
    rooms = parts.registry()
    ann = parts.session("ann")
    lobby = rooms.room(m.DEFAULT_ROOM)
    rooms.enter(ann, lobby)
    rooms.exit(ann, lobby)
    assert rooms.rooms == {m.DEFAULT_ROOM: lobby} and not rooms._idle


def test_at_shutdown_leaving_tells_nobody_and_keeps_no_room() -> None:
    parts = Parts()
    rooms = parts.registry()
    relay = rooms.relay = FakeRelay()
    ann = parts.session("ann")
    dev = rooms.room("dev")
    rooms.enter(ann, dev)
    relay.calls.clear()
    rooms.closing = True
    parts.presence.stop()
    rooms.exit(ann, dev)
    assert relay.calls == [] and not rooms._idle
    assert not dev.members and not dev.v1 and ann.rooms == {}


def test_with_a_broker_a_join_is_answered_once_the_room_is_loaded() -> None:
    parts = Parts()
    rooms = parts.registry()
    relay = rooms.relay = FakeRelay()
    ann, bob = parts.session("ann"), parts.session("bob")
    rooms.join(ann, "dev", None, False)
    rooms.join(bob, "dev", None, False)
    dev = rooms.rooms["dev"]
    assert ("load", "dev") in relay.calls and not dev.loaded
    rooms.exit(bob, dev)  # gone before the load: nobody to answer
    assert parts.said(ann) == [] and parts.said(bob) == []
    rooms.loaded(dev)
    (joined,) = parts.said(ann)
    assert joined["type"] == "joined" and joined["members"] == ["ann"]
    assert parts.said(bob) == []


# -- nicks ------------------------------------------------------------------------


def test_guest_nicks_skip_those_held_and_those_reserved() -> None:
    parts = Parts()
    nicks = parts.nicks()
    nicks.claim(parts.session(plain=True), "guest-1")
    parts.moderation.reserved.reserve("guest-2")
    assert nicks.guest_nick() == "guest-3"


def test_a_nick_is_one_whatever_its_case_and_a_rename_frees_the_old_one() -> None:
    parts = Parts()
    nicks = parts.nicks()
    ann, other = parts.session(), parts.session()
    nicks.claim(ann, "Ann")
    with pytest.raises(m.ProtocolError) as taken:
        nicks.claim(other, "aNN")
    assert taken.value.code == "nick_taken"
    nicks.rename(ann, "anna")
    nicks.claim(other, "ANN")
    assert nicks.holders == {"anna": ann, "ann": other}


def test_a_token_holder_takes_its_nick_back_from_a_guest() -> None:
    parts = Parts()
    nicks = parts.nicks()
    guest, owner = parts.session(), parts.session()
    nicks.claim(guest, "ann")
    owner.seat = Seat(Role.USER, "ann")  # what a token for "ann" proved
    nicks.claim(owner, "ann")
    assert nicks.holders["ann"] is owner and guest.nick.startswith("guest-")


def test_with_a_broker_a_nick_held_elsewhere_becomes_a_guest_nick() -> None:
    parts = Parts()
    nicks = parts.nicks()
    relay = nicks.relay = FakeRelay()
    ann = parts.session()
    nicks.claim(ann, "ann")
    nicks.rename(ann, "anna")
    assert ("release", "ann") in relay.calls
    (_, first), (_, second) = relay.claims
    first(True)  # too late: ann is anna by now
    assert ann.nick == "anna"
    second(True)
    assert ann.nick.startswith("guest-") and "anna" not in nicks.holders
    (error,) = parts.said(ann)
    assert error["code"] == "nick_taken"


def test_a_forfeited_claim_holds_nothing_and_release_frees_only_its_holder() -> None:
    parts = Parts()
    nicks = parts.nicks()
    relay = nicks.relay = FakeRelay()
    ann, late = parts.session(), parts.session()
    nicks.claim(ann, "ann")
    assert nicks.holds(ann)
    nicks.forfeit(ann)
    assert not nicks.holds(ann) and ann.key == ann.nick == "" and nicks.holders == {}
    nicks.claim(late, "ann")
    nicks.release(ann)  # holds nothing: the nick stays late's
    assert nicks.holders == {"ann": late} and ("release", "ann") not in relay.calls
    nicks.release(late)
    assert nicks.holders == {} and ("release", "ann") in relay.calls


# -- delivery ---------------------------------------------------------------------


def room_with(parts: Parts, *sessions: Session) -> Room:
    room = Room("lobby", Shelf(Config(), lambda: 0.0).make("lobby", 0))
    for session in sessions:
        room.members[session] = None
        (room.plain if session.plain else room.v1).add(session.outbox)
    return room


def test_a_message_is_encoded_once_for_every_member_and_once_more_for_its_sender() -> None:
    parts = Parts()
    delivery = Delivery(parts.hub, lambda: 12.5)
    ann, bob, cy = parts.session("ann"), parts.session("bob"), parts.session("cy")
    plain = parts.session("guest-1", plain=True)
    room = room_with(parts, ann, bob, cy, plain)
    delivery.publish(ann, room, "hi", "c1")
    (to_bob,), (to_cy,) = parts.frames(bob), parts.frames(cy)
    assert to_bob is to_cy  # the same bytes object, not an equal copy
    (own,) = parts.said(ann)
    (theirs,) = parts.said(bob)
    assert own == {**theirs, "cid": "c1"} and theirs["id"] == 1 and theirs["ts"] == 12.5
    assert parts.said(plain) == ["hi"] and room.last_id == 1


def test_with_a_broker_a_message_waits_for_its_echo() -> None:
    parts = Parts()
    delivery = Delivery(parts.hub, lambda: 1.0)
    relay = delivery.relay = FakeRelay()
    ann, bob = parts.session("ann"), parts.session("bob")
    room = room_with(parts, ann, bob)
    delivery.publish(ann, room, "hi", "c1")
    ((_, _, _, _, token),) = relay.calls
    assert parts.said(bob) == [] and room.last_id == 0
    sender = delivery.echoed(token)
    assert sender == (ann.outbox, "c1") and delivery.echoed(token) is None
    delivery.deliver(room, 7, 1.0, "ann", "hi", sender)
    assert parts.said(ann)[0]["cid"] == "c1" and parts.said(bob)[0]["id"] == 7


def test_what_only_plain_members_see_and_which_of_it_crosses_the_broker() -> None:
    parts = Parts()
    delivery = Delivery(parts.hub, lambda: 1.0)
    relay = delivery.relay = FakeRelay()
    ann, plain = parts.session("ann"), parts.session("guest-1", plain=True)
    room = room_with(parts, ann, plain)
    delivery.publish_plain(room, "   ")
    delivery.publish_plain(room, b"\x00\x01")
    assert parts.said(ann) == [] and parts.said(plain) == ["   ", b"\x00\x01"]
    assert relay.calls == [("binary", "lobby", b"\x00\x01")]
