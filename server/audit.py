"""The audit log: who called, transferred, finished, marked a no-show, looked at or deleted a recording,
changed a setting or a staff account, signed in or out, or failed to sign in.

Entries name staff (usernames) and ids (tickets, recordings, departments, accounts), never citizens:
the ticket listener below takes only the ticket's id and departments from an event, never its name,
concern or transfer note, and callers pass ``details`` of settings and ids only. ``record`` never lets a
store failure break what is being logged (it is logged instead); a malformed call is a bug and raises.

Who reads it: an admin every entry; a lead the entries of the departments they lead (an entry names the
departments it concerns, e.g. both ends of a transfer, every department of a changed account); entries
without a department (server-wide settings, sign-ins of accounts without departments) only admins.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .queue.model import TicketEvent
from .store.audit import AuditEntry, AuditPage, AuditQuery, AuditStore, DetailValue, entry_departments
from .store.recordings import AccessEntry
from .tasks import stopping

log = logging.getLogger("sprechstunde.audit")

SYSTEM = "system"
DEFAULT_RETENTION_DAYS = 400
SWEEP_INTERVAL = 3600.0
"""Seconds between retention sweeps."""

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$")
_DETAIL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_DETAILS = 20
MAX_TEXT = 200
MAX_TARGET = 128
MAX_LIST = 50

TICKET_ACTIONS = {"called": "ticket.called", "transferred": "ticket.transferred", "finished": "ticket.finished",
                  "no_show": "ticket.no_show", "returned": "ticket.returned"}
"""Ticket events a clerk causes and the audit action of each. Citizens' own moves (join, leave, answer)
and the sweep's expiries are statistics, not audit: they name no member of staff."""


def clean_details(details: Mapping[str, Any] | None) -> dict[str, DetailValue]:
    """A copy fit for the log: at most ``MAX_DETAILS`` scalar (or list-of-text) values under short
    lower-case keys, texts cut at ``MAX_TEXT`` characters. Anything else is a programming error."""
    if not details:
        return {}
    if len(details) > MAX_DETAILS:
        raise ValueError("audit details: too many keys")
    out: dict[str, DetailValue] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY.match(key):
            raise ValueError(f"audit details: bad key {key!r}")
        if isinstance(value, str):
            out[key] = value[:MAX_TEXT]
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
        elif isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
            items = sorted(value) if isinstance(value, set | frozenset) else list(value)
            out[key] = [v[:MAX_TEXT] for v in items[:MAX_LIST]]
        else:
            raise ValueError(f"audit details: {key} must be text, a number, true/false, null or a list of text")
    return out


class AuditLog:
    def __init__(self, store: AuditStore, retention_days: int = DEFAULT_RETENTION_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_seconds = retention_days * 86400.0
        self.clock = clock

    async def record(self, actor: str, action: str, *, target: str = "",
                     department: str | Iterable[str] | None = None,
                     details: Mapping[str, Any] | None = None, now: float | None = None) -> AuditEntry | None:
        """Write one entry; returns it, or None when the store failed (logged, never raised)."""
        if not isinstance(actor, str) or not actor or len(actor) > 64:
            raise ValueError("audit: actor must be a username or 'system'")
        if not _ACTION.match(action):
            raise ValueError(f"audit: bad action {action!r}")
        if not isinstance(target, str):
            raise ValueError("audit: target must be an id")
        entry = AuditEntry(self.clock() if now is None else now, actor, action, target[:MAX_TARGET],
                           entry_departments(department), clean_details(details))
        try:
            return await self.store.append(entry)
        except Exception:  # noqa: BLE001 - the audited action already happened; it must not fail now
            log.exception("audit entry %s could not be stored", action)
            return None

    async def query(self, query: AuditQuery) -> AuditPage:
        return await self.store.query(query)

    # -- sources --
    async def on_ticket_events(self, events: list[TicketEvent]) -> None:
        """WaitingRoom.on_events listener: what clerks did to tickets (ids and departments only). Never
        raises: the waiting room's move has happened and must not fail because of its audit entry."""
        try:
            await self._ticket_events(events)
        except Exception:  # noqa: BLE001
            log.exception("audit of ticket events failed")

    async def _ticket_events(self, events: list[TicketEvent]) -> None:
        for e in events:
            action = TICKET_ACTIONS.get(e.kind)
            if action is None or not e.actor:
                continue
            departments = {e.ticket.department}
            details: dict[str, Any] = {}
            if e.previous_department:
                departments.add(e.previous_department)
                details = {"from": e.previous_department, "to": e.ticket.department}
            await self.record(e.actor, action, target=e.ticket.id, department=departments, details=details)

    async def on_recording_access(self, entry: AccessEntry) -> None:
        """RecordingService hook: every entry of the recordings' access log, also in the audit log."""
        await self.record(entry.actor, f"recording.{entry.action}", target=entry.recording,
                          department=entry.department, now=entry.at)

    # -- retention --
    async def sweep(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        removed = await self.store.sweep(now - self.retention_seconds)
        if removed:
            log.info("audit log: %d entries past retention deleted", removed)
        return removed

    async def run_sweeps(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - keep sweeping after a store hiccup
                if stopping():
                    raise asyncio.CancelledError from None
                log.exception("audit sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL)

    async def close(self) -> None:
        await self.store.close()
