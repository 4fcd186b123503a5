"""The cyclic garbage collector in a process that holds thousands of sockets.

CPython's collector (3.11) stops the event loop while it scans. A young collection scans only new
objects, but a full one scans every object of every connected page: with 10,000 waiting pages that is
about two million objects and 1-3 s, and CPython starts one on its own whenever a quarter more objects
have survived since the last (a reconnect storm does that several times). Measured in
bench/queue_load.py, those pauses were the tail of "call next" and of "the called citizen is told".

So, in ``sprechstunde serve``:

- objects alive after start-up are frozen out of collection;
- young collections run every ``YOUNG`` allocations and a middle one every ``MIDDLE`` young ones, short
  pauses of a few milliseconds;
- CPython never starts a full collection itself; ``full_collections`` runs one every
  ``full_gc_interval`` seconds (configurable) and logs what it freed and how long it took.

This is safe because a page's life (connect, messages, close) leaves no reference cycles behind
(``tests/test_gc.py`` checks it with real sockets): its objects are freed by reference counting
the moment it closes, not by the collector. What the full collection still finds (rarer paths, such
as errors) waits at most ``full_gc_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger("sprechstunde.gc")

YOUNG_PERIOD = 0.05
"""Seconds between young collections (CPython's generations 0 and 1: what was allocated since the last
one and what survived the last one, so that each object is scanned at most twice before it is old)."""


def tune() -> None:
    """Freeze what start-up left and take automatic collection away from CPython (see the module)."""
    gc.collect()
    gc.freeze()
    gc.disable()


async def collections(full_interval: float) -> None:
    """Young collections every YOUNG_PERIOD, a full one every ``full_interval`` seconds (logged with what it
    freed and how long it took)."""
    loop = asyncio.get_running_loop()
    next_full = loop.time() + full_interval
    while True:
        await asyncio.sleep(YOUNG_PERIOD)
        if loop.time() >= next_full:
            freed, seconds = full_collection()
            next_full = loop.time() + full_interval
            log.info("full garbage collection: %d objects freed in %.0f ms, %d objects tracked", freed,
                     seconds * 1000, len(gc.get_objects()))
        else:
            gc.collect(1)


def full_collection() -> tuple[int, float]:
    """One full collection: objects freed and seconds it took."""
    started = time.perf_counter()
    freed = gc.collect()
    return freed, time.perf_counter() - started


def collections_ctx(interval: float) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context that runs ``collections`` while the app runs."""

    async def ctx(app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(collections(interval))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
