"""The broker's bookkeeping on the objects alone: a real Chat and Broker, no Redis reached."""

from __future__ import annotations

import json
from typing import Any

from rawchat.broker import Broker
from tests.unit.fakes import make_state
from tests.unit.test_chat import V1, hello


def linked(*nicks: str) -> tuple[Any, list[V1], Broker]:
    """Clients in the lobby of a chat whose broker is up (from now on) but whose writer
    never runs: Redis answers nothing."""
    state, loop = make_state()
    clients = [hello(state, loop, nick) for nick in nicks]
    for client in clients:
        client.read()
    broker = Broker("redis://127.0.0.1:1/0", state.chat, 100)
    state.chat.relay = broker
    broker.up = True
    return state, clients, broker


def texts(client: V1) -> list[str]:
    return [m["text"] for m in client.read() if m["type"] == "msg"]


def test_a_full_outgoing_queue_drops_the_link_and_delivers_here_in_order() -> None:
    state, (ann, amy), broker = linked("ann", "amy")
    broker.max_outgoing = 4
    for i in range(10):
        ann.say(type="msg", room="lobby", text=f"m{i}", cid=f"c{i}")
    assert texts(amy) == [f"m{i}" for i in range(10)]
    acks = [m for m in ann.read() if m["type"] == "msg"]
    assert [m.get("cid") for m in acks] == [f"c{i}" for i in range(10)]
    assert not broker.up and broker.outages == 1
    assert len(broker._outgoing) == 0 and state.chat.delivery.awaiting_echo == {}


def test_the_echo_of_a_message_is_forgotten_even_when_it_is_not_delivered() -> None:
    state, (ann,), broker = linked("ann")
    ann.say(type="msg", room="lobby", text="hi", cid="c1")
    (token,) = state.chat.delivery.awaiting_echo
    # It comes back with an id the room already has (a reload overlapped it).
    state.chat.rooms["lobby"].history.last_id = 5
    fields = {"k": "msg", "room": "lobby", "id": 5, "ts": 1.0, "nick": "ann", "text": "hi"}
    broker._received(json.dumps({**fields, "node": broker.node, "tok": token}))
    assert state.chat.delivery.awaiting_echo == {}
    # And for a room this node no longer has.
    ann.say(type="msg", room="lobby", text="again", cid="c2")
    (token,) = state.chat.delivery.awaiting_echo
    fields.update(room="gone", id=6)
    broker._received(json.dumps({**fields, "node": broker.node, "tok": token}))
    assert state.chat.delivery.awaiting_echo == {}


def test_malformed_payloads_cost_a_log_line_and_nothing_else() -> None:
    state, (ann,), broker = linked("ann")
    for payload in (
        "not json",
        "[1]",
        '{"k":"msg","room":"lobby"}',
        '{"k":"msg","room":"lobby","id":"7","ts":1,"nick":"x","text":"t","tok":1,"node":"n"}',
        '{"k":"presence","room":"lobby","event":"dance","nick":"x","old":null,"node":"n"}',
        '{"k":"mod","room":"lobby","action":"kick","nick":"ann","by":"x","node":"n"}',
        '{"k":"bin","room":"lobby","data":"zz","node":"n"}',
        '{"k":"del","room":"lobby","id":true,"by":"x","node":"n"}',
        '{"k":"mod","room":"lobby","action":"address","nick":"bob","by":"x","seconds":60,'
        '"reason":null,"address":null,"node":"n"}',
        '{"k":"mod","room":"lobby","action":"ban","nick":"bob","by":"x","seconds":60,'
        '"reason":null,"address":7,"node":"n"}',
    ):
        broker._received(payload)
    assert ann.read() == [] and broker.up
    assert ann.closes() == []


def mod(**fields: Any) -> str:
    """A moderation payload as another node publishes it."""
    base = {"k": "mod", "room": "lobby", "by": "op", "reason": None, "address": None}
    return json.dumps({**base, **fields, "node": "other"})


def test_owners_and_banned_addresses_published_by_another_node_hold_here() -> None:
    state, (ann,), broker = linked("ann")
    moderation = state.chat.moderation
    broker._received(mod(action="owner", nick="Cy", seconds=1))
    assert moderation.owners.holds("lobby", "cy")
    told = [m for m in ann.read() if m["type"] == "owner"]
    assert told == [{"type": "owner", "room": "lobby", "nick": "Cy", "owner": True, "by": "op"}]
    broker._received(mod(action="owner", nick="cy", seconds=0))
    assert not moderation.owners.holds("lobby", "cy")
    # A guest banned on the other node, from an address this node never saw.
    broker._received(mod(action="address", nick="bob", seconds=60, address="192.0.2.7"))
    assert moderation.address_bans.remaining("lobby", "192.0.2.7") == 60
    broker._received(mod(action="ban", nick="bob", seconds=0))
    assert moderation.address_bans.remaining("lobby", "192.0.2.7") == 0


def test_a_hello_waits_for_the_broker_and_is_welcomed_here_if_the_link_goes_down() -> None:
    state, (ann,), broker = linked("ann")
    bob = hello(state, ann.client.loop, "bob")
    assert bob.read() == []  # the nick is being claimed on every node
    bob.say(type="hello", nick="bob")
    assert [m["code"] for m in bob.read()] == ["already_hello"]
    broker._lose("test: Redis is gone")
    welcome, joined = bob.read()[:2]
    assert (welcome["type"], welcome["nick"], joined["type"]) == ("welcome", "bob", "joined")
    assert not broker.up and broker.outages == 1


def test_a_resume_across_a_jump_in_ids_gets_each_missed_message_once() -> None:
    """Ids from the broker jump past an outage (1..40, then 51): a client that saw up to 45
    missed only 51, and must not get 36..40 again as if they were new."""
    state, (ann,), broker = linked("ann")
    epoch = state.chat.epoch
    for id in [*range(1, 41), 51]:
        fields = {"k": "msg", "room": "lobby", "id": id, "ts": 1.0, "nick": "cy", "text": f"t{id}"}
        broker._received(json.dumps({**fields, "node": "another", "tok": 0}))
    assert texts(ann)[-2:] == ["t40", "t51"]
    state.chat.relay = None  # this node alone from now on: the hello is answered here
    back = hello(state, ann.client.loop, "bob", resume={"lobby": 45}, epoch=epoch)
    joined = back.read()[1]
    assert [h["id"] for h in joined["history"]] == [51]
    assert joined["truncated"] is False


def test_a_hello_waiting_for_the_broker_is_not_closed_as_no_hello() -> None:
    """With a broker the welcome waits for Redis's word on the nick: a client that said
    hello and waits quietly must not be closed with 4001 when --handshake-timeout passes."""
    state, _, broker = linked()
    loop = state.loop
    bob = hello(state, loop, "bob")  # type: ignore[arg-type]
    assert bob.read() == []  # the nick is being claimed on every node
    loop.advance(state.config.handshake_timeout + 1)  # type: ignore[attr-defined]
    assert bob.read() == [] and bob.closes() == []
    broker._lose("test: Redis is gone")  # this node answers the hello itself
    assert [m["type"] for m in bob.read()][:2] == ["welcome", "joined"]
    loop.advance(state.config.handshake_timeout + 1)  # type: ignore[attr-defined]
    assert bob.closes() == []
