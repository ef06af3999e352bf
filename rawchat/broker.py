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

A link is lost whatever ends it: Redis going away, a payload no node should have
sent (ignored with a log line, the link stays), a fault of rawchat's own in any of
the link's tasks, or a writer that cannot keep up (more than ``max_outgoing``
publications waiting). Each is logged, counted as an outage, shown in ``/healthz``,
and followed by a reconnect; what was waiting is delivered here, as a single node
would, so that an accepted message always reaches its room.

The words the nodes exchange, and what a node does with them, are in
rawchat/crossnode.py; nick registration, moderation and direct messages across
nodes are described in docs/broker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rawchat import crossnode as x
from rawchat import messages as m
from rawchat.crossnode import key
from rawchat.identity import nick_key
from rawchat.outbound import Outbound

if TYPE_CHECKING:
    from rawchat.chat import Chat

log = logging.getLogger("rawchat.broker")

#: Seconds a node's heartbeat lives without a refresh, and how often nodes refresh and sweep.
NODE_TTL = 6.0
SWEEP = 2.0
#: Guest numbers a node takes at a time.
GUEST_BLOCK = 10_000
#: Seconds a stop waits for the link's tasks to wind up.
STOP_TIMEOUT = 2.0


class Broker(Outbound):
    """The chat's Relay onto Redis: the link's life cycle, and what comes back on it."""

    def __init__(self, url: str, chat: Chat, history: int) -> None:
        # No silent retries: an outage must be noticed, reported and recovered from here.
        client: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0), decode_responses=True
        )
        super().__init__(client, chat, secrets.token_hex(4), max(history, 1))
        self.url = url
        self.outages = 0
        #: Set when the link is found broken outside its own tasks (see `_lose`).
        self._broken = asyncio.Event()
        self._why = ""
        self._runner: asyncio.Task[None] | None = None
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
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._leave(), STOP_TIMEOUT)
        await self._redis.aclose()

    async def _leave(self) -> None:
        """Free this node's nicks and heartbeat: others need not wait for them to expire."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for nick in list(self.chat.nicks):
                await self.scripts.release(keys=[key("nick", nick)], args=[self.node], client=pipe)
            pipe.delete(x.NODE_KEY + self.node)
            await pipe.execute()

    async def _run(self) -> None:
        """Subscribe, heartbeat and sweep; on any failure, go down and retry with backoff."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                self._broken.clear()
                await pubsub.psubscribe(x.CHANNELS)
                await pubsub.subscribe(x.NODE_CHANNEL + self.node)
                await self._resync()
                self.up = True
                self.disconnected.clear()
                self.connected.set()
                delay = 0.1
                log.info("broker connected: %s (node %s)", self.url, self.node)
                await self._serve(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever ends the link, it is lost
                self._went_down(exc)
            finally:
                closing = asyncio.ensure_future(pubsub.aclose())
                await asyncio.wait({closing}, timeout=STOP_TIMEOUT)
                if closing.done() and not closing.cancelled():
                    closing.exception()  # seen, whatever it was
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _serve(self, pubsub: Any) -> None:
        """Listening, writing and heartbeating live and die together: the first to
        fail (or `_lose`) takes the link down, and all start again."""
        loop = asyncio.get_running_loop()
        parts = [
            loop.create_task(self._listen(pubsub)),
            loop.create_task(self._write()),
            loop.create_task(self._heartbeat()),
            loop.create_task(self._broken.wait()),
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
        raise ConnectionError(self._why or "broker link ended")

    def _lose(self, why: str) -> None:
        """The link is broken, found outside its tasks: go down now, reconnect soon."""
        self._why = why
        self._broken.set()
        self._went_down(ConnectionError(why))

    def _went_down(self, exc: Exception) -> None:
        if not isinstance(exc, RedisError | OSError):  # a fault of our own: a bug
            log.error("broker link failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        if self.up:
            self.outages += 1
            log.warning("broker lost (%s): serving local clients only", exc)
        self.up = False
        self.connected.clear()
        self.disconnected.set()
        self._loading.clear()
        self._finish_loads()
        self._fail_outgoing()

    def _finish_loads(self) -> None:
        """Without Redis, rooms that were loading carry on with what this node has."""
        for room in list(self.chat.rooms.values()):
            if not room.loaded:
                self.chat.registry.loaded(room)

    async def _resync(self) -> None:
        """After (re)connecting: one epoch for all, counters past every id used, our
        members and nicks registered again, rooms reloaded.

        What is read from the chat is read between awaits, never across one: clients
        come and go while Redis answers.
        """
        r, chat = self._redis, self.chat
        await r.set(x.PREFIX + "epoch", chat.epoch, nx=True)
        epoch = await r.get(x.PREFIX + "epoch")
        if epoch is not None:
            chat.epoch = str(epoch)
        # Each node numbers its guests from its own block, so that guest-N is
        # unique across nodes (after GUEST_BLOCK guests a node would overlap the
        # next block; local uniqueness is still checked).
        end = await r.incrby(x.PREFIX + "guests", GUEST_BLOCK)
        chat.names.guests = itertools.count(int(end) - GUEST_BLOCK + 1)
        await self._beat()
        # Up from here: whatever changes after the snapshot below is queued for the
        # writer (which starts after it), so nobody who comes meanwhile is missed.
        self.up = True
        # Every node keeps the lobby loaded from the start: plain clients get no
        # history, so they must find it ready to deliver from their first moment.
        chat.registry.room(m.DEFAULT_ROOM)
        names = list(chat.rooms)
        async with r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hkeys(key("members", name))
            fields = await pipe.execute()
        rooms = [(chat.rooms[name], f) for name, f in zip(names, fields, strict=True)
                 if name in chat.rooms]  # fmt: skip
        nicks = [(k, "1" if s.seat.key else "0") for k, s in chat.nicks.items()]
        async with r.pipeline(transaction=False) as pipe:
            for room, members in rooms:
                if room.last_id:
                    counter, last = [key("id", room.name)], [room.last_id]
                    await self.scripts.raise_counter(keys=counter, args=last, client=pipe)
                # Our entries as they are now: whoever left during the outage goes.
                ours = [str(f) for f in members if str(f).startswith(self.node + ":")]
                if ours:
                    pipe.hdel(key("members", room.name), *ours)
                for member in room.members:
                    pipe.hset(key("members", room.name), f"{self.node}:{member.nick}", member.nick)
            for nick, verified in nicks:
                args = [self.node, x.NODE_KEY, verified]
                await self.scripts.claim(keys=[key("nick", nick)], args=args, client=pipe)
            results = await pipe.execute()
        claims = results[len(results) - len(nicks) :]
        taken = [nick for (nick, _), ok in zip(nicks, claims, strict=True) if not ok]
        if taken:
            # Two people took one nick on two nodes while they could not ask Redis.
            log.warning("nicks also held on another node after an outage: %s", taken[:20])
        for room, _ in rooms:
            if chat.rooms.get(room.name) is room:
                room.loaded = False
                self.load(room)

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message.get("type") in ("pmessage", "message"):
                self._received(message["data"])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(SWEEP)
            await self._beat()
            await self._sweep()

    async def _beat(self) -> None:
        await self._redis.set(x.NODE_KEY + self.node, "1", px=int(NODE_TTL * 1000))

    async def _sweep(self) -> None:
        """Drop the members (and free the nicks) of nodes whose heartbeat has expired."""
        nodes = list({node for room in self.chat.rooms.values() for node in room.remote.values()})
        if not nodes:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(x.NODE_KEY + node)
            alive = await pipe.execute()
        dead = {node for node, live in zip(nodes, alive, strict=True) if not live}
        if not dead:
            return
        gone = []
        for room in list(self.chat.rooms.values()):
            for nick, node in list(room.remote.items()):
                if node in dead:
                    self.arrivals.presence(room, "leave", nick, None, node)
                    gone.append((room.name, node, nick))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, node, nick in gone:
                pipe.hdel(key("members", name), f"{node}:{nick}")
                nick_at = [key("nick", nick_key(nick))]
                await self.scripts.release(keys=nick_at, args=[node], client=pipe)
            await pipe.execute()

    # -- what comes back from Redis -----------------------------------------------

    def _received(self, data: str) -> None:
        message = x.parse(data)
        if message is None:
            return
        buffer = self._loading.get(message["room"])
        if buffer is not None:
            buffer.append(message)
        else:
            self.arrivals.apply(message)
