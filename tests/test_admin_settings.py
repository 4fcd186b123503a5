"""/admin/settings and /api/admin/settings: server-wide settings an admin changes at runtime. Only admins
(leads and clerks get 404); a change takes effect at once (answer time, grace, check-in limit), is live on a
second node sharing Redis, is kept across a restart of the embedded store, bad input and stale revisions
change nothing, and every change is audited (``settings.changed``)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.http.auth import hash_password
from server.http.keys import AUDIT, AUTH, ROOM
from server.queue.errors import AnswerTimeRunning
from server.queue.model import Clerk, JoinRequest, TicketState
from server.store.audit import AuditQuery
from server.store.base import StaffAccount

from .app_fixtures import login

PASSWORD = "correct horse battery"
API = "/api/admin/settings"
ANNA = Clerk("anna", "Anna", frozenset({"buergerbuero", "bauamt"}))


@functools.cache
def _hash() -> str:
    return hash_password(PASSWORD)


async def _staff(app: web.Application) -> None:
    for username, roles, departments in (("clara", ["clerk"], ["buergerbuero"]),
                                         ("lena", ["clerk", "lead"], ["buergerbuero"]), ("adam", ["admin"], [])):
        account = StaffAccount(username, username.title(), _hash(), tuple(roles), tuple(departments))
        await app[AUTH].store.put_staff(account)


async def _client(aiohttp_client: Any, app: web.Application, username: str) -> tuple[Any, dict[str, str]]:
    client = await aiohttp_client(app)
    return client, {"X-CSRF-Token": await login(client, username, PASSWORD)}


async def _entries(app: web.Application) -> list[Any]:
    page = await app[AUDIT].query(AuditQuery(action="settings", limit=50))
    return [e for e in page.entries if e.action == "settings.changed"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_only_admins_see_and_change_the_settings(aiohttp_client, app):
    await _staff(app)
    for username in ("clara", "lena"):
        client, headers = await _client(aiohttp_client, app, username)
        page = await client.get("/admin/settings", allow_redirects=False)
        assert page.status == 404 and "text/html" in page.headers["Content-Type"], username
        for method, body in (("GET", None), ("PATCH", {"revision": 0, "answer_seconds": 5})):
            resp = await client.request(method, API, json=body, headers=headers)
            assert (resp.status, (await resp.json())["error"]["code"]) == (404, "not_found"), (username, method)
        admin_page = await client.get("/admin")
        if username == "lena":  # the lead's /admin has no settings entry
            assert admin_page.status == 200 and 'href="/admin/settings"' not in await admin_page.text()
    visitor = await aiohttp_client(app)
    page = await visitor.get("/admin/settings", allow_redirects=False)
    assert (page.status, page.headers["Location"]) == (303, "/staff")
    assert (await visitor.get(API)).status == 401
    adam, _ = await _client(aiohttp_client, app, "adam")
    page = await adam.get("/admin/settings")
    html = await page.text()
    assert page.status == 200 and 'aria-current="page"' in html and 'for="setting-answer_seconds"' in html
    for path in ("/admin", "/admin/staff", "/admin/stats", "/admin/audit"):  # every admin page links it
        assert 'href="/admin/settings"' in await (await adam.get(path)).text(), path
    body = await (await adam.get(API)).json()
    assert body["revision"] == 0 and body["changed"] == []
    assert body["settings"] == body["configured"] and body["settings"]["answer_seconds"] == 120
    assert app[ROOM].live("answer_seconds") == 120


async def test_a_change_takes_effect_at_once_and_is_audited(aiohttp_client, app):
    await _staff(app)
    room = app[ROOM]
    room.clock = clock = Clock()
    adam, headers = await _client(aiohttp_client, app, "adam")
    resp = await adam.patch(API, json={"revision": 0, "answer_seconds": 5, "grace_seconds": 30,
                                       "joins_per_address": 1, "rejoin_seconds": 600}, headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["revision"] == 1 and body["settings"]["answer_seconds"] == 5.0
    assert body["changed"] == ["answer_seconds", "grace_seconds", "joins_per_address", "rejoin_seconds"]

    # answer time: a no-show is possible after 5 s instead of 120 s
    first, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    called = await room.call_next(ANNA, "buergerbuero")
    assert (await room.citizen_view(called))["answer_seconds_left"] == 5
    clock.now += 4
    with pytest.raises(AnswerTimeRunning):
        await room.no_show(ANNA, first.id)
    clock.now += 1
    assert (await room.no_show(ANNA, first.id)).state is TicketState.NO_SHOW
    # grace: a citizen whose page never connected loses the place after 30 s instead of 300 s
    second, _ = await room.join("bauamt", JoinRequest(consent=True), "10.0.0.2")
    clock.now += 31
    assert await room.sweep() == 1
    assert (await room.store.get_ticket(second.id)).state is TicketState.EXPIRED
    # check-in limit: one per address
    assert (await adam.post("/api/departments/bauamt/tickets", json={"consent": True})).status == 201
    limited = await adam.post("/api/departments/bauamt/tickets", json={"consent": True})
    assert (limited.status, (await limited.json())["error"]["code"]) == (429, "rate_limited")

    entries = await _entries(app)
    assert [(e.actor, e.target, e.details["fields"]) for e in entries] == [
        ("adam", "server", ["answer_seconds", "grace_seconds", "joins_per_address"]),  # rejoin_seconds was 600
    ]


async def test_bad_input_and_stale_revisions_change_nothing(aiohttp_client, app):
    await _staff(app)
    adam, headers = await _client(aiohttp_client, app, "adam")
    assert (await adam.patch(API, json={"revision": 0, "answer_seconds": 60}, headers=headers)).status == 200
    for bad in ({"revision": 1, "answer_seconds": -1}, {"revision": 1, "answer_seconds": "10"},
                {"revision": 1, "answer_seconds": None}, {"revision": 1, "answer_seconds": True},
                {"revision": 1, "joins_per_address": 2.5}, {"revision": 1, "join_window_seconds": 0},
                {"revision": 1, "grace_seconds": 10**9}, {"revision": 1, "port": 80}, {"revision": 1},
                {"answer_seconds": 5}, {"revision": "1", "answer_seconds": 5}, [1]):
        resp = await adam.patch(API, json=bad, headers=headers)
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (400, "invalid_input"), bad
        assert body["error"]["message"], bad
    stale = await adam.patch(API, json={"revision": 0, "answer_seconds": 5}, headers=headers)
    stale_body = await stale.json()
    assert (stale.status, stale_body["error"]["code"]) == (409, "edit_conflict")
    assert "the settings" in stale_body["error"]["message"]  # not "this department" (probing)
    no_csrf = await adam.patch(API, json={"revision": 1, "answer_seconds": 5})
    assert no_csrf.status == 403
    body = await (await adam.get(API)).json()
    assert (body["revision"], body["settings"]["answer_seconds"], body["changed"]) == (1, 60, ["answer_seconds"])
    assert len(await _entries(app)) == 1


async def test_settings_are_kept_across_a_restart_with_the_memory_store(make_app, aiohttp_client):
    first = make_app()
    await _staff(first)
    adam, headers = await _client(aiohttp_client, first, "adam")
    assert (await adam.patch(API, json={"revision": 0, "rejoin_seconds": 0}, headers=headers)).status == 200
    await adam.close()
    restarted = make_app()  # the same data_dir; the TOML still says 600
    await aiohttp_client(restarted)  # starts it: the directory loads the store
    assert restarted[ROOM].live("rejoin_seconds") == 0
    assert restarted[ROOM].live("answer_seconds") == 120  # never changed: the configuration's value
    assert restarted[ROOM].directory.settings_revision == 1


@pytest.mark.redis
async def test_a_change_on_one_node_is_live_on_another(make_live_server, redis_url, redis_prefix):
    a = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    await _staff(a.app)
    async with aiohttp.ClientSession(a.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = (await (await http.post("/api/session", json={"username": "adam", "password": PASSWORD})).json())["csrf"]
        resp = await http.patch(API, json={"revision": 0, "answer_seconds": 7}, headers={"X-CSRF-Token": csrf})
        assert resp.status == 200
    assert a.app[ROOM].live("answer_seconds") == 7  # at once where it was made
    async with asyncio.timeout(10):  # b polls the directory's version about once a second
        while b.app[ROOM].live("answer_seconds") != 7:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert b.app[ROOM].directory.settings_revision == 1
