"""Values of the appointments core: a department's offer, bookings, slots. Frozen, serialisable, no I/O.

A department's offer (``AppointmentConfig``) is a plain value on ``Department.appointments``; it goes to
and from a dict (``to_dict``/``from_dict``), the same shape as the TOML table ``appointments`` of a
``[[departments]]`` entry, so that departments edited at runtime carry it along.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from ..queue.errors import InvalidInput
from ..rooms.departments import OpeningHours, parse_hours

PRIORITIES = ("first", "every")


@dataclass(frozen=True)
class AppointmentConfig:
    """What a department offers: slots within ``hours`` per weekday, each ``slot_minutes`` long,
    ``parallel`` citizens per slot, bookable from ``min_notice_minutes`` to ``days_ahead`` days ahead."""

    hours: OpeningHours
    """Windows per weekday in which slots start and end (like opening hours; required, not "always")."""
    slot_minutes: int = 20
    parallel: int = 1
    """How many appointments one slot holds (clerks serving appointments at once)."""
    days_ahead: int = 28
    min_notice_minutes: int = 60
    """A slot must start at least this long after booking (or moving)."""
    cancel_minutes: int = 120
    """Cancelling or moving is possible until this long before the slot starts."""
    checkin_minutes: int = 10
    """The link opens the waiting room this long before the slot."""
    late_minutes: int = 15
    """Joining is possible until this long after the slot started; then the appointment is a no-show."""
    priority: str = "first"
    """``first``: a due appointment is always called before walk-ins; ``every``: every
    ``priority_every``-th call (walk-ins get the calls in between)."""
    priority_every: int = 2
    day_cap: int = 0
    """At most this many appointments per department day (0: only the slots limit)."""
    per_address_day: int = 3
    """At most this many bookings from one address for one department day."""
    retention_hours: int = 24
    """Appointment data (name, concern, e-mail) is deleted this long after the slot ends."""
    reminder_minutes: int = 24 * 60
    """The e-mail reminder goes out this long before the slot (when SMTP is configured)."""

    def __post_init__(self) -> None:
        if self.hours.slots is None or not any(self.hours.slots):
            raise InvalidInput("appointments need hours with at least one window")
        checks = {
            "slot_minutes": (5, 480), "parallel": (1, 100), "days_ahead": (1, 366),
            "min_notice_minutes": (0, 60 * 24 * 30), "cancel_minutes": (0, 60 * 24 * 30),
            "checkin_minutes": (1, 120), "late_minutes": (0, 240), "priority_every": (1, 100),
            "day_cap": (0, 10000), "per_address_day": (1, 100), "retention_hours": (0, 24 * 90),
            "reminder_minutes": (10, 60 * 24 * 7),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidInput(f"appointments: {name} must be a whole number from {low} to {high}")
        if self.priority not in PRIORITIES:
            raise InvalidInput('appointments: priority must be "first" or "every"')

    @property
    def every(self) -> int:
        """Every how many calls a due appointment is taken (1: always first)."""
        return 1 if self.priority == "first" else self.priority_every

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hours"}
        return {"hours": self.hours.describe(), **d}

    @classmethod
    def from_dict(cls, raw: object) -> AppointmentConfig:
        if not isinstance(raw, dict):
            raise InvalidInput("appointments must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise InvalidInput(f"appointments: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(raw.get("hours"), dict):
            raise InvalidInput("appointments: hours are required")
        values = {k: v for k, v in raw.items() if k != "hours"}
        return cls(hours=parse_hours(raw["hours"]), **values)


class AppointmentState(StrEnum):
    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    """The citizen entered the waiting room: a ticket marked with the appointment time exists."""
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"

    @property
    def holds_slot(self) -> bool:
        return self is not AppointmentState.CANCELLED


@dataclass(frozen=True)
class Slot:
    start: float
    """Epoch seconds."""
    end: float
    day: date
    """The department's local day."""
    time: str
    """Local start time, ``HH:MM``."""


@dataclass(frozen=True)
class BookingRequest:
    start: float
    name: str = ""
    concern: str = ""
    email: str = ""
    language: str = "de"
    consent: bool = False


@dataclass(frozen=True)
class Appointment:
    id: str
    """Public identifier (used in the page's URL); not a credential."""
    token_hash: str
    """SHA-256 of the citizen's secret token; the token itself is never stored."""
    department: str
    start: float
    end: float
    day: str
    """Local day of the slot (ISO date): the per-day index and limits use it."""
    time: str
    """Local start time ``HH:MM``, as the clerk and the citizen read it."""
    state: AppointmentState
    created_at: float
    name: str = ""
    concern: str = ""
    email: str = ""
    language: str = "de"
    ticket_id: str | None = None
    version: int = 0
    """Bumped by every change; a store writes a change only over the version it was decided on."""
    moves: int = 0

    def replace(self, **changes: Any) -> Appointment:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Appointment:
        d = dict(d)
        d["state"] = AppointmentState(d["state"])
        return cls(**d)


@dataclass(frozen=True)
class AppointmentEvent:
    kind: str
    """booked, cancelled, moved, checked_in, no_show."""
    appointment: Appointment
    previous: Appointment | None = None
