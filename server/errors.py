"""The one place where errors become what a client sees (HTTP JSON or a socket.io ack)."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .queue.errors import QueueError

log = logging.getLogger("sprechstunde.errors")

STORE_ERRORS = (RedisConnectionError, RedisTimeoutError)
"""Redis refusing, hanging past the socket timeout, or no pool connection free while it does not answer
(the pool's "No connection available" is a ``ConnectionError``): answered as ``store_unavailable``."""
STORE_UNAVAILABLE = "store_unavailable"
STORE_UNAVAILABLE_MESSAGE = "the service is briefly unavailable; please try again in a moment"
STORE_LOG_INTERVAL = 10.0
"""Seconds between two log lines about the store not answering: one line per outage, not one per request."""


class _OutageLog:
    """Logs the first store failure, then at most one line per ``STORE_LOG_INTERVAL`` (with a count)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._suppressed = 0
        self.total = 0
        """Every failure noted since the process started (``sprechstunde_store_unavailable_total``)."""

    def note(self, exc: BaseException, now: float) -> None:
        self.total += 1
        if self._last is not None and now - self._last < STORE_LOG_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last line)" if self._suppressed else ""
        log.warning("store unavailable: %s: %s%s", type(exc).__name__, exc, more)
        self._last, self._suppressed = now, 0


_outages = _OutageLog()


def store_unavailable_count() -> int:
    """How many times this process answered ``store_unavailable`` (read by /metrics)."""
    return _outages.total


def is_store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the shared store (Redis) did not answer, rather than a bug."""
    return isinstance(exc, STORE_ERRORS)


def store_unavailable(exc: BaseException) -> dict[str, Any]:
    """The error body for a store that did not answer; logs once per outage, never a traceback."""
    _outages.note(exc, time.monotonic())
    return error_body(STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """A socket.io acknowledgement for a refused command."""
    if isinstance(exc, QueueError):
        return error_body(exc.code, str(exc))
    if is_store_unavailable(exc):
        return store_unavailable(exc)
    log.exception("unexpected error in a socket event", exc_info=exc)
    return error_body("internal", "internal error")


def error_response(code: str, message: str, status: int) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


_NOT_PAGES = ("/api/", "/static/", "/socket.io/", "/metrics", "/healthz", "/readyz", "/media/", "/auth/")


def _wants_page(request: web.Request) -> bool:
    return (request.method == "GET" and not request.path.startswith(_NOT_PAGES)
            and "text/html" in request.headers.get("Accept", ""))


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map typed errors and aiohttp's own HTTP errors to the JSON error shape under /api/, and a store
    that does not answer to 503 ``store_unavailable`` on every route."""
    try:
        return await handler(request)
    except QueueError as e:
        retry_after = getattr(e, "retry_after", None)
        if isinstance(retry_after, int):  # a limit that knows when it lifts (check-ins, bookings, logins, questions)
            body = error_body(e.code, str(e))
            body["error"]["retry_after"] = retry_after
            return web.json_response(body, status=e.status, headers={"Retry-After": str(retry_after)})
        return error_response(e.code, str(e), e.status)
    except STORE_ERRORS as e:
        # Every route: a clear 503 within the socket timeout, not a 500 with a stack. JSON, except for a page a
        # browser asked for (a citizen would read the JSON text): the page saying so, in their language.
        body = store_unavailable(e)
        if _wants_page(request):
            from .http.pages import render

            response = render(request, "unavailable.html", status=503)
        else:
            response = web.json_response(body, status=503)
        response.headers["Retry-After"] = "2"
        return response
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
    except Exception:  # noqa: BLE001 - a bug: logged with its traceback, answered in the one shape, never plain text
        if request.writer.output_size > 0:  # an answer had begun (a websocket, a stream): aiohttp's to end it
            raise
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response("internal", "internal error", 500)
