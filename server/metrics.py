"""Prometheus metrics of one server process, in a registry of its own (several apps in one test process
never share one).

What is counted where:

- calls and the wait-time histogram: from the waiting room's events (``WaitingRoom.on_events``), when a
  citizen is called; only on the node that made the call, so the sum over nodes counts each call once;
- waiting citizens and clerks by presence per department: read from the store, at most once per
  ``STORE_CACHE_SECONDS`` whatever the number of scrapers (one batched count of every queue, one
  batched read of every department's presences); a store that does not answer leaves them out and sets
  ``sprechstunde_store_up`` to 0 instead of failing the scrape;
- sockets, media rooms and forwarded packets: read from this process's counters at scrape time (the
  packet path does no work for metrics);
- ``store_unavailable`` answers: ``server.errors.store_unavailable_count``;
- event-loop lag: a task that sleeps ``LAG_INTERVAL`` and measures how late it wakes.

No names, tokens or ticket ids: labels are department ids, presence states and socket kinds only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .errors import STORE_ERRORS, store_unavailable, store_unavailable_count
from .queue.model import Presence, TicketEvent
from .waitingroom import WaitingRoom

log = logging.getLogger("sprechstunde.metrics")

STORE_CACHE_SECONDS = 1.0
"""Store-derived values (waiting, presence) are read at most this often, however many scrapers ask."""
LAG_INTERVAL = 0.5
"""Seconds between two event-loop lag probes."""
WAIT_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 5400.0, 7200.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PRESENCES = (Presence.AVAILABLE, Presence.BUSY, Presence.AWAY)


@dataclass(frozen=True)
class StoreSnapshot:
    at: float | None
    up: bool
    waiting: dict[str, int]
    clerks: dict[str, dict[str, int]]


@dataclass(frozen=True)
class Sources:
    """What the process-local gauges read at scrape time (each returns at once, no I/O)."""

    sockets: Callable[[], dict[str, int]]
    """Connected sockets of this process by kind: ``page``, ``dashboard``, ``other``."""
    media: Callable[[], tuple[int, int, int]]
    """Media rooms, forwarded packets, dropped packets of this process's SFU (zeros before it starts)."""


class Metrics:
    def __init__(self, room: WaitingRoom, sources: Sources, clock: Callable[[], float] = time.monotonic) -> None:
        self.room = room
        self.sources = sources
        self.clock = clock
        self.registry = CollectorRegistry()
        self.calls = Counter("sprechstunde_calls", "Citizens called by a clerk, by department",
                             ["department"], registry=self.registry)
        self.wait = Histogram("sprechstunde_wait_seconds",
                              "Seconds a citizen waited in the department's queue until called",
                              ["department"], buckets=WAIT_BUCKETS, registry=self.registry)
        self.loop_lag = Histogram("sprechstunde_event_loop_lag_seconds",
                                  "How late a timer on the event loop fired (scheduling delay)",
                                  buckets=LAG_BUCKETS, registry=self.registry)
        self.loop_lag_last = Gauge("sprechstunde_event_loop_lag_last_seconds",
                                   "The latest event-loop lag probe", registry=self.registry)
        self.registry.register(_Collector(self))
        self._snapshot = StoreSnapshot(None, True, {}, {})
        self._lock = asyncio.Lock()
        room.on_events(self._on_events, frozenset({"called"}))

    # -- events --
    async def _on_events(self, events: list[TicketEvent]) -> None:
        for e in events:
            if e.kind == "called":
                t = e.ticket
                self.calls.labels(t.department).inc()
                if t.called_at is not None:
                    self.wait.labels(t.department).observe(max(0.0, t.called_at - t.enqueued_at))

    # -- the store, at most once per STORE_CACHE_SECONDS --
    async def store_snapshot(self) -> StoreSnapshot:
        async with self._lock:  # concurrent scrapes share one read
            if self._snapshot.at is None or self.clock() - self._snapshot.at >= STORE_CACHE_SECONDS:
                self._snapshot = await self._read_store()
        return self._snapshot

    async def _read_store(self) -> StoreSnapshot:
        store = self.room.store
        departments = list(self.room.departments)
        try:
            waiting, presences = await asyncio.gather(store.waiting_counts(departments),
                                                      store.presences_of(departments))
        except STORE_ERRORS as e:
            store_unavailable(e)  # logged once per outage, and counted
            return StoreSnapshot(self.clock(), False, {}, {})
        clerks = {}
        for d, by_user in presences.items():
            counts = {p.value: 0 for p in PRESENCES}
            for p in by_user.values():
                if p.value in counts:
                    counts[p.value] += 1
            clerks[d] = counts
        return StoreSnapshot(self.clock(), True, waiting, clerks)

    async def exposition(self) -> bytes:
        """The text exposition: refreshes the store's values if older than ``STORE_CACHE_SECONDS``."""
        await self.store_snapshot()
        return generate_latest(self.registry)

    # -- event-loop lag --
    async def probe_loop_lag(self, interval: float = LAG_INTERVAL) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - t0 - interval)
            self.loop_lag.observe(lag)
            self.loop_lag_last.set(lag)


class _Collector:
    """The values read at scrape time (a prometheus_client custom collector; ``collect`` is synchronous,
    so the store's values were read before, by ``Metrics.exposition``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families(StoreSnapshot(None, True, {}, {}), {}, (0, 0, 0)))

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        return list(self._families(m._snapshot, m.sources.sockets(), m.sources.media()))

    @staticmethod
    def _families(snapshot: StoreSnapshot, sockets: dict[str, int],
                  media: tuple[int, int, int]) -> Iterator[Metric]:
        up = GaugeMetricFamily("sprechstunde_store_up", "1 if the store answered the latest metrics read, else 0")
        up.add_metric([], 1.0 if snapshot.up else 0.0)
        yield up
        waiting = GaugeMetricFamily("sprechstunde_waiting_citizens", "Citizens waiting, by department",
                                    labels=["department"])
        for d, count in sorted(snapshot.waiting.items()):
            waiting.add_metric([d], float(count))
        yield waiting
        clerks = GaugeMetricFamily("sprechstunde_clerks", "Clerks not offline, by department and presence",
                                   labels=["department", "presence"])
        for d, counts in sorted(snapshot.clerks.items()):
            for presence, count in counts.items():
                clerks.add_metric([d, presence], float(count))
        yield clerks
        socks = GaugeMetricFamily("sprechstunde_sockets",
                                  "Connected socket.io clients of this process: waiting pages, staff "
                                  "dashboards, others (town-hall audience, staff media)", labels=["kind"])
        for kind in ("page", "dashboard", "other"):
            socks.add_metric([kind], float(sockets.get(kind, 0)))
        yield socks
        rooms, forwarded, dropped = media
        media_rooms = GaugeMetricFamily("sprechstunde_media_rooms", "Media rooms in this process's SFU")
        media_rooms.add_metric([], float(rooms))
        yield media_rooms
        packets = CounterMetricFamily("sprechstunde_media_forwarded_packets",
                                      "RTP packets the SFU forwarded since it started")
        packets.add_metric([], float(forwarded))
        yield packets
        drops = CounterMetricFamily("sprechstunde_media_dropped_packets",
                                    "RTP packets the SFU dropped since it started")
        drops.add_metric([], float(dropped))
        yield drops
        errors = CounterMetricFamily("sprechstunde_store_unavailable",
                                     "Requests and socket events answered store_unavailable (Redis refused or hung)")
        errors.add_metric([], float(store_unavailable_count()))
        yield errors


async def run_loop_lag(metrics: Metrics) -> AsyncIterator[None]:
    """An aiohttp cleanup context body: the lag probe runs while the app runs."""
    task = asyncio.create_task(metrics.probe_loop_lag(), name="metrics-loop-lag")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
