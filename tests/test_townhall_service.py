"""The town-hall service without sockets: a recorded event's files are deleted when its retention ends
(test clock), and publishing follows the core's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.queue.model import Clerk
from server.store.memory import MemoryStore
from server.store.townhall import MemoryTownHallStore
from server.townhall import core
from server.townhall.errors import NoRecording
from server.townhalls import TownHallService

NOW = 1_800_000_000.0
DAY = 86400.0
MONA = Clerk("mona", "Mona", frozenset(), frozenset({"moderator"}))


async def ended_event(service: TownHallService, recorded: bool = True, event_id: str = "ev1") -> str:
    event = core.create_event(
        event_id=event_id, creator=MONA, title="Sprechstunde", description="", politicians=["paul"],
        starts_at=NOW + 10, ends_at=NOW + 3600, advance_questions=False, questions_until=None,
        recorded=recorded, recording_purpose="Veröffentlichung" if recorded else "",
        retention_days=30 if recorded else 0, audience_limit=100, now=NOW,
    )
    event = core.start(event, MONA, NOW + 10)
    event, _ = core.end(event, MONA, NOW + 600)
    await service.store.create_event(event)
    return event.id


async def test_retention_deletes_the_recording_of_an_event(tmp_path: Path) -> None:
    clock = [NOW + 700]
    service = TownHallService(MemoryTownHallStore(None), MemoryStore(), tmp_path, clock=lambda: clock[0])
    try:
        event_id = await ended_event(service)
        directory = service.directory(event_id)
        directory.mkdir(parents=True)
        (directory / "recording.webm").write_bytes(b"webm")
        service._write_meta(event_id, composition="done", started_at=NOW + 10, chapters=[], youtube=None)
        event = await service.publish(MONA, event_id, True)
        assert event.published and service.published_file(event) is not None

        assert await service.sweep(NOW + 600 + 29 * DAY) == 0
        assert directory.exists()
        assert await service.sweep(NOW + 600 + 30 * DAY) == 1
        assert not directory.exists()
        event = await service.event(event_id)
        assert not event.published and service.published_file(event) is None
        with pytest.raises(NoRecording):
            service.recording_info(event)
    finally:
        await service.close()


async def test_publishing_needs_a_composed_recording_of_an_ended_recorded_event(tmp_path: Path) -> None:
    service = TownHallService(MemoryTownHallStore(None), MemoryStore(), tmp_path)
    try:
        event_id = await ended_event(service)
        with pytest.raises(NoRecording, match="not ready"):
            await service.publish(MONA, event_id, True)
        unrecorded = await ended_event(service, recorded=False, event_id="ev2")
        with pytest.raises(NoRecording):
            await service.publish(MONA, unrecorded, True)
    finally:
        await service.close()


@pytest.mark.parametrize("starts_at", [
    "9999-12-31T23:59:00-12:00",  # found by probing dates: a year 10000 in UTC overflows when shown
    1e300, float("nan"), float("inf"), -1, "1999-12-31T23:00:00+00:00", "2026-03-01T10:00:00",  # no offset
])
def test_event_times_out_of_range_are_invalid_input(starts_at: object) -> None:
    from server.queue.errors import InvalidInput
    from server.townhalls import _time

    with pytest.raises(InvalidInput):
        _time(starts_at, "starts_at")
    assert _time("2026-03-01T10:00:00+01:00", "starts_at") == 1772355600.0
