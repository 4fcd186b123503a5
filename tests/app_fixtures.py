"""App fixtures: a test configuration, an in-process aiohttp client, and a live server on a real port."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from server.app import create_app
from server.http.auth import Auth
from server.http.keys import AUTH, ROOM
from server.settings import Settings, settings_from_dict
from server.store.base import Store
from server.store.memory import MemoryStore
from server.waitingroom import WaitingRoom

ALWAYS = {d: "00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}

TEST_CONFIG: dict[str, Any] = {
    # A page's close settles at once here (page_away_seconds = 0); tests/test_page_away.py tests the away period.
    "server": {"timezone": "Europe/Berlin", "grace_seconds": 300, "page_away_seconds": 0, "position_interval": 0.2,
               "joins_per_address": 1000},
    "departments": [
        {"id": "buergerbuero", "name": "Bürgerbüro", "description": "Ausweise und Meldewesen", "hours": ALWAYS,
         "recording": "on_request", "recording_purpose": "Schulung neuer Mitarbeitender",
         "recording_retention_days": 30},
        {"id": "bauamt", "name": "Bauamt", "description": "Bauanträge", "hours": ALWAYS, "queue_cap": 3},
        {"id": "standesamt", "name": "Standesamt", "hours": {}},  # never open
    ],
}


def make_settings(tmp_path: Any = None, **server: Any) -> Settings:
    raw = {"server": {**TEST_CONFIG["server"], **server}, "departments": TEST_CONFIG["departments"]}
    if tmp_path is not None:
        raw["server"]["data_dir"] = str(tmp_path / "var")
    return settings_from_dict(raw)


@dataclass
class Staff:
    username: str
    password: str
    departments: list[str]


async def add_staff(app: web.Application, username: str, password: str = "correct horse battery",
                    departments: list[str] | None = None, display_name: str | None = None) -> Staff:
    auth: Auth = app[AUTH]
    departments = departments if departments is not None else ["buergerbuero"]
    await auth.add_staff(username, display_name or username.title(), password, departments)
    return Staff(username, password, departments)


async def login(client: Any, username: str, password: str = "correct horse battery") -> str:
    """Log a test client in; returns the CSRF token."""
    resp = await client.post("/api/session", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["csrf"]


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def make_app(tmp_path: Any):
    """Build an app on a given store (default: memory) and settings overrides."""

    def factory(store: Store | None = None, **server: Any) -> web.Application:
        settings = make_settings(tmp_path, **server)
        if store is None and not settings.redis_url:
            store = MemoryStore(staff_file=tmp_path / "staff.json")
        return create_app(settings, store=store, announce=lambda _: None)  # with redis_url: a RedisStore

    return factory


@pytest.fixture
async def app(make_app) -> web.Application:
    return make_app()


@pytest.fixture
async def client(aiohttp_client, app):
    return await aiohttp_client(app)


@dataclass
class LiveServer:
    url: str
    app: web.Application
    server: Any = None

    async def stop(self) -> None:
        """Stop this node as a restart would (its sockets drop; state in Redis stays)."""
        await self.server.close()

    @property
    def room(self) -> WaitingRoom:
        return self.app[ROOM]

    async def add_staff(self, username: str, password: str, departments: list[str],
                        display_name: str | None = None) -> Staff:
        return await add_staff(self.app, username, password, departments, display_name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen[Any], port: int, output: Callable[[], str]) -> None:
    """Wait for a ``sprechstunde serve`` process to answer /healthz (failing with its output if it dies)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                assert resp.status == 200
                return
        except OSError:
            assert proc.poll() is None, output()
            assert time.monotonic() < deadline, "server did not answer /healthz"
            time.sleep(0.1)  # polling a starting process; there is no event to wait on


@pytest.fixture
async def make_live_server(aiohttp_server, make_app):
    """Start the whole app (HTTP + socket.io) on 127.0.0.1 on a free port; overrides as for make_app."""

    async def factory(store: Store | None = None, **server: Any) -> LiveServer:
        app = make_app(store, **server)
        running = await aiohttp_server(app, host="127.0.0.1", port=free_port())
        return LiveServer(str(running.make_url("")).rstrip("/"), app, running)

    return factory


@pytest.fixture
async def live_server(make_live_server) -> LiveServer:
    """The whole app on a free port with the memory store."""
    return await make_live_server()


@pytest.fixture
async def clients() -> Any:
    """Socket clients a test opens (tests.socket_clients.Recorder); all closed afterwards."""
    opened: list[Any] = []
    yield opened
    for c in opened:
        await c.close()


@pytest.fixture
async def peers() -> Any:
    """aiortc test peers a test opens (tests.media.peers.Client); all closed afterwards."""
    opened: list[Any] = []
    yield opened
    for p in opened:
        await p.close()
