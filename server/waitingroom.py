"""The waiting-room service: runs commands of the pure core against the store and publishes events.

It holds no rules of its own beyond "read, decide with the core, commit, publish": every decision
about tickets lives in ``server.queue.core``. The HTTP and socket.io handlers call this service.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from . import live_settings
from .queue import core
from .queue.errors import (
    AlreadyQueued,
    InvalidInput,
    JoinLimited,
    NotAuthorised,
    QueueError,
    TicketNotFound,
    UnknownDepartment,
)
from .queue.estimate import department_estimate, mean_service_seconds
from .queue.model import Clerk, JoinRequest, Presence, Ticket, TicketEvent, TicketState
from .rooms.departments import Department
from .settings import Settings
from .store.base import Store, Tx
from .store.departments import DepartmentDirectory

CONNECTIVITY = frozenset({"disconnected", "reconnected"})
_PRESENCE_AFTER = {"called": Presence.BUSY, "finished": Presence.AVAILABLE, "no_show": Presence.AVAILABLE,
                   "returned": Presence.AVAILABLE, "transferred": Presence.AVAILABLE}
"""A clerk's presence after their command caused one of these events."""
log = logging.getLogger("sprechstunde.queue")

Listener = Callable[[list[TicketEvent]], Awaitable[None]]
Command = Callable[[Ticket, float], tuple[Ticket, list[TicketEvent]]]
"""A command of the core on one ticket at ``now``."""
ClerkCommand = Callable[[Ticket, float, Clerk], tuple[Ticket, list[TicketEvent]]]
"""The same, decided with the clerk who gave it."""
PresenceListener = Callable[[Clerk, Presence], Awaitable[None]]

ClerkOrCheck = Clerk | Awaitable[Clerk]
"""A clerk command's caller: the clerk, or the check of their session still to be awaited (a dashboard's
socket event: ``_ClerkGate``)."""

WALKINS_TTL = 24 * 3600.0
"""The count of walk-ins called since a department's last appointment lapses after a day without calls."""

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
        estimate = department_estimate(self.waiting + 1, is_open=self.open, clerks=self.clerks,
                                       service_seconds=self.service_seconds)
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
            "appointments": d.appointments is not None,  # offers bookable appointments (/book/<id>)
            "next_opening": iso_local(self.next_opening),
            "closed_message": self.closed_message,
        }


def iso_local(moment: datetime | None) -> str | None:
    """A local time for the wire: ISO 8601 to the minute, with its offset (``2026-12-01T08:00+01:00``)."""
    return moment.isoformat(timespec="minutes") if moment is not None else None


class AppointmentHooks(Protocol):
    """What the waiting room asks of booked appointments (server/appointments/service.py)."""

    async def due(self, department: str, now: float) -> tuple[list[tuple[float, str]], int, str | None]:
        """(appointment time, ticket id) of waiting appointment tickets whose slot has begun, the rule's
        ``every`` and the key of the counter of walk-ins called since the last appointment (None: the
        department has no appointments), which "call next" reads and writes in its own transaction
        (``server.queue.core.pick_next``)."""

    async def today(self, department: str) -> list[dict[str, Any]]:
        """The department's appointments today, for the clerks' dashboard."""


class WaitingRoom:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 directory: DepartmentDirectory | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.directory = directory or DepartmentDirectory(None, settings.departments)
        """The live department directory (server/store/departments.py): edited at /admin, the same on every
        node; without a store (unit tests) it holds the configured departments."""
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._presence_listeners: list[PresenceListener] = []
        self._opening_cache: dict[str, tuple[Department, int, tuple[bool, datetime | None, str | None]]] = {}
        """Per department: ``opening`` as of one minute (``_opening_this_minute``)."""
        self.appointments: AppointmentHooks | None = None
        """Set by the appointments service (server/appointments/service.py) when the app runs it."""
        self._live_from: dict[str, Any] | None = None
        self._live_config: Settings | None = None
        self._live: dict[str, int | float] = {}

    def live(self, name: str) -> Any:
        """A server-wide setting an admin may change at runtime (``server.live_settings.FIELDS``: answer,
        rejoin and grace seconds, join limits): the stored value, live on every node, else the configuration's."""
        stored = self.directory.settings
        # Both are replaced (never mutated) on a change: the stored values by an admin's edit, the
        # configuration by whoever swaps ``self.settings`` (tests do).
        if stored is not self._live_from or self.settings is not self._live_config:
            self._live = live_settings.current(self.settings, stored)
            self._live_from, self._live_config = stored, self.settings
        return self._live[name]

    # -- wiring --
    def on_events(self, listener: Listener, kinds: frozenset[str] | None = None) -> None:
        """``listener`` hears every batch of events, or with ``kinds`` only batches with one of those: a
        page connecting or leaving (``CONNECTIVITY``) then costs no call to the audit, statistics or
        metrics (a reconnect storm is thousands of them)."""
        self._listeners.append((listener, kinds))

    def on_presence(self, listener: PresenceListener) -> None:
        self._presence_listeners.append(listener)

    async def _publish(self, events: list[TicketEvent], alongside: Awaitable[None] | None = None) -> None:
        """Log the events and tell every listener; ``alongside`` (the bookkeeping of a command) runs with the
        listeners, started after them."""
        for e in events:
            # Transitions, never people: no names or concerns in logs. A page's connection coming and
            # going is not a transition of the queue: debug level (a reconnect storm is thousands of them).
            prev = e.previous_state.value if e.previous_state else "-"
            log.log(logging.DEBUG if e.kind in CONNECTIVITY else logging.INFO, "ticket %s %s: %s -> %s (%s)",
                    e.ticket.id, e.kind, prev, e.ticket.state.value, e.ticket.department)
        happened = {e.kind for e in events}
        listeners = [listener for listener, kinds in self._listeners if kinds is None or not happened.isdisjoint(kinds)]
        if not events or not listeners:
            if alongside is not None:
                await alongside
            return
        # The first listener (the pages: a called citizen hears of it at once) runs here; the others (audit,
        # statistics, metrics) alongside it, so that their round trips to the store do not add up.
        others = [asyncio.ensure_future(self._tell(listener, events)) for listener in listeners[1:]]
        if alongside is not None:
            others.append(asyncio.ensure_future(alongside))
        try:
            await self._tell(listeners[0], events)
        finally:
            if others:
                await asyncio.gather(*others)

    @staticmethod
    async def _tell(listener: Listener, events: list[TicketEvent]) -> None:
        # The transition is committed: a listener (pages, statistics, audit) failing must not turn it into an
        # error for whoever caused it, nor keep the other listeners from hearing of it.
        try:
            await listener(events)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("a listener of queue events failed")

    @property
    def departments(self) -> dict[str, Department]:
        """Id -> Department, as the directory holds them now (replaced, never mutated, on a change)."""
        return self.directory.departments

    def department(self, department_id: object) -> Department:
        d = self.departments.get(department_id) if isinstance(department_id, str) else None
        if d is None:
            if not isinstance(department_id, str) or not department_id:  # (probing: "unknown department None")
                raise UnknownDepartment("department missing: the id of a department is needed")
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
        return (await self.queue_update_and_load(department_id))[0]

    async def queue_update_and_load(self, department_id: str) -> tuple[dict[str, Any], DepartmentLoad]:
        """``queue_update`` and the load it was made from (the dashboards' ``load``): one read of both."""
        load = await self.load(department_id)
        seqs = await self.store.waiting_seqs(department_id)
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
        }, load

    async def ticket_for_token(self, token: Any) -> Ticket:
        """The citizen's ticket. Unknown, malformed and expired tokens get the same answer; a ticket ended by
        a lead's closing at once (``ended_by`` department_closed) answers with its final state, so that the
        page, even one that was disconnected at that moment, says the department closed."""
        if not isinstance(token, str) or not (16 <= len(token) <= 128):
            raise TicketNotFound("ticket not found or expired")
        ticket = await self.store.ticket_for_token(hash_token(token))
        if ticket is None or not secrets.compare_digest(ticket.token_hash, hash_token(token)):
            raise TicketNotFound("ticket not found or expired")
        if ticket.state is TicketState.EXPIRED and ticket.ended_by != "department_closed":
            # Expired by the grace period: kept in the store for a while after it ended, but to its token it is
            # gone, the same answer as an unknown token (other final states, and a place lost to a lead's
            # closing, still show the citizen's page how their visit ended).
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
            # A booked appointment's ticket is called from this time on, ahead of walk-ins: the walk-in
            # estimate does not apply to it (the page says so).
            "appointment_at": ticket.appointment_at,
            **self.fairness_view(ticket),
            # A lead closed the department at once and the place was lost: the page says so, in their words.
            **({"ended_by": ticket.ended_by, "closed_message": (d.closed_message if d else None) or ""}
               if ticket.ended_by == "department_closed" else {}),
        }

    def fairness_view(self, ticket: Ticket) -> dict[str, Any]:
        """The called citizen's answer time and a no-show citizen's time to rejoin, in seconds from now (the
        page counts down from when it received them, whatever its own clock says)."""
        now = self.clock()
        answer = core.answer_seconds_left(ticket, now, self.live("answer_seconds"))
        rejoin = core.rejoin_seconds_left(ticket, now, self.live("rejoin_seconds"))
        d = self.departments.get(ticket.department)
        is_open, next_opening, _ = self._opening_this_minute(d, now) if d else (False, None, None)
        return {
            "answer_seconds": self.live("answer_seconds"),
            "answer_seconds_left": None if answer is None else round(answer, 1),
            "rejoin_seconds_left": None if rejoin is None else round(rejoin, 1),
            # The department the ticket waits in now (after a transfer or return too): open, else when it opens.
            "department_open": is_open,
            "next_opening": iso_local(next_opening),
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
                "appointments": await self.appointments.today(dep_id) if self.appointments else [],
                "answer_seconds": self.live("answer_seconds"),
            })
        result["transfer_targets"] = self.transfer_targets()
        result["timezone"] = self.settings.timezone
        return result

    def _opening_this_minute(self, d: Department, now: float) -> tuple[bool, datetime | None, str | None]:
        """``opening`` remembered per department for the current minute (opening hours are whole minutes; an
        edited department is a new object): a reconnect storm of a closed department's pages asks it once per
        page, and finding the next opening can walk a year of days."""
        cache = self._opening_cache
        minute = int(now // 60)
        cached = cache.get(d.id)
        if cached is not None and cached[0] is d and cached[1] == minute:
            return cached[2]
        result = self.opening(d, now)
        cache[d.id] = (d, minute, result)
        return result

    def transfer_targets(self) -> list[dict[str, Any]]:
        """Every department a clerk may transfer to, with whether it is open now and when it opens next."""
        targets = []
        now = self.clock()
        for d in self.departments.values():
            is_open, next_opening, closed_message = self._opening_this_minute(d, now)
            targets.append({"id": d.id, "name": d.name, "open": is_open, "next_opening": iso_local(next_opening),
                            "closed_message": closed_message})
        return targets

    # -- citizen commands --
    async def join(self, department_id: str, request: JoinRequest, address: str,
                   existing_token: str | None = None, appointment_at: float | None = None) -> tuple[Ticket, str]:
        """A citizen checks in; ``appointment_at``: the start of their booked appointment (the appointments
        service checks that; such a check-in is not counted against the address's check-in limit)."""
        d = self.department(department_id)
        if existing_token:
            try:
                held = await self.ticket_for_token(existing_token)
            except TicketNotFound:
                held = None
            if held is not None and not held.state.is_final:
                raise AlreadyQueued("you are already waiting; leave that queue first")
        # Bad input and a closed department are refused first: they are what the citizen needs to hear (not
        # "try again later"), and they cost no sequence number and no count.
        now = self.clock()
        is_open = self.is_open(d, now)
        core.validate_join(d, request)
        core.check_open(d, is_open=is_open, appointment_at=appointment_at)
        # Only successful check-ins count (the hit follows the commit below), so that a family or a library
        # behind one address is not locked out by refusals; trusted networks have their own limit.
        limit_key, limit = f"join:{address}", 0 if appointment_at is not None else self.join_limit(address)
        if limit and await self.store.count(limit_key) >= limit:
            retry_after = max(1, math.ceil(await self.store.window_left(limit_key)))
            raise JoinLimited("too many check-ins from this address; please try again later", retry_after)
        token = secrets.token_urlsafe(24)
        ticket_id = secrets.token_urlsafe(9)
        seq = await self.store.next_seq()

        # The queue's length matters to the core only for a cap (never for an appointment); not reading it
        # otherwise keeps check-ins to one department from conflicting with each other on Redis.
        counted = d.queue_cap is not None and appointment_at is None

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            waiting_count = await tx.waiting_count(d.id) if counted else 0
            ticket, events = core.join(
                d, is_open=is_open, waiting_count=waiting_count, request=request,
                ticket_id=ticket_id, token_hash=hash_token(token), seq=seq, now=now,
                appointment_at=appointment_at,
            )
            tx.put(ticket)
            return ticket, events

        ticket, events = await self.store.transaction(attempt)
        if limit:
            await self.store.hit(limit_key, self.live("join_window_seconds"))
        await self._publish(events)
        return ticket, token

    def join_limit(self, address: str) -> int:
        """Check-ins allowed per window from ``address`` (0: not limited): a trusted shared connection
        (``join_trusted_networks``) has ``joins_per_trusted_address``, any other ``joins_per_address``."""
        if _in_networks(address, self.settings.join_trusted_networks):
            return int(self.live("joins_per_trusted_address"))
        return int(self.live("joins_per_address"))

    async def _citizen_command(self, token: str, command: Command) -> Ticket:
        ticket_id = (await self.ticket_for_token(token)).id
        return await self._apply(ticket_id, command)

    async def _apply(self, ticket_id: str, command: Command | ClerkCommand, gate: _ClerkGate | None = None) -> Ticket:
        """Run one command of the core on one ticket, atomically, then publish what happened. A clerk's
        command (``gate``) is decided with the clerk once their session is checked, and a ticket of another
        of their departments looks exactly like a missing one."""
        now = self.clock()

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            ticket = await tx.ticket(ticket_id)
            clerk = await gate.clerk() if gate is not None else None
            if ticket is None or (clerk is not None and ticket.department not in clerk.departments):
                raise TicketNotFound("ticket not found or expired")  # one answer for unknown and foreign ids
            new, events = command(ticket, now, clerk) if clerk is not None else command(ticket, now)  # type: ignore[call-arg]
            if new is not ticket:
                tx.put(new)
            return new, events

        new, events = await self.store.transaction(attempt)
        await self._after(events, await gate.clerk() if gate is not None else None)
        return new

    async def leave_ticket(self, ticket_id: str) -> Ticket:
        """The citizen behind an authenticated socket leaves."""
        return await self._apply(ticket_id, core.leave)

    async def answer_ticket(self, ticket_id: str) -> Ticket:
        return await self._apply(ticket_id, lambda t, now: core.start(t, now))

    async def leave(self, token: str) -> Ticket:
        return await self._citizen_command(token, core.leave)

    def _rejoin(self, connected: bool) -> Callable[[Ticket, float], tuple[Ticket, list[TicketEvent]]]:
        def command(ticket: Ticket, now: float) -> tuple[Ticket, list[TicketEvent]]:
            d = self.departments.get(ticket.department)
            return core.rejoin(ticket, now, rejoin_seconds=self.live("rejoin_seconds"),
                               is_open=d is not None and self.is_open(d, now), connected=connected)

        return command

    async def rejoin(self, token: str) -> Ticket:
        """A no-show citizen takes their old place back (HTTP: their page's socket connects afterwards)."""
        return await self._citizen_command(token, self._rejoin(connected=False))

    async def rejoin_ticket(self, ticket_id: str) -> Ticket:
        """The same from the citizen's connected socket."""
        return await self._apply(ticket_id, self._rejoin(connected=True))

    async def answer(self, token: str) -> Ticket:
        """The citizen accepts the call: the consultation starts."""
        return await self._citizen_command(token, lambda t, now: core.start(t, now))

    async def citizen_connected(self, ticket_id: str) -> Ticket:
        return await self._apply(ticket_id, lambda t, now: core.reconnect(t))

    async def citizen_disconnected(self, ticket_id: str, closed_at: float | None = None) -> Ticket:
        """The ticket's last page is gone; its grace period starts now, or when that page closed
        (``closed_at``: a page settled after its away period, ``Signaling.settle_away``)."""
        if closed_at is None:
            return await self._apply(ticket_id, core.disconnect)
        return await self._apply(ticket_id, lambda t, now: core.disconnect(t, min(now, closed_at)))

    async def end_waiting(self, department_id: str) -> int:
        """End every waiting ticket of a department a lead closed at once, the citizens losing their place
        (``core.department_closed``); their pages are told through the usual ticket events."""
        ended = 0
        for _, ticket_id in await self.store.waiting(department_id):
            try:
                await self._apply(ticket_id, core.department_closed)
                ended += 1
            except QueueError:
                continue  # called or gone meanwhile
        return ended

    async def sweep(self) -> int:
        """Expire tickets whose citizen stayed away longer than the grace period, including those whose page
        never connected (a new ticket counts as disconnected since it joined)."""
        now = self.clock()
        grace = self.live("grace_seconds")
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

    async def call_next(self, clerk: ClerkOrCheck, department_id: str) -> Ticket:
        return await self._gated(clerk, lambda gate: self._call_next(gate, department_id))

    async def _gated(self, clerk: ClerkOrCheck, run: Callable[[_ClerkGate], Awaitable[Ticket]]) -> Ticket:
        gate = _ClerkGate(clerk)
        try:
            return await run(gate)
        except Exception:
            await gate.settle()
            raise
        finally:
            gate.close()

    async def _call_next(self, gate: _ClerkGate, department_id: str) -> Ticket:
        d = self.department(department_id)
        now = self.clock()
        # Tickets of booked appointments whose slot has begun go ahead of walk-ins (by the department's rule).
        due, every, walkins = await self.appointments.due(d.id, now) if self.appointments else ([], 1, None)

        async def attempt(tx: Tx) -> tuple[Ticket, list[TicketEvent]]:
            # Not the whole queue: its head (the earliest walk-in is among the first len(due) + 1) and the due
            # appointment tickets still waiting here, wherever they are in it. The core decides on those. The
            # walk-ins counted since the last appointment are read and written within the transaction: two
            # clerks calling at once (on two nodes) count one after the other.
            if walkins is None:
                waiting, since = await tx.waiting_head(d.id, len(due) + 1), 0
            else:
                waiting, since = await asyncio.gather(tx.waiting_head(d.id, len(due) + 1), tx.counter(walkins))
            clerk = await gate.clerk()
            self._check_department(clerk, d.id)
            head = {i for _, i in waiting}
            for _, due_id in due:
                t = await tx.ticket(due_id) if due_id not in head else None
                if t is not None and t.state is TicketState.WAITING and t.department == d.id:
                    waiting.append((t.seq, t.id))
            ticket_id = core.pick_next(sorted(waiting), due, every=every, walkins_since=since)
            ticket = await tx.ticket(ticket_id)
            if ticket is None:  # index and ticket out of step: never expected, refuse loudly
                raise TicketNotFound(f"ticket {ticket_id} vanished")
            new, events = core.call(ticket, clerk, now)
            tx.put(new)
            if walkins is not None:
                tx.set_counter(walkins, 0 if any(i == new.id for _, i in due) else since + 1, WALKINS_TTL)
            return new, events

        new, events = await self.store.transaction(attempt)
        await self._after(events, await gate.clerk())
        return new

    async def call(self, clerk: ClerkOrCheck, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now, c: core.call(t, c, now))

    async def start(self, clerk: ClerkOrCheck, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now, c: core.start(t, now, c))

    async def finish(self, clerk: ClerkOrCheck, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now, c: core.finish(t, c, now))

    async def no_show(self, clerk: ClerkOrCheck, ticket_id: str) -> Ticket:
        answer = self.live("answer_seconds")
        return await self._clerk_command(
            clerk, ticket_id, lambda t, now, c: core.no_show(t, c, now, answer_seconds=answer)
        )

    async def return_to_queue(self, clerk: ClerkOrCheck, ticket_id: str) -> Ticket:
        return await self._clerk_command(clerk, ticket_id, lambda t, now, c: core.return_to_queue(t, c, now))

    async def transfer(self, clerk: ClerkOrCheck, ticket_id: object, department_id: object, note: object,
                       confirm_closed: object = False) -> Ticket:
        async def run(gate: _ClerkGate) -> Ticket:
            target = self.department(department_id)
            if not isinstance(note, str):
                raise InvalidInput("note must be text")
            if not isinstance(confirm_closed, bool):
                raise InvalidInput("confirm_closed must be true or false")
            return await self._gated_command(
                gate, ticket_id, lambda t, now, c: core.transfer(
                    t, c, target, note, now, target_open=self.is_open(target, now), confirm_closed=confirm_closed)
            )

        return await self._gated(clerk, run)

    async def _clerk_command(self, clerk: ClerkOrCheck, ticket_id: Any, command: ClerkCommand) -> Ticket:
        return await self._gated(clerk, lambda gate: self._gated_command(gate, ticket_id, command))

    async def _gated_command(self, gate: _ClerkGate, ticket_id: Any, command: ClerkCommand) -> Ticket:
        if not isinstance(ticket_id, str) or not ticket_id:
            raise InvalidInput("ticket id missing")
        if len(ticket_id) > 64:  # malformed: the same answer as an unknown id (docs/protocol.md), once signed in
            await gate.clerk()
            raise TicketNotFound("ticket not found or expired")
        return await self._apply(ticket_id, command, gate)

    async def _after(self, events: list[TicketEvent], clerk: Clerk | None = None) -> None:
        """Publish, and the bookkeeping that follows a transition: service times, the clerk's presence.

        Events go out first (the first listener sends before the bookkeeping's first store write is
        answered), so that the called citizen hears of it before any position update that no longer lists
        them.
        """
        if clerk is not None:
            events = [replace(e, actor=clerk.username) for e in events]
        if not any("service_seconds" in e.meta or (clerk is not None and e.kind in _PRESENCE_AFTER) for e in events):
            await self._publish(events)
            return
        # The bookkeeping's store writes go alongside the listeners' (one round trip less on Redis): the pages
        # still hear first, since the first listener sends before it awaits anything.
        await self._publish(events, alongside=self._bookkeeping(events, clerk))

    async def _bookkeeping(self, events: list[TicketEvent], clerk: Clerk | None) -> None:
        """Service times and the clerk's presence, their writes side by side (one round trip on Redis)."""
        writes: list[Awaitable[None]] = []
        presence = None
        for e in events:
            if "service_seconds" in e.meta:
                writes.append(self.store.record_service(e.meta["service_department"], e.meta["service_seconds"]))
            if clerk is not None and e.kind in _PRESENCE_AFTER:
                presence = _PRESENCE_AFTER[e.kind]  # the last event's says where the clerk is now
        if clerk is not None and presence is not None:
            writes.append(self.set_presence(clerk, presence))
        results = await asyncio.gather(*writes, return_exceptions=True)
        for r in results:  # every write was tried; the first failure is the answer, as before
            if isinstance(r, BaseException):
                raise r

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
            try:  # as for queue events: the presence is stored; a listener failing must not undo the answer
                await listener(clerk, presence)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("a listener of clerk presence failed")


class _ClerkGate:
    """A clerk command's session check, run alongside the command's first read.

    On Redis every awaited round trip is a turn of an event loop busy with thousands of pages: the check of
    the dashboard's session and the command's first read (the queue's head, the ticket) leave together and
    come back together. The command awaits the check before it decides anything (nothing is written, nothing
    is told, before the clerk is known), and a refused check is the answer whatever else failed."""

    def __init__(self, clerk: ClerkOrCheck) -> None:
        self._clerk = clerk if isinstance(clerk, Clerk) else None
        self._task = None if isinstance(clerk, Clerk) else asyncio.ensure_future(clerk)

    async def clerk(self) -> Clerk:
        if self._clerk is None:
            assert self._task is not None
            self._clerk = await self._task
        return self._clerk

    async def settle(self) -> None:
        """After the command failed: raise the check's own refusal instead, if it was refused."""
        if self._task is not None and not self._task.cancelled():
            await self._task  # (its refusal, if it refused, propagates)

    def close(self) -> None:
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled():
            self._task.exception()  # retrieved (a command cancelled after the check failed): no warning


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e) for e in entries)  # validated in settings


def _in_networks(address: str, entries: tuple[str, ...]) -> bool:
    if not entries:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in _networks(entries))


def staff_view(t: Ticket) -> dict[str, Any]:
    """A ticket as clerks see it (name and concern included; never the token hash)."""
    d = t.to_dict()
    d.pop("token_hash")
    return d
