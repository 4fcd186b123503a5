"""/admin/settings and /api/admin/settings: the server-wide settings an admin changes at runtime (answer,
rejoin and grace times, check-in limits; ``server.live_settings``). Stored with the departments (one extra
record with its own revision), live on every node within about a second, kept across restarts; the TOML's
``[server]`` values apply until a value is changed here. Each change is audited (``settings.changed``).
Leads, clerks and anybody else get 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import live_settings
from ..queue.errors import InvalidInput, NotAuthenticated
from .admin_access import admin_scope, scope_of
from .api import json_body
from .auth import SESSION_COOKIE
from .keys import AUDIT, AUTH, ROOM, SETTINGS

routes = web.RouteTableDef()


def _json(request: web.Request) -> dict[str, Any]:
    directory = request.app[ROOM].directory
    return {
        "settings": live_settings.current(request.app[SETTINGS], directory.settings),
        "configured": {name: getattr(request.app[SETTINGS], name) for name in live_settings.FIELDS},
        "changed": sorted(set(directory.settings) & set(live_settings.FIELDS)),
        "limits": {name: {"min": f.low, "max": f.high, "integer": f.kind is int}
                   for name, f in live_settings.FIELDS.items()},
        "revision": directory.settings_revision,
    }


@routes.get("/admin/settings")
async def settings_page(request: web.Request) -> web.StreamResponse:
    from .pages import render, render_not_found

    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    scope = scope_of(session)
    if scope is None or not scope.is_admin:
        return render_not_found(request)
    return render(request, "admin_settings.html", admin_section="settings",
                  page={"is_admin": True, "fields": list(live_settings.FIELDS)})


@routes.get("/api/admin/settings")
async def get_settings(request: web.Request) -> web.Response:
    (await admin_scope(request)).require_admin()
    return web.json_response(_json(request))


@routes.patch("/api/admin/settings")
async def change_settings(request: web.Request) -> web.Response:
    """``{"revision": n, "answer_seconds": 60, ...}``: the named settings change, the others stay. A stale
    revision gets 409 ``edit_conflict``; bad input 400 and nothing changes."""
    scope = await admin_scope(request)
    scope.require_admin()
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("the changes must be a JSON object")
    revision = body.pop("revision", None)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise InvalidInput("revision is required: the revision of the settings the change starts from")
    changes = live_settings.parse_changes(body)
    stored_before = await request.app[ROOM].directory.change_settings(changes, revision)
    before = live_settings.current(request.app[SETTINGS], stored_before)
    changed = sorted(k for k, v in changes.items() if before[k] != v)
    await request.app[AUDIT].record(scope.clerk.username, "settings.changed", target="server",
                                    details={"fields": changed})
    return web.json_response(_json(request))
