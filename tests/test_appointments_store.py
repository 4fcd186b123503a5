"""The appointment store contract on both stores, plus what each does alone: the JSON file (mode 0600)
survives a restart and forgets expired appointments; Redis keys expire with the retention, and the race for
the last place holds across several nodes (separate clients)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from server.store.appointments import (
    OK,
    SLOT_FULL,
    AppointmentStore,
    MemoryAppointmentStore,
    RedisAppointmentStore,
)

from .appointment_store_contract import BASE, DAY, AppointmentStoreContract, make, put


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def appointment_store(request: pytest.FixtureRequest) -> AsyncIterator[AppointmentStore]:
    s: AppointmentStore
    if request.param == "memory":
        s = MemoryAppointmentStore(request.getfixturevalue("tmp_path") / "appointments.json")
    else:
        s = RedisAppointmentStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()


class TestAppointmentStoreContract(AppointmentStoreContract):
    """Every test of the contract, once per store."""


async def test_memory_file_is_private_survives_a_restart_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "appointments.json"
    now = [BASE - 86400]
    store = MemoryAppointmentStore(path, clock=lambda: now[0])
    await put(store, make("a1"))
    await put(store, make("a2", BASE + 86400 * 3))
    await store.claim("a1", "reminded", 86400 * 30)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "ada@example.org" in path.read_text("utf-8")
    again = MemoryAppointmentStore(path, clock=lambda: now[0])
    assert await again.get("a1") == make("a1")
    assert await again.taken("bb", [BASE]) == [1]
    assert await again.claim("a1", "reminded", 60) is False
    now[0] = BASE + 1200 + 86400 + 1  # a1's retention is over (put: the slot's end plus a day)
    assert await again.get("a1") is None
    assert await again.id_for_token("hash-a1") is None
    assert await again.purge(now[0]) == 1
    assert await again.taken("bb", [BASE]) == [0]
    data = json.loads(path.read_text("utf-8"))
    assert [e["appointment"]["id"] for e in data["appointments"]] == ["a2"]


@pytest.mark.redis
async def test_redis_keys_expire_with_the_retention(redis_url: str, redis_prefix: str) -> None:
    store = RedisAppointmentStore(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        a = make("a1")
        await put(store, a)
        ttl = await client.pttl(f"{redis_prefix}appt:a1")
        expected = (a.end + 86400 - (await client.time())[0]) * 1000
        assert abs(ttl - expected) < 60_000
        for key in (f"{redis_prefix}appt-token:hash-a1", f"{redis_prefix}appt-slot:bb:{int(BASE)}",
                    f"{redis_prefix}appt-day:bb:{DAY}"):
            assert await client.pttl(key) > 0, key
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_redis_race_across_nodes(redis_url: str, redis_prefix: str) -> None:
    """Three nodes (own clients and pools) book the one place of a slot at once: exactly one wins."""
    nodes = [RedisAppointmentStore(redis_url, prefix=redis_prefix) for _ in range(3)]
    try:
        results = await asyncio.gather(*(put(nodes[i % 3], make(f"r{i}")) for i in range(30)))
        assert results.count(OK) == 1 and results.count(SLOT_FULL) == 29
        assert await nodes[0].taken("bb", [BASE]) == [1]
    finally:
        for n in nodes:
            await n.close()
