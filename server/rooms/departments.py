"""Departments and opening hours. Pure: a department is open or not at a given local time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from ..queue.errors import InvalidInput
from ..recording.model import RecordingPolicy

if TYPE_CHECKING:
    from ..appointments.model import AppointmentConfig

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SLOT = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class OpeningHours:
    """Opening slots per weekday (0 = Monday). No hours configured means always open."""

    slots: tuple[tuple[tuple[time, time], ...], ...] | None = None

    def is_open(self, local: datetime) -> bool:
        if self.slots is None:
            return True
        t = local.time()
        return any(start <= t < end for start, end in self.slots[local.weekday()])

    def describe(self) -> dict[str, list[str]]:
        """Slots as strings per day, for pages and the API."""
        if self.slots is None:
            return {}
        return {
            day: [f"{s:%H:%M}-{'24:00' if e == time.max else f'{e:%H:%M}'}" for s, e in slots]
            for day, slots in zip(DAYS, self.slots, strict=True)
            if slots
        }


@dataclass(frozen=True)
class Closure:
    """A special closure (holiday, staff meeting): closed all day from ``start`` to ``end`` (inclusive,
    local dates), with a message citizens see, e.g. "Heute wegen Betriebsversammlung geschlossen"."""

    start: date
    end: date
    message: str = ""

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise InvalidInput(f"closure {self.start}..{self.end} ends before it starts")
        if len(self.message) > 300:
            raise InvalidInput("closure message longer than 300 characters")

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.end

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "message": self.message}


def parse_closures(raw: object) -> tuple[Closure, ...]:
    """``[{"start": "2026-12-24", "end": "2026-12-26", "message": "..."}, ...]`` (``end`` defaults to
    ``start``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise InvalidInput("closures must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("start"), str | date):
            raise InvalidInput("each closure needs a start date")
        try:
            start = item["start"] if isinstance(item["start"], date) else date.fromisoformat(item["start"])
            end_raw = item.get("end", start)
            end = end_raw if isinstance(end_raw, date) else date.fromisoformat(str(end_raw))
        except ValueError as e:
            raise InvalidInput(f"invalid closure date: {e}") from e
        message = item.get("message", "")
        if not isinstance(message, str):
            raise InvalidInput("closure message must be text")
        out.append(Closure(start, end, " ".join(message.split())))
    return tuple(sorted(out, key=lambda c: c.start))


def _parse_time(h: str, m: str) -> time:
    hour, minute = int(h), int(m)
    if hour == 24 and minute == 0:
        return time.max
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise InvalidInput(f"invalid time {h}:{m}")
    return time(hour, minute)


def parse_hours(spec: dict[str, str | list[str]] | None) -> OpeningHours:
    """Parse ``{"mon": "08:00-12:00, 14:00-16:00", ...}``; days not named are closed."""
    if spec is None:
        return OpeningHours(None)
    per_day: list[tuple[tuple[time, time], ...]] = []
    unknown = set(spec) - set(DAYS)
    if unknown:
        raise InvalidInput(f"unknown day(s) in opening hours: {', '.join(sorted(unknown))}")
    for day in DAYS:
        raw = spec.get(day, "")
        parts = raw if isinstance(raw, list) else [p for p in raw.split(",") if p.strip()]
        slots = []
        for part in parts:
            m = _SLOT.match(part)
            if not m:
                raise InvalidInput(f"invalid opening slot {part!r} on {day}")
            start, end = _parse_time(m[1], m[2]), _parse_time(m[3], m[4])
            if end <= start:
                raise InvalidInput(f"opening slot {part!r} on {day} ends before it starts")
            slots.append((start, end))
        ordered = sorted(slots)
        for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
            if start < end:  # (found by probing: stored as given, and shown twice)
                raise InvalidInput(f"opening slots overlap on {day}")
        per_day.append(tuple(slots))
    return OpeningHours(tuple(per_day))


@dataclass(frozen=True)
class Department:
    id: str
    """Short stable identifier used in URLs, e.g. ``buergerbuero``."""
    name: str
    description: str = ""
    hours: OpeningHours = field(default_factory=OpeningHours)
    queue_cap: int | None = None
    """At most this many waiting tickets; None for no cap."""
    service_minutes: float = 10.0
    """Assumed duration of one consultation until real service times are known."""
    require_name: bool = False
    require_concern: bool = False
    recording: RecordingPolicy = RecordingPolicy()
    """Whether consultations may be recorded (with every participant's consent), why, and how long kept."""
    closures: tuple[Closure, ...] = ()
    """Special closures and holidays (whole local days), each with a message for citizens."""
    closed_now: bool = False
    """Closed at once by a lead until they open it again, whatever the opening hours say."""
    closed_message: str = ""
    """What citizens read while ``closed_now`` (empty: a generic sentence)."""
    appointments: AppointmentConfig | None = None
    """Bookable video appointments (``server.appointments.model``; a plain value with to_dict/from_dict);
    None: the department offers none."""

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise InvalidInput(f"invalid department id {self.id!r} (lowercase letters, digits, '-')")
        if self.queue_cap is not None and self.queue_cap < 1:
            raise InvalidInput(f"queue_cap of {self.id} must be positive")
        if self.service_minutes <= 0:
            raise InvalidInput(f"service_minutes of {self.id} must be positive")
        if self.recording.allowed and (not self.recording.purpose.strip() or self.recording.retention_days < 1):
            raise InvalidInput(
                f"recording of {self.id} is allowed: recording_purpose and recording_retention_days (>= 1) are required"
            )

    def closure_on(self, day: date) -> Closure | None:
        return next((c for c in self.closures if c.covers(day)), None)

    def is_open(self, local: datetime) -> bool:
        if self.closed_now or self.closure_on(local.date()) is not None:
            return False
        return self.hours.is_open(local)

    def closed_reason(self, local: datetime) -> str | None:
        """Why it is closed at ``local``: the lead's message, the closure's message, or None (closed
        by its hours, or open, or no message given)."""
        if self.closed_now:
            return self.closed_message or None
        closure = self.closure_on(local.date())
        return (closure.message or None) if closure else None

    def next_opening(self, local: datetime, horizon_days: int = 366) -> datetime | None:
        """When it opens next after ``local`` (``local`` itself when open now), in ``local``'s zone;
        None when closed by a lead (nobody knows when) or when it does not open within the horizon.
        Opening hours with no slots at all never open; no hours configured means always open."""
        if self.closed_now:
            return None
        if self.is_open(local):
            return local
        if self.hours.slots is None:  # always open but for closures: the day after the last closure
            day = local.date()
            for _ in range(horizon_days):
                day += timedelta(days=1)
                if self.closure_on(day) is None:
                    return datetime.combine(day, time(0, 0), local.tzinfo)
            return None
        for offset in range(horizon_days + 1):
            day = local.date() + timedelta(days=offset)
            if self.closure_on(day) is not None:
                continue
            for start, end in self.hours.slots[day.weekday()]:
                if offset == 0 and end <= local.time():
                    continue
                candidate = datetime.combine(day, start, local.tzinfo)
                if candidate > local:
                    return candidate
        return None
