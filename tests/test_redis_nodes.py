"""Several server processes on one Redis: atomic "call next", a restart keeps the queues, and emits
reach sockets on other nodes. Each "node" is a full app on its own port sharing a real Redis."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .socket_clients import citizen_socket, join, staff_socket

pytestmark = pytest.mark.redis
PASSWORD = "correct horse battery"


@pytest.fixture
async def nodes(make_live_server, redis_url, redis_prefix):
    async def start():
        return await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)

    return start


async def test_health_reports_redis(nodes):
    node = await nodes()
    async with aiohttp.ClientSession() as http:
        assert await (await http.get(f"{node.url}/healthz")).json() == {"status": "ok", "store": "redis"}


async def test_two_nodes_calling_next_at_once_never_get_the_same_citizen(nodes):
    a, b = await nodes(), await nodes()
    await a.add_staff("anna", PASSWORD, ["buergerbuero"])
    await a.add_staff("ben", PASSWORD, ["buergerbuero"])  # staff accounts live in Redis: node b sees them
    tickets = await asyncio.gather(*(join(a.url if i % 2 else b.url) for i in range(12)))
    anna = await staff_socket(a.url, "anna", PASSWORD)
    ben = await staff_socket(b.url, "ben", PASSWORD)
    try:
        got: list[str] = []
        for _ in range(6):
            acks = await asyncio.gather(anna.call("call_next", {"department": "buergerbuero"}),
                                        ben.call("call_next", {"department": "buergerbuero"}))
            assert all(ack.get("ok") for ack in acks), acks
            got += [ack["ticket"]["id"] for ack in acks]
            await asyncio.gather(anna.call("finish", {"ticket": acks[0]["ticket"]["id"]}),
                                 ben.call("finish", {"ticket": acks[1]["ticket"]["id"]}))
        assert sorted(got) == sorted(t["ticket"]["id"] for t in tickets)  # each citizen exactly once
        empty = await anna.call("call_next", {"department": "buergerbuero"})
        assert empty["error"]["code"] == "queue_empty"
    finally:
        await anna.close()
        await ben.close()


async def test_a_restarted_server_keeps_its_queues_and_citizens_their_place(nodes):
    node = await nodes()
    first, second = await join(node.url), await join(node.url, "bauamt")
    mine = await join(node.url)
    await node.stop()

    restarted = await nodes()
    async with aiohttp.ClientSession() as http:
        deps = {d["id"]: d for d in (await (await http.get(f"{restarted.url}/api/departments")).json())["departments"]}
        assert (deps["buergerbuero"]["waiting"], deps["bauamt"]["waiting"]) == (2, 1)
    c = await citizen_socket(restarted.url, mine["token"])
    try:
        view = await c.wait_for("ticket")
        assert (view["id"], view["position"]) == (mine["ticket"]["id"], 2)
    finally:
        await c.close()
    assert first["ticket"]["seq"] < mine["ticket"]["seq"] and second


async def test_a_call_on_one_node_reaches_the_citizen_on_another(nodes):
    a, b = await nodes(), await nodes()
    await a.add_staff("anna", PASSWORD, ["buergerbuero"])
    mine = await join(b.url)
    citizen = await citizen_socket(b.url, mine["token"])
    clerk = await staff_socket(a.url, "anna", PASSWORD)
    try:
        await citizen.wait_for("ticket")
        assert (await clerk.call("call_next", {"department": "buergerbuero"}))["ok"]
        called = await citizen.wait_for("ticket", lambda t: t["state"] == "called")
        assert called["clerk_name"] == "Anna"
    finally:
        await citizen.close()
        await clerk.close()
