"""Real socket.io clients (python-socketio) for tests: record what arrives, wait on conditions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import socketio

WAIT = 15.0  # generous: a loaded 2-core machine is slow, but a condition that holds returns at once


class Recorder:
    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.cookie: str | None = None
        self._changed = asyncio.Event()

        @self.client.on("*")
        async def any_event(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            self._changed.set()

    def last(self, event: str) -> Any:
        for name, data in reversed(self.events):
            if name == event:
                return data
        return None

    async def wait_for(self, event: str, predicate: Callable[[Any], bool] = lambda _: True,
                       timeout: float = WAIT) -> Any:  # noqa: ASYNC109 - a bound for the condition wait
        """The first recorded ``event`` (already seen or still to come) whose payload satisfies ``predicate``."""
        async def scan() -> Any:
            seen = 0
            while True:
                for name, data in self.events[seen:]:
                    if name == event and predicate(data):
                        return data
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.client.call(event, data, timeout=WAIT)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


async def citizen_socket(url: str, token: str, transport: str = "websocket") -> Recorder:
    r = Recorder()
    await r.client.connect(url, auth={"token": token}, transports=[transport], wait_timeout=WAIT)
    return r


async def join(url: str, department: str = "buergerbuero", **body: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{url}/api/departments/{department}/tickets", json={"consent": True, **body})
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def staff_socket(url: str, username: str, password: str, cookie: str | None = None) -> Recorder:
    """A clerk's dashboard socket: logs in, or with ``cookie`` reconnects in that session (a reload)."""
    if cookie is None:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{url}/api/session", json={"username": username, "password": password})
            assert resp.status == 200, await resp.text()
            cookie = resp.cookies["sps_session"].value
    r = Recorder()
    r.cookie = cookie
    await r.client.connect(url, headers={"Cookie": f"sps_session={cookie}"}, transports=["websocket"],
                           wait_timeout=WAIT)
    return r


def positions(update: dict[str, Any]) -> list[int]:
    """Decode the delta-encoded seqs of a ``queue`` update, as a waiting page does."""
    seqs, total = [], 0
    for d in update["w"]:
        total += d
        seqs.append(total)
    return seqs
