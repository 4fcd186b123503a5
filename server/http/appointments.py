"""Appointment routes: the booking page and the citizen's appointment page, the JSON API for both (no
account: the booking returns a token, sent back as ``Authorization: Bearer``), and the clerks' day list.

Handlers translate between the wire and the service; the rules live in ``server.appointments.core``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..appointments.errors import NotOffered
from ..appointments.service import AppointmentService, appointment_link
from ..queue.core import MAX_CONCERN, MAX_NAME
from ..queue.errors import InvalidInput, UnknownDepartment
from .api import CsrfError, _same_origin, bearer, client_address, json_body, staff_session
from .keys import SETTINGS

APPOINTMENTS: web.AppKey[AppointmentService] = web.AppKey("appointments", AppointmentService)

routes = web.RouteTableDef()
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "start": (int, float), "name": str, "concern": str, "email": str, "language": str, "consent": bool,
}


def _service(request: web.Request) -> AppointmentService:
    return request.app[APPOINTMENTS]


def _booking_fields(body: dict[str, Any]) -> dict[str, Any]:
    for key, value in body.items():
        if key not in _FIELDS:
            raise InvalidInput(f"unknown field {key!r}")
        if not isinstance(value, _FIELDS[key]) or (key == "start" and isinstance(value, bool)):
            raise InvalidInput(f"{key} has the wrong type")
    if "start" not in body:
        raise InvalidInput("start is required")
    return body


def _check_origin(request: web.Request) -> None:
    if not _same_origin(request):  # another site's page must not book for its visitors
        raise CsrfError("request from a foreign origin")


@routes.get("/api/appointments/{department}/days")
async def days(request: web.Request) -> web.Response:
    service = _service(request)
    d, config = service.offer(request.match_info["department"])
    return web.json_response({"department": d.id, "slot_minutes": config.slot_minutes,
                              "days": await service.days(d.id)})


@routes.get("/api/appointments/{department}/slots")
async def slots(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response({"slots": await service.slots(request.match_info["department"],
                                                           request.query.get("day"))})


@routes.post("/api/appointments/{department}")
async def book(request: web.Request) -> web.Response:
    _check_origin(request)
    service = _service(request)
    fields = _booking_fields(await json_body(request))
    appointment, token, mailed = await service.book(request.match_info["department"], fields, client_address(request))
    return web.json_response({
        "token": token, "link": appointment_link(appointment.id, token), "appointment": service.view(appointment),
        "email_sent": mailed,
    }, status=201)


@routes.get("/api/appointments/me")
async def mine(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response({"appointment": service.view(await service.by_token(bearer(request)))})


@routes.get("/api/appointments/me/ics")
async def ics(request: web.Request) -> web.Response:
    service = _service(request)
    token = bearer(request) or ""
    appointment = await service.by_token(token)
    base = f"{request.scheme}://{request.host}"
    smtp = request.app[SETTINGS].smtp
    if smtp is not None:
        base = smtp.public_url
    body = service.ics(appointment, base + appointment_link(appointment.id, token))
    return web.Response(body=body, content_type="text/calendar", charset="utf-8", headers={
        "Content-Disposition": 'attachment; filename="termin.ics"', "Cache-Control": "no-store",
    })


@routes.delete("/api/appointments/me")
async def cancel(request: web.Request) -> web.Response:
    _check_origin(request)
    service = _service(request)
    return web.json_response({"appointment": service.view(await service.cancel(bearer(request)))})


@routes.post("/api/appointments/me/move")
async def move(request: web.Request) -> web.Response:
    _check_origin(request)
    service = _service(request)
    body = await json_body(request)
    if set(body) != {"start"}:
        raise InvalidInput("the body must be {\"start\": <epoch seconds>}")
    appointment = await service.move(bearer(request), body["start"], client_address(request))
    return web.json_response({"appointment": service.view(appointment)})


@routes.post("/api/appointments/me/checkin")
async def checkin(request: web.Request) -> web.Response:
    """Enter the waiting room: a ticket marked with the appointment's time (token in ``ticket_token``;
    ``X-Ticket-Token`` may carry a ticket this browser holds, as check-in does with ``Authorization``)."""
    _check_origin(request)
    service = _service(request)
    appointment, ticket, ticket_token = await service.check_in(
        bearer(request), client_address(request), request.headers.get("X-Ticket-Token") or None)
    return web.json_response({
        "appointment": service.view(appointment), "ticket_token": ticket_token,
        "ticket": await service.room.citizen_view(ticket),
        "wait_link": f"/wait/{ticket.id}#{ticket_token}",
    }, status=201)


@routes.get("/api/staff/appointments")
async def staff_day(request: web.Request) -> web.Response:
    session = await staff_session(request)
    service = _service(request)
    department = request.query.get("department", "")
    return web.json_response({"department": department, "appointments": await service.staff_day(
        session.clerk, department, request.query.get("day"))})


# -- pages --
@routes.get("/book/{department}")
async def book_page(request: web.Request) -> web.Response:
    from .pages import render, render_not_found

    service = _service(request)
    try:
        d, config = service.offer(request.match_info["department"])
    except (UnknownDepartment, NotOffered):
        return render_not_found(request)
    return render(
        request, "book.html", department={"id": d.id, "name": d.name, "description": d.description},
        config=config, bookable_days=await service.days(d.id), mail=service.mailer is not None,
        limits={"name": MAX_NAME, "concern": MAX_CONCERN}, timezone=request.app[SETTINGS].timezone,
    )


@routes.get("/appointment/{appointment_id}")
async def appointment_page(request: web.Request) -> web.Response:
    # As the waiting page: only the token in the fragment proves anything; every well-formed id gets the shell.
    from .pages import render, render_not_found

    if not _ID.match(request.match_info["appointment_id"]):
        return render_not_found(request)
    return render(request, "appointment.html", appointment_id=request.match_info["appointment_id"],
                  timezone=request.app[SETTINGS].timezone)
