"""A citizen's page that closes and comes back within ``page_away_seconds`` was never away (server/signaling/
hub.py: ``Signaling._away``): no ``disconnected``, no store write for the close nor for the return; one
that stays away starts the grace period from the moment it closed. Real socket.io clients against the
whole app, on the memory store and on Redis. Two nodes: tests/test_cluster_nodes.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.app import SIGNALING

from .socket_clients import WAIT, citizen_socket, join, staff_socket

AWAY = 1.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def server(request, make_live_server):
    if request.param == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url"),
                 "redis_prefix": request.getfixturevalue("redis_prefix")}
        return await make_live_server(None, page_away_seconds=AWAY, **redis)
    return await make_live_server(page_away_seconds=AWAY)


async def _disconnected_at(store, ticket_id: str) -> float:
    while (t := await store.get_ticket(ticket_id)).disconnected_at is None:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polls a condition in the store; no event to wait on
    return t.disconnected_at


async def test_a_page_back_within_its_away_period_was_never_away(server, clients):
    await server.add_staff("anna", "correct horse battery", ["buergerbuero"])
    clerk = await staff_socket(server.url, "anna", "correct horse battery")
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    mine = await join(server.url)
    ticket_id = mine["ticket"]["id"]
    page = await citizen_socket(server.url, mine["token"])
    assert (await page.wait_for("ticket"))["position"] == 1
    signaling = server.app[SIGNALING]
    heard = []

    async def listener(events):
        heard.extend(e.kind for e in events)

    server.room.on_events(listener)
    await page.close()
    assert ticket_id in signaling._away  # the close wrote nothing yet
    again = await citizen_socket(server.url, mine["token"])  # the reload
    clients.append(again)
    view = await again.wait_for("ticket")
    assert (view["id"], view["state"], view["position"]) == (ticket_id, "waiting", 1)
    assert ticket_id not in signaling._away  # nothing left to settle: the ticket was never away
    assert heard == []
    assert (await server.room.store.get_ticket(ticket_id)).disconnected_at is None
    assert await signaling.cluster.connections("ticket", ticket_id) == 1
    await clerk.wait_for("connectivity", lambda m: ticket_id in m["tickets"])  # connected since the check-in
    assert not [m for n, m in clerk.events if n == "connectivity" and m["tickets"].get(ticket_id)
                and m["tickets"][ticket_id] > mine["ticket"]["arrived_at"]]


async def test_a_page_that_stays_away_starts_the_grace_period_from_its_close(server, clients):
    mine = await join(server.url)
    ticket_id = mine["ticket"]["id"]
    page = await citizen_socket(server.url, mine["token"])
    await page.wait_for("ticket")
    signaling = server.app[SIGNALING]
    closed = time.time()
    await page.close()
    at = await asyncio.wait_for(_disconnected_at(server.room.store, ticket_id), WAIT)
    assert time.time() >= closed + AWAY
    assert closed - 0.5 <= at <= closed + 0.5  # from the close, not from the settling
    assert ticket_id not in signaling._away
    assert await signaling.cluster.connections("ticket", ticket_id) == 0
    again = await citizen_socket(server.url, mine["token"])  # back later: connected again, as before
    clients.append(again)
    assert (await again.wait_for("ticket"))["state"] == "waiting"
    assert (await server.room.store.get_ticket(ticket_id)).disconnected_at is None


async def test_pages_away_when_the_server_stops_start_their_grace_period_then(make_live_server, clients):
    """The stop (SIGTERM) settles the pages still in their away period at once, from when they closed:
    none is left without a grace period."""
    server = await make_live_server(page_away_seconds=60)
    mine = await join(server.url)
    page = await citizen_socket(server.url, mine["token"])
    await page.wait_for("ticket")
    closed = time.time()
    await page.close()
    signaling = server.app[SIGNALING]
    assert mine["ticket"]["id"] in signaling._away
    await signaling.shutdown()
    ticket = await server.room.store.get_ticket(mine["ticket"]["id"])
    assert ticket.disconnected_at is not None and closed - 0.5 <= ticket.disconnected_at <= closed + 0.5
    assert not signaling._away


def test_page_away_seconds_is_validated(tmp_path):
    from server.settings import ConfigError

    from .app_fixtures import make_settings

    for bad in (-1, 121):
        with pytest.raises(ConfigError, match="page_away_seconds"):
            make_settings(tmp_path, page_away_seconds=bad)
    assert make_settings(tmp_path, page_away_seconds=0).page_away_seconds == 0


async def test_a_settling_that_fails_is_tried_again_and_the_others_still_settle(server, clients):
    """The store refusing a write while a page is settled (Redis READONLY after a failover, OOM): that ticket
    is settled again later, its grace period still from the close, and the pages closing after it are
    settled as usual (the settling loop once died of such an error: those tickets never got a grace period)."""
    first, second = await join(server.url), await join(server.url)
    pages = [await citizen_socket(server.url, t["token"]) for t in (first, second)]
    for p in pages:
        await p.wait_for("ticket")
    room = server.room
    disconnect = room.citizen_disconnected
    failed = []

    async def refused_once(ticket_id, closed_at=None):
        if not failed:
            failed.append(ticket_id)
            raise RuntimeError("READONLY You can't write against a read only replica.")
        return await disconnect(ticket_id, closed_at)

    room.citizen_disconnected = refused_once
    closed = time.time()
    await pages[0].close()
    at = await asyncio.wait_for(_disconnected_at(room.store, first["ticket"]["id"]), WAIT)
    assert failed == [first["ticket"]["id"]]  # refused once, settled on the next try ...
    assert closed - 0.5 <= at <= closed + 0.5  # ... from the close
    closed = time.time()
    await pages[1].close()  # the settling goes on
    at = await asyncio.wait_for(_disconnected_at(room.store, second["ticket"]["id"]), WAIT)
    assert closed - 0.5 <= at <= closed + 0.5


async def test_the_away_period_is_never_longer_than_the_grace_period(make_live_server, clients):
    """An admin may shorten the grace period at /admin/settings (to 0 even): a page closing then is settled
    within that, not after ``page_away_seconds``."""
    server = await make_live_server(page_away_seconds=60, grace_seconds=0.5)
    mine = await join(server.url)
    page = await citizen_socket(server.url, mine["token"])
    await page.wait_for("ticket")
    await page.close()
    await asyncio.wait_for(_disconnected_at(server.room.store, mine["ticket"]["id"]), WAIT)


@pytest.mark.redis
async def test_the_stop_notes_the_latest_closes_for_a_survivor(make_live_server, redis_url, redis_prefix, clients):
    """A page that closed less than a round before the stop: noted in Redis by the stop itself, before the
    cluster's stop, so that a survivor reaping this node (should its stop fail) starts the grace period from the
    close too (review)."""
    server = await make_live_server(None, page_away_seconds=60, redis_url=redis_url, redis_prefix=redis_prefix)
    mine = await join(server.url)
    page = await citizen_socket(server.url, mine["token"])
    await page.wait_for("ticket")
    signaling = server.app[SIGNALING]
    await page.close()
    ticket_id = mine["ticket"]["id"]
    assert ticket_id in signaling._away  # (noted by its round within a second, or else by the stop)
    closed_at = signaling._away[ticket_id][1]
    await signaling.shutdown()
    key = f"{redis_prefix}node:{signaling.cluster.node_id}:closed"
    noted = await signaling.cluster._resp.call("HGET", key, f"ticket:{ticket_id}")
    assert noted is not None and float(noted) == closed_at
