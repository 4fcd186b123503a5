"""Departments and opening hours. Pure: a department is open or not at a given local time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time

from ..queue.errors import InvalidInput
from ..recording.model import RecordingPolicy

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

    def is_open(self, local: datetime) -> bool:
        return self.hours.is_open(local)
