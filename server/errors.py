"""The one place where errors become what a client sees (HTTP JSON or a socket.io ack)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from .queue.errors import QueueError

log = logging.getLogger("sprechstunde.errors")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """A socket.io acknowledgement for a refused command."""
    if isinstance(exc, QueueError):
        return error_body(exc.code, str(exc))
    log.exception("unexpected error in a socket event", exc_info=exc)
    return error_body("internal", "internal error")


def error_response(code: str, message: str, status: int) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map typed errors and aiohttp's own HTTP errors to the JSON error shape under /api/."""
    try:
        return await handler(request)
    except QueueError as e:
        return error_response(e.code, str(e), e.status)
    except web.HTTPRequestEntityTooLarge:
        return error_response("payload_too_large", "the request body is too large", 413)
    except web.HTTPException as e:
        if e.status == 404 and not request.path.startswith(("/api/", "/static/", "/socket.io/")):
            from .http.pages import render_not_found

            return render_not_found(request)
        if not request.path.startswith("/api/") or e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        return error_response(code, e.reason, e.status)
