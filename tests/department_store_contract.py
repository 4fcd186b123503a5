"""What every department store must do, written once: ``DepartmentStoreContract`` runs on the
``department_store`` fixture (``tests/test_department_store.py``), the JSON-file store and then Redis."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from server.queue.errors import UnknownDepartment
from server.recording.model import RecordingMode, RecordingPolicy
from server.rooms.departments import Closure, Department, parse_hours
from server.rooms.directory import DepartmentExists, EditConflict
from server.store.departments import DepartmentStore

FULL = Department(
    id="buergerbuero", name="Bürgerbüro", description="Ausweise – und „Meldewesen“",
    hours=parse_hours({"mon": "08:00-12:00, 14:00-16:00", "fri": "07:30-24:00"}), queue_cap=40,
    service_minutes=7.5, require_name=True, require_concern=True,
    recording=RecordingPolicy(RecordingMode.ON_REQUEST, "Schulung", 30),
    closures=(Closure(date(2026, 12, 24), date(2026, 12, 26), "Frohe Weihnachten"),),
    closed_now=True, closed_message="Heute wegen Betriebsversammlung geschlossen",
)
PLAIN = Department("bauamt", "Bauamt")
NEVER = Department("standesamt", "Standesamt", hours=parse_hours({}))


class DepartmentStoreContract:
    async def test_a_new_store_is_at_version_zero_and_empty(self, department_store: DepartmentStore) -> None:
        assert await department_store.version() == 0
        snap = await department_store.snapshot()
        assert (snap.version, snap.departments) == (0, {})

    async def test_seed_round_trips_every_field_in_order(self, department_store: DepartmentStore) -> None:
        assert await department_store.seed([PLAIN, FULL, NEVER]) is True
        snap = await department_store.snapshot()
        assert list(snap.departments) == ["bauamt", "buergerbuero", "standesamt"]
        assert snap.departments["buergerbuero"].department == FULL
        assert snap.departments["standesamt"].department.hours.slots == ((),) * 7  # never open, not "always"
        assert snap.departments["bauamt"].department.hours.slots is None
        assert {s.revision for s in snap.departments.values()} == {1}
        assert snap.version == await department_store.version() >= 1

    async def test_seed_happens_once_even_after_everything_was_deleted(self, department_store: DepartmentStore) -> None:
        assert await department_store.seed([PLAIN]) is True
        assert await department_store.seed([FULL]) is False
        await department_store.delete("bauamt", 1)
        assert await department_store.seed([FULL]) is False
        assert (await department_store.snapshot()).departments == {}

    async def test_two_seeds_at_once_store_one(self, department_store: DepartmentStore) -> None:
        results = await asyncio.gather(department_store.seed([PLAIN]), department_store.seed([FULL]))
        assert sorted(results) == [False, True]
        assert len((await department_store.snapshot()).departments) == 1

    async def test_create_appends_and_refuses_a_taken_id(self, department_store: DepartmentStore) -> None:
        await department_store.seed([FULL])
        v = await department_store.version()
        stored = await department_store.create(PLAIN)
        assert (stored.department, stored.revision) == (PLAIN, 1)
        assert await department_store.version() > v
        with pytest.raises(DepartmentExists):
            await department_store.create(Department("bauamt", "Another"))
        snap = await department_store.snapshot()
        assert list(snap.departments) == ["buergerbuero", "bauamt"]
        assert snap.departments["bauamt"].department == PLAIN

    async def test_update_needs_the_current_revision(self, department_store: DepartmentStore) -> None:
        await department_store.seed([PLAIN])
        first = Department("bauamt", "Bauamt I", queue_cap=5)
        assert (await department_store.update(first, 1)).revision == 2
        v = await department_store.version()
        with pytest.raises(EditConflict):
            await department_store.update(Department("bauamt", "Bauamt II"), 1)  # started from revision 1
        assert await department_store.version() == v  # nothing changed
        snap = await department_store.snapshot()
        assert (snap.departments["bauamt"].department, snap.departments["bauamt"].revision) == (first, 2)
        with pytest.raises(UnknownDepartment):
            await department_store.update(Department("nope", "Nope"), 1)

    async def test_two_edits_from_the_same_revision_one_wins(self, department_store: DepartmentStore) -> None:
        await department_store.seed([PLAIN])
        results = await asyncio.gather(
            department_store.update(Department("bauamt", "A"), 1),
            department_store.update(Department("bauamt", "B"), 1),
            return_exceptions=True,
        )
        assert sum(isinstance(r, EditConflict) for r in results) == 1
        winner = next(r for r in results if not isinstance(r, BaseException))
        assert (await department_store.snapshot()).departments["bauamt"].department == winner.department

    async def test_delete_needs_the_current_revision(self, department_store: DepartmentStore) -> None:
        await department_store.seed([PLAIN, FULL])
        await department_store.update(Department("bauamt", "Bauamt"), 1)
        with pytest.raises(EditConflict):
            await department_store.delete("bauamt", 1)
        await department_store.delete("bauamt", 2)
        with pytest.raises(UnknownDepartment):
            await department_store.delete("bauamt", 2)
        assert list((await department_store.snapshot()).departments) == ["buergerbuero"]
        recreated = await department_store.create(PLAIN)  # the id is free again, from revision 1
        assert recreated.revision == 1

    async def test_server_settings_are_one_record_with_a_revision(self, department_store: DepartmentStore) -> None:
        await department_store.seed([PLAIN])
        snap = await department_store.snapshot()
        assert (snap.settings, snap.settings_revision) == ({}, 0)
        version = await department_store.version()
        assert await department_store.put_settings({"answer_seconds": 60.0}, 0) == 1
        assert await department_store.version() > version  # every node's poll sees it
        with pytest.raises(EditConflict):
            await department_store.put_settings({"answer_seconds": 5.0}, 0)
        results = await asyncio.gather(department_store.put_settings({"grace_seconds": 1.0}, 1),
                                       department_store.put_settings({"grace_seconds": 2.0}, 1),
                                       return_exceptions=True)
        assert sum(isinstance(r, EditConflict) for r in results) == 1
        snap = await department_store.snapshot()
        assert snap.settings_revision == 2 and snap.settings["grace_seconds"] in (1.0, 2.0)
        assert list(snap.departments) == ["bauamt"]  # the departments are untouched
