"""Where appointments live. Two implementations, one contract (``tests/appointment_store_contract.py``):
``MemoryAppointmentStore`` (the embedded default: a JSON file in ``data_dir``, mode 0600, written after each
change) and ``RedisAppointmentStore`` (shared by every node).

Every change goes through :meth:`AppointmentStore.commit`: it writes the new appointment over the version it
was decided on and, in the same atomic step, takes or gives back the places it occupies (a counter per slot
and per department day). On Redis that is one Lua script, so two nodes never both get the last place of a
slot. Appointments (with their personal data) expire ``expires_at`` (the slot's end plus the retention).
"""

from __future__ import annotations

import abc
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from ..appointments.model import Appointment, AppointmentState
from .files import write_private
from .redis import redis_client

OK = "ok"
CONFLICT = "conflict"
"""The appointment changed (or, for a new one, existed) since it was read."""
SLOT_FULL = "slot_full"
DAY_FULL = "day_full"

STARTS_KEEP_SECONDS = 2 * 24 * 3600
"""How long after its start an appointment stays in the index of starts (reminders, no-shows)."""


def _places(new: Appointment, previous: Appointment | None) -> tuple[bool, bool]:
    """(reserve new's slot, release previous's slot)."""
    moved = previous is not None and previous.start != new.start
    prev_holds = previous is not None and previous.state.holds_slot
    reserve = new.state.holds_slot and (previous is None or not prev_holds or moved)
    release = prev_holds and (not new.state.holds_slot or moved)
    return reserve, release


class AppointmentStore(abc.ABC):
    @abc.abstractmethod
    async def commit(self, new: Appointment, previous: Appointment | None, *, parallel: int, day_cap: int,
                     expires_at: float) -> str:
        """Write ``new`` over ``previous`` (None: a new appointment), atomically. Returns ``OK``, ``CONFLICT``
        (stored version is not ``previous``'s, or a new one exists), ``SLOT_FULL`` (its slot holds
        ``parallel`` already) or ``DAY_FULL`` (its department day holds ``day_cap``; 0: no cap); on anything
        but ``OK`` nothing changed. A new or moved appointment takes a place; a cancelled or moved one gives
        its old place back."""

    @abc.abstractmethod
    async def get(self, appointment_id: str) -> Appointment | None: ...

    @abc.abstractmethod
    async def id_for_token(self, token_hash: str) -> str | None: ...

    @abc.abstractmethod
    async def taken(self, department: str, starts: list[float]) -> list[int]:
        """Places taken in each of these slots."""

    @abc.abstractmethod
    async def day_count(self, department: str, day: str) -> int:
        """Places taken on a department day."""

    @abc.abstractmethod
    async def day(self, department: str, day: str) -> list[Appointment]:
        """Every appointment of a department day (cancelled ones included), by start."""

    @abc.abstractmethod
    async def starting_between(self, start: float, end: float) -> list[Appointment]:
        """Appointments of every department starting in [start, end), by start."""

    @abc.abstractmethod
    async def booked_ahead(self, department: str, now: float) -> int:
        """Appointments of a department still booked (not checked in, cancelled or no-show) whose slot has not
        ended at ``now``: citizens holding a link into the department (it cannot be removed meanwhile)."""

    @abc.abstractmethod
    async def claim(self, appointment_id: str, flag: str, ttl: float) -> bool:
        """Set a flag once (e.g. "reminded"): True for the one caller that set it, on any node."""

    @abc.abstractmethod
    async def purge(self, now: float) -> int:
        """Delete what has expired; the number of appointments deleted."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _ahead(a: Appointment, now: float) -> bool:
    return a.state is AppointmentState.BOOKED and a.end > now


def _slot_key(department: str, start: float) -> str:
    return f"{department}:{int(start)}"


class MemoryAppointmentStore(AppointmentStore):
    """Dicts, written to a JSON file (mode 0600) after every change and read at start. No method suspends
    between reading and writing, so each is atomic within the process (the embedded store serves one)."""

    def __init__(self, path: Path | None, clock: Any = time.time) -> None:
        self._path = path
        self.clock = clock
        """Expiry is judged by this clock (the service's, in tests)."""
        self._items: dict[str, Appointment] = {}
        self._expires: dict[str, float] = {}
        self._tokens: dict[str, str] = {}
        self._slots: Counter[str] = Counter()
        self._days: Counter[str] = Counter()
        self._flags: dict[str, float] = {}
        self._load()

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        data = json.loads(self._path.read_text("utf-8") or "{}")
        for entry in data.get("appointments", []):
            a = Appointment.from_dict(entry["appointment"])
            self._put(a, entry["expires_at"])
            if a.state.holds_slot:
                self._slots[_slot_key(a.department, a.start)] += 1
                self._days[_slot_key(a.department, 0) + a.day] += 1
        self._flags = dict(data.get("flags", {}))
        self._purge(self.clock())

    def _persist(self) -> None:
        if self._path is None:
            return
        payload = {
            "appointments": [{"appointment": a.to_dict(), "expires_at": self._expires[a.id]}
                             for a in sorted(self._items.values(), key=lambda x: (x.start, x.id))],
            "flags": self._flags,
        }
        write_private(self._path, json.dumps(payload, separators=(",", ":")))

    def _put(self, a: Appointment, expires_at: float) -> None:
        self._items[a.id] = a
        self._expires[a.id] = expires_at
        self._tokens[a.token_hash] = a.id

    def _live(self, appointment_id: str) -> Appointment | None:
        a = self._items.get(appointment_id)
        if a is None or self._expires[a.id] <= self.clock():
            return None
        return a

    async def commit(self, new: Appointment, previous: Appointment | None, *, parallel: int, day_cap: int,
                     expires_at: float) -> str:
        current = self._live(new.id)
        if previous is None and current is not None:
            return CONFLICT
        if previous is not None and (current is None or current.version != previous.version):
            return CONFLICT
        reserve, release = _places(new, previous)
        slot, day = _slot_key(new.department, new.start), _slot_key(new.department, 0) + new.day
        if reserve:
            same_day = release and previous is not None and previous.day == new.day
            if self._slots[slot] >= parallel:
                return SLOT_FULL
            if day_cap and self._days[day] - (1 if same_day else 0) >= day_cap:
                return DAY_FULL
        if release and previous is not None:
            self._slots[_slot_key(previous.department, previous.start)] -= 1
            self._days[_slot_key(previous.department, 0) + previous.day] -= 1
        if reserve:
            self._slots[slot] += 1
            self._days[day] += 1
        self._put(new, expires_at)
        self._persist()
        return OK

    async def get(self, appointment_id: str) -> Appointment | None:
        return self._live(appointment_id)

    async def id_for_token(self, token_hash: str) -> str | None:
        appointment_id = self._tokens.get(token_hash)
        return appointment_id if appointment_id and self._live(appointment_id) else None

    async def taken(self, department: str, starts: list[float]) -> list[int]:
        return [max(0, self._slots[_slot_key(department, s)]) for s in starts]

    async def day_count(self, department: str, day: str) -> int:
        return max(0, self._days[_slot_key(department, 0) + day])

    async def day(self, department: str, day: str) -> list[Appointment]:
        found = [a for a in self._items.values() if a.department == department and a.day == day]
        return sorted((a for a in found if self._live(a.id)), key=lambda a: (a.start, a.created_at, a.id))

    async def starting_between(self, start: float, end: float) -> list[Appointment]:
        found = [a for a in self._items.values() if start <= a.start < end and self._live(a.id)]
        return sorted(found, key=lambda a: (a.start, a.created_at, a.id))

    async def booked_ahead(self, department: str, now: float) -> int:
        return sum(1 for a in self._items.values()
                   if a.department == department and _ahead(a, now) and self._live(a.id))

    async def claim(self, appointment_id: str, flag: str, ttl: float) -> bool:
        key = f"{appointment_id}:{flag}"
        now = self.clock()
        if self._flags.get(key, 0) > now:
            return False
        self._flags[key] = now + ttl
        self._persist()
        return True

    def _purge(self, now: float) -> int:
        gone = [i for i, at in self._expires.items() if at <= now]
        for i in gone:
            a = self._items.pop(i)
            del self._expires[i]
            self._tokens.pop(a.token_hash, None)
            if a.state.holds_slot:
                self._slots[_slot_key(a.department, a.start)] -= 1
                self._days[_slot_key(a.department, 0) + a.day] -= 1
        self._slots = Counter({k: v for k, v in self._slots.items() if v > 0})
        self._days = Counter({k: v for k, v in self._days.items() if v > 0})
        self._flags = {k: v for k, v in self._flags.items() if v > now}
        return len(gone)

    async def purge(self, now: float) -> int:
        gone = self._purge(now)
        if gone:
            self._persist()
        return gone

    async def close(self) -> None:
        return None


# KEYS: 1 appointment, 2 token, 3 new slot counter, 4 new day counter, 5 new day index, 6 old slot counter,
#       7 old day counter, 8 old day index, 9 index of starts
# ARGV: 1 expected version ("" = new), 2 json, 3 parallel, 4 day cap, 5 ttl ms, 6 reserve, 7 release,
#       8 id, 9 start, 10 same day (release and reserve on one day)
_COMMIT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 'conflict' end
else
  if not current then return 'conflict' end
  if tostring(cjson.decode(current)['version']) ~= ARGV[1] then return 'conflict' end
end
if ARGV[6] == '1' then
  if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[3]) then return 'slot_full' end
  local day = tonumber(redis.call('GET', KEYS[4]) or '0')
  if ARGV[10] == '1' then day = day - 1 end
  if tonumber(ARGV[4]) > 0 and day >= tonumber(ARGV[4]) then return 'day_full' end
end
if ARGV[7] == '1' then
  redis.call('DECR', KEYS[6])
  redis.call('DECR', KEYS[7])
  if KEYS[8] ~= KEYS[5] then redis.call('ZREM', KEYS[8], ARGV[8]) end
end
if ARGV[6] == '1' then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('INCR', KEYS[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[9], ARGV[8])
redis.call('PEXPIRE', KEYS[5], ARGV[5])
redis.call('ZADD', KEYS[9], ARGV[9], ARGV[8])
return 'ok'
"""


class RedisAppointmentStore(AppointmentStore):
    def __init__(self, url: str, prefix: str = "sps:", clock: Any = time.time) -> None:
        self._redis: aioredis.Redis = redis_client(url)
        self._prefix = prefix
        self.clock = clock
        self._commit = self._redis.register_script(_COMMIT)

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _slot(self, department: str, start: float) -> str:
        return self._k("appt-slot", department, str(int(start)))

    def _daycount(self, department: str, day: str) -> str:
        return self._k("appt-daycount", department, day)

    def _dayidx(self, department: str, day: str) -> str:
        return self._k("appt-day", department, day)

    async def commit(self, new: Appointment, previous: Appointment | None, *, parallel: int, day_cap: int,
                     expires_at: float) -> str:
        reserve, release = _places(new, previous)
        old = previous or new
        ttl_ms = max(1000, int((expires_at - self.clock()) * 1000))
        keys = [
            self._k("appt", new.id), self._k("appt-token", new.token_hash),
            self._slot(new.department, new.start), self._daycount(new.department, new.day),
            self._dayidx(new.department, new.day),
            self._slot(old.department, old.start), self._daycount(old.department, old.day),
            self._dayidx(old.department, old.day), self._k("appt-starts"),
        ]
        same_day = release and reserve and old.day == new.day
        args: list[str | int | float] = [
            "" if previous is None else str(previous.version), json.dumps(new.to_dict(), separators=(",", ":")),
            parallel, day_cap, ttl_ms, int(reserve), int(release), new.id, new.start, int(same_day),
        ]
        return str(await self._commit(keys=keys, args=args))

    async def _many(self, ids: list[str]) -> list[Appointment]:
        if not ids:
            return []
        raw = await self._redis.mget([self._k("appt", i) for i in ids])
        return [Appointment.from_dict(json.loads(r)) for r in raw if r]

    async def get(self, appointment_id: str) -> Appointment | None:
        found = await self._many([appointment_id])
        return found[0] if found else None

    async def id_for_token(self, token_hash: str) -> str | None:
        value = await self._redis.get(self._k("appt-token", token_hash))
        return str(value) if value else None

    async def taken(self, department: str, starts: list[float]) -> list[int]:
        if not starts:
            return []
        raw = await self._redis.mget([self._slot(department, s) for s in starts])
        return [max(0, int(r or 0)) for r in raw]

    async def day_count(self, department: str, day: str) -> int:
        return max(0, int(await self._redis.get(self._daycount(department, day)) or 0))

    async def day(self, department: str, day: str) -> list[Appointment]:
        ids = cast(list[str], await self._redis.zrange(self._dayidx(department, day), 0, -1))
        return sorted(await self._many(ids), key=lambda a: (a.start, a.created_at, a.id))

    async def starting_between(self, start: float, end: float) -> list[Appointment]:
        ids = cast(list[str], await self._redis.zrangebyscore(self._k("appt-starts"), start, f"({end}"))
        return sorted(await self._many(ids), key=lambda a: (a.start, a.created_at, a.id))

    async def booked_ahead(self, department: str, now: float) -> int:
        # The index of starts holds every department's; a slot still running started at most a day ago.
        ids = cast(list[str], await self._redis.zrangebyscore(self._k("appt-starts"), now - 86400, "+inf"))
        return sum(1 for a in await self._many(ids) if a.department == department and _ahead(a, now))

    async def claim(self, appointment_id: str, flag: str, ttl: float) -> bool:
        done = await self._redis.set(self._k("appt-flag", appointment_id, flag), "1", nx=True,
                                     px=max(1000, int(ttl * 1000)))
        return bool(done)

    async def purge(self, now: float) -> int:
        # The appointments themselves expire with their keys; only the index of starts needs trimming.
        await self._redis.zremrangebyscore(self._k("appt-starts"), "-inf", now - STARTS_KEEP_SECONDS)
        return 0

    async def close(self) -> None:
        await self._redis.aclose()


def make_appointment_store(redis_url: str | None, prefix: str, data_dir: Path) -> AppointmentStore:
    """Redis when the server is configured with one (shared by every node), else the JSON file."""
    if redis_url:
        return RedisAppointmentStore(redis_url, prefix)
    return MemoryAppointmentStore(data_dir / "appointments.json")
