"""The town-hall store contract on both stores, plus what each does alone: the JSON file survives a
restart with mode 0600 (votes and audience written shortly after, or at close), Redis survives a new
client and holds the audience limit and the question cap across nodes."""

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

from server.store.townhall import (
    FLUSH_DELAY,
    MemoryTownHallStore,
    RedisTownHallStore,
    TownHallStore,
    make_townhall_store,
)
from server.townhall.model import Question, TownHallEvent

from .townhall_store_contract import (
    MAX,
    NOW,
    TownHallStoreContract,
    approve,
    full_event,
    make_event,
    make_question,
)


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def townhall_store(request: pytest.FixtureRequest) -> AsyncIterator[TownHallStore]:
    """Each store in turn. The Redis one works under the test's own prefix (``redis_prefix``), whose
    keys that fixture deletes afterwards."""
    s: TownHallStore
    if request.param == "memory":
        s = MemoryTownHallStore(request.getfixturevalue("tmp_path") / "townhall.json")
    else:
        s = RedisTownHallStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()


class TestTownHallStoreContract(TownHallStoreContract):
    """Every test of the contract, once per store."""


State = tuple[list[TownHallEvent], list[Question]]


async def _fill(store: TownHallStore) -> State:
    events = [make_event("ev1"), full_event()]
    for e in events:
        await store.create_event(e)
    qs = [make_question(f"q{i}", events[0], NOW + i) for i in range(3)]
    for q in qs:
        assert await store.add_question(q, 10)
    await approve(store, "ev1", "q1", MAX)
    await store.vote("q1", "a1")
    await store.vote("q1", "a2")
    await store.vote("q2", "a1")
    await store.unvote("q2", "a1")
    assert await store.join_audience("ev1", "h1", "a1", 2) == "a1"
    assert await store.join_audience("ev1", "h2", "a2", 2) == "a2"
    events[0] = await store.get_event("ev1")  # type: ignore[assignment]
    qs = await store.questions("ev1")
    return events, qs


async def _sees(store: TownHallStore, state: State) -> None:
    events, qs = state
    assert await store.list_events() == events  # same start: by id
    assert await store.questions("ev1") == qs
    assert await store.vote_counts(["q0", "q1", "q2"]) == {"q0": 0, "q1": 2, "q2": 0}
    assert await store.voted(["q1", "q2"], "a1") == {"q1"}
    assert await store.audience_for("h2") == ("ev1", "a2")
    assert await store.join_audience("ev1", "h1", "other", 2) == "a1"
    assert await store.join_audience("ev1", "h3", "a3", 2) is None  # the limit still counts both
    assert await store.add_question(make_question("q3", events[0]), 3) is False  # and the cap the questions


async def test_memory_store_survives_a_restart_and_keeps_its_file_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "townhall.json"
    first = MemoryTownHallStore(path)
    state = await _fill(first)
    await first.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["townhall.json"]  # no temporary file left behind
    data = json.loads(path.read_text("utf-8"))
    assert (sorted(data), data["votes"], data["audience"]) == (
        ["audience", "events", "questions", "votes"], {"q1": ["a1", "a2"]}, {"h1": ["ev1", "a1"], "h2": ["ev1", "a2"]})

    second = MemoryTownHallStore(path)
    await _sees(second, state)
    await second.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_memory_store_writes_events_at_once_and_votes_shortly_after(tmp_path: Path) -> None:
    path = tmp_path / "townhall.json"
    store = MemoryTownHallStore(path)
    event = make_event()
    await store.create_event(event)
    assert await MemoryTownHallStore(path).get_event("ev1") == event  # no close needed
    assert await store.add_question(make_question("q1", event), 10)
    assert [q.id for q in await MemoryTownHallStore(path).questions("ev1")] == ["q1"]

    before = path.stat().st_mtime_ns
    for i in range(50):  # a burst of votes and joins: one write after FLUSH_DELAY, not fifty
        await store.vote("q1", f"a{i}")
        await store.join_audience("ev1", f"h{i}", f"a{i}", 100)
    assert path.stat().st_mtime_ns == before
    assert await MemoryTownHallStore(path).vote_counts(["q1"]) == {"q1": 0}
    deadline = time.monotonic() + FLUSH_DELAY + 5
    while json.loads(path.read_text("utf-8"))["votes"] == {} and time.monotonic() < deadline:  # noqa: ASYNC110 - written by a timer
        await asyncio.sleep(0.02)
    again = MemoryTownHallStore(path)
    assert await again.vote_counts(["q1"]) == {"q1": 50}
    assert await again.audience_for("h49") == ("ev1", "a49")
    await store.unvote("q1", "a0")
    await store.close()  # writes what was pending
    assert await MemoryTownHallStore(path).vote_counts(["q1"]) == {"q1": 49}


async def test_memory_store_without_a_path_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = MemoryTownHallStore(None)
    await _fill(store)
    await store.close()
    assert os.listdir(tmp_path) == []


async def test_memory_store_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "townhall.json"
    path.write_text("{not json", "utf-8")
    with pytest.raises(json.JSONDecodeError):
        MemoryTownHallStore(path)


@pytest.mark.redis
async def test_a_new_redis_client_sees_everything(redis_url: str, redis_prefix: str) -> None:
    first = RedisTownHallStore(redis_url, prefix=redis_prefix)
    try:
        state = await _fill(first)
    finally:
        await first.close()
    second = RedisTownHallStore(redis_url, prefix=redis_prefix)
    try:
        await _sees(second, state)
    finally:
        await second.close()


@pytest.mark.redis
async def test_redis_limits_hold_across_nodes(redis_url: str, redis_prefix: str) -> None:
    nodes = [RedisTownHallStore(redis_url, prefix=redis_prefix) for _ in range(4)]
    try:
        event = make_event()
        await nodes[0].create_event(event)
        joins = await asyncio.gather(*(nodes[i % 4].join_audience("ev1", f"h{i}", f"a{i}", 10) for i in range(40)))
        assert sum(j is not None for j in joins) == 10
        adds = await asyncio.gather(*(nodes[i % 4].add_question(make_question(f"q{i:02d}", event, NOW + i), 7)
                                      for i in range(30)))
        assert adds.count(True) == 7 and len(await nodes[1].questions("ev1")) == 7
        await asyncio.gather(*(approve(nodes[i % 4], "ev1", q.id, MAX) for i, q in
                               enumerate(await nodes[2].questions("ev1"))))
        assert {q.state.value for q in await nodes[3].questions("ev1")} == {"published"}
    finally:
        for n in nodes:
            await n.close()


@pytest.mark.redis
async def test_redis_key_layout(redis_url: str, redis_prefix: str) -> None:
    """The documented keys: what an operator finds with redis-cli."""
    store = RedisTownHallStore(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    p = redis_prefix
    try:
        event = make_event()
        await store.create_event(event)
        q = make_question("q1", event)
        assert await store.add_question(q, 10)
        await store.vote("q1", "a1")
        await store.join_audience("ev1", "h1", "a1", 10)
        assert json.loads(await client.get(f"{p}th:e:ev1")) == event.to_dict()
        assert await client.zscore(f"{p}th:events", "ev1") == event.starts_at
        assert json.loads(await client.get(f"{p}th:q:q1")) == q.to_dict()
        assert await client.zscore(f"{p}th:qs:ev1", "q1") == q.created_at
        assert await client.smembers(f"{p}th:votes:q1") == {"a1"}
        assert await client.hgetall(f"{p}th:aud") == {"h1": "ev1:a1"}
        assert await client.smembers(f"{p}th:aud:ev1") == {"a1"}
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_make_townhall_store_picks_the_configured_store(tmp_path: Path, redis_url: str) -> None:
    memory = make_townhall_store(None, "sps:", tmp_path)
    assert isinstance(memory, MemoryTownHallStore)
    await memory.create_event(make_event())
    assert (tmp_path / "townhall.json").exists()
    await memory.close()
    redis_store = make_townhall_store(redis_url, "sps-test-factory:", tmp_path)
    try:
        assert isinstance(redis_store, RedisTownHallStore) and redis_store.prefix == "sps-test-factory:"
    finally:
        await redis_store.close()
