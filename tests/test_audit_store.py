"""The audit store contract, run on both stores (SQLite in data_dir, Redis Stream), plus what each does
alone: the SQLite file survives a restart with mode 0600; the Redis stream is capped and trimmed by time.
And the service: details are cleaned, a store failure never raises, the retention sweep."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from server.audit import AuditLog, clean_details
from server.queue.errors import InvalidInput
from server.store.audit import (
    MAX_PAGE,
    AuditEntry,
    AuditQuery,
    AuditStore,
    MemoryAuditStore,
    RedisAuditStore,
    make_audit_store,
)

T0 = 1_780_000_000.0
DAY = 86400.0


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def audit_store(request: pytest.FixtureRequest) -> AsyncIterator[AuditStore]:
    s: AuditStore
    if request.param == "memory":
        s = MemoryAuditStore(request.getfixturevalue("tmp_path") / "var" / "audit.sqlite3")
    else:
        s = RedisAuditStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()


def entry(at: float, actor: str = "lena", action: str = "ticket.called", target: str = "t1",
          departments: tuple[str, ...] = ("a",), **details: object) -> AuditEntry:
    return AuditEntry(at, actor, action, target, departments, dict(details))  # type: ignore[arg-type]


async def fill(store: AuditStore) -> list[AuditEntry]:
    rows = [
        entry(T0, "lena", "ticket.called", "t1", ("a",)),
        entry(T0 + 10, "lena", "ticket.finished", "t1", ("a",)),
        entry(T0 + 20, "omar", "ticket.transferred", "t2", ("a", "b"), **{"from": "a", "to": "b"}),
        entry(T0 + 30, "omar", "staff.updated", "kim", ("b",), fields=["roles"]),
        entry(T0 + 40, "root", "settings.changed", "", ()),
        entry(T0 + 50, "system", "recording.expired", "r1", ("c",)),
    ]
    return [await store.append(r) for r in rows]


def ids(page_entries: list[AuditEntry]) -> list[str]:
    return [e.target + "/" + e.action for e in page_entries]


class TestContract:
    async def test_append_assigns_ids_and_reads_back_newest_first(self, audit_store: AuditStore) -> None:
        stored = await fill(audit_store)
        assert len({e.id for e in stored}) == len(stored) and all(e.id for e in stored)
        page = await audit_store.query(AuditQuery())
        assert [e.id for e in page.entries] == [e.id for e in reversed(stored)]
        assert page.next is None
        first = page.entries[-1]
        assert (first.at, first.actor, first.action, first.target, first.departments, first.details) == (
            T0, "lena", "ticket.called", "t1", ("a",), {})
        transfer = page.entries[3]
        assert transfer.details == {"from": "a", "to": "b"} and transfer.departments == ("a", "b")

    @pytest.mark.parametrize(("query", "expected"), [
        (AuditQuery(scope=frozenset({"a"})), ["t2/ticket.transferred", "t1/ticket.finished", "t1/ticket.called"]),
        (AuditQuery(scope=frozenset({"b"})), ["kim/staff.updated", "t2/ticket.transferred"]),
        (AuditQuery(scope=frozenset()), []),
        (AuditQuery(department="c"), ["r1/recording.expired"]),
        (AuditQuery(scope=frozenset({"a"}), department="b"), ["t2/ticket.transferred"]),
        (AuditQuery(actor="omar"), ["kim/staff.updated", "t2/ticket.transferred"]),
        (AuditQuery(action="ticket"), ["t2/ticket.transferred", "t1/ticket.finished", "t1/ticket.called"]),
        (AuditQuery(action="ticket.finished"), ["t1/ticket.finished"]),
        (AuditQuery(action="ticket.fin"), []),
        (AuditQuery(since=T0 + 10, until=T0 + 30), ["t2/ticket.transferred", "t1/ticket.finished"]),
        (AuditQuery(since=T0 + 45), ["r1/recording.expired"]),
        (AuditQuery(until=T0 + 1), ["t1/ticket.called"]),
        (AuditQuery(actor="lena", scope=frozenset({"b"})), []),
    ])
    async def test_filters(self, audit_store: AuditStore, query: AuditQuery, expected: list[str]) -> None:
        await fill(audit_store)
        assert ids((await audit_store.query(query)).entries) == expected

    async def test_paging_walks_every_entry_once(self, audit_store: AuditStore) -> None:
        stored = await fill(audit_store)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = await audit_store.query(AuditQuery(limit=4, cursor=cursor))
            assert len(page.entries) <= 4
            seen += [e.id for e in page.entries]
            cursor = page.next
            if cursor is None:
                break
        assert seen == [e.id for e in reversed(stored)]

    async def test_paging_with_a_filter(self, audit_store: AuditStore) -> None:
        await fill(audit_store)
        page = await audit_store.query(AuditQuery(scope=frozenset({"a"}), limit=2))
        assert ids(page.entries) == ["t2/ticket.transferred", "t1/ticket.finished"] and page.next
        rest = await audit_store.query(AuditQuery(scope=frozenset({"a"}), limit=2, cursor=page.next))
        assert ids(rest.entries) == ["t1/ticket.called"] and rest.next is None

    async def test_limit_is_capped(self, audit_store: AuditStore) -> None:
        for i in range(MAX_PAGE + 5):
            await audit_store.append(entry(T0 + i))
        page = await audit_store.query(AuditQuery(limit=10_000))
        assert len(page.entries) == MAX_PAGE and page.next is not None

    @pytest.mark.parametrize("cursor", ["x", "1-2-3", "'; DROP TABLE audit; --", "-1", "9" * 30])
    async def test_malformed_cursor_is_invalid_input(self, audit_store: AuditStore, cursor: str) -> None:
        await fill(audit_store)
        with pytest.raises(InvalidInput):
            await audit_store.query(AuditQuery(cursor=cursor))

    async def test_sweep_deletes_entries_before_the_cutoff(self, audit_store: AuditStore) -> None:
        await fill(audit_store)
        removed = await audit_store.sweep(T0 + 25)
        assert removed >= 3
        page = await audit_store.query(AuditQuery())
        assert [e.at for e in page.entries] == [T0 + 50, T0 + 40, T0 + 30]
        assert await audit_store.sweep(T0 + 25) == 0

    async def test_an_entry_recorded_late_is_kept_in_order_and_swept(self, audit_store: AuditStore) -> None:
        await audit_store.append(entry(T0 + 100, target="new"))
        late = await audit_store.append(entry(T0 + 50, target="late"))  # another node's slower clock
        page = await audit_store.query(AuditQuery())
        assert [e.target for e in page.entries] == ["late", "new"]  # in the order recorded
        assert [e.target for e in (await audit_store.query(AuditQuery(until=T0 + 60))).entries] == ["late"]
        await audit_store.sweep(T0 + 60)
        assert [e.target for e in (await audit_store.query(AuditQuery())).entries] == ["new"]
        assert late.id

    async def test_unicode_and_quotes_survive(self, audit_store: AuditStore) -> None:
        await audit_store.append(entry(T0, actor="jörg", target="Bürger'büro\"", departments=("bürger",),
                                       note_key="ä\n"))
        (e,) = (await audit_store.query(AuditQuery(department="bürger"))).entries
        assert (e.actor, e.target, e.details) == ("jörg", "Bürger'büro\"", {"note_key": "ä\n"})


async def test_sqlite_file_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "audit.sqlite3"
    store = make_audit_store(None, "sps:", tmp_path / "data")
    assert isinstance(store, MemoryAuditStore)
    await store.append(entry(T0))
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for sibling in path.parent.iterdir():
        assert stat.S_IMODE(sibling.stat().st_mode) & 0o077 == 0, sibling
    again = MemoryAuditStore(path)
    try:
        assert [e.at for e in (await again.query(AuditQuery())).entries] == [T0]
    finally:
        await again.close()


@pytest.mark.redis
async def test_redis_stream_is_capped(redis_url: str, redis_prefix: str) -> None:
    store = RedisAuditStore(redis_url, redis_prefix, max_entries=10)
    try:
        for i in range(300):
            await store.append(entry(T0 + i))
        assert await store.r.xlen(store.key) < 300  # MAXLEN ~ trims whole nodes
        assert (await store.query(AuditQuery(limit=1))).entries[0].at == T0 + 299
        other = make_audit_store(redis_url, redis_prefix, Path("unused"))
        assert isinstance(other, RedisAuditStore)
        assert (await other.query(AuditQuery(limit=1))).entries[0].at == T0 + 299  # shared by every node
        await other.close()
    finally:
        await store.close()


# -- the service --
class FailingStore(MemoryAuditStore):
    async def append(self, entry: AuditEntry) -> AuditEntry:
        raise ConnectionError("down")


async def test_record_never_raises_on_a_store_failure(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(FailingStore(None))
    assert await log.record("lena", "auth.login") is None
    assert "could not be stored" in caplog.text
    await log.close()


@pytest.mark.parametrize(("args", "kwargs"), [
    (("", "auth.login"), {}),
    (("lena", "login"), {}),
    (("lena", "Auth.Login"), {}),
    (("lena", "auth.login"), {"details": {"Bad Key": 1}}),
    (("lena", "auth.login"), {"details": {"obj": {"nested": 1}}}),
    (("lena", "auth.login"), {"details": {f"k{i}": i for i in range(30)}}),
    (("lena", "auth.login"), {"target": 5}),
])
async def test_malformed_calls_are_bugs(args: tuple[str, str], kwargs: dict[str, object]) -> None:
    log = AuditLog(MemoryAuditStore(None))
    with pytest.raises(ValueError):
        await log.record(*args, **kwargs)  # type: ignore[arg-type]
    await log.close()


def test_clean_details_cuts_long_texts_and_lists() -> None:
    cleaned = clean_details({"a": "x" * 500, "b": ["y"] * 80, "c": {"z", "a"}, "d": None, "e": 1.5, "f": True})
    assert cleaned["a"] == "x" * 200 and cleaned["b"] == ["y"] * 50 and cleaned["c"] == ["a", "z"]
    assert (cleaned["d"], cleaned["e"], cleaned["f"]) == (None, 1.5, True)


async def test_retention_sweep_uses_the_configured_days() -> None:
    now = T0 + 500 * DAY
    log = AuditLog(MemoryAuditStore(None), retention_days=400, clock=lambda: now)
    await log.record("lena", "auth.login", now=now - 401 * DAY)
    await log.record("lena", "auth.logout", now=now - 399 * DAY)
    assert await log.sweep() == 1
    page = await log.query(AuditQuery())
    assert [e.action for e in page.entries] == ["auth.logout"]
    await log.close()
