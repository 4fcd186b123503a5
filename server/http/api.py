"""The JSON API under /api/: parses and authenticates requests, calls the service, answers.

Handlers decide nothing: validation of values and every state rule is in the core.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..queue.errors import InvalidInput, QueueError
from ..queue.model import JoinRequest
from ..settings import Settings
from ..signaling.safejson import lone_surrogates
from ..waitingroom import staff_view
from .auth import SESSION_COOKIE, StaffSession
from .keys import AUTH, ROOM, SETTINGS, STORE

routes = web.RouteTableDef()
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def forwarded_client(peer: str, forwarded_for: list[str], trusted: tuple[str, ...]) -> str:
    """The client's address behind trusted reverse proxies.

    Each proxy appends the address it saw to ``X-Forwarded-For`` (nginx's ``$proxy_add_x_forwarded_for``),
    so only the right-hand end was written by proxies we trust; whatever a client sent stands to the left.
    The header is believed only when the direct peer is itself a trusted proxy, then walked from the right
    past trusted proxies: the first other entry is the client. Only trusted entries: the farthest of them.
    """
    networks = _networks(trusted)
    if not _is_trusted(peer, networks):
        return peer
    client = peer
    entries = [e.strip() for line in forwarded_for for e in line.split(",")]
    for entry in reversed([e for e in entries if e]):
        if not _is_trusted(entry, networks):
            return _normalised(entry)
        client = entry
    return _normalised(client)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
    return address


def _normalised(value: str) -> str:
    address = _address(value)
    return str(address) if address is not None else value[:64]


def _is_trusted(value: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    address = _address(value)
    return address is not None and any(address in n for n in networks)


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in trusted)  # validated in settings


def client_address(request: web.Request) -> str:
    """The address the join, login and question limits count (see ``forwarded_client``)."""
    settings = request.app[SETTINGS]
    peer = request.remote or "unknown"
    if not settings.trust_forwarded_for:
        return peer
    return forwarded_client(peer, request.headers.getall("X-Forwarded-For", []), settings.trusted_proxies)


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, RecursionError) as e:
        # ValueError: malformed JSON or text (JSONDecodeError, UnicodeDecodeError); RecursionError: nesting
        # deeper than the interpreter's recursion limit, which a body well under the size cap can reach.
        raise InvalidInput("the body is not valid JSON") from e
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    if lone_surrogates(await request.text(), body):
        raise InvalidInput("the body holds text that is not valid Unicode")
    return body


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same_origin(request: web.Request) -> bool:
    """Browsers send Origin on unsafe requests; other systems integrating with the API may not."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


async def staff_session(request: web.Request) -> StaffSession:
    session = await request.app[AUTH].session(request.cookies.get(SESSION_COOKIE))
    if request.method in UNSAFE:
        token = request.headers.get("X-CSRF-Token", "")
        if not _same_origin(request) or not secrets.compare_digest(token.encode(), session.csrf.encode()):
            raise CsrfError()
    return session


class CsrfError(QueueError):
    """Missing or wrong CSRF token, or a request from a foreign origin."""

    code = "csrf"
    status = 403


def ticket_json(view: dict[str, Any]) -> web.Response:
    return web.json_response({"ticket": view})


# -- health --
READY_TIMEOUT = 1.0
"""Seconds the store gets to answer /readyz."""


def _store_kind(request: web.Request) -> str:
    return "redis" if request.app[SETTINGS].redis_url else "memory"


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: this process serves HTTP. It does not ask the store, so that a Redis outage (which every
    node shares) does not get every node restarted; whether to send traffic here is /readyz's answer."""
    return web.json_response({"status": "ok", "store": _store_kind(request)})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store answered a read within ``READY_TIMEOUT``; else 503, with no traceback."""
    kind = _store_kind(request)
    try:
        any_department = next(iter(request.app[ROOM].departments), "-")
        await asyncio.wait_for(request.app[STORE].waiting_counts([any_department]), READY_TIMEOUT)
    except Exception:  # noqa: BLE001 - any store failure (refused, hung, timed out) means "not ready"
        return web.json_response({"status": "unavailable", "store": kind}, status=503)
    return web.json_response({"status": "ready", "store": kind})


# -- citizens --
@routes.get("/api/departments")
async def departments(request: web.Request) -> web.Response:
    return web.json_response({"departments": await request.app[ROOM].overview()})


@routes.post("/api/departments/{department}/tickets")
async def join(request: web.Request) -> web.Response:
    if not _same_origin(request):  # another site's page must not check its visitors in (nor spend our limit)
        raise CsrfError("check-in from a foreign origin")
    room = request.app[ROOM]
    department = room.department(request.match_info["department"])
    body = await json_body(request)
    fields = {"name": str, "concern": str, "language": str, "interpreter": bool, "consent": bool}
    for key, value in body.items():
        if key not in fields:
            raise InvalidInput(f"unknown field {key!r}")
        if not isinstance(value, fields[key]):
            raise InvalidInput(f"{key} has the wrong type")
    # (too many check-ins: JoinLimited, answered with its retry_after by the error middleware, server/errors.py)
    ticket, token = await room.join(
        department.id, JoinRequest(**body), client_address(request), existing_token=bearer(request)
    )
    return web.json_response({"token": token, "ticket": await room.citizen_view(ticket)}, status=201)


async def _citizen(request: web.Request):  # type: ignore[no-untyped-def]
    room = request.app[ROOM]
    return room, await room.ticket_for_token(bearer(request))


@routes.get("/api/tickets/me")
async def my_ticket(request: web.Request) -> web.Response:
    room, ticket = await _citizen(request)
    return ticket_json(await room.citizen_view(ticket))


@routes.post("/api/tickets/me/answer")
async def answer(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    ticket = await room.answer(bearer(request) or "")
    return ticket_json(await room.citizen_view(ticket))


@routes.delete("/api/tickets/me")
async def leave(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    ticket = await room.leave(bearer(request) or "")
    return ticket_json(await room.citizen_view(ticket))


@routes.post("/api/tickets/me/rejoin")
async def rejoin(request: web.Request) -> web.Response:
    """A no-show citizen takes their old place back, within ``rejoin_seconds`` and once."""
    room = request.app[ROOM]
    ticket = await room.rejoin(bearer(request) or "")
    return ticket_json(await room.citizen_view(ticket))


# -- staff sessions --
def _session_body(session: StaffSession) -> dict[str, Any]:
    c = session.clerk
    return {
        "csrf": session.csrf,
        "clerk": {
            "username": c.username,
            "display_name": c.display_name,
            "departments": sorted(c.departments),
            "roles": sorted(c.roles),
        },
    }


@routes.post("/api/session")
async def login(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise CsrfError("login from a foreign origin")
    body = await json_body(request)
    settings = request.app[SETTINGS]
    session = await request.app[AUTH].login(body.get("username"), body.get("password"), client_address(request))
    response = web.json_response(_session_body(session))
    set_session_cookie(response, session, settings)
    return response


def set_session_cookie(response: web.StreamResponse, session: StaffSession, settings: Settings) -> None:
    """The staff session's cookie (password login and single sign-on alike, server/http/oidc.py)."""
    response.set_cookie(
        SESSION_COOKIE, session.session_id, httponly=True, samesite="Strict", secure=settings.secure_cookies,
        max_age=int(settings.session_hours * 3600), path="/",
    )


@routes.get("/api/session")
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_session_body(await staff_session(request)))


@routes.delete("/api/session")
async def logout(request: web.Request) -> web.Response:
    session = await staff_session(request)
    await request.app[AUTH].logout(session.session_id, session.clerk)
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# -- staff actions --
@routes.get("/api/staff/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    session = await staff_session(request)
    return web.json_response(await request.app[ROOM].dashboard(session.clerk))


@routes.post("/api/staff/departments/{department}/call-next")
async def call_next(request: web.Request) -> web.Response:
    session = await staff_session(request)
    ticket = await request.app[ROOM].call_next(session.clerk, request.match_info["department"])
    return ticket_json(staff_view(ticket))


def _ticket_action(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        session = await staff_session(request)
        method = getattr(request.app[ROOM], name)
        ticket = await method(session.clerk, request.match_info["ticket_id"])
        return ticket_json(staff_view(ticket))

    handler.__name__ = f"staff_{name}"
    return handler


for _path, _name in (("call", "call"), ("start", "start"), ("finish", "finish"), ("no-show", "no_show"),
                     ("return", "return_to_queue")):
    routes.post(f"/api/staff/tickets/{{ticket_id}}/{_path}")(_ticket_action(_name))


@routes.post("/api/staff/tickets/{ticket_id}/transfer")
async def transfer(request: web.Request) -> web.Response:
    session = await staff_session(request)
    body = await json_body(request)
    department, note = body.get("department"), body.get("note", "")
    if not isinstance(department, str):
        raise InvalidInput("department is required")
    ticket = await request.app[ROOM].transfer(session.clerk, request.match_info["ticket_id"], department, note,
                                              body.get("confirm_closed", False))
    return ticket_json(staff_view(ticket))


@routes.put("/api/staff/presence")
async def presence(request: web.Request) -> web.Response:
    session = await staff_session(request)
    requested = (await json_body(request)).get("status")
    status = await request.app[ROOM].choose_presence(session.clerk, requested)
    await request.app[AUTH].remember_presence(session.session_id, str(requested))  # valid: chosen above
    return web.json_response({"status": status.value})

