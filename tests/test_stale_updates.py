"""A waiting page is never handed a cached ``queue`` update that does not list it, and a node keeps the newest
update any node broadcast (issue 11: with several nodes, a change made on node A is not in node B's ``_dirty``,
and B handed pages connecting to it an update from before their own check-in).

Unit level, on one app with the memory store: a change "made on another node" is a change whose event this
node's ``_dirty`` did not keep (cleared below). tests/test_cluster_nodes.py shows the same with two real
processes on one Redis."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
import socketio
from aiohttp import web

from server.app import SIGNALING
from server.http.keys import ROOM
from server.queue.model import JoinRequest
from server.signaling.hub import Signaling
from server.signaling.managers import ClosingRedisManager, encode_event
from server.waitingroom import WaitingRoom

DEPARTMENT = "buergerbuero"


@pytest.fixture
def node(make_app) -> tuple[Signaling, WaitingRoom]:
    app: web.Application = make_app(position_interval=30.0)  # a cached update stays fresh for the whole test
    return app[SIGNALING], app[ROOM]


async def check_in(room: WaitingRoom, name: str) -> int:
    ticket, _ = await room.join(DEPARTMENT, JoinRequest(name=name, consent=True), "192.0.2.1")
    return ticket.seq


def seqs(update: dict[str, Any]) -> list[int]:
    return list(itertools.accumulate(update["w"]))


async def changed_elsewhere(signaling: Signaling, room: WaitingRoom, name: str) -> int:
    """A check-in this node's ``_dirty`` does not know of, as one made over HTTP on another node."""
    seq = await check_in(room, name)
    signaling._dirty.discard(DEPARTMENT)
    return seq


async def test_a_waiting_page_whose_seq_the_cached_update_lacks_gets_a_fresh_one(node):
    signaling, room = node
    first = await check_in(room, "Erste")
    cached, _ = await signaling._queue_update(DEPARTMENT, first)
    signaling._dirty.discard(DEPARTMENT)
    late = await changed_elsewhere(signaling, room, "Spät")
    assert DEPARTMENT not in signaling._dirty  # nothing here says the department changed

    update, _ = await signaling._queue_update(DEPARTMENT, late)
    assert update is not cached and seqs(update) == [first, late]


async def test_an_update_made_again_with_nothing_changed_keeps_the_time_the_pages_hold(node):
    """A page connecting after the cached update aged out, with nothing changed since, gets the update the
    department's pages hold (same ``t``), not a copy with a later ``t`` that would leave every other page
    of the department looking behind it (the bench counted 499 such pages at the end of a run)."""
    signaling, room = node
    first = await check_in(room, "Erste")
    cached, encoded = await signaling._queue_update(DEPARTMENT, first)
    held = signaling._updates[DEPARTMENT]
    signaling._updates[DEPARTMENT] = (held[0] - 3600, *held[1:])  # aged out
    room.clock = lambda: cached["t"] + 5  # made later: a fresh one would carry a later t

    update, again = await signaling._queue_update(DEPARTMENT, first)
    assert update is cached and again is encoded and update["t"] == cached["t"]
    late = await check_in(room, "Spät")  # something changes: then it is a new update, with its own time
    signaling._updates[DEPARTMENT] = (signaling._updates[DEPARTMENT][0] - 3600, *signaling._updates[DEPARTMENT][1:])
    update, _ = await signaling._queue_update(DEPARTMENT, late)
    assert seqs(update) == [first, late] and update["t"] > cached["t"]


async def test_an_update_nothing_changed_since_is_shared_for_longer_than_an_interval(make_app):
    """In a reconnect storm nothing changes: each department's update is made once and shared with every page
    connecting for up to HELD_SECONDS (not made anew every ``position_interval``); older, or once the
    department changed, it is made again."""
    from server.signaling import hub

    app: web.Application = make_app(position_interval=0.2)
    signaling, room = app[SIGNALING], app[ROOM]
    first = await check_in(room, "Erste")
    cached, encoded = await signaling._queue_update(DEPARTMENT, first)
    signaling._dirty.discard(DEPARTMENT)
    held = signaling._updates[DEPARTMENT]
    signaling._updates[DEPARTMENT] = (held[0] - 5 * 0.2, *held[1:])  # five intervals old, nothing changed
    made = []
    make = room.queue_update

    async def counted(department: str) -> dict[str, Any]:
        made.append(department)
        return await make(department)

    room.queue_update = counted  # type: ignore[method-assign]
    update, again = await signaling._queue_update(DEPARTMENT, first)
    assert update is cached and again is encoded and made == []  # not read again

    signaling._updates[DEPARTMENT] = (held[0] - hub.HELD_SECONDS - 1, *held[1:])
    late = await check_in(room, "Spät")
    signaling._dirty.discard(DEPARTMENT)  # (a change only a fresh read sees: older than HELD_SECONDS)
    update, _ = await signaling._queue_update(DEPARTMENT, None)
    assert seqs(update) == [first, late] and made == [DEPARTMENT]


async def test_pages_connecting_together_share_one_computation_of_the_update(node):
    """In a storm thousands of pages connect at once: when the held update is too old, the first page's
    computation is shared by those arriving while it runs (each made its own: a storm whose held updates had
    aged out cost half as much again), except a waiting page that computation does not list."""
    signaling, room = node
    first = await check_in(room, "Erste")
    made: list[str] = []
    make = room.queue_update
    gate = asyncio.Event()

    async def slow(department: str) -> dict[str, Any]:
        made.append(department)
        update = await make(department)
        if len(made) == 1:
            await gate.wait()  # the store's answer takes a while
        return update

    room.queue_update = slow  # type: ignore[method-assign]
    pages = [asyncio.ensure_future(signaling._queue_update(DEPARTMENT, seq)) for seq in (first, None, first)]
    for _ in range(3):
        await asyncio.sleep(0)
    late = await changed_elsewhere(signaling, room, "Spät")  # checked in meanwhile: not in the shared one
    pages.append(asyncio.ensure_future(signaling._queue_update(DEPARTMENT, late)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert made == [DEPARTMENT]
    gate.set()
    results = await asyncio.gather(*pages)
    assert results[0] == results[1] == results[2] and seqs(results[0][0]) == [first]
    assert seqs(results[3][0]) == [first, late] and made == [DEPARTMENT, DEPARTMENT]


async def test_a_department_whose_broadcast_failed_is_told_at_its_next_slot(make_app):
    """A broadcast that fails (the store did not answer) leaves the department changed: it is sent at its next
    slot, and meanwhile no held update is shared as if nothing had changed."""
    app: web.Application = make_app(position_interval=0.2)
    signaling = app[SIGNALING]
    send = signaling._send_department
    sent: list[str] = []

    async def failing_once(department: str) -> None:
        sent.append(department)
        if len(sent) == 1:
            raise RuntimeError("the store did not answer")
        await send(department)

    signaling._send_department = failing_once  # type: ignore[method-assign]
    signaling._dirty.add(DEPARTMENT)
    loop = asyncio.ensure_future(signaling.broadcast_positions())
    try:
        async def told_twice() -> None:
            while len(sent) < 2:  # noqa: ASYNC110 - the loop runs on its own schedule
                assert not loop.done()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(told_twice(), 15)
    finally:
        loop.cancel()
    assert sent[:2] == [DEPARTMENT, DEPARTMENT]


@pytest.mark.parametrize(("who", "shared"), [
    ("listed", True),  # a waiting page the cached update lists: shared (a reconnect storm costs one computation)
    ("not waiting", True),  # a called or ended ticket's page (seq None) has no place to find in it
    ("missing", False),  # a waiting page it does not list: made fresh, whatever _dirty says
])
async def test_which_pages_share_the_cached_update(node, who, shared):
    signaling, room = node
    first = await check_in(room, "Erste")
    cached, encoded = await signaling._queue_update(DEPARTMENT, first)
    signaling._dirty.discard(DEPARTMENT)
    late = await changed_elsewhere(signaling, room, "Spät")
    seq = {"listed": first, "not waiting": None, "missing": late}[who]

    update, again = await signaling._queue_update(DEPARTMENT, seq)
    assert (update is cached and again is encoded) is shared
    if not shared:
        assert seqs(update) == [first, late]


async def test_a_broadcast_heard_from_another_node_replaces_an_older_cached_update(node):
    signaling, room = node
    first = await check_in(room, "Erste")
    mine, _ = await signaling._queue_update(DEPARTMENT, first)
    second = await changed_elsewhere(signaling, room, "Zweite")
    theirs = {**await room.queue_update(DEPARTMENT), "t": mine["t"] + 0.5}  # another node's, made after ours
    signaling._heard_update(DEPARTMENT, theirs, "encoded by the manager")

    update, encoded = await signaling._queue_update(DEPARTMENT, first)
    assert update is theirs and encoded == "encoded by the manager"  # shared as is, not encoded again
    assert seqs(update) == [first, second]

    older = {**mine, "t": mine["t"] + 0.1}  # arriving late, made before the one held: never handed out ...
    signaling._heard_update(DEPARTMENT, older, "older")
    again, _ = await signaling._queue_update(DEPARTMENT, first)
    assert again is not older and seqs(again) == [first, second]
    # ... and, since it says something else than the one held, that one is not trusted either: by its time
    # alone, a stale update held (read before another node's change, stamped after it) looks newer. The
    # next page gets a fresh one.
    assert again is not theirs
    same = {**again, "t": again["t"] - 0.5}  # older, saying the same: the held one stays
    signaling._heard_update(DEPARTMENT, same, "same")
    assert (await signaling._queue_update(DEPARTMENT, first))[0] is again


async def test_a_heard_update_is_as_old_as_when_it_was_made(node):
    """The broadcast of a node whose loop was stalled (or that arrives late) is not shared for longer than
    ``position_interval`` counted from when it was made."""
    signaling, room = node
    before = await room.queue_update(DEPARTMENT)  # the queue before the check-in below
    first = await check_in(room, "Erste")
    stale = {**before, "w": [first], "a": before["a"] + 1, "t": room.clock() - 60.0}  # a minute old, says otherwise
    signaling._heard_update(DEPARTMENT, stale, "stale")
    update, _ = await signaling._queue_update(DEPARTMENT, first)
    assert update is not stale and update["t"] > stale["t"] and update["a"] == before["a"]
    # Made again and found to say exactly the same as the old one: the old one (with its time) is kept.
    same = {**update, "t": room.clock() - 60.0}
    signaling._updates.clear()
    signaling._heard_update(DEPARTMENT, same, "same")
    assert (await signaling._queue_update(DEPARTMENT, first))[0] is same


@pytest.mark.redis
async def test_the_redis_manager_hands_every_department_update_it_delivers_to_the_signaling(redis_url):
    """``ClosingRedisManager._handle_emit``: a ``queue`` to a department's room (``d:<id>``), from another node
    or this one, is handed over with its encoded event, even with no page of the department here; other
    events and rooms are not."""
    channel = f"test-stale-{uuid.uuid4().hex}"
    sender, receiver = ClosingRedisManager(redis_url, channel=channel), ClosingRedisManager(redis_url, channel=channel)
    heard: list[tuple[str, Any, Any]] = []
    arrived = asyncio.Event()

    def on_queue(department: str, update: dict[str, Any], encoded: Any) -> None:
        heard.append((department, update, encoded))
        arrived.set()

    receiver.on_queue = on_queue
    for m in (sender, receiver):
        socketio.AsyncServer(async_mode="aiohttp", client_manager=m)  # the manager keeps its server
        m.initialize()
    try:
        async with asyncio.timeout(15):
            while not (receiver.pubsub is not None and receiver.pubsub.subscribed):  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)  # the listener subscribes in the background
            update = {"d": "buergerbuero", "t": 1.5, "w": [3, 1]}
            await sender.emit("load", {"d": "buergerbuero"}, namespace="/", room="s:buergerbuero")
            await sender.emit("queue", {"d": "bauamt", "t": 1.0, "w": []}, namespace="/", room="t:ticket")
            await sender.emit("queue", update, namespace="/", room="d:buergerbuero")
            await arrived.wait()
        assert heard == [("buergerbuero", update, encode_event(receiver.server, "queue", update))]
    finally:
        for m in (sender, receiver):
            await m.close()


async def test_an_update_every_page_was_just_told_is_not_broadcast_again(node, monkeypatch):
    """With several nodes, check-ins land on one and calls on another: both have the department to tell at
    their slots, and every page got each update twice (round 10: two nodes spent half as much CPU again as
    one, most of it fanning out the second copy). A node leaves out a queue update saying what every page was
    told within the last two intervals, by itself or by another node (heard through Redis); the dashboards'
    ``load`` still goes."""
    signaling, room = node
    await check_in(room, "Erste")
    emitted: list[tuple[str, Any]] = []

    async def emit(event: str, data: Any, **kwargs: Any) -> None:
        if event in ("queue", "load"):  # (a check-in's "ticket" events go out as they happen)
            emitted.append((event, data))

    monkeypatch.setattr(signaling.sio, "emit", emit)
    await signaling._send_department(DEPARTMENT)
    await signaling._send_department(DEPARTMENT)  # the other node's slot, nothing changed in between
    assert [e for e, _ in emitted] == ["queue", "load", "load"]

    emitted.clear()
    second = await changed_elsewhere(signaling, room, "Zweite")
    theirs = {**await room.queue_update(DEPARTMENT), "t": room.clock() + 0.1}  # the other node told every page
    signaling._heard_update(DEPARTMENT, theirs, "encoded by the manager")
    await signaling._send_department(DEPARTMENT)
    assert [e for e, _ in emitted] == ["load"]

    emitted.clear()
    third = await check_in(room, "Dritte")  # something new: told
    await signaling._send_department(DEPARTMENT)
    assert [e for e, _ in emitted] == ["queue", "load"] and seqs(emitted[0][1])[-2:] == [second, third]


@pytest.mark.redis
async def test_one_node_tells_a_department_at_its_slot(make_app, redis_url, redis_prefix):
    """Slots follow the wall clock, the same on every node; of the nodes that changed a department, the first to
    claim its slot tells it (round 10: with three nodes each told it, 506 updates where one node sends 314).
    One node claims nothing."""
    from server.cluster import CLUSTER

    nodes = [make_app(None, redis_url=redis_url, redis_prefix=redis_prefix) for _ in range(2)]
    a, b = (app[SIGNALING] for app in nodes)
    assert a._others_hear and b._others_hear
    try:
        slot = 12_345_678 + uuid.uuid4().int % 1000  # a slot number no other test claims
        won = [await a._claim_slot(DEPARTMENT, slot, 0.05), await b._claim_slot(DEPARTMENT, slot, 0.05)]
        assert won == [True, False]
        assert await b._claim_slot(DEPARTMENT, slot + 1, 0.05)  # the next slot: whoever comes first
        assert await b._claim_slot("bauamt", slot, 0.05)  # another department's: its own
    finally:
        for app in nodes:
            await app[CLUSTER].close()
    alone = make_app()[SIGNALING]
    assert not alone._others_hear and await alone._claim_slot(DEPARTMENT, 1, 0.05)
