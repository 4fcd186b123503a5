"""The JSON API through a real in-process aiohttp server: what users do, and what is refused."""

from __future__ import annotations

import pytest

from server.http.keys import ROOM

from .app_fixtures import add_staff, login

JOIN = {"name": "Alex", "concern": "Reisepass", "language": "de", "interpreter": False, "consent": True}


async def join(client, department="buergerbuero", body=None, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.post(f"/api/departments/{department}/tickets", json=body or JOIN, headers=headers)
    return resp.status, await resp.json()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


async def test_health_and_departments(client):
    assert await (await client.get("/healthz")).json() == {"status": "ok", "store": "memory"}
    deps = {d["id"]: d for d in (await (await client.get("/api/departments")).json())["departments"]}
    assert deps["buergerbuero"]["open"] and not deps["standesamt"]["open"]
    assert deps["buergerbuero"]["staffed"] is False and deps["buergerbuero"]["estimate_minutes"] is None


async def test_join_then_read_my_ticket_and_positions(client):
    status, first = await join(client)
    assert status == 201 and first["ticket"]["position"] == 1 and len(first["token"]) >= 32
    _, second = await join(client, body={"consent": True})
    assert second["ticket"]["position"] == 2
    resp = await client.get("/api/tickets/me", headers=bearer(second["token"]))
    assert (await resp.json())["ticket"]["position"] == 2
    # The citizen's view never shows a token hash or another citizen's data.
    assert "token_hash" not in first["ticket"] and "name" not in first["ticket"]


@pytest.mark.parametrize(("department", "body", "status", "code"), [
    ("nope", JOIN, 404, "unknown_department"),
    ("standesamt", JOIN, 409, "department_closed"),
    ("buergerbuero", {**JOIN, "consent": False}, 400, "invalid_input"),
    ("buergerbuero", {**JOIN, "name": "x" * 61}, 400, "invalid_input"),
    ("buergerbuero", {**JOIN, "evil": 1}, 400, "invalid_input"),
    ("buergerbuero", {**JOIN, "interpreter": "ja"}, 400, "invalid_input"),
    ("buergerbuero", {**JOIN, "language": "xx"}, 400, "invalid_input"),
])
async def test_join_refusals_change_nothing(client, department, body, status, code):
    got_status, got = await join(client, department, body)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"]
    assert await client.app[ROOM].store.waiting_counts(["buergerbuero"]) == {"buergerbuero": 0}


async def test_malformed_and_oversized_bodies(client):
    resp = await client.post("/api/departments/buergerbuero/tickets", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_input")
    resp = await client.post("/api/departments/buergerbuero/tickets", data=b"[1,2]",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    big = {**JOIN, "concern": "x" * 40_000}
    resp = await client.post("/api/departments/buergerbuero/tickets", json=big)
    assert (resp.status, (await resp.json())["error"]["code"]) == (413, "payload_too_large")
    assert await client.app[ROOM].store.waiting_counts(["buergerbuero"]) == {"buergerbuero": 0}


async def test_full_queue(client):
    for _ in range(3):
        assert (await join(client, "bauamt"))[0] == 201
    status, body = await join(client, "bauamt")
    assert (status, body["error"]["code"]) == (409, "queue_full")


async def test_joins_per_address_are_limited(aiohttp_client, make_app):
    client = await aiohttp_client(make_app(joins_per_address=2))
    assert (await join(client))[0] == 201
    assert (await join(client))[0] == 201
    status, body = await join(client)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert await client.app[ROOM].store.waiting_counts(["buergerbuero"]) == {"buergerbuero": 2}


async def test_second_join_with_a_live_ticket_is_refused(client):
    _, first = await join(client)
    status, body = await join(client, "bauamt", token=first["token"])
    assert (status, body["error"]["code"]) == (409, "already_queued")
    # After leaving, the same browser may join again.
    assert (await client.delete("/api/tickets/me", headers=bearer(first["token"]))).status == 200
    assert (await join(client, "bauamt", token=first["token"]))[0] == 201


@pytest.mark.parametrize("token", ["", "short", "x" * 40, "y" * 500])
async def test_wrong_tokens_get_the_same_answer(client, token):
    await join(client)
    resp = await client.get("/api/tickets/me", headers=bearer(token) if token else {})
    assert resp.status == 404
    assert (await resp.json())["error"] == {"code": "ticket_not_found", "message": "ticket not found or expired"}


async def test_staff_login_refusals(client):
    await add_staff(client.app, "anna")
    for creds in ({"username": "anna", "password": "wrong password"}, {"username": "nobody", "password": "x"}):
        # (wrong types are invalid_input: tests/test_hardening_http.py)
        resp = await client.post("/api/session", json=creds)
        assert resp.status == 401
        assert (await resp.json())["error"]["message"] == "wrong username or password"
    assert (await client.get("/api/staff/dashboard")).status == 401


async def test_login_from_a_foreign_origin_is_refused(client):
    await add_staff(client.app, "anna")
    resp = await client.post("/api/session", json={"username": "anna", "password": "correct horse battery"},
                             headers={"Origin": "https://evil.example"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "csrf")


async def test_staff_actions_need_the_csrf_token(client):
    await add_staff(client.app, "anna")
    csrf = await login(client, "anna")
    await join(client)
    url = "/api/staff/departments/buergerbuero/call-next"
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}):
        resp = await client.post(url, headers=headers)
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "csrf")
    assert await client.app[ROOM].store.waiting_counts(["buergerbuero"]) == {"buergerbuero": 1}
    assert (await client.post(url, headers={"X-CSRF-Token": csrf})).status == 200


async def test_a_whole_consultation_over_http(client):
    await add_staff(client.app, "anna", departments=["buergerbuero", "bauamt"])
    csrf = await login(client, "anna")
    h = {"X-CSRF-Token": csrf}
    _, a = await join(client)
    _, b = await join(client, body={"consent": True, "name": "Bea"})
    dash = await (await client.get("/api/staff/dashboard")).json()
    tickets = dash["departments"][1]["tickets"]
    assert [t["name"] for t in tickets] == ["Alex", "Bea"] and "token_hash" not in tickets[0]

    called = (await (await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)).json())["ticket"]
    assert called["id"] == a["ticket"]["id"] and called["state"] == "called" and called["clerk"] == "anna"
    mine = (await (await client.get("/api/tickets/me", headers=bearer(a["token"]))).json())["ticket"]
    assert (mine["state"], mine["clerk_name"]) == ("called", "Anna")
    assert (await (await client.get("/api/tickets/me", headers=bearer(b["token"]))).json())["ticket"]["position"] == 1

    resp = await client.post("/api/tickets/me/answer", headers=bearer(a["token"]))
    assert (await resp.json())["ticket"]["state"] == "in_consultation"
    resp = await client.post(f"/api/staff/tickets/{a['ticket']['id']}/transfer", headers=h,
                             json={"department": "bauamt", "note": "Bauantrag"})
    moved = (await resp.json())["ticket"]
    assert (moved["department"], moved["transferred_from"], moved["transfer_note"]) == (
        "bauamt", "buergerbuero", "Bauantrag")
    # In the Bauamt, the transferred citizen is called next: arrival order is kept.
    resp = await client.post("/api/staff/departments/bauamt/call-next", headers=h)
    assert (await resp.json())["ticket"]["id"] == a["ticket"]["id"]
    resp = await client.post(f"/api/staff/tickets/{a['ticket']['id']}/finish", headers=h)
    assert (await resp.json())["ticket"]["state"] == "done"
    # A finished ticket can't be acted on again.
    resp = await client.post(f"/api/staff/tickets/{a['ticket']['id']}/finish", headers=h)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "illegal_transition")


async def test_transfer_refusals(client):
    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    await join(client)
    t = (await (await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)).json())["ticket"]
    for body, code in (({"department": "nope"}, "unknown_department"), ({}, "invalid_input"),
                       ({"department": "bauamt", "note": 5}, "invalid_input"),
                       ({"department": "buergerbuero"}, "invalid_input")):
        resp = await client.post(f"/api/staff/tickets/{t['id']}/transfer", headers=h, json=body)
        assert (await resp.json())["error"]["code"] == code
    still = await client.app[ROOM].store.get_ticket(t["id"])
    assert still.state.value == "called" and still.department == "buergerbuero"


async def test_foreign_department_tickets_look_missing(client):
    await add_staff(client.app, "anna", departments=["buergerbuero"])
    h = {"X-CSRF-Token": await login(client, "anna")}
    _, bau = await join(client, "bauamt")
    resp = await client.post(f"/api/staff/tickets/{bau['ticket']['id']}/call", headers=h)
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "ticket_not_found")
    resp = await client.post("/api/staff/departments/bauamt/call-next", headers=h)
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
    resp = await client.post("/api/staff/departments/nope/call-next", headers=h)
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "unknown_department")


async def test_second_clerk_cannot_take_a_called_citizen(client, aiohttp_client):
    await add_staff(client.app, "anna")
    await add_staff(client.app, "ben")
    other = await aiohttp_client(client.server)
    ha = {"X-CSRF-Token": await login(client, "anna")}
    hb = {"X-CSRF-Token": await login(other, "ben")}
    _, a = await join(client)
    tid = a["ticket"]["id"]
    assert (await client.post(f"/api/staff/tickets/{tid}/call", headers=ha)).status == 200
    resp = await other.post(f"/api/staff/tickets/{tid}/call", headers=hb)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "illegal_transition")
    resp = await other.post(f"/api/staff/tickets/{tid}/finish", headers=hb)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "not_your_ticket")


async def test_presence_and_estimate(client):
    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    resp = await client.put("/api/staff/presence", headers=h, json={"status": "available"})
    assert await resp.json() == {"status": "available"}
    deps = {d["id"]: d for d in (await (await client.get("/api/departments")).json())["departments"]}
    assert deps["buergerbuero"]["staffed"] and deps["buergerbuero"]["estimate_minutes"] == [4, 8]
    resp = await client.put("/api/staff/presence", headers=h, json={"status": "busy"})
    assert (await resp.json())["error"]["code"] == "invalid_input"
    await join(client)
    await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
    # Holding a ticket, the clerk is busy whatever they choose.
    resp = await client.put("/api/staff/presence", headers=h, json={"status": "away"})
    assert await resp.json() == {"status": "busy"}


async def test_logout_ends_the_session(client):
    await add_staff(client.app, "anna")
    csrf = await login(client, "anna")
    assert (await client.get("/api/session")).status == 200
    assert (await client.delete("/api/session", headers={"X-CSRF-Token": csrf})).status == 200
    assert (await client.get("/api/session")).status == 401


async def test_removed_account_loses_its_session(client):
    await add_staff(client.app, "anna")
    await login(client, "anna")
    await client.app[ROOM].store.delete_staff("anna")
    assert (await client.get("/api/staff/dashboard")).status == 401


async def test_no_names_or_concerns_in_logs(client, caplog):
    caplog.set_level("DEBUG")
    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    await join(client, body={**JOIN, "name": "Zacharias Geheim", "concern": "Steuerschulden"})
    resp = await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
    tid = (await resp.json())["ticket"]["id"]
    await client.post(f"/api/staff/tickets/{tid}/transfer", headers=h,
                      json={"department": "bauamt", "note": "Vertraulicher Vermerk"})
    text = caplog.text
    assert "waiting -> called" in text or "called" in text
    for secret in ("Zacharias", "Geheim", "Steuerschulden", "Vertraulicher"):
        assert secret not in text
