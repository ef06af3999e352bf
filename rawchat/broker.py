"""Several rawchat nodes as one chat, joined through Redis (``--broker redis://…``).

Redis does three jobs, each with a structure made for it:

* **Order and ids.** A message is published by one Lua script that, atomically,
  takes the room's next id (``INCR``), appends the message to the room's capped
  history (a Stream of ``--history`` entries) and ``PUBLISH``es it. So every
  node, the sender's included, receives every message of a room in id order,
  and ids are strictly increasing across nodes. A node delivers a message to its
  local members only when it comes back from Redis, through the same
  encode-once hub as without a broker.
* **History and resume.** A node that gets its first member in a room loads the
  room's id counter and Stream (in one ``MULTI``) while it buffers what arrives
  meanwhile, so a client can resume on any node with no gap and no duplicate.
* **Presence.** Each node keeps its members of each room in a hash and a
  heartbeat key that expires ``NODE_TTL`` seconds after the node stops
  refreshing it. Nodes watch each other's heartbeats and drop the members of a
  node that is gone, so a crashed node's users leave within about
  ``NODE_TTL + SWEEP`` seconds.

When Redis goes away, the node keeps serving its own clients exactly as a
single server would (local ids continue from the last one seen), reports the
outage in ``/healthz`` and ``/metrics``, and retries with backoff. When Redis is
back it resynchronises: each room's counter is raised past any id handed out
meanwhile, the node's members are registered again, and rooms are reloaded.
What is lost in an outage: messages sent meanwhile reach only the clients of
the node they were sent to and are not in the shared history, and the same
ids may have been used on two nodes for different messages in that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rawchat import frames, replies
from rawchat import messages as m

if TYPE_CHECKING:
    from rawchat.chat import Chat
    from rawchat.rooms import Room

log = logging.getLogger("rawchat.broker")

PREFIX = "rawchat:"
CHANNELS = PREFIX + "room:*"
#: Seconds a node's heartbeat lives without a refresh, and how often nodes refresh and sweep.
NODE_TTL = 6.0
SWEEP = 2.0
#: Guest numbers a node takes at a time.
GUEST_BLOCK = 10_000
#: Seconds a stop waits for the link's tasks to wind up.
STOP_TIMEOUT = 2.0

# KEYS: counter, stream.  ARGV: channel, maxlen, payload (JSON without "id").
# The message gets its id, its place in the history and its publication in one
# atomic step, so the order of ids is the order every subscriber sees.
_PUBLISH = """
local id = redis.call('INCR', KEYS[1])
local payload = '{"id":' .. id .. ',' .. string.sub(ARGV[3], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'm', payload)
redis.call('PUBLISH', ARGV[1], payload)
return id
"""

# KEYS: counter.  ARGV: the highest id this node handed out.  Raises the counter to it.
_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


def _key(kind: str, room: str) -> str:
    return f"{PREFIX}{kind}:{room}"


@dataclasses.dataclass(slots=True)
class _Outgoing:
    """One publication: a message (with what is needed to deliver it locally if Redis fails),
    a presence change, or a plain client's binary frame."""

    room: str
    payload: str
    kind: str
    ts: float = 0.0
    nick: str = ""
    text: str = ""
    token: int = 0
    event: str = ""
    old: str | None = None


class Broker:
    """The chat's Relay onto Redis."""

    def __init__(self, url: str, chat: Chat, history: int) -> None:
        self.url = url
        self.chat = chat
        self.history = max(history, 1)
        self.node = secrets.token_hex(4)
        self.up = False
        self.outages = 0
        # No silent retries: an outage must be noticed, reported and recovered from here.
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0), decode_responses=True
        )
        #: Publications waiting for the writer, in the order they were made.
        self._outgoing: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        #: Rooms being loaded, and what arrived for them meanwhile.
        self._loading: dict[str, list[dict[str, Any]]] = {}
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._raise_script = self._redis.register_script(_RAISE)
        #: Set while Redis is reachable, and while it is not: for whoever must wait on either.
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()

    # -- life cycle -----------------------------------------------------------

    async def start(self, wait: float = 5.0) -> None:
        """Connect (waiting up to ``wait`` seconds for Redis) and keep the link up."""
        self.chat.relay = self
        self._runner = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=2 * STOP_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT)
        if self.up:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(_key("node", self.node))
        await self._redis.aclose()

    async def _run(self) -> None:
        """Subscribe, heartbeat and sweep; on any failure, go down and retry with backoff."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(CHANNELS)
                await self._resync()
                self.up = True
                self.disconnected.clear()
                self.connected.set()
                delay = 0.1
                log.info("broker connected: %s (node %s)", self.url, self.node)
                # Listening, writing and heartbeating live and die together:
                # the first to fail takes the link down, and all start again.
                loop = asyncio.get_running_loop()
                parts = [
                    loop.create_task(self._listen(pubsub)),
                    loop.create_task(self._write()),
                    loop.create_task(self._heartbeat()),
                ]
                try:
                    done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for part in parts:
                        part.cancel()
                    # Bounded: a cancelled read inside redis-py's pub/sub can
                    # fail to finish, and must not hold up a shutdown.
                    await asyncio.wait(parts, timeout=STOP_TIMEOUT)
                for part in done:
                    part.result()
                raise ConnectionError("broker link ended")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.up:
                    self.outages += 1
                    log.warning("broker lost (%s): serving local clients only", exc)
                self.up = False
                self.connected.clear()
                self.disconnected.set()
                self._loading.clear()
                self._finish_loads()
                self._fail_outgoing()
            finally:
                closing = asyncio.ensure_future(pubsub.aclose())
                await asyncio.wait({closing}, timeout=STOP_TIMEOUT)
                if closing.done() and not closing.cancelled():
                    closing.exception()  # seen, whatever it was
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _finish_loads(self) -> None:
        """Without Redis, rooms that were loading carry on with what this node has."""
        for room in self.chat.rooms.values():
            if not room.loaded:
                self.chat.room_loaded(room)

    async def _resync(self) -> None:
        """After (re)connecting: one epoch for all, counters past every id used, rooms reloaded."""
        r = self._redis
        await r.set(PREFIX + "epoch", self.chat.epoch, nx=True)
        epoch = await r.get(PREFIX + "epoch")
        if epoch is not None:
            self.chat.epoch = str(epoch)
        # Each node numbers its guests from its own block, so that guest-N is
        # unique across nodes (after GUEST_BLOCK guests a node would overlap the
        # next block; local uniqueness is still checked).
        end = await r.incrby(PREFIX + "guests", GUEST_BLOCK)
        self.chat.guests = itertools.count(int(end) - GUEST_BLOCK + 1)
        await self._beat()
        # Every node keeps the lobby loaded from the start: plain clients get no
        # history, so they must find it ready to deliver from their first moment.
        self.chat.room(m.DEFAULT_ROOM)
        for room in list(self.chat.rooms.values()):
            if room.last_id:
                await self._raise_script(keys=[_key("id", room.name)], args=[room.last_id])
            # Our entries as they are now: whoever left during the outage goes.
            members = _key("members", room.name)
            ours = [str(f) for f in await r.hkeys(members) if str(f).startswith(self.node + ":")]
            if ours:
                await r.hdel(members, *ours)
            for member in room.members:
                await r.hset(members, f"{self.node}:{member.nick}", member.nick)
            room.loaded = False
            self.load(room)

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message.get("type") == "pmessage":
                self._received(message["data"])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(SWEEP)
            await self._beat()
            await self._sweep()

    async def _beat(self) -> None:
        await self._redis.set(_key("node", self.node), "1", px=int(NODE_TTL * 1000))

    async def _sweep(self) -> None:
        """Drop the members of nodes whose heartbeat has expired."""
        nodes = {node for room in self.chat.rooms.values() for node in room.remote.values()}
        for node in nodes:
            if await self._redis.exists(_key("node", node)):
                continue
            for room in self.chat.rooms.values():
                gone = [nick for nick, owner in room.remote.items() if owner == node]
                for nick in gone:
                    self.chat.relayed_presence(room, "leave", nick, None, node)
                    await self._redis.hdel(_key("members", room.name), f"{node}:{nick}")

    # -- the Relay --------------------------------------------------------------

    def publish(self, room: str, ts: float, nick: str, text: str, token: int) -> None:
        fields = {"k": "msg", "room": room, "ts": ts, "nick": nick, "text": text}
        payload = json.dumps(
            {**fields, "node": self.node, "tok": token}, ensure_ascii=False, separators=(",", ":")
        )
        self._queue(_Outgoing(room, payload, "msg", ts=ts, nick=nick, text=text, token=token))

    def publish_binary(self, room: str, data: bytes) -> None:
        payload = json.dumps({"k": "bin", "room": room, "data": data.hex(), "node": self.node})
        self._queue(_Outgoing(room, payload, "bin"))

    def presence(self, room: str, event: str, nick: str, old: str | None) -> None:
        fields = {"k": "presence", "room": room, "event": event, "nick": nick, "old": old}
        payload = json.dumps({**fields, "node": self.node}, ensure_ascii=False)
        self._queue(_Outgoing(room, payload, "presence", nick=nick, event=event, old=old))

    def _queue(self, item: _Outgoing) -> None:
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
            batch = list(self._outgoing)
            self._outgoing.clear()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for item in batch:
                        await self._command(pipe, item)
                    await pipe.execute()
            except (RedisError, OSError):
                # Whether Redis ran them is unknown; the link goes down and
                # what was waiting is delivered here (see _fail_outgoing).
                self._outgoing.extendleft(reversed(batch))
                raise

    async def _command(self, pipe: Any, item: _Outgoing) -> None:
        channel = _key("room", item.room)
        if item.kind == "msg":
            keys = [_key("id", item.room), _key("history", item.room)]
            # Queued on the pipeline, which loads the script into Redis if needed.
            await self._publish_script(
                keys=keys, args=[channel, self.history, item.payload], client=pipe
            )
        elif item.kind == "presence":
            members = _key("members", item.room)
            if item.event in ("leave", "nick"):
                pipe.hdel(members, f"{self.node}:{item.old if item.event == 'nick' else item.nick}")
            if item.event in ("join", "nick"):
                pipe.hset(members, f"{self.node}:{item.nick}", item.nick)
            pipe.publish(channel, item.payload)
        else:
            pipe.publish(channel, item.payload)

    def _fail_outgoing(self) -> None:
        """Redis is gone: deliver here what was waiting, as a single node would."""
        chat = self.chat
        while self._outgoing:
            item = self._outgoing.popleft()
            if item.kind != "msg":
                continue
            sender = chat.echoed(item.token)
            room = chat.rooms.get(item.room)
            if room is not None:
                chat.deliver(room, room.last_id + 1, item.ts, item.nick, item.text, sender)

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
                pipe.get(_key("id", name))
                pipe.xrevrange(_key("history", name), count=self.history)
                pipe.hgetall(_key("members", name))
                counter, entries, members = await pipe.execute()
        except (RedisError, OSError):
            self._loading.pop(name, None)
            self.chat.room_loaded(room)  # carry on with what this node has
            raise
        buffered = self._loading.pop(name, [])
        if self.chat.rooms.get(name) is not room:
            return
        last_id = int(counter or 0)
        stored = [json.loads(fields["m"]) for _, fields in reversed(entries)]
        room.remote = {}
        for field, nick in members.items():
            node = field.split(":", 1)[0]
            if node != self.node:
                room.remote[nick] = node
        if room.history.untouched:
            # A room new to this node: what Redis keeps is its history, and
            # its ids go on from Redis's counter.
            for message in stored:
                id, ts, nick, text = message["id"], message["ts"], message["nick"], message["text"]
                encoded = replies.encode_msg(name, id, ts, nick, text)
                room.history.append(id, ts, nick, text, encoded)
            room.history.last_id = max(last_id, stored[-1]["id"] if stored else 0)
            self.chat.room_loaded(room)
        else:
            # A reload (after an outage, or a gap): members are here and must
            # get what they missed live, after any waiting join is answered.
            self.chat.room_loaded(room)
            for message in stored:
                if message["id"] > room.last_id:
                    self.chat.deliver(
                        room, message["id"], message["ts"], message["nick"], message["text"]
                    )
            room.history.last_id = max(last_id, room.last_id)
        for message in buffered:
            self._apply(message)

    # -- what comes back from Redis -----------------------------------------------

    def _received(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            log.warning("ignored a malformed broker message")
            return
        name = message.get("room")
        buffer = self._loading.get(name)
        if buffer is not None:
            buffer.append(message)
        else:
            self._apply(message)

    def _apply(self, message: dict[str, Any]) -> None:
        chat = self.chat
        room = chat.rooms.get(message.get("room", ""))
        if room is None:
            return  # no local member has ever been there: nothing to keep
        kind = message.get("k")
        if kind == "msg":
            id = message["id"]
            if id <= room.last_id:
                return  # already delivered (a reload overlapped)
            own = chat.echoed(message["tok"]) if message["node"] == self.node else None
            if id > room.last_id + 1 and room.loaded:
                log.info("room %s: ids jumped from %d to %d", room.name, room.last_id, id)
            chat.deliver(room, id, message["ts"], message["nick"], message["text"], own)
        elif message["node"] == self.node:
            return  # our own presence and binary frames were delivered locally already
        elif kind == "presence":
            chat.relayed_presence(
                room, message["event"], message["nick"], message.get("old"), message["node"]
            )
        elif kind == "bin":
            chat.hub.broadcast(frames.message(bytes.fromhex(message["data"])), room.plain)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Any) -> None:
        try:
            await work
        except (RedisError, OSError) as exc:
            log.debug("broker call failed: %s", exc)
