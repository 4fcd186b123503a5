"""What every recording store must do, written once: ``RecordingStoreContract`` runs on the
``recording_store`` fixture (``tests/test_recording_store.py``), the JSON-file store and then Redis.

Recordings are built with the pure core (``server.recording.core``), so they carry what real ones
carry: participants with answers, the consent log, the texts shown, segments, a stop and a composition.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from server.recording import core
from server.recording.errors import RecordingNotFound
from server.recording.model import Composition, Recording, RecordingMode, RecordingPolicy, RecordingState
from server.store.recordings import ACCESS_LOG_RETENTION_SECONDS, AccessEntry, RecordingStore

NOW = 1_800_000_000.0
DAY = 86400.0
POLICY = RecordingPolicy(RecordingMode.ON_REQUEST, "Nachweis der Beratung", 30)


def make_recording(rec_id: str, ticket: str = "t1", department: str = "a", created_at: float = NOW,
                   *, stopped: bool = False, retention_days: int = 30) -> Recording:
    """A recording that went through asking, recording, a late joiner (pause, resume) and, if
    ``stopped``, a stop by the clerk and a successful composition: every field is set."""
    policy = RecordingPolicy(POLICY.mode, POLICY.purpose, retention_days)
    citizen = f"citizen:{ticket}"
    rec, _ = core.request(recording_id=rec_id, ticket_id=ticket, department=department, policy=policy,
                          requester="staff:anna", requester_role="clerk",
                          present=[("staff:anna", "clerk"), (citizen, "citizen")], live=None, now=created_at)
    rec, _ = core.answer(rec, "staff:anna", True, core.consent_text(policy, "Amt A", "de"), created_at + 1)
    rec, _ = core.answer(rec, citizen, True, core.consent_text(policy, "Amt A", "en"), created_at + 2)
    rec, _ = core.joined(rec, "staff:ben", "guest", created_at + 5)
    rec, _ = core.answer(rec, "staff:ben", True, core.consent_text(policy, "Amt A", "de"), created_at + 6)
    if stopped:
        rec, _ = core.stop(rec, "staff:anna", "clerk", created_at + 10)
        rec = core.composed(rec, True, 8.5, 123_456)
    return rec


def stopped(rec: Recording, at: float | None = None) -> Recording:
    return core.stop(rec, "staff:anna", "clerk", rec.created_at + 10 if at is None else at)[0]


class RecordingStoreContract:
    async def test_create_and_get_round_trip_every_field(self, recording_store: RecordingStore) -> None:
        live = make_recording("r1", "t1")
        done = make_recording("r2", "t2", stopped=True)
        assert live.state is RecordingState.RECORDING and len(live.segments) == 2 and len(live.texts) == 2
        assert done.composition is Composition.DONE and done.stop_reason == "stopped" and done.size == 123_456
        assert await recording_store.create(live) is True
        assert await recording_store.create(done) is True
        assert await recording_store.get("r1") == live
        assert await recording_store.get("r2") == done
        assert await recording_store.get("nope") is None
        assert await recording_store.live_for_ticket("t1") == live
        assert await recording_store.live_for_ticket("t2") is None  # created stopped: never live

    async def test_second_create_while_live_is_refused_and_changes_nothing(
        self, recording_store: RecordingStore
    ) -> None:
        first = make_recording("r1", "t1")
        assert await recording_store.create(first)
        second = make_recording("r2", "t1", created_at=NOW + 50)
        assert await recording_store.create(second) is False
        assert await recording_store.get("r2") is None
        assert await recording_store.get("r1") == first
        assert await recording_store.live_for_ticket("t1") == first
        assert [r.id for r in await recording_store.list(["a"])] == ["r1"]
        assert await recording_store.expired(float("inf")) == ["r1"]
        # Asking: live too.
        asking, _ = core.request(recording_id="r3", ticket_id="t1", department="a", policy=POLICY,
                                 requester="staff:anna", requester_role="clerk", present=[("staff:anna", "clerk")],
                                 live=None, now=NOW + 60)
        assert await recording_store.create(asking) is False

    async def test_create_with_an_existing_id_is_refused(self, recording_store: RecordingStore) -> None:
        rec = make_recording("r1", "t1", stopped=True)
        assert await recording_store.create(rec)
        assert await recording_store.create(make_recording("r1", "t9")) is False
        assert await recording_store.get("r1") == rec
        assert await recording_store.live_for_ticket("t9") is None

    async def test_after_a_stop_is_saved_the_ticket_can_record_again(self, recording_store: RecordingStore) -> None:
        first = make_recording("r1", "t1")
        assert await recording_store.create(first)
        paused, _ = core.joined(first, "staff:carl", "guest", NOW + 7)
        await recording_store.save(paused)  # a live save keeps it live
        assert await recording_store.live_for_ticket("t1") == paused
        assert await recording_store.create(make_recording("r2", "t1")) is False
        ended = stopped(paused)
        await recording_store.save(ended)
        assert await recording_store.get("r1") == ended
        assert await recording_store.live_for_ticket("t1") is None
        second = make_recording("r2", "t1", created_at=NOW + 100)
        assert await recording_store.create(second) is True
        assert await recording_store.live_for_ticket("t1") == second
        # A later save of the old, stopped recording (composition result) leaves the new one live.
        await recording_store.save(core.composed(ended, False, 0.0, 0))
        assert (await recording_store.get("r1")).composition is Composition.FAILED  # type: ignore[union-attr]
        assert await recording_store.live_for_ticket("t1") == second

    async def test_save_of_an_unknown_or_deleted_recording_is_refused(self, recording_store: RecordingStore) -> None:
        rec = make_recording("r1", "t1")
        with pytest.raises(RecordingNotFound):
            await recording_store.save(rec)
        assert await recording_store.get("r1") is None
        assert await recording_store.create(rec)
        assert await recording_store.delete("r1")
        with pytest.raises(RecordingNotFound):
            await recording_store.save(stopped(rec))  # the deletion wins: nothing comes back
        assert await recording_store.get("r1") is None
        assert await recording_store.list(["a"]) == []
        assert await recording_store.expired(float("inf")) == []

    async def test_concurrent_creates_for_one_ticket_let_exactly_one_win(
        self, recording_store: RecordingStore
    ) -> None:
        recs = [make_recording(f"r{i}", "t1", created_at=NOW + i) for i in range(20)]
        results = await asyncio.gather(*(recording_store.create(r) for r in recs))
        assert results.count(True) == 1
        winner = recs[results.index(True)]
        assert await recording_store.live_for_ticket("t1") == winner
        assert [r.id for r in await recording_store.list(["a"])] == [winner.id]
        for r in recs:
            assert await recording_store.get(r.id) == (r if r is winner else None)

    async def test_list_is_per_department_newest_first(self, recording_store: RecordingStore) -> None:
        for rec in (
            make_recording("a-old", "t1", "a", NOW, stopped=True),
            make_recording("b-mid", "t2", "b", NOW + 10),
            make_recording("a-new", "t3", "a", NOW + 20),
            make_recording("c-new", "t4", "c", NOW + 30, stopped=True),
            make_recording("a-mid", "t5", "a", NOW + 15, stopped=True),
        ):
            assert await recording_store.create(rec)
        assert [r.id for r in await recording_store.list(["a"])] == ["a-new", "a-mid", "a-old"]
        assert [r.id for r in await recording_store.list(["b"])] == ["b-mid"]
        assert [r.id for r in await recording_store.list(["a", "b"])] == ["a-new", "a-mid", "b-mid", "a-old"]
        assert [r.id for r in await recording_store.list(["b", "a", "b"])] == ["a-new", "a-mid", "b-mid", "a-old"]
        assert await recording_store.list(["x"]) == []
        assert await recording_store.list([]) == []
        full = await recording_store.list(["c"])
        assert full == [make_recording("c-new", "t4", "c", NOW + 30, stopped=True)]

    async def test_delete_removes_the_recording_and_its_live_pointer(self, recording_store: RecordingStore) -> None:
        live = make_recording("r1", "t1")
        other = make_recording("r2", "t2")
        assert await recording_store.create(live) and await recording_store.create(other)
        assert await recording_store.delete("r1") is True
        assert await recording_store.get("r1") is None
        assert await recording_store.live_for_ticket("t1") is None
        assert [r.id for r in await recording_store.list(["a"])] == ["r2"]
        assert await recording_store.expired(float("inf")) == ["r2"]
        assert await recording_store.delete("r1") is False
        assert await recording_store.delete("never") is False
        assert await recording_store.live_for_ticket("t2") == other
        assert await recording_store.create(make_recording("r3", "t1"))  # the ticket may record again

    async def test_expired_lists_recordings_whose_retention_ended(self, recording_store: RecordingStore) -> None:
        short = make_recording("short", "t1", created_at=NOW, stopped=True, retention_days=1)
        long = make_recording("long", "t2", created_at=NOW, stopped=True, retention_days=30)
        later = make_recording("later", "t3", created_at=NOW + DAY, stopped=True, retention_days=1)
        for rec in (long, later, short):
            assert await recording_store.create(rec)
        assert await recording_store.expired(NOW + DAY - 1) == []
        assert await recording_store.expired(NOW + DAY) == ["short"]  # at expires_at: due
        assert sorted(await recording_store.expired(NOW + 2 * DAY)) == ["later", "short"]
        assert sorted(await recording_store.expired(NOW + 30 * DAY)) == ["later", "long", "short"]
        assert await recording_store.delete("short")
        assert sorted(await recording_store.expired(NOW + 30 * DAY)) == ["later", "long"]

    async def test_access_log_per_department_newest_first_with_limit(self, recording_store: RecordingStore) -> None:
        now = time.time()
        entries = [
            AccessEntry(now - 50, "lena", "view", "r1", "a"),
            AccessEntry(now - 40, "lena", "download", "r1", "a"),
            AccessEntry(now - 30, "max", "view", "r2", "b"),
            AccessEntry(now - 20, "lena", "delete", "r1", "a"),
            AccessEntry(now - 10, "system", "expired", "r3", "a"),
            AccessEntry(now - 10, "system", "expired", "r3", "a"),  # identical entries both count
        ]
        for e in entries:
            await recording_store.log_access(e)
        a = await recording_store.access_log(["a"])
        assert a == [entries[5], entries[4], entries[3], entries[1], entries[0]]
        assert await recording_store.access_log(["b"]) == [entries[2]]
        assert await recording_store.access_log(["a", "b"]) == [
            entries[5], entries[4], entries[3], entries[2], entries[1], entries[0]]
        assert await recording_store.access_log(["a", "b"], limit=3) == [entries[5], entries[4], entries[3]]
        assert await recording_store.access_log(["a"], limit=0) == []
        assert await recording_store.access_log(["x"]) == []
        assert await recording_store.access_log([]) == []

    async def test_access_log_forgets_entries_past_retention(self, recording_store: RecordingStore) -> None:
        now = time.time()
        old = AccessEntry(now - ACCESS_LOG_RETENTION_SECONDS - 3600, "lena", "view", "r1", "a")
        kept = AccessEntry(now - ACCESS_LOG_RETENTION_SECONDS + 3600, "lena", "download", "r1", "a")
        recent = AccessEntry(now, "max", "view", "r2", "a")
        await recording_store.log_access(old)
        await recording_store.log_access(kept)
        await recording_store.log_access(recent)
        assert await recording_store.access_log(["a"]) == [recent, kept]

    async def test_access_log_survives_the_recordings_deletion(self, recording_store: RecordingStore) -> None:
        assert await recording_store.create(make_recording("r1", "t1", stopped=True))
        entry = AccessEntry(time.time(), "lena", "delete", "r1", "a")
        assert await recording_store.delete("r1")
        await recording_store.log_access(entry)
        assert await recording_store.access_log(["a"]) == [entry]
