"""/admin/stats and /api/admin/stats(.csv): figures per department and hour, day or week, from the event log
(no personal data). Leads see their departments, admins all; anyone else gets 404 (``admin_scope``), and a
lead asking for another department gets the same 404. The figures are computed by ``server.stats.report``
from the counters the event log store keeps (``server/store/eventlog.py``).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from ..queue.errors import NotAuthenticated
from ..stats.report import ALL, DEFAULT_DAYS, GRANULARITIES, MAX_DAYS, Query, csv_rows, parse_query, report
from .admin_access import AdminScope, NotFoundForRole, admin_scope, scope_of
from .auth import SESSION_COOKIE
from .keys import AUTH, ROOM, SETTINGS, STATS

routes = web.RouteTableDef()


def _departments(request: web.Request, scope: AdminScope) -> list[dict[str, str]]:
    return [{"id": d.id, "name": d.name} for d in request.app[ROOM].departments.values() if scope.may_manage(d.id)]


def _query(request: web.Request, scope: AdminScope) -> Query:
    allowed = [d["id"] for d in _departments(request, scope)]
    try:
        return parse_query(request.query, now=request.app[ROOM].clock(), tz=request.app[SETTINGS].tz,
                           allowed=allowed, everything=scope.is_admin)
    except LookupError:
        raise NotFoundForRole("not found") from None


async def _report(request: web.Request) -> dict[str, Any]:
    scope = await admin_scope(request)
    query = _query(request, scope)
    store = request.app[STATS].store
    groups = query.day_groups()
    sums = await store.sums(query.sources, groups, query.hourly)
    duty = await store.duty(query.sources, groups, query.hourly)
    result = report(query, sums, duty)
    result["department_names"] = {d["id"]: d["name"] for d in _departments(request, scope)}
    result["timezone"] = request.app[SETTINGS].timezone
    return result


@routes.get("/api/admin/stats")
async def stats_json(request: web.Request) -> web.Response:
    response = web.json_response(await _report(request))
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/api/admin/stats.csv")
async def stats_csv(request: web.Request) -> web.Response:
    result = await _report(request)
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(csv_rows(result))
    name = f"statistik-{result['department']}-{result['granularity']}-{result['from']}-{result['to']}.csv"
    response = web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/admin/stats")
async def stats_page(request: web.Request) -> web.StreamResponse:
    """Leads and admins see the page; other staff the 404 page; visitors go to the login."""
    from .pages import render, render_not_found

    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    scope = scope_of(session)
    if scope is None:
        return render_not_found(request)
    query = parse_query({}, now=request.app[ROOM].clock(), tz=request.app[SETTINGS].tz, allowed=[])
    return render(request, "admin_stats.html", admin_section="stats",
                  departments=_departments(request, scope),
                  page={"is_admin": scope.is_admin, "all": ALL, "granularities": list(GRANULARITIES),
                        "default_days": DEFAULT_DAYS,
                        "max_days": MAX_DAYS, "from": query.first.isoformat(), "to": query.last.isoformat()})
