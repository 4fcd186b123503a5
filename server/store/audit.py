"""Where the audit log lives: who (staff username or ``system``) did what (action) to what (target id) in
which department, when. Two implementations, one contract (``tests/audit_store_contract.py``):

- ``MemoryAuditStore``, the embedded default: SQLite (standard library) in ``data_dir/audit.sqlite3``,
  created with mode 0600. SQLite rather than a JSON-lines file because the log is long-lived (400 days of
  calls and transfers of a town hall are hundreds of thousands of entries): filtered, paged reads use
  indexes instead of reading the whole file, and the retention sweep is one DELETE instead of rewriting it.
  Without a path (tests) the database is in memory.
- ``RedisAuditStore``: one Redis Stream shared by every node, capped with ``MAXLEN ~`` and swept by
  ``MINID``. Entry ids are derived from the entry's time (``<ms>-*``), so that time ranges and the
  retention sweep work on ids.

Entries hold staff usernames, ids and small details only, never citizens' names, concerns, notes or
tokens: the service (server/audit.py) builds them from ids, and a test searches every stored byte.
Both list newest first (in the order recorded) with an opaque cursor for the next page.
"""

from __future__ import annotations

import abc
import json
import os
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..queue.errors import InvalidInput
from .redis import redis_client

DetailValue = str | int | float | bool | None | list[str]

MAX_PAGE = 200
"""Entries per page at most."""
REDIS_MAX_ENTRIES = 5_000_000
"""Safety cap of the Redis stream (``XADD MAXLEN ~``): far above 400 days of a busy town hall."""
REDIS_SCAN_LIMIT = 20_000
"""Entries one Redis query reads at most; a page cut short by it still carries a cursor to go on."""
REDIS_SKEW_MS = 300_000
"""An entry recorded with a time older than the stream's newest id (clocks of nodes differ) gets an id
at most this much later than its time; ranges and the sweep look this far beyond their bound."""


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    """Staff username, or ``system``."""
    action: str
    """Dotted, e.g. ``ticket.called``, ``staff.created``, ``auth.login_failed``."""
    target: str = ""
    """Id of what was touched: ticket id, username, department id, recording id; may be empty."""
    departments: tuple[str, ...] = ()
    """Departments the entry concerns: leads of any of them see it; none: admins only."""
    details: dict[str, DetailValue] = field(default_factory=dict)
    id: str = ""
    """Assigned by the store."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor, "action": self.action, "target": self.target,
                "departments": list(self.departments), "details": self.details}


@dataclass(frozen=True)
class AuditQuery:
    scope: frozenset[str] | None = None
    """Only entries of these departments (a lead's); None: all entries (admin)."""
    department: str | None = None
    actor: str | None = None
    action: str | None = None
    """Exact action, or a prefix up to a dot: ``ticket`` matches ``ticket.called``."""
    since: float | None = None
    """Entries at or after this time."""
    until: float | None = None
    """Entries before this time."""
    cursor: str | None = None
    """From a previous page's ``next``: entries recorded before that one."""
    limit: int = 50

    def matches(self, e: AuditEntry) -> bool:
        if self.scope is not None and not self.scope.intersection(e.departments):
            return False
        if self.department is not None and self.department not in e.departments:
            return False
        if self.actor is not None and e.actor != self.actor:
            return False
        if self.action is not None and e.action != self.action and not e.action.startswith(self.action + "."):
            return False
        if self.since is not None and e.at < self.since:
            return False
        return not (self.until is not None and e.at >= self.until)


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next: str | None
    """Cursor of the next (older) page; None: no more entries."""


class AuditStore(abc.ABC):
    @abc.abstractmethod
    async def append(self, entry: AuditEntry) -> AuditEntry:
        """Store an entry; returns it with its id."""

    @abc.abstractmethod
    async def query(self, query: AuditQuery) -> AuditPage:
        """Matching entries, newest first, at most ``query.limit`` (1..MAX_PAGE). A malformed cursor is
        ``InvalidInput``."""

    @abc.abstractmethod
    async def sweep(self, before: float) -> int:
        """Delete entries older than ``before``; returns how many (Redis: approximately)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _limit(query: AuditQuery) -> int:
    return max(1, min(MAX_PAGE, query.limit))


def _entry(id_: str, at: Any, actor: Any, action: Any, target: Any, departments: Any, details: Any) -> AuditEntry:
    return AuditEntry(float(at), str(actor), str(action), str(target), tuple(json.loads(departments)),
                      json.loads(details), id_)


_ROWID = re.compile(r"^[0-9]{1,18}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    departments TEXT NOT NULL, details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, id);
CREATE TABLE IF NOT EXISTS audit_department (
    department TEXT NOT NULL, entry INTEGER NOT NULL REFERENCES audit (id) ON DELETE CASCADE,
    PRIMARY KEY (department, entry)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_department_entry ON audit_department (entry);
"""


class MemoryAuditStore(AuditStore):
    """SQLite, on the event loop: every statement touches a few indexed rows, and with WAL and
    ``synchronous=NORMAL`` a commit does not wait for the disk."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite's own files copy this mode
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)

    async def append(self, entry: AuditEntry) -> AuditEntry:
        db = self._db
        db.execute("BEGIN")
        try:
            cur = db.execute(
                "INSERT INTO audit (at, actor, action, target, departments, details) VALUES (?, ?, ?, ?, ?, ?)",
                (entry.at, entry.actor, entry.action, entry.target, json.dumps(list(entry.departments)),
                 json.dumps(entry.details, separators=(",", ":"))),
            )
            rowid = cur.lastrowid
            db.executemany("INSERT OR IGNORE INTO audit_department (department, entry) VALUES (?, ?)",
                           [(d, rowid) for d in set(entry.departments)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return AuditEntry(entry.at, entry.actor, entry.action, entry.target, entry.departments, entry.details,
                          str(rowid))

    async def query(self, query: AuditQuery) -> AuditPage:
        where: list[str] = []
        args: list[Any] = []
        if query.cursor is not None:
            if not _ROWID.match(query.cursor):
                raise InvalidInput("cursor: not a cursor of this log")
            where.append("a.id < ?")
            args.append(int(query.cursor))
        if query.since is not None:
            where.append("a.at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("a.at < ?")
            args.append(query.until)
        if query.actor is not None:
            where.append("a.actor = ?")
            args.append(query.actor)
        if query.action is not None:
            where.append("(a.action = ? OR substr(a.action, 1, ?) = ?)")
            args += [query.action, len(query.action) + 1, query.action + "."]
        if query.department is not None:
            where.append("EXISTS (SELECT 1 FROM audit_department d WHERE d.entry = a.id AND d.department = ?)")
            args.append(query.department)
        if query.scope is not None:
            if not query.scope:
                return AuditPage([], None)
            marks = ", ".join("?" * len(query.scope))
            where.append("EXISTS (SELECT 1 FROM audit_department d WHERE d.entry = a.id"
                         f" AND d.department IN ({marks}))")
            args += sorted(query.scope)
        limit = _limit(query)
        sql = "SELECT a.id, a.at, a.actor, a.action, a.target, a.departments, a.details FROM audit a"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.id DESC LIMIT ?"
        rows = self._db.execute(sql, [*args, limit + 1]).fetchall()
        entries = [_entry(str(r[0]), *r[1:]) for r in rows[:limit]]
        return AuditPage(entries, entries[-1].id if len(rows) > limit else None)

    async def sweep(self, before: float) -> int:
        return self._db.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount

    async def close(self) -> None:
        self._db.close()


_Rows = list[tuple[str, dict[str, str]]]
"""What XRANGE and XREVRANGE answer (the pool decodes responses)."""
_STREAM_ID = re.compile(r"^[0-9]{1,15}-[0-9]{1,19}$")


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class RedisAuditStore(AuditStore):
    def __init__(self, url: str, prefix: str = "sps:", max_entries: int = REDIS_MAX_ENTRIES) -> None:
        self.r: aioredis.Redis = redis_client(url)
        self.key = f"{prefix}audit"
        self.max_entries = max_entries

    def _fields(self, entry: AuditEntry) -> dict[str, str]:
        return {"at": repr(entry.at), "actor": entry.actor, "action": entry.action, "target": entry.target,
                "departments": json.dumps(list(entry.departments)),
                "details": json.dumps(entry.details, separators=(",", ":"))}

    async def append(self, entry: AuditEntry) -> AuditEntry:
        fields = self._fields(entry)
        ms = _ms(entry.at)
        for _ in range(5):
            try:
                id_ = await self.r.xadd(self.key, fields, id=f"{ms}-*",  # type: ignore[arg-type]
                                        maxlen=self.max_entries, approximate=True)
                break
            except ResponseError:
                # Older than the newest entry (another node's clock is ahead): file it right after that one.
                newest = cast("_Rows", await self.r.xrevrange(self.key, count=1))
                ms = max(ms, int(newest[0][0].split("-")[0])) if newest else ms
        else:
            id_ = await self.r.xadd(self.key, fields, maxlen=self.max_entries,  # type: ignore[arg-type]
                                    approximate=True)
        return AuditEntry(entry.at, entry.actor, entry.action, entry.target, entry.departments, entry.details,
                          str(id_))

    async def query(self, query: AuditQuery) -> AuditPage:
        if query.cursor is not None and not _STREAM_ID.match(query.cursor):
            raise InvalidInput("cursor: not a cursor of this log")
        if query.scope is not None and not query.scope:
            return AuditPage([], None)
        limit = _limit(query)
        high = f"({query.cursor}" if query.cursor is not None else "+"
        if query.until is not None:
            bound = _ms(query.until) + REDIS_SKEW_MS
            if query.cursor is None or bound < int(query.cursor.split("-")[0]):
                high = str(bound)
        low = str(_ms(query.since)) if query.since is not None else "-"
        found: list[AuditEntry] = []
        scanned = 0
        last: str | None = None
        batch = max(100, limit * 2)
        while True:
            rows = cast("_Rows", await self.r.xrevrange(self.key, max=high, min=low, count=batch))
            for id_, f in rows:
                last = id_
                entry = _entry(id_, f["at"], f["actor"], f["action"], f["target"], f["departments"], f["details"])
                if query.matches(entry):
                    found.append(entry)
                    if len(found) > limit:
                        return AuditPage(found[:limit], found[limit - 1].id)
            scanned += len(rows)
            if len(rows) < batch:
                return AuditPage(found, None)
            if scanned >= REDIS_SCAN_LIMIT:
                # A sparse filter over a long log: hand back what there is and where to go on from.
                return AuditPage(found, last)
            high = f"({last}"

    async def sweep(self, before: float) -> int:
        cutoff = _ms(before)
        removed = int(await self.r.xtrim(self.key, minid=str(cutoff), approximate=False))
        # Entries recorded late carry an id after their time: look a little beyond the cutoff.
        late = cast("_Rows", await self.r.xrange(self.key, min=str(cutoff), max=str(cutoff + REDIS_SKEW_MS),
                                                 count=10_000))
        stale = [id_ for id_, f in late if float(f["at"]) < before]
        if stale:
            removed += int(await self.r.xdel(self.key, *stale))
        return removed

    async def close(self) -> None:
        await self.r.aclose()


def make_audit_store(redis_url: str | None, prefix: str, data_dir: Path) -> AuditStore:
    """Redis when the server is configured with one (shared by every node), else SQLite in ``data_dir``."""
    if redis_url:
        return RedisAuditStore(redis_url, prefix)
    return MemoryAuditStore(data_dir / "audit.sqlite3")


def entry_departments(department: str | Iterable[str] | None) -> tuple[str, ...]:
    if department is None:
        return ()
    if isinstance(department, str):
        return (department,)
    return tuple(sorted(set(department)))
