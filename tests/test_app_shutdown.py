"""The stop closes every part even when one of them fails to close (a store that does not answer must not
leave the others' connections open, nor fail the stop)."""

from __future__ import annotations

from pathlib import Path

from server.app import create_app
from server.store.memory import MemoryStore
from server.store.recordings import MemoryRecordingStore

from .app_fixtures import make_settings


class FailingRecordingStore(MemoryRecordingStore):
    async def close(self) -> None:
        raise TimeoutError("the store did not answer")


class WatchedStore(MemoryStore):
    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


async def test_a_part_failing_to_close_does_not_keep_the_others_open(aiohttp_client, tmp_path: Path, caplog):
    settings = make_settings(tmp_path)
    store = WatchedStore(staff_file=tmp_path / "staff.json")
    app = create_app(settings, store=store, announce=lambda _: None,
                     recording_store=FailingRecordingStore(tmp_path / "recordings.json"))
    client = await aiohttp_client(app)
    assert (await client.get("/healthz")).status == 200
    await client.close()  # runs the app's cleanup: must not raise
    assert store.closed
    assert "closing recording store at shutdown failed: TimeoutError" in caplog.text
