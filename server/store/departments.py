"""The department directory: every department's full configuration, editable at runtime, kept across restarts,
and the same on every node. Two stores, one contract (``tests/department_store_contract.py``):
``MemoryDepartmentStore`` (the embedded default: a JSON file ``departments.json`` in ``data_dir``, mode 0600)
and ``RedisDepartmentStore`` (shared by every node).

Each department has a ``revision`` (1 when created, +1 per change): an update or delete names the revision it
started from and a stale one is refused with ``EditConflict`` (409), nothing changed. The directory as a whole
has a ``version``, raised by every change (0: never written, so the TOML's ``[[departments]]`` seed it once).

``DepartmentDirectory`` is a process's live view: ``departments`` (id -> Department) is what the waiting room
reads. A change made here is seen at once; a change made on another node is picked up by ``watch``, which
polls the version (one GET) every ``POLL_SECONDS``: simpler than pub/sub (no subscriber connection to keep
alive through a Redis restart) and cheap. Listeners hear which departments changed.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from ..errors import is_store_unavailable
from ..queue.errors import UnknownDepartment
from ..rooms.departments import Department
from ..rooms.directory import DepartmentExists, EditConflict, department_from_dict, department_to_dict
from ..tasks import stopping
from .files import write_private
from .redis import redis_client

log = logging.getLogger("sprechstunde.departments")

POLL_SECONDS = 1.0
"""How often a node asks the shared store whether the directory changed (one GET of the version)."""
MODIFY_ATTEMPTS = 20
"""Read-modify-write attempts of ``DepartmentDirectory.modify`` before it gives up with ``EditConflict``."""
SETTINGS_CONFLICT = "Someone else changed the settings meanwhile; reload them and make the change again."


@dataclass(frozen=True)
class Stored:
    department: Department
    revision: int


@dataclass(frozen=True)
class Snapshot:
    version: int
    departments: dict[str, Stored]
    """In display order: the seed's order, then by creation."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Server-wide settings changed at /admin/settings (``server.live_settings``); empty: none changed."""
    settings_revision: int = 0


def _dumps(d: Department) -> str:
    return json.dumps(department_to_dict(d), separators=(",", ":"), ensure_ascii=False)


class DepartmentStore(abc.ABC):
    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Every department with its revision, and the version, read at one instant."""

    @abc.abstractmethod
    async def version(self) -> int:
        """The directory's version: 0 before anything was written, raised by every change."""

    @abc.abstractmethod
    async def seed(self, departments: Sequence[Department]) -> bool:
        """Store ``departments`` if the directory was never written (version 0); atomic across nodes.
        True if this call seeded it."""

    @abc.abstractmethod
    async def create(self, department: Department) -> Stored:
        """Add a department (revision 1); ``DepartmentExists`` if its id is taken."""

    @abc.abstractmethod
    async def update(self, department: Department, revision: int) -> Stored:
        """Replace a department if it is still at ``revision``; ``EditConflict`` if not,
        ``UnknownDepartment`` if it is gone."""

    @abc.abstractmethod
    async def delete(self, department_id: str, revision: int) -> None:
        """Remove a department if it is still at ``revision`` (errors as for ``update``)."""

    @abc.abstractmethod
    async def put_settings(self, values: dict[str, Any], revision: int) -> int:
        """Replace the stored server-wide settings if they are still at ``revision`` (0: never written);
        ``EditConflict`` if not. Raises the directory's version (every node picks it up). The new revision."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class MemoryDepartmentStore(DepartmentStore):
    """A dict, written whole to a private JSON file after every change and read at start. Every method
    finishes without suspending, so check-and-write is atomic within the process."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._version = 0
        self._entries: dict[str, Stored] = {}
        self._settings: dict[str, Any] = {}
        self._settings_revision = 0
        if path is not None and path.exists():
            # A corrupt file raises: starting with the TOML's departments instead would undo every edit.
            data = json.loads(path.read_text("utf-8") or "{}")
            self._version = int(data.get("version", 0))
            for item in data.get("departments", []):
                d = department_from_dict(item["department"])
                self._entries[d.id] = Stored(d, int(item["revision"]))
            stored_settings = data.get("settings") or {}
            self._settings = dict(stored_settings.get("values", {}))
            self._settings_revision = int(stored_settings.get("revision", 0))

    def _persist(self) -> None:
        if self._path is None:
            return
        payload = {
            "version": self._version,
            "departments": [{"revision": s.revision, "department": department_to_dict(s.department)}
                            for s in self._entries.values()],
            "settings": {"revision": self._settings_revision, "values": self._settings},
        }
        write_private(self._path, json.dumps(payload, indent=1, ensure_ascii=False))

    def _current(self, department_id: str, revision: int) -> Stored:
        stored = self._entries.get(department_id)
        if stored is None:
            raise UnknownDepartment(f"unknown department {department_id!r}")
        if stored.revision != revision:
            raise EditConflict()
        return stored

    async def snapshot(self) -> Snapshot:
        return Snapshot(self._version, dict(self._entries), dict(self._settings), self._settings_revision)

    async def version(self) -> int:
        return self._version

    async def seed(self, departments: Sequence[Department]) -> bool:
        if self._version:
            return False
        self._entries = {d.id: Stored(d, 1) for d in departments}
        self._version = 1
        self._persist()
        return True

    async def create(self, department: Department) -> Stored:
        if department.id in self._entries:
            raise DepartmentExists(f"a department with the id {department.id!r} exists already")
        stored = self._entries[department.id] = Stored(department, 1)
        self._version += 1
        self._persist()
        return stored

    async def update(self, department: Department, revision: int) -> Stored:
        old = self._current(department.id, revision)
        stored = self._entries[department.id] = Stored(department, old.revision + 1)
        self._version += 1
        self._persist()
        return stored

    async def delete(self, department_id: str, revision: int) -> None:
        self._current(department_id, revision)
        del self._entries[department_id]
        self._version += 1
        self._persist()

    async def put_settings(self, values: dict[str, Any], revision: int) -> int:
        if revision != self._settings_revision:
            raise EditConflict(SETTINGS_CONFLICT)
        self._settings = dict(values)
        self._settings_revision += 1
        self._version += 1
        self._persist()
        return self._settings_revision

    async def close(self) -> None:
        return None


# Redis: KEYS = dept (id -> department JSON), dept:rev (id -> revision), dept:pos (id -> display position),
# dept:version (counter). Each write is one script, so no node ever reads half of it.
_SEED = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  local pos = (i + 1) / 2
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], 1)
  redis.call('HSET', KEYS[3], ARGV[i], pos)
end
redis.call('SET', KEYS[4], 1)
return 1
"""

_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
local version = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], 1000000 + version)
return 1
"""

_UPDATE = """
local rev = redis.call('HGET', KEYS[2], ARGV[1])
if not rev then return -2 end
if rev ~= ARGV[2] then return -1 end
local new = tonumber(rev) + 1
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], new)
end
redis.call('INCR', KEYS[4])
return new
"""


# KEYS: settings JSON, settings revision, directory version; ARGV: expected revision, JSON
_SETTINGS = """
local rev = tonumber(redis.call('GET', KEYS[2]) or '0')
if rev ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], rev + 1)
redis.call('INCR', KEYS[3])
return rev + 1
"""


class RedisDepartmentStore(DepartmentStore):
    """Keys under the prefix: ``dept`` hash id -> department JSON, ``dept:rev`` hash id -> revision,
    ``dept:pos`` hash id -> display position, ``dept:version`` the directory's version; ``dept:settings``
    (JSON) and ``dept:settings:rev`` the server-wide settings changed at /admin/settings."""

    def __init__(self, url: str, prefix: str = "sps:") -> None:
        self._redis: aioredis.Redis = redis_client(url)
        self._prefix = prefix
        base = prefix + "dept"
        self._keys = [base, base + ":rev", base + ":pos", base + ":version"]
        self._seed = self._redis.register_script(_SEED)
        self._create = self._redis.register_script(_CREATE)
        self._update = self._redis.register_script(_UPDATE)
        self._settings_keys = [base + ":settings", base + ":settings:rev", base + ":version"]
        self._put_settings = self._redis.register_script(_SETTINGS)

    async def snapshot(self) -> Snapshot:
        bodies_key, revs_key, pos_key, version_key = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(bodies_key)
            pipe.hgetall(revs_key)
            pipe.hgetall(pos_key)
            pipe.get(version_key)
            pipe.get(self._settings_keys[0])
            pipe.get(self._settings_keys[1])
            bodies, revs, positions, version, settings, settings_rev = await pipe.execute()
        order = sorted(bodies, key=lambda i: (int(positions.get(i, 0)), i))
        return Snapshot(
            int(version or 0),
            {i: Stored(department_from_dict(json.loads(bodies[i])), int(revs.get(i, 1))) for i in order},
            json.loads(settings) if settings else {}, int(settings_rev or 0),
        )

    async def version(self) -> int:
        return int(cast("str | None", await self._redis.get(self._keys[3])) or 0)

    async def seed(self, departments: Sequence[Department]) -> bool:
        args: list[str] = []
        for d in departments:
            args += [d.id, _dumps(d)]
        return bool(int(await self._seed(keys=self._keys, args=args)))

    async def create(self, department: Department) -> Stored:
        if int(await self._create(keys=self._keys, args=[department.id, _dumps(department)])) < 0:
            raise DepartmentExists(f"a department with the id {department.id!r} exists already")
        return Stored(department, 1)

    async def _write(self, department_id: str, revision: int, body: str) -> int:
        result = int(await self._update(keys=self._keys, args=[department_id, str(revision), body]))
        if result == -2:
            raise UnknownDepartment(f"unknown department {department_id!r}")
        if result == -1:
            raise EditConflict()
        return result

    async def update(self, department: Department, revision: int) -> Stored:
        return Stored(department, await self._write(department.id, revision, _dumps(department)))

    async def delete(self, department_id: str, revision: int) -> None:
        await self._write(department_id, revision, "")

    async def put_settings(self, values: dict[str, Any], revision: int) -> int:
        body = json.dumps(values, separators=(",", ":"))
        result = int(await self._put_settings(keys=self._settings_keys, args=[revision, body]))
        if result < 0:
            raise EditConflict(SETTINGS_CONFLICT)
        return result

    async def close(self) -> None:
        await self._redis.aclose()


def make_department_store(redis_url: str | None, prefix: str, data_dir: Path) -> DepartmentStore:
    """Redis when the server is configured with one (shared by every node), else the JSON file."""
    if redis_url:
        return RedisDepartmentStore(redis_url, prefix)
    return MemoryDepartmentStore(data_dir / "departments.json")


ChangeListener = Callable[[set[str], bool], Awaitable[None]]
"""Called with the ids of the departments that changed (added, edited or removed) and whether the change
was made by this process (True) or picked up from the shared store (False)."""


class DepartmentDirectory:
    """This process's live view of the directory. Until ``start`` it holds ``initial`` (the TOML's
    departments), so that a waiting room built without a store (unit tests) works as before."""

    def __init__(self, store: DepartmentStore | None, initial: Iterable[Department] = ()) -> None:
        self.store = store
        self._departments: dict[str, Department] = {d.id: d for d in initial}
        self._revisions: dict[str, int] = {}
        self._version = -1
        self._listeners: list[ChangeListener] = []
        self._settings: dict[str, Any] = {}
        self._settings_revision = 0

    @property
    def departments(self) -> dict[str, Department]:
        """Id -> Department, in display order. Replaced (never mutated) on every change: iterate freely."""
        return self._departments

    def revision(self, department_id: str) -> int:
        return self._revisions.get(department_id, 0)

    @property
    def settings(self) -> dict[str, Any]:
        """Server-wide settings changed at /admin/settings (``server.live_settings``), as stored; replaced on
        every change. Empty: none changed (the configuration's values apply)."""
        return self._settings

    @property
    def settings_revision(self) -> int:
        return self._settings_revision

    async def change_settings(self, changes: dict[str, Any], revision: int) -> dict[str, Any]:
        """Merge ``changes`` into the stored server-wide settings if they are still at ``revision``
        (``EditConflict`` if not; read from the store, not this node's copy, so nothing another node wrote is
        lost). Live here at once, on other nodes within ``POLL_SECONDS``. The stored settings before."""
        store = self._require_store()
        before = (await store.snapshot()).settings
        await store.put_settings({**before, **changes}, revision)
        self._apply(await store.snapshot())
        return before

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def start(self, seed: Sequence[Department]) -> None:
        """Seed the store at the very first start, then load it: after that the store wins over the TOML."""
        if self.store is None:
            return
        if await self.store.seed(seed):
            log.info("department directory seeded from the configuration (%d departments)", len(seed))
        await self.refresh()

    async def refresh(self) -> set[str]:
        """Load the store if its version moved; tell listeners what changed (as not made here)."""
        if self.store is None or await self.store.version() == self._version:
            return set()
        changed = self._apply(await self.store.snapshot())
        if changed:
            await self._notify(changed, local=False)
        return changed

    def _apply(self, snap: Snapshot) -> set[str]:
        if snap.version < self._version:  # an older read finishing late
            return set()
        old = self._departments
        new = {i: s.department for i, s in snap.departments.items()}
        changed = {i for i in set(old) | set(new) if old.get(i) != new.get(i)}
        self._departments = new
        self._revisions = {i: s.revision for i, s in snap.departments.items()}
        self._settings = dict(snap.settings)
        self._settings_revision = snap.settings_revision
        self._version = snap.version
        return changed

    async def _notify(self, changed: set[str], local: bool) -> None:
        for listener in self._listeners:
            try:
                await listener(changed, local)
            except Exception:  # noqa: BLE001 - a listener never undoes or blocks a change
                log.exception("department change listener failed")

    async def _changed(self, department_id: str, announce: bool = True) -> None:
        assert self.store is not None
        self._apply(await self.store.snapshot())
        if announce:
            await self.announce(department_id)

    async def announce(self, department_id: str) -> None:
        """Tell listeners that this process changed the department (they push it to pages at once)."""
        await self._notify({department_id}, local=True)

    def _require_store(self) -> DepartmentStore:
        if self.store is None:
            raise RuntimeError("this directory has no store")
        return self.store

    async def create(self, department: Department) -> Stored:
        stored = await self._require_store().create(department)
        await self._changed(department.id)
        return stored

    async def update(self, department: Department, revision: int) -> Stored:
        stored = await self._require_store().update(department, revision)
        await self._changed(department.id)
        return stored

    async def modify(self, department_id: str, change: Callable[[Department], Department],
                     announce: bool = True) -> Stored:
        """Apply ``change`` to the department as stored now (read, change, write if still at that revision;
        again if another edit came first): for edits that do not depend on what a person saw (close, reopen).
        ``announce`` False: the caller calls ``announce`` itself once it has done what belongs to the change."""
        store = self._require_store()
        for _ in range(MODIFY_ATTEMPTS):
            current = (await store.snapshot()).departments.get(department_id)
            if current is None:
                raise UnknownDepartment(f"unknown department {department_id!r}")
            try:
                stored = await store.update(change(current.department), current.revision)
            except EditConflict:
                continue
            await self._changed(department_id, announce)
            return stored
        raise EditConflict()

    async def delete(self, department_id: str, revision: int) -> None:
        await self._require_store().delete(department_id, revision)
        await self._changed(department_id)

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Pick up changes made by other nodes: ask for the version every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - a store hiccup must not end the loop
                if stopping():
                    raise asyncio.CancelledError from None
                if not is_store_unavailable(e):
                    log.exception("department directory refresh failed")

    def to_list(self) -> list[dict[str, Any]]:
        return [{**department_to_dict(d), "revision": self.revision(i)} for i, d in self._departments.items()]
