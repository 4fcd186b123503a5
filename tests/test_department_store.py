"""The department store contract on both stores, the live directory (seeded once, then the store wins; other
nodes' changes picked up), and the pure edits of server/rooms/directory.py (table-driven)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from server.queue.errors import InvalidInput
from server.rooms import directory
from server.rooms.departments import Department
from server.store.departments import (
    DepartmentDirectory,
    DepartmentStore,
    MemoryDepartmentStore,
    RedisDepartmentStore,
)

from .department_store_contract import FULL, NEVER, PLAIN, DepartmentStoreContract


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def department_store(request: pytest.FixtureRequest) -> AsyncIterator[DepartmentStore]:
    s: DepartmentStore
    if request.param == "memory":
        s = MemoryDepartmentStore(request.getfixturevalue("tmp_path") / "departments.json")
    else:
        s = RedisDepartmentStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()


class TestDepartmentStoreContract(DepartmentStoreContract):
    """Every test of the contract, once per store."""


async def test_memory_store_survives_a_restart_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "departments.json"
    first = MemoryDepartmentStore(path)
    await first.seed([FULL, PLAIN])
    await first.update(Department("bauamt", "Bauamt neu"), 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["departments.json"]
    again = MemoryDepartmentStore(path)
    snap = await again.snapshot()
    assert snap == await first.snapshot()
    assert await again.seed([NEVER]) is False


async def test_redis_store_is_shared_by_two_clients(redis_url: str, redis_prefix: str) -> None:
    a, b = RedisDepartmentStore(redis_url, redis_prefix), RedisDepartmentStore(redis_url, redis_prefix)
    try:
        await a.seed([PLAIN])
        await b.update(FULL.__class__("bauamt", "Bauamt B"), 1)
        assert (await a.snapshot()).departments["bauamt"].department.name == "Bauamt B"
    finally:
        await a.close()
        await b.close()


async def test_directory_seeds_once_then_the_store_wins(tmp_path: Path) -> None:
    path = tmp_path / "departments.json"
    d1 = DepartmentDirectory(MemoryDepartmentStore(path), [PLAIN])
    assert list(d1.departments) == ["bauamt"]  # before start: the configuration
    await d1.start([PLAIN, FULL])
    await d1.update(Department("bauamt", "Bauamt (edited)"), 1)
    d2 = DepartmentDirectory(MemoryDepartmentStore(path), [NEVER])
    await d2.start([NEVER])  # a changed TOML does not overwrite the stored directory
    assert [d.name for d in d2.departments.values()] == ["Bauamt (edited)", "Bürgerbüro"]
    assert d2.revision("bauamt") == 2


@pytest.mark.redis
async def test_directory_picks_up_another_nodes_change(redis_url: str, redis_prefix: str) -> None:
    stores = [RedisDepartmentStore(redis_url, redis_prefix) for _ in range(2)]
    a, b = (DepartmentDirectory(s) for s in stores)
    heard: list[tuple[set[str], bool]] = []

    async def listener(changed: set[str], local: bool) -> None:
        heard.append((changed, local))

    b.on_change(listener)
    await a.start([PLAIN, FULL])
    await b.start([NEVER])
    assert list(b.departments) == ["bauamt", "buergerbuero"]
    watcher = asyncio.create_task(b.watch(interval=0.05))
    try:
        await a.modify("bauamt", lambda d: directory.close_at_once(d, "Heute zu"))
        async with asyncio.timeout(5):
            while not b.departments["bauamt"].closed_now:  # noqa: ASYNC110 - another node's poll, no event
                await asyncio.sleep(0.02)
        assert b.departments["bauamt"].closed_message == "Heute zu"
        assert ({"bauamt"}, False) in heard
    finally:
        watcher.cancel()
        for s in stores:
            await s.close()


BASE = Department("amt", "Amt")


@pytest.mark.parametrize(("changes", "admin", "expected"), [
    ({"name": "  Neues   Amt "}, False, {"name": "Neues Amt"}),
    ({"hours": {"mon": "08:00-12:00"}}, False, {"hours": {"mon": ["08:00-12:00"], "tue": [], "wed": [], "thu": [],
                                                          "fri": [], "sat": [], "sun": []}}),
    ({"hours": None}, False, {"hours": None}),
    ({"queue_cap": 5, "service_minutes": 12}, False, {"queue_cap": 5, "service_minutes": 12.0}),
    ({"queue_cap": None}, False, {"queue_cap": None}),
    ({"require_name": True, "require_concern": True}, False, {"require_name": True, "require_concern": True}),
    ({"closures": [{"start": "2026-12-24", "end": "2026-12-26", "message": "Weihnachten"}]}, False,
     {"closures": [{"start": "2026-12-24", "end": "2026-12-26", "message": "Weihnachten"}]}),
    ({"recording": "on_request", "recording_purpose": "Schulung", "recording_retention_days": 7}, True,
     {"recording": "on_request", "recording_retention_days": 7}),
])
def test_legal_edits(changes: dict[str, Any], admin: bool, expected: dict[str, Any]) -> None:
    result = directory.department_to_dict(directory.edit(BASE, changes, admin=admin))
    assert {k: result[k] for k in expected} == expected
    assert result["id"] == "amt"


@pytest.mark.parametrize(("changes", "admin", "says"), [
    ({"id": "other"}, True, "cannot be edited"),
    ({"closed_now": True}, True, "cannot be edited"),
    ({"colour": "red"}, True, "cannot be edited"),
    ({"name": ""}, True, "name is required"),
    ({"name": 5}, True, "name must be text"),
    ({"name": "x" * 81}, True, "longer than 80"),
    ({"hours": {"mon": "8-12"}}, True, "invalid opening slot"),
    ({"hours": {"moon": "08:00-12:00"}}, True, "unknown day"),
    ({"hours": {"mon": "12:00-08:00"}}, True, "ends before it starts"),
    ({"hours": {"mon": ["08:00-12:00", "10:00-14:00"]}}, True, "opening slots overlap on mon"),  # probing
    ({"hours": ["mon"]}, True, "hours must map"),
    ({"queue_cap": 0}, True, "queue_cap"),
    ({"queue_cap": True}, True, "queue_cap"),
    ({"queue_cap": "5"}, True, "queue_cap"),
    ({"service_minutes": 0}, True, "service_minutes"),
    ({"service_minutes": 10_000}, True, "service_minutes"),
    ({"require_name": "yes"}, True, "true or false"),
    ({"closures": [{"start": "2026-12-26", "end": "2026-12-24"}]}, True, "ends before it starts"),
    ({"closures": [{"start": "tomorrow"}]}, True, "invalid closure date"),
    ({"closures": "xmas"}, True, "must be a list"),
    ({"recording": "on_request"}, True, "recording_purpose"),
    ({"recording": "always"}, True, "recording must be"),
    ({"recording_purpose": "x"}, False, "only an administrator"),
    ("name", True, "JSON object"),
    # Texts citizens read are one plain line (review of issue 10): no control or bidi override characters.
    ({"name": "Amt\u202e"}, True, r"name contains a control character \(U\+202E\)"),
    ({"description": "a\x00b"}, True, r"description contains a control character \(U\+0000\)"),
    ({"closures": [{"start": "2026-12-24", "message": "zu\x07"}]}, True,
     r"closure message \(2026-12-24\) contains a control character"),
    ({"closures": [{"start": "2026-12-24", "until": "2026-12-26"}]}, True, "unknown field.*in a closure: until"),
])
def test_illegal_edits(changes: Any, admin: bool, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        directory.edit(BASE, changes, admin=admin)


def test_close_and_reopen() -> None:
    closed = directory.close_at_once(BASE, "  Heute\nwegen Betriebsversammlung geschlossen ")
    assert (closed.closed_now, closed.closed_message) == (True, "Heute wegen Betriebsversammlung geschlossen")
    assert directory.reopen(closed) == BASE
    with pytest.raises(InvalidInput):
        directory.close_at_once(BASE, "x" * 301)
    with pytest.raises(InvalidInput):
        directory.close_at_once(BASE, 5)


@pytest.mark.parametrize(("raw", "says"), [
    ({"id": "Neu!", "name": "Neu"}, "invalid department id"),
    ({"name": "Neu"}, "id is required"),
    ({"id": "neu", "name": "Neu", "closed_now": True}, "starts open"),
    ([], "JSON object"),
    ({"id": "neu", "name": "Neu\u2066"}, "name contains a control character"),
])
def test_illegal_creations(raw: Any, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        directory.create(raw)


def test_dict_form_round_trips_and_is_json() -> None:
    for d in (FULL, PLAIN, NEVER):
        raw = json.loads(json.dumps(directory.department_to_dict(d)))
        assert directory.department_from_dict(raw) == d


@pytest.mark.parametrize(("body", "expected"), [
    ({}, ("", True)),
    ({"message": " Heute\tzu ", "keep_places": False}, ("Heute zu", False)),
])
def test_parse_close(body: Any, expected: tuple[str, bool]) -> None:
    assert directory.parse_close(body) == expected


@pytest.mark.parametrize("body", [{"keep_places": "no"}, {"message": 5}, {"message": "x" * 301}, {"why": "x"}, [],
                                  {"message": "zu\u202e"}, {"message": "zu\x1b[31m"}])
def test_parse_close_refuses(body: Any) -> None:
    with pytest.raises(InvalidInput):
        directory.parse_close(body)


@pytest.mark.parametrize(("waiting", "active", "removable"), [(0, 0, True), (1, 0, False), (0, 1, False)])
def test_check_removable(waiting: int, active: int, removable: bool) -> None:
    if removable:
        directory.check_removable(waiting, active)
    else:
        with pytest.raises(directory.DepartmentBusy):
            directory.check_removable(waiting, active)

