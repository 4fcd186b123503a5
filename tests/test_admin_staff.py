"""/admin/staff and /api/admin/staff*: the pure rules (table-driven) and every role against every route:
a clerk gets 404, a lead manages only staff of departments they lead and never grants admin, an admin
manages everyone; changes end sessions where they must, are audited, and bad input changes nothing."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from server.http.auth import SESSION_COOKIE, hash_password
from server.http.keys import AUDIT, STORE
from server.oidc import SSO_PASSWORD_PREFIX
from server.queue.errors import Conflict, InvalidInput, NotAuthorised
from server.staff_admin import (
    Manager,
    StaffChange,
    StaffNotFound,
    check_password_reset,
    check_remove,
    parse_change,
    parse_new,
    plan_create,
    plan_update,
)
from server.store.audit import AuditQuery
from server.store.base import StaffAccount

PASSWORD = "correct horse battery"
A, B = "buergerbuero", "bauamt"
KNOWN = [A, B, "standesamt"]


# -- the rules, without I/O --
def acct(username: str, roles: tuple[str, ...] = ("clerk",), departments: tuple[str, ...] = (A,)) -> StaffAccount:
    return StaffAccount(username, username.title(), "hash", roles, departments)


ADMIN = Manager("root", None)
LEAD_A = Manager("lea", frozenset({A}))


@pytest.mark.parametrize(("manager", "account", "sees", "owns"), [
    (ADMIN, acct("x", ("admin",), ()), True, True),
    (LEAD_A, acct("x"), True, True),
    (LEAD_A, acct("x", departments=(B,)), False, False),
    (LEAD_A, acct("x", departments=(A, B)), True, False),
    (LEAD_A, acct("x", ("admin", "clerk"), (A,)), False, False),
    (LEAD_A, acct("x", departments=()), False, False),
])
def test_who_sees_and_owns_which_account(manager: Manager, account: StaffAccount, sees: bool, owns: bool) -> None:
    assert (manager.sees(account), manager.owns(account)) == (sees, owns)


@pytest.mark.parametrize(("manager", "body", "error"), [
    (LEAD_A, {"username": "neu", "departments": [A]}, None),
    (LEAD_A, {"username": "neu", "departments": [A], "roles": ["lead"]}, None),
    (LEAD_A, {"username": "neu", "departments": [A], "roles": ["admin"]}, NotAuthorised),
    (LEAD_A, {"username": "neu", "departments": [A], "roles": ["moderator"]}, NotAuthorised),
    (LEAD_A, {"username": "neu", "departments": [B]}, StaffNotFound),
    (LEAD_A, {"username": "neu", "departments": ["nowhere"]}, StaffNotFound),
    (LEAD_A, {"username": "neu", "departments": []}, InvalidInput),
    (ADMIN, {"username": "neu", "departments": [], "roles": ["admin"]}, None),
    (ADMIN, {"username": "neu", "departments": ["nowhere"]}, InvalidInput),
    (ADMIN, {"username": "lena", "departments": [A]}, Conflict),
])
def test_create(manager: Manager, body: dict[str, Any], error: type[Exception] | None) -> None:
    new = parse_new(body)
    existing = acct("lena") if new.username == "lena" else None
    if error is None:
        plan_create(manager, new, KNOWN, existing)
    else:
        with pytest.raises(error):
            plan_create(manager, new, KNOWN, existing)


@pytest.mark.parametrize("body", [
    {}, {"username": "bad name"}, {"username": "x" * 65}, {"username": "ok", "roles": ["boss"]},
    {"username": "ok", "roles": []}, {"username": "ok", "roles": "clerk"}, {"username": "ok", "departments": "a"},
    {"username": "ok", "password": "short"}, {"username": "ok", "display_name": "\u0007"},
    {"username": "ok", "display_name": "x" * 101}, {"username": "ok", "extra": 1}, {"username": 5},
])
def test_parse_new_refuses_bad_input(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_new(body)


@pytest.mark.parametrize("name", ["Anna\u202eAmt", "Anna\u2066", "Anna\x00", "Anna\x9b"])
def test_display_names_with_control_or_bidi_characters_are_refused(name: str) -> None:
    """Citizens read the clerk's name: a bidi override would make it read as something else."""
    with pytest.raises(InvalidInput, match=r"display_name contains a control character \(U\+"):
        parse_new({"username": "ok", "display_name": name})
    with pytest.raises(InvalidInput, match="control character"):
        parse_change({"display_name": name})
    assert parse_new({"username": "ok", "display_name": "Ali\u200f Amt"}).display_name == "Ali\u200f Amt"


@pytest.mark.parametrize("body", [{}, {"roles": ["x"]}, {"departments": [1]}, {"display_name": ""}, {"foo": 1}])
def test_parse_change_refuses_bad_input(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_change(body)


@pytest.mark.parametrize(("manager", "account", "change", "result", "error"), [
    # a lead's department list replaces only the lead's part
    (LEAD_A, acct("x", departments=(A, B)), StaffChange(departments=frozenset()), None, InvalidInput),
    (LEAD_A, acct("x", departments=(A, B)), StaffChange(departments=frozenset({A})), ((B, A), ("clerk",)), None),
    (LEAD_A, acct("x", departments=(A,)), StaffChange(departments=frozenset({B})), None, StaffNotFound),
    (LEAD_A, acct("x", departments=(B,)), StaffChange(display_name="X"), None, StaffNotFound),
    # roles: clerk and lead only; lead only on an account entirely within the lead's departments
    (LEAD_A, acct("x"), StaffChange(roles=frozenset({"clerk", "lead"})), ((A,), ("clerk", "lead")), None),
    (LEAD_A, acct("x"), StaffChange(roles=frozenset({"admin"})), None, NotAuthorised),
    (LEAD_A, acct("x", departments=(A, B)), StaffChange(roles=frozenset({"lead"})), None, NotAuthorised),
    (LEAD_A, acct("x", ("clerk", "moderator")), StaffChange(roles=frozenset({"lead"})), ((A,), ("lead", "moderator")),
     None),
    (LEAD_A, acct("x", ("lead",), (B,)), StaffChange(departments=frozenset({A})), None, StaffNotFound),
    (LEAD_A, acct("x", ("lead",), (A, B)), StaffChange(roles=frozenset({"clerk"})), None, NotAuthorised),
    # nobody changes their own roles
    (LEAD_A, acct("lea", ("lead",)), StaffChange(roles=frozenset({"clerk"})), None, NotAuthorised),
    (ADMIN, acct("root", ("admin",), ()), StaffChange(roles=frozenset({"clerk"})), None, NotAuthorised),
    (ADMIN, acct("root", ("admin",), ()), StaffChange(display_name="Root"), ((), ("admin",)), None),
    (ADMIN, acct("x", departments=(A, B)), StaffChange(roles=frozenset({"admin"}), departments=frozenset()),
     ((), ("admin",)), None),
])
def test_update(manager: Manager, account: StaffAccount, change: StaffChange,
                result: tuple[tuple[str, ...], tuple[str, ...]] | None, error: type[Exception] | None) -> None:
    if error is not None:
        with pytest.raises(error):
            plan_update(manager, account, change, KNOWN)
        return
    updated, changed = plan_update(manager, account, change, KNOWN)
    assert (updated.departments, updated.roles) == result
    assert updated.session_epoch == account.session_epoch + (1 if "roles" in changed else 0)


@pytest.mark.parametrize(("manager", "account", "error"), [
    (LEAD_A, acct("x"), None),
    (LEAD_A, acct("x", ("lead",)), None),
    (LEAD_A, acct("x", departments=(A, B)), NotAuthorised),
    (LEAD_A, acct("x", departments=(B,)), StaffNotFound),
    (LEAD_A, acct("x", ("admin",)), StaffNotFound),
    (LEAD_A, None, StaffNotFound),
    (ADMIN, acct("x", ("admin",), ()), None),
])
def test_password_reset_and_remove(manager: Manager, account: StaffAccount | None,
                                   error: type[Exception] | None) -> None:
    for check in (check_password_reset, check_remove):
        if error is None:
            check(manager, account)
        else:
            with pytest.raises(error):
                check(manager, account)


def test_the_roles_are_the_ones_sign_in_knows() -> None:
    from server.http.auth import ROLES as AUTH_ROLES
    from server.staff_admin import ROLES

    assert ROLES == AUTH_ROLES


def test_nobody_removes_themselves() -> None:
    with pytest.raises(NotAuthorised):
        check_remove(ADMIN, acct("root", ("admin",)))
    check_password_reset(ADMIN, acct("root", ("admin",)))  # one's own password: fine


# -- the routes --
@dataclass
class Who:
    client: Any
    cookie: str
    csrf: str

    def _headers(self, unsafe: bool) -> dict[str, str]:
        headers = {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}
        if unsafe:
            headers["X-CSRF-Token"] = self.csrf
        return headers

    async def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True) -> tuple[int, Any]:
        unsafe = method in ("POST", "PATCH", "PUT", "DELETE")
        kwargs: dict[str, Any] = {"headers": self._headers(unsafe and csrf)}
        if body is not None:
            kwargs["json"] = body
        resp = await self.client.request(method, path, **kwargs)
        payload = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, payload


PASSWORD_HASH = hash_password(PASSWORD)
"""Hashed once: argon2 is slow on purpose."""


async def make_account(app: web.Application, username: str, roles: list[str], departments: list[str]) -> None:
    await app[STORE].put_staff(StaffAccount(username, username.title(), PASSWORD_HASH, tuple(roles),
                                            tuple(departments)))


async def session_for(client: Any, username: str) -> Who:
    """A session as the login makes it, without spending an argon2 verification (slow on purpose) on it."""
    app = client.server.app
    account = await app[STORE].get_staff(username)
    assert account is not None
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await app[STORE].put_session(cookie, {"username": username, "csrf": csrf, "since": time.time(),
                                          "epoch": account.session_epoch}, 3600)
    return Who(client, cookie, csrf)


async def sign_in(client: Any, username: str, password: str = PASSWORD) -> Who:
    client.session.cookie_jar.clear()
    resp = await client.post("/api/session", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    cookie = resp.cookies[SESSION_COOKIE].value
    client.session.cookie_jar.clear()
    return Who(client, cookie, (await resp.json())["csrf"])


@pytest.fixture
async def town(app: web.Application, client: Any) -> dict[str, Any]:
    """root (admin), lea (lead of A), bo (lead of B), anna (clerk of A), ben (clerk of B),
    sam (clerk of A and B), ada (admin who also works in A)."""
    for username, roles, departments in [
        ("root", ["admin"], []), ("lea", ["lead"], [A]), ("bo", ["lead"], [B]), ("anna", ["clerk"], [A]),
        ("ben", ["clerk"], [B]), ("sam", ["clerk"], [A, B]), ("ada", ["admin", "clerk"], [A]),
    ]:
        await make_account(app, username, roles, departments)
    return {"app": app, "client": client}


ROUTES = [
    ("GET", "/api/admin/staff", None),
    ("POST", "/api/admin/staff", {"username": "neu", "departments": [A]}),
    ("GET", "/api/admin/staff/anna", None),
    ("PATCH", "/api/admin/staff/anna", {"display_name": "Anna A."}),
    ("DELETE", "/api/admin/staff/anna", None),
    ("POST", "/api/admin/staff/anna/password", {}),
    ("GET", "/api/admin/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_a_clerk_gets_404_everywhere_and_nothing_changes(town: dict[str, Any], method: str, path: str,
                                                                body: Any) -> None:
    anna = await session_for(town["client"], "anna")
    status, payload = await anna.call(method, path, body)
    assert status == 404 and payload["error"]["code"] == "not_found"
    assert await town["app"][STORE].get_staff("neu") is None
    assert (await town["app"][STORE].get_staff("anna")).display_name == "Anna"  # type: ignore[union-attr]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_without_a_session_401(town: dict[str, Any], method: str, path: str, body: Any) -> None:
    resp = await town["client"].request(method, path, json=body)
    assert resp.status == 401


async def test_pages_for_each_role(town: dict[str, Any]) -> None:
    client = town["client"]
    resp = await client.get("/admin/staff", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/staff"
    anna = await session_for(client, "anna")
    for path in ("/admin/staff", "/admin/audit"):
        status, _ = await anna.call("GET", path)
        assert status == 404
    lea = await session_for(client, "lea")
    for path, script in (("/admin/staff", "admin_staff.js"), ("/admin/audit", "admin_audit.js")):
        status, html = await lea.call("GET", path)
        assert status == 200 and script in html and 'aria-current="page"' in html


async def test_a_lead_sees_and_manages_only_staff_of_their_departments(town: dict[str, Any]) -> None:
    lea = await session_for(town["client"], "lea")
    status, body = await lea.call("GET", "/api/admin/staff")
    assert status == 200
    assert [s["username"] for s in body["staff"]] == ["anna", "lea", "sam"]  # not ben, bo, root, ada
    assert body["roles"] == ["clerk", "lead"] and [d["id"] for d in body["departments"]] == [A]
    assert "password_hash" not in str(body)
    sam = next(s for s in body["staff"] if s["username"] == "sam")
    assert sam["may"] == {"edit": True, "roles": True, "lead_role": False, "password": False, "remove": False}
    for method, path, payload in [("GET", "/api/admin/staff/ben", None),
                                  ("PATCH", "/api/admin/staff/ben", {"display_name": "B"}),
                                  ("DELETE", "/api/admin/staff/ben", None),
                                  ("POST", "/api/admin/staff/ben/password", {}),
                                  ("GET", "/api/admin/staff/ada", None),
                                  ("PATCH", "/api/admin/staff/ada", {"roles": ["clerk"]}),
                                  ("DELETE", "/api/admin/staff/root", None),
                                  ("POST", "/api/admin/staff", {"username": "neu", "departments": [B]}),
                                  ("PATCH", "/api/admin/staff/anna", {"departments": [A, B]})]:
        status, answer = await lea.call(method, path, payload)
        assert status == 404, (method, path, answer)
    store = town["app"][STORE]
    assert (await store.get_staff("ben")).display_name == "Ben"  # type: ignore[union-attr]
    assert (await store.get_staff("anna")).departments == (A,)  # type: ignore[union-attr]
    assert await store.get_staff("neu") is None


async def test_a_lead_cannot_make_an_admin(town: dict[str, Any]) -> None:
    lea = await session_for(town["client"], "lea")
    status, body = await lea.call("POST", "/api/admin/staff", {"username": "neu", "departments": [A],
                                                               "roles": ["admin"]})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await lea.call("PATCH", "/api/admin/staff/anna", {"roles": ["clerk", "admin"]})
    assert status == 403
    status, body = await lea.call("PATCH", "/api/admin/staff/sam", {"roles": ["lead"]})
    assert status == 403  # sam also works in B: being a lead is account-wide
    store = town["app"][STORE]
    assert await store.get_staff("neu") is None
    assert (await store.get_staff("anna")).roles == ("clerk",)  # type: ignore[union-attr]


async def test_a_lead_adds_a_clerk_who_can_sign_in_and_is_audited(town: dict[str, Any]) -> None:
    client, app = town["client"], town["app"]
    lea = await session_for(client, "lea")
    status, body = await lea.call("POST", "/api/admin/staff", {"username": "neu", "display_name": " Neu  Person ",
                                                               "departments": [A]})
    assert status == 201, body
    assert body["staff"] == {"username": "neu", "display_name": "Neu Person", "roles": ["clerk"],
                             "departments": [A], "sso": False, "may": body["staff"]["may"]}
    password = body["password"]
    assert len(password) >= 12
    neu = await sign_in(client, "neu", password)
    assert (await neu.call("GET", "/api/session"))[1]["clerk"]["departments"] == [A]
    status, body = await lea.call("POST", "/api/admin/staff", {"username": "neu", "departments": [A]})
    assert status == 409
    page = await app[AUDIT].query(AuditQuery(action="staff"))
    (created,) = page.entries
    assert (created.actor, created.target, created.departments) == ("lea", "neu", (A,))
    assert created.details == {"roles": ["clerk"], "departments": [A], "password_generated": True}
    assert password not in str(created)


async def test_a_lead_edits_a_shared_account_only_in_their_part(town: dict[str, Any]) -> None:
    lea = await session_for(town["client"], "lea")
    status, body = await lea.call("PATCH", "/api/admin/staff/sam", {"display_name": "Sam S.", "departments": [A]})
    assert status == 200 and body["staff"]["departments"] == sorted([A, B])
    assert body["changed"] == ["display_name"]
    status, body = await lea.call("POST", "/api/admin/staff/sam/password", {})
    assert status == 403
    status, body = await lea.call("DELETE", "/api/admin/staff/sam")
    assert status == 403
    assert await town["app"][STORE].get_staff("sam") is not None


async def test_role_change_removal_and_password_reset_end_sessions(town: dict[str, Any]) -> None:
    client = town["client"]
    anna = await session_for(client, "anna")
    sam = await session_for(client, "sam")
    ben = await session_for(client, "ben")
    root = await session_for(client, "root")
    # a new display name or department keeps the session
    assert (await root.call("PATCH", "/api/admin/staff/anna", {"display_name": "Anna A."}))[0] == 200
    assert (await anna.call("GET", "/api/session"))[0] == 200
    status, body = await root.call("PATCH", "/api/admin/staff/anna", {"roles": ["clerk", "lead"]})
    assert status == 200 and body["changed"] == ["roles"]
    assert (await anna.call("GET", "/api/session"))[0] == 401
    anna = await session_for(client, "anna")
    assert (await anna.call("GET", "/api/admin/staff"))[0] == 200  # now a lead
    status, body = await root.call("POST", "/api/admin/staff/sam/password", {"password": "a new secret!"})
    assert status == 200 and "password" not in body
    assert (await sam.call("GET", "/api/session"))[0] == 401
    await sign_in(client, "sam", "a new secret!")
    assert (await root.call("DELETE", "/api/admin/staff/ben"))[0] == 200
    assert (await ben.call("GET", "/api/session"))[0] == 401
    assert (await root.call("GET", "/api/admin/staff/ben"))[0] == 404


async def test_an_admin_manages_everyone(town: dict[str, Any]) -> None:
    root = await session_for(town["client"], "root")
    status, body = await root.call("GET", "/api/admin/staff")
    assert [s["username"] for s in body["staff"]] == ["ada", "anna", "ben", "bo", "lea", "root", "sam"]
    assert body["roles"] == ["admin", "clerk", "lead", "moderator"]
    status, body = await root.call("POST", "/api/admin/staff", {"username": "it", "roles": ["admin"],
                                                                "password": "long enough"})
    assert status == 201 and "password" not in body
    assert (await root.call("PATCH", "/api/admin/staff/bo", {"roles": ["admin"], "departments": []}))[0] == 200
    assert (await root.call("PATCH", "/api/admin/staff/root", {"roles": ["clerk"]}))[0] == 403
    assert (await root.call("DELETE", "/api/admin/staff/root"))[0] == 403
    status, body = await root.call("PATCH", "/api/admin/staff/anna", {"departments": ["nowhere"]})
    assert status == 400 and body["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(("method", "path", "body", "code"), [
    ("POST", "/api/admin/staff", {"username": "bad name"}, "invalid_input"),
    ("POST", "/api/admin/staff", {"username": "neu", "departments": [A], "hash": "x"}, "invalid_input"),
    ("POST", "/api/admin/staff", {"username": "neu", "password": "short"}, "invalid_input"),
    ("PATCH", "/api/admin/staff/anna", {"roles": "admin"}, "invalid_input"),
    ("PATCH", "/api/admin/staff/anna", {}, "invalid_input"),
    ("POST", "/api/admin/staff/anna/password", {"password": "short"}, "invalid_input"),
    ("POST", "/api/admin/staff/anna/password", {"pw": "long enough"}, "invalid_input"),
])
async def test_bad_input_is_a_clear_error_and_changes_nothing(town: dict[str, Any], method: str, path: str,
                                                              body: Any, code: str) -> None:
    root = await session_for(town["client"], "root")
    status, answer = await root.call(method, path, body)
    assert status == 400 and answer["error"]["code"] == code and answer["error"]["message"]
    store = town["app"][STORE]
    assert await store.get_staff("neu") is None
    anna = await store.get_staff("anna")
    assert anna is not None and anna.roles == ("clerk",) and anna.session_epoch == 0
    assert not (await town["app"][AUDIT].query(AuditQuery(action="staff"))).entries


async def test_not_json_and_csrf(town: dict[str, Any]) -> None:
    root = await session_for(town["client"], "root")
    resp = await town["client"].post("/api/admin/staff", data=b"{nope", headers={
        "Cookie": f"{SESSION_COOKIE}={root.cookie}", "X-CSRF-Token": root.csrf, "Content-Type": "application/json"})
    assert resp.status == 400
    status, answer = await root.call("POST", "/api/admin/staff", {"username": "neu"}, csrf=False)
    assert status == 403 and answer["error"]["code"] == "csrf"
    assert await town["app"][STORE].get_staff("neu") is None


async def test_an_sso_accounts_password_is_the_providers(town: dict[str, Any]) -> None:
    app = town["app"]
    await app[STORE].put_staff(StaffAccount("sso.user", "Sso User", SSO_PASSWORD_PREFIX + "subject", ("clerk",), (A,)))
    root = await session_for(town["client"], "root")
    status, body = await root.call("GET", "/api/admin/staff/sso.user")
    assert body["staff"]["sso"] is True and body["staff"]["may"]["password"] is False
    status, body = await root.call("POST", "/api/admin/staff/sso.user/password", {})
    assert status == 409 and body["error"]["code"] == "conflict"
    stored = await app[STORE].get_staff("sso.user")
    assert stored is not None and stored.password_hash == SSO_PASSWORD_PREFIX + "subject"


def test_staff_and_audit_messages_exist_in_both_languages() -> None:
    """Every message id the two pages' templates and scripts use exists in German and English."""
    import re
    from pathlib import Path

    from server.i18n import DE, EN

    web = Path(__file__).resolve().parents[1] / "web"
    used: set[str] = set()
    for name in ("admin_staff", "admin_audit"):
        template = (web / "templates" / f"{name}.html").read_text("utf-8")
        script = (web / "static" / "js" / f"{name}.js").read_text("utf-8")
        used |= set(re.findall(r"""_\(["']([\w.]+)["']""", template))
        used |= {f"js.{m}" for m in re.findall(r"""\bt\(\s*['`]([\w.]+)['`]""", script)}
    used |= {f"js.astaff.role.{r}" for r in ("clerk", "lead", "admin", "moderator")}
    used |= {f"admin.audit.group.{g}" for g in ("ticket", "recording", "auth", "staff", "department", "settings")}
    used |= {f"js.audit.action.{a}" for a in ("ticket.called", "ticket.transferred", "ticket.finished",
                                              "ticket.no_show", "ticket.returned", "recording.view",
                                              "recording.delete", "auth.login", "auth.login_failed",
                                              "staff.created", "staff.password_reset")}
    used = {m for m in used if not m.endswith(".")}
    assert len(used) > 60
    assert sorted(m for m in used if m not in DE or m not in EN) == []
