"""/admin/stats and /api/admin/stats(.csv): every role against every route, figures after real queue moves,
bad input, and no personal data anywhere in the event log (every byte of the SQLite files, every Redis key).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from server.http.auth import SESSION_COOKIE, hash_password
from server.http.keys import STATS, STORE
from server.store.base import StaffAccount
from server.store.eventlog import RedisEventLog, SqliteEventLog

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)
A, B = "buergerbuero", "bauamt"
MARKER = "Qxzvw Privatname"
CONCERN = "Qxzvw Geheimanliegen"
NOTE = "Qxzvw Weiterleitungsnotiz"


@dataclass
class Who:
    client: Any
    cookie: str
    csrf: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        headers = {"Cookie": f"{SESSION_COOKIE}={self.cookie}", "X-CSRF-Token": self.csrf}
        resp = await self.client.request(method, path, json=body, headers=headers, allow_redirects=False)
        payload = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, payload, resp


async def sign_in(client: Any, username: str) -> Who:
    client.session.cookie_jar.clear()
    resp = await client.post("/api/session", json={"username": username, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    cookie = resp.cookies[SESSION_COOKIE].value
    client.session.cookie_jar.clear()
    return Who(client, cookie, (await resp.json())["csrf"])


async def accounts(app: web.Application) -> None:
    for username, roles, departments in [("root", ["admin"], []), ("lea", ["lead"], [A]), ("anna", ["clerk"], [A]),
                                         ("bernd", ["clerk"], [A, B])]:
        await app[STORE].put_staff(StaffAccount(username, username.title(), PASSWORD_HASH, tuple(roles),
                                                tuple(departments)))


@pytest.fixture
async def town(app: web.Application, client: Any) -> dict[str, Any]:
    await accounts(app)
    return {"app": app, "client": client}


async def queue_day(client: Any) -> dict[str, str]:
    """A citizen with a marker name and concern joins A, is called, served, transferred to B with a marker
    note, served there; a second citizen joins and leaves. Returns the first citizen's token and ticket id."""
    resp = await client.post(f"/api/departments/{A}/tickets", json={
        "name": MARKER, "concern": CONCERN, "language": "ar", "interpreter": True, "consent": True})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    token, ticket = body["token"], body["ticket"]["id"]
    bernd = await sign_in(client, "bernd")
    for method, path, payload in [
        ("POST", f"/api/staff/departments/{A}/call-next", None),
        ("POST", f"/api/staff/tickets/{ticket}/start", None),
        ("POST", f"/api/staff/tickets/{ticket}/transfer", {"department": B, "note": NOTE}),
        ("POST", f"/api/staff/departments/{B}/call-next", None),
        ("POST", f"/api/staff/tickets/{ticket}/start", None),
        ("POST", f"/api/staff/tickets/{ticket}/finish", None),
        ("PUT", "/api/staff/presence", {"status": "available"}),
    ]:
        status, answer, _ = await bernd.call(method, path, payload)
        assert status == 200, (path, answer)
    resp = await client.post(f"/api/departments/{A}/tickets", json={"name": MARKER, "consent": True})
    other = await resp.json()
    resp = await client.delete("/api/tickets/me", headers={"Authorization": f"Bearer {other['token']}"})
    assert resp.status == 200, await resp.text()
    return {"token": token, "ticket": ticket, "other_token": other["token"], "other_ticket": other["ticket"]["id"]}


ROUTES = ["/api/admin/stats", "/api/admin/stats.csv", f"/api/admin/stats?department={A}"]


async def test_a_clerk_gets_404_and_a_visitor_401(town: dict[str, Any]) -> None:
    anna = await sign_in(town["client"], "anna")
    for path in ROUTES:
        status, payload, _ = await anna.call("GET", path)
        assert status == 404 and payload["error"]["code"] == "not_found"
        resp = await town["client"].get(path)
        assert resp.status == 401


async def test_the_page_for_each_role(town: dict[str, Any]) -> None:
    client = town["client"]
    resp = await client.get("/admin/stats", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/staff"
    anna = await sign_in(client, "anna")
    assert (await anna.call("GET", "/admin/stats"))[0] == 404
    lea = await sign_in(client, "lea")
    status, html, resp = await lea.call("GET", "/admin/stats")
    assert status == 200 and "admin_stats.js" in html and "uPlot.iife.min.js" in html
    assert 'href="/admin/stats" aria-current="page"' in html
    assert f'value="{A}"' in html and f'value="{B}"' not in html  # a lead picks only their departments
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    root = await sign_in(client, "root")
    status, html, _ = await root.call("GET", "/admin/stats")
    assert status == 200 and f'value="{B}"' in html


async def test_a_lead_sees_their_departments_only(town: dict[str, Any]) -> None:
    lea = await sign_in(town["client"], "lea")
    status, body, _ = await lea.call("GET", "/api/admin/stats")
    assert status == 200 and body["departments"] == [A] and body["department"] == "all"
    assert (await lea.call("GET", f"/api/admin/stats?department={A}"))[0] == 200
    for department in (B, "standesamt", "nowhere"):
        for path in ("/api/admin/stats", "/api/admin/stats.csv"):
            status, payload, _ = await lea.call("GET", f"{path}?department={department}")
            assert status == 404 and payload["error"]["code"] == "not_found"


async def test_an_admin_sees_all(town: dict[str, Any]) -> None:
    root = await sign_in(town["client"], "root")
    status, body, _ = await root.call("GET", "/api/admin/stats")
    assert status == 200 and set(body["departments"]) == {A, B, "standesamt"}
    assert (await root.call("GET", f"/api/admin/stats?department={B}"))[0] == 200
    assert (await root.call("GET", "/api/admin/stats?department=nowhere"))[0] == 404


BAD_QUERIES = ["granularity=month", "from=2026-13-01", "from=gestern", "from=2026-03-05&to=2026-03-01",
               "granularity=hour&from=2026-01-01&to=2026-03-01", "from=2019-01-01&to=2026-01-01",
               # found by probing: the periods' date arithmetic overflowed (a plain-text 500)
               "from=9999-12-30&to=9999-12-31", "granularity=week&from=9999-12-30&to=9999-12-31",
               "granularity=hour&from=9999-12-31&to=9999-12-31", "granularity=week&from=0001-01-01&to=0001-01-02"]


async def test_bad_input_is_a_clear_error(town: dict[str, Any]) -> None:
    root = await sign_in(town["client"], "root")
    for query in BAD_QUERIES:
        for path in ("/api/admin/stats", "/api/admin/stats.csv"):
            status, payload, _ = await root.call("GET", f"{path}?{query}")
            assert status == 400 and payload["error"]["code"] == "invalid_input", query


async def test_figures_after_real_moves(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    await queue_day(client)
    await app[STATS].flush()
    root = await sign_in(client, "root")
    status, body, _ = await root.call("GET", "/api/admin/stats")
    assert status == 200
    today = body["periods"][-1]
    assert (today["arrivals"], today["served"], today["abandoned"], today["transfers_in"], today["transfers_out"],
            today["calls"], today["consultations"], today["interpreter"], today["languages"]) == (
        2, 1, 1, 1, 1, 2, 2, 1, {"ar": 1, "de": 1})
    assert today["clerks_on_duty"] == 1  # bernd: busy while holding the ticket, available after
    lea = await sign_in(client, "lea")
    status, body, _ = await lea.call("GET", "/api/admin/stats?granularity=hour")
    assert status == 200 and len(body["periods"]) == 24
    assert sum(p["arrivals"] for p in body["periods"]) == 2 and body["totals"]["transfers_out"] == 1
    assert body["totals"]["transfers_in"] == 0  # the transfer went to B, which lea does not lead
    status, text, resp = await root.call("GET", f"/api/admin/stats.csv?department={B}&granularity=week")
    assert status == 200 and resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="statistik-bauamt-week-')
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    assert header[:3] == ["period", "department", "arrivals"]
    last = dict(zip(header, rows[-1], strict=True))
    assert (last["department"], last["transfers_in"], last["served"], last["arrivals"]) == (B, "1", "1", "0")


def _search(haystack: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s.encode() in haystack]


async def test_no_personal_data_in_the_sqlite_log(town: dict[str, Any], tmp_path: Path) -> None:
    app = town["app"]
    ids = await queue_day(town["client"])
    await app[STATS].flush()
    store = app[STATS].store
    assert isinstance(store, SqliteEventLog)
    assert len(await store.entries(0, 10 ** 6)) >= 10
    files = [p for p in store.path.parent.iterdir() if p.name.startswith(store.path.name)]
    assert store.path in files
    assert store.path.stat().st_mode & 0o077 == 0
    secrets = [MARKER, CONCERN, NOTE, "Qxzvw", ids["token"], ids["other_token"], ids["ticket"], ids["other_ticket"],
               "bernd", "Bernd"]
    for path in files:
        assert _search(path.read_bytes(), secrets) == [], path


@pytest.mark.redis
async def test_no_personal_data_in_the_redis_log(make_app: Any, aiohttp_client: Any, redis_url: str,
                                                 redis_prefix: str) -> None:
    app = make_app(redis_url=redis_url, redis_prefix=redis_prefix)
    client = await aiohttp_client(app)
    await accounts(app)
    ids = await queue_day(client)
    await app[STATS].flush()
    store = app[STATS].store
    assert isinstance(store, RedisEventLog)
    assert len(await store.entries(0, 10 ** 6)) >= 10
    secrets = [MARKER, CONCERN, NOTE, "Qxzvw", ids["token"], ids["other_token"], ids["ticket"], ids["other_ticket"],
               "bernd", "Bernd"]
    r = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=store.key_prefix + "*", count=500)]
        assert len(keys) > 5
        for key in keys:
            kind = (await r.type(key)).decode()
            if kind == "stream":
                content = repr(await r.xrange(key))
            elif kind == "hash":
                content = repr(await r.hgetall(key))
            elif kind == "set":
                content = repr(await r.smembers(key))
            elif kind == "zset":
                content = repr(await r.zrange(key, 0, -1, withscores=True))
            else:
                content = repr(await r.dump(key))
            assert _search(key + content.encode(), secrets) == [], key
    finally:
        await r.aclose()
