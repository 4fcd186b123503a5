"""The event log stores: one contract (tests/eventlog_contract.py) on SQLite and on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.store.eventlog import EventLogStore, RedisEventLog, SqliteEventLog

from .eventlog_contract import (  # noqa: F401 - the contract's tests run here
    TZ,
    test_a_bulk_batch_matches_the_reference,
    test_batches_add_up,
    test_clerks_on_duty_are_distinct,
    test_day_sums_match_the_reference,
    test_entries_round_trip,
    test_sweep_deletes_old_days_only,
)


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("redis", marks=pytest.mark.redis)])
async def eventlog(request: pytest.FixtureRequest) -> AsyncIterator[EventLogStore]:
    store: EventLogStore
    if request.param == "sqlite":
        store = SqliteEventLog(request.getfixturevalue("tmp_path") / "stats.sqlite3", TZ)
    else:
        store = RedisEventLog(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"), TZ)
    try:
        yield store
    finally:
        await store.close()
