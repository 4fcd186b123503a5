"""Values of the waiting-room core: tickets, clerks, events. Frozen, serialisable, no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TicketState(StrEnum):
    """Where a ticket is in its life. Positions and estimated waits are derived, never stored."""

    WAITING = "waiting"
    CALLED = "called"
    IN_CONSULTATION = "in_consultation"
    DONE = "done"
    LEFT = "left"
    NO_SHOW = "no_show"
    EXPIRED = "expired"

    @property
    def is_active(self) -> bool:
        """Called or in a consultation: held by a clerk."""
        return self in (TicketState.CALLED, TicketState.IN_CONSULTATION)

    @property
    def is_final(self) -> bool:
        return self in (TicketState.DONE, TicketState.LEFT, TicketState.NO_SHOW, TicketState.EXPIRED)


class Presence(StrEnum):
    """A clerk's availability, visible to colleagues; feeds the estimated wait."""

    AVAILABLE = "available"
    BUSY = "busy"
    AWAY = "away"
    OFFLINE = "offline"


SERVING_ROLES = frozenset({"clerk", "lead"})
"""Roles that serve citizens: a clerk serves their departments, a lead the departments they lead."""


@dataclass(frozen=True)
class Clerk:
    """The authenticated member of staff issuing a command."""

    username: str
    display_name: str
    departments: frozenset[str]
    """The departments this member SERVES (queue, calls, consultations, transfers). Empty unless ``roles``
    include ``clerk`` or ``lead``: an admin-only or moderator-only account holding departments serves none."""
    roles: frozenset[str] = frozenset({"clerk"})

    def __post_init__(self) -> None:
        if self.departments and not SERVING_ROLES & self.roles:
            object.__setattr__(self, "departments", frozenset())


@dataclass(frozen=True)
class JoinRequest:
    """What a citizen says at check-in. Everything personal is optional."""

    name: str = ""
    """Display name or pseudonym, shown to clerks only."""
    concern: str = ""
    """A short description of what they need, shown to clerks only."""
    language: str = "de"
    interpreter: bool = False
    """Needs a sign-language interpreter."""
    consent: bool = False
    """Accepted the privacy notice."""


@dataclass(frozen=True)
class Ticket:
    id: str
    """Public identifier, used in URLs and by staff; not a credential."""
    token_hash: str
    """SHA-256 of the citizen's secret token; the token itself is never stored."""
    department: str
    """The department whose queue holds the ticket now."""
    seq: int
    """Arrival order key, global and increasing; kept on transfer and return."""
    state: TicketState
    arrived_at: float
    """When the citizen first joined (epoch seconds); kept on transfer."""
    enqueued_at: float
    """When the ticket entered its current department's queue."""
    origin_department: str
    name: str = ""
    concern: str = ""
    language: str = "de"
    interpreter: bool = False
    clerk: str | None = None
    """Username of the clerk who called the ticket, while it is active."""
    clerk_name: str | None = None
    """That clerk's display name, shown to the citizen."""
    called_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    transferred_from: str | None = None
    transfer_note: str = ""
    disconnected_at: float | None = None
    """Set while no page of the citizen is connected; the ticket expires after a grace period."""
    times_called: int = 0
    rejoins: int = 0
    """How often the citizen took their place back after a no-show (``server.queue.core.rejoin``)."""
    appointment_at: float | None = None
    """Start of the booked appointment this ticket came from (epoch seconds); None for walk-ins. From that
    time on the ticket is called ahead of walk-ins (``server.queue.core.pick_next``)."""
    ended_by: str | None = None
    """Why an ended ticket ended when its state does not say it all: ``"department_closed"`` (a lead closed
    the department at once and the citizen lost their place; state ``expired``). None otherwise."""

    def replace(self, **changes: Any) -> Ticket:
        if changes.keys() <= _TICKET_FIELD_SET:  # as from_dict: without the frozen __init__
            ticket = object.__new__(type(self))
            ticket.__dict__.update(self.__dict__)
            ticket.__dict__.update(changes)
            return ticket
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        # Every field is a plain value: a flat copy, not dataclasses.asdict's recursive deep copy (the Redis
        # store writes each ticket it changes; asdict was 5 % of a reconnect storm's CPU).
        d = {name: getattr(self, name) for name in _TICKET_FIELDS}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ticket:
        if _TICKET_REQUIRED <= d.keys() <= _TICKET_FIELD_SET:
            # A stored ticket (every field known): filled in without the frozen dataclass's __init__, which
            # sets its 24 fields one object.__setattr__ at a time (5 % of a reconnect storm's CPU on Redis).
            values = dict(_TICKET_DEFAULTS)
            values.update(d)
            values["state"] = TicketState(values["state"])
            ticket = object.__new__(cls)
            ticket.__dict__.update(values)
            return ticket
        d = dict(d)
        d["state"] = TicketState(d["state"])
        return cls(**d)


_TICKET_FIELDS = tuple(f.name for f in dataclasses.fields(Ticket))
_TICKET_FIELD_SET = frozenset(_TICKET_FIELDS)
_TICKET_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Ticket) if f.default is not dataclasses.MISSING}
_TICKET_REQUIRED = _TICKET_FIELD_SET - _TICKET_DEFAULTS.keys()


@dataclass(frozen=True)
class TicketEvent:
    """Something that happened to a ticket; the shell turns it into messages."""

    kind: str
    """joined, called, started, finished, no_show, rejoined, returned, transferred, left, expired,
    disconnected, reconnected."""
    ticket: Ticket
    previous_state: TicketState | None = None
    previous_department: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    """Username of the clerk whose command caused the event (set by the WaitingRoom); None for the
    citizen's own moves and the sweep's."""

    @property
    def departments(self) -> set[str]:
        """Departments whose queue view changes."""
        deps = {self.ticket.department}
        if self.previous_department:
            deps.add(self.previous_department)
        return deps
