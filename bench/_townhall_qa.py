"""Town-hall Q&A load bench: N audience pages watching one live event while votes come in at a steady rate.

    .venv/bin/python bench/_townhall_qa.py --audience 2000 --votes-per-second 50 --duration 20
    .venv/bin/python bench/_townhall_qa.py --audience 500 --py-spy 15      # also sample the server

Goal (issue 9): 2,000 audience sockets with 50 votes a second, every page's order up to date within 1 s (p99).

Phases: start ``sprechstunde serve`` (bench/_server.py) with a moderator account made by the staff CLI; the
moderator logs in over HTTP and creates an event that takes questions in advance; five audience tokens
send one question each (the server takes 5 questions per address in 10 minutes, and every client here is
127.0.0.1); the moderator's socket (python-socketio) approves them and starts the event. Then the audience
pages join over HTTP and hold a lean socket each (``_citizens.LeanPage``: RFC 6455 + engine.io/socket.io,
connect ``40{"townhall": "<token>"}``) in ``--processes`` worker processes, recording every
``th_questions`` they get. Voter pages in this process vote at ``--votes-per-second`` for ``--duration``
seconds, acked; votes on one question go one at a time (the next only after the previous ack), so the
k-th acked vote on a question means its count is exactly k and no message can show it early.

Latency of a vote at a page: the first ``th_questions`` that page received whose count for the question
is at least the vote's expected count, minus the time the vote was sent (``time.time()`` on both sides:
same machine, same clock). The voters are audience members too (they get every list); they are not
measured.

``run(args)`` returns the table rows, ``main()`` prints them; ``run_qa(args)`` is the entry point for
``bench/townhall_load.py --mode qa`` (missing options take the defaults here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _citizens import ENGINEIO_PATH, LAG_TICK, ConnectFailed, LeanPage, _receive  # noqa: E402
from _server import (  # noqa: E402
    VENV_BIN,
    ServerProcess,
    WorkerProcesses,
    die_with_parent,
    free_port,
    summarize_py_spy,
    write_config,
)

GOAL_P99_S = 1.0
GOAL = "every page's order up to date within 1 s (p99)"
QUESTIONS = 5
"""The server takes 5 questions per address in 10 minutes: all of this bench's clients are 127.0.0.1."""
DEPARTMENT = "rathaus"
MODERATOR = "mona"
QUESTIONS_PREFIX = '42["th_questions",'
STATE_PREFIX = '42["th_state",'
REPLY_TIMEOUT = 300.0
CONNECT_TIMEOUT = 30.0
CONNECT_ATTEMPTS = 3
GRACE_S = 3.0
"""After the last vote: time for the last coalesced lists to reach every page before measuring."""
ROTATE_S = 4.0
"""Every so often another question becomes the favourite, so that the order really changes."""


def _loads(text: str) -> Any:
    return json.loads(text)


# -- the worker processes: the measured audience pages --------------------------------------------------
@dataclass
class AudiencePage:
    token: str = ""
    page: LeanPage | None = None
    state: bool = False
    """``th_state`` received (the server's connect handler sends it)."""
    sio_connected: bool = False
    recv: dict[int, float] = field(default_factory=dict)
    """Message index (this process's table of distinct ``th_questions`` texts) -> first receipt time."""
    ready_at: float = 0.0


class QaWorker:
    """A share of the audience: joins, lean sockets, and the record of what each page got when."""

    def __init__(self, conn: Connection, url: str, event_id: str, join_concurrency: int,
                 connect_concurrency: int) -> None:
        self.conn = conn
        self.url = url
        self.event_id = event_id
        self.join_concurrency = join_concurrency
        self.connect_concurrency = connect_concurrency
        self.pages: list[AudiencePage] = []
        self.qids: list[str] = []
        self.texts: dict[str, int] = {}
        """Each distinct ``th_questions`` text is parsed once per process (it is the same for every page)."""
        self.counts: list[tuple[int, ...]] = []
        """Per message index: the vote counts of the questions in ``qids`` order."""
        self.first: list[float] = []
        self.last: list[float] = []
        self.receivers: list[int] = []
        self.counters: Counter[str] = Counter()
        self.lags: list[tuple[float, float]] = []
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.target = 0
        self.http: aiohttp.ClientSession | None = None
        parts = url.split("://", 1)[1].split(":")
        self.host, self.port = parts[0], int(parts[1])

    # -- one page --
    async def join(self, p: AudiencePage) -> None:
        assert self.http is not None
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with self.http.post(f"{self.url}/api/townhall/events/{self.event_id}/audience") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        p.token = body["token"]
                        return
                    self.counters[f"join {resp.status} {body.get('error', {}).get('code')}"] += 1
            except (TimeoutError, aiohttp.ClientError):
                self.counters["join errors"] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError("join failed")

    async def connect(self, p: AudiencePage) -> bool:
        loop = asyncio.get_running_loop()
        for attempt in range(CONNECT_ATTEMPTS):
            page: LeanPage | None = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, page = await loop.create_connection(
                        lambda: LeanPage(lambda lp, text: self.on_text(p, lp, text), os.urandom(16)),
                        self.host, self.port)
                    p.page = page
                    page.handshake(self.host, self.port, ENGINEIO_PATH)
                    if await page.ready:
                        return True
                    raise ConnectFailed
            except (TimeoutError, ConnectFailed, OSError):
                self.counters["connect retries"] += 1
                if page is not None:
                    await page.disconnect()
                await asyncio.sleep(random.uniform(0.5, 1.5) * (attempt + 1))
        self.counters["connect failures"] += 1
        return False

    def on_text(self, p: AudiencePage, page: LeanPage, text: str) -> None:
        """One engine.io packet of a page. A ``th_questions`` list costs a dict lookup here (its text is the
        same for every page); what a browser does with it (sort, render) runs on its own core."""
        now = time.time()
        try:
            if text.startswith(QUESTIONS_PREFIX):
                i = self.texts.get(text)
                if i is None:
                    data = _loads(text[2:])[1]
                    votes = {q["id"]: q["votes"] for q in data["questions"]}
                    i = len(self.counts)
                    self.texts[text] = i
                    self.counts.append(tuple(votes.get(q, -1) for q in self.qids))
                    self.first.append(now)
                    self.last.append(now)
                    self.receivers.append(0)
                if i not in p.recv:
                    p.recv[i] = now
                    self.receivers[i] += 1
                    self.last[i] = now
            elif text == "2":  # engine.io ping
                page.send_str("3")
            elif text.startswith(STATE_PREFIX):
                p.state = True
                self._maybe_ready(p, now)
            elif text.startswith("42"):
                self.counters[f"event {text[2:40].split(',', 1)[0]}"] += 1
            elif text.startswith("0"):  # engine.io open
                opened = _loads(text[1:])
                page.ping_interval = opened["pingInterval"] / 1000
                page.ping_timeout = opened["pingTimeout"] / 1000
                page.send_str("40" + json.dumps({"townhall": p.token}, separators=(",", ":")))
            elif text.startswith("40"):  # socket.io CONNECT answered
                page.connected = p.sio_connected = True
                if not page.ready.done():
                    page.ready.set_result(True)
                self._maybe_ready(p, now)
            elif text.startswith("44"):
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    self.counters[f"connect_error: {_loads(text[2:]).get('message')}"] += 1
                page.fail()
            elif text.startswith(("41", "1")):
                self.counters["closed by the server"] += 1
                page.fail()
        except Exception as e:  # noqa: BLE001 - count and end this page, like a client error
            self.counters[f"page error {type(e).__name__}"] += 1
            page.fail()

    def _maybe_ready(self, p: AudiencePage, now: float) -> None:
        if p.state and p.sio_connected and not p.ready_at:
            p.ready_at = now
            self.ready += 1
            if self.ready >= self.target:
                self.all_ready.set()

    # -- phases --
    async def populate(self, arg: dict[str, Any]) -> dict[str, Any]:
        self.qids = list(arg["qids"])
        count = int(arg["count"])
        self.target = count
        started = time.time()
        join_gate = asyncio.Semaphore(self.join_concurrency)
        connect_gate = asyncio.Semaphore(self.connect_concurrency)

        async def one() -> None:
            p = AudiencePage()
            async with join_gate:
                await self.join(p)
            self.pages.append(p)
            async with connect_gate:
                await self.connect(p)

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                self.counters[f"populate {type(r).__name__}"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_ready.wait(), 30.0)
        gc.collect()
        gc.freeze()  # thousands of pages' objects: out of the young collections' way
        return {"started": started, "ready": self.ready, "connected": self.connected(),
                "last_ready": max((p.ready_at for p in self.pages), default=started)}

    def connected(self) -> int:
        return sum(1 for p in self.pages if p.page is not None and p.page.connected)

    def measure(self, arg: dict[str, Any]) -> dict[str, Any]:
        """Per (page, vote): seconds from the vote's send to the page's first list showing it.

        Counts only grow (nobody takes a vote back here) and every page gets the lists in the server's
        order, so the message that first shows vote v is the same for all pages of this process: found
        once per vote, then looked up per page; a page that missed it (dropped) is searched on its own."""
        votes: list[tuple[int, int, float]] = arg["votes"]
        since, until = float(arg["since"]), float(arg["until"])
        order = sorted(range(len(self.counts)), key=lambda i: self.first[i])
        per_q = [[self.counts[i][q] for i in order] for q in range(len(self.qids))]
        pairs = array("d")
        missing = 0
        first_page: list[float] = []
        last_page: list[float] = []
        measured_pages = [p for p in self.pages if p.ready_at]
        page_orders = {id(p): sorted(p.recv, key=lambda i: self.first[i]) for p in measured_pages}
        rank = {i: k for k, i in enumerate(order)}
        for q, expected, sent in votes:
            k = bisect_left(per_q[q], expected)
            target = order[k] if k < len(order) else None
            lo, hi, missed_here = math.inf, -math.inf, 0
            for p in measured_pages:
                t = p.recv.get(target) if target is not None else None
                if t is None:
                    # this page missed the first list showing the vote: its first later one that does
                    seen = page_orders[id(p)]
                    j = bisect_right([rank[i] for i in seen], k - 1) if target is not None else len(seen)
                    later = [p.recv[i] for i in seen[j:] if self.counts[i][q] >= expected]
                    t = later[0] if later else None
                if t is None:
                    missed_here += 1
                    continue
                d = t - sent
                pairs.append(d)
                lo, hi = min(lo, d), max(hi, d)
            missing += missed_here
            first_page.append(lo if lo != math.inf else float("nan"))
            last_page.append(hi if not missed_here and hi != -math.inf else float("nan"))
        rates = []
        for p in measured_pages:
            times = sorted(t for t in p.recv.values() if since <= t <= until)
            if len(times) >= 2:  # lists per second between the first and the last one in the window
                rates.append((len(times) - 1) / (times[-1] - times[0]))
        fanout = {self.counts[i]: (self.first[i], self.last[i], self.receivers[i])
                  for i in range(len(self.counts)) if since <= self.first[i] <= until + GRACE_S}
        return {
            "pairs": pairs.tobytes(), "missing": missing, "first_page": first_page, "last_page": last_page,
            "pages": len(measured_pages), "connected": self.connected(), "rates": rates, "fanout": fanout,
            "lags": [lag for t, lag in self.lags if since <= t <= until + GRACE_S],
            "lag_ticks": int((until + GRACE_S - since) / LAG_TICK), "counters": dict(self.counters),
            "distinct_lists": len(self.counts),
        }

    async def lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            late = loop.time() - due
            if late > 0.002:
                self.lags.append((time.time(), late))

    @staticmethod
    async def young_collections() -> None:
        while True:
            await asyncio.sleep(0.05)
            gc.collect(1)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.join_concurrency))
        tasks = [loop.create_task(self.lag_monitor()), loop.create_task(self.young_collections())]
        try:
            while True:
                command, arg = await _receive(self.conn)
                if command == "stop":
                    break
                if command == "populate":
                    result: Any = await self.populate(arg)
                elif command == "measure":
                    result = self.measure(arg)
                else:
                    result = {"error": f"unknown command {command}"}
                self.conn.send(result)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(p.page.disconnect() for p in self.pages if p.page),
                                                      return_exceptions=True), 20)
            await self.http.close()


def worker_main(conn: Connection, url: str, event_id: str, join_concurrency: int, connect_concurrency: int) -> None:
    """Process entry point (spawned by the bench)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench handles Ctrl-C and tells us to stop
    die_with_parent()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # as in bench/_citizens.py: young collections on a timer, no full ones over the pages
    try:
        asyncio.run(QaWorker(conn, url, event_id, join_concurrency, connect_concurrency).serve())
    finally:
        conn.close()


class Workers(WorkerProcesses):
    """The audience worker processes (``worker_main``)."""

    reply_timeout = REPLY_TIMEOUT

    def __init__(self) -> None:
        super().__init__("audience")

    def start(self, count: int, url: str, event_id: str, join_concurrency: int, connect_concurrency: int) -> None:
        self.spawn(count, worker_main, (url, event_id, join_concurrency, connect_concurrency))


# -- this process: the moderator and the voters ---------------------------------------------------------
class Voter:
    """An audience member who votes (a lean page with acks): in the bench's process, few of them, so that
    the send times are not delayed by the measured pages' work."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.page: LeanPage | None = None
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.voted: set[int] = set()
        self.broadcasts = 0

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, self.page = await loop.create_connection(
                        lambda: LeanPage(self.on_text, os.urandom(16)), host, port)
                    self.page.handshake(host, port, ENGINEIO_PATH)
                    if await self.page.ready:
                        return
            except (TimeoutError, OSError):
                pass
            if self.page is not None:
                await self.page.disconnect()
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError("a voter could not connect")

    def on_text(self, page: LeanPage, text: str) -> None:
        if text.startswith("42"):
            self.broadcasts += 1
        elif text == "2":
            page.send_str("3")
        elif text.startswith("43"):  # an ack: 43<id>[<payload>]
            body = text[2:]
            digits = len(body) - len(body.lstrip("0123456789"))
            future = self.acks.pop(int(body[:digits]), None)
            if future is not None and not future.done():
                future.set_result(_loads(body[digits:])[0])
        elif text.startswith("0"):
            page.send_str("40" + json.dumps({"townhall": self.token}, separators=(",", ":")))
        elif text.startswith("40"):
            page.connected = True
            if not page.ready.done():
                page.ready.set_result(True)
        elif text.startswith(("44", "41", "1")):
            page.fail()
            for future in self.acks.values():
                if not future.done():
                    future.set_exception(ConnectionError("the voter's socket was closed"))

    def call(self, event: str, data: dict[str, Any]) -> asyncio.Future[Any]:
        assert self.page is not None
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self.next_id] = future
        self.page.send_str(f"42{self.next_id}" + json.dumps([event, data], separators=(",", ":")))
        return future


@dataclass
class VoteStats:
    votes: list[tuple[int, int, float]] = field(default_factory=list)
    """(question index, its count once this vote is in, time.time() when sent): acked votes only."""
    ack_latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    late_slots: int = 0
    """Slots sent late because every question still had a vote in flight (waiting for its ack)."""
    skipped_slots: int = 0
    """Slots with no vote sent: no voter left who has not voted for a free question."""
    started: float = 0.0
    ended: float = 0.0


async def run_votes(voters: list[Voter], qids: list[str], rate: float, duration: float) -> VoteStats:
    """``rate`` votes a second in order from this process. One vote per question in flight at a time, so
    the count a vote makes is known exactly; the favourite question changes every ROTATE_S."""
    stats = VoteStats()
    loop = asyncio.get_running_loop()
    successes = [0] * len(qids)
    busy = [False] * len(qids)
    cursor = [0] * len(qids)
    """Per question: the next voter who has not voted for it."""
    pending: set[asyncio.Task[None]] = set()
    rng = random.Random(9)
    freed = asyncio.Event()

    async def one(q: int, voter: Voter) -> None:
        sent, t0 = time.time(), time.perf_counter()
        try:
            ack = await asyncio.wait_for(voter.call("th_vote", {"question": qids[q]}), 10)
        except (TimeoutError, ConnectionError) as e:
            stats.outcomes[f"vote {type(e).__name__}"] += 1
        else:
            if isinstance(ack, dict) and ack.get("ok"):
                successes[q] += 1
                stats.votes.append((q, successes[q], sent))
                stats.ack_latencies.append(time.perf_counter() - t0)
            else:
                stats.outcomes[f"vote {(ack.get('error') or {}).get('code') if isinstance(ack, dict) else ack}"] += 1
        finally:
            busy[q] = False
            freed.set()

    start = loop.time() + 0.05
    stats.started = time.time() + 0.05
    slots = int(rate * duration)
    for k in range(slots):
        delay = start + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        favourite = int(k / rate / ROTATE_S) % len(qids)
        weights = [len(qids) - (q - favourite) % len(qids) for q in range(len(qids))]
        free = [q for q in range(len(qids)) if not busy[q] and cursor[q] < len(voters)]
        if not free and any(busy):  # wait for an ack, then catch up with the schedule
            stats.late_slots += 1
            while not free and any(busy):
                freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), 1.0)
                free = [q for q in range(len(qids)) if not busy[q] and cursor[q] < len(voters)]
        if not free:
            stats.skipped_slots += 1
            continue
        q = rng.choices(free, weights=[weights[i] for i in free])[0]
        voter = voters[cursor[q]]
        cursor[q] += 1
        busy[q] = True
        task = loop.create_task(one(q, voter))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=15)
    stats.ended = time.time()
    return stats


class Moderator:
    """The moderator: HTTP (login, create the event) and a python-socketio staff socket (approve, start)."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.password = password
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.csrf = ""
        self.cookie = ""

    async def login(self) -> None:
        async with self.http.post(f"{self.url}/api/session",
                                  json={"username": MODERATOR, "password": self.password}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"moderator login failed: {body}")
            self.csrf = body["csrf"]
            self.cookie = f"sps_session={resp.cookies['sps_session'].value}"
        await self.sio.connect(self.url, headers={"Cookie": self.cookie}, transports=["websocket"], wait_timeout=30)

    async def create_event(self, audience_limit: int) -> str:
        now = time.time()
        body = {"title": "Bürgersprechstunde (Lasttest)", "description": "bench", "politicians": [MODERATOR],
                "starts_at": now + 3600, "ends_at": now + 7200, "advance_questions": True,
                "questions_until": None, "recorded": False, "recording_purpose": "", "retention_days": 0,
                "audience_limit": audience_limit}
        async with self.http.post(f"{self.url}/api/townhall/events", json=body,
                                  headers={"Cookie": self.cookie, "X-CSRF-Token": self.csrf}) as resp:
            answer = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"creating the event failed: {resp.status} {answer}")
            return str(answer["event"]["id"])

    async def act(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        ack = await self.sio.call(event, data, timeout=10)
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise RuntimeError(f"{event} failed: {ack}")
        return ack

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        await self.http.close()


async def join_audience(http: aiohttp.ClientSession, url: str, event_id: str) -> str:
    async with http.post(f"{url}/api/townhall/events/{event_id}/audience") as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"joining the audience failed: {resp.status} {body}")
        return str(body["token"])


async def ask_questions(http: aiohttp.ClientSession, url: str, event_id: str, tokens: list[str]) -> list[str]:
    qids = []
    for k, token in enumerate(tokens):
        async with http.post(f"{url}/api/townhall/events/{event_id}/questions",
                             json={"text": f"Frage {k + 1}: wann kommt der Radweg an der Hauptstraße?", "name": ""},
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            body = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"sending question {k + 1} failed: {resp.status} {body}")
            qids.append(str(body["question"]["id"]))
    return qids


# -- statistics and the table ----------------------------------------------------------------------------
def pct(values: list[float] | array[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


@dataclass(frozen=True)
class Row:
    metric: str
    goal: str
    measured: str


def print_table(title: str, rows: list[Row]) -> None:
    heads = ("metric", "goal", "measured")
    widths = [max(len(h), *(len(getattr(r, a)) for r in rows)) for h, a in zip(heads, ("metric", "goal", "measured"),
                                                                                  strict=True)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(v.ljust(w) for v, w in zip((r.metric, r.goal, r.measured), widths, strict=True))
              + " |")


def py_spy_binary(explicit: str | None) -> str | None:
    for candidate in (explicit, str(VENV_BIN / "py-spy"), "/tmp/pyspy/bin/py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def start_py_spy(binary: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if binary.startswith("/tmp/pyspy/"):
        env["PYTHONPATH"] = "/tmp/pyspy"
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent, env=env)


# -- the run ----------------------------------------------------------------------------------------------
async def bench(args: argparse.Namespace, server: ServerProcess, password: str, workers: Workers,
                run_dir: Path) -> list[Row]:
    from queue_load import host_reference_ms

    say = (lambda *a, **k: None) if args.quiet else print
    host_ms = host_reference_ms()
    load_before = os.getloadavg()
    total_votes = int(args.votes_per_second * args.duration)
    voter_count = max(QUESTIONS, math.ceil(total_votes / QUESTIONS * 1.3) + 5)
    moderator = Moderator(server.url, password)
    voters: list[Voter] = []
    http = aiohttp.ClientSession()
    try:
        await moderator.login()
        event_id = await moderator.create_event(min(10_000, args.audience + voter_count + 10))
        say(f"event {event_id}: {voter_count} voters join, {QUESTIONS} questions, approved, started ...", flush=True)
        tokens = [await join_audience(http, server.url, event_id) for _ in range(voter_count)]
        qids = await ask_questions(http, server.url, event_id, tokens[:QUESTIONS])
        await moderator.act("th_watch", {"event": event_id})
        for qid in qids:
            await moderator.act("th_moderate", {"event": event_id, "action": "approve", "question": qid})
        await moderator.act("th_start", {"event": event_id})
        host, port = server.url.split("://", 1)[1].split(":")
        voters = [Voter(t) for t in tokens]
        for k in range(0, len(voters), 32):
            await asyncio.gather(*(v.connect(host, int(port)) for v in voters[k:k + 32]))
        await asyncio.sleep(1.0)
        rss_base = server.rss()

        say(f"{args.audience} audience pages join and connect in {args.processes} processes ...", flush=True)
        workers.start(args.processes, server.url, event_id, args.join_concurrency, args.connect_concurrency)
        shares = [args.audience // args.processes + (1 if i < args.audience % args.processes else 0)
                  for i in range(args.processes)]
        cpu0, t0 = server.cpu_seconds(), time.time()
        populated = await workers.ask("populate", [{"count": n, "qids": qids} for n in shares])
        ready = sum(p["ready"] for p in populated)
        connect_s = max(p["last_ready"] for p in populated) - min(p["started"] for p in populated)
        connect_cpu = (server.cpu_seconds() - cpu0) / max(1e-9, time.time() - t0)
        say(f"  {ready} of {args.audience} pages ready in {connect_s:.1f} s", flush=True)
        await asyncio.sleep(2.0)
        rss_loaded = server.rss()
        idle_cpu0, idle_t0 = server.cpu_seconds(), time.time()
        await asyncio.sleep(3.0)
        idle_cpu = (server.cpu_seconds() - idle_cpu0) / (time.time() - idle_t0)

        say(f"voting at {args.votes_per_second:g}/s for {args.duration:g} s ...", flush=True)
        spy_out = run_dir / "server.pyspy.txt"
        spy = None
        if args.py_spy:
            binary = py_spy_binary(args.py_spy_bin)
            if binary is None:
                say("  py-spy not found (pip install --target /tmp/pyspy py-spy); not profiling", flush=True)
            elif server.proc is not None:
                spy = start_py_spy(binary, server.proc.pid, min(args.py_spy, args.duration), spy_out)
        me = psutil.Process()
        steady_cpu0, workers_cpu0, main_cpu0 = server.cpu_seconds(), workers.cpu_seconds(), sum(me.cpu_times()[:2])
        wall0 = time.time()
        stats = await run_votes(voters, qids, args.votes_per_second, args.duration)
        wall = time.time() - wall0
        steady_cpu = (server.cpu_seconds() - steady_cpu0) / wall
        workers_cpu = (workers.cpu_seconds() - workers_cpu0) / wall
        main_cpu = (sum(me.cpu_times()[:2]) - main_cpu0) / wall
        rss_steady = server.rss()
        load_after = os.getloadavg()
        await asyncio.sleep(GRACE_S)
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(args.py_spy + 30)
        reports = await workers.ask("measure", [{"votes": stats.votes, "since": stats.started,
                                                 "until": stats.ended}] * args.processes)
    finally:
        for v in voters:
            if v.page is not None:
                with contextlib.suppress(Exception):
                    await v.page.disconnect()
        await moderator.close()
        await http.close()

    pairs: array[float] = array("d")
    for r in reports:
        chunk = array("d")
        chunk.frombytes(r["pairs"])
        pairs.extend(chunk)
    pairs_sorted = sorted(pairs)
    missing = sum(r["missing"] for r in reports)
    total_pairs = len(pairs) + missing
    nvotes = len(stats.votes)
    # per vote over all processes: the first and the last page that showed it
    first_page = [min((r["first_page"][i] for r in reports if not math.isnan(r["first_page"][i])),
                      default=float("nan")) for i in range(nvotes)]
    last_page = [float("nan") if any(math.isnan(r["last_page"][i]) for r in reports)
                 else max(r["last_page"][i] for r in reports) for i in range(nvotes)]
    last_known = [x for x in last_page if not math.isnan(x)]
    first_known = [x for x in first_page if not math.isnan(x)]
    rates = [x for r in reports for x in r["rates"]]
    fan: dict[tuple[int, ...], list[float]] = {}
    for r in reports:
        for key, (first, last, _n) in r["fanout"].items():
            f = fan.setdefault(key, [first, last])
            f[0], f[1] = min(f[0], first), max(f[1], last)
    fanout = [last - first for first, last in fan.values()]
    lags = sorted(lag for r in reports for lag in r["lags"])
    ticks = sum(r["lag_ticks"] for r in reports)
    lag_p99 = lags[-max(1, ticks // 100)] if len(lags) >= max(1, ticks // 100) else 0.0
    counters: Counter[str] = Counter()
    for r in reports:
        counters.update(r["counters"])
    measured_pages = sum(r["pages"] for r in reports)
    still = sum(r["connected"] for r in reports)
    window = max(1e-9, stats.ended - stats.started)
    p99 = pct(pairs_sorted, 99)
    verdict = "met" if not math.isnan(p99) and p99 <= GOAL_P99_S and missing == 0 else "MISSED"

    def dist(values: list[float]) -> str:
        return " / ".join(ms(pct(values, q)) for q in (50, 95, 99)) + f" / {ms(max(values, default=float('nan')))}"

    rows = [
        Row("audience pages measured (+ voters, also audience)", "2,000",
            f"{measured_pages} of {args.audience} ready in {connect_s:.1f} s (+ {len(voters)} voters); "
            f"{still} still connected at the end"),
        Row("votes acked (target rate)", "50 per s",
            f"{nvotes} in {window:.1f} s = {nvotes / window:.1f} per s ({args.votes_per_second:g} target, "
            f"{stats.late_slots} slots late: waiting for an ack, {stats.skipped_slots} skipped)"),
        Row("vote ack latency p50 / p99", "-", f"{ms(pct(stats.ack_latencies, 50))} / "
                                                  f"{ms(pct(stats.ack_latencies, 99))}"),
        Row("vote -> page shows it, (page, vote) p50 / p95 / p99 / max", "p99 <= 1 s",
            f"{dist(pairs_sorted)} ({len(pairs)} pairs) [{verdict}]"),
        Row("  pairs that never arrived", "0", f"{missing} of {total_pairs} "
                                               f"({100 * missing / max(1, total_pairs):.2f} %)"),
        Row("vote -> LAST page shows it, per vote p50 / p95 / p99 / max", "p99 <= 1 s",
            f"{dist(last_known)} ({len(last_known)} of {nvotes} votes reached every page)"),
        Row("vote -> FIRST page shows it, per vote p50 / p99", "-",
            f"{ms(pct(first_known, 50))} / {ms(pct(first_known, 99))} (coalescing: lists every 0.25 s)"),
        Row("  one list's fan-out (first -> last page) p50 / p99", "-",
            f"{ms(pct(fanout, 50))} / {ms(pct(fanout, 99))} ({len(fanout)} lists)"),
        Row("th_questions per page per second mean / max", "<= 4 (coalesced)",
            f"{sum(rates) / max(1, len(rates)):.2f} / {max(rates, default=0):.2f}"),
        Row("server CPU: idle (pages connected) / voting / while pages connected", "-",
            f"{idle_cpu:.2f} / {steady_cpu:.2f} / {connect_cpu:.2f} core-s per s"),
        Row("server RSS: before pages / with pages / after voting", "-",
            f"{rss_base / 2**20:.0f} / {rss_loaded / 2**20:.0f} / {rss_steady / 2**20:.0f} MiB "
            f"({(rss_loaded - rss_base) / max(1, ready) / 1024:.1f} KB per page)"),
        Row("load generator CPU: audience processes / voter process", "-",
            f"{workers_cpu:.2f} / {main_cpu:.2f} core-s per s ({args.processes} processes, {os.cpu_count()} cores)"),
        Row("  audience processes' loop lag p99 / max", "-", f"{ms(lag_p99)} / {ms(max(lags, default=0.0))}"),
        Row("machine load average (1 min) before / after voting", "-",
            f"{load_before[0]:.2f} / {load_after[0]:.2f} ({os.cpu_count()} cores; others may be running tests)"),
    ]
    errors = {k: v for k, v in counters.items() if not k.startswith("event ")}
    events = {k: v for k, v in counters.items() if k.startswith("event ")}
    print(f"\nconfig: {args.audience} audience pages in {args.processes} processes + {len(voters)} voters, "
          f"{QUESTIONS} questions, {args.votes_per_second:g} votes/s for {args.duration:g} s, memory store; "
          f"host reference workload {host_ms:.0f} ms (bench/queue_load.py)")
    print_table(f"town-hall Q&A (goal: {GOAL})", rows)
    if errors or stats.outcomes:
        print(f"\naudience counters: {errors}  vote outcomes: {dict(stats.outcomes)}")
    if events and args.verbose:
        print(f"other events the audience got: {events}")
    if spy is not None:
        print("\nserver profile (py-spy, voting phase):")
        for line in summarize_py_spy(spy_out):
            print(line)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audience", type=int, default=2000, help="measured audience pages")
    p.add_argument("--votes-per-second", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of voting")
    p.add_argument("--processes", type=int, default=2, help="audience worker processes")
    p.add_argument("--join-concurrency", type=int, default=16, help="parallel joins per process")
    p.add_argument("--connect-concurrency", type=int, default=64, help="parallel connects per process")
    p.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                   help="sample the server this long during the voting (py-spy: the venv's, /tmp/pyspy or PATH)")
    p.add_argument("--py-spy-bin", default=None, help="path of the py-spy binary")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the run directory (config, server log, profile)")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if min(args.audience, args.processes) < 1 or args.votes_per_second <= 0 or args.duration <= 0:
        p.error("counts, rate and duration must be positive")
    return args


def run(args: argparse.Namespace) -> list[Row]:
    """One bench run: start everything, measure, print the table, stop everything; returns the rows."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server: a socket per page
    run_dir = Path(tempfile.mkdtemp(prefix="sps-thqa-"))
    config = write_config(run_dir, [DEPARTMENT], None, "")
    server = ServerProcess(config, free_port(), run_dir / "server.log", "none")
    workers = Workers()
    try:
        password = secrets.token_urlsafe(12)
        subprocess.run([str(VENV_BIN / "sprechstunde"), "--config", str(config), "staff", "add", MODERATOR,
                        "--departments", DEPARTMENT, "--roles", "moderator", "--password-stdin"],
                       input=password + "\n", text=True, check=True, capture_output=True, timeout=60)
        server.start()
        return asyncio.run(asyncio.wait_for(bench(args, server, password, workers, run_dir), args.timeout))
    except Exception:
        if server.proc is not None:
            print(f"server log tail:\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        workers.stop()
        server.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def run_qa(args: argparse.Namespace) -> list[Row]:
    """For ``bench/townhall_load.py --mode qa``: its options where they mean the same, defaults otherwise."""
    ours = parse_args([])
    for name in vars(ours):
        if hasattr(args, name):
            setattr(ours, name, getattr(args, name))
    if getattr(args, "py_spy", None):
        ours.py_spy = float(args.py_spy)
    return run(ours)


def _terminated(signum: int, frame: Any) -> None:
    signal.raise_signal(signal.SIGINT)  # SIGTERM: stop like Ctrl-C (asyncio.run cancels the bench, run() cleans up)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - reported; everything was stopped in run()
        print(f"\nbench failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"\nbench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
