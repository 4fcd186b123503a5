"""Statistics bench: one year of a busy town hall (about 2 million event-log entries), then the statistics
queries, on both event log stores.

    .venv/bin/python bench/stats_load.py                         # 2,000,000 entries, 8 departments, both stores
    .venv/bin/python bench/stats_load.py --events 200000 --stores sqlite   # a quick look

Seeding uses the stores' own ``append`` with large batches (a week at a time): counters are folded in
memory per batch, so a year loads in a minute or two, through the same code as the live recorder. Then each
query runs as /api/admin/stats runs it (``store.sums`` + ``store.duty`` + ``server.stats.report.report``):
day and week granularity over the whole year, for one department and for all; hourly for the last month.
Each is repeated (``--repeat``), the table gives the median and the slowest run (wall clock; the goal: a
median under 1 s) and the median CPU time (this process, plus the Redis server's for Redis: on a shared
machine the steadier figure).
Redis gets a private key prefix, deleted afterwards; SQLite a temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from server.stats.log import LogEntry, pseudonym  # noqa: E402
from server.stats.report import parse_query, report  # noqa: E402
from server.store.eventlog import EventLogStore, RedisEventLog, SqliteEventLog  # noqa: E402

GOAL_S = 1.0
KEY = b"bench pseudonym key"
TZ = ZoneInfo("Europe/Berlin")
LANGUAGES = ["de"] * 14 + ["en", "en", "tr", "ar", "uk", "ru", "pl", "fa"]


def departments(n: int) -> list[str]:
    return [f"dept{i:02d}" for i in range(1, n + 1)]


def year_of_entries(args: argparse.Namespace, last: date):
    """Yield a week of entries at a time, for ``args.days`` days ending ``last``: tickets per working day
    sized so that the year holds about ``args.events`` entries (Saturdays a third, Sundays closed)."""
    rng = random.Random(args.seed)
    depts = departments(args.departments)
    first = last - timedelta(days=args.days - 1)
    working = sum(1 for i in range(args.days) if (first + timedelta(days=i)).weekday() < 5)
    saturdays = sum(1 for i in range(args.days) if (first + timedelta(days=i)).weekday() == 5)
    per_ticket = 4.13  # measured mean of the mix below, clerks' on-duty marks included
    tickets_per_day = args.events / per_ticket / (working + saturdays / 3) / len(depts)
    batch: list[LogEntry] = []
    serial = 0
    for i in range(args.days):
        day = first + timedelta(days=i)
        weekday = day.weekday()
        if weekday == 6:
            continue
        opening = datetime(day.year, day.month, day.day, 8, tzinfo=TZ).timestamp()
        hours = 5 if weekday == 5 else 9
        for dept in depts:
            count = int(rng.gauss(tickets_per_day * (1 / 3 if weekday == 5 else 1), tickets_per_day * 0.1))
            clerks = max(1, round(count / 40))
            for c in range(clerks):  # on duty: one mark per clerk and hour (what the recorder writes)
                subject = pseudonym("clerk", f"{dept}-{c}", KEY)
                for h in range(hours):
                    batch.append(LogEntry(opening + h * 3600 + 60, "on_duty", dept, subject))
            for _ in range(max(0, count)):
                serial += 1
                t = pseudonym("ticket", str(serial), KEY)
                lang = rng.choice(LANGUAGES)
                interpreter = rng.random() < 0.02
                at = opening + rng.uniform(0, hours * 3600 - 1800)
                batch.append(LogEntry(at, "joined", dept, t, language=lang, interpreter=interpreter))
                r = rng.random()
                if r < 0.06:
                    batch.append(LogEntry(at + rng.uniform(60, 1800), "left", dept, t, state="waiting", language=lang))
                    continue
                if r < 0.09:
                    batch.append(LogEntry(at + rng.uniform(600, 2400), "expired", dept, t, state="waiting",
                                          language=lang))
                    continue
                wait = rng.expovariate(1 / 900)
                called = at + wait
                batch.append(LogEntry(called, "called", dept, t, state="waiting", wait=wait, language=lang))
                if r < 0.13:
                    batch.append(LogEntry(called + 120, "no_show", dept, t, state="called", language=lang))
                    continue
                batch.append(LogEntry(called + 20, "started", dept, t, state="called", language=lang))
                length = rng.lognormvariate(math.log(600), 0.5)
                end = called + 20 + length
                if r < 0.18:
                    others = [x for x in depts if x != dept] or [dept]
                    target = rng.choice(others)
                    batch.append(LogEntry(end, "transferred", target, t, source=dept, state="in_consultation",
                                          duration=length, language=lang))
                    wait2 = rng.expovariate(1 / 600)
                    batch.append(LogEntry(end + wait2, "called", target, t, state="waiting", wait=wait2, language=lang))
                    batch.append(LogEntry(end + wait2 + 20, "started", target, t, state="called", language=lang))
                    length2 = rng.lognormvariate(math.log(480), 0.5)
                    batch.append(LogEntry(end + wait2 + 20 + length2, "finished", target, t,
                                          state="in_consultation", duration=length2, language=lang))
                    continue
                batch.append(LogEntry(end, "finished", dept, t, state="in_consultation", duration=length,
                                      language=lang))
        if weekday == 5 or i == args.days - 1:
            batch.sort(key=lambda e: e.at)
            yield batch
            batch = []


async def seed(store: EventLogStore, args: argparse.Namespace, last: date) -> tuple[int, float]:
    total = 0
    t0 = time.perf_counter()
    for batch in year_of_entries(args, last):
        await store.append(batch)
        total += len(batch)
        if args.verbose:
            print(f"  {total:,} entries, {time.perf_counter() - t0:.0f} s", flush=True)
    return total, time.perf_counter() - t0


QUERIES = [
    ("day, all departments, 1 year", {"granularity": "day"}, "all", 365),
    ("day, one department, 1 year", {"granularity": "day"}, "one", 365),
    ("week, all departments, 1 year", {"granularity": "week"}, "all", 365),
    ("week, one department, 1 year", {"granularity": "week"}, "one", 365),
    ("hour, all departments, 31 days", {"granularity": "hour"}, "all", 31),
    ("day, all 8 merged (a lead of every one), 1 year", {"granularity": "day"}, "merged", 365),
]
"""(label, parameters, who, days): ``all`` as an admin asks (the ``*`` total kept at write time), ``one`` the
first department, ``merged``: every department summed at query time, as for a lead who leads them all (the
worst case for a lead; shown for information, not held to the goal)."""


async def run_query(store: EventLogStore, params: dict[str, str], depts: list[str], now: float,
                    everything: bool) -> dict:
    query = parse_query(params, now=now, tz=TZ, allowed=depts, everything=everything)
    groups = query.day_groups()
    sums = await store.sums(query.sources, groups, query.hourly)
    duty = await store.duty(query.sources, groups, query.hourly)
    return report(query, sums, duty)


async def time_queries(store: EventLogStore, args: argparse.Namespace,
                       last: date) -> list[tuple[str, float, float, float, int, bool]]:
    depts = departments(args.departments)
    now = datetime(last.year, last.month, last.day, 18, tzinfo=TZ).timestamp()
    rows = []
    for label, base, who, days in QUERIES:
        params = dict(base, **{"from": (last - timedelta(days=days - 1)).isoformat(), "to": last.isoformat()})
        if who == "one":
            params["department"] = depts[0]
        times, cpus = [], []
        result: dict = {}
        for _ in range(args.repeat):
            server0 = redis_cpu(args.redis_url) if isinstance(store, RedisEventLog) else 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            result = await run_query(store, params, depts, now, everything=who != "merged")
            times.append(time.perf_counter() - t0)
            server = redis_cpu(args.redis_url) - server0 if isinstance(store, RedisEventLog) else 0.0
            cpus.append(time.process_time() - c0 + server)
        rows.append((label, statistics.median(times), max(times), statistics.median(cpus),
                     result["totals"]["arrivals"], who != "merged"))
    return rows


def sqlite_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def redis_cpu(url: str) -> float:
    """CPU seconds the Redis server has used (all its clients: on a shared Redis an upper bound)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def redis_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


async def bench_store(kind: str, args: argparse.Namespace, last: date) -> dict:
    print(f"{kind}: seeding {args.events:,} entries over {args.days} days ...", flush=True)
    if kind == "sqlite":
        directory = tempfile.mkdtemp(prefix="stats-bench-")
        path = Path(directory) / "stats.sqlite3"
        store: EventLogStore = SqliteEventLog(path, TZ)
        before = 0
    else:
        prefix = f"bench-stats-{uuid.uuid4().hex[:8]}:"
        store = RedisEventLog(args.redis_url, prefix, TZ)
        before = redis_memory(args.redis_url)
    try:
        entries, seconds = await seed(store, args, last)
        size = sqlite_size(path) if kind == "sqlite" else redis_memory(args.redis_url) - before
        print(f"{kind}: {entries:,} entries in {seconds:.0f} s; timing queries ...", flush=True)
        rows = await time_queries(store, args, last)
    finally:
        await store.close()
        if kind == "sqlite":
            shutil.rmtree(directory, ignore_errors=True)
        elif not args.keep:
            delete_prefix(args.redis_url, prefix)
    return {"store": kind, "entries": entries, "seed_s": seconds, "size_mb": size / 1e6, "rows": rows}


def print_report(results: list[dict], host_ms: float) -> None:
    print(f"\nhost reference workload {host_ms:.0f} ms (bench/queue_load.py)")
    print("\n| store | entries | seeding | storage | query | median | slowest | CPU (median) | goal "
          "| arrivals in the answer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for label, median, worst, cpu, arrivals, held in r["rows"]:
            verdict = ("< 1 s ok" if median < GOAL_S else "< 1 s MISSED") if held else "(information)"
            print(f"| {r['store']} | {r['entries']:,} | {r['seed_s']:.0f} s | {r['size_mb']:.0f} MB | {label} | "
                  f"{median * 1000:.0f} ms | {worst * 1000:.0f} ms | {cpu * 1000:.0f} ms | {verdict} | {arrivals:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--departments", type=int, default=8)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the Redis keys (printed prefix)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    from bench.queue_load import host_reference_ms

    host_ms = host_reference_ms()
    print(f"host reference workload (bench/queue_load.py): {host_ms:.0f} ms", flush=True)
    last = datetime.now(TZ).date()
    results = [asyncio.run(bench_store(kind, args, last)) for kind in args.stores.split(",")]
    print_report(results, host_ms)
    if any(held and median >= GOAL_S for r in results for _, median, _, _, _, held in r["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
