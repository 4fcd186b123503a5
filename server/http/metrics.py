"""``/metrics`` (Prometheus text format), never public.

Two ways in, each configured on purpose; with neither, ``/metrics`` is a 404 like any unknown path:

- ``metrics_port`` (and ``metrics_host``, default 127.0.0.1): ``sprechstunde serve`` starts a second
  listener that serves ``/metrics`` and nothing else, without a token: bind it where only the monitoring
  network reaches it (``start_metrics_site``);
- ``metrics_token``: ``/metrics`` on the main port answers a request with ``Authorization: Bearer
  <token>``; without it or with another token, 401.

The reverse proxy does not pass ``/metrics`` on at all (deploy/nginx/sprechstunde.conf).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..errors import error_response
from ..metrics import Metrics, Sources, run_loop_lag
from ..waitingroom import WaitingRoom
from .keys import SETTINGS

METRICS: web.AppKey[Metrics] = web.AppKey("metrics")


async def _exposition(metrics: Metrics) -> web.Response:
    body = await metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4  # read by every Prometheus version
    response.headers["Cache-Control"] = "no-store"
    return response


async def metrics_on_main_port(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token is None:
        raise web.HTTPNotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        refused = error_response("unauthenticated", "a bearer token is needed for /metrics", 401)
        refused.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    return await _exposition(request.app[METRICS])


def setup_metrics(app: web.Application, room: WaitingRoom, sockets: Any, media: Any) -> Metrics:
    """Create the app's metrics (its own registry), the ``/metrics`` route and the event-loop lag probe.

    ``sockets()`` -> counts by kind (``Signaling.socket_counts``); ``media`` has ``hub`` (None until the
    SFU starts) with ``metrics()`` -> (rooms, forwarded, dropped)."""

    def media_counts() -> tuple[int, int, int]:
        hub = media.hub
        return hub.metrics() if hub is not None else (0, 0, 0)

    metrics = Metrics(room, Sources(sockets=sockets, media=media_counts))
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_on_main_port)
    app.cleanup_ctx.append(lambda _app: run_loop_lag(metrics))
    return metrics


def metrics_app(main: web.Application) -> web.Application:
    """The application of the separate listener: ``/metrics`` of ``main`` without a token, nothing else."""
    metrics = main[METRICS]

    async def handler(request: web.Request) -> web.Response:
        return await _exposition(metrics)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def start_metrics_site(main: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``metrics_app(main)`` on ``host:port``; the caller cleans the returned runner up."""
    runner = web.AppRunner(metrics_app(main), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
