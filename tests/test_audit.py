"""The audit log through the app, on both stores: clerks' moves on tickets, recordings viewed and deleted,
sign-ins (failed ones too) are written with staff usernames and ids only (every stored byte is searched
for a citizen's marker name, concern, transfer note and token); GET /api/admin/audit for each role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from server.http.keys import AUDIT, RECORDINGS, SETTINGS
from server.store.audit import AuditQuery, RedisAuditStore

from .recording_store_contract import make_recording
from .test_admin_staff import A, B, make_account, session_for, sign_in

MARK_NAME = "Zacharias Markerbürger"
MARK_CONCERN = "Markeranliegen Bauvoranfrage"
MARK_NOTE = "Markernotiz bitte Unterlagen"


@pytest.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def town(request: pytest.FixtureRequest, make_app: Any, aiohttp_client: Any) -> dict[str, Any]:
    if request.param == "memory":
        app = make_app(None, answer_seconds=0)
    else:
        app = make_app(None, answer_seconds=0, redis_url=request.getfixturevalue("redis_url"),
                       redis_prefix=request.getfixturevalue("redis_prefix"))
    client = await aiohttp_client(app)
    for username, roles, departments in [("root", ["admin"], []), ("lea", ["lead"], [A]), ("bo", ["lead"], [B]),
                                         ("anna", ["clerk"], [A, B]), ("ben", ["clerk"], [B])]:
        await make_account(app, username, roles, departments)
    return {"app": app, "client": client, "kind": request.param}


async def stored_bytes(app: web.Application) -> bytes:
    """Every byte the audit store holds: the SQLite files, or the raw Redis stream (DUMP and XRANGE)."""
    store = app[AUDIT].store
    if isinstance(store, RedisAuditStore):
        raw = aioredis.Redis.from_url(app[SETTINGS].redis_url or "")
        try:
            dump = await raw.dump(store.key) or b""
            entries = await raw.xrange(store.key)
        finally:
            await raw.aclose()
        return dump + repr(entries).encode() + b"".join(
            v for _, fields in entries for kv in fields.items() for v in kv)
    return _sqlite_bytes(app[SETTINGS].data_dir)


def _sqlite_bytes(data_dir: Path) -> bytes:
    files = sorted(data_dir.glob("audit.sqlite3*"))
    assert files, "the embedded audit log lives in data_dir"
    return b"".join(f.read_bytes() for f in files)


async def entries(app: web.Application, **filters: Any) -> list[tuple[str, str, str]]:
    page = await app[AUDIT].query(AuditQuery(limit=200, **filters))
    return [(e.actor, e.action, e.target) for e in reversed(page.entries)]


async def test_clerks_moves_are_audited_without_any_personal_data(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    joined = await client.post(f"/api/departments/{A}/tickets", json={
        "name": MARK_NAME, "concern": MARK_CONCERN, "language": "de", "interpreter": False, "consent": True})
    assert joined.status == 201
    citizen = await joined.json()
    token, ticket_id = citizen["token"], citizen["ticket"]["id"]
    anna = await session_for(client, "anna")
    ben = await session_for(client, "ben")
    status, called = await anna.call("POST", f"/api/staff/departments/{A}/call-next")
    assert status == 200 and called["ticket"]["id"] == ticket_id
    assert (await anna.call("POST", f"/api/staff/tickets/{ticket_id}/transfer",
                            {"department": B, "note": MARK_NOTE}))[0] == 200
    assert (await ben.call("POST", f"/api/staff/departments/{B}/call-next"))[0] == 200
    assert (await ben.call("POST", f"/api/staff/tickets/{ticket_id}/start"))[0] == 200
    assert (await ben.call("POST", f"/api/staff/tickets/{ticket_id}/finish"))[0] == 200
    second = await (await client.post(f"/api/departments/{A}/tickets", json={
        "name": MARK_NAME, "concern": MARK_CONCERN, "language": "de", "interpreter": False, "consent": True})).json()
    assert (await anna.call("POST", f"/api/staff/departments/{A}/call-next"))[0] == 200
    assert (await anna.call("POST", f"/api/staff/tickets/{second['ticket']['id']}/return"))[0] == 200
    assert (await anna.call("POST", f"/api/staff/departments/{A}/call-next"))[0] == 200
    assert (await anna.call("POST", f"/api/staff/tickets/{second['ticket']['id']}/no-show"))[0] == 200

    moves = await entries(app, action="ticket")
    t2 = second["ticket"]["id"]
    assert moves == [("anna", "ticket.called", ticket_id), ("anna", "ticket.transferred", ticket_id),
                     ("ben", "ticket.called", ticket_id), ("ben", "ticket.finished", ticket_id),
                     ("anna", "ticket.called", t2), ("anna", "ticket.returned", t2),
                     ("anna", "ticket.called", t2), ("anna", "ticket.no_show", t2)]
    page = await app[AUDIT].query(AuditQuery(action="ticket.transferred"))
    assert page.entries[0].departments == (B, A) and page.entries[0].details == {"from": A, "to": B}

    everything = await stored_bytes(app)
    assert b"ticket.transferred" in everything and ticket_id.encode() in everything  # the search can see
    for secret in (MARK_NAME, MARK_CONCERN, MARK_NOTE, token, second["token"], "Markerb", "Markeranliegen",
                   "Markernotiz"):
        for encoded in {secret.encode(), secret.encode("unicode_escape"), secret.encode("utf-16-le")}:
            assert encoded not in everything, secret


async def test_sign_ins_are_audited_and_an_unknown_name_is_not_written(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    typed = "GeheimesPasswortImFalschenFeld"
    for username, password in (("anna", "wrong password"), (typed, "whatever")):
        resp = await client.post("/api/session", json={"username": username, "password": password})
        assert resp.status == 401
    anna = await sign_in(client, "anna")
    status, _ = await anna.call("DELETE", "/api/session")
    assert status == 200
    assert await entries(app, action="auth") == [
        ("anna", "auth.login_failed", "anna"), ("system", "auth.login_failed", ""),
        ("anna", "auth.login", "anna"), ("anna", "auth.logout", "anna")]
    page = await app[AUDIT].query(AuditQuery(action="auth.login_failed"))
    assert [e.details for e in page.entries] == [{"reason": "unknown_account"}, {"reason": "password"}]
    assert page.entries[1].departments == tuple(sorted([A, B]))
    everything = await stored_bytes(app)
    assert typed.encode() not in everything and b"wrong password" not in everything


async def test_recording_views_and_deletions_are_audited(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    rec = make_recording("rec1-0123456789abcdef", "t-rec", A, stopped=True)
    assert await app[RECORDINGS].store.create(rec)
    lea = await session_for(client, "lea")
    status, _ = await lea.call("GET", "/api/staff/recordings/rec1-0123456789abcdef/consent")
    assert status == 200
    assert (await lea.call("DELETE", "/api/staff/recordings/rec1-0123456789abcdef"))[0] == 200
    assert await entries(app, action="recording") == [("lea", "recording.export", "rec1-0123456789abcdef"),
                                                       ("lea", "recording.delete", "rec1-0123456789abcdef")]


async def test_audit_api_for_each_role(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    audit = app[AUDIT]
    await audit.record("anna", "ticket.called", target="t-a", department=A)
    await audit.record("ben", "ticket.called", target="t-b", department=B)
    await audit.record("root", "settings.changed", target="", details={"fields": ["session_hours"]})
    await audit.record("anna", "ticket.transferred", target="t-ab", department=[A, B])

    async def targets(who: Any, query: str = "") -> list[str]:
        status, body = await who.call("GET", f"/api/admin/audit{query}")
        assert status == 200, body
        return [e["target"] for e in body["entries"] if e["action"] in ("ticket.called", "ticket.transferred",
                                                                          "settings.changed")]

    anna = await session_for(client, "anna")
    assert (await anna.call("GET", "/api/admin/audit"))[0] == 404
    lea = await session_for(client, "lea")
    assert await targets(lea) == ["t-ab", "t-a"]
    assert await targets(lea, f"?department={A}&actor=anna") == ["t-ab", "t-a"]
    status, body = await lea.call("GET", f"/api/admin/audit?department={B}")
    assert status == 404 and body["error"]["code"] == "not_found"
    bo = await session_for(client, "bo")
    assert await targets(bo) == ["t-ab", "t-b"]
    root = await session_for(client, "root")
    assert await targets(root) == ["t-ab", "", "t-b", "t-a"]
    assert await targets(root, "?action=settings") == [""]
    # paging through the API
    status, first = await root.call("GET", "/api/admin/audit?action=ticket&limit=2")
    assert [e["target"] for e in first["entries"]] == ["t-ab", "t-b"] and first["next"]
    status, rest = await root.call("GET", f"/api/admin/audit?action=ticket&limit=2&cursor={first['next']}")
    assert [e["target"] for e in rest["entries"]] == ["t-a"] and rest["next"] is None
    # a time range
    now = (await audit.query(AuditQuery(limit=1))).entries[0].at
    assert await targets(root, f"?since={now + 3600}") == []
    assert await targets(root, f"?until={now + 3600}&since={now - 3600}&action=ticket.called") == ["t-b", "t-a"]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=500", "?limit=x", "?since=yesterday", "?since=-5",
                                   "?since=10&until=5", "?cursor=nope", "?colour=red", "?actor=" + "x" * 65,
                                   "?since=nan"])
async def test_bad_audit_queries_are_clear_errors(app: web.Application, client: Any, query: str) -> None:
    await make_account(app, "root", ["admin"], [])
    root = await session_for(client, "root")
    status, body = await root.call("GET", f"/api/admin/audit{query}")
    assert status == 400 and body["error"]["code"] == "invalid_input" and body["error"]["message"]


async def test_staff_changes_are_audited_for_the_departments_concerned(town: dict[str, Any]) -> None:
    app, client = town["app"], town["client"]
    root = await session_for(client, "root")
    assert (await root.call("PATCH", "/api/admin/staff/ben", {"departments": [A]}))[0] == 200
    assert (await root.call("POST", "/api/admin/staff/ben/password", {}))[0] == 200
    assert (await root.call("DELETE", "/api/admin/staff/ben"))[0] == 200
    assert await entries(app, action="staff") == [("root", "staff.updated", "ben"),
                                                   ("root", "staff.password_reset", "ben"),
                                                   ("root", "staff.removed", "ben")]
    bo = await session_for(client, "bo")  # ben was in B when he was moved: B's lead sees that move
    status, body = await bo.call("GET", "/api/admin/audit?action=staff")
    assert [e["action"] for e in body["entries"]] == ["staff.updated"]
    assert body["entries"][0]["details"]["departments_before"] == [B]
