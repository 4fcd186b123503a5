"""/admin and /api/admin/departments*: leads edit the departments they lead, admins every department (and
create and remove them). The edits themselves are pure (``server.rooms.directory``); the live directory
(``server.store.departments``) stores them with a revision check and every node follows. Each change is
written to the audit log. Anybody else gets 404 (``admin_scope``); unsafe methods need the CSRF token.

A lead asking about a department they do not lead gets the same 404 as for one that does not exist.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..queue.errors import InvalidInput, NotAuthenticated
from ..rooms import directory as edits
from ..store.departments import Stored
from .admin_access import AdminScope, NotFoundForRole, admin_scope, scope_of
from .api import json_body
from .appointments import APPOINTMENTS
from .auth import SESSION_COOKIE
from .keys import AUDIT, AUTH, ROOM

routes = web.RouteTableDef()


async def _counts(request: web.Request, department_id: str) -> tuple[int, int]:
    store = request.app[ROOM].store
    waiting = (await store.waiting_counts([department_id]))[department_id]
    return waiting, len(await store.active(department_id))


async def _booked(request: web.Request, department_id: str) -> int:
    """Booked appointments still ahead (their citizens hold links into the department)."""
    service = request.app.get(APPOINTMENTS)
    if service is None:
        return 0
    return await service.store.booked_ahead(department_id, request.app[ROOM].clock())


async def _json(request: web.Request, department_id: str) -> dict[str, Any]:
    """The department's full configuration, its revision and what is going on there now."""
    room = request.app[ROOM]
    d = room.department(department_id)
    is_open, _, reason = room.opening(d)
    waiting, active = await _counts(request, d.id)
    return {**edits.department_to_dict(d), "revision": room.directory.revision(d.id), "open": is_open,
            "closed_reason": reason, "waiting": waiting, "active": active}


async def _scoped(request: web.Request) -> tuple[AdminScope, str]:
    """The caller's scope and the department of the URL, which they must manage (else 404)."""
    scope = await admin_scope(request)
    department_id = request.match_info["department"]
    scope.check(department_id)
    if department_id not in request.app[ROOM].departments:  # an admin: the same answer a lead gets
        raise NotFoundForRole("not found")
    return scope, department_id


def _revision(body: dict[str, Any]) -> int:
    revision = body.pop("revision", None)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise InvalidInput("revision is required: the revision of the department the change starts from")
    return revision


async def _audit(request: web.Request, scope: AdminScope, action: str, department_id: str, **details: Any) -> None:
    await request.app[AUDIT].record(scope.clerk.username, action, target=department_id, department=department_id,
                                    details=details or None)


async def _answer(request: web.Request, stored: Stored, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"department": await _json(request, stored.department.id), **extra}, status=status)


# -- page --
@routes.get("/admin")
async def admin_page(request: web.Request) -> web.StreamResponse:
    """Leads and admins see the page; other staff the 404 page; visitors go to the login."""
    from .pages import render, render_not_found

    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    scope = scope_of(session)
    if scope is None:
        return render_not_found(request)
    return render(request, "admin_departments.html", admin_section="departments",
                  page={"is_admin": scope.is_admin, "limits": {"name": edits.MAX_NAME,
                                                                "description": edits.MAX_DESCRIPTION,
                                                                "message": edits.MAX_MESSAGE}})


# -- API --
@routes.get("/api/admin/departments")
async def list_departments(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    mine = [i for i in request.app[ROOM].departments if scope.may_manage(i)]
    return web.json_response({"departments": [await _json(request, i) for i in mine], "is_admin": scope.is_admin})


@routes.post("/api/admin/departments")
async def create_department(request: web.Request) -> web.Response:
    scope = await admin_scope(request)
    scope.require_admin()
    department = edits.create(await json_body(request))
    stored = await request.app[ROOM].directory.create(department)
    await _audit(request, scope, "department.created", department.id)
    return await _answer(request, stored, 201)


@routes.get("/api/admin/departments/{department}")
async def get_department(request: web.Request) -> web.Response:
    _, department_id = await _scoped(request)
    return web.json_response({"department": await _json(request, department_id)})


@routes.patch("/api/admin/departments/{department}")
async def edit_department(request: web.Request) -> web.Response:
    scope, department_id = await _scoped(request)
    body = await json_body(request)
    revision = _revision(body)
    room = request.app[ROOM]
    current = room.department(department_id)
    department = edits.edit(current, body, admin=scope.is_admin)
    if current.appointments is not None and department.appointments is None:
        edits.check_no_bookings(await _booked(request, department_id))  # their links would fail
    stored = await room.directory.update(department, revision)
    await _audit(request, scope, "department.updated", department_id, fields=sorted(body))
    return await _answer(request, stored)


@routes.delete("/api/admin/departments/{department}")
async def delete_department(request: web.Request) -> web.Response:
    scope, department_id = await _scoped(request)
    scope.require_admin()
    revision = _revision(await json_body(request))
    edits.check_removable(*await _counts(request, department_id), await _booked(request, department_id))
    await request.app[ROOM].directory.delete(department_id, revision)
    await _audit(request, scope, "department.removed", department_id)
    return web.json_response({"ok": True})


@routes.post("/api/admin/departments/{department}/close")
async def close_department(request: web.Request) -> web.Response:
    """Close at once with a message; ``keep_places`` false ends every waiting ticket (their pages are told)."""
    scope, department_id = await _scoped(request)
    message, keep = edits.parse_close(await json_body(request))  # bad input refused before anything changes
    room = request.app[ROOM]
    # Closed first (no check-in gets in), then the places end, then the pages hear of both at once: a page
    # never reads "closed, you keep your place" when it is about to lose it.
    stored = await room.directory.modify(department_id, lambda d: edits.close_at_once(d, message), announce=keep)
    ended = 0
    if not keep:
        try:
            ended = await room.end_waiting(department_id)
        finally:
            await room.directory.announce(department_id)
    await _audit(request, scope, "department.closed", department_id, keep_places=keep, tickets_ended=ended)
    return await _answer(request, stored, ended=ended)


@routes.post("/api/admin/departments/{department}/reopen")
async def reopen_department(request: web.Request) -> web.Response:
    scope, department_id = await _scoped(request)
    stored = await request.app[ROOM].directory.modify(department_id, edits.reopen)
    await _audit(request, scope, "department.reopened", department_id)
    return await _answer(request, stored)
