"""What a log entry adds to the counters kept at write time, per department and local day and hour.

Counter fields (short: a year of them is read per query):

``arr`` arrivals (joined)            ``srv`` served (finished)          ``abd`` abandoned (left or expired
``nos`` no-shows                      ``tin``/``tout`` transfers in/out   before their consultation began)
``ret`` returned to the queue         ``int`` arrivals needing a sign-language interpreter
``rej`` took their place back after a no-show   ``cls`` sent away waiting: the department was closed at once
``l:<code>`` arrivals by language     ``wn``/``wms`` waits counted and their sum in ms; ``w:<i>`` wait histogram
``cn``/``cms``/``c:<i>`` the same for consultation lengths (``server.stats.buckets``)

Every counter and mark is also kept for the department ``*`` (``TOTAL``): the whole town hall, so that an
admin's "all departments" over a year reads one department's worth of counters. (Department ids are
``[a-z0-9-]``: no department is called ``*``.)

Clerks on duty are not counters but marks (department, day, hour, clerk pseudonym): distinct clerks per
hour, day or week are counted at query time from them.

Days are local (``date.toordinal()`` of the server's time zone), hours local 0-23; on the night clocks go
back, the repeated hour adds to the same bucket.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, tzinfo

from . import buckets
from .log import LogEntry

TOTAL = "*"
COUNTERS = ("arr", "srv", "abd", "nos", "tin", "tout", "ret", "rej", "cls", "int")


def local_slot(at: float, tz: tzinfo) -> tuple[int, int]:
    """(day ordinal, hour) of an epoch time in the given zone."""
    local = datetime.fromtimestamp(at, tz)
    return local.toordinal(), local.hour


def _ms(seconds: float) -> int:
    return round(max(0.0, seconds) * 1000)


def contributions(entry: LogEntry) -> list[tuple[str, str, int]]:
    """(department, field, value) that ``entry`` adds in its hour; ``on_duty`` adds none (see ``duty_marks``)."""
    d = entry.department
    out: list[tuple[str, str, int]] = []
    match entry.kind:
        case "joined":
            out.append((d, "arr", 1))
            if entry.language:
                out.append((d, f"l:{entry.language}", 1))
            if entry.interpreter:
                out.append((d, "int", 1))
        case "called":
            if entry.wait is not None:
                out += [(d, "wn", 1), (d, "wms", _ms(entry.wait)), (d, f"w:{buckets.bucket(entry.wait)}", 1)]
        case "finished":
            out.append((d, "srv", 1))
        case "no_show":
            out.append((d, "nos", 1))
        case "left" | "expired":
            out.append((d, "abd", 1))
        case "returned":
            out.append((d, "ret", 1))
        case "rejoined":
            out.append((d, "rej", 1))
        case "department_closed":
            out.append((d, "cls", 1))
        case "transferred":
            out.append((d, "tin", 1))
            if entry.source:
                out.append((entry.source, "tout", 1))
    if entry.duration is not None and entry.kind in ("finished", "returned", "transferred"):
        home = entry.source if entry.kind == "transferred" and entry.source else d
        out += [(home, "cn", 1), (home, "cms", _ms(entry.duration)), (home, f"c:{buckets.bucket(entry.duration)}", 1)]
    return out


HourKey = tuple[str, int, int]
"""(department, day ordinal, hour)."""


def fold(entries: Iterable[LogEntry], tz: tzinfo) -> dict[HourKey, Counter[str]]:
    """The counters a batch of entries adds, per department and local hour (a batch is written at once)."""
    out: dict[HourKey, Counter[str]] = defaultdict(Counter)
    for e in entries:
        parts = contributions(e)
        if not parts:
            continue
        day, hour = local_slot(e.at, tz)
        total = out[(TOTAL, day, hour)]
        for department, field, value in parts:
            out[(department, day, hour)][field] += value
            total[field] += value
    return dict(out)


def by_day(hourly: dict[HourKey, Counter[str]]) -> dict[tuple[str, int], Counter[str]]:
    """The same counters per department and day (kept next to the hourly ones, so a year reads days only)."""
    out: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for (department, day, _hour), counts in hourly.items():
        out[(department, day)].update(counts)
    return dict(out)


def duty_marks(entries: Iterable[LogEntry], tz: tzinfo) -> set[tuple[str, int, int, str]]:
    """(department, day, hour, clerk pseudonym) of every ``on_duty`` entry."""
    marks = set()
    for e in entries:
        if e.kind == "on_duty":
            day, hour = local_slot(e.at, tz)
            marks.add((e.department, day, hour, e.subject))
            marks.add((TOTAL, day, hour, e.subject))
    return marks
