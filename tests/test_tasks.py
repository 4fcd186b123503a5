"""Background loops stop when told, even when a library turns the cancellation into another error (redis-py
can raise TimeoutError for a cancellation that lands inside its own timeout), and a stop never waits
forever for a task that does not end (a teardown hang seen in CI)."""

from __future__ import annotations

import asyncio

import pytest

from server.tasks import stop_all, stopping


async def _swallowing_store_call() -> None:
    """Like a redis-py command cancelled inside its timeout: the cancellation comes out as TimeoutError."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise TimeoutError("Timeout reading from the store") from None


async def test_a_loop_that_survives_store_errors_still_stops() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await _swallowing_store_call()
            except Exception:  # noqa: BLE001 - what the server's loops do to survive a store hiccup
                if stopping():
                    raise asyncio.CancelledError from None

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await stop_all([task], seconds=5)
    assert task.cancelled() and rounds == 1


async def test_stop_all_does_not_wait_forever(caplog: pytest.LogCaptureFixture) -> None:
    stubborn_now = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn_now:
                    raise
                # a loop that ignores being told to stop (until the test lets it go)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await stop_all([task], seconds=0.2)
    assert not task.done() and "stubborn did not stop" in caplog.text
    stubborn_now = False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
