"""python-socketio's Redis manager with a proper close.

``AsyncRedisManager._redis_connect()`` replaces ``self.redis`` without closing the client it had:
the first emit connects once for publishing, the listener task connects again, and the first client
is orphaned. Nor does ``AsyncServer.shutdown()`` stop the listener. This subclass remembers every
client it creates and closes them all, so a stopped node leaks no connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio


class ClosingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: list[Any] = []

    def _redis_connect(self) -> None:
        super()._redis_connect()
        self._clients += [self.pubsub, self.redis]

    async def close(self) -> None:
        task = getattr(self, "thread", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients.clear()
        self.connected = False
