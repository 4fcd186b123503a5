"""The pure statistics core (server/stats/): log entries from queue events, counters, histogram quantiles,
the query, and figures that match a hand-computed day of a seeded event log."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from server.queue import core
from server.queue.errors import InvalidInput
from server.queue.model import Clerk, JoinRequest, Presence, Ticket, TicketEvent
from server.stats import buckets
from server.stats.aggregate import by_day, contributions, duty_marks, fold, local_slot
from server.stats.log import LogEntry, duty_entries, entries_from_events, pseudonym
from server.stats.report import count_duty, csv_rows, parse_query, report, sum_counters

from .app_fixtures import make_settings

KEY = b"test pseudonym key"
TZ = ZoneInfo("Europe/Berlin")
MONDAY = date(2026, 3, 2)
SETTINGS = make_settings()
A, B = SETTINGS.department("buergerbuero"), SETTINGS.department("bauamt")
assert A is not None and B is not None
CLARA = Clerk("clara", "Clara Schulz", frozenset({"buergerbuero"}))
BERND = Clerk("bernd", "Bernd Roth", frozenset({"buergerbuero", "bauamt"}))
MARKER = "Zyxwv Markername"


def no_show(ticket: Ticket, clerk: Clerk, now: float) -> tuple[Ticket, list[TicketEvent]]:
    return core.no_show(ticket, clerk, now, answer_seconds=0)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> float:
    return datetime.fromordinal(MONDAY.toordinal() + day).replace(
        hour=hour, minute=minute, second=second, tzinfo=TZ).timestamp()


class Log:
    """Runs commands of the queue core with explicit times and collects the log entries."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.tickets: dict[str, Ticket] = {}
        self.seq = 0

    def _add(self, result: tuple[Ticket, list[TicketEvent]]) -> Ticket:
        ticket, events = result
        self.tickets[ticket.id] = ticket
        self.entries += entries_from_events(events, KEY)
        return ticket

    def join(self, tid: str, when: float, language: str = "de", interpreter: bool = False, dept: Any = A) -> None:
        self.seq += 1
        self._add(core.join(dept, is_open=True, waiting_count=0, request=JoinRequest(
            MARKER, f"{MARKER} concern", language, interpreter, True), ticket_id=tid, token_hash="h" * 64,
            seq=self.seq, now=when))

    def do(self, tid: str, command: Any, *args: Any) -> None:
        self._add(command(self.tickets[tid], *args))

    def duty(self, clerk: Clerk, when: float, presence: Presence = Presence.AVAILABLE) -> None:
        self.entries += duty_entries(when, clerk.username, clerk.departments, presence, KEY)


def seeded() -> Log:
    """Monday and Tuesday of two departments; every figure below is computed by hand from this."""
    log = Log()
    log.duty(CLARA, at(0, 9))
    log.join("t1", at(0, 9))
    log.join("t2", at(0, 9, 5), "en", True)
    log.do("t1", core.call, CLARA, at(0, 9, 10))          # waited 600 s
    log.do("t1", core.start, at(0, 9, 11))
    log.do("t1", core.finish, CLARA, at(0, 9, 21))        # consultation 600 s
    log.join("t3", at(0, 9, 20))
    log.do("t2", core.call, CLARA, at(0, 9, 30))          # waited 1500 s
    log.do("t2", no_show, CLARA, at(0, 9, 32))
    log.do("t3", core.leave, at(0, 9, 40))                # abandoned while waiting
    log.join("t4", at(0, 10), "tr")
    log.duty(BERND, at(0, 10, 5), Presence.BUSY)
    log.do("t4", core.call, BERND, at(0, 10, 5))          # waited 300 s
    log.do("t4", core.start, at(0, 10, 6))
    log.do("t4", core.transfer, BERND, B, f"{MARKER} note", at(0, 10, 16))  # consultation 600 s in A
    log.do("t4", core.call, BERND, at(0, 10, 20))         # waited 240 s in B
    log.do("t4", core.start, at(0, 10, 21))
    log.do("t4", core.finish, BERND, at(0, 10, 51))       # consultation 1800 s in B
    log.join("t5", at(0, 10, 30), dept=B)
    log.do("t5", core.disconnect, at(0, 10, 31))
    log.do("t5", core.reconnect)
    log.do("t5", core.disconnect, at(0, 10, 40))
    log.do("t5", core.expire, at(0, 11), 300)             # abandoned: expired while waiting
    log.duty(CLARA, at(1, 8))
    log.duty(CLARA, at(1, 8, 30), Presence.AWAY)          # away: not on duty
    log.join("t6", at(1, 8))
    log.do("t6", core.call, CLARA, at(1, 8, 1))           # waited 60 s
    log.do("t6", core.start, at(1, 8, 1, 30))
    log.do("t6", core.return_to_queue, CLARA, at(1, 8, 5))  # consultation 210 s, back to the queue
    log.do("t6", core.call, CLARA, at(1, 8, 6))           # waited 60 s
    log.do("t6", core.start, at(1, 8, 6, 30))
    log.do("t6", core.finish, CLARA, at(1, 8, 16, 30))    # consultation 600 s
    return log


def run(entries: list[LogEntry], params: dict[str, str], allowed: tuple[str, ...] = ("buergerbuero", "bauamt"),
        now: float | None = None) -> dict[str, Any]:
    """The report as a lead of ``allowed`` gets it; checked to be the same as an admin's (the ``*`` total)."""
    results = []
    for everything in (False, True):
        query = parse_query(params, now=now or at(3, 12), tz=TZ, allowed=list(allowed), everything=everything)
        groups = query.day_groups()
        sums = sum_counters(fold(entries, TZ), query.sources, groups, query.hourly)
        duty = count_duty(duty_marks(entries, TZ), query.sources, groups, query.hourly)
        results.append(report(query, sums, duty))
    assert results[0] == results[1]
    return results[0]


# -- log entries --
def test_entries_carry_no_personal_data() -> None:
    log = seeded()
    for e in log.entries:
        text = repr(e.to_dict())
        assert MARKER not in text and "h" * 64 not in text
        for ticket_id in log.tickets:
            assert f"'{ticket_id}'" not in text
    assert {e.kind for e in log.entries} == {
        "joined", "called", "started", "finished", "no_show", "left", "transferred", "expired", "returned",
        "on_duty"}  # disconnected/reconnected are not transitions


@pytest.mark.parametrize(("kind", "fields"), [
    ("joined", {"at": at(0, 9), "department": "buergerbuero", "state": "", "wait": None, "language": "de"}),
    ("called", {"at": at(0, 9, 10), "state": "waiting", "wait": 600.0}),
    ("started", {"at": at(0, 9, 11), "state": "called", "wait": None, "duration": None}),
    ("finished", {"at": at(0, 9, 21), "state": "in_consultation", "duration": 600.0}),
])
def test_entries_of_one_ticket(kind: str, fields: dict[str, Any]) -> None:
    entry = next(e for e in seeded().entries if e.kind == kind and e.subject == pseudonym("ticket", "t1", KEY))
    for name, value in fields.items():
        assert getattr(entry, name) == value, name


@pytest.mark.parametrize(("kind", "tid", "fields"), [
    ("no_show", "t2", {"state": "called", "language": "en", "interpreter": True}),
    ("left", "t3", {"state": "waiting", "at": at(0, 9, 40)}),
    ("transferred", "t4", {"department": "bauamt", "source": "buergerbuero", "duration": 600.0}),
    ("expired", "t5", {"department": "bauamt", "state": "waiting", "at": at(0, 11)}),
    ("returned", "t6", {"state": "in_consultation", "duration": 210.0, "at": at(1, 8, 5)}),
])
def test_entries_of_other_moves(kind: str, tid: str, fields: dict[str, Any]) -> None:
    entry = next(e for e in seeded().entries if e.kind == kind and e.subject == pseudonym("ticket", tid, KEY))
    for name, value in fields.items():
        assert getattr(entry, name) == value, name


@pytest.mark.parametrize(("presence", "count"), [
    (Presence.AVAILABLE, 2), (Presence.BUSY, 2), (Presence.AWAY, 0), (Presence.OFFLINE, 0)])
def test_duty_entries(presence: Presence, count: int) -> None:
    entries = duty_entries(at(0, 9), "bernd", BERND.departments, presence, KEY)
    assert len(entries) == count
    assert all(e.subject == pseudonym("clerk", "bernd", KEY) and e.subject != "bernd" for e in entries)


def test_log_entry_round_trip() -> None:
    for e in seeded().entries:
        assert LogEntry.from_dict(e.to_dict()) == e


# -- counters --
E = LogEntry
T0 = at(0, 9)


@pytest.mark.parametrize(("entry", "expected"), [
    (E(T0, "joined", "a", language="de"), [("a", "arr", 1), ("a", "l:de", 1)]),
    (E(T0, "joined", "a", language="ar", interpreter=True), [("a", "arr", 1), ("a", "l:ar", 1), ("a", "int", 1)]),
    (E(T0, "called", "a", wait=61.5), [("a", "wn", 1), ("a", "wms", 61500), ("a", f"w:{buckets.bucket(61.5)}", 1)]),
    (E(T0, "started", "a"), []),
    (E(T0, "finished", "a"), [("a", "srv", 1)]),
    (E(T0, "finished", "a", duration=90.0), [("a", "srv", 1), ("a", "cn", 1), ("a", "cms", 90000),
                                             ("a", f"c:{buckets.bucket(90)}", 1)]),
    (E(T0, "no_show", "a"), [("a", "nos", 1)]),
    (E(T0, "left", "a", state="waiting"), [("a", "abd", 1)]),
    (E(T0, "left", "a", state="called"), [("a", "abd", 1)]),
    (E(T0, "expired", "a", state="waiting"), [("a", "abd", 1)]),
    (E(T0, "returned", "a"), [("a", "ret", 1)]),
    (E(T0, "rejoined", "a", state="no_show"), [("a", "rej", 1)]),
    (E(T0, "department_closed", "a", state="waiting"), [("a", "cls", 1)]),
    (E(T0, "transferred", "b", source="a"), [("b", "tin", 1), ("a", "tout", 1)]),
    (E(T0, "transferred", "b", source="a", duration=30.0), [("b", "tin", 1), ("a", "tout", 1), ("a", "cn", 1),
                                                            ("a", "cms", 30000), ("a", "c:6", 1)]),
    (E(T0, "on_duty", "a", "x"), []),
])
def test_contributions(entry: LogEntry, expected: list[tuple[str, str, int]]) -> None:
    assert contributions(entry) == expected


def test_fold_by_local_hour_and_day() -> None:
    entries = [E(at(0, 9, 59), "joined", "a"), E(at(0, 10), "joined", "a"), E(at(0, 10, 30), "joined", "b"),
               E(at(0, 23, 59), "joined", "a"), E(at(1, 0), "joined", "a")]
    hourly = fold(entries, TZ)
    day = MONDAY.toordinal()
    assert {k: v["arr"] for k, v in hourly.items()} == {
        ("a", day, 9): 1, ("a", day, 10): 1, ("b", day, 10): 1, ("a", day, 23): 1, ("a", day + 1, 0): 1,
        ("*", day, 9): 1, ("*", day, 10): 2, ("*", day, 23): 1, ("*", day + 1, 0): 1}
    assert {k: v["arr"] for k, v in by_day(hourly).items()} == {
        ("a", day): 3, ("b", day): 1, ("a", day + 1): 1, ("*", day): 4, ("*", day + 1): 1}


@pytest.mark.parametrize(("moment", "slot"), [
    (datetime(2026, 3, 29, 1, 59, tzinfo=ZoneInfo("UTC")), (date(2026, 3, 29).toordinal(), 3)),  # summer time
    (datetime(2026, 3, 28, 23, 30, tzinfo=ZoneInfo("UTC")), (date(2026, 3, 29).toordinal(), 0)),
    (datetime(2026, 10, 25, 0, 30, tzinfo=ZoneInfo("UTC")), (date(2026, 10, 25).toordinal(), 2)),
    (datetime(2026, 10, 25, 1, 30, tzinfo=ZoneInfo("UTC")), (date(2026, 10, 25).toordinal(), 2)),  # 2 o'clock twice
])
def test_local_slots_follow_the_clock(moment: datetime, slot: tuple[int, int]) -> None:
    assert local_slot(moment.timestamp(), TZ) == slot


# -- histogram --
@pytest.mark.parametrize(("seconds", "index"), [
    (-3, 0), (0, 0), (4.99, 0), (5, 1), (59.9, 11), (60, 12), (62.99, 12), (63, 13), (float("nan"), 0),
    (10 ** 12, buckets.MAX_BUCKET)])
def test_bucket_edges(seconds: float, index: int) -> None:
    assert buckets.bucket(seconds) == index


def test_every_value_lies_in_its_bucket() -> None:
    rng = random.Random(1)
    for _ in range(5000):
        x = rng.uniform(0, 200_000)
        i = buckets.bucket(x)
        assert buckets.lower(i) <= x < buckets.upper(i)


@pytest.mark.parametrize("seed", range(6))
def test_quantiles_stay_within_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.expovariate(1 / rng.choice([30, 300, 1800])) for _ in range(rng.randrange(1, 400))]
    hist: dict[int, int] = {}
    for x in samples:
        hist[buckets.bucket(x)] = hist.get(buckets.bucket(x), 0) + 1
    for q in (0.5, 0.9):
        estimate, exact = buckets.quantile(hist, q), buckets.exact_quantile(samples, q)
        assert estimate is not None and exact is not None
        assert buckets.within_bound(estimate, exact), (q, estimate, exact)
    assert buckets.quantiles(hist, (0.5, 0.9)) == [buckets.quantile(hist, 0.5), buckets.quantile(hist, 0.9)]
    assert buckets.quantiles({}, (0.5, 0.9)) == [None, None]


@pytest.mark.parametrize(("samples", "q", "rank_value"), [
    ([240, 300, 600, 1500], 0.5, 300), ([240, 300, 600, 1500], 0.9, 1500), ([60, 60], 0.5, 60), ([7], 0.9, 7),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9, 9), ([], 0.5, None)])
def test_nearest_rank(samples: list[float], q: float, rank_value: float | None) -> None:
    assert buckets.exact_quantile(samples, q) == rank_value
    hist: dict[int, int] = {}
    for x in samples:
        hist[buckets.bucket(x)] = hist.get(buckets.bucket(x), 0) + 1
    estimate = buckets.quantile(hist, q)
    assert (estimate is None) == (rank_value is None)
    if estimate is not None and rank_value is not None:
        assert buckets.within_bound(estimate, rank_value)


# -- the query --
BOTH = ("buergerbuero", "bauamt")
NOW = at(3, 12)  # Thursday 2026-03-05


@pytest.mark.parametrize(("params", "expected"), [
    ({}, ("all", ("buergerbuero", "bauamt"), "day", "2026-02-04", "2026-03-05")),
    ({"department": "bauamt", "granularity": "hour"}, ("bauamt", ("bauamt",), "hour", "2026-03-05", "2026-03-05")),
    ({"granularity": "week", "from": "2026-03-04", "to": "2026-03-10"},
     ("all", ("buergerbuero", "bauamt"), "week", "2026-03-02", "2026-03-15")),
    ({"from": "2026-01-01"}, ("all", ("buergerbuero", "bauamt"), "day", "2026-01-01", "2026-01-30")),
    ({"to": "2026-01-31", "granularity": "day"}, ("all", BOTH, "day", "2026-01-02", "2026-01-31")),
    ({"from": "2025-03-05", "to": "2026-03-05"}, ("all", BOTH, "day", "2025-03-05", "2026-03-05")),
    ({"granularity": "hour", "from": "2026-02-01", "to": "2026-03-03"},
     ("all", ("buergerbuero", "bauamt"), "hour", "2026-02-01", "2026-03-03")),
])
def test_queries(params: dict[str, str], expected: tuple[Any, ...]) -> None:
    q = parse_query(params, now=NOW, tz=TZ, allowed=["buergerbuero", "bauamt"])
    assert (q.department, q.departments, q.granularity, q.first.isoformat(), q.last.isoformat()) == expected


@pytest.mark.parametrize("params", [
    {"granularity": "month"}, {"from": "2026-13-01"}, {"to": "yesterday"}, {"from": "2026-3-1"},
    {"from": "2026-03-05", "to": "2026-03-04"}, {"granularity": "hour", "from": "2026-01-01", "to": "2026-03-01"},
    {"from": "2020-01-01", "to": "2026-01-01"}, {"from": "9999-12-30", "to": "9999-12-31"},
    {"granularity": "week", "from": "0001-01-01", "to": "0001-01-02"},
])
def test_bad_queries(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        parse_query(params, now=NOW, tz=TZ, allowed=["buergerbuero"])


@pytest.mark.parametrize(("department", "allowed"), [("bauamt", ["buergerbuero"]), ("nowhere", ["buergerbuero"]),
                                                     ("buergerbuero", [])])
def test_departments_outside_the_scope(department: str, allowed: list[str]) -> None:
    with pytest.raises(LookupError):
        parse_query({"department": department}, now=NOW, tz=TZ, allowed=allowed)


@pytest.mark.parametrize(("params", "everything", "sources"), [
    ({}, True, ("*",)), ({}, False, ("buergerbuero", "bauamt")), ({"department": "bauamt"}, True, ("bauamt",))])
def test_what_the_store_is_asked_for(params: dict[str, str], everything: bool, sources: tuple[str, ...]) -> None:
    query = parse_query(params, now=NOW, tz=TZ, allowed=list(BOTH), everything=everything)
    assert query.sources == sources


def test_periods_of_each_granularity() -> None:
    week = parse_query({"granularity": "week", "from": "2026-03-02", "to": "2026-03-15"}, now=NOW, tz=TZ, allowed=[])
    assert [p[2] for p in week.periods()] == ["2026-W10", "2026-W11"]
    assert set(week.day_groups().values()) == {0, 1}
    hour = parse_query({"granularity": "hour", "from": "2026-03-02", "to": "2026-03-03"}, now=NOW, tz=TZ, allowed=[])
    assert len(hour.periods()) == 48 and hour.periods()[9][2] == "2026-03-02 09:00"


# -- figures of the seeded log, by hand --
def close(estimate: float | None, exact: float) -> bool:
    return estimate is not None and buckets.within_bound(estimate, exact)


def test_day_figures_of_both_departments() -> None:
    result = run(seeded().entries, {"from": "2026-03-02", "to": "2026-03-03"})
    monday, tuesday = result["periods"]
    exact = {k: monday[k] for k in ("arrivals", "served", "abandoned", "no_shows", "transfers_in", "transfers_out",
                                    "returned", "calls", "wait_mean_s", "consultations", "consultation_mean_s",
                                    "clerks_on_duty", "interpreter", "languages")}
    assert exact == {"arrivals": 5, "served": 2, "abandoned": 2, "no_shows": 1, "transfers_in": 1, "transfers_out": 1,
                     "returned": 0, "calls": 4, "wait_mean_s": 660.0, "consultations": 3,
                     "consultation_mean_s": 1000.0, "clerks_on_duty": 2, "interpreter": 1,
                     "languages": {"de": 3, "en": 1, "tr": 1}}
    # waits 240, 300, 600, 1500: median (2nd) 300, p90 (4th) 1500; consultations 600, 600, 1800
    assert close(monday["wait_median_s"], 300) and close(monday["wait_p90_s"], 1500)
    assert close(monday["consultation_median_s"], 600) and close(monday["consultation_p90_s"], 1800)
    assert (tuesday["arrivals"], tuesday["served"], tuesday["returned"], tuesday["calls"], tuesday["wait_mean_s"],
            tuesday["consultations"], tuesday["consultation_mean_s"], tuesday["clerks_on_duty"]) == (
        1, 1, 1, 2, 60.0, 2, 405.0, 1)
    assert close(tuesday["wait_median_s"], 60) and close(tuesday["consultation_median_s"], 210)
    assert close(tuesday["consultation_p90_s"], 600)
    totals = result["totals"]
    assert (totals["arrivals"], totals["served"], totals["calls"], totals["wait_mean_s"], totals["clerks_on_duty"]) == (
        6, 3, 6, 460.0, 2)
    assert close(totals["wait_median_s"], 240) and close(totals["wait_p90_s"], 1500)


@pytest.mark.parametrize(("department", "expected"), [
    ("buergerbuero", {"arrivals": 4, "served": 1, "abandoned": 1, "no_shows": 1, "transfers_in": 0,
                      "transfers_out": 1, "calls": 3, "wait_mean_s": 800.0, "consultations": 2,
                      "consultation_mean_s": 600.0, "clerks_on_duty": 2, "interpreter": 1}),
    ("bauamt", {"arrivals": 1, "served": 1, "abandoned": 1, "no_shows": 0, "transfers_in": 1, "transfers_out": 0,
                "calls": 1, "wait_mean_s": 240.0, "consultations": 1, "consultation_mean_s": 1800.0,
                "clerks_on_duty": 1, "interpreter": 0}),
])
def test_day_figures_per_department(department: str, expected: dict[str, Any]) -> None:
    monday = run(seeded().entries, {"department": department, "from": "2026-03-02", "to": "2026-03-02"})["periods"][0]
    assert {k: monday[k] for k in expected} == expected


def test_hour_figures() -> None:
    result = run(seeded().entries, {"department": "buergerbuero", "granularity": "hour", "from": "2026-03-02",
                                    "to": "2026-03-02"})
    hours = {p["period"][-5:]: p for p in result["periods"]}
    assert len(hours) == 24
    nine, ten = hours["09:00"], hours["10:00"]
    assert (nine["arrivals"], nine["served"], nine["no_shows"], nine["abandoned"], nine["calls"],
            nine["wait_mean_s"], nine["clerks_on_duty"]) == (3, 1, 1, 1, 2, 1050.0, 1)
    assert (ten["arrivals"], ten["calls"], ten["transfers_out"], ten["consultations"], ten["clerks_on_duty"]) == (
        1, 1, 1, 1, 1)
    assert hours["08:00"]["arrivals"] == 0 and hours["08:00"]["wait_median_s"] is None


def test_week_figures_and_empty_weeks() -> None:
    result = run(seeded().entries, {"granularity": "week", "from": "2026-02-23", "to": "2026-03-08"})
    empty, week = result["periods"]
    assert empty["period"] == "2026-W09" and empty["arrivals"] == 0 and empty["wait_median_s"] is None
    assert (week["period"], week["arrivals"], week["served"], week["clerks_on_duty"]) == ("2026-W10", 6, 3, 2)


def test_csv_rows() -> None:
    result = run(seeded().entries, {"from": "2026-03-02", "to": "2026-03-03"})
    rows = csv_rows(result)
    assert rows[0][:3] == ["period", "department", "arrivals"] and rows[0][-3:] == ["lang_de", "lang_en", "lang_tr"]
    assert rows[1][:4] == ["2026-03-02", "all", "5", "2"] and rows[1][-3:] == ["3", "1", "1"]
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)


def test_report_shape_has_every_period() -> None:
    result = run([], {"from": "2026-03-02", "to": "2026-03-08"})
    assert len(result["periods"]) == 7 and result["totals"]["arrivals"] == 0
    assert math.isclose(result["quantile_bound"]["relative"], 0.025)
    assert dataclasses.is_dataclass(LogEntry)


def test_rejoin_and_closing_are_logged() -> None:
    log = Log()
    log.join("r1", at(0, 9))
    log.do("r1", core.call, CLARA, at(0, 9, 1))
    log.do("r1", no_show, CLARA, at(0, 9, 5))
    log.do("r1", lambda t, now: core.rejoin(t, now, rejoin_seconds=600, is_open=True, connected=True), at(0, 9, 7))
    log.join("r2", at(0, 9, 2))
    log.do("r2", core.department_closed, at(0, 9, 30))
    kinds = [(e.kind, e.state, e.at) for e in log.entries if e.kind in ("rejoined", "department_closed")]
    assert kinds == [("rejoined", "no_show", at(0, 9, 7)), ("department_closed", "waiting", at(0, 9, 30))]
    monday = run(log.entries, {"from": "2026-03-02", "to": "2026-03-02"})["periods"][0]
    assert (monday["arrivals"], monday["no_shows"], monday["rejoined"], monday["closed_out"], monday["abandoned"]) == (
        2, 1, 1, 1, 0)
