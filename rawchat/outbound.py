"""What a node sends through Redis: the Lua scripts, and the bounded queue with its one writer.

Each script does one step that must be atomic across nodes (a message's id, history
entry and publication; a nick's claim; a deletion from the shared history). They are
queued on the writer's pipeline like any command: one round trip for a whole burst.

:class:`Outbound` is the half of rawchat.broker.Broker that the chat calls (the
rawchat.rooms.Relay methods: publications, and loading a room); the Broker adds the
link's life cycle and what comes back on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from rawchat import messages as m
from rawchat.crossnode import NODE_CHANNEL, NODE_KEY, Arrivals, Outgoing, encode, key

if TYPE_CHECKING:
    from rawchat.chat import Chat
    from rawchat.rooms import Letter, Room, Session

log = logging.getLogger("rawchat.broker")

#: Publications that may wait for the writer. More means Redis is not keeping up:
#: the link is dropped (and what waits is delivered here) rather than queue without end.
MAX_OUTGOING = 10_000

# KEYS: counter, stream.  ARGV: channel, maxlen, payload (JSON without "id").
# The message gets its id, its place in the history and its publication in one
# atomic step, so the order of ids is the order every subscriber sees.
PUBLISH = """
local id = redis.call('INCR', KEYS[1])
local payload = '{"id":' .. id .. ',' .. string.sub(ARGV[3], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'm', payload)
redis.call('PUBLISH', ARGV[1], payload)
return id
"""

# KEYS: counter.  ARGV: the highest id this node handed out.  Raises the counter to it.
RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: the nick's key.  ARGV: node, heartbeat key prefix, "1" for a token holder.
# The nick is ours unless a live node holds it: a crashed node's nicks are taken over
# by the first to ask, so they need no expiry and no refresh (see docs/broker.md).
# Returns 1 when the nick is ours now, 0 when another node holds it.
CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then
  local node = string.match(owner, '^[^:]*')
  if node ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. node) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[3])
return 1
"""

# KEYS: the nick's key.  ARGV: node.  Frees the nick if this node holds it.
RELEASE = """
local owner = redis.call('GET', KEYS[1])
if owner and string.match(owner, '^[^:]*') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the recipient's nick key.  ARGV: heartbeat key prefix, node channel prefix,
# payload, sending node.  Sends a direct message to the node holding the nick.
# Returns 0 when no other live node holds it, 1 for a guest, 2 for a token holder.
DIRECT = """
local owner = redis.call('GET', KEYS[1])
if not owner then return 0 end
local node, verified = string.match(owner, '^([^:]*):(.*)$')
if node == ARGV[4] or redis.call('EXISTS', ARGV[1] .. node) == 0 then return 0 end
redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
return 1 + tonumber(verified)
"""

# KEYS: the room's stream.  ARGV: the message's payload prefix ('{"id":N,'), channel,
# payload.  Removes message N from the shared history (a capped stream: at most
# --history entries to look through) and tells every node.
DELETE = """
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'm' and string.sub(fields[i + 1], 1, #ARGV[1]) == ARGV[1] then
      redis.call('XDEL', KEYS[1], entry[1])
    end
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 0
"""


class Scripts:
    """The scripts, registered with one client."""

    def __init__(self, client: redis.Redis) -> None:
        script = client.register_script
        self.publish = script(PUBLISH)
        self.raise_counter = script(RAISE)
        self.claim = script(CLAIM)
        self.release = script(RELEASE)
        self.direct = script(DIRECT)
        self.delete = script(DELETE)


class Outbound:
    """Publications, queued (at most ``max_outgoing``) for one writer that sends them."""

    def __init__(self, client: redis.Redis, chat: Chat, node: str, history: int) -> None:
        self.chat = chat
        self.node = node
        self.history = history
        self.up = False
        self.max_outgoing = MAX_OUTGOING
        self.scripts = Scripts(client)
        self._redis = client
        #: Publications waiting for the writer, in the order they were made, and
        #: the batch the writer has sent and not yet heard back about.
        self._outgoing: deque[Outgoing] = deque()
        self._inflight: list[Outgoing] = []
        self._wake = asyncio.Event()
        self.arrivals = Arrivals(chat, node)
        #: Rooms being loaded, and what arrived for them meanwhile.
        self._loading: dict[str, list[dict[str, Any]]] = {}
        #: Room loads under way.
        self._tasks: set[asyncio.Task[Any]] = set()

    def _lose(self, why: str) -> None:
        """The link is broken: go down now (the Broker reconnects)."""
        raise NotImplementedError

    def publish(self, room: str, ts: float, nick: str, text: str, token: int) -> None:
        fields = {"k": "msg", "room": room, "ts": ts, "nick": nick, "text": text}
        payload = encode({**fields, "node": self.node, "tok": token})
        self._queue(Outgoing(room, payload, "msg", ts=ts, nick=nick, text=text, token=token))

    def publish_binary(self, room: str, data: bytes) -> None:
        payload = encode({"k": "bin", "room": room, "data": data.hex(), "node": self.node})
        self._queue(Outgoing(room, payload, "bin"))

    def presence(self, room: str, event: str, nick: str, old: str | None) -> None:
        fields = {"k": "presence", "room": room, "event": event, "nick": nick, "old": old}
        payload = encode({**fields, "node": self.node})
        self._queue(Outgoing(room, payload, "presence", nick=nick, event=event, old=old))

    def claim(self, session: Session, then: Callable[[bool], None]) -> None:
        verified = "1" if session.seat.key else "0"
        self._queue(
            Outgoing("", "", "claim", key=session.key, text=verified, then=lambda r: then(r == 0))
        )

    def release(self, nick: str) -> None:
        self._queue(Outgoing("", "", "release", key=nick))

    def moderate(self, action: m.Moderate, by: str, address: str | None = None) -> None:
        fields: dict[str, object] = {"k": "mod", "room": action.room, "action": action.action}
        fields.update(nick=action.nick, by=by, seconds=action.seconds, reason=action.reason)
        fields.update(address=address, node=self.node)
        self._queue(Outgoing(action.room, encode(fields), "mod"))

    def delete(self, room: str, id: int, by: str) -> None:
        payload = encode({"k": "del", "room": room, "id": id, "by": by, "node": self.node})
        self._queue(Outgoing(room, payload, "del", id=id))

    def direct(self, letter: Letter, then: Callable[[int], None]) -> None:
        fields: dict[str, object] = {"k": "direct", "room": "", "id": letter.id, "ts": letter.ts}
        fields["nick"] = letter.nick
        fields.update(to=letter.to, text=letter.text, key=letter.key, kept=letter.kept)
        payload = encode({**fields, "node": self.node})
        self._queue(Outgoing("", payload, "direct", key=letter.key, then=lambda r: then(r or 0)))

    def load(self, room: Room) -> None:
        if room.name in self._loading:
            return
        self._loading[room.name] = []
        self._spawn(self._load(room))

    async def _load(self, room: Room) -> None:
        """Fill a room from Redis: counter, history and remote members, read in one MULTI."""
        name = room.name
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(key("id", name))
                pipe.xrevrange(key("history", name), count=self.history)
                pipe.hgetall(key("members", name))
                counter, entries, members = await pipe.execute()
            buffered = self._loading.pop(name, [])
            if self.chat.rooms.get(name) is room:
                self.arrivals.loaded(room, counter, entries, members, buffered)
        finally:
            if not room.loaded:  # whatever went wrong, joins must not wait for ever
                self._loading.pop(name, None)
                # A founder owns the room here, as on a single node (if the room is still here).
                self.chat.moderation.owners.founded(name, self.chat.rooms.get(name) is room)
                self.chat.registry.loaded(room)  # carry on with what this node has

    def _queue(self, item: Outgoing) -> None:
        if self.up and len(self._outgoing) >= self.max_outgoing:
            self._lose(f"{len(self._outgoing)} publications waiting: Redis is not keeping up")
        if not self.up:
            self._locally(item)
            return
        self._outgoing.append(item)
        self._wake.set()

    async def _write(self) -> None:
        """The one writer: whatever was published since it last ran goes out in one pipeline.

        A task per message would cost more than the message; one long-lived
        writer batches a burst into one round trip and keeps the order in which
        the node's clients spoke.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._outgoing:
                continue
            # Until Redis answers, the batch is in flight: if the link goes down
            # meanwhile, whether Redis ran it is unknown, and it is delivered here
            # (see _fail_outgoing) before what was queued after it.
            batch = self._inflight = list(self._outgoing)
            self._outgoing.clear()
            async with self._redis.pipeline(transaction=False) as pipe:
                counts = [await self._command(pipe, item) for item in batch]
                results = await pipe.execute()
            self._inflight = []
            # An item's answer is the result of the last command it queued.
            for item, end in zip(batch, itertools.accumulate(counts), strict=True):
                if item.then is not None:
                    item.then(results[end - 1])

    def _fail_outgoing(self) -> None:
        """Redis is gone: deliver here what was waiting, in order, as a single node would."""
        waiting, self._inflight = [*self._inflight, *self._outgoing], []
        self._outgoing.clear()
        for item in waiting:
            self._locally(item)

    def _locally(self, item: Outgoing) -> None:
        """What becomes of a publication that will not reach Redis."""
        chat = self.chat
        if item.then is not None:
            item.then(None)  # a claim holds here; a direct message reached nobody
        if item.kind != "msg":
            return  # presence is registered again, and other nodes drop ours, on resync
        sender = chat.delivery.echoed(item.token)
        room = chat.rooms.get(item.room)
        if room is not None:
            chat.delivery.deliver(room, room.last_id + 1, item.ts, item.nick, item.text, sender)

    async def _command(self, pipe: Any, item: Outgoing) -> int:
        """Queue ``item``'s commands on ``pipe``; how many."""
        channel = key("room", item.room)
        kind = item.kind
        # Scripts are queued on the pipeline, which loads them into Redis if needed.
        if kind == "msg":
            keys = [key("id", item.room), key("history", item.room)]
            args: list[Any] = [channel, self.history, item.payload]
            await self.scripts.publish(keys=keys, args=args, client=pipe)
            return 1
        if kind == "presence":
            members = key("members", item.room)
            if item.event in ("leave", "nick"):
                pipe.hdel(members, f"{self.node}:{item.old if item.event == 'nick' else item.nick}")
            if item.event in ("join", "nick"):
                pipe.hset(members, f"{self.node}:{item.nick}", item.nick)
            pipe.publish(channel, item.payload)
            return 1 + (item.event in ("leave", "nick")) + (item.event in ("join", "nick"))
        if kind == "claim":
            args = [self.node, NODE_KEY, item.text]
            await self.scripts.claim(keys=[key("nick", item.key)], args=args, client=pipe)
            return 1
        if kind == "release":
            await self.scripts.release(keys=[key("nick", item.key)], args=[self.node], client=pipe)
            return 1
        if kind == "direct":
            args = [NODE_KEY, NODE_CHANNEL, item.payload, self.node]
            await self.scripts.direct(keys=[key("nick", item.key)], args=args, client=pipe)
            return 1
        if kind == "del":
            args = [f'{{"id":{item.id},', channel, item.payload]
            await self.scripts.delete(keys=[key("history", item.room)], args=args, client=pipe)
            return 1
        pipe.publish(channel, item.payload)  # bin, mod
        return 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (RedisError, OSError) as exc:
            log.debug("broker call failed: %s", exc)  # the link notices on its own
        except Exception as exc:  # noqa: BLE001 - a fault of ours is a lost link too
            if self.up:
                log.error("broker task failed", exc_info=exc)
                self._lose(f"{type(exc).__name__}: {exc}")
