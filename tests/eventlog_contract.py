"""The contract of the statistics event log stores (server/store/eventlog.py), run on SQLite and on Redis
by tests/test_stats_store.py. Every answer is compared with the pure reference
(``server.stats.report.sum_counters`` / ``count_duty`` over ``server.stats.aggregate.fold``)."""

from __future__ import annotations

import random
from datetime import date, datetime
from zoneinfo import ZoneInfo

from server.stats.aggregate import duty_marks, fold
from server.stats.log import LogEntry, pseudonym
from server.stats.report import count_duty, sum_counters
from server.store.eventlog import EventLogStore

KEY = b"test pseudonym key"
TZ = ZoneInfo("Europe/Berlin")
DAY = date(2026, 3, 2).toordinal()  # a Monday


def at(day_offset: int, hour: int, minute: int = 0) -> float:
    return datetime.fromordinal(DAY + day_offset).replace(hour=hour, minute=minute, tzinfo=TZ).timestamp()


def sample() -> list[LogEntry]:
    a, b = "buergerbuero", "bauamt"
    t = [pseudonym("ticket", f"t{i}", KEY) for i in range(5)]
    clara, bernd = pseudonym("clerk", "clara", KEY), pseudonym("clerk", "bernd", KEY)
    return [
        LogEntry(at(0, 9), "joined", a, t[0], language="de"),
        LogEntry(at(0, 9, 5), "joined", a, t[1], language="en", interpreter=True),
        LogEntry(at(0, 9, 10), "called", a, t[0], state="waiting", wait=600.0, language="de"),
        LogEntry(at(0, 9, 21), "finished", a, t[0], state="in_consultation", duration=600.0, language="de"),
        LogEntry(at(0, 9, 30), "called", a, t[1], state="waiting", wait=1500.0, language="en", interpreter=True),
        LogEntry(at(0, 9, 32), "no_show", a, t[1], state="called", language="en", interpreter=True),
        LogEntry(at(0, 10), "joined", a, t[2], language="tr"),
        LogEntry(at(0, 10, 16), "transferred", b, t[2], source=a, state="in_consultation", duration=600.0,
                 language="tr"),
        LogEntry(at(0, 10, 30), "joined", b, t[3], language="de"),
        LogEntry(at(0, 11), "expired", b, t[3], state="waiting", language="de"),
        LogEntry(at(1, 8), "joined", a, t[4], language="de"),
        LogEntry(at(1, 8, 5), "returned", a, t[4], state="in_consultation", duration=210.0, language="de"),
        LogEntry(at(0, 9), "on_duty", a, clara),
        LogEntry(at(0, 10, 5), "on_duty", a, bernd),
        LogEntry(at(0, 10, 5), "on_duty", b, bernd),
        LogEntry(at(1, 8), "on_duty", a, clara),
        LogEntry(at(8, 8), "on_duty", a, clara),
    ]


def by_day(days: range) -> dict[int, int]:
    return {d: d - days.start for d in days}


def by_week(days: range) -> dict[int, int]:
    return {d: (d - days.start) // 7 for d in days}


async def test_entries_round_trip(eventlog: EventLogStore) -> None:
    entries = sample()
    await eventlog.append(entries)
    got = await eventlog.entries(DAY, DAY + 8)
    assert got == sorted(entries, key=lambda e: e.at)
    assert await eventlog.entries(DAY + 1, DAY + 1) == sorted((e for e in entries if e.at >= at(1, 0)
                                                              and e.at < at(2, 0)), key=lambda e: e.at)
    assert await eventlog.entries(DAY - 10, DAY - 1) == []


async def test_day_sums_match_the_reference(eventlog: EventLogStore) -> None:
    entries = sample()
    await eventlog.append(entries)
    hourly = fold(entries, TZ)
    days = range(DAY, DAY + 14)
    for departments in (["buergerbuero"], ["bauamt"], ["buergerbuero", "bauamt"], ["nowhere"], []):
        for groups in (by_day(days), by_week(days)):
            assert await eventlog.sums(departments, groups, False) == sum_counters(hourly, departments, groups, False)
        assert await eventlog.sums(departments, by_day(days), True) == sum_counters(
            hourly, departments, by_day(days), True)
    # The town hall's total kept at write time is the sum of its departments.
    for groups in (by_day(days), by_week(days)):
        assert await eventlog.sums(["*"], groups, False) == await eventlog.sums(["buergerbuero", "bauamt"], groups,
                                                                                False)
        both, total = (await eventlog.duty(["buergerbuero", "bauamt"], groups, True),
                       await eventlog.duty(["*"], groups, True))
        assert (dict(both.per_period), both.total) == (dict(total.per_period), total.total)
    # Spot checks by hand: Monday, both departments.
    monday = (await eventlog.sums(["buergerbuero", "bauamt"], {DAY: 0}, False))[(0, -1)]
    assert (monday["arr"], monday["srv"], monday["abd"], monday["nos"], monday["tin"], monday["tout"]) == (
        4, 1, 1, 1, 1, 1)
    assert (monday["wn"], monday["wms"], monday["cn"], monday["cms"]) == (2, 2_100_000, 2, 1_200_000)
    assert (monday["l:de"], monday["l:en"], monday["l:tr"], monday["int"]) == (2, 1, 1, 1)


async def test_batches_add_up(eventlog: EventLogStore) -> None:
    entries = sample()
    for e in entries:  # one at a time, as the recorder may
        await eventlog.append([e])
    await eventlog.append([])
    days = range(DAY, DAY + 14)
    hourly = fold(entries, TZ)
    assert await eventlog.sums(["buergerbuero", "bauamt"], by_week(days), False) == sum_counters(
        hourly, ["buergerbuero", "bauamt"], by_week(days), False)


async def test_clerks_on_duty_are_distinct(eventlog: EventLogStore) -> None:
    entries = sample()
    await eventlog.append(entries)
    await eventlog.append(entries[-5:])  # a second node marks the same clerks: counted once
    marks = duty_marks(entries, TZ)
    days = range(DAY, DAY + 14)
    for departments in (["buergerbuero"], ["bauamt"], ["buergerbuero", "bauamt"], []):
        for groups in (by_day(days), by_week(days)):
            for hourly in (False, True):
                want = count_duty(marks, departments, groups, hourly)
                got = await eventlog.duty(departments, groups, hourly)
                assert (dict(got.per_period), got.total) == (dict(want.per_period), want.total)
    both = await eventlog.duty(["buergerbuero", "bauamt"], by_week(days), False)
    assert dict(both.per_period) == {(0, -1): 2, (1, -1): 1} and both.total == 2
    hours = await eventlog.duty(["buergerbuero", "bauamt"], {DAY: 0}, True)
    assert dict(hours.per_period) == {(0, 9): 1, (0, 10): 1}


async def test_sweep_deletes_old_days_only(eventlog: EventLogStore) -> None:
    entries = sample()
    await eventlog.append(entries)
    await eventlog.sweep(DAY + 1)
    kept = [e for e in entries if e.at >= at(1, 0)]
    assert await eventlog.entries(DAY - 5, DAY + 10) == sorted(kept, key=lambda e: e.at)
    days = range(DAY - 5, DAY + 14)
    assert await eventlog.sums(["buergerbuero", "bauamt"], by_day(days), False) == sum_counters(
        fold(kept, TZ), ["buergerbuero", "bauamt"], by_day(days), False)
    assert (await eventlog.duty(["buergerbuero"], by_day(days), False)).total == 1
    await eventlog.sweep(DAY + 1)  # again: nothing more to do
    await eventlog.sweep(DAY + 100)
    assert await eventlog.entries(DAY - 5, DAY + 10) == []
    assert await eventlog.sums(["buergerbuero"], by_day(days), False) == {}


async def test_a_bulk_batch_matches_the_reference(eventlog: EventLogStore) -> None:
    """Tens of thousands of entries in one call (the bench's fast path), over several weeks."""
    rng = random.Random(7)
    kinds = ["joined", "called", "finished", "left", "no_show", "transferred", "returned", "on_duty"]
    departments = ["d1", "d2", "d3"]
    entries = []
    for i in range(12_000):
        kind = rng.choice(kinds)
        d = rng.choice(departments)
        entries.append(LogEntry(
            at=at(rng.randrange(40), rng.randrange(7, 18), rng.randrange(60)), kind=kind, department=d,
            subject=pseudonym("clerk" if kind == "on_duty" else "ticket", str(i % 50), KEY),
            source=rng.choice([x for x in departments if x != d]) if kind == "transferred" else "",
            wait=rng.uniform(0, 5000) if kind == "called" else None,
            duration=rng.uniform(30, 3000) if kind in ("finished", "returned", "transferred") else None,
            language=rng.choice(["de", "en", "ar"]), interpreter=rng.random() < 0.05,
        ))
    await eventlog.append(entries)
    hourly = fold(entries, TZ)
    days = range(DAY, DAY + 42)
    for groups in (by_day(days), by_week(days)):
        assert await eventlog.sums(departments, groups, False) == sum_counters(hourly, departments, groups, False)
        assert await eventlog.sums(["d2"], groups, False) == sum_counters(hourly, ["d2"], groups, False)
    assert await eventlog.sums(["d1"], by_day(range(DAY, DAY + 31)), True) == sum_counters(
        hourly, ["d1"], by_day(range(DAY, DAY + 31)), True)
    want = count_duty(duty_marks(entries, TZ), departments, by_week(days), False)
    got = await eventlog.duty(departments, by_week(days), False)
    assert (dict(got.per_period), got.total) == (dict(want.per_period), want.total)
    assert len(await eventlog.entries(DAY, DAY + 41)) == len(entries)
