"""Who serves citizens: only a clerk or a lead serves the departments of their account. An admin-only or a
moderator-only account holding departments serves none (empty dashboard, refusals as for a foreign
department), over HTTP and over the socket."""

from __future__ import annotations

import pytest

from server.http.keys import AUTH, ROOM
from server.queue.model import Clerk

from .app_fixtures import login
from .socket_clients import join as socket_join
from .socket_clients import staff_socket

PASSWORD = "correct horse battery"
JOIN = {"name": "Alex", "concern": "Reisepass", "language": "de", "interpreter": False, "consent": True}
ROLES = [(["clerk"], True), (["lead"], True), (["admin"], False), (["moderator"], False),
         (["admin", "moderator"], False), (["admin", "lead"], True)]


def test_a_clerk_value_serves_only_with_a_serving_role() -> None:
    assert Clerk("a", "A", frozenset({"x"}), frozenset({"clerk"})).departments == {"x"}
    assert Clerk("a", "A", frozenset({"x"}), frozenset({"lead", "admin"})).departments == {"x"}
    assert Clerk("a", "A", frozenset({"x"}), frozenset({"admin"})).departments == frozenset()
    assert Clerk("a", "A", frozenset({"x"}), frozenset({"moderator"})).departments == frozenset()


@pytest.mark.parametrize(("roles", "serves"), ROLES)
async def test_call_next_over_http_per_role(client, roles, serves):
    await client.app[AUTH].add_staff("sam", "Sam", PASSWORD, ["buergerbuero"], roles)
    h = {"X-CSRF-Token": await login(client, "sam")}
    resp = await client.post("/api/departments/buergerbuero/tickets", json=JOIN)
    ticket = (await resp.json())["ticket"]
    dash = await (await client.get("/api/staff/dashboard")).json()
    resp = await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
    body = await resp.json()
    if serves:
        assert [d["id"] for d in dash["departments"]] == ["buergerbuero"]
        assert resp.status == 200 and body["ticket"]["id"] == ticket["id"]
    else:
        # Nothing of the queue is shown, nothing can be done with its tickets.
        assert dash["departments"] == [] and "Alex" not in str(dash)
        assert (resp.status, body["error"]["code"]) == (403, "forbidden")
        resp = await client.post(f"/api/staff/tickets/{ticket['id']}/call", headers=h)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "ticket_not_found")
        assert (await client.app[ROOM].store.get_ticket(ticket["id"])).state.value == "waiting"


@pytest.mark.parametrize(("roles", "serves"), ROLES[:4])
async def test_call_next_over_the_socket_per_role(live_server, clients, roles, serves):
    await live_server.app[AUTH].add_staff("sam", "Sam", PASSWORD, ["buergerbuero"], roles)
    ticket = (await socket_join(live_server.url))["ticket"]
    staff = await staff_socket(live_server.url, "sam", PASSWORD)
    clients.append(staff)
    dash = await staff.wait_for("dashboard")
    ack = await staff.call("call_next", {"department": "buergerbuero"})
    if serves:
        assert [d["id"] for d in dash["departments"]] == ["buergerbuero"]
        assert ack["ok"] and ack["ticket"]["id"] == ticket["id"]
    else:
        assert dash["departments"] == []
        assert ack["error"]["code"] == "forbidden"
        assert (await staff.call("call", {"ticket": ticket["id"]}))["error"]["code"] == "ticket_not_found"
        assert (await live_server.room.store.get_ticket(ticket["id"])).state.value == "waiting"
