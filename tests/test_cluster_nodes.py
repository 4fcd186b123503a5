"""Several real ``sprechstunde serve`` processes on one real Redis: a citizen's pages on two nodes count as
one citizen, and a node killed with SIGKILL is noticed by a survivor, which starts the grace period of the
tickets whose only page was on it (they expire after it, as after any disconnect) and sets clerks whose only
dashboard was on it offline, while a clerk on the surviving node sees both."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.cluster import DEAD_AFTER_SECONDS
from server.http.auth import Auth
from server.store.redis import RedisStore

from .app_fixtures import free_port, make_settings, wait_until_healthy
from .socket_clients import Recorder, citizen_socket, join, positions, staff_socket

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
GRACE = 4
NOTICED_WITHIN = DEAD_AFTER_SECONDS + 10.0
"""Seconds until a survivor starts the grace period of a dead node's tickets (generous: a loaded machine)."""
ALWAYS_OPEN = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
CONFIG = """
[server]
data_dir = "{data}"
host = "127.0.0.1"
port = {port}
redis_url = "{redis_url}"
redis_prefix = "{prefix}"
joins_per_address = 1000
grace_seconds = {grace}
page_away_seconds = {away}
position_interval = {position_interval}
shutdown_seconds = 4
trust_forwarded_for = true
trusted_proxies = ["127.0.0.1"]

[[departments]]
id = "buergerbuero"
name = "Bürgerbüro"
hours = {{ {hours} }}
"""


class Node:
    """One ``sprechstunde serve`` process."""

    def __init__(self, directory: Path, redis_url: str, prefix: str, grace: float = GRACE,
                 position_interval: float = 0.2, away: float = 0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "node.toml"
        config.write_text(CONFIG.format(data=directory / "var", port=self.port, redis_url=redis_url, prefix=prefix,
                                        grace=grace, hours=ALWAYS_OPEN, position_interval=position_interval, away=away),
                          "utf-8")
        self.log = directory / "node.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config", str(config), "serve"],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "REDIS_URL": redis_url})

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")[-4000:]

    def wait_healthy(self) -> Node:
        wait_until_healthy(self.proc, self.port, self.output)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def start_nodes(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[Any]:
    started: list[Node] = []

    def start(count: int, grace: float = GRACE, position_intervals: tuple[float, ...] = (),
              away: float = 0) -> list[Node]:
        """``position_intervals``: each node's own, in order (0.2 s for the others)."""
        intervals = [*position_intervals, *[0.2] * count][:count]
        nodes = [Node(tmp_path / f"node{len(started) + i}", redis_url, redis_prefix, grace, intervals[i], away)
                 for i in range(count)]
        started.extend(nodes)
        return [n.wait_healthy() for n in nodes]  # they start side by side

    yield start
    for node in started:
        node.stop()


@pytest.fixture
async def shared(redis_url: str, redis_prefix: str, tmp_path: Path) -> Any:
    """The test's own view of the shared Redis: staff accounts, tickets, connection counts."""
    store = RedisStore(redis_url, prefix=redis_prefix)
    settings = make_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    auth = Auth(settings, store)
    auth.departments = lambda: settings.departments
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield store, auth, raw
    await raw.aclose()
    await store.close()


def pid_of(node_id: str) -> int:
    """Node ids are ``<host>-<pid>-<random>`` (server/cluster.py)."""
    return int(node_id.rsplit("-", 2)[1])


async def node_id_of(raw: Any, prefix: str, pid: int) -> str:
    """The registered node id of the process."""
    return next(n for n in await raw.zrange(f"{prefix}nodes", 0, -1) if pid_of(n) == pid)


async def counted_on(raw: Any, prefix: str, ticket_id: str) -> dict[int, int]:
    """Pages of the ticket per node process (pid), as counted in Redis."""
    return {pid_of(node): int(count) for node, count in (await raw.hgetall(f"{prefix}conn:ticket:{ticket_id}")).items()}


async def wait_for_counts(raw: Any, prefix: str, ticket_id: str, expected: dict[int, int]) -> None:
    import asyncio

    async def poll() -> None:
        while await counted_on(raw, prefix, ticket_id) != expected:  # noqa: ASYNC110 - other processes
            await asyncio.sleep(0.05)  # the nodes count in their own processes: polled

    await asyncio.wait_for(poll(), 15)


async def test_a_page_closing_on_one_node_leaves_the_citizen_connected_while_another_node_holds_one(
        start_nodes, shared, redis_prefix):
    store, auth, raw = shared
    a, b = start_nodes(2)
    await auth.add_staff("anna", "Anna", PASSWORD, ["buergerbuero"])
    mine = await join(a.url)
    ticket_id = mine["ticket"]["id"]
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    page_a = await citizen_socket(a.url, mine["token"])
    page_b = await citizen_socket(b.url, mine["token"])
    try:
        await wait_for_counts(raw, redis_prefix, ticket_id, {a.proc.pid: 1, b.proc.pid: 1})
        await page_a.close()
        await wait_for_counts(raw, redis_prefix, ticket_id, {b.proc.pid: 1})
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.disconnected_at is None  # still connected: b holds a page
        await page_b.close()  # the last page: now the grace period starts, and the clerk sees it
        update = await clerk.wait_for("connectivity", lambda m: (m["tickets"].get(ticket_id) or 0) > 0)
        assert update["department"] == "buergerbuero"
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.disconnected_at is not None
        gone = [m for name, m in clerk.events if name == "connectivity" and m["tickets"].get(ticket_id)]
        assert len(gone) == 1, gone  # told once, when the last page closed (None: connected, at the start)
    finally:
        for socket in (page_a, page_b, clerk):
            await socket.close()


async def test_a_page_that_closes_on_one_node_and_comes_back_on_another_within_its_away_period_was_never_away(
        start_nodes, shared, redis_prefix):
    """With ``page_away_seconds``, a closing page's node keeps counting it until the period is over, then
    takes it back: the citizen's page is back on the other node by then, so the ticket was never
    disconnected and the clerk was told nothing. A page that stays away starts the grace period from when it
    closed."""
    import asyncio
    import time

    store, auth, raw = shared
    away = 2.0
    a, b = start_nodes(2, away=away)
    await auth.add_staff("anna", "Anna", PASSWORD, ["buergerbuero"])
    mine = await join(a.url)
    ticket_id = mine["ticket"]["id"]
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    page_a = await citizen_socket(a.url, mine["token"])
    page_b = None
    try:
        await wait_for_counts(raw, redis_prefix, ticket_id, {a.proc.pid: 1})
        await page_a.close()
        page_b = await citizen_socket(b.url, mine["token"])  # the reload lands on the other node
        await page_b.wait_for("ticket")
        await wait_for_counts(raw, redis_prefix, ticket_id, {a.proc.pid: 1, b.proc.pid: 1})  # a still counts it
        await wait_for_counts(raw, redis_prefix, ticket_id, {b.proc.pid: 1})  # a's away period is over
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.disconnected_at is None
        assert not [m for name, m in clerk.events if name == "connectivity" and m["tickets"].get(ticket_id)]

        closed = time.time()
        await page_b.close()
        await wait_for_counts(raw, redis_prefix, ticket_id, {})

        async def disconnected() -> float:
            while (t := await store.get_ticket(ticket_id)) is None or t.disconnected_at is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process writes it: polled
            return t.disconnected_at

        at = await asyncio.wait_for(disconnected(), 15)
        assert time.time() >= closed + away  # settled after the away period ...
        assert closed - 1 <= at <= closed + 1  # ... the grace period counted from the close
        await clerk.wait_for("connectivity", lambda m: (m["tickets"].get(ticket_id) or 0) > 0)
    finally:
        for socket in (page_a, page_b, clerk):
            if socket is not None:
                await socket.close()


@dataclass
class Scene:
    """Two nodes: ``lonely``'s only page and ben's only dashboard on a; ``on_both`` with a page on each;
    anna's dashboard (``clerk``) on b."""

    a: Node
    b: Node
    clerk: Recorder
    pages: list[Recorder]
    lonely: str
    on_both: str


@contextlib.asynccontextmanager
async def pages_on_two_nodes(start_nodes: Any, shared: Any, prefix: str) -> AsyncIterator[Scene]:
    _store, auth, raw = shared
    a, b = start_nodes(2)
    await auth.add_staff("anna", "Anna", PASSWORD, ["buergerbuero"])
    await auth.add_staff("ben", "Ben", PASSWORD, ["buergerbuero"])
    only_on_a, on_both = await join(a.url), await join(b.url)
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    pages: list[Recorder] = [await staff_socket(a.url, "ben", PASSWORD)]  # ben's only dashboard is on a
    try:
        await clerk.wait_for("presence", lambda m: m["username"] == "ben" and m["status"] == "available")
        pages.append(await citizen_socket(a.url, only_on_a["token"]))
        pages.append(await citizen_socket(a.url, on_both["token"]))
        pages.append(await citizen_socket(b.url, on_both["token"]))
        await wait_for_counts(raw, prefix, on_both["ticket"]["id"], {a.proc.pid: 1, b.proc.pid: 1})
        await wait_for_counts(raw, prefix, only_on_a["ticket"]["id"], {a.proc.pid: 1})
        yield Scene(a, b, clerk, pages, only_on_a["ticket"]["id"], on_both["ticket"]["id"])
    finally:
        for socket in (*pages, clerk):
            await socket.close()


async def test_a_killed_node_s_citizens_start_their_grace_period_on_a_survivor(start_nodes, shared, redis_prefix):
    store, _auth, raw = shared
    async with pages_on_two_nodes(start_nodes, shared, redis_prefix) as scene:
        a, b, clerk, lonely = scene.a, scene.b, scene.clerk, scene.lonely
        a.kill()  # no goodbye: only the missing heartbeat tells
        update = await clerk.wait_for("connectivity", lambda m: (m["tickets"].get(lonely) or 0) > 0,
                                      timeout=NOTICED_WITHIN)
        assert update["department"] == "buergerbuero"
        ticket = await store.get_ticket(lonely)
        assert ticket is not None and ticket.disconnected_at is not None and ticket.state.value == "waiting"
        # ben's only dashboard was on a: offline now (not only when his presence lapses, 90 s later)
        await clerk.wait_for("presence", lambda m: m["username"] == "ben" and m["status"] == "offline")
        both = await store.get_ticket(scene.on_both)
        assert both is not None and both.disconnected_at is None  # its page on b still counts
        assert await counted_on(raw, redis_prefix, scene.on_both) == {b.proc.pid: 1}

        # the grace period runs out as after any disconnect: the ticket expires, the clerk is told
        expired = await clerk.wait_for("ticket", lambda m: m["ticket"]["id"] == lonely and m["kind"] == "expired",
                                       timeout=GRACE + 15)
        assert expired["ticket"]["state"] == "expired"
        assert b.proc.poll() is None
        assert "stopped heartbeating: taken for dead" in b.log.read_text("utf-8", "replace")


async def test_a_page_connecting_to_another_node_than_its_check_in_gets_a_queue_update_that_lists_it(
        start_nodes, shared):
    """Issue 11: citizens check in over HTTP on node a while a clerk on a calls, and each page connects its
    socket to node b. Nothing of this is one of b's own events, and b holds a cached update (made when the
    first page connected); every page must still get, on connecting, a ``queue`` update that lists its own
    seq (it was told "not in the queue" while waiting). b's position interval is long (30 s) so that its
    cached update stays fresh for the whole test: the window in which it was handed out is the whole test,
    not a fraction of a second."""
    _, auth, _ = shared
    a, b = start_nodes(2, position_intervals=(0.2, 30.0))
    await auth.add_staff("anna", "Anna", PASSWORD, ["buergerbuero"])
    clerk = await staff_socket(a.url, "anna", PASSWORD)
    seed = [await join(a.url) for _ in range(3)]
    pages = [await citizen_socket(b.url, seed[0]["token"])]  # b makes and keeps an update now
    try:
        await pages[0].wait_for("queue")
        for k in range(6):
            if k % 2:  # the department changes on a: the head of the queue is called (a seed ticket)
                called = await clerk.call("call_next", {"department": "buergerbuero"})
                assert called.get("ok"), called
                assert (await clerk.call("finish", {"ticket": called["ticket"]["id"]})).get("ok")
            mine = await join(a.url)  # on a: b's events do not say the department changed
            page = await citizen_socket(b.url, mine["token"])
            pages.append(page)
            ticket = await page.wait_for("ticket")
            update = await page.wait_for("queue")
            assert ticket["state"] == "waiting" and ticket["position"] == len(positions(update)), (k, ticket, update)
            assert positions(update)[-1] == mine["ticket"]["seq"], (k, update)  # it lists this page, last
    finally:
        for socket in (*pages, clerk):
            await socket.close()


async def test_a_page_connecting_to_a_node_gets_another_node_s_latest_broadcast_not_an_older_update(
        start_nodes):
    """A ``queue`` update that node a broadcast (through Redis to every node's pages) becomes node b's cached
    update too: a page connecting to b next gets it (or a newer one), never b's older one, although its own
    seq is in both. As above, b's long position interval keeps its own update fresh for the whole test."""
    a, b = start_nodes(2, position_intervals=(0.2, 30.0))
    first, second = await join(a.url), await join(a.url)
    watcher = await citizen_socket(b.url, first["token"])  # b makes and keeps an update listing both now
    late: Recorder | None = None
    try:
        kept = await watcher.wait_for("queue")
        third = await join(a.url)  # a changes the department and broadcasts it within 0.2 s
        heard = await watcher.wait_for("queue", lambda u: u["t"] > kept["t"])
        assert positions(heard) == [first["ticket"]["seq"], second["ticket"]["seq"], third["ticket"]["seq"]]
        late = await citizen_socket(b.url, second["token"])
        update = await late.wait_for("queue")
        assert update["t"] >= heard["t"] and positions(update) == positions(heard), (kept, heard, update)
    finally:
        await watcher.close()
        if late is not None:
            await late.close()


async def test_a_node_stopped_with_sigterm_settles_its_pages_at_once(start_nodes, shared, redis_prefix):
    """SIGTERM: the stopping node leaves its pages' bookkeeping to its cluster stop (all at once, not page by
    page): before the node exits, a ticket whose only page was there has started its grace period and the
    counts it held are gone; a ticket with a page on another node stays connected. A dashboard on the other
    node is told by the stopping node (it has no loop left to do it at the department's next slot): the
    ticket's page is gone, and ben, whose only dashboard was there, is offline."""
    store, _auth, raw = shared
    async with pages_on_two_nodes(start_nodes, shared, redis_prefix) as scene:
        a, b, lonely, clerk = scene.a, scene.b, scene.lonely, scene.clerk
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(15) == 0
        # Already sent when a exited; the wait covers only the way through Redis and b.
        update = await clerk.wait_for("connectivity", lambda m: (m["tickets"].get(lonely) or 0) > 0, timeout=5)
        assert update["department"] == "buergerbuero" and update["tickets"].get(scene.on_both) is None
        await clerk.wait_for("presence", lambda m: m["username"] == "ben" and m["status"] == "offline", timeout=5)
        ticket = await store.get_ticket(lonely)  # settled by the stop itself, not 5 s later by a survivor
        assert ticket is not None and ticket.disconnected_at is not None and ticket.state.value == "waiting"
        both = await store.get_ticket(scene.on_both)
        assert both is not None and both.disconnected_at is None  # its page on b still counts
        assert await counted_on(raw, redis_prefix, scene.on_both) == {b.proc.pid: 1}
        assert await counted_on(raw, redis_prefix, lonely) == {}
        assert await raw.hgetall(f"{redis_prefix}conn:clerk:ben") == {}  # ben's only dashboard: gone
        log = a.log.read_text("utf-8", "replace")
        assert "sockets told and disconnected (0 failed)" in log and "did not finish" not in log
        assert "exiting now" not in log and "failed or took too long" not in log
        assert "taken for dead" not in b.log.read_text("utf-8", "replace")  # a clean stop is not a death


@pytest.mark.parametrize("end", ["kill", "sigterm"])
async def test_a_page_away_on_a_node_that_ends_starts_its_grace_period_from_its_close(
        start_nodes, shared, redis_prefix, end):
    """A page that closed on a node and is still within its away period when the node is killed (or stopped):
    its grace period starts from when it closed, not when a survivor noticed (or the node stopped), up to
    ``page_away_seconds`` (here 60 s) later. Killed: the node noted the close in Redis within a second."""
    import asyncio
    import time

    store, _auth, raw = shared
    a, _b = start_nodes(2, away=60.0)
    mine = await join(a.url)
    ticket_id = mine["ticket"]["id"]
    page = await citizen_socket(a.url, mine["token"])
    await page.wait_for("ticket")
    await wait_for_counts(raw, redis_prefix, ticket_id, {a.proc.pid: 1})
    closed = time.time()
    await page.close()

    async def noted() -> None:
        key = f"{redis_prefix}node:{await node_id_of(raw, redis_prefix, a.proc.pid)}:closed"
        while not await raw.hexists(key, f"ticket:{ticket_id}"):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)  # node a writes it in its own loop: polled

    await asyncio.wait_for(noted(), 10)
    assert (await store.get_ticket(ticket_id)).disconnected_at is None  # still away: nothing settled
    if end == "kill":
        a.kill()
    else:
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(15) == 0

    async def disconnected() -> float:
        while (t := await store.get_ticket(ticket_id)) is None or t.disconnected_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # another process writes it: polled
        return t.disconnected_at

    at = await asyncio.wait_for(disconnected(), NOTICED_WITHIN)
    assert closed - 1 <= at <= closed + 1  # from the close
    assert await counted_on(raw, redis_prefix, ticket_id) == {}
    assert not [key async for key in raw.scan_iter(f"{redis_prefix}node:*:closed")]  # gone with the node
