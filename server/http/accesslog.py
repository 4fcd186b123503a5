"""aiohttp's access log without engine.io's transport requests.

Every waiting page's socket (and, on long polling, every poll) is an HTTP request: one line each would
bury the log, and in a reconnect storm of 10,000 pages writing them cost about 5 % of the server's time
(bench/queue_load.py). Connections are counted by the application instead; everything else is logged.
"""

from __future__ import annotations

from aiohttp import web, web_log

ENGINEIO_PATH = "/socket.io/"


class AccessLogger(web_log.AccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path.startswith(ENGINEIO_PATH):
            return
        super().log(request, response, time)
