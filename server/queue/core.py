"""The waiting-room state machine: every command is a pure function returning (ticket, events).

States and moves (anything else raises ``IllegalTransition`` naming the state)::

    (join) -> waiting -> called -> in_consultation -> done
              waiting -> left | expired
              called  -> no_show | left | expired | waiting (returned) | waiting elsewhere (transferred)
              in_consultation -> done | waiting (returned) | waiting elsewhere (transferred)
              no_show -> waiting (rejoined, once, within the rejoin window)

A returned, transferred or rejoined ticket keeps its ``seq``, so it keeps its original place in arrival order.
No function here awaits, reads a clock or touches storage: ``now`` is passed in.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

from ..rooms.departments import Department
from .errors import (
    AnswerTimeRunning,
    DepartmentClosed,
    IllegalTransition,
    InvalidInput,
    NotAuthorised,
    NotYourTicket,
    QueueEmpty,
    QueueFull,
    RejoinExpired,
)
from .model import Clerk, JoinRequest, Presence, Ticket, TicketEvent, TicketState

MAX_NAME = 60
MAX_CONCERN = 500
MAX_NOTE = 500
LANGUAGES = frozenset({"de", "en", "tr", "ar", "ru", "uk", "pl", "fr", "es", "it", "fa"})

W, C, IC = TicketState.WAITING, TicketState.CALLED, TicketState.IN_CONSULTATION

Result = tuple[Ticket, list[TicketEvent]]


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they make a name read on a clerk's
screen differently from what it is. The marks U+200E/U+200F and the joiners U+200C/U+200D, which scripts
such as Arabic and Persian need, are allowed."""


NOT_WHITESPACE = frozenset("\x1c\x1d\x1e\x1f")
"""The information separators: control characters Python's ``str.split`` takes for whitespace, which Unicode
does not (its White_Space among the controls: tab, line feed, U+000B, U+000C, carriage return, U+0085)."""


def _clean(text: object, limit: int, what: str) -> str:
    """One line of plain text: whitespace runs (line breaks and tabs included) become one space; any other
    control character (C0, C1, DEL, a bidi override; also a lone surrogate) is refused, naming the field."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    for char in NOT_WHITESPACE.intersection(text):
        raise InvalidInput(f"{what} contains a control character (U+{ord(char):04X}); please remove it")
    text = " ".join(text.split())
    if len(text) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    for char in text:
        if char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidInput(f"{what} contains a control character (U+{ord(char):04X}); please remove it")
    return text


def validate_join(department: Department, request: JoinRequest) -> JoinRequest:
    """Check and normalise a check-in; raises ``InvalidInput``."""
    if request.consent is not True:
        raise InvalidInput("the privacy notice must be accepted")
    name = _clean(request.name, MAX_NAME, "name")
    concern = _clean(request.concern, MAX_CONCERN, "concern")
    if department.require_name and not name:
        raise InvalidInput("this department needs a name")
    if department.require_concern and not concern:
        raise InvalidInput("this department needs a short description of your concern")
    if request.language not in LANGUAGES:
        raise InvalidInput(f"unsupported language {request.language!r}")
    if not isinstance(request.interpreter, bool):
        raise InvalidInput("interpreter must be true or false")
    return JoinRequest(name, concern, request.language, request.interpreter, True)


def check_open(department: Department, *, is_open: bool, appointment_at: float | None = None) -> None:
    """Refuse a check-in to a closed department (``DepartmentClosed``); a booked appointment is kept whatever
    the hours say. The shell asks this before it counts or writes anything (a refused check-in costs nothing)."""
    if not is_open and appointment_at is None:
        raise DepartmentClosed(f"{department.name} is closed now")


def join(
    department: Department,
    *,
    is_open: bool,
    waiting_count: int,
    request: JoinRequest,
    ticket_id: str,
    token_hash: str,
    seq: int,
    now: float,
    appointment_at: float | None = None,
) -> Result:
    """A citizen joins a department's queue. The ticket starts as "not connected since now": the citizen's
    page clears that when its socket connects (``reconnect``), and a ticket whose page never connects
    expires after the grace period like one whose page went away."""
    request = validate_join(department, request)
    check_open(department, is_open=is_open, appointment_at=appointment_at)
    if appointment_at is None and department.queue_cap is not None and waiting_count >= department.queue_cap:
        raise QueueFull(f"the queue of {department.name} is full")
    ticket = Ticket(
        id=ticket_id,
        token_hash=token_hash,
        department=department.id,
        seq=seq,
        state=W,
        arrived_at=now,
        enqueued_at=now,
        origin_department=department.id,
        name=request.name,
        concern=request.concern,
        language=request.language,
        interpreter=request.interpreter,
        disconnected_at=now,  # no page connected yet: a page that never comes lets the grace period run out
        appointment_at=appointment_at,
    )
    return ticket, [TicketEvent("joined", ticket)]


def pick_next(waiting: Sequence[tuple[int, str]], due: Sequence[tuple[float, str]] = (), *,
              every: int = 1, walkins_since: int = 0) -> str:
    """The ticket a clerk's "call next" takes. ``waiting`` is (seq, id); without appointments, the earliest
    arrival. ``due`` is (appointment time, id) of tickets whose booked slot has begun: the earliest of those
    still waiting goes ahead of walk-ins when ``walkins_since`` (walk-ins called since the last appointment)
    is at least ``every - 1`` (``every`` 1: appointments strictly first), or when no walk-in waits."""
    if not waiting:
        raise QueueEmpty()
    seq_of = {i: seq for seq, i in waiting}
    due_waiting = sorted((at, seq_of[i], i) for at, i in due if i in seq_of)  # same slot: arrival order
    if due_waiting:
        due_ids = {i for _, _, i in due_waiting}
        walkins = [w for w in waiting if w[1] not in due_ids]
        if not walkins or walkins_since >= every - 1:
            return due_waiting[0][2]
        return min(walkins)[1]
    return min(waiting)[1]


def _require(ticket: Ticket, allowed: tuple[TicketState, ...], action: str) -> None:
    if ticket.state not in allowed:
        raise IllegalTransition(f'Cannot {action} ticket {ticket.id} in state "{ticket.state.value}"')


def _require_department(clerk: Clerk, department: str) -> None:
    if department not in clerk.departments:
        raise NotAuthorised(f"clerk does not serve department {department!r}")


def _require_holder(ticket: Ticket, clerk: Clerk) -> None:
    if ticket.clerk != clerk.username:
        raise NotYourTicket(f"ticket {ticket.id} is held by another clerk")


def call(ticket: Ticket, clerk: Clerk, now: float) -> Result:
    """waiting -> called, by a clerk of the ticket's department."""
    _require_department(clerk, ticket.department)
    _require(ticket, (W,), "call")
    new = ticket.replace(
        state=C,
        clerk=clerk.username,
        clerk_name=clerk.display_name,
        called_at=now,
        times_called=ticket.times_called + 1,
    )
    return new, [TicketEvent("called", new, W)]


def start(ticket: Ticket, now: float, clerk: Clerk | None = None) -> Result:
    """called -> in_consultation: the citizen answered (or the holding clerk says they did)."""
    if clerk is not None:
        _require_department(clerk, ticket.department)
    _require(ticket, (C,), "start a consultation with")
    if clerk is not None:
        _require_holder(ticket, clerk)
    new = ticket.replace(state=IC, started_at=now)
    return new, [TicketEvent("started", new, C)]


def finish(ticket: Ticket, clerk: Clerk, now: float) -> Result:
    """called | in_consultation -> done, by the holding clerk."""
    _require_department(clerk, ticket.department)
    _require(ticket, (C, IC), "finish")
    _require_holder(ticket, clerk)
    new = ticket.replace(state=TicketState.DONE, ended_at=now)
    return new, [TicketEvent("finished", new, ticket.state, meta=_service_meta(ticket, now))]


def answer_seconds_left(ticket: Ticket, now: float, answer_seconds: float) -> float | None:
    """Seconds the called citizen still has to answer before "no-show" is possible (0: over); None when not
    called."""
    if ticket.state is not C or ticket.called_at is None:
        return None
    return max(0.0, ticket.called_at + answer_seconds - now)


def no_show(ticket: Ticket, clerk: Clerk, now: float, *, answer_seconds: float) -> Result:
    """called -> no_show: the citizen did not answer within ``answer_seconds`` of being called."""
    _require_department(clerk, ticket.department)
    _require(ticket, (C,), "mark as no-show")
    _require_holder(ticket, clerk)
    left = answer_seconds_left(ticket, now, answer_seconds)
    if left:
        raise AnswerTimeRunning(
            f"the citizen still has {math.ceil(left)} seconds to answer; no-show is possible after that"
        )
    new = ticket.replace(state=TicketState.NO_SHOW, ended_at=now)
    return new, [TicketEvent("no_show", new, C)]


MAX_REJOINS = 1
"""A citizen takes their place back after a no-show once; a second no-show is final."""


def rejoin_seconds_left(ticket: Ticket, now: float, rejoin_seconds: float) -> float | None:
    """Seconds a no-show citizen may still take their old place back; None when they may not (any more)."""
    if ticket.state is not TicketState.NO_SHOW or ticket.ended_at is None or ticket.rejoins >= MAX_REJOINS:
        return None
    left = ticket.ended_at + rejoin_seconds - now
    return left if left > 0 else None


def rejoin(ticket: Ticket, now: float, *, rejoin_seconds: float, is_open: bool, connected: bool) -> Result:
    """no_show -> waiting at the old place (same seq, same department), within ``rejoin_seconds`` of the
    no-show and once per ticket; not into a closed department. The queue cap does not apply: the place was
    theirs. ``connected``: the command came over the citizen's connected socket (else the page's connect
    clears the "not connected since now" the ticket starts with, as after a check-in)."""
    _require(ticket, (TicketState.NO_SHOW,), "rejoin with")
    if rejoin_seconds_left(ticket, now, rejoin_seconds) is None:
        raise RejoinExpired(f"ticket {ticket.id} can no longer take its place back")
    if not is_open:
        raise DepartmentClosed("the department is closed now")
    new = _back_to_waiting(ticket, ticket.department, now, ended_at=None, rejoins=ticket.rejoins + 1,
                           disconnected_at=None if connected else now)
    return new, [TicketEvent("rejoined", new, TicketState.NO_SHOW)]


def _service_meta(ticket: Ticket, now: float) -> dict[str, object]:
    """How long the consultation that ends now took, for the department's estimated wait."""
    if ticket.state is IC and ticket.started_at is not None:
        return {"service_seconds": max(0.0, now - ticket.started_at), "service_department": ticket.department}
    return {}


def _back_to_waiting(ticket: Ticket, department: str, now: float, **changes: object) -> Ticket:
    return ticket.replace(
        state=W,
        department=department,
        enqueued_at=now,
        clerk=None,
        clerk_name=None,
        called_at=None,
        started_at=None,
        **changes,
    )


def return_to_queue(ticket: Ticket, clerk: Clerk, now: float) -> Result:
    """called | in_consultation -> waiting in the same department, at the original place."""
    _require_department(clerk, ticket.department)
    _require(ticket, (C, IC), "return")
    _require_holder(ticket, clerk)
    new = _back_to_waiting(ticket, ticket.department, now)
    return new, [TicketEvent("returned", new, ticket.state, meta=_service_meta(ticket, now))]


def transfer(ticket: Ticket, clerk: Clerk, target: Department, note: str, now: float, *,
             target_open: bool = True, confirm_closed: bool = False) -> Result:
    """called | in_consultation -> waiting in another department, keeping arrival order. Into a department
    that is closed now only when the clerk confirmed it (``confirm_closed``): the citizen then waits until it
    opens."""
    _require_department(clerk, ticket.department)
    _require(ticket, (C, IC), "transfer")
    _require_holder(ticket, clerk)
    if target.id == ticket.department:
        raise InvalidInput("transfer to the same department: return the ticket instead")
    if not target_open and confirm_closed is not True:
        raise DepartmentClosed(f"{target.name} is closed now: confirm to transfer anyway")
    note = _clean(note, MAX_NOTE, "note")
    new = _back_to_waiting(
        ticket, target.id, now, transferred_from=ticket.department, transfer_note=note
    )
    return new, [
        TicketEvent("transferred", new, ticket.state, ticket.department, meta=_service_meta(ticket, now))
    ]


def leave(ticket: Ticket, now: float) -> Result:
    """The citizen leaves while waiting or called."""
    _require(ticket, (W, C), "leave with")
    new = ticket.replace(state=TicketState.LEFT, ended_at=now)
    return new, [TicketEvent("left", new, ticket.state)]


def disconnect(ticket: Ticket, now: float) -> Result:
    """No page of the citizen is connected any more; the grace period starts."""
    if ticket.state.is_final or ticket.disconnected_at is not None:
        return ticket, []
    new = ticket.replace(disconnected_at=now)
    return new, [TicketEvent("disconnected", new, ticket.state)]


def reconnect(ticket: Ticket) -> Result:
    if ticket.disconnected_at is None or ticket.state.is_final:
        return ticket, []
    new = ticket.replace(disconnected_at=None)
    return new, [TicketEvent("reconnected", new, ticket.state)]


def expire(ticket: Ticket, now: float, grace_seconds: float) -> Result:
    """waiting | called -> expired, once disconnected for longer than the grace period."""
    _require(ticket, (W, C), "expire")
    if ticket.disconnected_at is None or now - ticket.disconnected_at < grace_seconds:
        raise IllegalTransition(f"ticket {ticket.id} is still within its grace period")
    new = ticket.replace(state=TicketState.EXPIRED, ended_at=now)
    return new, [TicketEvent("expired", new, ticket.state)]


def department_closed(ticket: Ticket, now: float) -> Result:
    """waiting -> expired: a lead closed the department at once and waiting citizens lose their place
    (event kind ``department_closed``, meta ``reason``; called and in-consultation tickets are not touched)."""
    _require(ticket, (W,), "end (department closed)")
    new = ticket.replace(state=TicketState.EXPIRED, ended_at=now, ended_by="department_closed")
    return new, [TicketEvent("department_closed", new, W, meta={"reason": "department_closed"})]


def position(waiting_seqs: Sequence[int], seq: int) -> int | None:
    """1-based position of ``seq`` among the sorted waiting seqs, None if not waiting."""
    import bisect

    i = bisect.bisect_left(waiting_seqs, seq)
    if i < len(waiting_seqs) and waiting_seqs[i] == seq:
        return i + 1
    return None


def choose_presence(requested: object, holds_ticket: bool) -> Presence:
    """What a clerk's own choice (available or away) becomes: busy while they hold a ticket."""
    if requested not in (Presence.AVAILABLE.value, Presence.AWAY.value):
        raise InvalidInput("status must be 'available' or 'away'")
    if holds_ticket:
        return Presence.BUSY
    return Presence(requested)
