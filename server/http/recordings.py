"""Staff routes for recordings: the list, playback (HTTP range requests), download, the consent record,
deletion and the access log. Leads of the recording's department and the clerk who recorded it see a
recording; for everybody else it does not exist (404). Every view, download, export and deletion is
written to the access log, which leads read.

The files are read from ``data_dir/recordings/<id>/`` by these handlers only; nothing there is served
statically, and recording ids are checked against their pattern before any path is built.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from ..errors import error_response
from ..queue.errors import NotAuthenticated
from ..recordings import consent_record, view
from .api import staff_session
from .auth import SESSION_COOKIE
from .keys import AUTH, RECORDINGS, ROOM

routes = web.RouteTableDef()


def _departments(request: web.Request) -> dict[str, str]:
    return {d.id: d.name for d in request.app[ROOM].departments.values()}


@routes.get("/api/staff/recordings")
async def list_recordings(request: web.Request) -> web.Response:
    session = await staff_session(request)
    service = request.app[RECORDINGS]
    now = service.clock()
    names = _departments(request)
    recordings = [
        view(r, now) | {"department_name": names.get(r.department, r.department)}
        for r in await service.visible(session.clerk)
    ]
    return web.json_response({"recordings": recordings, "can_read_access_log": "lead" in session.clerk.roles})


@routes.get("/api/staff/recordings/access-log")
async def access_log(request: web.Request) -> web.Response:
    session = await staff_session(request)
    entries = await request.app[RECORDINGS].access_log(session.clerk)
    return web.json_response({"entries": [e.to_dict() for e in entries]})


@routes.get("/api/staff/recordings/{recording_id}")
async def get_recording(request: web.Request) -> web.Response:
    session = await staff_session(request)
    service = request.app[RECORDINGS]
    rec = await service.for_staff(session.clerk, request.match_info["recording_id"])
    return web.json_response({"recording": view(rec, service.clock()), "consent": consent_record(rec)})


@routes.get("/api/staff/recordings/{recording_id}/consent")
async def export_consent(request: web.Request) -> web.Response:
    """The consent record as a file to keep with a downloaded recording."""
    session = await staff_session(request)
    service = request.app[RECORDINGS]
    rec = await service.for_staff(session.clerk, request.match_info["recording_id"])
    await service.log_access(session.clerk, rec, "export")
    response = web.json_response(consent_record(rec), dumps=_pretty)
    response.headers["Content-Disposition"] = f'attachment; filename="einwilligungen-{rec.id}.json"'
    return response


def _pretty(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=1)


@routes.get("/api/staff/recordings/{recording_id}/media")
async def media(request: web.Request) -> web.StreamResponse:
    """The composed file; seekable through range requests. ``?download=1`` saves it instead of playing."""
    session = await staff_session(request)
    service = request.app[RECORDINGS]
    rec = await service.for_staff(session.clerk, request.match_info["recording_id"])
    path = service.media_file(rec)
    if path is None:
        return error_response("not_ready", "this recording has no playable file (yet)", 409)
    download = request.query.get("download") == "1"
    refused = check_range(request, path)
    if refused is not None:
        return refused
    start = request.http_range.start
    # Byte 0 once per load (seeking asks for later ranges); a suffix range reaching back to it reads the file too.
    if download or start is None or start == 0 or (start < 0 and -start >= path.stat().st_size):
        await service.log_access(session.clerk, rec, "download" if download else "view")
    return media_response(path, f"aufzeichnung-{rec.id}.webm" if download else None, private=True)


def check_range(request: web.Request, path: Path) -> web.Response | None:
    """A JSON 416 for a malformed range or one past the end (aiohttp would answer in plain text)."""
    size = path.stat().st_size
    try:
        wanted = request.http_range
    except ValueError:
        return _unsatisfiable("malformed Range header", size)
    if re.fullmatch(r"bytes=-0+", request.headers.get("Range", "").strip(), re.IGNORECASE):
        return _unsatisfiable("empty suffix range", size)  # (aiohttp reads "-0" as the whole file)
    start = wanted.start
    if start is not None and start < 0:  # a suffix range, bytes=-N: the last N bytes (found by probing: was 416)
        return None if size > 0 else _unsatisfiable("the file is empty", size)
    if start is not None and start >= size:
        return _unsatisfiable("the range starts past the end of the file", size)
    return None


def media_response(path: Path, download_name: str | None = None, private: bool = True) -> web.FileResponse:
    """The file with range support (aiohttp's FileResponse), as WebM, never sniffed."""
    headers = {"Cache-Control": "private, no-store" if private else "public, max-age=300",
               "Content-Type": "video/webm", "X-Content-Type-Options": "nosniff"}
    if download_name:
        headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return web.FileResponse(path, headers=headers)


def _unsatisfiable(message: str, size: int) -> web.Response:
    response = error_response("range_not_satisfiable", message, 416)
    response.headers["Content-Range"] = f"bytes */{size}"
    return response


@routes.delete("/api/staff/recordings/{recording_id}")
async def delete_recording(request: web.Request) -> web.Response:
    session = await staff_session(request)
    await request.app[RECORDINGS].delete(session.clerk, request.match_info["recording_id"])
    return web.json_response({"ok": True})


@routes.get("/staff/recordings")
async def recordings_page(request: web.Request) -> web.StreamResponse:
    """Leads and clerks who recorded something see the page; other staff get 404, visitors the login."""
    from .pages import render, render_not_found

    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    service = request.app[RECORDINGS]
    if "lead" not in session.clerk.roles and not await service.visible(session.clerk):
        return render_not_found(request)
    return render(request, "recordings.html", departments=_departments(request))
