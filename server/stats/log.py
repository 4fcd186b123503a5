"""What the event log keeps: one ``LogEntry`` per queue transition (and per clerk on duty), never personal data.

A ticket's name, concern, transfer note and token hash are left out; its id is replaced by a one-way
pseudonym (the ids are random, so the pseudonym links a ticket's own entries and nothing else). Clerks
appear only as pseudonyms in ``on_duty`` entries, to count how many were on duty. Pseudonyms are keyed
(HMAC-SHA-256 with a random key per installation, kept by the event-log store): without the key, nobody
can tell which username (or ticket id) a pseudonym stands for by hashing candidates.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..queue.model import Presence, TicketEvent

KINDS = frozenset({
    "joined", "called", "started", "finished", "no_show", "rejoined", "returned", "transferred", "left", "expired",
    "department_closed", "on_duty",
})
"""Entry kinds. ``disconnected`` and ``reconnected`` are a page's connection, not a transition: not logged."""
ON_DUTY = frozenset({Presence.AVAILABLE, Presence.BUSY})
"""Presences that count as on duty."""


def pseudonym(kind: str, value: str, key: bytes) -> str:
    """A short keyed one-way pseudonym (16 hex digits of HMAC-SHA-256 under the installation's ``key``)."""
    if not key:
        raise ValueError("pseudonyms need the installation's key")
    message = f"sprechstunde-stats:{kind}:{value}".encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class LogEntry:
    at: float
    """Epoch seconds of the transition."""
    kind: str
    department: str
    """The department it counts for (for a transfer: the target)."""
    subject: str = ""
    """Pseudonym of the ticket (of the clerk for ``on_duty``)."""
    source: str = ""
    """``transferred``: the department the ticket came from."""
    state: str = ""
    """The state the ticket left (``waiting``, ``called``, ``in_consultation``); empty for ``joined``."""
    wait: float | None = None
    """``called``: seconds the ticket waited in this department's queue (since it joined, was transferred
    or returned)."""
    duration: float | None = None
    """``finished``, ``returned``, ``transferred`` after a consultation: its length in seconds."""
    language: str = ""
    interpreter: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogEntry:
        return cls(**d)


def _at(event: TicketEvent) -> float | None:
    t = event.ticket
    match event.kind:
        case "joined":
            return t.arrived_at
        case "called":
            return t.called_at
        case "started":
            return t.started_at
        case "finished" | "no_show" | "left" | "expired" | "department_closed":
            return t.ended_at
        case "returned" | "transferred" | "rejoined":
            return t.enqueued_at
    return None


def entries_from_events(events: Iterable[TicketEvent], key: bytes) -> list[LogEntry]:
    """The log entries of a list of ticket events; times come from the ticket (the command's ``now``)."""
    out: list[LogEntry] = []
    for e in events:
        at = _at(e)
        if e.kind not in KINDS or at is None:
            continue
        t = e.ticket
        wait = max(0.0, at - t.enqueued_at) if e.kind == "called" else None
        seconds = e.meta.get("service_seconds")
        duration = float(seconds) if isinstance(seconds, int | float) else None
        out.append(LogEntry(
            at=float(at), kind=e.kind, department=t.department, subject=pseudonym("ticket", t.id, key),
            source=(e.previous_department or "") if e.kind == "transferred" else "",
            state=e.previous_state.value if e.previous_state else "",
            wait=wait, duration=duration, language=t.language, interpreter=bool(t.interpreter),
        ))
    return out


def duty_entries(at: float, username: str, departments: Iterable[str], presence: Presence,
                 key: bytes) -> list[LogEntry]:
    """``on_duty`` entries for a clerk who is available or busy at ``at``; none otherwise."""
    if presence not in ON_DUTY:
        return []
    subject = pseudonym("clerk", username, key)
    return [LogEntry(at=float(at), kind="on_duty", department=d, subject=subject) for d in sorted(departments)]
