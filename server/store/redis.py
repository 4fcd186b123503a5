"""The shared store: live state in Redis, so several server processes (and restarts) see one queue.

Transactions are optimistic: :class:`_RedisTx` reads plainly and remembers what it saw (a ticket's JSON,
a queue's version), the function decides with the pure core, and one Lua script (``_COMMIT``) checks that
all of it is still so and writes the tickets together with the index maintenance. If another clerk or
node changed something meanwhile, the script writes nothing and the function runs again on fresh data;
after too many lost races the caller gets ``Conflict``. No command reads a whole queue: its head
(``ZRANGE 0 k-1``), its length or a rank, each O(log n); a write touches an index only when the ticket's
place in it changes. Round trips: a page connecting 4, going away 2, a check-in 3, "call next" 3.

Keys, all under the configured prefix:

``t:{id}``        ticket JSON                     ``q:{dept}``     zset of waiting ids, scored by seq
``qv:{dept}``     version of ``q:{dept}``         (raised by every commit that adds to or removes from it)
``a:{dept}``      set of called/in-consultation   ``tok:{hash}``   token hash -> ticket id
``disc``          zset id -> disconnected_at      ``seq``          arrival counter
``clerk:{user}``  presence JSON, with a TTL       ``pres:{dept}``  zset user -> presence expiry
``svc:{dept}``    list of recent durations        ``sess:{id}``    session JSON, with a TTL
``staff``         hash username -> account JSON   ``rl:{key}``     fixed-window counter

Finished tickets keep ``t:{id}`` and ``tok:{hash}`` for ``TERMINAL_RETENTION_SECONDS`` (Redis expires
them; no sweeper needed) and leave every index at once. Needs Redis 7 or later (``PEXPIRE ... NX``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError

from ..queue.errors import Conflict
from ..queue.estimate import RECENT_SERVICES
from ..queue.model import Presence, Ticket, TicketState
from .base import TERMINAL_RETENTION_SECONDS, StaffAccount, Store, Tx
from .resp import RespClient

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
"""Connections to Redis per store (per server process); more commands at once wait for one."""
POOL_TIMEOUT = 30.0
"""Seconds a command waits for a free connection before it fails, while Redis answers (a burst)."""
DOWN_POOL_TIMEOUT = 0.25
"""Seconds a command waits for a free connection while Redis does not answer (see ``connection_pool``)."""
SOCKET_TIMEOUT = 1.0
"""Seconds a command (or the connection handshake) waits for Redis's answer before it fails: a hanging
Redis fails a request well within 2 s instead of holding it (and a pool connection) for ever."""
CONNECT_TIMEOUT = 1.0
"""Seconds to open a TCP connection to Redis (a refusing Redis fails at once; a full backlog waits this)."""
MAX_ATTEMPTS = 50
"""Runs of a transaction function before giving up with ``Conflict``."""
BACKOFF_SECONDS = 0.002
"""Upper bound of the random pause before a rerun, times the attempt number (capped)."""


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds; Redis refuses zero."""
    return max(1, int(seconds * 1000))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seq = prefix + "seq"
        self.disc = prefix + "disc"
        self.staff = prefix + "staff"

    def ticket(self, ticket_id: str) -> str:
        return f"{self.prefix}t:{ticket_id}"

    def queue(self, department: str) -> str:
        return f"{self.prefix}q:{department}"

    def queue_version(self, department: str) -> str:
        return f"{self.prefix}qv:{department}"

    def active(self, department: str) -> str:
        return f"{self.prefix}a:{department}"

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}tok:{token_hash}"

    def clerk(self, username: str) -> str:
        return f"{self.prefix}clerk:{username}"

    def presence(self, department: str) -> str:
        return f"{self.prefix}pres:{department}"

    def services(self, department: str) -> str:
        return f"{self.prefix}svc:{department}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}sess:{session_id}"

    def hits(self, key: str) -> str:
        return f"{self.prefix}rl:{key}"


_TICKET_BY_TOKEN = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
"""
"""A ticket by its token hash in one round trip (a reconnect storm asks it once per page). The ticket's key
is built from the prefix in ARGV: fine on a single Redis (not a cluster), as everywhere in this store."""


_QUEUE_HEAD = """
local version = redis.call('GET', KEYS[1])
local flat = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local raws = {}
for i = 1, #flat, 2 do raws[#raws + 1] = redis.call('GET', ARGV[2] .. flat[i]) or '' end
return {version or false, flat, raws}
"""
"""A queue's version, its first ARGV[1] entries and their tickets (``''`` for a missing one), atomically."""


_SESSION_AND_ACCOUNT = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {false, false} end
local ok, data = pcall(cjson.decode, raw)
if not ok or type(data) ~= 'table' or type(data.username) ~= 'string' then return {raw, false} end
return {raw, redis.call('HGET', KEYS[2], data.username)}
"""
"""A session and its account in one round trip (every staff request and socket event reads both)."""


_COMMIT = """
local checks = tonumber(ARGV[1])
for i = 1, checks do
  local want = ARGV[1 + i]
  local have = redis.call('GET', KEYS[i])
  if have then
    if want ~= '=' .. have then return 0 end
  elseif want ~= '-' then
    return 0
  end
end
local i = checks + 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""
"""Compare and commit, atomically: KEYS[i] must still hold what the attempt read (ARGV[1 + i]: ``=`` and the
value, or ``-`` for a key that did not exist), else nothing is written and the answer is 0; then the
commands follow in ARGV, each as its length and its words. The keys the commands write are built in Python
from the prefix: fine on a single Redis (not a cluster), as everywhere in this store."""


_WAITING_SEQS = """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local seqs = {}
for i = 2, #entries, 2 do seqs[#seqs + 1] = string.format('%d', entries[i]) end
return table.concat(seqs, ',')
"""
"""A queue's seqs as one string ``1,2,5``: parsing 500 id/score pairs in redis-py took about 14 ms of CPU."""


def _pairs(flat: list[str]) -> list[tuple[int, str]]:
    """``ZRANGE ... WITHSCORES`` as (seq, id) pairs (RESP2 gives member, score, member, score, ...)."""
    return [(int(float(score)), member) for member, score in zip(flat[::2], flat[1::2], strict=True)]


class _Ops:
    """Commands buffered for the commit script, written like a pipeline's."""

    def __init__(self) -> None:
        self.args: list[str | int | float] = []

    def _add(self, *words: str | int | float) -> None:
        self.args.append(len(words))
        self.args.extend(words)

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        self._add(*(("SET", key, value) if ex is None else ("SET", key, value, "EX", ex)))

    def delete(self, key: str) -> None:
        self._add("DEL", key)

    def incr(self, key: str) -> None:
        self._add("INCR", key)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        for member, score in mapping.items():
            self._add("ZADD", key, repr(float(score)), member)

    def zrem(self, key: str, member: str) -> None:
        self._add("ZREM", key, member)

    def sadd(self, key: str, member: str) -> None:
        self._add("SADD", key, member)

    def srem(self, key: str, member: str) -> None:
        self._add("SREM", key, member)


class _RedisTx(Tx):
    """One attempt: reads are plain (no WATCH, no connection held), each remembering what it saw; the commit
    script writes only if all of it is still so. A queue is watched through its version key (``qv:{dept}``,
    raised by every commit that changes the queue), read with the queue in one MULTI."""

    def __init__(self, keys: _Keys, resp: RespClient) -> None:
        self._keys = keys
        self._resp = resp
        self.read: dict[str, Ticket | None] = {}
        """Tickets as stored when this attempt read them (None: did not exist)."""
        self.writes: dict[str, Ticket] = {}
        self.counters: dict[str, tuple[int, float]] = {}
        self.seen: dict[str, str] = {}
        """Key -> what the commit script must still find there (``=value`` or ``-``)."""

    def _saw(self, key: str, raw: str | None) -> None:
        self.seen.setdefault(key, "-" if raw is None else "=" + raw)

    def _saw_again(self, key: str, raw: str | None) -> None:
        """As ``_saw``, for a key this attempt may read twice: two reads, two states, run it again."""
        if key in self.seen and self.seen[key] != ("-" if raw is None else "=" + raw):
            raise WatchError(f"{key} changed within the attempt")
        self._saw(key, raw)

    async def _queue(self, department: str, read: Callable[[str], tuple[Any, ...]]) -> Any:
        key, version = self._keys.queue(department), self._keys.queue_version(department)
        raw_version, result = await self._resp.transaction([("GET", version), read(key)])
        self._saw_again(version, raw_version)
        return result

    async def waiting(self, department: str) -> list[tuple[int, str]]:
        return await self.waiting_head(department, -1)

    async def waiting_head(self, department: str, k: int) -> list[tuple[int, str]]:
        if k == 0:
            return []
        if k < 0:
            return _pairs(await self._queue(department, lambda key: ("ZRANGE", key, 0, -1, "WITHSCORES")))
        # One script: the queue's version, its head and the head's tickets, as of one moment ("call next" then
        # needs no second round trip for the ticket it picks); the tickets are checked at the commit.
        version_key = self._keys.queue_version(department)
        raw_version, flat, raws = await self._resp.script(
            _QUEUE_HEAD, [version_key, self._keys.queue(department)], [k, self._keys.ticket("")])
        self._saw_again(version_key, raw_version)
        head = _pairs(flat)
        for (_, ticket_id), raw in zip(head, raws, strict=True):
            if ticket_id not in self.read:
                self._saw(self._keys.ticket(ticket_id), raw or None)
                self.read[ticket_id] = Ticket.from_dict(json.loads(raw)) if raw else None
        return head

    async def waiting_count(self, department: str) -> int:
        return int(await self._queue(department, lambda key: ("ZCARD", key)))

    async def ticket(self, ticket_id: str) -> Ticket | None:
        if ticket_id in self.writes:
            return self.writes[ticket_id]
        return await self.stored(ticket_id)

    async def stored(self, ticket_id: str) -> Ticket | None:
        """The ticket as stored, checked at the commit from now on (read once per attempt)."""
        await self.load([ticket_id])
        return self.read[ticket_id]

    async def load(self, ticket_ids: list[str]) -> None:
        """Read the tickets not read yet in this attempt: one MGET."""
        missing = [i for i in dict.fromkeys(ticket_ids) if i not in self.read]
        if not missing:
            return
        keys = [self._keys.ticket(i) for i in missing]
        raws = cast("list[str | None]", await self._resp.call("MGET", *keys))
        for ticket_id, key, raw in zip(missing, keys, raws, strict=True):
            self._saw(key, raw)
            self.read[ticket_id] = Ticket.from_dict(json.loads(raw)) if raw is not None else None

    def put(self, ticket: Ticket) -> None:
        self.writes[ticket.id] = ticket

    async def counter(self, key: str) -> int:
        if key in self.counters:
            return self.counters[key][0]
        rkey = self._keys.hits(key)
        raw = cast("str | None", await self._resp.call("GET", rkey))
        self._saw_again(rkey, raw)
        return int(raw) if raw is not None else 0

    def set_counter(self, key: str, value: int, ttl: float) -> None:
        self.counters[key] = (value, ttl)


_waiting_since: ContextVar[float] = ContextVar("redis_pool_waiting_since", default=0.0)
"""When the current task asked the pool for a connection (read by ``_FailFastPool.ensure_connection``)."""


class _FailFastPool(aioredis.BlockingConnectionPool):
    """A blocking pool whose wait for a free connection is short while Redis does not answer.

    In a burst every connection is busy with a command Redis will answer at once, so a command waits its
    turn (``POOL_TIMEOUT``). When Redis hangs, every connection is held for ``SOCKET_TIMEOUT`` by a command
    that will fail, and a queue of waiters would each wait its turn to fail (measured: 300 commands at
    once took 5 s). So once a connection comes back dropped after an error, Redis counts as down: a command
    waits ``DOWN_POOL_TIMEOUT`` at most for a connection, and one that was already waiting fails as soon as
    it gets one, with "No connection available" (a ``redis.exceptions.ConnectionError``, answered as
    ``store_unavailable``). Commands arriving later that find a free connection go on trying Redis: the
    first one answered ends the outage, with no timer and no restart.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._answering = True
        self._down_since = 0.0
        super().__init__(**kwargs)

    @property  # type: ignore[override]  # read by BlockingConnectionPool.get_connection on every wait
    def timeout(self) -> float:
        return self._burst_timeout if self._answering else min(self._burst_timeout, DOWN_POOL_TIMEOUT)

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._burst_timeout = value

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        _waiting_since.set(time.monotonic())
        return await super().get_connection(*args, **kwargs)

    async def ensure_connection(self, connection: Any) -> None:
        # Called by get_connection with the connection it got, before (re)connecting it: with a hanging
        # Redis the reconnect alone would take another SOCKET_TIMEOUT.
        if not self._answering and _waiting_since.get() < self._down_since:
            await connection.disconnect()  # handed back dropped, so that it does not count as an answer
            raise RedisConnectionError("No connection available.")
        if connection.is_connected:
            # A connection Redis closed while it sat in the pool (a restart of Redis) reads as at its end:
            # connected again here. redis-py's own check of this is skipped while its "maintenance
            # notifications" are on, which they are by default since redis-py 7 ("auto"): each such
            # connection then failed one command, however long after the restart (found by probing).
            try:
                stale = await connection.can_read()
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                await connection.disconnect()
        await super().ensure_connection(connection)

    async def release(self, connection: Any) -> None:
        # redis-py drops (disconnects) a connection whose command failed, timed out or could not connect,
        # and hands back the others connected: the last one back says whether Redis answers.
        answering = bool(connection.is_connected)
        if self._answering and not answering:
            self._down_since = time.monotonic()
        self._answering = answering
        await super().release(connection)


def connection_pool(url: str) -> aioredis.BlockingConnectionPool:
    """The pool of every Redis store: commands wait for a free connection in a burst (redis-py's default
    pool refuses commands once its connections are in use, which lost the disconnects of a reconnect
    storm), fail within ``SOCKET_TIMEOUT`` when Redis hangs or refuses, and are never retried here (a
    command that timed out may still have been applied: the caller, not the pool, decides to retry)."""
    return _FailFastPool.from_url(
        url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0),
    )


class _PipelinedRedis(aioredis.Redis):
    """redis-py's client whose single commands (``get``, ``xadd``, a registered script, ...) go through the
    pipelined client (server/store/resp.py) and are then shaped by redis-py's own response callbacks, as
    redis-py's ``parse_response`` does; pipelines, transactions and pub/sub keep redis-py's pool."""

    _resp: RespClient

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if NEVER_DECODE in options:  # raw bytes wanted: redis-py's own path
            return await super().execute_command(*args, **options)
        words = (*str(args[0]).split(), *args[1:])  # redis-py sends "CLIENT KILL" as two words, too
        try:
            response = await self._resp.call(*words)
        except ResponseError:
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise
        options.pop(EMPTY_RESPONSE, None)
        options.pop("keys", None)
        callback = self.response_callbacks.get(args[0])
        if callback is None:
            return response
        result = callback(response, **options)
        return await result if inspect.isawaitable(result) else result

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self._resp.aclose()
        await super().aclose(close_connection_pool)


def redis_client(url: str) -> aioredis.Redis:
    """The client of the other Redis stores (departments, appointments, audit, recordings, town hall, the media
    registry): redis-py's API, its single commands on a pipelined connection (a sixth of the CPU), its
    pipelines on ``connection_pool``. Closing it closes both."""
    client = _PipelinedRedis(connection_pool=connection_pool(url))
    client.auto_close_connection_pool = True
    client._resp = RespClient(url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
    return client


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "sps:") -> None:
        self._resp = RespClient(url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
        self._keys = _Keys(prefix)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    # -- tickets and queues --
    async def transaction(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            tx = _RedisTx(self._keys, self._resp)
            try:
                try:
                    result = await fn(tx)
                except WatchError:
                    raise
                except Exception:
                    # Reads within an attempt are not a snapshot: fn may have seen a ticket that another
                    # commit changed after it read the queue, and refused (IllegalTransition, QueueEmpty, ...)
                    # because of that torn view. If anything it read changed, rerun it; otherwise its error
                    # stands.
                    if not await self._commit(tx, _Ops()):
                        raise WatchError("read changed") from None
                    raise
                # Writes of tickets fn did not read still need their stored version (to leave the old
                # indexes), read and checked like any other.
                await tx.load(list(tx.writes))
                ops = _Ops()
                for ticket in tx.writes.values():
                    self._queue_write(ops, tx.read[ticket.id], ticket)
                for key, (value, ttl) in tx.counters.items():
                    ops.set(self._keys.hits(key), str(value), ex=max(1, round(ttl)))
                # Also when nothing was put: the script refuses if what fn read changed, so its result
                # never rests on an inconsistent view.
                if await self._commit(tx, ops):
                    return result
            except WatchError:
                pass
            await asyncio.sleep(random.uniform(0, BACKOFF_SECONDS * min(attempt, 10)))
        log.warning("transaction gave up after %d conflicting attempts", MAX_ATTEMPTS)
        raise Conflict()

    async def _commit(self, tx: _RedisTx, ops: _Ops) -> bool:
        """Run the commit script: True when written (or, without commands, when nothing read changed)."""
        if not tx.seen and not ops.args:
            return True
        keys = list(tx.seen)
        args = [len(keys), *(tx.seen[k] for k in keys), *ops.args]
        return bool(await self._resp.script(_COMMIT, keys, args))

    def _queue_write(self, pipe: _Ops, old: Ticket | None, new: Ticket) -> None:
        """Buffer the write of ``new`` over ``old`` with every index kept in step, touching an index only
        when the ticket's place in it changes: a page connecting rewrites its ticket and the ``disc`` index,
        not its department's queue (so it does not conflict with a clerk's "call next" WATCHing it)."""
        k = self._keys
        waiting, active = TicketState.WAITING, new.state.is_active
        was_waiting = old is not None and old.state is waiting
        was_active = old is not None and old.state.is_active
        same_department = old is not None and old.department == new.department
        if was_waiting and not (new.state is waiting and same_department and old.seq == new.seq):  # type: ignore[union-attr]
            pipe.zrem(k.queue(old.department), old.id)  # type: ignore[union-attr]
            pipe.incr(k.queue_version(old.department))  # type: ignore[union-attr]
        if was_active and not (active and same_department):
            pipe.srem(k.active(old.department), old.id)  # type: ignore[union-attr]
        if old is not None:
            if old.token_hash != new.token_hash:
                pipe.delete(k.token(old.token_hash))
            if old.state is not new.state or old.department != new.department:
                log.debug(
                    "ticket %s %s/%s -> %s/%s", new.id, old.department, old.state.value, new.department, new.state.value
                )
        old_disc = old is not None and not old.state.is_final and old.disconnected_at is not None
        body = _dumps(new.to_dict())
        if new.state.is_final:
            ttl = TERMINAL_RETENTION_SECONDS
            pipe.set(k.ticket(new.id), body, ex=ttl)
            pipe.set(k.token(new.token_hash), new.id, ex=ttl)
            if old_disc or old is None:
                pipe.zrem(k.disc, new.id)
            return
        pipe.set(k.ticket(new.id), body)  # without EX: a ticket live again (rejoined) is kept
        if old is None or old.token_hash != new.token_hash or old.state.is_final:
            pipe.set(k.token(new.token_hash), new.id)
        if new.state is waiting and not (was_waiting and same_department and old.seq == new.seq):  # type: ignore[union-attr]
            pipe.zadd(k.queue(new.department), {new.id: new.seq})
            pipe.incr(k.queue_version(new.department))
        elif active and not (was_active and same_department):
            pipe.sadd(k.active(new.department), new.id)
        if new.disconnected_at is not None:
            if not old_disc or old.disconnected_at != new.disconnected_at:  # type: ignore[union-attr]
                pipe.zadd(k.disc, {new.id: new.disconnected_at})
        elif old_disc:
            pipe.zrem(k.disc, new.id)

    async def next_seq(self) -> int:
        return int(await self._resp.call("INCR", self._keys.seq))

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        raw = await self._resp.call("GET", self._keys.ticket(ticket_id))
        return Ticket.from_dict(json.loads(raw)) if raw is not None else None

    async def get_tickets(self, ticket_ids: list[str]) -> list[Ticket]:
        if not ticket_ids:
            return []
        raws = await self._resp.call("MGET", *(self._keys.ticket(i) for i in ticket_ids))
        return [Ticket.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    async def ticket_id_for_token(self, token_hash: str) -> str | None:
        ticket_id = cast("str | None", await self._resp.call("GET", self._keys.token(token_hash)))
        if ticket_id is None or not await self._resp.call("EXISTS", self._keys.ticket(ticket_id)):
            return None
        return ticket_id

    async def ticket_for_token(self, token_hash: str) -> Ticket | None:
        raw = await self._resp.script(_TICKET_BY_TOKEN, [self._keys.token(token_hash)], [self._keys.ticket("")])
        return Ticket.from_dict(json.loads(raw)) if raw is not None else None

    async def waiting(self, department: str) -> list[tuple[int, str]]:
        return _pairs(await self._resp.call("ZRANGE", self._keys.queue(department), 0, -1, "WITHSCORES"))

    async def waiting_seqs(self, department: str) -> list[int]:
        raw = cast("str", await self._resp.script(_WAITING_SEQS, [self._keys.queue(department)], []))
        return [int(seq) for seq in raw.split(",")] if raw else []

    async def position(self, department: str, ticket_id: str, seq: int) -> int | None:
        rank = await self._resp.call("ZRANK", self._keys.queue(department), ticket_id)
        return None if rank is None else int(cast("int", rank)) + 1

    async def waiting_counts(self, departments: list[str]) -> dict[str, int]:
        if not departments:
            return {}
        counts = await self._resp.calls([("ZCARD", self._keys.queue(d)) for d in departments])
        return {d: int(n) for d, n in zip(departments, counts, strict=True)}

    async def active(self, department: str) -> list[str]:
        return sorted(cast("list[str]", await self._resp.call("SMEMBERS", self._keys.active(department))))

    async def disconnected_before(self, cutoff: float) -> list[str]:
        ids = await self._resp.call("ZRANGEBYSCORE", self._keys.disc, "-inf", f"({cutoff!r}")
        return cast("list[str]", ids)

    # -- clerks: the clerk key's TTL is the truth; the per-department zset only finds them --
    async def set_presence(self, username: str, departments: list[str], presence: Presence, ttl: float) -> None:
        k = self._keys
        commands: list[tuple[Any, ...]]
        if presence is Presence.OFFLINE:
            commands = [("DEL", k.clerk(username)), *(("ZREM", k.presence(d), username) for d in departments)]
        else:
            until = repr(time.time() + ttl)
            body = _dumps({"presence": presence.value, "departments": list(departments)})
            commands = [("SET", k.clerk(username), body, "PX", _ms(ttl)),
                        *(("ZADD", k.presence(d), until, username) for d in departments)]
        await self._resp.transaction(commands)

    async def presences(self, department: str) -> dict[str, Presence]:
        key = self._keys.presence(department)
        now = time.time()
        _, users = await self._resp.calls([
            ("ZREMRANGEBYSCORE", key, "-inf", repr(now)),  # lapsed entries leave the index on read
            ("ZRANGEBYSCORE", key, f"({now!r}", "+inf"),
        ])
        if not users:
            return {}
        raws = await self._resp.call("MGET", *(self._keys.clerk(u) for u in users))
        result: dict[str, Presence] = {}
        for user, raw in zip(users, raws, strict=True):
            if raw is None:
                continue
            entry = json.loads(raw)
            if department in entry["departments"]:  # the clerk may have changed departments
                result[user] = Presence(entry["presence"])
        return result

    async def presences_of(self, departments: list[str]) -> dict[str, dict[str, Presence]]:
        """Two round trips whatever the number of departments: their indexes in one pipeline, then every
        clerk named in one MGET (read-only: ``presences`` drops lapsed index entries)."""
        if not departments:
            return {}
        now = time.time()
        indexes = await self._resp.calls([("ZRANGEBYSCORE", self._keys.presence(d), f"({now!r}", "+inf")
                                          for d in departments])
        users = sorted({u for listed in indexes for u in listed})
        raws = await self._resp.call("MGET", *(self._keys.clerk(u) for u in users)) if users else []
        entries = {u: json.loads(raw) for u, raw in zip(users, raws, strict=True) if raw is not None}
        return {
            d: {u: Presence(entries[u]["presence"]) for u in listed if u in entries and d in entries[u]["departments"]}
            for d, listed in zip(departments, indexes, strict=True)
        }

    async def record_service(self, department: str, seconds: float) -> None:
        key = self._keys.services(department)
        await self._resp.transaction([("LPUSH", key, repr(float(seconds))), ("LTRIM", key, 0, RECENT_SERVICES - 1)])

    async def recent_services(self, department: str) -> list[float]:
        return [float(s) for s in await self._resp.call("LRANGE", self._keys.services(department), 0, -1)]

    # -- sessions, staff, limits --
    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        await self._resp.call("SET", self._keys.session(session_id), _dumps(data), "PX", _ms(ttl))

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        raw = await self._resp.call("GET", self._keys.session(session_id))
        return json.loads(raw) if raw is not None else None

    async def session_and_account(self, session_id: str) -> tuple[dict[str, Any] | None, StaffAccount | None]:
        raw, account = await self._resp.script(_SESSION_AND_ACCOUNT, [self._keys.session(session_id), self._keys.staff],
                                               [])
        data = json.loads(raw) if raw else None
        return data, StaffAccount.from_dict(json.loads(account)) if account else None

    async def delete_session(self, session_id: str) -> None:
        await self._resp.call("DEL", self._keys.session(session_id))

    async def put_staff(self, account: StaffAccount) -> None:
        await self._resp.call("HSET", self._keys.staff, account.username, _dumps(account.to_dict()))

    async def get_staff(self, username: str) -> StaffAccount | None:
        raw = await self._resp.call("HGET", self._keys.staff, username)
        return StaffAccount.from_dict(json.loads(raw)) if raw is not None else None

    async def delete_staff(self, username: str) -> bool:
        return bool(await self._resp.call("HDEL", self._keys.staff, username))

    async def list_staff(self) -> list[StaffAccount]:
        flat = await self._resp.call("HGETALL", self._keys.staff)
        entries = dict(zip(flat[::2], flat[1::2], strict=True))
        return [StaffAccount.from_dict(json.loads(entries[u])) for u in sorted(entries)]

    async def hit(self, key: str, window: float) -> int:
        rkey = self._keys.hits(key)
        # NX: only the first hit of a window sets the expiry, so the window is fixed; in the same MULTI as
        # INCR, so a counter can never be left without one.
        count, _ = await self._resp.transaction([("INCR", rkey), ("PEXPIRE", rkey, _ms(window), "NX")])
        return int(count)

    async def count(self, key: str) -> int:
        value = await self._resp.call("GET", self._keys.hits(key))
        return int(value) if value is not None else 0

    async def window_left(self, key: str) -> float:
        ms = int(await self._resp.call("PTTL", self._keys.hits(key)))
        return ms / 1000.0 if ms > 0 else 0.0  # -2: no window, -1: no expiry (never left so by ``hit``)

    async def close(self) -> None:
        await self._resp.aclose()
