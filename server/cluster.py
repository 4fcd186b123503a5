"""Several server processes ("nodes") on one Redis: who is alive, what each node holds, what must be shared.

Every process has a node id and writes a heartbeat to Redis every ``HEARTBEAT_SECONDS`` (a sorted set node ->
last heartbeat, in Redis's own clock, so the nodes' clocks need not agree). A node whose heartbeat is older
than ``DEAD_AFTER_SECONDS`` is dead: the first surviving node to notice removes it from the set in one Lua
script (so exactly one survivor claims each dead node), drops the dead node's connection counts and tells
its listeners (``on_node_dead``; ``on_connections_dropped`` for every ticket or clerk left with no
connection at all, whose citizen's grace period then starts, or who goes offline).

Connections are counted per (kind, id, node): ``conn:<kind>:<id>`` is a hash node -> count, so a page
closing on node A does not mark a citizen gone while node B holds their other page, and a dead node's
counts can be dropped. Invitations of colleagues and interpreters to a consultation live here as well, so
that an invitation made on node A can be accepted by a dashboard on node B.

With the embedded memory store there is one node: :class:`MemoryCluster` keeps the same interface in
memory (nobody ever dies). Keys, all under the configured prefix:

``nodes``               zset node -> last heartbeat (ms, Redis time)
``conn:<kind>:<id>``    hash node -> connections (kind ``ticket`` or ``clerk``)
``node:<node>:conn``    set of ``<kind>:<id>`` the node counts connections of
``node:<node>:closed``  hash ``<kind>:<id>`` -> when its last connection on the node closed (epoch seconds), for
                        those the node still counts while they may come back (``note_closed``)
``inv:<ticket>``        set of usernames invited to the ticket's consultation
``claim:<key>``         once-only claims (``Cluster.claim``)
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .tasks import stopping

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("sprechstunde.cluster")

HEARTBEAT_SECONDS = 1.0
"""How often a node writes its heartbeat (and looks for dead nodes)."""
DEAD_AFTER_SECONDS = 5.0
"""A node whose last heartbeat is older than this is dead. After an outage of Redis (or a stall of this
node's own loop) a node first heartbeats this long again before it declares any other node dead."""
DROP_CHUNK = 256
"""Counts of a stopped or dead node dropped (and their listeners told) side by side."""
INVITATION_TTL_SECONDS = 12 * 3600.0
"""An invitation's set lapses this long after the last invitation to the ticket (a consultation's bound)."""

NodeListener = Callable[[str], Awaitable[None]]
DroppedListener = Callable[[str, str, float | None], Awaitable[None]]
RestoredListener = Callable[[str, str], Awaitable[None]]


def new_node_id() -> str:
    """Unique per process start (host, pid, random), readable in logs."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster(abc.ABC):
    """The node registry, connection counts across nodes, and invitations."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or new_node_id()
        self._dead_listeners: list[NodeListener] = []
        self._dropped_listeners: list[DroppedListener] = []
        self._restored_listeners: list[RestoredListener] = []
        self._local: Counter[tuple[str, str]] = Counter()
        """This node's connections per (kind, id)."""

    # -- listeners --
    def on_node_dead(self, listener: NodeListener) -> None:
        """``listener(node_id)`` runs on exactly one surviving node per dead node."""
        self._dead_listeners.append(listener)

    settles_on_stop = False
    """Whether ``stop`` drops the counts this node still holds and tells the listeners (several nodes): a
    stopping node then leaves its pages' bookkeeping to it, all at once, instead of page by page."""
    notes_closes = False
    """Whether ``note_closed`` keeps anything (several nodes: for the survivor of this node's death)."""

    def on_connections_dropped(self, listener: DroppedListener) -> None:
        """``listener(kind, id, closed_at)``: a dead (or stopping) node's connections were dropped and none is
        left; ``closed_at`` is when the last of them had closed if the node noted it (``note_closed``), else
        None (it was open when the node died)."""
        self._dropped_listeners.append(listener)

    def on_connections_restored(self, listener: RestoredListener) -> None:
        """``listener(kind, id)``: this node was taken for dead (a stall, a Redis outage) and came back: its
        counts are written again, and this is called for each (kind, id) it holds connections of."""
        self._restored_listeners.append(listener)

    async def _tell(self, listeners: list[Any], *args: Any) -> None:
        for listener in listeners:
            try:
                await listener(*args)
            except Exception:  # noqa: BLE001 - one listener's failure must not stop the others
                log.exception("cluster listener failed")

    # -- lifecycle --
    async def start(self) -> None:  # noqa: B027 - one process: nothing to do
        """Register this node (first heartbeat)."""

    async def stop(self) -> None:  # noqa: B027 - one process: nothing to do
        """Leave the registry on a clean stop; counts still held are dropped (their listeners told)."""

    async def run(self) -> None:
        """Heartbeat and look for dead nodes until cancelled."""
        await asyncio.Event().wait()

    async def close(self) -> None:  # noqa: B027 - one process: nothing to do
        """Release the connection to the shared state."""

    # -- registry --
    @abc.abstractmethod
    async def live_nodes(self) -> dict[str, float]:
        """Node id -> last heartbeat (epoch seconds) of the nodes taken for alive."""

    async def is_live(self, node_id: str) -> bool:
        return node_id in await self.live_nodes()

    @abc.abstractmethod
    async def claim(self, key: str, ttl: float) -> bool:
        """True for exactly one caller across nodes within ``ttl`` seconds."""

    # -- connections --
    @abc.abstractmethod
    async def connected(self, kind: str, ident: str) -> int:
        """One more connection of ``ident`` on this node; the total across nodes afterwards."""

    @abc.abstractmethod
    async def disconnected(self, kind: str, ident: str) -> int:
        """One connection fewer on this node; the total across nodes afterwards."""

    @abc.abstractmethod
    async def connections(self, kind: str, ident: str) -> int:
        """The total across nodes."""

    async def note_closed(self, kind: str, closed: dict[str, float], reopened: list[str]) -> None:  # noqa: B027
        """Connections this node still counts although they closed (at the time given): they may come back in a
        moment, and are settled later (server/signaling/hub.py, pages away). If the node dies meanwhile, the
        survivor that drops its counts tells the listeners when they closed. ``reopened``: no longer so (back,
        or settled). One node (memory): nothing to note, it never dies with counts held."""

    def local_connections(self, kind: str, ident: str) -> int:
        return self._local[(kind, ident)]

    def _count(self, kind: str, ident: str, delta: int) -> None:
        key = (kind, ident)
        self._local[key] += delta
        if self._local[key] <= 0:
            del self._local[key]

    # -- invitations --
    @abc.abstractmethod
    async def invite(self, ticket_id: str, username: str) -> None: ...

    @abc.abstractmethod
    async def is_invited(self, ticket_id: str, username: str) -> bool: ...

    @abc.abstractmethod
    async def clear_invitations(self, ticket_id: str) -> None: ...


class MemoryCluster(Cluster):
    """One process: it is the only node, alive while it runs."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__(node_id)
        self._claims: dict[str, float] = {}
        self._invited: dict[str, set[str]] = {}
        self._started = time.time()

    async def live_nodes(self) -> dict[str, float]:
        return {self.node_id: time.time()}

    async def claim(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if self._claims.get(key, 0.0) > now:
            return False
        self._claims[key] = now + ttl
        if len(self._claims) > 1000:
            self._claims = {k: v for k, v in self._claims.items() if v > now}
        return True

    async def connected(self, kind: str, ident: str) -> int:
        self._count(kind, ident, 1)
        return self._local[(kind, ident)]

    async def disconnected(self, kind: str, ident: str) -> int:
        self._count(kind, ident, -1)
        return self._local[(kind, ident)]

    async def connections(self, kind: str, ident: str) -> int:
        return self._local[(kind, ident)]

    async def invite(self, ticket_id: str, username: str) -> None:
        self._invited.setdefault(ticket_id, set()).add(username)

    async def is_invited(self, ticket_id: str, username: str) -> bool:
        return username in self._invited.get(ticket_id, ())

    async def clear_invitations(self, ticket_id: str) -> None:
        self._invited.pop(ticket_id, None)


_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
_SUM = "local s = 0 for _, v in ipairs(redis.call('HVALS', KEYS[1])) do s = s + tonumber(v) end "

# KEYS: nodes; ARGV: node -> {added (1: it was not registered), now ms}
_HEARTBEAT = _NOW_MS + "local added = redis.call('ZADD', KEYS[1], now, ARGV[1]) return {added, now}"
# KEYS: nodes; ARGV: dead_after ms, own node -> the nodes removed (claimed) by this call
_REAP = _NOW_MS + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local claimed = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], node)
    claimed[#claimed + 1] = node
  end
end
return claimed"""
# KEYS: conn hash, node set; ARGV: node, member, delta -> total
_COUNT = """
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[3]))
if v <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
else
  redis.call('SADD', KEYS[2], ARGV[2])
end
""" + _SUM + "if s <= 0 then redis.call('DEL', KEYS[1]) end return s"
# KEYS: conn hash; ARGV: node, again ("1": the total even when the count was dropped already) -> total left
# after dropping the node's count (-1: it had none, unless again)
_DROP = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 and ARGV[2] ~= '1' then return -1 end
""" + _SUM + "if s <= 0 then redis.call('DEL', KEYS[1]) end return s"
# KEYS: conn hash, node set; ARGV: node, member, count (written again after this node was taken for dead)
_RESTORE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
return 1"""


class RedisCluster(Cluster):
    settles_on_stop = True
    notes_closes = True

    def __init__(self, url: str, prefix: str = "sps:", node_id: str | None = None, *,
                 heartbeat: float = HEARTBEAT_SECONDS, dead_after: float = DEAD_AFTER_SECONDS) -> None:
        super().__init__(node_id)
        from .store.resp import RespClient

        self._resp = RespClient(url)
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self._nodes = f"{prefix}nodes"
        self._mine = self._node_set(self.node_id)
        self._registered = False
        self._stopped = False
        self._healthy_since: float | None = None
        """When this node's heartbeats started succeeding without a break (monotonic)."""

    def _conn(self, kind: str, ident: str) -> str:
        return f"{self.prefix}conn:{kind}:{ident}"

    def _node_set(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:conn"

    def _node_closed(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:closed"

    # -- lifecycle --
    async def start(self) -> None:
        await self.beat()

    async def beat(self) -> None:
        """One heartbeat. If this node had been taken for dead meanwhile (its counts dropped by another),
        its counts are written again and the restored listeners told."""
        added, _ = await self._resp.script(_HEARTBEAT, [self._nodes], [self.node_id])
        if added and self._registered:
            log.warning("node %s had been taken for dead: its connections are counted again", self.node_id)
            await self.resync()
            for kind, ident in list(self._local):
                await self._tell(self._restored_listeners, kind, ident)
        elif self._registered and self._healthy_since is None:
            await self.resync()  # after a Redis outage: changes that failed to be counted are set right
        self._registered = True

    async def resync(self) -> None:
        """Write this node's counts again from its own (the truth): after it was taken for dead, or after
        changes failed to reach Redis. Ids it no longer holds are dropped (listeners told when none is left)."""
        for member in await self._resp.call("SMEMBERS", self._mine):
            kind, _, ident = member.partition(":")
            if self._local.get((kind, ident), 0) <= 0:  # looked up now: a page may have come meanwhile
                left = await self._resp.script(_DROP, [self._conn(kind, ident)], [self.node_id, "0"])
                await self._resp.call("SREM", self._mine, member)
                if left == 0:
                    await self._tell(self._dropped_listeners, kind, ident, None)
        for kind, ident in list(self._local):
            count = self._local.get((kind, ident), 0)  # now, not when the loop began
            if count > 0:
                await self._resp.script(_RESTORE, [self._conn(kind, ident), self._mine],
                                        [self.node_id, f"{kind}:{ident}", count])

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self.beat()
                now = time.monotonic()
                if self._healthy_since is None:
                    self._healthy_since = now
                if now - self._healthy_since >= self.dead_after:
                    await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis down: try again at the next beat
                if stopping():  # a cancellation redis-py turned into an error (server/tasks.py)
                    raise asyncio.CancelledError from None
                if self._healthy_since is not None:
                    log.warning("heartbeat failed: %s", type(e).__name__)
                self._healthy_since = None
            await asyncio.sleep(self.heartbeat)

    async def reap(self) -> list[str]:
        """Claim the nodes whose heartbeat stopped, drop their counts and tell the listeners."""
        claimed = await self._resp.script(_REAP, [self._nodes], [int(self.dead_after * 1000), self.node_id])
        for node in claimed:
            log.warning("node %s stopped heartbeating: taken for dead", node)
            await self._drop_node(node)
            await self._tell(self._dead_listeners, node)
        return list(claimed)

    async def _drop_node(self, node: str) -> None:
        """Drop every count the node held and tell the listeners about what is left with none: DROP_CHUNK
        at a time side by side (one after another, a node that held 10,000 pages took most of the stop's
        deadline, or a survivor's seconds, for round trips). The node's set is the list of what is still to
        do: a member leaves it once its listeners were told, so a run cut off halfway (a stop's deadline)
        is finished by the next (the survivor that reaps the node); one cut off between telling and leaving
        tells that member again (the listeners do nothing the second time)."""
        node_set = self._node_set(node)
        flat = await self._resp.call("HGETALL", self._node_closed(node))
        closed = {member: float(at) for member, at in zip(flat[::2], flat[1::2], strict=True)}

        async def drop(member: str) -> None:
            kind, _, ident = member.partition(":")
            if await self._resp.script(_DROP, [self._conn(kind, ident)], [node, "1"]) == 0:
                await self._tell(self._dropped_listeners, kind, ident, closed.get(member))
            await self._resp.call("SREM", node_set, member)

        members = list(await self._resp.call("SMEMBERS", node_set))
        for start in range(0, len(members), DROP_CHUNK):
            await asyncio.gather(*(drop(m) for m in members[start:start + DROP_CHUNK]))
        await self._resp.calls([("DEL", node_set), ("DEL", self._node_closed(node))])

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True  # no heartbeat after this: it would register the node again
        try:
            # Counts first, the registry last: a stop cut off by its deadline leaves the node registered with
            # an old heartbeat, so another node (or this one, restarted) reaps it and tells the rest.
            await self._drop_node(self.node_id)
            await self._resp.call("ZREM", self._nodes, self.node_id)
        except Exception as e:  # noqa: BLE001 - Redis down at the stop: the others reap this node later
            log.warning("leaving the node registry failed: %s", type(e).__name__)
        self._local.clear()

    async def close(self) -> None:
        await self._resp.aclose()

    # -- registry --
    async def live_nodes(self) -> dict[str, float]:
        now_s, now_us = await self._resp.call("TIME")
        cutoff = int(now_s) * 1000 + int(now_us) // 1000 - int(self.dead_after * 1000)
        flat = await self._resp.call("ZRANGEBYSCORE", self._nodes, cutoff, "+inf", "WITHSCORES")
        return {node: float(score) / 1000 for node, score in zip(flat[::2], flat[1::2], strict=True)}

    async def claim(self, key: str, ttl: float) -> bool:
        return bool(await self._resp.call("SET", f"{self.prefix}claim:{key}", self.node_id, "NX",
                                          "PX", max(1, int(ttl * 1000))))

    # -- connections --
    async def _change(self, kind: str, ident: str, delta: int) -> int:
        self._count(kind, ident, delta)
        try:
            return int(await self._resp.script(_COUNT, [self._conn(kind, ident), self._mine],
                                               [self.node_id, f"{kind}:{ident}", delta]))
        except BaseException:
            if delta > 0:
                self._count(kind, ident, -delta)  # a refused connect: not counted anywhere
            else:
                self._healthy_since = None  # a lost disconnect: the next good heartbeat resyncs
            raise

    async def connected(self, kind: str, ident: str) -> int:
        return await self._change(kind, ident, 1)

    async def note_closed(self, kind: str, closed: dict[str, float], reopened: list[str]) -> None:
        key = self._node_closed(self.node_id)
        commands: list[tuple[Any, ...]] = []
        if reopened:
            commands.append(("HDEL", key, *(f"{kind}:{i}" for i in reopened)))
        if closed:
            commands.append(("HSET", key, *(w for i, at in closed.items() for w in (f"{kind}:{i}", repr(at)))))
        if commands:
            await self._resp.transaction(commands)

    async def disconnected(self, kind: str, ident: str) -> int:
        if self._local[(kind, ident)] <= 0:  # never counted here (its connect failed): nothing to take back
            return await self.connections(kind, ident)
        return await self._change(kind, ident, -1)

    async def connections(self, kind: str, ident: str) -> int:
        return sum(int(v) for v in await self._resp.call("HVALS", self._conn(kind, ident)))

    # -- invitations --
    async def invite(self, ticket_id: str, username: str) -> None:
        key = f"{self.prefix}inv:{ticket_id}"
        await self._resp.transaction([("SADD", key, username), ("EXPIRE", key, int(INVITATION_TTL_SECONDS))])

    async def is_invited(self, ticket_id: str, username: str) -> bool:
        return bool(await self._resp.call("SISMEMBER", f"{self.prefix}inv:{ticket_id}", username))

    async def clear_invitations(self, ticket_id: str) -> None:
        await self._resp.call("DEL", f"{self.prefix}inv:{ticket_id}")


def make_cluster(settings: Settings) -> Cluster:
    if settings.redis_url:
        return RedisCluster(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryCluster()


CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster")
