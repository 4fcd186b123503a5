"""The store contract on both stores, plus what only Redis does: survive a restart, expire data."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.queue import core
from server.queue.errors import Conflict, IllegalTransition
from server.queue.model import TicketState
from server.store import redis as redis_store_module
from server.store.base import TERMINAL_RETENTION_SECONDS, StaffAccount, Tx
from server.store.memory import MemoryStore
from server.store.redis import RedisStore

from .store_contract import (
    CALL,
    DISCONNECT,
    FINISH,
    RECONNECT,
    START,
    StoreContract,
    clerk,
    eventually,
    make_ticket,
    put,
    update,
)


class TestStoreContract(StoreContract):
    """Every test of the contract, once per store."""


@pytest.mark.redis
async def test_a_new_redis_store_sees_the_queues(redis_url: str, redis_prefix: str) -> None:
    """A restarted server (a new client on the same Redis and prefix) carries on where it stopped."""
    first = RedisStore(redis_url, prefix=redis_prefix)
    try:
        await put(first, make_ticket("t1", 1), make_ticket("t2", 2), make_ticket("t3", 3, "b"))
        called = await update(first, "t1", CALL)
        await first.put_staff(StaffAccount("anna", "Anna", "$argon2id$x", ("clerk",), ("a",)))
        await first.record_service("a", 300.0)
        seq = await first.next_seq()
    finally:
        await first.close()

    second = RedisStore(redis_url, prefix=redis_prefix)
    try:
        assert await second.waiting("a") == [(2, "t2")]
        assert await second.waiting("b") == [(3, "t3")]
        assert await second.active("a") == ["t1"]
        assert await second.get_ticket("t1") == called
        assert await second.ticket_id_for_token("hash-t2") == "t2"
        assert [a.username for a in await second.list_staff()] == ["anna"]
        assert await second.recent_services("a") == [300.0]
        assert await second.next_seq() > seq
    finally:
        await second.close()


@pytest.mark.redis
async def test_finished_tickets_expire_in_redis(redis_store: RedisStore, redis_url: str) -> None:
    """Personal data of finished tickets is deleted by Redis itself after the retention period."""
    await put(redis_store, make_ticket("done", 1), make_ticket("live", 2))
    for step in (CALL, START, FINISH):
        await update(redis_store, "done", step)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        p = redis_store.prefix
        for key in (f"{p}t:done", f"{p}tok:hash-done"):
            assert 0 < await client.ttl(key) <= TERMINAL_RETENTION_SECONDS, key
        for key in (f"{p}t:live", f"{p}tok:hash-live"):
            assert await client.ttl(key) == -1, key  # live tickets never expire on their own
        assert (await redis_store.get_ticket("done")).state is TicketState.DONE  # type: ignore[union-attr]
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_lapsed_ticket_is_gone_in_redis(redis_store: RedisStore, redis_url: str) -> None:
    """Once the ticket key lapsed, neither its id nor a leftover token finds it."""
    await put(redis_store, make_ticket("t1", 1, state=TicketState.LEFT))
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.pexpire(f"{redis_store.prefix}t:t1", 1)
        assert await client.exists(f"{redis_store.prefix}tok:hash-t1")
    finally:
        await client.aclose()

    async def gone() -> bool:
        return await redis_store.get_ticket("t1") is None

    await eventually(gone, "the ticket key lapses")
    assert await redis_store.ticket_id_for_token("hash-t1") is None
    assert await redis_store.get_tickets(["t1"]) == []


async def test_lapsed_ticket_is_gone_in_memory(tmp_path: Path) -> None:
    now = [1000.0]
    store = MemoryStore(staff_file=tmp_path / "staff.json", clock=lambda: now[0])
    await put(store, make_ticket("t1", 1, state=TicketState.LEFT))
    now[0] += TERMINAL_RETENTION_SECONDS - 1
    assert await store.ticket_id_for_token("hash-t1") == "t1"
    now[0] += 2
    assert await store.get_ticket("t1") is None
    assert await store.ticket_id_for_token("hash-t1") is None


@pytest.mark.redis
async def test_redis_transaction_gives_up_with_conflict(
    redis_store: RedisStore, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every attempt loses its race the caller gets Conflict, and nothing of fn is written."""
    monkeypatch.setattr(redis_store_module, "MAX_ATTEMPTS", 3)
    await put(redis_store, make_ticket("t1", 1))
    rival = RedisStore(redis_url, prefix=redis_prefix)
    attempts = 0

    async def fn(tx: Tx) -> None:
        nonlocal attempts
        attempts += 1
        ticket = await tx.ticket("t1")
        assert ticket is not None
        await put(rival, ticket.replace(name=f"changed {attempts}"))  # someone else wins every time
        tx.put(CALL(ticket))

    try:
        with pytest.raises(Conflict):
            await redis_store.transaction(fn)
    finally:
        await rival.close()
    assert attempts == 3
    stored = await redis_store.get_ticket("t1")
    assert stored is not None and stored.state is TicketState.WAITING and stored.name == "changed 3"
    assert await redis_store.active("a") == []


@pytest.mark.redis
async def test_redis_read_only_transaction_reruns_on_inconsistent_reads(
    redis_store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    """Even without writes, a result never rests on reads that changed before the commit."""
    await put(redis_store, make_ticket("t1", 1))
    rival = RedisStore(redis_url, prefix=redis_prefix)
    seen: list[list[tuple[int, str]]] = []

    async def fn(tx: Tx) -> list[tuple[int, str]]:
        seen.append(await tx.waiting("a"))
        if len(seen) == 1:
            await put(rival, make_ticket("t2", 2))
        return seen[-1]

    try:
        result = await redis_store.transaction(fn)
    finally:
        await rival.close()
    assert result == [(1, "t1"), (2, "t2")] and len(seen) == 2


@pytest.mark.redis
async def test_redis_refusal_based_on_a_torn_read_is_rerun(
    redis_store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    """Regression: a clerk read the queue, a colleague called its head before the clerk read that
    ticket, so core.call refused with IllegalTransition. The refusal rested on reads that changed
    meanwhile: the transaction must run again (and call the next citizen), not fail."""
    await put(redis_store, make_ticket("t1", 1), make_ticket("t2", 2))
    rival = RedisStore(redis_url, prefix=redis_prefix)
    runs = 0

    async def fn(tx: Tx) -> str:
        nonlocal runs
        runs += 1
        head = core.pick_next(await tx.waiting("a"))
        if runs == 1:
            await update(rival, head, CALL)
        ticket = await tx.ticket(head)
        assert ticket is not None
        tx.put(core.call(ticket, clerk("bert"), 0.0)[0])
        return ticket.id

    try:
        assert await redis_store.transaction(fn) == "t2"
    finally:
        await rival.close()
    assert runs == 2
    assert sorted(await redis_store.active("a")) == ["t1", "t2"]


@pytest.mark.redis
async def test_redis_connectivity_of_a_page_does_not_make_call_next_rerun(
    redis_store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    """A waiting page connecting or going away rewrites its ticket, not its department's queue: a clerk's
    "call next" WATCHing the queue meanwhile commits at its first attempt (in a reconnect storm every page
    did this, and every call next of the department ran again)."""
    await put(redis_store, make_ticket("t1", 1), make_ticket("t2", 2, disconnected_at=5.0))
    rival = RedisStore(redis_url, prefix=redis_prefix)
    runs = 0

    async def fn(tx: Tx) -> str:
        nonlocal runs
        runs += 1
        head = core.pick_next(await tx.waiting_head("a", 1))
        assert await tx.waiting_count("a") == 2
        if runs == 1:
            await update(rival, "t2", RECONNECT)
            await update(rival, "t2", DISCONNECT)
        ticket = await tx.ticket(head)
        assert ticket is not None
        tx.put(core.call(ticket, clerk("bert"), 0.0)[0])
        return ticket.id

    try:
        assert await redis_store.transaction(fn) == "t1"
    finally:
        await rival.close()
    assert runs == 1
    assert await redis_store.waiting("a") == [(2, "t2")]
    assert await redis_store.disconnected_before(float("inf")) == ["t2"]


@pytest.mark.redis
async def test_redis_batched_commands_each_get_their_own_answer(redis_store: RedisStore) -> None:
    """Commands issued together share one pipelined connection (server/store/resp.py); each gets its own answer or
    error, and a script Redis does not know yet (after a restart) is sent in full."""
    await put(redis_store, make_ticket("t1", 1))
    got = await asyncio.gather(
        redis_store.get_ticket("t1"), redis_store.get_ticket("nope"), redis_store.position("a", "t1", 1),
        redis_store._resp.call("INCR", f"{redis_store.prefix}t:t1"), redis_store.ticket_for_token("hash-t1"),
        return_exceptions=True,
    )
    assert got[0] == got[4] == make_ticket("t1", 1) and got[1] is None and got[2] == 1
    assert isinstance(got[3], ResponseError)
    body = f"return ARGV[1] .. '{secrets.token_hex(8)}'"  # never loaded: EVALSHA fails, EVAL runs it
    assert await redis_store._resp.script(body, [], ["x"]) == "x" + body.split("'")[1]


@pytest.mark.redis
async def test_redis_refusal_on_a_consistent_read_propagates(redis_store: RedisStore) -> None:
    """The other side of the rerun: when nothing changed, the core's refusal is the answer."""
    await put(redis_store, make_ticket("t1", 1))
    await update(redis_store, "t1", CALL)
    runs = 0

    async def fn(tx: Tx) -> None:
        nonlocal runs
        runs += 1
        ticket = await tx.ticket("t1")
        assert ticket is not None
        tx.put(core.call(ticket, clerk("bert"), 0.0)[0])

    with pytest.raises(IllegalTransition):
        await redis_store.transaction(fn)
    assert runs == 1


async def test_memory_store_forgets_lapsed_tickets_without_being_asked(tmp_path):
    """Regression: finished tickets stayed in memory until someone read them again."""
    from server.queue.model import Ticket, TicketState
    from server.store.base import TERMINAL_RETENTION_SECONDS
    from server.store.memory import MemoryStore

    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    done = Ticket(id="t1", token_hash="h1", department="d", seq=1, state=TicketState.DONE, arrived_at=1.0,
                  enqueued_at=1.0, origin_department="d", name="Alex")

    async def put(tx):
        tx.put(done)

    await store.transaction(put)
    await store.put_session("s", {"u": 1}, ttl=10)
    now[0] += TERMINAL_RETENTION_SECONDS + 1
    await store.disconnected_before(now[0])  # what the periodic sweep calls
    assert store._tickets == {} and store._tokens == {} and store._sessions == {}
