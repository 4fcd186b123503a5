"""BITV 2.0 §4 pages: the service explained in Leichte Sprache (easy-to-read German, with an English
easy-read version), the accessibility statement (Erklärung zur Barrierefreiheit) with the feedback contact
from the configuration, and the municipality's sign-language (DGS) video, served from a configured local
file (range requests, so that a browser can seek; never from a CDN)."""

from __future__ import annotations

from aiohttp import web

from ..errors import error_response
from .keys import SETTINGS

SIGN_LANGUAGE_PATH = "/media/sign-language-video"


async def easy_language_page(request: web.Request) -> web.Response:
    from .pages import render

    return render(request, "easy.html")


async def accessibility_page(request: web.Request) -> web.Response:
    from .pages import render

    settings = request.app[SETTINGS]
    return render(
        request, "accessibility.html",
        contact=settings.accessibility_contact,
        statement_date=settings.accessibility_statement_date,
    )


async def sign_language_video(request: web.Request) -> web.StreamResponse:
    """The configured video file, or 404 JSON when none is configured or the file is missing."""
    path = request.app[SETTINGS].sign_language_video
    if path is None or not path.is_file():
        return error_response("not_found", "no sign-language video is configured", 404)
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


async def sign_language_captions(request: web.Request) -> web.StreamResponse:
    path = request.app[SETTINGS].sign_language_captions
    if path is None:
        return error_response("not_found", "no captions are configured", 404)
    return web.FileResponse(path, headers={"Content-Type": "text/vtt; charset=utf-8",
                                           "Cache-Control": "public, max-age=3600"})


def setup(app: web.Application) -> None:
    app.router.add_get("/leichte-sprache", easy_language_page, name="easy_language")
    app.router.add_get("/barrierefreiheit", accessibility_page, name="accessibility")
    app.router.add_get(SIGN_LANGUAGE_PATH, sign_language_video, name="sign_language_video")
    app.router.add_get(SIGN_LANGUAGE_PATH + ".vtt", sign_language_captions, name="sign_language_captions")
