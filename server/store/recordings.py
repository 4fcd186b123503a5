"""Where recordings' metadata, consent records and the access log live. Two implementations, one contract
(``tests/recording_store_contract.py``): ``MemoryRecordingStore`` (the embedded default: a JSON file in
``data_dir`` written atomically with mode 0600, so the retention sweep survives restarts) and
``RedisRecordingStore`` (shared by every node).

The media files themselves are on disk under ``data_dir/recordings/<id>/``; this store holds what a
data-protection officer asks for: who agreed to which text when, and who looked at the result.
"""

from __future__ import annotations

import abc
import builtins
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from ..queue.errors import Conflict
from ..recording.errors import RecordingNotFound
from ..recording.model import Recording
from .files import write_private
from .redis import redis_client

ACCESS_LOG_RETENTION_SECONDS = 400 * 86400
"""Access-log entries (staff usernames and recording ids only) are kept this long."""


@dataclass(frozen=True)
class AccessEntry:
    """Who did what with a recording. Never a citizen's name: staff usernames and ids only."""

    at: float
    actor: str
    """Staff username, or ``system`` for the retention sweep."""
    action: str
    """``view``, ``download``, ``export``, ``delete`` or ``expired``."""
    recording: str
    department: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "actor": self.actor, "action": self.action, "recording": self.recording,
                "department": self.department}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccessEntry:
        return cls(float(d["at"]), d["actor"], d["action"], d["recording"], d["department"])


class RecordingStore(abc.ABC):
    @abc.abstractmethod
    async def create(self, recording: Recording) -> bool:
        """Store a new recording unless its ticket already has a live one (state not ``stopped``);
        atomic across nodes. Returns False (and stores nothing) in that case."""

    @abc.abstractmethod
    async def save(self, recording: Recording) -> None:
        """Overwrite an existing recording. When it is stopped, its ticket no longer has a live one."""

    @abc.abstractmethod
    async def get(self, recording_id: str) -> Recording | None: ...

    @abc.abstractmethod
    async def live_for_ticket(self, ticket_id: str) -> Recording | None:
        """The ticket's recording that is not stopped, if any."""

    @abc.abstractmethod
    async def list(self, departments: list[str]) -> list[Recording]:
        """Recordings of these departments, newest first."""

    @abc.abstractmethod
    async def delete(self, recording_id: str) -> bool:
        """Delete a recording and its consent records; False if it did not exist."""

    @abc.abstractmethod
    async def expired(self, now: float) -> builtins.list[str]:
        """Ids of recordings whose ``expires_at`` is at or before ``now``."""

    @abc.abstractmethod
    async def log_access(self, entry: AccessEntry) -> None: ...

    @abc.abstractmethod
    async def access_log(self, departments: builtins.list[str], limit: int = 500) -> builtins.list[AccessEntry]:
        """Entries of these departments, newest first, at most ``limit``; entries older than
        ``ACCESS_LOG_RETENTION_SECONDS`` are gone."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _by_age(recordings: Iterable[Recording]) -> list[Recording]:
    """Newest first; the id breaks ties so both stores list in the same order."""
    return sorted(recordings, key=lambda r: (r.created_at, r.id), reverse=True)


def _newest_entries(entries: Iterable[AccessEntry], limit: int) -> list[AccessEntry]:
    return sorted(entries, key=lambda e: (e.at, e.recording, e.action, e.actor), reverse=True)[: max(0, limit)]


class MemoryRecordingStore(RecordingStore):
    """Everything in a dict, written to a JSON file (mode 0600) after every change and read at start.

    Every method finishes without suspending, so ``create``'s check-and-write is atomic within the
    process (the embedded store serves one process). The file is small (metadata only) and written
    rarely (consent answers, stops, views), so writing it on the event loop is cheap.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._recordings: dict[str, Recording] = {}
        self._live: dict[str, str] = {}
        """Ticket id -> id of its recording that is not stopped."""
        self._log: list[AccessEntry] = []
        self._load()

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        # A corrupt file raises: losing consent proof silently would be worse than not starting.
        data = json.loads(self._path.read_text("utf-8") or "{}")
        for d in data.get("recordings", []):
            rec = Recording.from_dict(d)
            self._recordings[rec.id] = rec
            if rec.state.is_live:
                self._live[rec.ticket] = rec.id
        self._log = [AccessEntry.from_dict(e) for e in data.get("access_log", [])]
        self._trim_log()

    def _persist(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {
                "recordings": [r.to_dict() for r in _by_age(self._recordings.values())],
                "access_log": [e.to_dict() for e in self._log],
            },
            indent=1,
        )
        write_private(self._path, payload)

    def _trim_log(self) -> bool:
        cutoff = self._clock() - ACCESS_LOG_RETENTION_SECONDS
        kept = [e for e in self._log if e.at >= cutoff]
        trimmed = len(kept) != len(self._log)
        self._log = kept
        return trimmed

    def _live_id(self, ticket_id: str) -> str | None:
        rec_id = self._live.get(ticket_id)
        rec = self._recordings.get(rec_id) if rec_id is not None else None
        return rec_id if rec is not None and rec.state.is_live else None

    async def create(self, recording: Recording) -> bool:
        if recording.id in self._recordings or self._live_id(recording.ticket) is not None:
            return False
        self._recordings[recording.id] = recording
        if recording.state.is_live:
            self._live[recording.ticket] = recording.id
        self._persist()
        return True

    async def save(self, recording: Recording) -> None:
        if recording.id not in self._recordings:
            raise RecordingNotFound()  # deleted meanwhile (retention, a lead): the deletion wins
        self._recordings[recording.id] = recording
        if recording.state.is_live:
            self._live.setdefault(recording.ticket, recording.id)
        elif self._live.get(recording.ticket) == recording.id:
            del self._live[recording.ticket]
        self._persist()

    async def get(self, recording_id: str) -> Recording | None:
        return self._recordings.get(recording_id)

    async def live_for_ticket(self, ticket_id: str) -> Recording | None:
        rec_id = self._live_id(ticket_id)
        return self._recordings[rec_id] if rec_id is not None else None

    async def list(self, departments: list[str]) -> list[Recording]:
        wanted = set(departments)
        return _by_age(r for r in self._recordings.values() if r.department in wanted)

    async def delete(self, recording_id: str) -> bool:
        rec = self._recordings.pop(recording_id, None)
        if rec is None:
            return False
        if self._live.get(rec.ticket) == recording_id:
            del self._live[rec.ticket]
        self._persist()
        return True

    async def expired(self, now: float) -> builtins.list[str]:
        due = sorted((r.expires_at, r.id) for r in self._recordings.values() if r.expires_at <= now)
        return [rec_id for _, rec_id in due]

    async def log_access(self, entry: AccessEntry) -> None:
        self._log.append(entry)
        self._trim_log()
        self._persist()

    async def access_log(self, departments: builtins.list[str], limit: int = 500) -> builtins.list[AccessEntry]:
        if self._trim_log():
            self._persist()
        wanted = set(departments)
        return _newest_entries((e for e in self._log if e.department in wanted), limit)

    async def close(self) -> None:
        return None


# Redis: every write that touches more than one key is one Lua script, so no node ever sees half of it.
# Keys are passed in KEYS; the ticket and department of a recording never change, so the caller can
# name its index keys before the script runs.

_CREATE = """
-- KEYS: rec, live, exp, dep, rec of the current live pointer (or rec again)
-- ARGV: id, json, expires_at, created_at, is_live ("1"/"0"), live pointer the caller saw ("" = none)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cur = redis.call('GET', KEYS[2])
if (cur or '') ~= ARGV[6] then return -1 end
if cur then
  local raw = redis.call('GET', KEYS[5])
  if raw and cjson.decode(raw)['state'] ~= 'stopped' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], ARGV[1])
elseif cur then
  redis.call('DEL', KEYS[2])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return 1
"""

_SAVE = """
-- KEYS: rec, live, exp, dep; ARGV: id, json, expires_at, created_at, is_live ("1"/"0")
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
elseif redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

_DELETE = """
-- KEYS: rec, live, exp, dep; ARGV: id
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

CREATE_ATTEMPTS = 50
"""Runs of ``create`` when the ticket's live pointer keeps changing between read and script."""


class RedisRecordingStore(RecordingStore):
    """Keys, all under the prefix: ``rec:{id}`` recording JSON; ``rec:live:{ticket}`` -> id of the
    ticket's live recording; ``rec:exp`` zset id -> expires_at; ``rec:dep:{dept}`` zset id -> created_at;
    ``rec:log:{dept}`` zset of access-log entries (JSON) scored by time, trimmed on every write and read
    and expiring as a whole when a department logs nothing for the retention period."""

    def __init__(self, url: str, prefix: str = "sps:", clock: Callable[[], float] = time.time) -> None:
        self._redis: aioredis.Redis = redis_client(url)
        self._prefix = prefix
        self._clock = clock
        self._create = self._redis.register_script(_CREATE)
        self._save = self._redis.register_script(_SAVE)
        self._delete = self._redis.register_script(_DELETE)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _rec(self, recording_id: str) -> str:
        return f"{self._prefix}rec:{recording_id}"

    def _live_key(self, ticket_id: str) -> str:
        return f"{self._prefix}rec:live:{ticket_id}"

    def _dep(self, department: str) -> str:
        return f"{self._prefix}rec:dep:{department}"

    def _log_key(self, department: str) -> str:
        return f"{self._prefix}rec:log:{department}"

    @property
    def _exp(self) -> str:
        return f"{self._prefix}rec:exp"

    def _keys_of(self, rec: Recording) -> list[str]:
        return [self._rec(rec.id), self._live_key(rec.ticket), self._exp, self._dep(rec.department)]

    def _args_of(self, rec: Recording) -> list[str]:
        return [rec.id, json.dumps(rec.to_dict(), separators=(",", ":")), repr(float(rec.expires_at)),
                repr(float(rec.created_at)), "1" if rec.state.is_live else "0"]

    async def create(self, recording: Recording) -> bool:
        keys, args = self._keys_of(recording), self._args_of(recording)
        for _ in range(CREATE_ATTEMPTS):
            # The script refuses (-1) if the pointer changed after this read; then read it again.
            cur = cast("str | None", await self._redis.get(keys[1]))
            result = int(await self._create(keys=[*keys, self._rec(cur) if cur else keys[0]], args=[*args, cur or ""]))
            if result >= 0:
                return result == 1
        raise Conflict()

    async def save(self, recording: Recording) -> None:
        if not int(await self._save(keys=self._keys_of(recording), args=self._args_of(recording))):
            raise RecordingNotFound()  # deleted meanwhile (retention, a lead): the deletion wins

    async def get(self, recording_id: str) -> Recording | None:
        raw = await self._redis.get(self._rec(recording_id))
        return Recording.from_dict(json.loads(raw)) if raw is not None else None

    async def live_for_ticket(self, ticket_id: str) -> Recording | None:
        rec_id = cast("str | None", await self._redis.get(self._live_key(ticket_id)))
        rec = await self.get(rec_id) if rec_id is not None else None
        return rec if rec is not None and rec.state.is_live else None

    async def list(self, departments: list[str]) -> list[Recording]:
        deps = list(dict.fromkeys(departments))
        if not deps:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in deps:
                pipe.zrange(self._dep(d), 0, -1)
            id_lists = await pipe.execute()
        ids = list(dict.fromkeys(i for ids in id_lists for i in ids))
        if not ids:
            return []
        raws = await self._redis.mget([self._rec(i) for i in ids])
        return _by_age(Recording.from_dict(json.loads(raw)) for raw in raws if raw is not None)

    async def delete(self, recording_id: str) -> bool:
        rec = await self.get(recording_id)
        if rec is None:
            await self._redis.zrem(self._exp, recording_id)  # never leave the sweep an id it cannot delete
            return False
        return bool(int(await self._delete(keys=self._keys_of(rec), args=[rec.id])))

    async def expired(self, now: float) -> builtins.list[str]:
        return cast("list[str]", await self._redis.zrangebyscore(self._exp, "-inf", repr(float(now))))

    async def log_access(self, entry: AccessEntry) -> None:
        key = self._log_key(entry.department)
        # A nonce keeps two identical entries (same second, actor, action) from collapsing into one member.
        member = json.dumps({**entry.to_dict(), "n": secrets.token_hex(6)}, separators=(",", ":"))
        cutoff = self._clock() - ACCESS_LOG_RETENTION_SECONDS
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {member: entry.at})
            pipe.zremrangebyscore(key, "-inf", f"({cutoff!r}")
            pipe.pexpire(key, int(ACCESS_LOG_RETENTION_SECONDS * 1000))
            await pipe.execute()

    async def access_log(self, departments: builtins.list[str], limit: int = 500) -> builtins.list[AccessEntry]:
        deps = list(dict.fromkeys(departments))
        if not deps or limit <= 0:
            return []
        cutoff = self._clock() - ACCESS_LOG_RETENTION_SECONDS
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in deps:
                pipe.zremrangebyscore(self._log_key(d), "-inf", f"({cutoff!r}")
                pipe.zrevrangebyscore(self._log_key(d), "+inf", repr(cutoff), start=0, num=limit)
            results = await pipe.execute()
        members = [m for ms in results[1::2] for m in ms]
        return _newest_entries((AccessEntry.from_dict(json.loads(m)) for m in members), limit)

    async def close(self) -> None:
        await self._redis.aclose()


def make_recording_store(redis_url: str | None, prefix: str, data_dir: Path) -> RecordingStore:
    """Redis when the server is configured with one (shared by every node), else the JSON file."""
    if redis_url:
        return RedisRecordingStore(redis_url, prefix)
    return MemoryRecordingStore(data_dir / "recordings.json")
