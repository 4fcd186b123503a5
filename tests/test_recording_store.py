"""The recording store contract on both stores, plus what each does alone: the JSON file survives a
restart with mode 0600, Redis survives a new client and refuses a second live recording across nodes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from server.store.recordings import (
    ACCESS_LOG_RETENTION_SECONDS,
    AccessEntry,
    MemoryRecordingStore,
    RecordingStore,
    RedisRecordingStore,
    make_recording_store,
)

from .recording_store_contract import NOW, RecordingStoreContract, make_recording, stopped


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def recording_store(request: pytest.FixtureRequest) -> AsyncIterator[RecordingStore]:
    """Each store in turn. The Redis one works under the test's own prefix (``redis_prefix``), whose
    keys that fixture deletes afterwards."""
    s: RecordingStore
    if request.param == "memory":
        s = MemoryRecordingStore(request.getfixturevalue("tmp_path") / "recordings.json")
    else:
        s = RedisRecordingStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()


class TestRecordingStoreContract(RecordingStoreContract):
    """Every test of the contract, once per store."""


async def _fill(store: RecordingStore) -> tuple[list, list[AccessEntry]]:
    recs = [make_recording("r1", "t1"), make_recording("r2", "t2", "b", NOW + 5, stopped=True),
            make_recording("r3", "t3", created_at=NOW + 9)]
    for r in recs:
        assert await store.create(r)
    recs[2] = stopped(recs[2])
    await store.save(recs[2])
    now = time.time()
    log = [AccessEntry(now - 5, "lena", "view", "r2", "b"), AccessEntry(now - 1, "lena", "download", "r3", "a")]
    for e in log:
        await store.log_access(e)
    return recs, log


async def _sees(store: RecordingStore, recs: list, log: list[AccessEntry]) -> None:
    r1, r2, r3 = recs
    assert [await store.get(r.id) for r in recs] == recs
    assert await store.live_for_ticket("t1") == r1
    assert await store.live_for_ticket("t3") is None
    assert await store.list(["a", "b"]) == [r3, r2, r1]
    assert await store.expired(float("inf")) == ["r1", "r2", "r3"]
    assert await store.access_log(["a", "b"]) == [log[1], log[0]]
    assert await store.create(make_recording("again", "t1")) is False  # still live after the restart


async def test_memory_store_survives_a_restart_and_keeps_its_file_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "recordings.json"
    first = MemoryRecordingStore(path)
    recs, log = await _fill(first)
    await first.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["recordings.json"]  # no temporary file left behind
    data = json.loads(path.read_text("utf-8"))
    assert sorted(r["id"] for r in data["recordings"]) == ["r1", "r2", "r3"]

    second = MemoryRecordingStore(path)
    await _sees(second, recs, log)
    assert await second.delete("r1")
    await second.close()
    third = MemoryRecordingStore(path)
    assert await third.get("r1") is None
    assert await third.live_for_ticket("t1") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_memory_store_drops_lapsed_log_entries_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "recordings.json"
    clock = [NOW]
    store = MemoryRecordingStore(path, clock=lambda: clock[0])
    entry = AccessEntry(NOW, "lena", "view", "r1", "a")
    await store.log_access(entry)
    assert await MemoryRecordingStore(path, clock=lambda: clock[0]).access_log(["a"]) == [entry]
    clock[0] += ACCESS_LOG_RETENTION_SECONDS  # exactly at the limit: still kept
    assert await store.access_log(["a"]) == [entry]
    clock[0] += 1
    assert await store.access_log(["a"]) == []
    assert json.loads(path.read_text("utf-8"))["access_log"] == []


async def test_memory_store_without_a_path_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = MemoryRecordingStore(None)
    await _fill(store)
    assert os.listdir(tmp_path) == []


@pytest.mark.redis
async def test_a_new_redis_client_sees_everything(redis_url: str, redis_prefix: str) -> None:
    first = RedisRecordingStore(redis_url, prefix=redis_prefix)
    try:
        recs, log = await _fill(first)
    finally:
        await first.close()
    second = RedisRecordingStore(redis_url, prefix=redis_prefix)
    try:
        await _sees(second, recs, log)
    finally:
        await second.close()


@pytest.mark.redis
async def test_redis_creates_from_several_nodes_let_exactly_one_win(redis_url: str, redis_prefix: str) -> None:
    nodes = [RedisRecordingStore(redis_url, prefix=redis_prefix) for _ in range(4)]
    try:
        for round_ in range(3):  # each round the winner stops, so the next round can win again
            recs = [make_recording(f"r{round_}-{i}", "t1", created_at=NOW + i) for i in range(20)]
            results = await asyncio.gather(*(nodes[i % 4].create(r) for i, r in enumerate(recs)))
            assert results.count(True) == 1, results
            winner = recs[results.index(True)]
            assert await nodes[0].live_for_ticket("t1") == winner
            await nodes[1].save(stopped(winner))
            assert await nodes[2].live_for_ticket("t1") is None
        assert len(await nodes[3].list(["a"])) == 3
    finally:
        for n in nodes:
            await n.close()


@pytest.mark.redis
async def test_redis_keys_and_a_stale_live_pointer(redis_url: str, redis_prefix: str) -> None:
    """The documented key layout; a pointer left to a stopped or missing recording does not block."""
    store = RedisRecordingStore(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    p = redis_prefix
    try:
        rec = make_recording("r1", "t1")
        assert await store.create(rec)
        await store.log_access(AccessEntry(time.time(), "lena", "view", "r1", "a"))
        assert await client.get(f"{p}rec:live:t1") == "r1"
        assert json.loads(await client.get(f"{p}rec:r1"))["id"] == "r1"
        assert await client.zscore(f"{p}rec:exp", "r1") == rec.expires_at
        assert await client.zscore(f"{p}rec:dep:a", "r1") == rec.created_at
        assert 0 < await client.ttl(f"{p}rec:log:a") <= ACCESS_LOG_RETENTION_SECONDS
        assert await client.ttl(f"{p}rec:r1") == -1  # retention is the sweep's job, with a logged deletion

        await client.set(f"{p}rec:live:t2", "gone")  # points to nothing
        assert await store.live_for_ticket("t2") is None
        assert await store.create(make_recording("r2", "t2"))
        assert await client.get(f"{p}rec:live:t2") == "r2"
        await client.set(f"{p}rec:r2", json.dumps(stopped(make_recording("r2", "t2")).to_dict()))
        assert await store.live_for_ticket("t2") is None  # pointer to a stopped recording
        assert await store.create(make_recording("r3", "t2"))

        await client.zadd(f"{p}rec:exp", {"orphan": 1.0})  # an index entry without its recording
        assert await store.delete("orphan") is False
        assert "orphan" not in await store.expired(float("inf"))
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_make_recording_store_picks_the_configured_store(tmp_path: Path, redis_url: str) -> None:
    memory = make_recording_store(None, "sps:", tmp_path)
    assert isinstance(memory, MemoryRecordingStore)
    assert await memory.create(make_recording("r1", "t1"))
    assert (tmp_path / "recordings.json").exists()
    await memory.close()
    redis_store = make_recording_store(redis_url, "sps-test-factory:", tmp_path)
    try:
        assert isinstance(redis_store, RedisRecordingStore) and redis_store.prefix == "sps-test-factory:"
    finally:
        await redis_store.close()
