"""/admin/staff and /admin/audit: staff accounts and the audit log, for leads (their departments) and
admins (everything). The rules of who may do what are in ``server.staff_admin``; every change is written
to the audit log; unsafe methods need the CSRF token (``admin_scope`` checks it).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from ..audit import SYSTEM
from ..oidc import is_sso_account
from ..queue.errors import Conflict, InvalidInput, NotAuthenticated
from ..staff_admin import (
    Manager,
    check_password_reset,
    check_remove,
    generate_password,
    parse_change,
    parse_new,
    parse_password,
    plan_create,
    plan_update,
    visible,
)
from ..store.audit import MAX_PAGE, AuditQuery
from ..store.base import StaffAccount
from .admin_access import AdminScope, admin_scope, scope_of
from .api import json_body
from .auth import SESSION_COOKIE, hash_password
from .keys import AUDIT, AUTH, ROOM, SETTINGS, STORE

routes = web.RouteTableDef()


def _manager(scope: AdminScope) -> Manager:
    return Manager(scope.clerk.username, scope.departments)


def _known(request: web.Request) -> list[str]:
    return list(request.app[ROOM].departments)


def _department_list(request: web.Request, scope: AdminScope) -> list[dict[str, str]]:
    return [{"id": d.id, "name": d.name} for d in request.app[ROOM].departments.values() if scope.may_manage(d.id)]


def staff_json(manager: Manager, account: StaffAccount) -> dict[str, Any]:
    may = manager.may(account)
    if is_sso_account(account.password_hash):
        may["password"] = False  # its sign-in is the identity provider's
    return {"username": account.username, "display_name": account.display_name, "roles": sorted(account.roles),
            "departments": sorted(account.departments), "sso": is_sso_account(account.password_hash), "may": may}


async def _hash(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def _audit(request: web.Request, scope: AdminScope, action: str, account: StaffAccount,
                 concerns: set[str], **details: Any) -> None:
    """One entry about ``account``, shown to leads of any department in ``concerns``."""
    await request.app[AUDIT].record(scope.clerk.username, action, target=account.username,
                                    department=concerns, details=details)


# -- pages --
async def _page(request: web.Request, template: str, section: str, **context: Any) -> web.StreamResponse:
    """Leads and admins see the page; other staff the 404 page; visitors go to the login."""
    from .pages import render, render_not_found

    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    scope = scope_of(session)
    if scope is None:
        return render_not_found(request)
    return render(request, template, admin_section=section,
                  page={"departments": _department_list(request, scope), "me": scope.clerk.username,
                        "is_admin": scope.is_admin, "roles": sorted(_manager(scope).assignable_roles()),
                        **context})


@routes.get("/admin/staff")
async def staff_page(request: web.Request) -> web.StreamResponse:
    return await _page(request, "admin_staff.html", "staff")


@routes.get("/admin/audit")
async def audit_page(request: web.Request) -> web.StreamResponse:
    return await _page(request, "admin_audit.html", "audit", max_page=MAX_PAGE,
                       retention_days=request.app[SETTINGS].audit_retention_days)


# -- staff --
@routes.get("/api/admin/staff")
async def list_staff(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    manager = _manager(scope)
    accounts = [a for a in await request.app[STORE].list_staff() if manager.sees(a)]
    return web.json_response({
        "staff": [staff_json(manager, a) for a in sorted(accounts, key=lambda a: a.username)],
        "departments": _department_list(request, scope),
        "roles": sorted(manager.assignable_roles()),
    })


@routes.post("/api/admin/staff")
async def create_staff(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    manager = _manager(scope)
    new = parse_new(await json_body(request))
    store = request.app[STORE]
    plan_create(manager, new, _known(request), await store.get_staff(new.username))
    password = new.password or generate_password()
    account = StaffAccount(new.username, new.display_name, await _hash(password), new.roles, new.departments)
    if await store.get_staff(new.username) is not None:  # taken while the hash was computed
        raise Conflict(f"the username {new.username} is taken")
    await store.put_staff(account)
    await _audit(request, scope, "staff.created", account, set(account.departments),
                 roles=list(account.roles), departments=list(account.departments),
                 password_generated=new.password is None)
    body: dict[str, Any] = {"staff": staff_json(manager, account)}
    if new.password is None:
        body["password"] = password  # shown once; never stored in clear
    return web.json_response(body, status=201)


@routes.get("/api/admin/staff/{username}")
async def get_staff(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    manager = _manager(scope)
    account = visible(manager, await request.app[STORE].get_staff(request.match_info["username"]))
    return web.json_response({"staff": staff_json(manager, account)})


@routes.patch("/api/admin/staff/{username}")
async def update_staff(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    manager = _manager(scope)
    store = request.app[STORE]
    account = visible(manager, await store.get_staff(request.match_info["username"]))
    change = parse_change(await json_body(request))
    updated, changed = plan_update(manager, account, change, _known(request))
    if changed:
        await store.put_staff(updated)
        details: dict[str, Any] = {"fields": changed}
        if "roles" in changed:
            details.update(roles=list(updated.roles), roles_before=list(account.roles), sessions_ended=True)
        if "departments" in changed:
            details.update(departments=list(updated.departments), departments_before=list(account.departments))
        await _audit(request, scope, "staff.updated", updated, set(account.departments) | set(updated.departments),
                     **details)
    return web.json_response({"staff": staff_json(manager, updated), "changed": changed})


@routes.delete("/api/admin/staff/{username}")
async def remove_staff(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    store = request.app[STORE]
    account = check_remove(_manager(scope), await store.get_staff(request.match_info["username"]))
    await store.delete_staff(account.username)
    await _audit(request, scope, "staff.removed", account, set(account.departments), roles=list(account.roles))
    return web.json_response({"ok": True})


@routes.post("/api/admin/staff/{username}/password")
async def reset_password(request: web.Request) -> web.Response:
    """Set the given password, or generate one (answered once). Ends the account's sessions."""
    scope = await admin_scope(request)
    manager = _manager(scope)
    store = request.app[STORE]
    account = check_password_reset(manager, await store.get_staff(request.match_info["username"]))
    if is_sso_account(account.password_hash):
        raise Conflict("this account signs in with the identity provider; it has no password here")
    body = await json_body(request)
    unknown = set(body) - {"password"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    given = body.get("password")
    password = generate_password() if given is None or given == "" else parse_password(given)
    current = await store.get_staff(account.username) or account
    await store.put_staff(StaffAccount(current.username, current.display_name, await _hash(password),
                                       current.roles, current.departments, current.session_epoch + 1))
    await _audit(request, scope, "staff.password_reset", account, set(account.departments),
                 generated=given is None or given == "", sessions_ended=True)
    answer: dict[str, Any] = {"ok": True}
    if given is None or given == "":
        answer["password"] = password
    return web.json_response(answer)


# -- audit log --
def _number(query: Any, key: str) -> float | None:
    raw = query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{key}: seconds since 1970") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{key}: seconds since 1970")
    return value


def _text(query: Any, key: str, limit: int = 64) -> str | None:
    raw = query.get(key)
    if raw is None or raw == "":
        return None
    if len(raw) > limit:
        raise InvalidInput(f"{key}: too long")
    return str(raw)


@routes.get("/api/admin/audit")
async def audit_entries(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    q = request.query
    unknown = set(q) - {"department", "actor", "action", "since", "until", "cursor", "limit"}
    if unknown:
        raise InvalidInput(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    department = _text(q, "department")
    if department is not None:
        scope.check(department)
    raw_limit = q.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidInput(f"limit: 1 to {MAX_PAGE}")
    since, until = _number(q, "since"), _number(q, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidInput("until must be after since")
    query = AuditQuery(scope=scope.departments, department=department, actor=_text(q, "actor"),
                       action=_text(q, "action"), since=since, until=until, cursor=_text(q, "cursor", 40),
                       limit=int(raw_limit))
    page = await request.app[AUDIT].query(query)
    return web.json_response({"entries": [e.to_dict() for e in page.entries], "next": page.next,
                              "system": SYSTEM})
