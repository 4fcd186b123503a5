"""The contract every appointment store keeps (memory and Redis): atomic places per slot and per day, version
checks, indexes, one-time flags, and the race for the last place. Used by tests/test_appointments_store.py."""

from __future__ import annotations

import asyncio
import time

from server.appointments.model import Appointment, AppointmentState
from server.store.appointments import CONFLICT, DAY_FULL, OK, SLOT_FULL, AppointmentStore

BASE = float(int(time.time()) // 3600 * 3600 + 7 * 86400)  # a week ahead, on the hour
DAY = "2099-01-05"
OTHER_DAY = "2099-01-06"


def make(appointment_id: str, start: float = BASE, day: str = DAY, department: str = "bb") -> Appointment:
    return Appointment(id=appointment_id, token_hash=f"hash-{appointment_id}", department=department, start=start,
                       end=start + 1200, day=day, time="09:00", state=AppointmentState.BOOKED,
                       created_at=BASE - 86400, name="Ada", email="ada@example.org")


async def put(store: AppointmentStore, a: Appointment, previous: Appointment | None = None, parallel: int = 1,
              day_cap: int = 0) -> str:
    return await store.commit(a, previous, parallel=parallel, day_cap=day_cap, expires_at=a.end + 86400)


class AppointmentStoreContract:
    async def test_create_read_and_token(self, appointment_store: AppointmentStore) -> None:
        a = make("a1")
        assert await put(appointment_store, a) == OK
        assert await appointment_store.get("a1") == a
        assert await appointment_store.id_for_token("hash-a1") == "a1"
        assert await appointment_store.get("nope") is None
        assert await appointment_store.id_for_token("nope") is None
        assert await put(appointment_store, a, parallel=5) == CONFLICT  # exists already

    async def test_places_per_slot_and_day(self, appointment_store: AppointmentStore) -> None:
        assert await put(appointment_store, make("a1"), parallel=2) == OK
        assert await put(appointment_store, make("a2"), parallel=2) == OK
        assert await put(appointment_store, make("a3"), parallel=2) == SLOT_FULL
        assert await appointment_store.get("a3") is None  # nothing changed
        assert await appointment_store.taken("bb", [BASE, BASE + 1200]) == [2, 0]
        assert await appointment_store.day_count("bb", DAY) == 2
        assert await put(appointment_store, make("a4", BASE + 1200), parallel=2, day_cap=2) == DAY_FULL
        assert await put(appointment_store, make("a4", BASE + 1200), parallel=2, day_cap=3) == OK
        assert await appointment_store.taken("other", [BASE]) == [0]  # departments do not share places

    async def test_cancel_gives_the_place_back(self, appointment_store: AppointmentStore) -> None:
        a = make("a1")
        await put(appointment_store, a)
        cancelled = a.replace(state=AppointmentState.CANCELLED, version=1)
        assert await put(appointment_store, cancelled, a) == OK
        assert await appointment_store.taken("bb", [BASE]) == [0]
        assert await appointment_store.day_count("bb", DAY) == 0
        assert await put(appointment_store, make("a2")) == OK  # the freed place is bookable
        assert [x.id for x in await appointment_store.day("bb", DAY)] == ["a1", "a2"]  # cancelled ones listed too

    async def test_move_takes_the_new_place_and_frees_the_old(self, appointment_store: AppointmentStore) -> None:
        a = make("a1")
        await put(appointment_store, a, day_cap=1)
        moved = a.replace(start=BASE + 86400, end=BASE + 87600, day=OTHER_DAY, version=1)
        assert await put(appointment_store, moved, a, day_cap=1) == OK
        assert await appointment_store.taken("bb", [BASE, BASE + 86400]) == [0, 1]
        counts = (await appointment_store.day_count("bb", DAY), await appointment_store.day_count("bb", OTHER_DAY))
        assert counts == (0, 1)
        assert await appointment_store.day("bb", DAY) == []
        assert [x.id for x in await appointment_store.day("bb", OTHER_DAY)] == ["a1"]
        # within the same day at the day cap: its own place counts once
        again = moved.replace(start=BASE + 86400 + 1200, end=BASE + 88800, version=2)
        assert await put(appointment_store, again, moved, day_cap=1) == OK
        assert await appointment_store.day_count("bb", OTHER_DAY) == 1

    async def test_move_into_a_full_slot_changes_nothing(self, appointment_store: AppointmentStore) -> None:
        a, b = make("a1"), make("b1", BASE + 1200)
        await put(appointment_store, a)
        await put(appointment_store, b)
        moved = a.replace(start=BASE + 1200, end=BASE + 2400, version=1)
        assert await put(appointment_store, moved, a) == SLOT_FULL
        assert await appointment_store.get("a1") == a
        assert await appointment_store.taken("bb", [BASE, BASE + 1200]) == [1, 1]

    async def test_a_stale_version_is_refused(self, appointment_store: AppointmentStore) -> None:
        a = make("a1")
        await put(appointment_store, a)
        checked_in = a.replace(state=AppointmentState.CHECKED_IN, ticket_id="t1", version=1)
        assert await put(appointment_store, checked_in, a) == OK
        late_cancel = a.replace(state=AppointmentState.CANCELLED, version=1)
        assert await put(appointment_store, late_cancel, a) == CONFLICT  # decided on version 0
        assert await appointment_store.get("a1") == checked_in
        assert await appointment_store.taken("bb", [BASE]) == [1]  # a checked-in appointment keeps its place

    async def test_listing_by_start(self, appointment_store: AppointmentStore) -> None:
        for i, offset in enumerate((2400, 0, 1200)):
            await put(appointment_store, make(f"a{i}", BASE + offset))
        await put(appointment_store, make("x", BASE + 600, department="other"))
        assert [a.id for a in await appointment_store.day("bb", DAY)] == ["a1", "a2", "a0"]
        assert [a.id for a in await appointment_store.starting_between(BASE, BASE + 2400)] == ["a1", "x", "a2"]

    async def test_booked_ahead_counts_booked_slots_not_yet_ended(self, appointment_store: AppointmentStore) -> None:
        assert await appointment_store.booked_ahead("bb", BASE) == 0
        a, b = make("a1"), make("a2", BASE + 1200)
        await put(appointment_store, a)
        await put(appointment_store, b)
        await put(appointment_store, make("a3", department="other"))
        assert await appointment_store.booked_ahead("bb", BASE - 3600) == 2
        assert await appointment_store.booked_ahead("bb", BASE + 600) == 2  # a1 runs until BASE + 1200
        assert await appointment_store.booked_ahead("bb", BASE + 1200) == 1  # a1 has ended
        await put(appointment_store, a.replace(state=AppointmentState.CANCELLED, version=1), a)
        await put(appointment_store, b.replace(state=AppointmentState.CHECKED_IN, version=1), b)
        assert await appointment_store.booked_ahead("bb", BASE - 3600) == 0  # cancelled / in the waiting room
        assert await appointment_store.booked_ahead("other", BASE - 3600) == 1

    async def test_flags_are_set_once(self, appointment_store: AppointmentStore) -> None:
        assert await appointment_store.claim("a1", "reminded", 60) is True
        assert await appointment_store.claim("a1", "reminded", 60) is False
        assert await appointment_store.claim("a1", "confirmed", 60) is True
        results = await asyncio.gather(*(appointment_store.claim("a2", "reminded", 60) for _ in range(20)))
        assert results.count(True) == 1

    async def test_race_for_the_last_place(self, appointment_store: AppointmentStore) -> None:
        """Many bookings of the last place at once: exactly one wins, the count stays right."""
        await put(appointment_store, make("first"), parallel=2)
        results = await asyncio.gather(*(put(appointment_store, make(f"r{i}"), parallel=2) for i in range(40)))
        assert results.count(OK) == 1
        assert results.count(SLOT_FULL) == 39
        assert await appointment_store.taken("bb", [BASE]) == [2]
        assert len(await appointment_store.day("bb", DAY)) == 2
