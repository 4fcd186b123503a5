"""The statistics event log: raw entries plus counters kept at write time. Two stores, one contract
(``tests/eventlog_contract.py``), and the recorder that feeds them from the waiting room.

``SqliteEventLog`` (the embedded default, a file in ``data_dir``) and ``RedisEventLog`` (with the Redis
store, shared by every node) keep the same three things:

- the raw log of ``LogEntry`` (``server.stats.log``: no names, concerns, notes or tokens), per local day;
- counters per department and local day, and per department and local hour (``server.stats.aggregate``),
  added at write time, so that a query over a year reads one small set of counters per department and
  day instead of two million entries;
- marks of clerks on duty (department, day, hour, clerk pseudonym), and per day (department, day, clerk).

Everything older than the retention (``stats_retention_days``, default 400) is swept by local day.

``StatsRecorder`` listens to ``WaitingRoom.on_events`` and ``on_presence``: it only turns events into
entries and buffers them (it never raises into the waiting room), and writes them in batches once a
second in the background; it also samples which clerks are on duty every minute and sweeps hourly.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import is_store_unavailable
from ..queue.model import Clerk, Presence, TicketEvent
from ..stats.aggregate import by_day, duty_marks, fold, local_slot
from ..stats.log import LogEntry, duty_entries, entries_from_events
from ..stats.report import DutyCounts, count_duty
from ..tasks import stopping

if TYPE_CHECKING:
    from ..waitingroom import WaitingRoom

T = TypeVar("T")
log = logging.getLogger("sprechstunde.stats")

Sums = dict[tuple[int, int], dict[str, int]]


class EventLogStore(abc.ABC):
    """Days are local day ordinals (``date.toordinal()``) in the store's time zone."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz

    @abc.abstractmethod
    async def pseudonym_key(self) -> bytes:
        """The installation's random key for pseudonyms (``server.stats.log.pseudonym``): made once, on the
        first call ever (atomically, so every node gets the same), and kept with the log (never swept)."""

    @abc.abstractmethod
    async def append(self, entries: Sequence[LogEntry]) -> None:
        """Log the entries and add their counters and duty marks; a batch of any size (a bulk load passes
        tens of thousands at once)."""

    @abc.abstractmethod
    async def entries(self, first_day: int, last_day: int) -> list[LogEntry]:
        """The raw log of these days, in time order."""

    @abc.abstractmethod
    async def sums(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> Sums:
        """Counters of ``departments`` summed per (group, hour) over the days of ``day_groups`` (day ->
        group); hour is -1 unless ``hourly``. Groups without counters are left out."""

    @abc.abstractmethod
    async def duty(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> DutyCounts:
        """Distinct clerks on duty in ``departments`` per (group, hour) and over all the days."""

    @abc.abstractmethod
    async def sweep(self, before_day: int) -> None:
        """Delete everything of the days before ``before_day``."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _raw_row(e: LogEntry, day: int) -> tuple[Any, ...]:
    return (day, e.at, e.kind, e.department, e.subject, e.source, e.state, e.wait, e.duration, e.language,
            int(e.interpreter))


# -- SQLite --
_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    day INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, department TEXT NOT NULL, subject TEXT NOT NULL,
    source TEXT NOT NULL, state TEXT NOT NULL, wait REAL, duration REAL, language TEXT NOT NULL,
    interpreter INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS log_day ON log (day);
CREATE TABLE IF NOT EXISTS agg_day (
    department TEXT NOT NULL, day INTEGER NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (department, day, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agg_hour (
    department TEXT NOT NULL, day INTEGER NOT NULL, hour INTEGER NOT NULL, field TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (department, day, hour, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duty (
    department TEXT NOT NULL, day INTEGER NOT NULL, hour INTEGER NOT NULL, subject TEXT NOT NULL,
    PRIMARY KEY (department, day, hour, subject)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duty_day (
    department TEXT NOT NULL, day INTEGER NOT NULL, subject TEXT NOT NULL,
    PRIMARY KEY (department, day, subject)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
KEY_BYTES = 32
"""Length of the pseudonym key."""


class SqliteEventLog(EventLogStore):
    """One SQLite file (mode 0600, WAL), used from one worker thread so the event loop never waits on disk."""

    def __init__(self, path: Path, tz: tzinfo) -> None:
        super().__init__(tz)
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eventlog")
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # private before any content
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: a year's day counters stay in memory
            db.execute("PRAGMA mmap_size=268435456")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def append(self, entries: Sequence[LogEntry]) -> None:
        if entries:
            await self._run(self._append, list(entries))

    def _append(self, entries: list[LogEntry]) -> None:
        hourly = fold(entries, self.tz)
        daily = by_day(hourly)
        marks = duty_marks(entries, self.tz)
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO log VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           (_raw_row(e, local_slot(e.at, self.tz)[0]) for e in entries))
            db.executemany(
                "INSERT INTO agg_hour VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET value = value + excluded.value",
                ((d, day, hour, f, v) for (d, day, hour), c in hourly.items() for f, v in c.items()))
            db.executemany(
                "INSERT INTO agg_day VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET value = value + excluded.value",
                ((d, day, f, v) for (d, day), c in daily.items() for f, v in c.items()))
            db.executemany("INSERT OR IGNORE INTO duty VALUES (?,?,?,?)", marks)
            db.executemany("INSERT OR IGNORE INTO duty_day VALUES (?,?,?)", {(d, day, c) for d, day, _h, c in marks})
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def entries(self, first_day: int, last_day: int) -> list[LogEntry]:
        return await self._run(self._entries, first_day, last_day)

    def _entries(self, first_day: int, last_day: int) -> list[LogEntry]:
        rows = self._conn().execute(
            "SELECT at, kind, department, subject, source, state, wait, duration, language, interpreter FROM log "
            "WHERE day BETWEEN ? AND ? ORDER BY at, rowid", (first_day, last_day))
        return [LogEntry(at, kind, d, subject, source, state, wait, duration, language, bool(interpreter))
                for at, kind, d, subject, source, state, wait, duration, language, interpreter in rows]

    async def sums(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> Sums:
        return await self._run(self._sums, list(departments), dict(day_groups), hourly)

    def _sums(self, departments: list[str], day_groups: dict[int, int], hourly: bool) -> Sums:
        out: Sums = {}
        if not departments or not day_groups:
            return out
        marks = ",".join("?" * len(departments))
        select, group_by = ("day, hour", "day, hour") if hourly else ("day, -1", "day")
        table = "agg_hour" if hourly else "agg_day"
        if len(departments) == 1:  # one department (or the total): its rows as they are, in key order
            sql = f"SELECT {select}, field, value FROM {table} WHERE department = ? AND day BETWEEN ? AND ?"  # noqa: S608
        else:
            sql = (f"SELECT {select}, field, SUM(value) FROM {table} WHERE department IN ({marks}) "  # noqa: S608
                   f"AND day BETWEEN ? AND ? GROUP BY {group_by}, field")
        rows = self._conn().execute(sql, (*departments, min(day_groups), max(day_groups))).fetchall()
        slot: tuple[int, int] | None = None
        counts: dict[str, int] | None = None
        for day, h, field, value in rows:  # rows of one (day, hour) come together: look its group up once
            if (day, h) != slot:
                slot = (day, h)
                group = day_groups.get(day)
                counts = None if group is None else out.setdefault((group, h), {})
            if counts is not None:
                counts[field] = counts.get(field, 0) + value
        return out

    async def duty(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> DutyCounts:
        return await self._run(self._duty, list(departments), dict(day_groups), hourly)

    def _duty(self, departments: list[str], day_groups: dict[int, int], hourly: bool) -> DutyCounts:
        if not departments or not day_groups:
            return DutyCounts({}, 0)
        marks = ",".join("?" * len(departments))
        # Days and weeks read the day marks (one per clerk and day), hours the hour marks.
        select = "department, day, hour, subject FROM duty" if hourly else "department, day, -1, subject FROM duty_day"
        rows = self._conn().execute(
            f"SELECT {select} WHERE department IN ({marks}) AND day BETWEEN ? AND ?",  # noqa: S608
            (*departments, min(day_groups), max(day_groups)))
        return count_duty(rows, departments, day_groups, hourly)

    async def pseudonym_key(self) -> bytes:
        return await self._run(self._pseudonym_key)

    def _pseudonym_key(self) -> bytes:
        db = self._conn()
        db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('pseudonym_key', ?)",
                   (secrets.token_bytes(KEY_BYTES),))
        row = db.execute("SELECT value FROM meta WHERE name = 'pseudonym_key'").fetchone()
        return bytes(row[0])

    async def sweep(self, before_day: int) -> None:
        await self._run(self._sweep, before_day)

    def _sweep(self, before_day: int) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            for table in ("log", "agg_day", "agg_hour", "duty", "duty_day"):
                db.execute(f"DELETE FROM {table} WHERE day < ?", (before_day,))  # noqa: S608
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close_db)
        self._executor.shutdown(wait=True)


# -- Redis --
_ADD = """
for i, key in ipairs(KEYS) do
  local f = nil
  for word in string.gmatch(ARGV[i], '%S+') do
    if f then redis.call('HINCRBY', key, f, word); f = nil else f = word end
  end
end
return #KEYS
"""
_SUM = """
local acc, order = {}, {}
for i, key in ipairs(KEYS) do
  local g = ARGV[i]
  local t = acc[g]
  if not t then t = {}; acc[g] = t; order[#order + 1] = g end
  local flat = redis.call('HGETALL', key)
  for j = 1, #flat, 2 do
    local f = flat[j]
    t[f] = (t[f] or 0) + tonumber(flat[j + 1])
  end
end
local out = {}
for _, g in ipairs(order) do
  local fields = {}
  for f, v in pairs(acc[g]) do fields[#fields + 1] = f .. ' ' .. string.format('%d', v) end
  out[#out + 1] = g; out[#out + 1] = table.concat(fields, ' ')
end
return out
"""
_DUTY = """
local hourly = ARGV[1] == '1'
local seen, counts, order, everyone = {}, {}, {}, {}
for i, key in ipairs(KEYS) do
  local g = ARGV[i + 1]
  for _, m in ipairs(redis.call('SMEMBERS', key)) do
    local subject = hourly and string.sub(m, 4) or m
    local pk = hourly and (g .. '|' .. tonumber(string.sub(m, 1, 2))) or (g .. '|-1')
    local sk = pk .. '|' .. subject
    if not seen[sk] then
      seen[sk] = true
      if not counts[pk] then counts[pk] = 0; order[#order + 1] = pk end
      counts[pk] = counts[pk] + 1
    end
    everyone[subject] = true
  end
end
local periods, subjects = {}, {}
for _, pk in ipairs(order) do periods[#periods + 1] = pk; periods[#periods + 1] = counts[pk] end
for s in pairs(everyone) do subjects[#subjects + 1] = s end
return {periods, subjects}
"""
SEP = "\x1f"
"""Separates the values of a raw entry in its stream field (the ASCII unit separator: in no id or code)."""


def _pack(e: LogEntry) -> str:
    """One stream field per entry (a stream entry per field would cost a year's seeding several times more)."""
    return SEP.join((
        repr(e.at), e.kind, e.department, e.subject, e.source, e.state, "" if e.wait is None else repr(e.wait),
        "" if e.duration is None else repr(e.duration), e.language, "1" if e.interpreter else ""))


def _unpack(text: str) -> LogEntry:
    at, kind, department, subject, source, state, wait, duration, language, interpreter = text.split(SEP)
    return LogEntry(float(at), kind, department, subject, source, state, float(wait) if wait else None,
                    float(duration) if duration else None, language, interpreter == "1")


RAW_PER_STREAM_ENTRY = 500
"""Raw entries of a batch per stream entry: a flush (once a second) adds one stream entry per day it
touches, a bulk load one per 500 entries; one command each instead of one per entry."""
KEYS_PER_SCRIPT = 200
"""Counter hashes per script call that adds a batch's counters (one call instead of a command per field)."""
CHUNK_DAYS = 28
"""Days per script call: a year's query blocks Redis for a few milliseconds at a time, not at once."""
SOCKET_TIMEOUT = 5.0


def _chunks(day_groups: Mapping[int, int]) -> list[list[int]]:
    """Days in runs of about ``CHUNK_DAYS``, never splitting a group (a week stays in one call)."""
    days = sorted(day_groups)
    out: list[list[int]] = []
    for day in days:
        if out and (len(out[-1]) < CHUNK_DAYS or day_groups[out[-1][-1]] == day_groups[day]):
            out[-1].append(day)
        else:
            out.append([day])
    return out


class RedisEventLog(EventLogStore):
    """Keys, all under ``{prefix}stats:``: ``log:{day}`` stream of raw entries (one field ``e``: the entries
    of a batch, one a line, their values joined by ``SEP``); ``d:{day}:{dept}`` hash of day
    counters; ``h:{day}:{dept}`` hash ``HH|field`` of hour counters; ``duty:{day}:{dept}`` set ``HH|clerk`` and
    ``dutyd:{day}:{dept}`` set of clerks on duty that day;
    ``keys:{day}`` set of that day's keys and ``days`` zset of days, for the retention sweep;
    ``pseudonym-key`` the installation's pseudonym key (hex, set once with NX). Queries sum
    server-side (Lua, a few weeks per call), so a year's figures cross the network once, already summed."""

    def __init__(self, url: str, prefix: str, tz: tzinfo) -> None:
        super().__init__(tz)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=8, timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._p = prefix + "stats:"
        self._add = self._redis.register_script(_ADD)
        self._sum = self._redis.register_script(_SUM)
        self._duty = self._redis.register_script(_DUTY)

    @property
    def key_prefix(self) -> str:
        return self._p

    async def append(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        p = self._p
        hourly = fold(entries, self.tz)
        increments: dict[str, list[str]] = defaultdict(list)
        for (dept, day, hour), counts in hourly.items():
            fields = increments[f"h:{day}:{dept}"]
            for f, v in counts.items():
                fields += (f"{hour:02d}|{f}", str(v))
        for (dept, day), counts in by_day(hourly).items():
            fields = increments[f"d:{day}:{dept}"]
            for f, v in counts.items():
                fields += (f, str(v))
        marks: dict[str, set[str]] = defaultdict(set)
        for dept, day, hour, subject in duty_marks(entries, self.tz):
            marks[f"duty:{day}:{dept}"].add(f"{hour:02d}|{subject}")
            marks[f"dutyd:{day}:{dept}"].add(subject)
        raw: dict[int, list[str]] = defaultdict(list)
        for e in entries:
            raw[local_slot(e.at, self.tz)[0]].append(_pack(e))
        new_keys: dict[int, set[str]] = defaultdict(set)
        for key in (*increments, *marks):
            new_keys[int(key.split(":")[1])].add(key)
        for day in raw:
            new_keys[day].add(f"log:{day}")
        async with self._redis.pipeline(transaction=True) as pipe:
            for day, packed in raw.items():
                for start in range(0, len(packed), RAW_PER_STREAM_ENTRY):
                    pipe.xadd(f"{p}log:{day}", {"e": "\n".join(packed[start:start + RAW_PER_STREAM_ENTRY])})
            keys = list(increments)
            for start in range(0, len(keys), KEYS_PER_SCRIPT):
                chunk = keys[start:start + KEYS_PER_SCRIPT]
                await self._add(keys=[p + k for k in chunk], args=[" ".join(increments[k]) for k in chunk],
                                client=pipe)  # queued in the transaction, run at execute()
            for key, members in marks.items():
                pipe.sadd(p + key, *sorted(members))
            for day, day_keys in new_keys.items():
                pipe.sadd(f"{p}keys:{day}", *sorted(day_keys))
                pipe.zadd(f"{p}days", {str(day): day})
            await pipe.execute()

    async def entries(self, first_day: int, last_day: int) -> list[LogEntry]:
        out: list[LogEntry] = []
        days = [str(d) for d in await self._redis.zrangebyscore(f"{self._p}days", first_day, last_day)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.xrange(f"{self._p}log:{day}")
            results = await pipe.execute()
        for stream in results:
            for _id, fields in stream:
                out += (_unpack(line) for line in fields["e"].split("\n"))
        out.sort(key=lambda e: e.at)
        return out

    async def sums(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> Sums:
        out: Sums = {}
        kind = "h" if hourly else "d"
        for chunk in _chunks(day_groups):
            keys = [f"{self._p}{kind}:{day}:{dept}" for day in chunk for dept in departments]
            groups = [str(day_groups[day]) for day in chunk for _ in departments]
            if not keys:
                continue
            result = await self._sum(keys=keys, args=groups)
            for i in range(0, len(result), 2):
                group = int(result[i])
                flat = result[i + 1].split(" ") if result[i + 1] else []
                for j in range(0, len(flat), 2):
                    field, value = flat[j], int(flat[j + 1])
                    if hourly:
                        hour, _, field = field.partition("|")
                        key = (group, int(hour))
                    else:
                        key = (group, -1)
                    counts = out.get(key)
                    if counts is None:
                        counts = out[key] = {}
                    counts[field] = counts.get(field, 0) + value
        return out

    async def duty(self, departments: Sequence[str], day_groups: Mapping[int, int], hourly: bool) -> DutyCounts:
        per: dict[tuple[int, int], int] = {}
        everyone: set[str] = set()
        for chunk in _chunks(day_groups):
            kind = "duty" if hourly else "dutyd"
            keys = [f"{self._p}{kind}:{day}:{dept}" for day in chunk for dept in departments]
            if not keys:
                continue
            groups = [str(day_groups[day]) for day in chunk for _ in departments]
            periods, subjects = await self._duty(keys=keys, args=["1" if hourly else "0", *groups])
            for i in range(0, len(periods), 2):
                group, _, hour = periods[i].partition("|")
                key = (int(group), int(hour))
                per[key] = per.get(key, 0) + int(periods[i + 1])  # groups never span two chunks
            everyone.update(subjects)
        return DutyCounts(per, len(everyone))

    async def pseudonym_key(self) -> bytes:
        key = f"{self._p}pseudonym-key"  # not a day's key: the retention sweep never deletes it
        await self._redis.set(key, secrets.token_hex(KEY_BYTES), nx=True)
        value = await self._redis.get(key)
        if not value:
            raise RuntimeError("the pseudonym key vanished from Redis")
        return bytes.fromhex(str(value))

    async def sweep(self, before_day: int) -> None:
        p = self._p
        days = [str(d) for d in await self._redis.zrangebyscore(f"{p}days", "-inf", f"({before_day}")]
        for day in days:
            keys = [str(k) for k in await self._redis.smembers(f"{p}keys:{day}")]
            if keys:
                await self._redis.delete(*(p + k for k in keys))
            await self._redis.delete(f"{p}keys:{day}")
            await self._redis.zrem(f"{p}days", day)

    async def close(self) -> None:
        await self._redis.aclose()


def make_eventlog_store(redis_url: str | None, prefix: str, data_dir: Path, tz: tzinfo) -> EventLogStore:
    """Redis Streams with the Redis store (shared by every node), else SQLite in ``data_dir``."""
    if redis_url:
        return RedisEventLog(redis_url, prefix, tz)
    return SqliteEventLog(data_dir / "stats.sqlite3", tz)


# -- the recorder --
FLUSH_INTERVAL = 1.0
SAMPLE_INTERVAL = 60.0
"""Seconds between two looks at which clerks are on duty (a clerk on duty for a minute of an hour counts)."""
SWEEP_INTERVAL = 3600.0
MAX_PENDING = 200_000
"""Entries kept while the store does not answer; beyond that the oldest are dropped (and said so)."""
LOG_INTERVAL = 60.0


class StatsRecorder:
    """Feeds the event log from the waiting room. Its listeners only convert and buffer: they cannot fail
    or slow a queue transition; writing happens in ``run`` (a background task) and ``flush``."""

    def __init__(self, store: EventLogStore, room: WaitingRoom, retention_days: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.room = room
        self.retention_days = retention_days
        self.clock = clock
        self._pending: list[LogEntry] = []
        self._marked: set[tuple[str, int, int, str]] = set()
        self._marked_slot: tuple[int, int] | None = None
        self._dropped = 0
        self._last_error_log = float("-inf")
        self._flushing = asyncio.Lock()
        self._key: bytes | None = None
        """The installation's pseudonym key, loaded once from the store (by the first flush)."""
        self._early: list[tuple[bool, Callable[[bytes], list[LogEntry]]]] = []
        """Until the key is loaded: (duty?, how to make the entries with the key), in order."""

    # -- listeners (never raise) --
    async def on_events(self, events: list[TicketEvent]) -> None:
        try:
            if self._key is None:
                kept = list(events)
                self._later(False, lambda key: entries_from_events(kept, key))
            else:
                self._pending.extend(entries_from_events(events, self._key))
        except Exception:  # noqa: BLE001 - statistics never make the waiting room fail
            log.exception("statistics: an event could not be logged")

    async def on_presence(self, clerk: Clerk, presence: Presence) -> None:
        try:
            self._add_duty_of(self.clock(), clerk.username, clerk.departments, presence)
        except Exception:  # noqa: BLE001
            log.exception("statistics: a presence could not be logged")

    def _later(self, duty: bool, make: Callable[[bytes], list[LogEntry]]) -> None:
        self._early.append((duty, make))
        if len(self._early) > MAX_PENDING:
            del self._early[0]
            self._dropped += 1

    def _add_duty_of(self, at: float, username: str, departments: Iterable[str], presence: Presence) -> None:
        if self._key is None:
            kept = sorted(departments)
            self._later(True, lambda key: duty_entries(at, username, kept, presence, key))
        else:
            self._add_duty(duty_entries(at, username, departments, presence, self._key))

    async def _load_key(self) -> None:
        """Load the pseudonym key (once) and turn what waited for it into entries."""
        if self._key is not None:
            return
        self._key = await self.store.pseudonym_key()
        early, self._early = self._early, []
        for duty, make in early:
            try:
                entries = make(self._key)
            except Exception:  # noqa: BLE001 - as in the listeners: one bad event loses only itself
                log.exception("statistics: an event could not be logged")
                continue
            if duty:
                self._add_duty(entries)
            else:
                self._pending.extend(entries)

    def _add_duty(self, entries: list[LogEntry]) -> None:
        """One ``on_duty`` entry per clerk, department and hour is enough (per process)."""
        for e in entries:
            day, hour = local_slot(e.at, self.store.tz)
            if self._marked_slot != (day, hour):
                self._marked_slot = (day, hour)
                self._marked.clear()
            key = (e.department, day, hour, e.subject)
            if key not in self._marked:
                self._marked.add(key)
                self._pending.append(e)

    # -- background work --
    async def sample_duty(self) -> None:
        """Mark the clerks on duty now (their presence is available or busy)."""
        now = self.clock()
        for department in list(self.room.departments):
            for username, presence in (await self.room.store.presences(department)).items():
                self._add_duty_of(now, username, [department], presence)

    async def flush(self) -> None:
        """Write what is buffered; on failure keep it (up to ``MAX_PENDING``) for the next try."""
        async with self._flushing:
            try:
                await self._load_key()
            except Exception as e:  # what waits for the key stays buffered for the next try
                self._log_failure(e)
                return
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self.store.append(batch)
            except Exception as e:
                self._pending = batch + self._pending
                if len(self._pending) > MAX_PENDING:
                    self._dropped += len(self._pending) - MAX_PENDING
                    del self._pending[: len(self._pending) - MAX_PENDING]
                self._log_failure(e)

    def _log_failure(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log < LOG_INTERVAL:
            return
        self._last_error_log = now
        if is_store_unavailable(e):
            log.warning("statistics: the event log store does not answer (%d entries waiting, %d dropped)",
                        len(self._pending) + len(self._early), self._dropped)
        else:
            log.error("statistics: writing the event log failed (%d entries waiting, %d dropped)",
                      len(self._pending) + len(self._early), self._dropped, exc_info=e)

    def retention_start(self, now: float) -> int:
        """The first local day kept."""
        return datetime.fromtimestamp(now, self.store.tz).toordinal() - self.retention_days

    async def sweep(self) -> None:
        await self.store.sweep(self.retention_start(self.clock()))

    async def run(self) -> None:
        """Flush every second, sample clerks on duty every minute, sweep every hour; never gives up."""
        next_sample = next_sweep = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + SAMPLE_INTERVAL
                    await self.sample_duty()
                if now >= next_sweep:
                    next_sweep = now + SWEEP_INTERVAL
                    await self.sweep()
                await self.flush()
            except Exception as e:  # noqa: BLE001 - keep going after a store hiccup
                if stopping():
                    raise asyncio.CancelledError from None
                self._log_failure(e)
            await asyncio.sleep(FLUSH_INTERVAL)

    async def close(self) -> None:
        """Write what is left (briefly; the store may be gone) and close the store."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 3.0)
        await self.store.close()
