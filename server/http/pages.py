"""The HTML pages: server-rendered jinja2 shells; live data comes from the JSON API and socket.io.

Pages carry a strict Content-Security-Policy: no inline scripts or styles. What a script needs (the
translated messages, ids, limits) travels in a ``<script type="application/json">`` block, which the
browser never executes.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from ..i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGE_NAMES,
    PAGE_LANGUAGES,
    RTL_LANGUAGES,
    estimate_text,
    gettext,
    negotiate,
    negotiate_accept_language,
    ngettext,
    opening_text,
    script_messages,
)
from ..queue.core import MAX_CONCERN, MAX_NAME, MAX_NOTE
from ..queue.errors import UnknownDepartment
from .keys import ROOM, SETTINGS

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)

LANG_COOKIE = "sps_lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self' ws: wss:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Pages show live numbers and depend on the language cookie: revalidate every time.
    "Cache-Control": "no-cache",
    "Vary": "Cookie",
}

_TICKET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def setup_pages(app: web.Application) -> None:
    """Register the pages, the static files and the template environment on ``app``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # ``_()`` in the templates is the i18n extension's alias for the ``gettext`` of the render context
        # (the page's language, server/i18n.py); ``{% trans %}`` blocks would use it too.
        extensions=["jinja2.ext.i18n"],
    )
    env.globals.update(language_names=LANGUAGE_NAMES, rtl_languages=RTL_LANGUAGES, days=_DAYS)
    app[TEMPLATES] = env
    app.router.add_get("/", index_page, name="index")
    app.router.add_get("/join/{department}", join_page, name="join")
    app.router.add_get("/wait/{ticket_id}", wait_page, name="wait")
    app.router.add_get("/privacy", privacy_page, name="privacy")
    app.router.add_get("/staff", staff_page, name="staff")
    from .accessibility import setup as setup_accessibility

    setup_accessibility(app)
    app.router.add_static("/static/", WEB_DIR / "static", name="static")
    app.on_response_prepare.append(_static_headers)


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/"):
        response.headers["X-Content-Type-Options"] = "nosniff"
        # No build step and no versioned file names: let browsers revalidate (cheap 304s) so that a
        # deploy never leaves a page with a stale script.
        response.headers.setdefault("Cache-Control", "no-cache")


def page_language(request: web.Request) -> tuple[str, bool]:
    """The page language and whether the request chose it explicitly (``?lang=``): what the citizen chose
    (now, or earlier: the cookie), else the browser's ``Accept-Language``, else German."""
    chosen = negotiate(request.query.get("lang"))
    if chosen:
        return chosen, True
    return (negotiate(request.cookies.get(LANG_COOKIE))
            or negotiate_accept_language(request.headers.get("Accept-Language"))
            or DEFAULT_LANGUAGE), False


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """Render a page in the request's language, with the security headers every page carries."""
    lang, chosen = page_language(request)
    translate = gettext(lang)
    env = request.app[TEMPLATES]
    html = env.get_template(template).render(
        lang=lang,
        gettext=translate,
        ngettext=ngettext(lang),
        path=request.path,
        other_languages=[code for code in PAGE_LANGUAGES if code != lang],
        script_messages=script_messages(lang),
        estimate_text=lambda estimate: estimate_text(translate, estimate),
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(PAGE_HEADERS)
    response.headers["Vary"] = "Accept-Language, Cookie"
    if chosen:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE, path="/", samesite="Lax", httponly=True,
            secure=request.app[SETTINGS].secure_cookies,
        )
    return response


def render_not_found(request: web.Request) -> web.Response:
    """The 404 page; usable by an error middleware for any unknown page."""
    return render(request, "404.html", status=404)


async def index_page(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    departments = await room.overview()
    # A closed department says when it opens ("öffnet morgen um 8:00"), relative to the municipality's today.
    translate = gettext(page_language(request)[0])
    now = datetime.fromtimestamp(room.clock(), room.settings.tz)
    opens = {d["id"]: opening_text(translate, d["next_opening"], now) for d in departments if not d["open"]}
    return render(request, "index.html", departments=departments, opens=opens,
                  timezone=room.settings.timezone,
                  sign_language_video=request.app[SETTINGS].sign_language_video is not None,
                  sign_language_captions=request.app[SETTINGS].sign_language_captions is not None)


async def join_page(request: web.Request) -> web.Response:
    try:
        load = await request.app[ROOM].load(request.match_info["department"])
    except UnknownDepartment:
        return render_not_found(request)
    department = load.to_public()
    return render(
        request, "join.html", department=department,
        limits={"name": MAX_NAME, "concern": MAX_CONCERN},
    )


async def wait_page(request: web.Request) -> web.Response:
    # The page cannot tell whether the ticket exists (only the token in the fragment proves it), so
    # every well-formed id gets the same shell; the script asks the server with the token.
    ticket_id = request.match_info["ticket_id"]
    if not _TICKET_ID.match(ticket_id):
        return render_not_found(request)
    settings = request.app[SETTINGS]
    return render(
        request, "wait.html", ticket_id=ticket_id, timezone=settings.timezone,
        grace_minutes=max(1, math.floor(request.app[ROOM].live("grace_seconds") / 60)),
        department_names={d.id: d.name for d in request.app[ROOM].departments.values()},
    )


async def privacy_page(request: web.Request) -> web.Response:
    return render(request, "privacy.html")


async def staff_page(request: web.Request) -> web.Response:
    return render(
        request, "staff.html",
        departments=[{"id": d.id, "name": d.name, "recording": d.recording.allowed}
                     for d in request.app[ROOM].departments.values()],
        max_note=MAX_NOTE,
    )
