"""Metrics bench: what scraping /metrics every second costs a server with many waiting citizens.

    .venv/bin/python bench/metrics_load.py                     # 10,000 citizens, 20 departments, memory store
    .venv/bin/python bench/metrics_load.py --redis redis://127.0.0.1:6379/0
    .venv/bin/python bench/metrics_load.py --citizens 2000 --phase 10 --rounds 2   # quicker

Phases: start ``sprechstunde serve`` with a generated configuration (``metrics_token`` set; one clerk
account per department created first with ``sprechstunde staff add``); the citizen processes
(bench/_citizens.py) join and connect every citizen's page; the clerks log in and connect their
dashboards (so presence has something to count); then, ``--rounds`` times, ``--phase`` seconds without
scraping and ``--phase`` seconds scraping /metrics once a second (as Prometheus would, with the bearer
token), measuring the server process's CPU in each. Interleaving the phases keeps slow drifts (the pages'
pings, other load on the host) out of the difference. Finally a burst of back-to-back scrapes gives the
CPU of one scrape with less noise (most of them answered from the one-second cache of the store's
values, so the burst shows the exposition's cost; the 1/s phases include a store read per scrape).
Prints a table next to the goal and a host reference. Stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import (  # noqa: E402
    ServerProcess,
    add_clerks,
    delete_redis_prefix,
    department_ids,
    free_port,
    write_config,
)
from queue_load import (  # noqa: E402
    CitizenProcesses,
    ClerkClient,
    Row,
    host_reference_ms,
    ms,
    pct,
    raise_open_files_limit,
)

GOAL_CPU_PERCENT = 1.0
"""Scraping once a second may add at most this share of one core to the server process."""
TOKEN = "bench-metrics-" + secrets.token_hex(16)


def metrics_config(config: Path, grace_seconds: float) -> None:
    """The bench configuration plus a metrics token, and a grace period longer than the bench (the pages
    stay connected; this only keeps a page that drops out from expiring mid-run)."""
    text = config.read_text("utf-8")
    text = text.replace("grace_seconds = 300", f"grace_seconds = {grace_seconds:g}", 1)
    text = text.replace("[server]\n", f'[server]\nmetrics_token = "{TOKEN}"\n', 1)
    config.write_text(text, "utf-8")


def print_table(title: str, rows: list[Row], header: str) -> None:
    heads = ("metric", header, "measured")
    widths = [max(len(h), *(len(getattr(r, f)) for r in rows)) for h, f in zip(heads, ("metric", "goal", "measured"),
                                                                              strict=True)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(v.ljust(w) for v, w in zip((r.metric, r.goal, r.measured), widths, strict=True)) + " |")


class Scraper:
    def __init__(self, url: str) -> None:
        self.url = f"{url}/metrics"
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                          timeout=aiohttp.ClientTimeout(total=10))
        self.latencies: list[float] = []
        self.size = 0
        self.series = 0
        self.failures = 0

    async def scrape(self) -> None:
        t0 = time.perf_counter()
        try:
            async with self.http.get(self.url) as resp:
                body = await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if not ok:
            self.failures += 1
            return
        self.latencies.append(time.perf_counter() - t0)
        self.size = len(body)
        self.series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

    async def every_second(self, seconds: float) -> int:
        """Scrape once a second for ``seconds``; returns the number of scrapes."""
        start = time.monotonic()
        count = 0
        while (due := start + count * 1.0) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.scrape()
            count += 1
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        return count

    async def close(self) -> None:
        await self.http.close()


async def server_cpu_over(server: ServerProcess, seconds: float) -> float:
    """Server CPU (core-seconds per second) over ``seconds`` of waiting."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)


async def bench(args: argparse.Namespace, server: ServerProcess, clerk_accounts: list, citizens: CitizenProcesses,
                departments: list[str]) -> None:
    say = print if not args.quiet else (lambda *a, **k: None)
    host_ms = host_reference_ms()
    clerks = [ClerkClient(a, server.url, "socket") for a in clerk_accounts]
    scraper = Scraper(server.url)
    try:
        say(f"starting {args.processes} citizen processes; {args.citizens} citizens join and connect ...", flush=True)
        citizens.start(args.processes, server.url, departments, args.join_concurrency, args.connect_concurrency,
                       False, "lean")
        shares: list[list[str]] = [[] for _ in range(args.processes)]
        for i in range(args.citizens):
            shares[i % args.processes].append(departments[i % len(departments)])
        populated = await citizens.ask("populate", shares)
        connected = sum(p["connected"] for p in populated)
        say(f"  {sum(p['joined'] for p in populated)} joined, {connected} pages connected", flush=True)
        say(f"logging in {len(clerks)} clerks ...", flush=True)
        for c in clerks:
            await c.login()
        await asyncio.sleep(3.0)  # the last position broadcasts of the joins go out

        await scraper.scrape()  # one scrape before measuring: imports and first-use costs out of the way
        without: list[float] = []
        with_scraping: list[float] = []
        scrapes = 0
        for r in range(args.rounds):
            say(f"round {r + 1} of {args.rounds}: {args.phase:g} s without scraping, {args.phase:g} s scraping "
                f"once a second ...", flush=True)
            without.append(await server_cpu_over(server, args.phase))
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            scrapes += await scraper.every_second(args.phase)
            with_scraping.append((server.cpu_seconds() - cpu0) / (time.monotonic() - t0))
        phase_latencies = list(scraper.latencies)

        say(f"burst: {args.burst} scrapes back to back ...", flush=True)
        cpu0 = server.cpu_seconds()
        for _ in range(args.burst):
            await scraper.scrape()
        burst_cpu = (server.cpu_seconds() - cpu0) / max(1, args.burst)

        base, loaded = statistics.mean(without), statistics.mean(with_scraping)
        added = (loaded - base) * 100
        per_scrape = (loaded - base) * args.phase * args.rounds / max(1, scrapes)
        rows = [
            Row("server CPU added by scraping once a second", f"< {GOAL_CPU_PERCENT:g} % of a core",
                f"{added:+.2f} % ({base * 100:.2f} % without -> {loaded * 100:.2f} % with; "
                f"rounds without: {', '.join(f'{x * 100:.2f}' for x in without)}; "
                f"with: {', '.join(f'{x * 100:.2f}' for x in with_scraping)})"),
            Row("  server CPU per scrape, from the 1/s phases", "-", f"{ms(per_scrape)} ({scrapes} scrapes)"),
            Row("  server CPU per scrape, back-to-back burst (cached store values)", "-",
                f"{ms(burst_cpu)} ({args.burst} scrapes)"),
            Row("scrape latency p50 / p99 (1/s phases)", "-",
                f"{ms(pct(phase_latencies, 50))} / {ms(pct(phase_latencies, 99))}"),
            Row("exposition size / samples", "-", f"{scraper.size / 1024:.1f} KiB / {scraper.series}"),
            Row("failed scrapes", "0", f"{scraper.failures}"),
        ]
        print(f"\nconfig: {args.citizens} citizens ({connected} pages connected), {len(departments)} departments, "
              f"{len(clerks)} clerks, {'redis' if args.redis else 'memory'} store, {args.rounds} rounds of "
              f"{args.phase:g} s; host reference workload {host_ms:.0f} ms ({os.cpu_count()} cores)")
        print_table("results", rows, header=f"goal ({args.citizens:,} waiting)")
    finally:
        await scraper.close()
        for c in clerks:
            await c.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--citizens", type=int, default=10_000, help="waiting citizens (each with a connected page)")
    p.add_argument("--departments", type=int, default=20)
    p.add_argument("--phase", type=float, default=20.0, help="seconds of each phase (without / with scraping)")
    p.add_argument("--rounds", type=int, default=3, help="pairs of phases")
    p.add_argument("--burst", type=int, default=300, help="back-to-back scrapes at the end")
    p.add_argument("--processes", type=int, default=2, help="citizen client processes")
    p.add_argument("--redis", metavar="URL", help="run the server on the Redis store (a loopback URL)")
    p.add_argument("--join-concurrency", type=int, default=16, help="parallel joins per process")
    p.add_argument("--connect-concurrency", type=int, default=64, help="parallel first connects per process")
    p.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the run directory (config, server log)")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    args = p.parse_args(argv)
    if args.redis and not args.redis.startswith(("redis://127.", "redis://localhost", "redis://[::1]")):
        p.error("--redis must be a loopback URL")
    if min(args.citizens, args.departments, args.processes, args.rounds, args.burst) < 1 or args.phase < 2:
        p.error("counts must be positive and --phase at least 2 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit(args.citizens + 1000)  # inherited by the server: one socket per citizen
    run_dir = Path(tempfile.mkdtemp(prefix="sps-bench-metrics-"))
    prefix = f"spsbench{secrets.token_hex(4)}:"
    departments = department_ids(args.departments)
    config = write_config(run_dir, departments, args.redis, prefix)
    metrics_config(config, grace_seconds=max(3600.0, args.timeout))
    server = ServerProcess(config, free_port(), run_dir / "server.log", "none")
    citizens = CitizenProcesses()
    citizens.reply_timeout = args.timeout  # joining 10,000 on a loaded host can take longer than queue_load's bound
    started = time.monotonic()
    code = 0
    try:
        if not args.quiet:
            print(f"creating {len(departments)} clerk accounts ...", flush=True)
        accounts = add_clerks(config, departments, 1)
        server.start()
        asyncio.run(asyncio.wait_for(bench(args, server, accounts, citizens, departments), args.timeout))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        code = 130
    except Exception as e:  # noqa: BLE001 - report, then clean up below
        print(f"\nbench failed: {type(e).__name__}: {e}", file=sys.stderr)
        if server.proc is not None:
            print(f"server log tail:\n{server.tail()}", file=sys.stderr)
        code = 1
    finally:
        citizens.stop()
        server.stop()
        if args.redis:
            with contextlib.suppress(Exception):
                delete_redis_prefix(args.redis, prefix)
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if not args.quiet:
        print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
