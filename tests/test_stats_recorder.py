"""The recorder between the waiting room and the event log: it buffers without ever failing a queue move,
writes in batches, keeps what a store that does not answer could not take, marks clerks on duty once per
hour, and sweeps by the retention."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.http.keys import ROOM, STATS
from server.queue.model import Clerk, JoinRequest, Presence
from server.settings import ConfigError
from server.stats.log import LogEntry, pseudonym
from server.store.eventlog import RedisEventLog, SqliteEventLog
from server.store.memory import MemoryStore

from .app_fixtures import free_port, make_settings

CLARA = Clerk("clara", "Clara", frozenset({"buergerbuero"}))


def build(tmp_path: Path, eventlog: Any = None, **server: Any) -> Any:
    settings = make_settings(tmp_path, **server)
    return create_app(settings, store=MemoryStore(staff_file=tmp_path / "staff.json"), announce=lambda _: None,
                      eventlog_store=eventlog)


async def test_moves_are_logged_after_a_flush(tmp_path: Path) -> None:
    app = build(tmp_path)
    room, stats = app[ROOM], app[STATS]
    try:
        ticket, _ = await room.join("buergerbuero", JoinRequest("Name", "Anliegen", consent=True), "10.0.0.1")
        await room.set_presence(CLARA, Presence.AVAILABLE)
        await room.call_next(CLARA, "buergerbuero")
        assert await stats.store.entries(0, 10 ** 6) == []  # buffered, not written on the waiting room's path
        await stats.flush()
        kinds = [e.kind for e in await stats.store.entries(0, 10 ** 6)]
        assert sorted(kinds) == ["called", "joined", "on_duty"]
        await stats.flush()  # nothing new: nothing written twice
        assert len(await stats.store.entries(0, 10 ** 6)) == 3
    finally:
        await stats.close()
        await room.store.close()


async def test_a_store_that_does_not_answer_never_fails_the_waiting_room(tmp_path: Path) -> None:
    down = RedisEventLog(f"redis://127.0.0.1:{free_port()}/0", "x:", make_settings().tz)  # nobody listens there
    app = build(tmp_path, down)
    room, stats = app[ROOM], app[STATS]
    try:
        await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
        await room.set_presence(CLARA, Presence.BUSY)
        await room.call_next(CLARA, "buergerbuero")
        started = time.monotonic()
        await stats.flush()  # fails inside, says so in the log, keeps the entries
        assert time.monotonic() - started < 5
        # Kept until the store answers (the pseudonym key comes from it): two moves and the clerk's presences
        # (on duty twice in one hour: one mark once the key is there).
        assert [duty for duty, _ in stats._early] == [False, True, False, True] and stats._pending == []
        await stats.on_events([object()])  # type: ignore[list-item] - even nonsense does not raise
    finally:
        await stats.close()
        await room.store.close()


async def test_clerks_on_duty_are_marked_once_per_hour(tmp_path: Path) -> None:
    app = build(tmp_path)
    room, stats = app[ROOM], app[STATS]
    try:
        for presence in (Presence.AVAILABLE, Presence.BUSY, Presence.AVAILABLE, Presence.AWAY):
            await room.set_presence(CLARA, presence)
        await room.set_presence(Clerk("ben", "Ben", frozenset({"bauamt"})), Presence.BUSY)
        await stats.sample_duty()  # ben is still busy (clara away): already marked this hour
        await stats.flush()
        marks = [(e.department, e.kind) for e in await stats.store.entries(0, 10 ** 6)]
        assert sorted(marks) == [("bauamt", "on_duty"), ("buergerbuero", "on_duty")]
    finally:
        await stats.close()
        await room.store.close()


async def test_the_sweep_keeps_the_retention(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stats_retention_days=30)
    store = SqliteEventLog(tmp_path / "s.sqlite3", settings.tz)
    app = build(tmp_path, store, stats_retention_days=30)
    stats = app[STATS]
    now = time.time()
    try:
        old, recent = now - 40 * 86400, now - 20 * 86400
        await store.append([LogEntry(old, "joined", "buergerbuero"), LogEntry(recent, "joined", "buergerbuero")])
        stats.clock = lambda: now
        await stats.sweep()
        assert [e.at for e in await store.entries(0, 10 ** 6)] == [recent]
        today = datetime.fromtimestamp(now, settings.tz).toordinal()
        assert stats.retention_start(now) == today - 30
    finally:
        await stats.close()
        await app[ROOM].store.close()


def test_the_retention_setting() -> None:
    assert make_settings().stats_retention_days == 400
    assert make_settings(stats_retention_days=30).stats_retention_days == 30
    for bad in (0, 5000, "400"):
        with pytest.raises(ConfigError):
            make_settings(stats_retention_days=bad)


@pytest.mark.parametrize("kind", [pytest.param("sqlite"), pytest.param("redis", marks=pytest.mark.redis)])
async def test_pseudonyms_are_keyed_per_installation_and_stable_across_a_restart(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    tz = make_settings().tz

    def open_store() -> Any:
        if kind == "sqlite":
            return SqliteEventLog(tmp_path / "stats.sqlite3", tz)
        return RedisEventLog(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"), tz)

    subjects = []
    keys = []
    for _ in range(2):  # the second time round is a restart: a new store on the same file / prefix
        app = build(tmp_path, open_store())
        room, stats = app[ROOM], app[STATS]
        try:
            ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
            await room.set_presence(CLARA, Presence.AVAILABLE)
            await stats.flush()
            entries = await stats.store.entries(0, 10 ** 6)
            duty = [e.subject for e in entries if e.kind == "on_duty"]
            joined = {e.subject for e in entries if e.kind == "joined"}
            unkeyed = {hashlib.sha256(f"sprechstunde-stats:{k}:{v}".encode()).hexdigest()[:16]
                       for k, v in (("clerk", "clara"), ("ticket", ticket.id))}
            # Not the unkeyed hash anyone could compute from a list of usernames; the installation's HMAC.
            assert duty and not unkeyed & {*duty, *joined}
            key = await stats.store.pseudonym_key()
            assert len(key) == 32
            assert pseudonym("ticket", ticket.id, key) in joined
            subjects.append(duty[-1])
            keys.append(key)
        finally:
            await stats.close()
            await room.store.close()
    assert keys[0] == keys[1] and subjects[0] == subjects[1] == pseudonym("clerk", "clara", keys[0])
    other = SqliteEventLog(tmp_path / "other.sqlite3", tz)  # another installation: another key
    try:
        assert await other.pseudonym_key() != keys[0]
    finally:
        await other.close()
