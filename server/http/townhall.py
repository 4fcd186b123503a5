"""Town-hall routes: the public pages and JSON API for citizens, the moderator's and the politician's pages.

Citizens need no account: joining an event's audience returns a token (``Authorization: Bearer``) that
the page keeps in ``localStorage``; a question's link is its random id. Staff routes use the staff session
(cookie + CSRF), and only moderators create events or moderate (``server.townhall.core``).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..queue.errors import InvalidInput, NotAuthenticated
from ..townhall import core
from ..townhall.errors import EventNotFound, NoRecording
from ..townhall.model import EventState, TownHallEvent
from ..townhalls import Audience, event_view
from .api import bearer, client_address, json_body, staff_session
from .auth import SESSION_COOKIE
from .keys import AUTH, TOWNHALL
from .recordings import check_range, media_response

routes = web.RouteTableDef()
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _split(events: list[TownHallEvent]) -> dict[str, list[dict[str, Any]]]:
    upcoming = [event_view(e) for e in events if e.state is not EventState.ENDED]
    past = [event_view(e) for e in reversed(events) if e.state is EventState.ENDED]
    return {"upcoming": upcoming, "past": past}


@routes.get("/api/townhall/events")
async def list_events(request: web.Request) -> web.Response:
    return web.json_response(_split(await request.app[TOWNHALL].events()))


@routes.post("/api/townhall/events")
async def create_event(request: web.Request) -> web.Response:
    session = await staff_session(request)
    event = await request.app[TOWNHALL].create(session.clerk, await json_body(request))
    return web.json_response({"event": event_view(event)}, status=201)


@routes.get("/api/townhall/events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    service = request.app[TOWNHALL]
    event = await service.event(request.match_info["event_id"])
    order = request.query.get("order", "votes")
    return web.json_response({"event": event_view(event), "questions": await service.public_questions(event.id,
                                                                                                        order)})


@routes.post("/api/townhall/events/{event_id}/audience")
async def join_audience(request: web.Request) -> web.Response:
    """Join the audience (or confirm a kept token): ``{"token", "audience"}``."""
    service = request.app[TOWNHALL]
    token, who = await service.join(request.match_info["event_id"], bearer(request))
    return web.json_response({"token": token, "audience": who.audience, "my_votes": await service.my_votes(who)})


@routes.post("/api/townhall/events/{event_id}/questions")
async def ask(request: web.Request) -> web.Response:
    service = request.app[TOWNHALL]
    try:
        who: Audience | None = await service.audience(bearer(request))
    except EventNotFound:
        who = None
    if who is None or who.event != request.match_info["event_id"]:  # one answer: missing, unknown or foreign
        await service.event(request.match_info["event_id"])  # (an unknown event is event_not_found)
        raise NotAuthenticated("an audience token of this event is needed (POST .../audience)")
    body = await json_body(request)
    unknown = set(body) - {"text", "name"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    q = await service.ask(who, body.get("text"), body.get("name", ""), client_address(request))
    return web.json_response({"question": {"id": q.id, "state": core.public_state(q),
                                           "link": f"/townhall/questions/{q.id}"}}, status=201)


@routes.get("/api/townhall/questions/{question_id}")
async def question_status(request: web.Request) -> web.Response:
    return web.json_response({"question": await request.app[TOWNHALL].question_status(
        request.match_info["question_id"])})


# -- the published recording --
@routes.get("/api/townhall/events/{event_id}/recording")
async def recording_info(request: web.Request) -> web.Response:
    """Chapters (one per answered question) and the YouTube description block of a published recording."""
    service = request.app[TOWNHALL]
    return web.json_response(service.recording_info(await service.event(request.match_info["event_id"])))


async def _published(request: web.Request, name: str) -> tuple[Any, Any]:
    service = request.app[TOWNHALL]
    event = await service.event(request.match_info["event_id"])
    path = service.published_file(event, name)
    if path is None:
        raise NoRecording("this event has no published recording")
    return event, path


@routes.get("/townhall/{event_id}/recording.webm")
async def recording_file(request: web.Request) -> web.StreamResponse:
    _, path = await _published(request, "recording.webm")
    refused = check_range(request, path)
    if refused is not None:
        return refused
    return media_response(path, private=False)


@routes.get("/townhall/{event_id}/chapters.vtt")
async def chapters_file(request: web.Request) -> web.Response:
    _, path = await _published(request, "chapters.vtt")
    return web.Response(text=path.read_text("utf-8"), content_type="text/vtt", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# -- pages --
def _render(request: web.Request, template: str, **context: Any) -> web.Response:
    from .pages import render

    return render(request, template, **context)


def _not_found(request: web.Request) -> web.Response:
    from .pages import render_not_found

    return render_not_found(request)


@routes.get("/townhall")
async def townhall_page(request: web.Request) -> web.Response:
    return _render(request, "townhall_list.html", events=_split(await request.app[TOWNHALL].events()))


@routes.get("/townhall/questions/{question_id}")
async def question_page(request: web.Request) -> web.Response:
    if not _ID.match(request.match_info["question_id"]):
        return _not_found(request)
    return _render(request, "townhall_question.html", question_id=request.match_info["question_id"])


async def _event_or_404(request: web.Request) -> TownHallEvent | None:
    event_id = request.match_info["event_id"]
    if not _ID.match(event_id):
        return None
    return await request.app[TOWNHALL].store.get_event(event_id)


@routes.get("/townhall/{event_id}")
async def event_page(request: web.Request) -> web.Response:
    event = await _event_or_404(request)
    if event is None:
        return _not_found(request)
    return _render(request, "townhall_event.html", event=event_view(event),
                   limits={"question": core.MAX_QUESTION, "name": core.MAX_AUTHOR})


async def _staff_page(request: web.Request, template: str, allowed: Any) -> web.StreamResponse:
    event = await _event_or_404(request)
    if event is None:
        return _not_found(request)
    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    if not allowed(session.clerk, event):
        return _not_found(request)
    return _render(request, template, event=event_view(event))


@routes.get("/townhall/{event_id}/moderate")
async def moderate_page(request: web.Request) -> web.StreamResponse:
    return await _staff_page(request, "townhall_moderate.html", lambda c, e: "moderator" in c.roles)


@routes.get("/townhall/{event_id}/presenter")
async def presenter_page(request: web.Request) -> web.StreamResponse:
    return await _staff_page(request, "townhall_presenter.html",
                             lambda c, e: c.username in e.politicians or "moderator" in c.roles)


@routes.get("/staff/townhall")
async def staff_townhall_page(request: web.Request) -> web.StreamResponse:
    try:
        session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    except NotAuthenticated:
        raise web.HTTPSeeOther("/staff") from None
    if "moderator" not in session.clerk.roles:
        return _not_found(request)
    return _render(request, "townhall_staff.html", limits={"title": core.MAX_TITLE,
                                                            "description": core.MAX_DESCRIPTION})


__all__ = ["routes", "staff_session"]
