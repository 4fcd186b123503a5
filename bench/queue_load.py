"""Waiting-room load bench: many waiting citizens, clerks calling next, one server process.

    .venv/bin/python bench/queue_load.py                       # 2,000 citizens, 20 departments, 50 calls/s
    .venv/bin/python bench/queue_load.py --citizens 10000      # the goal's size
    .venv/bin/python bench/queue_load.py --profile py-spy      # also sample where the server spends time
    .venv/bin/python bench/queue_load.py --client socketio     # pages on python-socketio's AsyncClient
    .venv/bin/python bench/queue_load.py --redis redis://127.0.0.1:6379/0 --nodes 1 2 3   # several nodes

With ``--nodes N`` (N > 1, Redis only) N server processes share one Redis behind Debian's nginx with the
shipped site (deploy/nginx/sprechstunde.conf), set up as tests/test_nodes_nginx.py does; pages and clerks
connect through nginx over TLS, each page from its own loopback address (nginx routes by client address);
``--proxy-tls off`` has nginx listen for them without TLS (the generator's Python TLS otherwise takes most of
a core of a 2-core host in a storm; in a deployment the clients' side runs on their own devices).
``--nodes 1`` is the direct run unless ``--nginx`` is given. Several values run one after the other, each
with a fresh Redis prefix and its own table.

Phases: start ``sprechstunde serve`` with a generated configuration (clerk accounts created first with
``sprechstunde staff add``); log the clerks in and connect their sockets; let the citizen processes join
and connect every citizen; then clerks call next (and finish at once) at the target rate for
``--duration`` seconds while called citizens leave and new ones join; then a reconnect storm: every
waiting page drops its socket and reconnects with the same token at once. Prints a table of measured
figures next to the goals. Stops everything it started, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _citizens  # noqa: E402
from _server import (  # noqa: E402
    ClerkAccount,
    ServerGroup,
    ServerProcess,
    WorkerProcesses,
    add_clerks,
    delete_redis_prefix,
    department_ids,
    free_port,
    listen_overflows,
    summarize_py_spy,
    write_config,
)

GOALS = {
    "call_next_p99_ms": 20.0,
    "told_p99_ms": 50.0,
    "pages_up_to_date_s": 2.0,
    "memory_per_citizen_kb": 100.0,
    "storm_s": 10.0,
}
REPLY_TIMEOUT = 300.0
"""The longest a client process may take for one phase (populate, storm) before the bench gives up."""


# -- clerks (in this process: few sockets, so their own timing is not starved by the citizen load) --
@dataclass
class Call:
    department: str
    ticket: str
    seq: int
    sent: float
    """time.time() when the clerk sent call_next."""
    called_at: float
    """The server's stamp of the transition."""
    latency: float
    """Seconds from sending call_next to its ack (or the HTTP response)."""


@dataclass
class ClerkStats:
    calls: list[Call] = field(default_factory=list)
    finish_latencies: list[float] = field(default_factory=list)
    late_slots: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class ClerkClient:
    def __init__(self, account: ClerkAccount, url: str, via: str, source: str | None = None) -> None:
        self.account = account
        self.url = url
        self.via = via
        self.source = source
        """Behind the proxy: the clerk's own loopback address (nginx routes by client address)."""
        self.http: aiohttp.ClientSession | None = None
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.csrf = ""

    async def login(self) -> None:
        tls = self.url.startswith("https:")
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=not tls, local_addr=(self.source, 0) if self.source else None))
        if tls:  # the proxy's throwaway certificate; the socket from the same address as the HTTP requests
            self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, ssl_verify=False,
                                            http_session=self.http)
        async with self.http.post(f"{self.url}/api/session", json={
            "username": self.account.username, "password": self.account.password}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"login of {self.account.username} failed: {body}")
            self.csrf = body["csrf"]
            cookie = resp.cookies["sps_session"].value
        await self.sio.connect(self.url, headers={"Cookie": f"sps_session={cookie}"}, transports=["websocket"],
                               wait_timeout=30)

    async def _act(self, event: str, data: dict[str, Any], path: str) -> dict[str, Any]:
        if self.via == "socket":
            return dict(await self.sio.call(event, data, timeout=10))
        assert self.http is not None
        async with self.http.post(f"{self.url}{path}", headers={"X-CSRF-Token": self.csrf},
                                  timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = dict(await resp.json())
            return {"ok": True, **body} if resp.status == 200 else body

    async def call_next(self) -> dict[str, Any]:
        d = self.account.department
        return await self._act("call_next", {"department": d}, f"/api/staff/departments/{d}/call-next")

    async def finish(self, ticket_id: str) -> dict[str, Any]:
        return await self._act("finish", {"ticket": ticket_id}, f"/api/staff/tickets/{ticket_id}/finish")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        if self.http is not None:
            await self.http.close()


async def run_clerks(clerks: list[ClerkClient], rate: float, duration: float) -> ClerkStats:
    """Each clerk calls next, then finishes that ticket (so presence returns to available); the calls of
    all clerks are spread evenly so that together they make ``rate`` calls a second."""
    stats = ClerkStats()
    interval = len(clerks) / rate
    start = time.monotonic() + 0.1
    end = start + duration

    async def clerk_loop(k: int, clerk: ClerkClient) -> None:
        next_at = start + k / rate
        while next_at < end:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                stats.late_slots += 1
            next_at += interval
            sent, t0 = time.time(), time.perf_counter()
            try:
                ack = await clerk.call_next()
            except (TimeoutError, socketio.exceptions.SocketIOError, aiohttp.ClientError) as e:
                stats.outcomes[f"call_next {type(e).__name__}"] += 1
                continue
            latency = time.perf_counter() - t0
            if "error" in ack:
                stats.outcomes[f"call_next {ack['error'].get('code')}"] += 1
                continue
            t = ack["ticket"]
            stats.calls.append(Call(clerk.account.department, t["id"], t["seq"], sent, t["called_at"], latency))
            t0 = time.perf_counter()
            try:
                done = await clerk.finish(t["id"])
            except (TimeoutError, socketio.exceptions.SocketIOError, aiohttp.ClientError) as e:
                stats.outcomes[f"finish {type(e).__name__}"] += 1
                continue
            stats.finish_latencies.append(time.perf_counter() - t0)
            if "error" in done:
                stats.outcomes[f"finish {done['error'].get('code')}"] += 1

    await asyncio.gather(*(clerk_loop(k, c) for k, c in enumerate(clerks)))
    return stats


# -- citizen processes --
class CitizenProcesses(WorkerProcesses):
    """The citizen client processes (bench/_citizens.py)."""

    reply_timeout = REPLY_TIMEOUT

    def __init__(self) -> None:
        super().__init__("citizen")

    def start(self, count: int, url: str, departments: list[str], join_concurrency: int,
              connect_concurrency: int, replace: bool, client_kind: str, spread: bool = False) -> None:
        for k in range(count):
            self.spawn(1, _citizens.run, (url, departments, join_concurrency, connect_concurrency, replace,
                                          client_kind, k if spread else None))


# -- statistics --
def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def merge_messages(reports: list[dict[str, Any]]) -> dict[str, list[tuple[float, int | None, float, float, int]]]:
    """Per department, the ``queue`` updates in server order: (t, head, first receipt, last receipt,
    receivers), merged over all client processes (the same update reaches pages in each of them)."""
    merged: dict[tuple[str, float], list[Any]] = {}
    for r in reports:
        for d, t, head, receivers, first, last in r["messages"]:
            m = merged.setdefault((d, t), [head, first, last, 0])
            m[1], m[2], m[3] = min(m[1], first), max(m[2], last), m[3] + receivers
    per_department: dict[str, list[tuple[float, int | None, float, float, int]]] = defaultdict(list)
    for (d, t), (head, first, last, receivers) in sorted(merged.items()):
        per_department[d].append((t, head, first, last, receivers))
    return per_department


def pages_up_to_date(calls: list[Call], messages: dict[str, list[Any]]) -> tuple[list[float], int]:
    """For each call: seconds from the clerk sending it until the last page of that department received
    the first ``queue`` update without the called seq (call next always takes the earliest waiting
    seq, and nothing else leaves in this bench, so that is the first update whose head is past it)."""
    delays, unmatched = [], 0
    for call in calls:
        for t, head, _first, last, _n in messages.get(call.department, ()):
            if t >= call.called_at and (head is None or head > call.seq):
                delays.append(last - call.sent)
                break
        else:
            unmatched += 1
    return delays, unmatched


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class Row:
    metric: str
    goal: str
    measured: str


def print_table(title: str, rows: list[Row]) -> None:
    widths = [max(len(r.metric) for r in rows), max(len(r.goal) for r in rows), max(len(r.measured) for r in rows)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("metric", "goal (10,000 / 20 / 50 per s)", "measured"),
                                              strict=True)]
    print(f"\n{title}")
    print(f"| {'metric':<{widths[0]}} | {'goal (10,000 / 20 / 50 per s)':<{widths[1]}} | {'measured':<{widths[2]}} |")
    print(f"| {'-' * widths[0]} | {'-' * widths[1]} | {'-' * widths[2]} |")
    for r in rows:
        print(f"| {r.metric:<{widths[0]}} | {r.goal:<{widths[1]}} | {r.measured:<{widths[2]}} |")


# -- the host --
def host_reference_ms() -> float:
    """A fixed pure-Python workload (JSON, dicts, string formatting: what the server does most), best of
    three, in ms. It does not measure the server; it tells how fast this host runs Python, so that runs on
    different machines can be compared (the same code measured 0.47 and 0.87-1.39 ms of server CPU per
    reconnecting page on two hosts)."""
    import json

    doc = {"kind": "queue", "department": "dept01", "waiting": [[f"t{i:06d}", i, 1700000000.0 + i] for i in range(50)]}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(2000):
            text = json.dumps(doc)
            back = json.loads(text)
            _ = {f"k{j}": back["waiting"][j][1] for j in range(50)}
            _ = f"{i}:{text[:20]}"
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


# -- the reconnect storm --
@dataclass
class Storm:
    pages: int
    ready: int
    seconds: float
    """From the first reconnect to the last page back with its ticket and queue."""
    retries: int
    failures: int
    disconnect_cpu: float
    """Server CPU from the first disconnect until the reconnects start (the rest of the disconnects' cost
    falls into ``server_cpu``: the pages reconnect at once, while the server may still be closing)."""
    server_cpu: float
    clients_cpu: float
    server_cpu_rate: float
    overflows: int | None
    rss: int
    """Server RSS 2 s after the storm."""
    profile: Path | None


def spying_storm(args: argparse.Namespace, index: int) -> bool:
    return args.profile == "py-spy" and index == 0


async def reconnect_storm(server: ServerGroup, citizens: CitizenProcesses, args: argparse.Namespace,
                          profile: Path | None) -> Storm:
    """Every waiting page closes its socket; as soon as all have, all reconnect at once with their token."""
    if profile is not None and not server.start_py_spy(_STORM_PROFILE_S, profile):
        profile = None
    cpu0 = server.cpu_seconds()
    disconnected = await citizens.ask("storm_disconnect", [None] * args.processes)
    overflows0 = listen_overflows()
    storm_cpu0, clients_cpu0, t0 = server.cpu_seconds(), citizens.cpu_seconds(), time.time()
    storm = await citizens.ask("storm_reconnect", [None] * args.processes)
    server_cpu = server.cpu_seconds() - storm_cpu0
    clients_cpu = citizens.cpu_seconds() - clients_cpu0
    rate = server_cpu / max(1e-9, time.time() - t0)
    overflows1 = listen_overflows()
    if profile is not None:
        server.wait_py_spy(_STORM_PROFILE_S + 30)
    else:
        await asyncio.sleep(2.0)
    return Storm(
        pages=sum(d["pages"] for d in disconnected), ready=sum(s["ready"] for s in storm),
        seconds=max(s["last_ready"] for s in storm) - min(s["started"] for s in storm),
        retries=sum(s["retries"] for s in storm), failures=sum(s["failures"] for s in storm),
        disconnect_cpu=storm_cpu0 - cpu0, server_cpu=server_cpu, clients_cpu=clients_cpu, server_cpu_rate=rate,
        overflows=overflows1 - overflows0 if overflows0 is not None and overflows1 is not None else None,
        rss=server.rss(), profile=profile,
    )


_STORM_PROFILE_S = 15.0
"""How long py-spy samples the server from the first disconnect of a storm."""


def storm_rows(storms: list[Storm]) -> list[Row]:
    rows = []
    for k, st in enumerate(storms):
        label = f" {k + 1}" if len(storms) > 1 else ""
        rows += [
            Row(f"reconnect storm{label}: all pages back with ticket + queue", "< 10 s",
                f"{st.seconds:.2f} s for {st.ready} of {st.pages} pages ({st.retries} retries, {st.failures} failed)"),
            Row("  CPU the storm took: server / citizen processes", "-",
                f"{st.server_cpu:.1f} / {st.clients_cpu:.1f} core-s "
                f"({st.server_cpu / max(1, st.ready) * 1e3:.2f} ms of server CPU per page; "
                f"{st.disconnect_cpu:.1f} core-s before, while the pages closed)"),
            Row("  listen queue overflows during the storm (kernel)", "- (0 with somaxconn >= pages)",
                "n/a" if st.overflows is None else f"{st.overflows}"),
        ]
    return rows


# -- the run --
def unsettled_tickets(redis_url: str, prefix: str) -> tuple[int, int]:
    """Tickets of this run waiting or called with no grace period running (``disconnected_at`` null), and
    all tickets of the run: after a node with every page stopped, the former must be 0 (each waits for its
    page to come back within the grace period, or expires)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}t:*", count=1000))
        unsettled = 0
        for start in range(0, len(keys), 1000):
            for body in client.mget(keys[start:start + 1000]):
                if body is None:
                    continue
                t = json.loads(body)
                if t["state"] in ("waiting", "called") and t.get("disconnected_at") is None:
                    unsettled += 1
        return unsettled, len(keys)
    finally:
        client.close()


def stop_with_pages(server: ServerGroup, args: argparse.Namespace, pages: int) -> list[Row]:
    """SIGTERM the (first) node while its pages are connected: how long it takes to exit, what it says it told
    its sockets, and (one node on Redis) whether every ticket's grace period started."""
    node = server.nodes[0]
    assert node.proc is not None
    def logs() -> list[str]:
        return node.log_path.read_text("utf-8", "replace").splitlines()

    before = len(logs())
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    try:
        node.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    exited = time.monotonic() - t0 if node.proc.poll() is not None else None
    said = [line for line in logs()[before:]
            if "shutdown: " in line or "telling the sockets" in line or "stopping" in line or "watchdog" in line]
    rows = [
        Row(f"SIGTERM with {pages} pages connected: the node exits in", "within shutdown_seconds (10 s)",
            f"{exited:.2f} s" if exited is not None else "did not exit within 60 s"),
        Row("  what the node logged", "-", "; ".join(line.split(" ", 3)[-1] for line in said) or "nothing"),
    ]
    if args.redis and len(server.nodes) == 1:
        unsettled, total = unsettled_tickets(args.redis, args.redis_prefix)
        rows.append(Row("  waiting or called tickets left without a grace period", "0",
                        f"{unsettled} of {total} tickets"))
    return rows


async def bench(args: argparse.Namespace, server: ServerGroup, clerk_accounts: list[ClerkAccount],
                citizens: CitizenProcesses, run_dir: Path) -> None:
    say = print if not args.quiet else (lambda *a, **k: None)
    host_ms = host_reference_ms()
    departments = department_ids(args.departments)
    rows: list[Row] = []
    proxied = server.proxy is not None
    nodes = len(server.nodes)
    clerks = [ClerkClient(a, server.url, args.call_via, f"127.9.{k // 250}.{k % 250 + 1}" if proxied else None)
              for k, a in enumerate(clerk_accounts)]
    try:
        await asyncio.sleep(1.0)
        rss_base = server.rss()

        say(f"starting {args.processes} citizen processes; {args.citizens} citizens join and connect ...", flush=True)
        citizens.start(args.processes, server.url, departments, args.join_concurrency, args.connect_concurrency,
                       not args.no_replace, args.client, spread=proxied)
        shares: list[list[str]] = [[] for _ in range(args.processes)]
        for i in range(args.citizens):
            shares[i % args.processes].append(departments[i % len(departments)])
        cpu0, t0 = server.cpu_seconds(), time.time()
        populated = await citizens.ask("populate", shares)
        ready = sum(p["ready"] for p in populated)
        still_connected = sum(p["connected"] for p in populated)
        populate_s = max(p["last_ready"] for p in populated) - min(p["started"] for p in populated)
        populate_cpu = (server.cpu_seconds() - cpu0) / max(1e-9, time.time() - t0)
        say(f"  {ready} of {args.citizens} citizens connected in {populate_s:.1f} s "
            f"({still_connected} still connected)", flush=True)
        # Clerks log in now, not before: an idle socket is dropped by its own client when no ping
        # arrives for ping interval + 5 s, which a long join phase on a loaded machine can cause.
        say(f"logging in {len(clerks)} clerks ...", flush=True)
        for c in clerks:
            await c.login()
        await asyncio.sleep(3.0)  # let the last position broadcasts go out
        rss_loaded = server.rss()
        idle_cpu0, idle_t0 = server.cpu_seconds(), time.time()
        await asyncio.sleep(3.0)
        idle_cpu = (server.cpu_seconds() - idle_cpu0) / (time.time() - idle_t0)

        say(f"clerks call next at {args.calls_per_second}/s for {args.duration:.0f} s ...", flush=True)
        await citizens.ask("steady", [None] * args.processes)
        spy_out = run_dir / "server.pyspy.txt"
        spying = args.profile == "py-spy" and server.start_py_spy(args.duration, spy_out)
        steady_t0, steady_cpu0, clients_cpu0 = time.time(), server.cpu_seconds(), citizens.cpu_seconds()
        proxy_cpu0 = server.proxy_cpu_seconds()
        node_cpu0 = [n.cpu_seconds() for n in server.nodes]
        main_cpu0 = sum(psutil.Process().cpu_times()[:2])
        stats = await run_clerks(clerks, args.calls_per_second, args.duration)
        steady_wall = time.time() - steady_t0
        steady_cpu = (server.cpu_seconds() - steady_cpu0) / steady_wall
        proxy_cpu = (server.proxy_cpu_seconds() - proxy_cpu0) / steady_wall
        node_cpu = [(n.cpu_seconds() - c0) / steady_wall for n, c0 in zip(server.nodes, node_cpu0, strict=True)]
        clients_cpu = (citizens.cpu_seconds() - clients_cpu0) / steady_wall
        main_cpu = (sum(psutil.Process().cpu_times()[:2]) - main_cpu0) / steady_wall
        await asyncio.sleep(2.5)  # the coalesced updates that follow the last calls
        reports = await citizens.ask("measure", [steady_t0] * args.processes)
        if spying:
            server.wait_py_spy()
        rss_steady = server.rss()

        told = {tid: (recv, called_at) for r in reports for tid, recv, called_at in r["called"]}
        told_ms = [told[c.ticket][0] - c.sent for c in stats.calls if c.ticket in told]
        told_server = [told[c.ticket][0] - c.called_at for c in stats.calls if c.ticket in told]
        messages = merge_messages(reports)
        up_to_date, unmatched = pages_up_to_date(stats.calls, messages)
        fanout = [last - t for msgs in messages.values() for t, _h, _f, last, _n in msgs if t >= steady_t0]
        stale = sum(r["stale_pages"] for r in reports)
        waiting_pages = sum(r["waiting_pages"] for r in reports)
        counters: Counter[str] = Counter()
        for r in reports:
            counters.update(r["counters"])
        ended = sum(n for k, n in counters.items() if k.startswith("final_"))  # pages closed by the bench
        latencies = [c.latency for c in stats.calls]
        ticks = int(steady_wall / _citizens.LAG_TICK) * args.processes  # lag samples: only ticks > 2 ms late
        lags = sorted(lag for r in reports for lag in r["lags"])
        lag_p99 = lags[-max(1, ticks // 100)] if len(lags) >= max(1, ticks // 100) else 0.0

        storms = []
        for k in range(args.storms):
            say(f"reconnect storm {k + 1} of {args.storms}: every waiting page disconnects, then all reconnect "
                f"at once ...", flush=True)
            storm_spy = run_dir / f"server.storm{k + 1}.pyspy.txt"
            storms.append(await reconnect_storm(server, citizens, args, storm_spy if spying_storm(args, k) else None))
        first = storms[0]
        if args.sigterm:
            say("SIGTERM to the server with every page connected ...", flush=True)
            stop_rows = stop_with_pages(server, args, sum(st.ready for st in storms[-1:]))

        per_citizen_kb = (rss_loaded - rss_base) / max(1, ready) / 1024
        achieved = len(stats.calls) / steady_wall
        rows = [
            Row("waiting citizens connected", "10,000 on one server", f"{ready} of {args.citizens} "
                f"in {populate_s:.1f} s; still connected: {still_connected} after joining, "
                f"{sum(r['connected'] for r in reports)} after calls ({ended} ended by their call, "
                f"{counters.get('replaced', 0)} of them replaced so far; connections lost: "
                f"{sum(r.get('lost', 0) for r in reports)})"),
            Row("calls made (target rate)", "50 per s", f"{len(stats.calls)} in {steady_wall:.1f} s = "
                f"{achieved:.1f} per s ({args.calls_per_second:g} target, {stats.late_slots} late slots)"),
            Row(f"call-next latency p50 / p99 / max ({args.call_via})", "p99 < 20 ms",
                f"{ms(pct(latencies, 50))} / {ms(pct(latencies, 99))} / {ms(max(latencies, default=0))}"),
            Row("finish latency p50 / p99", "-",
                f"{ms(pct(stats.finish_latencies, 50))} / {ms(pct(stats.finish_latencies, 99))}"),
            Row("called citizen told p50 / p99 (from clerk send)", "p99 < 50 ms",
                f"{ms(pct(told_ms, 50))} / {ms(pct(told_ms, 99))} ({len(told_ms)} of {len(stats.calls)} seen)"),
            Row("  same, from server called_at p50 / p99", "-",
                f"{ms(pct(told_server, 50))} / {ms(pct(told_server, 99))}"),
            Row("  load generator: citizen processes' loop lag p99 / max", "-",
                f"{ms(lag_p99)} / {ms(max(lags, default=0.0))}"),
            Row("all waiting pages of the dept updated p50 / p99 / max", "< 2 s",
                f"{pct(up_to_date, 50):.2f} / {pct(up_to_date, 99):.2f} / {max(up_to_date, default=0):.2f} s"
                f" ({unmatched} calls unmatched)"),
            Row("  queue update fan-out (server t -> last page) p50 / p99", "-",
                f"{ms(pct(fanout, 50))} / {ms(pct(fanout, 99))} ({len(fanout)} updates)"),
            Row("  pages behind their dept's last update at the end", "0", f"{stale} of {waiting_pages}"),
            Row(f"server CPU{f' (sum over {nodes} nodes)' if nodes > 1 else ''}: idle with everyone waiting / "
                f"steady / storm", "-",
                f"{idle_cpu:.2f} / {steady_cpu:.2f} / {first.server_cpu_rate:.2f} core-s per s"),
            *([Row("  steady, per node", "-", " + ".join(f"{c:.2f}" for c in node_cpu) + " core-s per s")]
              if nodes > 1 else []),
            *([Row("  nginx CPU, steady", "-", f"{proxy_cpu:.2f} core-s per s")] if proxied else []),
            Row("server CPU while citizens joined", "-", f"{populate_cpu:.2f} core-s per s"),
            Row("server memory per waiting citizen", "< 100 KB",
                f"{per_citizen_kb:.1f} KB (RSS {rss_base / 2**20:.0f} -> {rss_loaded / 2**20:.0f} MiB; "
                f"{rss_steady / 2**20:.0f} after calls, "
                f"{' / '.join(f'{st.rss / 2**20:.0f}' for st in storms)} after each storm)"),
            *storm_rows(storms),
            Row("client CPU: citizen processes / clerk process", "-",
                f"{clients_cpu:.2f} / {main_cpu:.2f} core-s per s ({args.processes} processes, "
                f"{os.cpu_count()} cores)"),
            *(stop_rows if args.sigterm else []),
        ]
        errors = {k: v for k, v in counters.items() if not k.startswith(("joins", "final_", "replaced"))}
        outcomes = dict(stats.outcomes)
        where = (" behind nginx" + ("" if args.proxy_tls == "on" else " (no TLS to it)")) if proxied else " (direct)"
        print(f"\nconfig: {args.citizens} citizens, {args.departments} departments, "
              f"{len(clerks)} clerks, {args.calls_per_second:g} calls/s for {args.duration:g} s, "
              f"{'redis' if args.redis else 'memory'} store, {nodes} server node{'s' if nodes > 1 else ''}"
              f"{where}, {args.processes} citizen processes "
              f"({args.client} client); host reference workload {host_ms:.0f} ms; "
              f"replaced citizens: {counters.get('replaced', 0)}")
        print_table("results (goals are for 10,000 citizens / 20 departments / 50 calls per s)", rows)
        if errors or outcomes:
            print(f"\nclient-side counters: {errors}  clerk outcomes: {outcomes}")
        collections = [line.split("full garbage collection: ", 1)[1] for line in server.logs()
                       if "full garbage collection: " in line]
        if collections:
            print("\nthe server's full garbage collections (server/gcpolicy.py):")
            for line in collections:
                print(f"  {line}")
        profiles = [("steady phase", spy_out)] if spying else []
        profiles += [(f"storm {k + 1}, disconnect and reconnect", st.profile) for k, st in enumerate(storms)
                     if st.profile is not None]
        for title, path in profiles:
            print(f"\nserver profile (py-spy, {title}):")
            for line in summarize_py_spy(path):
                print(line)
            if args.keep:
                print(f"raw stacks: {path}")
    finally:
        for c in clerks:
            await c.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--citizens", type=int, default=2000, help="waiting citizens")
    p.add_argument("--departments", type=int, default=20)
    p.add_argument("--clerks-per-department", type=int, default=1)
    p.add_argument("--calls-per-second", type=float, default=50.0, help="over all clerks together")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of calling")
    p.add_argument("--full-gc-interval", type=float, default=None,
                   help="the server's full_gc_interval (default: the server's own, 600 s); the full collections "
                        "it logged are printed after the table")
    p.add_argument("--processes", type=int, default=2, help="citizen client processes")
    p.add_argument("--redis", metavar="URL", help="run the server on the Redis store (a loopback URL)")
    p.add_argument("--nodes", type=int, nargs="+", default=[1], metavar="N",
                   help="server processes on one Redis behind nginx (N > 1 needs --redis); several values "
                        "run one after the other")
    p.add_argument("--nginx", action="store_true",
                   help="also put nginx in front of a single node (--nodes 1 is direct otherwise)")
    p.add_argument("--proxy-tls", choices=("on", "off"), default="on",
                   help="off: nginx listens for the load generator without TLS (the clients' side of TLS, on "
                        "their own machines in a deployment, took most of a core of this one in a storm)")
    p.add_argument("--call-via", choices=("socket", "http"), default="socket",
                   help="clerks call next with the socket event or the HTTP route")
    p.add_argument("--client", choices=_citizens.CLIENTS, default="lean",
                   help="the waiting pages' socket client: lean (a minimal socket.io client on an aiohttp "
                        "websocket, cheap per page) or socketio (python-socketio's AsyncClient)")
    p.add_argument("--no-replace", action="store_true", help="do not let new citizens join for those called")
    p.add_argument("--join-concurrency", type=int, default=16, help="parallel joins per process")
    p.add_argument("--connect-concurrency", type=int, default=64, help="parallel first connects per process")
    p.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none",
                   help="py-spy: sample the server during the calling phase (pip install py-spy into the "
                        "venv); cprofile: run the whole server under cProfile (slower), stats kept")
    p.add_argument("--sigterm", action="store_true",
                   help="at the end, SIGTERM the (first) server node with every page connected: its exit time, "
                        "what it told its sockets and (one node on Redis) tickets left without a grace period")
    p.add_argument("--storms", type=int, default=1,
                   help="reconnect storms in a row (the server's memory is reported after each)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the run directory (config, server log, profile)")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    args = p.parse_args(argv)
    if args.redis and not args.redis.startswith(("redis://127.", "redis://localhost", "redis://[::1]")):
        p.error("--redis must be a loopback URL")
    if max(args.nodes) > 1 and not args.redis:
        p.error("--nodes above 1 needs --redis (the nodes share one Redis)")
    if min(args.citizens, args.departments, args.processes, args.clerks_per_department, args.storms,
           *args.nodes) < 1:
        p.error("counts must be positive")
    if args.calls_per_second <= 0 or args.duration <= 0:
        p.error("--calls-per-second and --duration must be positive")
    if args.profile == "cprofile":
        args.keep = True
    return args


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        print(f"warning: open files limit {want} < {needed}; the server may run out of sockets", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # inherited by the servers and nginx: one socket per citizen (nginx: two, to the client and to a node)
    raise_open_files_limit(3 * args.citizens + 1000)
    started = time.monotonic()
    code = 0
    for count in args.nodes:
        if len(args.nodes) > 1 and not args.quiet:
            print(f"\n=== {count} node{'s' if count > 1 else ''} ===", flush=True)
        code = run_once(args, count) or code
        if code == 130:
            break
    if not args.quiet:
        print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


def run_once(args: argparse.Namespace, count: int) -> int:
    """One bench run with ``count`` server nodes; everything it started is stopped before it returns."""
    run_dir = Path(tempfile.mkdtemp(prefix="sps-bench-"))
    prefix = f"spsbench{secrets.token_hex(4)}:"
    args.redis_prefix = prefix
    departments = department_ids(args.departments)
    proxied = count > 1 or args.nginx
    configs = []
    for k in range(count):
        node_dir = run_dir / f"node{k + 1}" if count > 1 else run_dir
        node_dir.mkdir(exist_ok=True)
        configs.append(write_config(node_dir, departments, args.redis, prefix, args.full_gc_interval,
                                    behind_proxy=proxied))
    server = ServerGroup([ServerProcess(c, free_port(), c.parent / "server.log", args.profile) for c in configs],
                         run_dir / "nginx" if proxied else None, args.proxy_tls == "on")
    citizens = CitizenProcesses()
    code = 0
    try:
        if not args.quiet:
            print(f"creating {args.departments * args.clerks_per_department} clerk accounts ...", flush=True)
        accounts = add_clerks(configs[0], departments, args.clerks_per_department)
        server.start(connections=2 * (args.citizens + len(accounts)) + 1000)
        asyncio.run(asyncio.wait_for(bench(args, server, accounts, citizens, run_dir), args.timeout))
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
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
