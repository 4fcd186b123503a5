"""Opening hours, special closures and the next opening time (pure, table-driven)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from server.queue.errors import InvalidInput
from server.rooms.departments import Closure, Department, parse_closures, parse_hours

TZ = ZoneInfo("Europe/Berlin")
HOURS = parse_hours({"mon": "08:00-12:00, 14:00-16:00", "wed": "08:00-12:00"})
XMAS = Closure(date(2026, 12, 21), date(2026, 12, 21), "Heute wegen Betriebsversammlung geschlossen")


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 12, day, hh, mm, tzinfo=TZ)  # 2026-12-07 is a Monday


@pytest.mark.parametrize(("dept", "now", "expected"), [
    (Department("a", "A", hours=HOURS), at(7, 9), at(7, 9)),  # open now
    (Department("a", "A", hours=HOURS), at(7, 7, 30), at(7, 8)),  # before the first slot
    (Department("a", "A", hours=HOURS), at(7, 12, 30), at(7, 14)),  # lunch break
    (Department("a", "A", hours=HOURS), at(7, 16), at(9, 8)),  # after the last slot: Wednesday
    (Department("a", "A", hours=HOURS), at(9, 13), at(14, 8)),  # Wednesday afternoon: next Monday
    (Department("a", "A", hours=HOURS, closures=(XMAS,)), at(18, 12), at(23, 8)),  # Monday 21st closed
    (Department("a", "A", hours=HOURS, closures=(XMAS,)), at(21, 9), at(23, 8)),  # during the closure
    (Department("a", "A", hours=HOURS, closed_now=True), at(7, 9), None),  # closed by a lead
    (Department("a", "A"), at(7, 3), at(7, 3)),  # no hours: always open
    (Department("a", "A", closures=(XMAS,)), at(21, 3), at(22, 0)),  # always open but for a closure
    (Department("a", "A", hours=parse_hours({})), at(7, 9), None),  # no slots at all: never opens
])
def test_next_opening(dept: Department, now: datetime, expected: datetime | None) -> None:
    assert dept.next_opening(now) == expected
    assert dept.is_open(now) == (expected == now)


def test_closed_reason() -> None:
    d = Department("a", "A", hours=HOURS, closures=(XMAS,))
    assert d.closed_reason(at(21, 9)) == XMAS.message
    assert d.closed_reason(at(7, 9)) is None
    lead = Department("a", "A", closed_now=True, closed_message="Wegen Krankheit geschlossen")
    assert lead.closed_reason(at(7, 9)) == "Wegen Krankheit geschlossen"


@pytest.mark.parametrize(("raw", "error"), [
    ("x", "must be a list"),
    ([{"end": "2026-12-24"}], "start date"),
    ([{"start": "2026-13-01"}], "invalid closure date"),
    ([{"start": "2026-12-24", "end": "2026-12-23"}], "ends before it starts"),
    ([{"start": "2026-12-24", "message": 3}], "must be text"),
])
def test_parse_closures_refuses(raw: object, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse_closures(raw)


def test_parse_closures() -> None:
    closures = parse_closures([{"start": "2026-12-31", "message": " Silvester "}, {"start": "2026-12-24",
                                                                                 "end": "2026-12-26"}])
    assert [c.to_dict() for c in closures] == [
        {"start": "2026-12-24", "end": "2026-12-26", "message": ""},
        {"start": "2026-12-31", "end": "2026-12-31", "message": "Silvester"},
    ]
