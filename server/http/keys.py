"""Typed application keys (aiohttp AppKey): what the app holds once started."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..audit import AuditLog
    from ..recordings import RecordingService
    from ..settings import Settings
    from ..store.base import Store
    from ..store.eventlog import StatsRecorder
    from ..townhalls import TownHallService
    from ..waitingroom import WaitingRoom
    from .auth import Auth

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
ROOM: web.AppKey[WaitingRoom] = web.AppKey("room")
AUTH: web.AppKey[Auth] = web.AppKey("auth")
RECORDINGS: web.AppKey[RecordingService] = web.AppKey("recordings")
TOWNHALL: web.AppKey[TownHallService] = web.AppKey("townhall")
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit")
STATS: web.AppKey[StatsRecorder] = web.AppKey("stats")
