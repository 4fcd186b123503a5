"""Departments as stored and edited: one dict form for the store and the admin API, and the edits a lead
or an admin makes, as pure functions (``Department`` in, ``Department`` out; nothing awaits or stores).

Every stored department carries a ``revision`` (1 when created, +1 per change). An edit names the revision
it started from; the store refuses a stale one (``EditConflict``, 409), so two leads editing the same
department at once never silently overwrite each other (optimistic concurrency).
"""

from __future__ import annotations

from typing import Any

from ..appointments.model import AppointmentConfig
from ..queue.core import _clean
from ..queue.errors import InvalidInput, QueueError
from ..recording.model import RecordingMode, RecordingPolicy
from .departments import DAYS, Department, OpeningHours, parse_closures, parse_hours

MAX_NAME = 80
MAX_DESCRIPTION = 500
MAX_MESSAGE = 300
MAX_SERVICE_MINUTES = 480.0
MAX_QUEUE_CAP = 100_000
MAX_CLOSURES = 200

EDITABLE = frozenset({
    "name", "description", "hours", "closures", "queue_cap", "service_minutes", "require_name",
    "require_concern", "recording", "recording_purpose", "recording_retention_days", "appointments",
})
"""Fields an edit may change. ``id`` never changes; ``closed_now`` and ``closed_message`` change only by
``close_at_once`` and ``reopen``."""
RECORDING_FIELDS = frozenset({"recording", "recording_purpose", "recording_retention_days"})
"""Fields only an admin may change (the recording policy is a data-protection decision)."""


class EditConflict(QueueError):
    """Someone else changed this department meanwhile; reload it and make the change again."""

    code = "edit_conflict"
    status = 409


class DepartmentExists(QueueError):
    """A department with this id exists already."""

    code = "department_exists"
    status = 409


class DepartmentBusy(QueueError):
    """The department still has citizens waiting or in a consultation."""

    code = "department_busy"
    status = 409


def hours_to_dict(hours: OpeningHours) -> dict[str, list[str]] | None:
    """Every weekday with its slots (an empty list: closed that day); None: always open."""
    if hours.slots is None:
        return None
    described = hours.describe()
    return {day: described.get(day, []) for day in DAYS}


def department_to_dict(d: Department) -> dict[str, Any]:
    """The full configuration of a department, as stored and as the admin API shows it."""
    return {
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "hours": hours_to_dict(d.hours),
        "closures": [c.to_dict() for c in d.closures],
        "queue_cap": d.queue_cap,
        "service_minutes": d.service_minutes,
        "require_name": d.require_name,
        "require_concern": d.require_concern,
        "recording": d.recording.mode.value,
        "recording_purpose": d.recording.purpose,
        "recording_retention_days": d.recording.retention_days,
        "closed_now": d.closed_now,
        "closed_message": d.closed_message,
        "appointments": d.appointments.to_dict() if d.appointments is not None else None,
    }


def _text(raw: dict[str, Any], key: str, limit: int, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be text")
    value = " ".join(value.split())  # no line breaks or control characters
    if len(value) > limit:
        raise InvalidInput(f"{key} is longer than {limit} characters")
    return value


def _flag(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false")
    return value


def _hours(value: Any) -> OpeningHours:
    if value is None:
        return OpeningHours(None)
    if not isinstance(value, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)) for v in value.values()
    ):
        raise InvalidInput("hours must map weekdays (mon ... sun) to slots like \"08:00-12:00\"")
    return parse_hours(value)


def _queue_cap(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_QUEUE_CAP:
        raise InvalidInput(f"queue_cap must be a whole number from 1 to {MAX_QUEUE_CAP}, or null for no cap")
    return value


def _service_minutes(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= MAX_SERVICE_MINUTES:
        raise InvalidInput(f"service_minutes must be a number above 0 and at most {MAX_SERVICE_MINUTES:g}")
    return float(value)


def _recording(raw: dict[str, Any]) -> RecordingPolicy:
    mode = raw.get("recording", "off")
    if mode not in {m.value for m in RecordingMode}:
        raise InvalidInput('recording must be "off" or "on_request"')
    days = raw.get("recording_retention_days", 0)
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 3650:
        raise InvalidInput("recording_retention_days must be a whole number from 0 to 3650")
    return RecordingPolicy(RecordingMode(mode), _text(raw, "recording_purpose", MAX_MESSAGE), days)


def department_from_dict(raw: Any) -> Department:
    """A department from its dict form; every field is checked (``InvalidInput`` says which)."""
    if not isinstance(raw, dict):
        raise InvalidInput("a department must be a JSON object")
    unknown = set(raw) - EDITABLE - {"id", "closed_now", "closed_message"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("id"), str):
        raise InvalidInput("id is required (lowercase letters, digits, '-')")
    name = _text(raw, "name", MAX_NAME)
    if not name:
        raise InvalidInput("name is required")
    closures = raw.get("closures", [])
    if isinstance(closures, list) and len(closures) > MAX_CLOSURES:
        raise InvalidInput(f"at most {MAX_CLOSURES} closures")
    return Department(
        id=raw["id"],
        name=name,
        description=_text(raw, "description", MAX_DESCRIPTION),
        hours=_hours(raw.get("hours")),
        queue_cap=_queue_cap(raw.get("queue_cap")),
        service_minutes=_service_minutes(raw.get("service_minutes", 10.0)),
        require_name=_flag(raw, "require_name"),
        require_concern=_flag(raw, "require_concern"),
        recording=_recording(raw),
        closures=parse_closures(closures),
        closed_now=_flag(raw, "closed_now"),
        closed_message=_text(raw, "closed_message", MAX_MESSAGE),
        appointments=AppointmentConfig.from_dict(raw["appointments"]) if raw.get("appointments") is not None else None,
    )


def _plain_texts(d: Department) -> Department:
    """``d`` when every text citizens or staff read is one plain line: a control character (C0/C1, DEL, a
    bidi override or isolate) in a name, description or message is refused, naming the field, as in a
    citizen's name (``core._clean``). Checked on edits only, so that loading a stored department never fails."""
    texts = [("name", d.name, MAX_NAME), ("description", d.description, MAX_DESCRIPTION),
             ("closed_message", d.closed_message, MAX_MESSAGE),
             ("recording_purpose", d.recording.purpose, MAX_MESSAGE)]
    texts += [(f"closure message ({c.start.isoformat()})", c.message, MAX_MESSAGE) for c in d.closures]
    for what, text, limit in texts:
        _clean(text, limit, what)
    return d


def _closure_keys(raw: Any) -> None:
    closures = raw.get("closures") if isinstance(raw, dict) else None
    if isinstance(closures, list):
        for item in closures:
            if isinstance(item, dict) and set(item) - {"start", "end", "message"}:
                unknown = ", ".join(sorted(set(item) - {"start", "end", "message"}))
                raise InvalidInput(f"unknown field(s) in a closure: {unknown} (start, end, message)")


def edit(current: Department, changes: Any, *, admin: bool) -> Department:
    """``current`` with the fields named in ``changes`` replaced (the others stay). Only an admin changes
    the recording policy; ``id``, ``closed_now`` and ``closed_message`` are not edited here."""
    if not isinstance(changes, dict):
        raise InvalidInput("the changes must be a JSON object")
    unknown = set(changes) - EDITABLE
    if unknown:
        raise InvalidInput(f"field(s) that cannot be edited: {', '.join(sorted(unknown))}")
    if not admin and RECORDING_FIELDS & set(changes):
        raise InvalidInput("only an administrator changes the recording policy")
    _closure_keys(changes)
    return _plain_texts(department_from_dict({**department_to_dict(current), **changes}))


def create(raw: Any) -> Department:
    """A new department (open: ``closed_now`` cannot be set at creation)."""
    if isinstance(raw, dict) and ({"closed_now", "closed_message"} & set(raw)):
        raise InvalidInput("a new department starts open; close it afterwards")
    _closure_keys(raw)
    return _plain_texts(department_from_dict(raw))


def close_at_once(current: Department, message: Any) -> Department:
    """Closed now, whatever the hours say, until ``reopen``; ``message`` is what citizens read."""
    text = _clean(message, MAX_MESSAGE, "message")
    return department_from_dict({**department_to_dict(current), "closed_now": True, "closed_message": text})


def reopen(current: Department) -> Department:
    """Open again as the hours and closures say."""
    return department_from_dict({**department_to_dict(current), "closed_now": False, "closed_message": ""})


def parse_close(body: Any) -> tuple[str, bool]:
    """A close-at-once request: ``{"message": "...", "keep_places": true}`` -> (message, keep_places)."""
    if not isinstance(body, dict):
        raise InvalidInput("the request must be a JSON object")
    unknown = set(body) - {"message", "keep_places"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    keep = body.get("keep_places", True)
    if not isinstance(keep, bool):
        raise InvalidInput("keep_places must be true or false")
    return _clean(body.get("message", ""), MAX_MESSAGE, "message"), keep


def check_removable(waiting: int, active: int, booked: int = 0) -> None:
    """A department is removed only when nobody waits there, no consultation runs and no booked appointment
    lies ahead (its citizens' links would fail; they could not even cancel)."""
    if waiting or active:
        raise DepartmentBusy(f"{waiting} citizens are waiting and {active} in a consultation: close the "
                             "department (they lose their place) and wait for the consultations to end")
    check_no_bookings(booked, "the department cannot be removed")


def check_no_bookings(booked: int, what: str = "appointments cannot be switched off") -> None:
    """Appointments are switched off (or the department removed) only when no booked appointment lies ahead."""
    if booked:
        raise DepartmentBusy(f"{booked} booked appointment(s) lie ahead: {what} until they have taken place "
                             "or been cancelled")
