"""Where a town-hall stage's publishers are: the nodes that are origins of a stage, with their relay addresses.

A node holding publishers of a stage announces itself once a second (``announce``); a node with stage members
looks the origins up (``origins``) and takes one relay from each (server/media/stage_relay.py). An announcement
lapses :data:`ANNOUNCE_TTL` seconds after it was last made, in Redis's clock: a node that dies drops out within
that time, and its relays' TCP connections tell the edges at once anyway. The relay key is made once per
installation (32 random bytes, ``SET NX``) and shared through Redis by every node.

Keys, under the configured prefix:

``stage:origins:<room>``  sorted set ``<node> <host:port>`` -> last announcement (ms, Redis time)
``stage:relay-key``       the installation's relay key (hex)
"""

from __future__ import annotations

import secrets
from typing import Any

ANNOUNCE_TTL = 5.0
"""Seconds an origin's announcement holds without being renewed."""

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
# KEYS: origins; ARGV: member, ttl ms
_ANNOUNCE = _NOW_MS + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return 1"""
# KEYS: origins; ARGV: ttl ms -> members announced within the ttl
_ORIGINS = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZRANGE', KEYS[1], 0, -1)"""


class StageDirectory:
    def __init__(self, url: str, prefix: str, *, ttl: float = ANNOUNCE_TTL) -> None:
        from ..store.redis import redis_client

        self._redis: Any = redis_client(url)
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self._announce = self._redis.register_script(_ANNOUNCE)
        self._origins = self._redis.register_script(_ORIGINS)

    def _key(self, room_id: str) -> str:
        return f"{self.prefix}stage:origins:{room_id}"

    async def relay_key(self) -> bytes:
        """The installation's relay key, made by the first node that asks."""
        key = f"{self.prefix}stage:relay-key"
        await self._redis.set(key, secrets.token_hex(32), nx=True)
        return bytes.fromhex(str(await self._redis.get(key)))

    async def announce(self, room_id: str, node: str, address: str) -> None:
        await self._announce(keys=[self._key(room_id)], args=[f"{node} {address}", self.ttl_ms])

    async def withdraw(self, room_id: str, node: str, address: str) -> None:
        await self._redis.zrem(self._key(room_id), f"{node} {address}")

    async def origins(self, room_id: str) -> dict[str, str]:
        """Node -> relay address of every node announced as an origin of the stage."""
        members = await self._origins(keys=[self._key(room_id)], args=[self.ttl_ms])
        found: dict[str, str] = {}
        for member in members:
            node, _, address = str(member).partition(" ")
            found[node] = address
        return found

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)
