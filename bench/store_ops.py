"""What one waiting-room operation costs the server process, per store: CPU per operation on the embedded
(memory) store and on Redis, side by side in one run.

    .venv/bin/python bench/store_ops.py                                  # Redis at 127.0.0.1:6379/0
    .venv/bin/python bench/store_ops.py --redis redis://host:6379/0 --waiting 500 --ops 400 --storm 2000

The service layer (``server.waitingroom.WaitingRoom``) and the node's connection counting
(``server.cluster``) run exactly as under the socket handlers, without sockets: what a page connecting or
going away, a check-in, "call next", "finish" and a department's ``queue`` update cost in the store and
its client. Each operation runs ``--ops`` times one after another (as in a steady morning: little
concurrency), and a storm runs ``--storm`` pages going away all at once, then coming back all at once (as
in a reconnect storm, where commands of many pages meet in one turn of the event loop).

CPU is this process's user + system time (``time.process_time``) per operation: it does not depend on how
busy the machine is, unlike wall time. Redis's own CPU is not included (another process); it is printed
from ``INFO`` as a separate line. The first line names the host reference workload (see
bench/queue_load.py) so that runs on different machines can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.queue_load import host_reference_ms  # noqa: E402
from server.cluster import Cluster, MemoryCluster, RedisCluster  # noqa: E402
from server.queue.model import Clerk, JoinRequest, Presence, TicketState  # noqa: E402
from server.settings import settings_from_dict  # noqa: E402
from server.store.base import Store  # noqa: E402
from server.store.memory import MemoryStore  # noqa: E402
from server.store.redis import RedisStore  # noqa: E402
from server.waitingroom import WaitingRoom  # noqa: E402

ALWAYS = {d: "00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
DEPT = "dept0"


def _settings() -> Any:
    return settings_from_dict({
        "server": {"timezone": "Europe/Berlin", "joins_per_address": 0, "demo": False},
        "departments": [{"id": DEPT, "name": "Bench", "hours": ALWAYS}],
    })


class _Bench:
    def __init__(self, store: Store, cluster: Cluster) -> None:
        self.store, self.cluster = store, cluster
        self.room = WaitingRoom(_settings(), store)
        self.clerk = Clerk("bench-clerk", "Bench", frozenset({DEPT}))
        self.tokens: dict[str, str] = {}

    async def join(self) -> str:
        ticket, token = await self.room.join(DEPT, JoinRequest(consent=True), "127.0.0.1")
        self.tokens[ticket.id] = token
        return ticket.id

    async def page_connects(self, ticket_id: str) -> None:
        """As ``Signaling._connect_as``: the ticket by its token, counted on the node, connected, its view."""
        ticket = await self.room.ticket_for_token(self.tokens[ticket_id])
        await self.cluster.connected("ticket", ticket.id)
        if ticket.disconnected_at is not None:
            ticket = await self.room.citizen_connected(ticket.id)
        await self.room.citizen_view(ticket)

    async def page_goes(self, ticket_id: str) -> None:
        """As ``Signaling._page_closed`` for the last page of a ticket."""
        if await self.cluster.disconnected("ticket", ticket_id) <= 0:
            await self.room.citizen_disconnected(ticket_id)


async def _timed(n: int, op: Any) -> float:
    """CPU ms per call of ``op(i)``, run one after another."""
    start = time.process_time()
    for i in range(n):
        await op(i)
    return (time.process_time() - start) * 1000 / n


async def _run(store: Store, cluster: Cluster, waiting: int, ops: int, storm: int) -> dict[str, float]:
    b = _Bench(store, cluster)
    await cluster.start()
    try:
        ids = [await b.join() for _ in range(waiting)]
        for i in ids:
            await b.page_connects(i)
        await store.set_presence(b.clerk.username, [DEPT], Presence.AVAILABLE, 90.0)
        out: dict[str, float] = {}
        fresh: list[str] = []

        async def check_in(_: int) -> None:
            fresh.append(await b.join())

        out["check-in"] = await _timed(ops, check_in)
        out["page connects (first time)"] = await _timed(ops, lambda i: b.page_connects(fresh[i]))
        out["page goes away"] = await _timed(ops, lambda i: b.page_goes(fresh[i]))
        out["page comes back"] = await _timed(ops, lambda i: b.page_connects(fresh[i]))
        called: list[str] = []

        async def call_next(_: int) -> None:
            called.append((await b.room.call_next(b.clerk, DEPT)).id)

        async def finish(i: int) -> None:
            await b.room.finish(b.clerk, called[i])

        out["call next"] = await _timed(ops, call_next)
        out["finish"] = await _timed(ops, finish)
        out["queue update"] = await _timed(ops, lambda _: b.room.queue_update(DEPT))
        out["department load"] = await _timed(ops, lambda _: b.room.load(DEPT))
        pages = [await b.join() for _ in range(storm)]
        await asyncio.gather(*(b.page_connects(i) for i in pages))
        start = time.process_time()
        await asyncio.gather(*(b.page_goes(i) for i in pages))
        out["storm: page goes away (all at once)"] = (time.process_time() - start) * 1000 / storm
        start = time.process_time()
        await asyncio.gather(*(b.page_connects(i) for i in pages))
        out["storm: page comes back (all at once)"] = (time.process_time() - start) * 1000 / storm
        left = [t for t in await store.get_tickets(pages) if t.state is TicketState.WAITING and t.disconnected_at]
        assert not left, f"{len(left)} storm pages still disconnected"  # the storm did what it says
        return out
    finally:
        await cluster.stop()
        await cluster.close()


async def _redis_cpu_seconds(url: str) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        await client.aclose()


async def _drop_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="a Redis URL (a random key prefix is used)")
    parser.add_argument("--waiting", type=int, default=500, help="citizens waiting in the department")
    parser.add_argument("--ops", type=int, default=400, help="runs of each operation")
    parser.add_argument("--storm", type=int, default=2000, help="pages in the storm")
    args = parser.parse_args()
    print(f"host reference workload: {host_reference_ms():.0f} ms; {args.waiting} waiting, {args.ops} runs "
          f"per operation, storm of {args.storm} pages")
    memory = await _run(MemoryStore(), MemoryCluster(), args.waiting, args.ops, args.storm)
    prefix = f"sps-bench-ops-{secrets.token_hex(4)}:"
    store = RedisStore(args.redis, prefix=prefix)
    cluster = RedisCluster(args.redis, prefix=prefix)
    redis_before = await _redis_cpu_seconds(args.redis)
    wall = time.monotonic()
    try:
        redis = await _run(store, cluster, args.waiting, args.ops, args.storm)
    finally:
        await store.close()
        await _drop_prefix(args.redis, prefix)
    redis_cpu = await _redis_cpu_seconds(args.redis) - redis_before
    wall = time.monotonic() - wall
    rows = [("operation", "memory: CPU ms per op", "redis: CPU ms per op", "redis / memory")]
    for name in memory:
        ratio = redis[name] / max(memory[name], 1e-6)
        rows.append((name, f"{memory[name]:.3f}", f"{redis[name]:.3f}", f"{ratio:.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")
    print(f"redis-server's own CPU during the Redis part: {redis_cpu:.2f} s in {wall:.1f} s (not in the table; "
          "other clients of that Redis count too)")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
