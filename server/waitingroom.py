"""The waiting-room service: runs commands of the pure core against the store and publishes events.

It holds no rules of its own beyond "read, decide with the core, commit, publish": every decision
about tickets lives in ``server.queue.core``. The HTTP and socket.io handlers call this service.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .queue import core
from .queue.errors import (
    AlreadyQueued,
    InvalidInput,
    NotAuthorised,
    QueueError,
    RateLimited,
    TicketNotFound,
    UnknownDepartment,
)
from .queue.estimate import estimate_wait, mean_service_seconds
from .queue.model import Clerk, JoinRequest, Presence, Ticket, TicketEvent, TicketState
from .rooms.departments import Department
from .settings import Settings
from .store.base import Store, Tx

CONNECTIVITY = frozenset({"disconnected", "reconnected"})
log = logging.getLogger("sprechstunde.queue")

Listener = Callable[[list[TicketEvent]], Awaitable[None]]
PresenceListener = Callable[[Clerk, Presence], Awaitable[None]]

PRESENCE_TTL = 90.0
"""A clerk's presence lapses unless a connected dashboard renews it (every third of this)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class DepartmentLoad:
    """What citizens may know about a department right now."""

    department: Department
    open: bool
    waiting: int
    available: int
    busy: int
    service_seconds: float
    next_opening: datetime | None = None
    """When a closed department opens next (local time); None while open, or when nobody knows."""
    closed_message: str | None = None
    """Why it is closed, in the lead's or the closure's words; None while open or without a message."""

    @property
    def clerks(self) -> int:
        return self.available + self.busy

    def to_public(self) -> dict[str, Any]:
        d = self.department
        estimate = estimate_wait(self.waiting + 1, self.clerks, self.service_seconds)
        return {
            "id": d.id,
            "name": d.name,
            "description": d.description,
            "open": self.open,
            "hours": d.hours.describe(),
            "waiting": self.waiting,
            "clerks_available": self.available,
            "clerks_busy": self.busy,
            "staffed": self.clerks > 0,
            "estimate_minutes": list(estimate) if estimate else None,
            "queue_full": d.queue_cap is not None and self.waiting >= d.queue_cap,
            "require_name": d.require_name,
            "require_concern": d.require_concern,
            "next_opening": iso_local(self.next_opening),
            "closed_message": self.closed_message,
        }


def iso_local(moment: datetime | None) -> str | None:
    """A local time for the wire: ISO 8601 to the minute, with its offset (``2026-12-01T08:00+01:00``)."""
    return moment.isoformat(timespec="minutes") if moment is not None else None


class WaitingRoom:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.departments = {d.id: d for d in settings.departments}
        self._listeners: list[Listener] = []
        self._presence_listeners: list[PresenceListener] = []

    # -- wiring --
    def on_events(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_presence(self, listener: PresenceListener) -> None:
        self._presence_listeners.append(listener)

    async def _publish(self, events: list[TicketEvent]) -> None:
        for e in events:
            # Transitions, never people: no names or concerns in logs. A page's connection coming and
            # going is not a transition of the queue: debug level (a reconnect storm is thousands of them).
            prev = e.previous_state.value if e.previous_state else "-"
            log.log(logging.DEBUG if e.kind in CONNECTIVITY else logging.INFO, "ticket %s %s: %s -> %s (%s)",
                    e.ticket.id, e.kind, prev, e.ticket.state.value, e.ticket.department)
        if events:
            for listener in self._listeners:
                await listener(events)

    def department(self, department_id: object) -> Department:
        d = self.departments.get(department_id) if isinstance(department_id, str) else None
        if d is None:
            raise UnknownDepartment(f"unknown department {department_id!r}")
        return d

    def is_open(self, department: Department, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return department.is_open(datetime.fromtimestamp(now, self.settings.tz))

    def opening(self, department: Department, now: float | None = None) -> tuple[bool, datetime | None, str | None]:
        """Whether the department is open now, and if not, when it opens next and why it is closed."""
        local = datetime.fromtimestamp(self.clock() if now is None else now, self.settings.tz)
        if department.is_open(local):
            return True, None, None
        return False, department.next_opening(local), department.closed_reason(local)

    # -- reads --
    async def load(self, department_id: str) -> DepartmentLoad:
        d = self.department(department_id)
        is_open, next_opening, closed_message = self.opening(d)
        waiting = (await self.store.waiting_counts([d.id]))[d.id]
        presences = await self.store.presences(d.id)
        services = await self.store.recent_services(d.id)
        return DepartmentLoad(
            d,
            is_open,
            waiting,
            sum(1 for p in presences.values() if p is Presence.AVAILABLE),
            sum(1 for p in presences.values() if p is Presence.BUSY),
            mean_service_seconds(services, d.service_minutes),
            next_opening,
            closed_message,
        )

    async def overview(self) -> list[dict[str, Any]]:
        return [(await self.load(d)).to_public() for d in self.departments]

    async def queue_update(self, department_id: str) -> dict[str, Any]:
        """The compact per-department update every waiting page derives its position from.

        ``w`` holds the arrival seqs of the waiting tickets, delta-encoded (first value, then
        gaps); a page finds its own seq in it. No ids, names or counts per person are sent.
        """
        load = await self.load(department_id)
        seqs = [seq for seq, _ in await self.store.waiting(department_id)]
        deltas = [seqs[0]] + [b - a for a, b in zip(seqs, seqs[1:], strict=False)] if seqs else []
        return {
            "d": department_id,
            "t": round(self.clock(), 3),
            "open": load.open,
            "next": iso_local(load.next_opening),
            "msg": load.closed_message,
            "w": deltas,
            "a": load.available,
            "b": load.busy,
            "s": round(load.service_seconds),
        }

    async def ticket_for_token(self, token: Any) -> Ticket:
        """The citizen's live ticket. Unknown, malformed and expired tokens get the same answer."""
        if not isinstance(token, str) or not (16 <= len(token) <= 128):
            raise TicketNotFound("ticket not found or expired")
        ticket_id = await self.store.ticket_id_for_token(hash_token(token))
        ticket = await self.store.get_ticket(ticket_id) if ticket_id else None
        if ticket is None or not secrets.compare_digest(ticket.token_hash, hash_token(token)):
            raise TicketNotFound("ticket not found or expired")
        if ticket.state is TicketState.EXPIRED:
            # Kept in the store for a while after it ended, but to its token it is gone: the same answer as
            # an unknown token (other final states still show the citizen's page how their visit ended).
            raise TicketNotFound("ticket not found or expired")
        return ticket

    async def citizen_view(self, ticket: Ticket) -> dict[str, Any]:
        """Everything the citizen's own page shows about their ticket."""
        position = None
        if ticket.state is TicketState.WAITING:
            position = await self.store.position(ticket.department, ticket.id, ticket.seq)
        d = self.departments.get(ticket.department)
        return {
            "id": ticket.id,
            "state": ticket.state.value,
            "department": ticket.department,
            "department_name": d.name if d else ticket.department,
            "seq": ticket.seq,
            "position": position,
            "arrived_at": ticket.arrived_at,
            "clerk_name": ticket.clerk_name,
            "called_at": ticket.called_at,
            "transferred_from": ticket.transferred_from,
            "language": ticket.language,
        }

    async def dashboard(self, clerk: Clerk) -> dict[str, Any]:
        """What a clerk's dashboard shows: the queues and consultations of their departments."""
        result: dict[str, Any] = {"departments": [], "clerk": clerk.username}
        for dep_id in sorted(clerk.departments & set(self.departments)):
            waiting_ids = [i for _, i in await self.store.waiting(dep_id)]
            active_ids = await self.store.active(dep_id)
            tickets = await self.store.get_tickets(waiting_ids + active_ids)
            presences = await self.store.presences(dep_id)
            names = {}
            for username in presences:
                account = await self.store.get_staff(username)
                names[username] = account.display_name if account else username
            load = await self.load(dep_id)
            result["departments"].append({
                **load.to_public(),
                "tickets": [staff_view(t) for t in tickets],
                "clerks": {u: p.value for u, p in sorted(presences.items())},
                "clerk_names": names,
            })
        return result

    # -- citizen commands --
    async def join(self, department_id: str, request: JoinRequest, address: str,
                   existing_token: str | None = None) -> tuple[Ticket, str]:
        d = self.department(department_id)
        if existing_token:
            try:
                held = await self.ticket_for_token(existing_token)
            except TicketNotFound:
                held = None
            if held is not None and not held.state.is_final:
                raise AlreadyQueued("you are already waiting; leave that queue first")
        hits = await self.store.hit(f"join:{address}", self.settings.join_window_seconds)
        if hits > self.settings.joins_per_address:
            raise RateLimited("too many check-ins from this address; please try again later")
        token = secrets.token_urlsafe(24)
        ticket_id = secrets.token_urlsafe(9)
        now = self.clock()
        is_open = self.is_open(d, now)
        core.validate_join(d, request)  # refuse bad input before taking a sequence number
        seq = await self.store.next_seq()

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            waiting = await tx.waiting(d.id)
            ticket, events = core.join(
                d, is_open=is_open, waiting_count=len(waiting), request=request,
                ticket_id=ticket_id, token_hash=hash_token(token), seq=seq, now=now,
            )
            tx.put(ticket)
            return ticket, events

        ticket, events = await self.store.transaction(attempt)
        await self._publish(events)
        return ticket, token

    async def _citizen_command(
        self, token: str, command: Callable[[Ticket, float], tuple[Ticket, list[TicketEvent]]]
    ) -> Ticket:
        ticket_id = (await self.ticket_for_token(token)).id
        return await self._apply(ticket_id, command)

    async def _apply(
        self, ticket_id: str, command: Callable[[Ticket, float], tuple[Ticket, list[TicketEvent]]],
        clerk: Clerk | None = None,
    ) -> Ticket:
        """Run one command of the core on one ticket, atomically, then publish what happened."""
        now = self.clock()

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            ticket = await tx.ticket(ticket_id)
            if ticket is None:
                raise TicketNotFound(f"no ticket {ticket_id}")
            new, events = command(ticket, now)
            if new is not ticket:
                tx.put(new)
            return new, events

        new, events = await self.store.transaction(attempt)
        await self._after(events, clerk)
        return new

    async def leave_ticket(self, ticket_id: str) -> Ticket:
        """The citizen behind an authenticated socket leaves."""
        return await self._apply(ticket_id, core.leave)

    async def answer_ticket(self, ticket_id: str) -> Ticket:
        return await self._apply(ticket_id, lambda t, now: core.start(t, now))

    async def leave(self, token: str) -> Ticket:
        return await self._citizen_command(token, core.leave)

    async def answer(self, token: str) -> Ticket:
        """The citizen accepts the call: the consultation starts."""
        return await self._citizen_command(token, lambda t, now: core.start(t, now))

    async def citizen_connected(self, ticket_id: str) -> Ticket:
        return await self._apply(ticket_id, lambda t, now: core.reconnect(t))

    async def citizen_disconnected(self, ticket_id: str) -> Ticket:
        return await self._apply(ticket_id, core.disconnect)

    async def sweep(self) -> int:
        """Expire tickets whose citizen stayed away longer than the grace period, including those whose page
        never connected (a new ticket counts as disconnected since it joined)."""
        now = self.clock()
        grace = self.settings.grace_seconds
        expired = 0
        for ticket_id in await self.store.disconnected_before(now - grace):
            try:
                await self._apply(ticket_id, lambda t, n: core.expire(t, n, grace))
                expired += 1
            except QueueError:
                continue  # reconnected or finished meanwhile
        return expired

    # -- clerk commands --
    def _check_department(self, clerk: Clerk, department_id: str) -> Department:
        d = self.department(department_id)
        if d.id not in clerk.departments:
            raise NotAuthorised(f"you do not serve {d.name}")
        return d

    async def call_next(self, clerk: Clerk, department_id: str) -> Ticket:
        d = self._check_department(clerk, department_id)
        now = self.clock()

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            ticket_id = core.pick_next(await tx.waiting(d.id))
            ticket = await tx.ticket(ticket_id)
            if ticket is None:  # index and ticket out of step: never expected, refuse loudly
                raise TicketNotFound(f"ticket {ticket_id} vanished")
            new, events = core.call(ticket, clerk, now)
            tx.put(new)
            return new, events

        new, events = await self.store.transaction(attempt)
        await self._after(events, clerk)
        return new

    async def call(self, clerk: Clerk, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now: core.call(t, clerk, now))

    async def start(self, clerk: Clerk, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now: core.start(t, now, clerk))

    async def finish(self, clerk: Clerk, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now: core.finish(t, clerk, now))

    async def no_show(self, clerk: Clerk, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now: core.no_show(t, clerk, now))

    async def return_to_queue(self, clerk: Clerk, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now: core.return_to_queue(t, clerk, now))

    async def transfer(self, clerk: Clerk, ticket_id: object, department_id: object, note: object) -> Ticket:
        target = self.department(department_id)
        if not isinstance(note, str):
            raise InvalidInput("note must be text")
        return await self._clerk_command(
            clerk, ticket_id, lambda t, now: core.transfer(t, clerk, target, note, now)
        )

    async def _clerk_command(
        self, clerk: Clerk, ticket_id: Any,
        command: Callable[[Ticket, float], tuple[Ticket, list[TicketEvent]]],
    ) -> Ticket:
        if not isinstance(ticket_id, str) or not ticket_id or len(ticket_id) > 64:
            raise InvalidInput("ticket id missing or malformed")
        existing = await self.store.get_ticket(ticket_id)
        # A foreign department's ticket looks exactly like a missing one.
        if existing is None or existing.department not in clerk.departments:
            raise TicketNotFound(f"no ticket {ticket_id} in your departments")
        return await self._apply(ticket_id, command, clerk)

    async def _after(self, events: list[TicketEvent], clerk: Clerk | None = None) -> None:
        """Publish, then the bookkeeping that follows a transition: service times, the clerk's presence.

        Events go out first, so that the called citizen hears of it before any position update that
        no longer lists them.
        """
        await self._publish(events)
        for e in events:
            if "service_seconds" in e.meta:
                await self.store.record_service(e.meta["service_department"], e.meta["service_seconds"])
            if clerk is not None and e.kind == "called":
                await self.set_presence(clerk, Presence.BUSY)
            elif clerk is not None and e.kind in ("finished", "no_show", "returned", "transferred"):
                await self.set_presence(clerk, Presence.AVAILABLE)

    async def holds_ticket(self, clerk: Clerk) -> bool:
        """Whether the clerk has a called or in-consultation ticket in one of their departments."""
        for dep_id in clerk.departments:
            for t in await self.store.get_tickets(await self.store.active(dep_id)):
                if t.clerk == clerk.username:
                    return True
        return False

    async def choose_presence(self, clerk: Clerk, requested: object) -> Presence:
        presence = core.choose_presence(requested, await self.holds_ticket(clerk))
        await self.set_presence(clerk, presence)
        return presence

    async def set_presence(self, clerk: Clerk, presence: Presence) -> None:
        await self.store.set_presence(clerk.username, sorted(clerk.departments), presence, PRESENCE_TTL)
        log.info("clerk presence -> %s", presence.value)
        for listener in self._presence_listeners:
            await listener(clerk, presence)


def staff_view(t: Ticket) -> dict[str, Any]:
    """A ticket as clerks see it (name and concern included; never the token hash)."""
    d = t.to_dict()
    d.pop("token_hash")
    return d
