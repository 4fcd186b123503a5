"""The node registry (server/cluster.py): connection counts across nodes, invitations and once-only claims on
both implementations, and on Redis: heartbeats, a dead node claimed by exactly one survivor, its counts
dropped, and a node taken for dead that comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from server.cluster import Cluster, MemoryCluster, RedisCluster

FAST = {"heartbeat": 0.05, "dead_after": 0.4}


@pytest_asyncio.fixture
async def make_node(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[..., RedisCluster]]:
    made: list[RedisCluster] = []

    def factory(node_id: str | None = None, **timing: float) -> RedisCluster:
        node = RedisCluster(redis_url, prefix=redis_prefix, node_id=node_id, **{**FAST, **timing})
        made.append(node)
        return node

    yield factory
    for node in made:
        await node.close()


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    c: Cluster
    if request.param == "memory":
        c = MemoryCluster()
    else:
        c = RedisCluster(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()
        await c.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - background heartbeats: polled
            await asyncio.sleep(0.02)  # polling the state of background heartbeats

    await asyncio.wait_for(poll(), timeout)


# -- both implementations --
async def test_connections_are_counted(cluster: Cluster) -> None:
    assert await cluster.connected("ticket", "t1") == 1
    assert await cluster.connected("ticket", "t1") == 2
    assert await cluster.connected("clerk", "t1") == 1  # kinds are apart
    assert await cluster.disconnected("ticket", "t1") == 1
    assert await cluster.connections("ticket", "t1") == 1
    assert cluster.local_connections("ticket", "t1") == 1
    assert await cluster.disconnected("ticket", "t1") == 0
    assert await cluster.connections("ticket", "t1") == 0
    assert await cluster.disconnected("ticket", "t1") == 0  # one more disconnect than connects: still 0


async def test_invitations(cluster: Cluster) -> None:
    assert not await cluster.is_invited("t1", "bob")
    await cluster.invite("t1", "bob")
    await cluster.invite("t1", "carla")
    assert await cluster.is_invited("t1", "bob") and await cluster.is_invited("t1", "carla")
    assert not await cluster.is_invited("t2", "bob")
    await cluster.clear_invitations("t1")
    assert not await cluster.is_invited("t1", "bob")


async def test_a_claim_is_granted_once(cluster: Cluster) -> None:
    results = await asyncio.gather(*(cluster.claim("expire:t1", 10) for _ in range(5)))
    assert results.count(True) == 1
    assert await cluster.claim("expire:t2", 10)


async def test_the_node_itself_is_live(cluster: Cluster) -> None:
    assert cluster.node_id in await cluster.live_nodes()
    assert await cluster.is_live(cluster.node_id)


# -- several nodes on Redis --


@pytest.mark.redis
async def test_counts_and_invitations_are_shared_by_nodes(make_node) -> None:
    a, b = make_node("a"), make_node("b")
    await a.start()
    await b.start()
    assert await a.connected("ticket", "t1") == 1
    assert await b.connected("ticket", "t1") == 2  # a page on each node
    assert await a.disconnected("ticket", "t1") == 1  # the page on a closes: b still holds one
    assert await b.connections("ticket", "t1") == 1
    await a.invite("t1", "bob")
    assert await b.is_invited("t1", "bob")  # made on a, accepted on b
    assert set(await a.live_nodes()) == {"a", "b"}
    await b.stop()  # a clean stop leaves the registry at once
    assert set(await a.live_nodes()) == {"a"}


@pytest.mark.redis
async def test_a_dead_node_is_claimed_by_exactly_one_survivor_and_its_counts_dropped(make_node) -> None:
    dead, b, c = make_node("dead"), make_node("b"), make_node("c")
    seen: dict[str, list[object]] = {"b": [], "c": []}
    for name, node in (("b", b), ("c", c)):
        node.on_node_dead(lambda n, name=name: _note(seen[name], ("dead", n)))
        node.on_connections_dropped(lambda k, i, _at, name=name: _note(seen[name], (k, i)))
    for node in (dead, b, c):
        await node.start()
    await dead.connected("ticket", "only-on-dead")
    await dead.connected("ticket", "shared")
    await b.connected("ticket", "shared")
    await dead.connected("clerk", "anna")
    # the dead node never beats again (as after SIGKILL); b and c beat and look for dead nodes
    runs = [asyncio.create_task(b.run()), asyncio.create_task(c.run())]
    try:
        await wait_until(lambda: len(seen["b"]) + len(seen["c"]) >= 3)
        assert set(await b.live_nodes()) == {"b", "c"}
        await asyncio.sleep(3 * FAST["heartbeat"])  # a few more rounds: nothing is claimed twice
        events = seen["b"] + seen["c"]
        assert sorted(events, key=str) == sorted([("dead", "dead"), ("ticket", "only-on-dead"), ("clerk", "anna")],
                                                 key=str)
        assert not (seen["b"] and seen["c"])  # one survivor did it all
        assert await b.connections("ticket", "shared") == 1
        assert await b.connections("ticket", "only-on-dead") == 0
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


@pytest.mark.redis
async def test_a_node_taken_for_dead_that_comes_back_counts_its_connections_again(make_node) -> None:
    a, b = make_node("a"), make_node("b")
    restored: list[tuple[str, str]] = []
    a.on_connections_restored(lambda k, i: _note(restored, (k, i)))
    await a.start()
    await b.start()
    await a.connected("ticket", "t1")
    await b.connected("ticket", "t2")
    await asyncio.sleep(FAST["dead_after"] * 1.5)  # a stalls (no heartbeat) ...
    await b.beat()
    assert await b.reap() == ["a"]  # ... and is taken for dead: its counts dropped
    assert await b.connections("ticket", "t1") == 0
    await a.beat()  # a's loop runs again
    assert restored == [("ticket", "t1")]
    assert await b.connections("ticket", "t1") == 1
    assert "a" in await b.live_nodes()


@pytest.mark.redis
async def test_a_disconnect_lost_in_a_redis_outage_is_set_right_at_the_next_heartbeat(make_node) -> None:
    a = make_node("a")
    dropped: list[tuple[str, str]] = []
    a.on_connections_dropped(lambda k, i, _at: _note(dropped, (k, i)))
    await a.start()
    await a.connected("ticket", "gone")
    await a.connected("ticket", "kept")
    a._count("ticket", "gone", -1)  # the page closed while Redis did not answer: only this node knows
    a._healthy_since = None  # as the failed command leaves it
    await a.beat()  # Redis answers again
    assert dropped == [("ticket", "gone")]  # its grace period starts now
    assert await a.connections("ticket", "gone") == 0
    assert await a.connections("ticket", "kept") == 1


@pytest.mark.redis
async def test_no_node_is_declared_dead_until_this_one_has_beaten_for_a_while(make_node) -> None:
    """After a Redis outage (or a stall of its own), a node first beats ``dead_after`` long again: the others'
    heartbeats missed during the outage do not make them dead."""
    a, b = make_node("a"), make_node("b")
    await a.start()
    await b.start()
    await asyncio.sleep(FAST["dead_after"] * 1.5)  # nobody beat: as after an outage
    dead: list[str] = []
    a.on_node_dead(lambda n: _note(dead, n))
    run_a = asyncio.create_task(a.run())
    try:
        await b.beat()  # b beats again within dead_after of a's first good beat
        await asyncio.sleep(FAST["dead_after"] / 2)
        await b.beat()
        await asyncio.sleep(FAST["dead_after"] / 2)
        await b.beat()
        assert dead == []
    finally:
        run_a.cancel()
        await asyncio.gather(run_a, return_exceptions=True)


async def _note(into: list[Any], item: Any) -> None:
    into.append(item)


@pytest.mark.redis
async def test_a_stop_settles_its_counts_side_by_side_and_a_stop_cut_off_is_finished_by_a_survivor(
        make_node, monkeypatch) -> None:
    """A stopping node drops what it still counts and tells its listeners (the grace periods of its pages'
    tickets) concurrently, then leaves the registry. Cut off by its deadline halfway, it stays registered
    with an old heartbeat, and the survivor that reaps it tells every one not told yet."""
    import server.cluster as cluster_module

    monkeypatch.setattr(cluster_module, "DROP_CHUNK", 8)
    stopping, survivor = make_node("stopping"), make_node("survivor")
    told: list[tuple[str, str]] = []
    in_flight = most_in_flight = 0
    block_after: int | None = None

    async def listener(kind: str, ident: str, _closed_at: float | None) -> None:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(0)  # a listener waits for its store: the others run meanwhile
            if block_after is not None and len(told) >= block_after:
                await asyncio.Event().wait()  # the stop's deadline falls here
            told.append((kind, ident))
        finally:
            in_flight -= 1

    async def survivor_listener(kind: str, ident: str, _closed_at: float | None) -> None:
        told.append((kind, ident))

    stopping.on_connections_dropped(listener)
    survivor.on_connections_dropped(survivor_listener)
    for node in (stopping, survivor):
        await node.start()
    for k in range(40):
        await stopping.connected("ticket", f"t{k}")
    await survivor.connected("ticket", "t0")  # t0 keeps a page on the survivor: never told
    await stopping.stop()
    assert most_in_flight > 1  # side by side
    assert sorted(told) == sorted(("ticket", f"t{k}") for k in range(1, 40))
    assert "stopping" not in await _all_nodes(survivor)  # left the registry last

    # again, cut off after the first chunk
    told.clear()
    again = make_node("again")
    again.on_connections_dropped(listener)
    await again.start()
    for k in range(40, 80):
        await again.connected("ticket", f"t{k}")
    block_after = 8
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(again.stop(), 3.0)
    assert 8 <= len(told) < 40
    assert "again" in await _all_nodes(survivor)  # still registered, with an old heartbeat
    await asyncio.sleep(FAST["dead_after"] * 1.5)
    await survivor.beat()
    assert await survivor.reap() == ["again"]
    assert sorted(set(told)) == sorted(("ticket", f"t{k}") for k in range(40, 80))  # every one told
    assert await survivor.connections("ticket", "t79") == 0


@pytest.mark.redis
async def test_a_dead_node_s_noted_closes_reach_the_survivor_s_listeners(make_node) -> None:
    """Connections a node still counts although they closed (pages away) are noted with their close time; the
    survivor that drops a dead node's counts passes it on (the grace period starts from the close), and
    ``None`` for those still open. Noted again or taken back, in one write; the notes go with the node."""
    dead, survivor = make_node("dead"), make_node("survivor")
    dropped: dict[str, float | None] = {}
    survivor.on_connections_dropped(lambda k, i, at: _note_at(dropped, i, at))
    for node in (dead, survivor):
        await node.start()
    for t in ("away", "back", "open", "moved"):
        await dead.connected("ticket", t)
    await dead.note_closed("ticket", {"away": 1000.25, "back": 1001.5, "moved": 1002.0}, [])
    await dead.note_closed("ticket", {"moved": 1003.75}, ["back"])  # back: taken back; moved: closed again
    flat = await dead._resp.call("HGETALL", dead._node_closed("dead"))
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {"ticket:away": "1000.25", "ticket:moved": "1003.75"}
    await dead.note_closed("ticket", {}, [])  # nothing changed: nothing written
    await asyncio.sleep(FAST["dead_after"] * 1.5)  # the dead node never beats again
    await survivor.beat()
    assert await survivor.reap() == ["dead"]
    assert dropped == {"away": 1000.25, "back": None, "open": None, "moved": 1003.75}
    assert await survivor._resp.call("EXISTS", survivor._node_closed("dead")) == 0


async def _note_at(into: dict[str, float | None], ident: str, at: float | None) -> None:
    into[ident] = at


async def _all_nodes(node: RedisCluster) -> list[str]:
    return list(await node._resp.call("ZRANGE", node._nodes, 0, -1))


def test_a_relay_listener_subscribes_again_within_the_others_patience() -> None:
    """A relay listener backing off after failures must be listening again before another node, whose message
    found no listener, takes its media rooms over (review: a 2 s backoff against 0.5 s of patience split
    consultations over two nodes after an outage of Redis)."""
    from server.signaling import relay

    assert relay.RESUBSCRIBE_DELAY <= relay.RESUBSCRIBE_MAX_DELAY < relay.RESUBSCRIBE_GRACE
