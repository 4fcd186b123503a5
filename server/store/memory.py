"""The embedded store: everything in this process's memory (staff accounts in a JSON file).

Transactions hold one asyncio lock and never suspend in between, so they are atomic within the
process. Live state is lost when the process stops; use the Redis store to keep it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..queue.estimate import RECENT_SERVICES
from ..queue.model import Presence, Ticket, TicketState
from .base import TERMINAL_RETENTION_SECONDS, StaffAccount, Store, Tx

T = TypeVar("T")


class _MemoryTx(Tx):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.writes: dict[str, Ticket] = {}
        self.counters: dict[str, tuple[int, float]] = {}

    async def waiting(self, department: str) -> list[tuple[int, str]]:
        return list(self._store._waiting.get(department, []))

    async def waiting_head(self, department: str, k: int) -> list[tuple[int, str]]:
        return self._store._waiting.get(department, [])[:max(0, k)]

    async def waiting_count(self, department: str) -> int:
        return len(self._store._waiting.get(department, []))

    async def ticket(self, ticket_id: str) -> Ticket | None:
        if ticket_id in self.writes:
            return self.writes[ticket_id]
        return self._store._live_ticket(ticket_id)

    def put(self, ticket: Ticket) -> None:
        self.writes[ticket.id] = ticket

    async def counter(self, key: str) -> int:
        if key in self.counters:
            return self.counters[key][0]
        return await self._store.count(key)

    def set_counter(self, key: str, value: int, ttl: float) -> None:
        self.counters[key] = (value, ttl)


class MemoryStore(Store):
    def __init__(self, staff_file: str | os.PathLike[str] | None = None, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = asyncio.Lock()
        self._tickets: dict[str, Ticket] = {}
        self._expires: dict[str, float] = {}
        self._tokens: dict[str, str] = {}
        self._waiting: dict[str, list[tuple[int, str]]] = {}
        self._active: dict[str, set[str]] = {}
        self._disconnected: dict[str, float] = {}
        self._seq = 0
        self._presence: dict[str, tuple[tuple[str, ...], Presence, float]] = {}
        self._services: dict[str, deque[float]] = {}
        self._sessions: dict[str, tuple[dict[str, Any], float]] = {}
        self._hits: dict[str, tuple[int, float]] = {}
        self._staff_file = Path(staff_file) if staff_file else None
        self._staff: dict[str, StaffAccount] = {}
        self._staff_mtime: float | None = None

    # -- tickets --
    def _live_ticket(self, ticket_id: str) -> Ticket | None:
        exp = self._expires.get(ticket_id)
        if exp is not None and exp <= self._clock():
            self._drop(ticket_id)
            return None
        return self._tickets.get(ticket_id)

    def _drop(self, ticket_id: str) -> None:
        t = self._tickets.pop(ticket_id, None)
        self._expires.pop(ticket_id, None)
        if t is not None:
            self._tokens.pop(t.token_hash, None)

    async def transaction(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._lock:
            tx = _MemoryTx(self)
            result = await fn(tx)
            for ticket in tx.writes.values():
                self._write(ticket)
            for key, (value, ttl) in tx.counters.items():
                self._hits[key] = (value, self._clock() + ttl)
            return result

    def _write(self, ticket: Ticket) -> None:
        old = self._tickets.get(ticket.id)
        if old is not None:
            if old.state is TicketState.WAITING:
                q = self._waiting.get(old.department, [])
                i = bisect.bisect_left(q, (old.seq, old.id))
                if i < len(q) and q[i] == (old.seq, old.id):
                    q.pop(i)
            if old.state.is_active:
                self._active.get(old.department, set()).discard(old.id)
        self._tickets[ticket.id] = ticket
        self._tokens[ticket.token_hash] = ticket.id
        if ticket.state is TicketState.WAITING:
            bisect.insort(self._waiting.setdefault(ticket.department, []), (ticket.seq, ticket.id))
        elif ticket.state.is_active:
            self._active.setdefault(ticket.department, set()).add(ticket.id)
        if ticket.state.is_final:
            self._expires[ticket.id] = self._clock() + TERMINAL_RETENTION_SECONDS
            self._disconnected.pop(ticket.id, None)
            return
        self._expires.pop(ticket.id, None)  # live again (a no-show who rejoined): kept, not retained
        if ticket.disconnected_at is not None:
            self._disconnected[ticket.id] = ticket.disconnected_at
        else:
            self._disconnected.pop(ticket.id, None)

    async def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        return self._live_ticket(ticket_id)

    async def get_tickets(self, ticket_ids: list[str]) -> list[Ticket]:
        return [t for t in (self._live_ticket(i) for i in ticket_ids) if t is not None]

    async def ticket_id_for_token(self, token_hash: str) -> str | None:
        ticket_id = self._tokens.get(token_hash)
        if ticket_id is None or self._live_ticket(ticket_id) is None:
            return None
        return ticket_id

    async def ticket_for_token(self, token_hash: str) -> Ticket | None:
        ticket_id = self._tokens.get(token_hash)
        return self._live_ticket(ticket_id) if ticket_id is not None else None

    async def waiting(self, department: str) -> list[tuple[int, str]]:
        return list(self._waiting.get(department, []))

    async def waiting_seqs(self, department: str) -> list[int]:
        return [seq for seq, _ in self._waiting.get(department, [])]

    async def waiting_counts(self, departments: list[str]) -> dict[str, int]:
        return {d: len(self._waiting.get(d, [])) for d in departments}

    async def position(self, department: str, ticket_id: str, seq: int) -> int | None:
        queue = self._waiting.get(department, [])
        i = bisect.bisect_left(queue, (seq, ticket_id))
        return i + 1 if i < len(queue) and queue[i] == (seq, ticket_id) else None

    async def active(self, department: str) -> list[str]:
        return sorted(self._active.get(department, set()))

    async def disconnected_before(self, cutoff: float) -> list[str]:
        self.purge()  # the periodic sweep calls this: a good moment to forget what has lapsed
        return [i for i, since in self._disconnected.items() if since < cutoff]

    def purge(self) -> None:
        """Forget lapsed tickets (with their personal data), sessions and presence entries."""
        now = self._clock()
        for ticket_id in [i for i, until in self._expires.items() if until <= now]:
            self._drop(ticket_id)
        self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
        self._presence = {k: v for k, v in self._presence.items() if v[2] > now}

    # -- clerks --
    async def set_presence(self, username: str, departments: list[str], presence: Presence, ttl: float) -> None:
        if presence is Presence.OFFLINE:
            self._presence.pop(username, None)
        else:
            self._presence[username] = (tuple(departments), presence, self._clock() + ttl)

    async def presences(self, department: str) -> dict[str, Presence]:
        now = self._clock()
        return {
            user: presence
            for user, (deps, presence, until) in self._presence.items()
            if department in deps and until > now
        }

    async def record_service(self, department: str, seconds: float) -> None:
        self._services.setdefault(department, deque(maxlen=RECENT_SERVICES)).appendleft(seconds)

    async def recent_services(self, department: str) -> list[float]:
        return list(self._services.get(department, ()))

    # -- sessions --
    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        self._sessions[session_id] = (dict(data), self._clock() + ttl)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._sessions[session_id]
            return None
        return dict(entry[0])

    async def delete_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- staff accounts: in a JSON file when one is configured, so they survive a restart --
    def _load_staff(self) -> None:
        if self._staff_file is None:
            return
        try:
            mtime = self._staff_file.stat().st_mtime_ns
        except FileNotFoundError:
            self._staff, self._staff_mtime = {}, None
            return
        if mtime == self._staff_mtime:
            return
        data = json.loads(self._staff_file.read_text("utf-8") or "{}")
        self._staff = {u: StaffAccount.from_dict(a) for u, a in data.get("staff", {}).items()}
        self._staff_mtime = mtime

    def _save_staff(self) -> None:
        if self._staff_file is None:
            return
        self._staff_file.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"staff": {u: a.to_dict() for u, a in sorted(self._staff.items())}}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self._staff_file.parent, prefix=".staff-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._staff_file)
        self._staff_mtime = self._staff_file.stat().st_mtime_ns

    async def put_staff(self, account: StaffAccount) -> None:
        self._load_staff()
        self._staff[account.username] = account
        self._save_staff()

    async def get_staff(self, username: str) -> StaffAccount | None:
        self._load_staff()
        return self._staff.get(username)

    async def delete_staff(self, username: str) -> bool:
        self._load_staff()
        found = self._staff.pop(username, None) is not None
        if found:
            self._save_staff()
        return found

    async def list_staff(self) -> list[StaffAccount]:
        self._load_staff()
        return [self._staff[u] for u in sorted(self._staff)]

    # -- limits --
    async def hit(self, key: str, window: float) -> int:
        now = self._clock()
        count, until = self._hits.get(key, (0, 0.0))
        if until <= now:
            count, until = 0, now + window
        count += 1
        self._hits[key] = (count, until)
        if len(self._hits) > 10_000:  # bound memory: drop lapsed windows
            self._hits = {k: v for k, v in self._hits.items() if v[1] > now}
        return count

    async def count(self, key: str) -> int:
        count, until = self._hits.get(key, (0, 0.0))
        return count if until > self._clock() else 0

    async def window_left(self, key: str) -> float:
        _, until = self._hits.get(key, (0, 0.0))
        return max(0.0, until - self._clock())

    async def close(self) -> None:
        return None
