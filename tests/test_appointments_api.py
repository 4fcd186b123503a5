"""Appointments through the JSON API and the pages of a real in-process app: book, the .ics, cancel, move,
deadlines, limits, bad input, check-in into the waiting room, priority over walk-ins, the clerks' view,
no-shows. Time is the app's clock, set by the test."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from aiohttp import web

from server.app import create_app
from server.appointments import service as service_module
from server.http.appointments import APPOINTMENTS
from server.http.keys import ROOM
from server.queue.model import Clerk
from server.settings import settings_from_dict
from server.store.memory import MemoryStore

from .app_fixtures import ALWAYS, add_staff, login

TZ = ZoneInfo("Europe/Berlin")
WEEK = {d: "08:00-12:00" for d in ("mon", "tue", "wed", "thu", "fri")}


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 3, day, hour, minute, tzinfo=TZ).timestamp()  # 2026-03-02 is a Monday


NOW = at(2, 7)
SLOT = at(2, 10)  # Monday 10:00
APPOINTMENTS_CONFIG = {"hours": WEEK, "slot_minutes": 30, "parallel": 1, "days_ahead": 7, "min_notice_minutes": 60,
                       "cancel_minutes": 120, "checkin_minutes": 10, "late_minutes": 15, "per_address_day": 2}


def config(priority: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "server": {"timezone": "Europe/Berlin", "joins_per_address": 1000},
        "departments": [
            {"id": "buergerbuero", "name": "Bürgerbüro", "hours": ALWAYS,
             "appointments": {**APPOINTMENTS_CONFIG, **(priority or {})}},
            {"id": "bauamt", "name": "Bauamt", "hours": ALWAYS},
        ],
    }


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_client(aiohttp_client, tmp_path, clock):  # type: ignore[no-untyped-def]
    async def factory(priority: dict[str, Any] | None = None) -> Any:
        raw = config(priority)
        raw["server"]["data_dir"] = str(tmp_path / "var")
        app = create_app(settings_from_dict(raw), store=MemoryStore(staff_file=tmp_path / "staff.json"),
                         announce=lambda _: None)
        app[ROOM].clock = clock
        app[APPOINTMENTS].clock = clock
        app[APPOINTMENTS].store.clock = clock  # the memory store judges expiry by it
        return await aiohttp_client(app)

    return factory


@pytest.fixture
async def client(make_client):  # type: ignore[no-untyped-def]
    return await make_client()


BOOK = {"start": SLOT, "name": "Ada Lovelace", "concern": "Reisepass", "email": "", "language": "de", "consent": True}


async def book(client: Any, body: dict[str, Any] | None = None, department: str = "buergerbuero") -> tuple[int, Any]:
    resp = await client.post(f"/api/appointments/{department}", json=BOOK if body is None else body)
    return resp.status, await resp.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def slot_free(client: Any, start: float) -> int:
    day = datetime.fromtimestamp(start, TZ).date().isoformat()
    slots = (await (await client.get(f"/api/appointments/buergerbuero/slots?day={day}")).json())["slots"]
    return next(s["free"] for s in slots if s["start"] == start)


async def test_book_read_and_the_ics(client: Any) -> None:
    days = (await (await client.get("/api/appointments/buergerbuero/days")).json())["days"]
    assert [d["date"] for d in days][:2] == ["2026-03-02", "2026-03-03"] and days[0]["free"] == 8  # 08:00-12:00
    status, body = await book(client)
    assert status == 201, body
    token, a = body["token"], body["appointment"]
    assert len(token) >= 32 and body["link"] == f"/appointment/{a['id']}#{token}"
    assert (a["state"], a["time"], a["day"], a["can_change"], body["email_sent"]) == ("booked", "10:00", "2026-03-02",
                                                                                        True, False)
    assert await slot_free(client, SLOT) == 0
    mine = (await (await client.get("/api/appointments/me", headers=bearer(token))).json())["appointment"]
    assert mine["id"] == a["id"] and mine["name"] == "Ada Lovelace" and "token_hash" not in mine
    resp = await client.get("/api/appointments/me/ics", headers=bearer(token))
    assert resp.status == 200 and resp.content_type == "text/calendar"
    calendar = icalendar.Calendar.from_ical(await resp.read())
    event = next(iter(calendar.walk("VEVENT")))
    assert event.decoded("dtstart").timestamp() == SLOT and event.decoded("dtend").timestamp() == SLOT + 1800
    assert "Bürgerbüro" in str(event["summary"])
    assert str(event["url"]).endswith(f"/appointment/{a['id']}#{token}")
    # the TZID the times name is defined in the file (RFC 5545 3.2.19)
    assert event["dtstart"].params["TZID"] == "Europe/Berlin"
    assert [str(tz["tzid"]) for tz in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]
    # the token is stored as a hash only
    stored = await client.app[APPOINTMENTS].store.get(a["id"])
    assert token not in repr(stored)


async def test_without_smtp_an_email_address_is_not_kept(client: Any) -> None:
    status, body = await book(client, {**BOOK, "email": "ada@example.org"})
    assert status == 201, body
    assert (body["appointment"]["email"], body["email_sent"]) == (False, False)
    stored = await client.app[APPOINTMENTS].store.get(body["appointment"]["id"])
    assert stored is not None and stored.email == ""
    status, body = await book(client, {**BOOK, "start": SLOT + 1800, "email": "not an address"})
    assert (status, body["error"]["code"]) == (400, "invalid_input")  # still checked: the same rules everywhere


async def test_double_booking_of_a_slot_is_refused(client: Any) -> None:
    assert (await book(client))[0] == 201
    status, body = await book(client, {**BOOK, "name": "Bea"})
    assert (status, body["error"]["code"]) == (409, "slot_unavailable")


async def test_cancel_frees_the_slot_and_move_takes_another(client: Any) -> None:
    _, first = await book(client)
    resp = await client.delete("/api/appointments/me", headers=bearer(first["token"]))
    assert (await resp.json())["appointment"]["state"] == "cancelled"
    assert await slot_free(client, SLOT) == 1
    resp = await client.delete("/api/appointments/me", headers=bearer(first["token"]))
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "appointment_state")

    _, second = await book(client)
    resp = await client.post("/api/appointments/me/move", json={"start": at(3, 9)}, headers=bearer(second["token"]))
    moved = (await resp.json())["appointment"]
    assert resp.status == 200 and (moved["day"], moved["time"]) == ("2026-03-03", "09:00")
    assert await slot_free(client, SLOT) == 1 and await slot_free(client, at(3, 9)) == 0

    # The calendar files: a moved one replaces the first (a higher SEQUENCE), a cancelled one says so.
    async def ics_event(token: str) -> Any:
        resp = await client.get("/api/appointments/me/ics", headers=bearer(token))
        return next(iter(icalendar.Calendar.from_ical(await resp.read()).walk("VEVENT")))

    event = await ics_event(second["token"])
    assert (event["sequence"], str(event["status"])) == (1, "CONFIRMED")
    assert event.decoded("dtstart").timestamp() == at(3, 9)
    event = await ics_event(first["token"])
    assert (event["sequence"], str(event["status"])) == (1, "CANCELLED")


async def test_deadline_refuses_cancel_and_move_and_changes_nothing(client: Any, clock: Clock) -> None:
    _, body = await book(client)
    clock.now = SLOT - 119 * 60
    for method, url, payload in (("DELETE", "/api/appointments/me", None),
                                 ("POST", "/api/appointments/me/move", {"start": at(3, 9)})):
        resp = await client.request(method, url, json=payload, headers=bearer(body["token"]))
        assert (resp.status, (await resp.json())["error"]["code"]) == (409, "deadline_passed")
    mine = (await (await client.get("/api/appointments/me", headers=bearer(body["token"]))).json())["appointment"]
    assert (mine["state"], mine["start"], mine["can_change"]) == ("booked", SLOT, False)


async def test_limits_per_address_day_and_rate(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await book(client, {**BOOK, "start": at(2, 10)}))[0] == 201
    assert (await book(client, {**BOOK, "start": at(2, 10, 30)}))[0] == 201
    status, body = await book(client, {**BOOK, "start": at(2, 11)})
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert await slot_free(client, at(2, 11)) == 1
    assert (await book(client, {**BOOK, "start": at(3, 11)}))[0] == 201  # another day
    monkeypatch.setattr(service_module, "RATE_PER_ADDRESS", 3)  # the hourly rate across days
    status, body = await book(client, {**BOOK, "start": at(4, 11)})
    assert (status, body["error"]["code"]) == (429, "rate_limited")


@pytest.mark.parametrize(("department", "body", "status", "code"), [
    ("bauamt", BOOK, 404, "appointments_not_offered"),
    ("nope", BOOK, 404, "unknown_department"),
    ("buergerbuero", {**BOOK, "consent": False}, 400, "invalid_input"),
    ("buergerbuero", {**BOOK, "email": "kein@"}, 400, "invalid_input"),
    ("buergerbuero", {**BOOK, "evil": 1}, 400, "invalid_input"),
    ("buergerbuero", {**BOOK, "start": "10:00"}, 400, "invalid_input"),
    ("buergerbuero", {**BOOK, "start": True}, 400, "invalid_input"),
    ("buergerbuero", {k: v for k, v in BOOK.items() if k != "start"}, 400, "invalid_input"),
    ("buergerbuero", {**BOOK, "start": SLOT + 60}, 409, "slot_unavailable"),
    ("buergerbuero", {**BOOK, "start": at(16, 8)}, 409, "slot_unavailable"),  # beyond a week
    ("buergerbuero", {**BOOK, "name": "x" * 61}, 400, "invalid_input"),
])
async def test_bad_input_gets_clear_errors_and_changes_nothing(client: Any, department: str, body: dict[str, Any],
                                                                status: int, code: str) -> None:
    got_status, got = await book(client, body, department)
    assert (got_status, got["error"]["code"]) == (status, code) and got["error"]["message"]
    assert await client.app[APPOINTMENTS].store.day_count("buergerbuero", "2026-03-02") == 0


async def test_unknown_tokens_malformed_bodies_and_foreign_origins(client: Any) -> None:
    for headers in ({}, bearer("x" * 32), bearer("short")):
        resp = await client.get("/api/appointments/me", headers=headers)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "appointment_not_found")
    resp = await client.post("/api/appointments/buergerbuero", data=b"{nope",
                             headers={"Content-Type": "application/json"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_input")
    resp = await client.post("/api/appointments/buergerbuero", json=BOOK, headers={"Origin": "https://evil.example"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "csrf")
    _, body = await book(client)
    resp = await client.post("/api/appointments/me/move", json={"start": at(3, 9), "x": 1},
                             headers=bearer(body["token"]))
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_input")
    for day in ("gestern", "9999-12-31", "0001-01-01"):  # 9999-12-31 overflowed (a plain-text 500, probing)
        resp = await client.get(f"/api/appointments/buergerbuero/slots?day={day}")
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_input"), day


async def join_walkin(client: Any, name: str) -> dict[str, Any]:
    resp = await client.post("/api/departments/buergerbuero/tickets", json={"name": name, "consent": True})
    assert resp.status == 201
    return await resp.json()


async def test_check_in_window_priority_and_the_clerks_view(client: Any, clock: Clock) -> None:
    _, body = await book(client)
    headers = bearer(body["token"])
    clock.now = SLOT - 11 * 60
    resp = await client.post("/api/appointments/me/checkin", headers=headers)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "checkin_not_open")
    walkin = await join_walkin(client, "Walk-in")
    clock.now = SLOT - 5 * 60
    resp = await client.post("/api/appointments/me/checkin", headers=headers)
    checked = await resp.json()
    assert resp.status == 201, checked
    assert checked["appointment"]["state"] == "checked_in" and checked["wait_link"].startswith("/wait/")
    ticket = (await (await client.get("/api/tickets/me", headers=bearer(checked["ticket_token"]))).json())["ticket"]
    assert ticket["state"] == "waiting" and ticket["position"] == 2  # before the slot: behind earlier arrivals
    resp = await client.post("/api/appointments/me/checkin", headers=headers)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "appointment_state")

    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    dash = (await (await client.get("/api/staff/dashboard")).json())["departments"]
    mine = next(d for d in dash if d["id"] == "buergerbuero")
    listed_today = [(a["time"], a["state"], a["name"]) for a in mine["appointments"]]
    assert listed_today == [("10:00", "checked_in", "Ada Lovelace")]
    marked = next(t for t in mine["tickets"] if t["id"] == checked["ticket"]["id"])
    assert marked["appointment_at"] == SLOT
    listed = await (await client.get("/api/staff/appointments?department=buergerbuero&day=2026-03-02")).json()
    assert [a["id"] for a in listed["appointments"]] == [body["appointment"]["id"]]
    assert (await client.get("/api/staff/appointments?department=bauamt")).status == 404

    clock.now = SLOT  # the slot begins: the appointment goes ahead of the walk-in who came first
    called = (await (await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)).json())["ticket"]
    assert called["id"] == checked["ticket"]["id"]
    assert walkin["ticket"]["id"] != called["id"]


async def test_every_nth_call_lets_walk_ins_go_in_between(make_client: Any, clock: Clock) -> None:
    client = await make_client({"priority": "every", "priority_every": 2, "parallel": 2})
    appointments = []
    for name in ("A1", "A2"):
        _, body = await book(client, {**BOOK, "name": name})
        appointments.append(body)
    walkins = [await join_walkin(client, f"W{i}") for i in range(3)]
    clock.now = SLOT - 5 * 60
    tickets = []
    for a in appointments:
        resp = await client.post("/api/appointments/me/checkin", headers=bearer(a["token"]))
        tickets.append((await resp.json())["ticket"]["id"])
    clock.now = SLOT + 60
    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    order = []
    for _ in range(5):
        resp = await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
        called = (await resp.json())["ticket"]
        order.append(called["id"])
        await client.post(f"/api/staff/tickets/{called['id']}/finish", headers=h)
    w = [x["ticket"]["id"] for x in walkins]
    assert order == [w[0], tickets[0], w[1], tickets[1], w[2]]  # every 2nd call serves an appointment


async def _every_second_call_at_once(clients: list[Any], clock: Clock) -> None:
    """Two clerks call next at the same moment, with one walk-in due before the appointment (every 2nd call):
    one gets the walk-in, the other the appointment. One client: both clerks' calls go to its app's service
    side by side; two clients (two nodes on one Redis): each clerk on their own node, over HTTP."""
    first = clients[0]
    _, booked = await book(first, {**BOOK, "name": "A1"})
    walkins = [await join_walkin(first, f"W{i}") for i in range(2)]
    clock.now = SLOT - 5 * 60
    resp = await first.post("/api/appointments/me/checkin", headers=bearer(booked["token"]))
    appointment_ticket = (await resp.json())["ticket"]["id"]
    clock.now = SLOT + 60
    for name in ("anna", "bert"):
        await add_staff(first.app, name)
    if len(clients) == 1:
        room = first.app[ROOM]
        clerks = [Clerk(name, name.title(), frozenset({"buergerbuero"})) for name in ("anna", "bert")]
        picked = await asyncio.gather(*(room.call_next(c, "buergerbuero") for c in clerks))
        called = {t.id for t in picked}
    else:
        headers = [{"X-CSRF-Token": await login(c, name)} for c, name in zip(clients, ("anna", "bert"), strict=True)]
        answers = await asyncio.gather(*(c.post("/api/staff/departments/buergerbuero/call-next", headers=h)
                                         for c, h in zip(clients, headers, strict=True)))
        called = {(await r.json())["ticket"]["id"] for r in answers}
    assert called == {walkins[0]["ticket"]["id"], appointment_ticket}


async def test_every_nth_rule_holds_for_two_clerks_calling_at_once(make_client: Any, clock: Clock) -> None:
    """The walk-ins counted since the last appointment are read and written in the call's own transaction
    (they were read before it and written after: both clerks counted the same walk-in and took two)."""
    client = await make_client({"priority": "every", "priority_every": 2, "parallel": 2})
    await _every_second_call_at_once([client], clock)


@pytest.mark.redis
async def test_every_nth_rule_holds_for_two_nodes_calling_at_once(aiohttp_client: Any, tmp_path: Any, clock: Clock,
                                                                  redis_url: str, redis_prefix: str) -> None:
    clients = []
    for node in ("a", "b"):
        raw = config({"priority": "every", "priority_every": 2, "parallel": 2})
        raw["server"].update({"data_dir": str(tmp_path / node), "redis_url": redis_url, "redis_prefix": redis_prefix})
        app = create_app(settings_from_dict(raw), announce=lambda _: None)
        app[ROOM].clock = clock
        app[APPOINTMENTS].clock = clock
        app[APPOINTMENTS].store.clock = clock
        clients.append(await aiohttp_client(app))
    await _every_second_call_at_once(clients, clock)


async def test_no_show_and_expiry(client: Any, clock: Clock) -> None:
    _, body = await book(client)
    service = client.app[APPOINTMENTS]
    clock.now = SLOT + 15 * 60
    assert await service.sweep() == 0
    clock.now = SLOT + 16 * 60
    assert await service.sweep() == 1
    mine = (await (await client.get("/api/appointments/me", headers=bearer(body["token"]))).json())["appointment"]
    assert mine["state"] == "no_show"
    resp = await client.post("/api/appointments/me/checkin", headers=bearer(body["token"]))
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "appointment_state")


async def test_nothing_personal_in_the_logs(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, body = await book(client, {**BOOK, "email": "ada@example.org"})
    await client.delete("/api/appointments/me", headers=bearer(body["token"]))
    text = caplog.text
    assert body["appointment"]["id"] in text  # transitions are logged, by id
    for secret in ("Ada", "Reisepass", "ada@example.org", body["token"]):
        assert secret not in text


async def test_pages(client: Any) -> None:
    index = await (await client.get("/")).text()
    assert 'href="/book/buergerbuero"' in index and 'href="/book/bauamt"' not in index
    resp = await client.get("/book/buergerbuero")
    page = await resp.text()
    assert resp.status == 200 and 'id="book-form"' in page and "/static/js/book.js" in page
    assert 'id="email"' not in page  # no SMTP configured: no e-mail field
    assert "<script>" not in page  # CSP: no inline scripts
    assert (await client.get("/book/bauamt")).status == 404
    assert (await client.get("/book/nope")).status == 404
    assert (await client.get("/appointment/abc-DEF_1")).status == 200
    assert (await client.get("/appointment/bad%20id")).status == 404
    assert isinstance(client.app, web.Application)


@pytest.mark.redis
async def test_the_flow_on_redis(aiohttp_client: Any, tmp_path: Any, clock: Clock, redis_url: str,
                                 redis_prefix: str) -> None:
    """Book, double booking refused, move, check in and be called first, with every store in Redis."""
    raw = config()
    raw["server"].update({"data_dir": str(tmp_path / "var"), "redis_url": redis_url, "redis_prefix": redis_prefix})
    app = create_app(settings_from_dict(raw), announce=lambda _: None)
    app[ROOM].clock = clock
    app[APPOINTMENTS].clock = clock
    app[APPOINTMENTS].store.clock = clock  # the TTLs are counted from it
    client = await aiohttp_client(app)
    _, body = await book(client)
    assert (await book(client, {**BOOK, "name": "Bea"}))[1]["error"]["code"] == "slot_unavailable"
    resp = await client.post("/api/appointments/me/move", json={"start": SLOT + 1800}, headers=bearer(body["token"]))
    assert resp.status == 200 and await slot_free(client, SLOT) == 1
    await join_walkin(client, "Walk-in")
    clock.now = SLOT + 1800
    resp = await client.post("/api/appointments/me/checkin", headers=bearer(body["token"]))
    ticket = (await resp.json())["ticket"]
    await add_staff(client.app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    called = (await (await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)).json())["ticket"]
    assert called["id"] == ticket["id"] and called["appointment_at"] == SLOT + 1800


async def test_booking_limits_say_when_to_try_again(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 429 ``rate_limited`` carries ``Retry-After`` and ``error.retry_after`` (docs/protocol.md)."""
    first = (await book(client, {**BOOK, "start": at(2, 10)}))[1]
    assert (await book(client, {**BOOK, "start": at(2, 10, 30)}))[0] == 201
    resp = await client.post("/api/appointments/buergerbuero", json={**BOOK, "start": at(2, 11)})
    error = (await resp.json())["error"]
    assert (resp.status, error["code"]) == (429, "rate_limited")
    # the per-day count lasts until an hour after the first appointment of that day ends (10:30 + 1 h, now 07:00)
    assert 16100 <= error["retry_after"] <= 16200 and resp.headers["Retry-After"] == str(error["retry_after"])

    monkeypatch.setattr(service_module, "RATE_PER_ADDRESS", 2)  # the hourly rate across days, bookings and moves
    for resp in (await client.post("/api/appointments/buergerbuero", json={**BOOK, "start": at(3, 11)}),
                 await client.post("/api/appointments/me/move", json={"start": at(3, 11)},
                                   headers=bearer(first["token"]))):
        error = (await resp.json())["error"]
        assert (resp.status, error["code"]) == (429, "rate_limited")
        assert 3500 <= error["retry_after"] <= 3600 and resp.headers["Retry-After"] == str(error["retry_after"])
    assert await slot_free(client, at(3, 11)) == 1  # nothing booked or moved


async def test_slots_say_which_cannot_be_changed_online(client: Any) -> None:
    """cancel_minutes 120 > min_notice_minutes 60: at 07:00, 08:00 and 08:30 are bookable but never changeable."""
    slots = (await (await client.get("/api/appointments/buergerbuero/slots?day=2026-03-02")).json())["slots"]
    assert [(s["time"], s["can_change"]) for s in slots][:4] == [
        ("08:00", False), ("08:30", False), ("09:00", True), ("09:30", True)]
    status, body = await book(client, {**BOOK, "start": at(2, 8, 30)})
    assert status == 201 and body["appointment"]["can_change"] is False  # as the slot said
