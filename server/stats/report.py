"""The statistics query and its figures: pure functions over the counters the stores keep.

A query names the departments (one, or all the account may see), a granularity (hour, day or week) and a
range of local days. The store sums the counters of those departments per period (``day_groups`` maps
each day to its period) and counts distinct clerks on duty; ``report`` turns that into figures per
period and for the whole range.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from ..queue.errors import InvalidInput
from . import buckets
from .aggregate import TOTAL

GRANULARITIES = ("hour", "day", "week")
MAX_DAYS = {"hour": 31, "day": 1100, "week": 1100}
"""The longest range per granularity (hourly figures for a month at most: 744 rows)."""
DEFAULT_DAYS = {"hour": 1, "day": 30, "week": 84}
ALL = "all"

Sums = Mapping[tuple[int, int], Mapping[str, int]]
"""(period index, hour or -1) -> summed counters."""


@dataclass(frozen=True)
class DutyCounts:
    per_period: Mapping[tuple[int, int], int]
    """(period index, hour or -1) -> distinct clerks on duty."""
    total: int
    """Distinct clerks on duty over the whole range."""


@dataclass(frozen=True)
class Query:
    department: str
    """A department id, or ``all``."""
    departments: tuple[str, ...]
    """The departments whose figures are summed."""
    granularity: str
    first: date
    last: date
    sources: tuple[str, ...] = ()
    """What the store is asked for: ``departments``, or ``*`` (the town hall's total kept at write time)."""

    @property
    def hourly(self) -> bool:
        return self.granularity == "hour"

    def day_groups(self) -> dict[int, int]:
        """Day ordinal -> period index (for hours: the day's index; the hour comes from the counters)."""
        first = self.first.toordinal()
        out = {}
        for day in range(first, self.last.toordinal() + 1):
            out[day] = (day - first) // 7 if self.granularity == "week" else day - first
        return out

    def periods(self) -> list[tuple[int, int, str, str]]:
        """(period index, hour or -1, label, start) for every period of the range, in order."""
        out = []
        if self.granularity == "week":
            monday = self.first
            index = 0
            while monday <= self.last:
                year, week, _ = monday.isocalendar()
                out.append((index, -1, f"{year}-W{week:02d}", monday.isoformat()))
                monday += timedelta(days=7)
                index += 1
            return out
        day = self.first
        index = 0
        while day <= self.last:
            if self.hourly:
                for hour in range(24):
                    out.append((index, hour, f"{day.isoformat()} {hour:02d}:00", f"{day.isoformat()}T{hour:02d}:00"))
            else:
                out.append((index, -1, day.isoformat(), day.isoformat()))
            day += timedelta(days=1)
            index += 1
        return out


def sum_counters(hourly: Mapping[tuple[str, int, int], Mapping[str, int]], departments: Sequence[str],
                 day_groups: Mapping[int, int], hourly_level: bool) -> dict[tuple[int, int], dict[str, int]]:
    """What a store's ``sums`` answers, from counters per (department, day, hour): the reference the
    stores are tested against."""
    wanted = set(departments)
    out: dict[tuple[int, int], dict[str, int]] = {}
    for (department, day, hour), counts in hourly.items():
        group = day_groups.get(day)
        if department not in wanted or group is None:
            continue
        target = out.setdefault((group, hour if hourly_level else -1), {})
        for field, value in counts.items():
            target[field] = target.get(field, 0) + value
    return out


def count_duty(marks: Iterable[tuple[str, int, int, str]], departments: Sequence[str], day_groups: Mapping[int, int],
               hourly_level: bool) -> DutyCounts:
    """Distinct clerks on duty per (group, hour) and overall, from (department, day, hour, clerk) marks."""
    wanted = set(departments)
    per: dict[tuple[int, int], set[str]] = defaultdict(set)
    everyone: set[str] = set()
    for department, day, hour, subject in marks:
        group = day_groups.get(day)
        if department not in wanted or group is None:
            continue
        per[(group, hour if hourly_level else -1)].add(subject)
        everyone.add(subject)
    return DutyCounts({k: len(v) for k, v in per.items()}, len(everyone))


def _date(value: str | None) -> date | None:
    """A date of the years 2000 to 2999 (further, the periods' arithmetic overflows), else None."""
    if not value or len(value) != 10:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    return day if 2000 <= day.year <= 2999 else None


def parse_query(params: Mapping[str, str], *, now: float, tz: tzinfo, allowed: Sequence[str],
                everything: bool = False) -> Query:
    """Read ``department`` (an id or ``all``), ``granularity`` (hour, day, week), ``from`` and ``to``
    (local dates, YYYY-MM-DD; defaults: a range ending today). ``allowed`` are the departments the account
    may see; a department outside them raises ``LookupError`` (the caller answers 404). ``everything``: the
    account sees every department (an admin), so "all" reads the town hall's total (``*``), which also
    holds departments removed since.
    Weeks run Monday to Sunday: the range widens to whole weeks."""
    department = params.get("department") or ALL
    if department == ALL:
        departments = tuple(allowed)
    elif department in allowed:
        departments = (department,)
    else:
        raise LookupError(department)
    granularity = params.get("granularity") or "day"
    if granularity not in GRANULARITIES:
        raise InvalidInput("granularity must be hour, day or week")
    today = datetime.fromtimestamp(now, tz).date()
    dates = {}
    for key in ("from", "to"):
        raw = params.get(key)
        parsed = _date(raw)
        if raw and parsed is None:
            raise InvalidInput(f"{key} must be a date (YYYY-MM-DD) of the years 2000 to 2999")
        dates[key] = parsed
    span = timedelta(days=DEFAULT_DAYS[granularity] - 1)
    last = dates["to"] or (today if dates["from"] is None else dates["from"] + span)
    first = dates["from"] or last - span
    if first > last:
        raise InvalidInput("from must not be after to")
    if granularity == "week":
        first -= timedelta(days=first.weekday())
        last += timedelta(days=6 - last.weekday())
    if (last - first).days + 1 > MAX_DAYS[granularity]:
        raise InvalidInput(f"at most {MAX_DAYS[granularity]} days with granularity {granularity}")
    sources = (TOTAL,) if everything and department == ALL else departments
    return Query(department, departments, granularity, first, last, sources)


def _mean(total_ms: int, count: int) -> float | None:
    return round(total_ms / count / 1000, 1) if count else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def figures(c: Mapping[str, int], clerks: int) -> dict[str, Any]:
    """The figures of one period from its summed counters (see ``server.stats.aggregate``)."""
    waits: dict[int, int] = {}
    lengths: dict[int, int] = {}
    languages: dict[str, int] = {}
    for field, value in c.items():
        if field[1:2] == ":":
            kind = field[0]
            if kind == "w":
                waits[int(field[2:])] = value
            elif kind == "c":
                lengths[int(field[2:])] = value
            elif kind == "l":
                languages[field[2:]] = value
    wait_median, wait_p90 = buckets.quantiles(waits, (0.5, 0.9))
    length_median, length_p90 = buckets.quantiles(lengths, (0.5, 0.9))
    return {
        "arrivals": c.get("arr", 0),
        "served": c.get("srv", 0),
        "abandoned": c.get("abd", 0),
        "no_shows": c.get("nos", 0),
        "transfers_in": c.get("tin", 0),
        "transfers_out": c.get("tout", 0),
        "returned": c.get("ret", 0),
        "rejoined": c.get("rej", 0),
        "closed_out": c.get("cls", 0),
        "calls": c.get("wn", 0),
        "wait_mean_s": _mean(c.get("wms", 0), c.get("wn", 0)),
        "wait_median_s": _rounded(wait_median),
        "wait_p90_s": _rounded(wait_p90),
        "consultations": c.get("cn", 0),
        "consultation_mean_s": _mean(c.get("cms", 0), c.get("cn", 0)),
        "consultation_median_s": _rounded(length_median),
        "consultation_p90_s": _rounded(length_p90),
        "clerks_on_duty": clerks,
        "interpreter": c.get("int", 0),
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def report(query: Query, sums: Sums, duty: DutyCounts) -> dict[str, Any]:
    """Figures per period (every period of the range, empty ones included) and for the whole range."""
    total: dict[str, int] = {}
    for counts in sums.values():
        for field, value in counts.items():
            total[field] = total.get(field, 0) + value
    periods = []
    for index, hour, label, start in query.periods():
        row = {"period": label, "start": start}
        row.update(figures(sums.get((index, hour), {}), duty.per_period.get((index, hour), 0)))
        periods.append(row)
    return {
        "department": query.department,
        "departments": list(query.departments),
        "granularity": query.granularity,
        "from": query.first.isoformat(),
        "to": query.last.isoformat(),
        "periods": periods,
        "totals": figures(total, duty.total),
        "quantile_bound": {"seconds": buckets.ABSOLUTE_BOUND, "relative": buckets.RELATIVE_BOUND},
    }


CSV_COLUMNS = (
    "arrivals", "served", "abandoned", "no_shows", "transfers_in", "transfers_out", "returned", "rejoined",
    "closed_out", "calls",
    "wait_mean_s", "wait_median_s", "wait_p90_s", "consultations", "consultation_mean_s", "consultation_median_s",
    "consultation_p90_s", "clerks_on_duty", "interpreter",
)


def csv_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """A header and one row per period; one column per language seen in the range (``lang_<code>``)."""
    languages = sorted({code for p in result["periods"] for code in p["languages"]})
    rows = [["period", "department", *CSV_COLUMNS, *(f"lang_{code}" for code in languages)]]
    for p in result["periods"]:
        rows.append([
            p["period"], result["department"],
            *("" if p[c] is None else str(p[c]) for c in CSV_COLUMNS),
            *(str(p["languages"].get(code, 0)) for code in languages),
        ])
    return rows
