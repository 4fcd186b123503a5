"""The recording service across a restart: what was live when the process stopped is ended as failed and
its composition runs at the next start; the retention sweep deletes what has no record. Real files, the
embedded store's real JSON file, the real composer command."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from server.recording.model import Composition, RecordingState
from server.recordings import RecordingService
from server.store.recordings import MemoryRecordingStore

from .app_fixtures import make_settings
from .recording_store_contract import make_recording

REC_ID = "A" * 22


async def settled(service: RecordingService, rec_id: str) -> None:
    """Wait until the composition job has left ``pending`` (it runs in a child process)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (rec := await service.store.get(rec_id)) is not None and rec.composition is Composition.PENDING:
        assert loop.time() < deadline, "composition never ran"
        await asyncio.sleep(0.05)  # polling the store; the job sends no event


async def test_a_recording_live_at_a_crash_is_ended_and_composed_at_the_next_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store_file = settings.data_dir / "recordings.json"
    first = MemoryRecordingStore(store_file)
    live = make_recording(REC_ID, "t1", "buergerbuero")  # recording when the process died
    assert live.state is RecordingState.RECORDING
    assert await first.create(live)
    directory = settings.data_dir / "recordings" / REC_ID
    directory.mkdir(parents=True)
    (directory / "tracks.json").write_text(json.dumps({"version": 1, "duration": 0.0, "tracks": []}))

    service = RecordingService(settings, MemoryRecordingStore(store_file))  # the restarted process
    try:
        await service.resume_compositions()
        rec = await service.store.get(REC_ID)
        assert rec is not None and rec.state is RecordingState.STOPPED and rec.stop_reason == "failed"
        await settled(service, REC_ID)
        rec = await service.store.get(REC_ID)
        assert rec is not None and rec.composition is Composition.NONE  # no frame was written: nothing
        assert await service.store.live_for_ticket("t1") is None  # the ticket may record again
    finally:
        await service.close()


async def test_a_failed_composition_is_recorded_and_keeps_the_tracks(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    service = RecordingService(settings, MemoryRecordingStore(None))
    rec = make_recording(REC_ID, "t1", "buergerbuero")
    rec = rec.replace(state=RecordingState.STOPPED, stopped_at=rec.created_at + 10, stop_reason="stopped",
                      segments=((rec.created_at, rec.created_at + 10),))
    assert await service.store.create(rec)
    directory = settings.data_dir / "recordings" / REC_ID
    (directory / "tracks").mkdir(parents=True)
    (directory / "tracks" / "0-video.webm").write_bytes(b"not a webm file")
    (directory / "tracks.json").write_text(json.dumps({"version": 1, "duration": 1.0, "tracks": [
        {"file": "tracks/0-video.webm", "participant": "citizen:t1", "kind": "video", "start": 0.0, "end": 1.0,
         "frames": 30, "width": 320, "height": 240}]}))
    try:
        with caplog.at_level(logging.ERROR, logger="sprechstunde.recording"):
            await service.resume_compositions()
            await settled(service, REC_ID)
        stored = await service.store.get(REC_ID)
        assert stored is not None and stored.composition is Composition.FAILED
        assert (directory / "tracks" / "0-video.webm").exists()  # kept until a composition succeeds
        assert "composition failed" in caplog.text
    finally:
        await service.close()


async def test_the_sweep_deletes_files_that_have_no_record(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    service = RecordingService(settings, MemoryRecordingStore(None))
    orphan = settings.data_dir / "recordings" / ("B" * 22)
    (orphan / "tracks").mkdir(parents=True)
    (orphan / "tracks" / "0-audio.webm").write_bytes(b"x")
    try:
        assert await service.sweep() == 1
        assert not orphan.exists()
        assert await service.sweep() == 0
    finally:
        await service.close()
