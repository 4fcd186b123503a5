"""Which node's SFU holds a ticket's media: the room-to-node registry (LiveKit's design).

A ticket's media rooms (``w:<ticket>``, ``c:<ticket>``) live together on one node, because "call next" moves
a pre-warmed connection from one into the other without renegotiating. The first node to connect someone
for the ticket claims it (atomically: two nodes offering at once agree on one owner); every other node looks
the owner up and relays its sockets' media signaling there (``server/signaling/relay.py``). A node that dies
loses its claims: the cluster's dead-node listener drops them (``drop_node``), and a node that finds the
owner gone (nobody listens on its relay channel) takes the claim over (``claim(..., replacing=owner)``), so
that a page offering again re-creates the room on a surviving node.

With the embedded memory store there is one node and :class:`LocalRoomRegistry` answers without I/O (every
ticket is here). Redis keys, under the configured prefix:

``media:room:<ticket>``   the owning node id (expires ``ROOM_TTL_SECONDS`` after the last claim, a bound)
``media:node:<node>``     set of the tickets that node owns (so that its death drops them in one go)
"""

from __future__ import annotations

import abc
from typing import Any

ROOM_TTL_SECONDS = 12 * 3600
"""A claim lapses this long after it was made or confirmed, should nobody release it (a consultation's bound)."""

# KEYS: room key, own node set, replaced owner's node set; ARGV: node, ttl s, ticket, replaced owner ('' none)
# -> the owner after the call
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and owner ~= ARGV[4] then return owner end
if owner and owner ~= ARGV[1] then redis.call('SREM', KEYS[3], ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('SADD', KEYS[2], ARGV[3])
return ARGV[1]"""
# KEYS: room key, node set; ARGV: node, ticket -> 1 if released
_RELEASE = """
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0"""
# KEYS: node set; ARGV: node, room key prefix -> tickets whose claim was dropped
_DROP_NODE = """
local dropped = {}
for _, ticket in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. ticket
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    dropped[#dropped + 1] = ticket
  end
end
redis.call('DEL', KEYS[1])
return dropped"""


class RoomRegistry(abc.ABC):
    """Ticket -> the node whose SFU holds its media rooms."""

    local: bool = False
    """True when every room is on this node (one process): callers skip the registry and the relay."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    @abc.abstractmethod
    async def claim(self, ticket_id: str, replacing: str | None = None) -> str:
        """The ticket's owner, claimed for this node if nobody holds it (or ``replacing`` does: a node found
        dead). Atomic across nodes."""

    @abc.abstractmethod
    async def owner(self, ticket_id: str) -> str | None:
        """The node holding the ticket's media, or None."""

    @abc.abstractmethod
    async def release(self, ticket_id: str) -> bool:
        """Drop this node's claim (the ticket's media ended here); False if another node holds it."""

    @abc.abstractmethod
    async def drop_node(self, node_id: str) -> list[str]:
        """Drop every claim of ``node_id`` (it died or stopped); the tickets whose claim was dropped."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class LocalRoomRegistry(RoomRegistry):
    """One process: every room is here; no I/O."""

    local = True

    async def claim(self, ticket_id: str, replacing: str | None = None) -> str:
        return self.node_id

    async def owner(self, ticket_id: str) -> str | None:
        return self.node_id

    async def release(self, ticket_id: str) -> bool:
        return True

    async def drop_node(self, node_id: str) -> list[str]:
        return []

    async def close(self) -> None:
        pass


class RedisRoomRegistry(RoomRegistry):
    def __init__(self, url: str, prefix: str, node_id: str, *, ttl: int = ROOM_TTL_SECONDS) -> None:
        super().__init__(node_id)

        from ..store.redis import redis_client

        self._redis: Any = redis_client(url)
        self.prefix = prefix
        self.ttl = ttl
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._drop = self._redis.register_script(_DROP_NODE)

    def _room(self, ticket_id: str) -> str:
        return f"{self.prefix}media:room:{ticket_id}"

    def _node(self, node_id: str) -> str:
        return f"{self.prefix}media:node:{node_id}"

    async def claim(self, ticket_id: str, replacing: str | None = None) -> str:
        keys = [self._room(ticket_id), self._node(self.node_id), self._node(replacing or self.node_id)]
        return str(await self._claim(keys=keys, args=[self.node_id, self.ttl, ticket_id, replacing or ""]))

    async def owner(self, ticket_id: str) -> str | None:
        owner = await self._redis.get(self._room(ticket_id))
        return str(owner) if owner is not None else None

    async def release(self, ticket_id: str) -> bool:
        keys = [self._room(ticket_id), self._node(self.node_id)]
        return bool(await self._release(keys=keys, args=[self.node_id, ticket_id]))

    async def drop_node(self, node_id: str) -> list[str]:
        dropped = await self._drop(keys=[self._node(node_id)], args=[node_id, f"{self.prefix}media:room:"])
        return [str(t) for t in dropped]

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def make_room_registry(redis_url: str | None, prefix: str, node_id: str) -> RoomRegistry:
    if redis_url:
        return RedisRoomRegistry(redis_url, prefix, node_id)
    return LocalRoomRegistry(node_id)
