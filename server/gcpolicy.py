"""The cyclic garbage collector in a process that holds thousands of sockets.

CPython's collector (3.11) stops the event loop while it scans. Measured in bench/queue_load.py with
10,000 waiting pages, its own schedule gave pauses of 0.1-2.6 s, the tail of "call next" and of "the
called citizen is told":

- a full collection scans every object of every page (about 1.4 million objects, 1-1.5 s), and CPython
  starts one whenever a quarter more objects have survived since the last: a reconnect storm did that
  several times;
- CPython counts the deaths of old objects against young allocations, so under steady churn the young
  generation grew to 130,000 objects before it was collected (240 ms).

So, in ``sprechstunde serve``, automatic collection is off and:

- objects alive after start-up are frozen out of collection;
- every ``YOUNG_PERIOD`` a young collection scans what was allocated since the last, and what survives
  is frozen: each object is scanned once, in pauses of about a millisecond;
- when more than ``YOUNG_SCAN_LIMIT`` objects were allocated since the last (a reconnect storm: thousands
  of new sockets a second), they are frozen without the scan: scanning them found nothing to free (the
  objects of a page's life form no cycles, below) and cost 7-8 % of a 10,000-page storm's CPU; a cycle among
  them waits for the next full collection. So are they when the count cannot tell (CPython's count is net
  of deallocations: it said 0 with 290,000 young objects) and when the collection is late (a busy loop:
  ``young_collection``), and for ``YOUNG_BURST`` after any of these (a storm lasts seconds: listing its
  young objects cost as much as scanning them);
- every ``full_gc_interval`` seconds (configurable) one full collection over everything, frozen objects
  too, logged with what it freed and how long it took.

This is safe because the objects of a page's life (connect, messages, close) form no reference cycles
(``tests/test_gc.py`` checks it with real sockets): they are freed by reference counting the moment the
page closes. The bench's full collections after calls and after reconnect storms free 0 objects
(``bench/queue_load.py --storms 3 --full-gc-interval 5``; a storm left 350,000 objects in cycles until
``signaling/engineio_ws.py`` dropped aiohttp's kept close error); what a rarer path might leave waits at
most ``full_gc_interval``.
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
"""Seconds between young collections. What survives one is frozen (CPython's permanent generation), so
each object is scanned once: a reconnect storm's new sockets cost one scan, not three."""


YOUNG_SCAN_LIMIT = 20_000
"""Young objects above which a young collection freezes them without scanning (about 1 ms of scanning on
a 2-core host)."""

YOUNG_LATE = 0.05
"""A young collection that runs this many seconds after it was due scans nothing (``young_collection``)."""

YOUNG_BURST = 1.0
"""Seconds after a young collection found a burst (late, or too many young objects) in which the young
collections freeze without listing or scanning: in a 10,000-page reconnect storm the young generation held
100,000 objects or more at every collection, listing them (to learn their number) cost as much as scanning
them, about 2.5 ms, and the two together were 5 % of the storm's CPU."""

_burst_until = float("-inf")

skipped_scans = 0
"""Young collections that froze without scanning (for tests and the full collection's log line)."""


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
        due = loop.time() + YOUNG_PERIOD
        await asyncio.sleep(YOUNG_PERIOD)
        late = loop.time() - due > YOUNG_LATE
        if loop.time() >= next_full:
            freed, seconds = full_collection()
            next_full = loop.time() + full_interval
            log.info("full garbage collection: %d objects freed in %.0f ms, %d objects tracked, %d young "
                     "collections frozen unscanned since start", freed, seconds * 1000,
                     gc.get_freeze_count() + len(gc.get_objects()), skipped_scans)
        else:
            young_collection(late, loop.time())


def young_collection(late: bool = False, now: float | None = None) -> None:
    """Scan what was allocated since the last collection when it is known to be few objects; freeze what
    is left either way.

    CPython's young count is allocations *minus deallocations* (of any generation, frozen objects too) and
    stops at 0: with pages closing while others connect, it said 0 while the young generation held
    100,000-290,000 objects, and scanning them stopped the loop for up to 100 ms (the tail of "call next"
    and of the storm at 10,000 pages). So the scan is skipped when the count is 0 (nothing allocated, or
    unknown), when this collection is ``late`` (the loop was busy for more than ``YOUNG_LATE`` past its due
    time: a burst, in which the young generation grows fastest), and when the count or the young
    generation's real size is above ``YOUNG_SCAN_LIMIT`` (a small positive count can hide as many). Once a
    burst is seen, the collections of the next ``YOUNG_BURST`` seconds freeze without looking (``now``: the
    loop's clock)."""
    global skipped_scans, _burst_until
    now = time.monotonic() if now is None else now
    count = gc.get_count()[0]
    if now < _burst_until:  # in a burst: neither listing nor scanning (each costs milliseconds then)
        if count:
            skipped_scans += 1
    elif late or not 0 < count <= YOUNG_SCAN_LIMIT:
        if count or late:  # (0 and on time: nothing was allocated, or nothing is known; not counted)
            skipped_scans += 1
            _burst_until = now + YOUNG_BURST
    elif len(gc.get_objects(0)) > YOUNG_SCAN_LIMIT:  # a small count can hide many: its real size decides
        skipped_scans += 1
        _burst_until = now + YOUNG_BURST
    else:
        gc.collect(0)
    gc.freeze()


def full_collection() -> tuple[int, float]:
    """One full collection over every object, frozen ones too: objects freed and seconds it took."""
    started = time.perf_counter()
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
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
