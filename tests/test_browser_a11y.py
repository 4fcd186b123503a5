"""axe-core on every page and every state a person can reach, in German and English: no WCAG 2.1 A/AA violation.

One server and one Chromium for the whole module (module-scoped fixtures on the module's event loop); each
test opens the contexts it needs. The states of the waiting page are reached the way they happen (the clerk's
commands go straight to the waiting room, as the dashboard would send them); the checks collect every
violation of a test and fail once, listing them all (tests/axe.py prints id, impact, help and nodes).

Every page listed exists: one that answers 404 (unless the 404 page is what is scanned) is a failure, not a
skip, so a page lost by a regression cannot turn the scan into a test that checks nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, expect

from server.app import create_app
from server.http.keys import AUTH, ROOM, TOWNHALL
from server.http.pages import LANG_COOKIE
from server.queue import core
from server.queue.model import Clerk, JoinRequest, Presence
from server.rooms.departments import Closure
from server.settings import settings_from_dict
from server.store.memory import MemoryStore
from server.waitingroom import WaitingRoom
from tests.app_fixtures import ALWAYS, free_port
from tests.axe import axe_violations, describe
from tests.test_browser import PASSWORD, Problems, launched
from tests.test_browser_media import MEDIA_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

LANGS = ("de", "en")
CLARA = Clerk("clara", "Clara Schulz", frozenset({"buergerbuero", "bauamt"}))


@dataclasses.dataclass
class Site:
    url: str
    app: web.Application

    @property
    def room(self) -> WaitingRoom:
        return self.app[ROOM]


def config(var: Path, video: Path) -> dict[str, Any]:
    return {
        "server": {"timezone": "Europe/Berlin", "grace_seconds": 300, "position_interval": 0.2,
                   "joins_per_address": 1000, "data_dir": str(var), "sign_language_video": str(video),
                   "accessibility_contact": "barrierefrei@example.org",
                   "accessibility_statement_date": "30.11.2026"},
        "departments": [
            {"id": "buergerbuero", "name": "Bürgerbüro", "description": "Ausweise und Meldewesen", "hours": ALWAYS,
             "recording": "on_request", "recording_purpose": "Schulung neuer Mitarbeitender",
             "recording_retention_days": 30},
            {"id": "bauamt", "name": "Bauamt", "description": "Bauanträge", "hours": ALWAYS,
             "appointments": {"hours": ALWAYS, "slot_minutes": 30, "min_notice_minutes": 60, "days_ahead": 3,
                              "cancel_minutes": 30, "late_minutes": 20}},
            {"id": "standesamt", "name": "Standesamt", "hours": {}},  # never open
        ],
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp = tmp_path_factory.mktemp("a11y")
    video = tmp / "dgs.webm"
    video.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(1024))  # only served, never decoded in these tests
    app = create_app(settings_from_dict(config(tmp / "var", video)),
                     store=MemoryStore(staff_file=tmp / "staff.json"), announce=lambda _: None)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    auth = app[AUTH]
    await auth.add_staff("clara", "Clara Schulz", PASSWORD, ["buergerbuero", "bauamt"])
    await auth.add_staff("ada", "Ada Admin", PASSWORD, ["buergerbuero", "bauamt", "standesamt"],
                         roles=["clerk", "lead", "admin", "moderator"])
    try:
        yield Site(str(server.make_url("")).rstrip("/"), app)
    finally:
        await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(site: Site) -> AsyncIterator[Browser]:
    # After the server: the browser (and its sockets) goes first at teardown.
    async with launched(MEDIA_ARGS) as browser:
        yield browser


class Scan:
    """Collects axe findings (and script/CSP errors) over a test; ``done()`` fails with all of them."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.problems = Problems()
        self.count = 0

    async def __call__(self, page: Page, label: str) -> None:
        self.count += 1
        started = time.monotonic()
        violations = await axe_violations(page)
        print(f"axe {label}: {time.monotonic() - started:.2f} s")
        if violations:
            report = describe(violations, label)
            print(report)
            self.found.append(report)

    async def page(self, page: Page, path: str, label: str, ready: str | None = None, idle: bool = False) -> bool:
        """Open ``path`` and scan it once ``ready`` (a selector) is visible (and, with ``idle``, its scripts'
        requests are done); a 404 is recorded as a failure (every page scanned here exists)."""
        response = await page.goto(path)
        if response is not None and response.status == 404 and "404" not in label:
            self.found.append(f"{label}: {path} answers 404: not scanned")
            return False
        if ready:
            await expect(page.locator(ready).first).to_be_visible()
        if idle:
            await page.wait_for_load_state("networkidle")
        await self(page, label)
        return True

    def done(self) -> None:
        print(f"axe: {self.count} page states scanned, {len(self.found)} with violations")
        assert not self.found, "\n\n".join(self.found)
        assert self.problems == [], self.problems


async def context(browser: Browser, site: Site, lang: str, **options: Any) -> BrowserContext:
    """A context whose pages are all in ``lang``: the language cookie a ``?lang=`` link would set."""
    ctx = await browser.new_context(base_url=site.url, locale="de-DE" if lang == "de" else "en-GB", **options)
    await ctx.add_cookies([{"name": LANG_COOKIE, "value": lang, "url": site.url}])
    return ctx


async def open_page(ctx: BrowserContext, scan: Scan, lang: str) -> Page:
    return scan.problems.watch(await ctx.new_page())


async def join(site: Site, ctx: BrowserContext, scan: Scan, lang: str, name: str,
               department: str = "buergerbuero") -> tuple[Page, str]:
    """A ticket made through the API and its waiting page opened with the token, as the check-in form does."""
    page = await open_page(ctx, scan, lang)
    resp = await page.request.post(f"/api/departments/{department}/tickets",
                                   data={"name": name, "concern": "Reisepass", "consent": True, "language": lang})
    assert resp.ok, await resp.text()
    body = await resp.json()
    await page.goto(f"/wait/{body['ticket']['id']}#{body['token']}")
    await expect(page.locator("#waiting-view")).to_be_visible()
    await expect(page.locator("#connection")).to_be_hidden()
    return page, body["ticket"]["id"]


@pytest.mark.parametrize("lang", LANGS)
async def test_public_pages(browser: Browser, site: Site, lang: str) -> None:
    """The landing page (open and closed departments, the DGS video), check-in (open and closed), the
    information pages, the town hall, appointments and the 404 page."""
    scan = Scan()
    ctx = await context(browser, site, lang)
    page = await open_page(ctx, scan, lang)
    await scan.page(page, "/privacy", f"[{lang}] /privacy", "h1")
    await expect(page.locator("html")).to_have_attribute("lang", lang)
    # The scan itself works on these CSP-strict pages: a picture without a text alternative is found.
    await page.evaluate("() => document.querySelector('main').append(Object.assign(new Image(), {src: 'data:,'}))")
    assert "image-alt" in {v["id"] for v in await axe_violations(page)}
    await scan.page(page, "/", f"[{lang}] / (open and closed departments, sign-language video)",
                    ".sign-language")
    await expect(page.locator("[data-department='standesamt'] .badge--closed")).to_be_visible()
    await expect(page.locator("[data-department='buergerbuero'] .badge--open")).to_be_visible()
    await scan.page(page, "/join/buergerbuero", f"[{lang}] /join/buergerbuero", "#join-form")
    # the form's own error state: submitted without consent
    await page.locator("#join-form button[type='submit']").click()
    await expect(page.locator("#form-error")).to_be_visible()
    await scan(page, f"[{lang}] /join/buergerbuero with an error")
    await scan.page(page, "/join/standesamt", f"[{lang}] /join/standesamt (closed)", ".notice--warn")
    await scan.page(page, "/leichte-sprache", f"[{lang}] /leichte-sprache", "h1")
    await scan.page(page, "/barrierefreiheit", f"[{lang}] /barrierefreiheit", "h1")
    await scan.page(page, "/no-such-page", f"[{lang}] 404 page", "h1")

    townhall = site.app[TOWNHALL]
    ada = Clerk("ada", "Ada Admin", frozenset(), frozenset({"moderator"}))
    event = await townhall.create(ada, {
        "title": "Bürgerdialog Verkehr", "description": "Radwege und Busse", "politicians": ["clara"],
        "starts_at": time.time() + 3600, "ends_at": time.time() + 7200, "advance_questions": True})
    await scan.page(page, "/townhall", f"[{lang}] /townhall", "h1")
    await scan.page(page, f"/townhall/{event.id}", f"[{lang}] /townhall/<event>", "h1")
    _, who = await townhall.join(event.id, None)
    question = await townhall.ask(who, "Wann wird der Radweg an der Hauptstraße saniert?", "", "192.0.2.9")
    await scan.page(page, f"/townhall/questions/{question.id}", f"[{lang}] /townhall/questions/<id>", "h1")

    if await scan.page(page, "/book/bauamt", f"[{lang}] /book/bauamt", "h1"):
        slots = page.locator("#slots input")
        await expect(slots.first).to_be_visible()
        await scan(page, f"[{lang}] /book/bauamt with times")
    await appointment_page(site, page, scan, lang)
    scan.done()


async def appointment_page(site: Site, page: Page, scan: Scan, lang: str) -> None:
    from server.http.appointments import APPOINTMENTS

    service = site.app[APPOINTMENTS]
    days = await service.days("bauamt")
    slots = await service.slots("bauamt", days[0]["date"]) if days else []
    free = next((s for s in slots if s["free"]), None)
    assert free is not None, slots
    booked = await service.book(
        "bauamt", {"start": free["start"], "name": f"Ada {lang}", "consent": True}, f"192.0.2.{len(lang)}")
    appointment, token = booked[0], booked[1]
    if await scan.page(page, f"/appointment/{appointment.id}#{token}", f"[{lang}] /appointment/<id>", "h1"):
        await expect(page.locator('[data-field="state"]')).not_to_be_empty()
        await scan(page, f"[{lang}] /appointment/<id> loaded")


@pytest.mark.parametrize("lang", LANGS)
async def test_wait_page_in_every_state(browser: Browser, site: Site, lang: str) -> None:
    """Waiting, the department closed while waiting, called, in consultation, finished; left; no-show (with
    the old place on offer, and without); expired; and a lead closing the department (places lost)."""
    scan = Scan()
    room = site.room
    media = {"permissions": ["camera", "microphone"]}
    await room.set_presence(CLARA, Presence.AVAILABLE)

    # One citizen through the whole visit.
    ctx = await context(browser, site, lang, **media)
    page, ticket = await join(site, ctx, scan, lang, f"Alex {lang}")
    await scan(page, f"[{lang}] wait: waiting")
    await page.locator("#check-start").click()
    await expect(page.locator("#check-result")).to_be_visible()
    await scan(page, f"[{lang}] wait: device check")
    await page.locator("#check-done").click()

    today = datetime.fromtimestamp(room.clock(), room.settings.tz)
    closure = Closure(today.date(), today.date(), "Heute wegen Betriebsausflug geschlossen.")
    await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(d, closures=(closure,)))
    try:
        await expect(page.locator("[data-field='closure']")).to_be_visible()
        await scan(page, f"[{lang}] wait: department closed while waiting")
    finally:
        await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(d, closures=()))
    await expect(page.locator("[data-field='closure']")).to_be_hidden()

    await room.call(CLARA, ticket)
    await expect(page.locator("#called-view")).to_be_visible()
    await expect(page.locator("#answer-time")).to_be_visible()
    await scan(page, f"[{lang}] wait: called")
    await page.locator("#leave").click()
    await expect(page.locator("#leave-dialog")).to_be_visible()
    await scan(page, f"[{lang}] wait: leave dialog")
    await page.locator("#leave-no").click()
    await room.transfer(CLARA, ticket, "bauamt", "")
    await expect(page.locator("#notice")).to_be_visible()
    await expect(page.locator("#waiting-view")).to_be_visible()
    await scan(page, f"[{lang}] wait: transferred to another department")
    await room.call(CLARA, ticket)
    await expect(page.locator("#called-view")).to_be_visible()

    await room.answer_ticket(ticket)
    await expect(page.locator("#consultation-view")).to_be_visible()
    await expect(page.locator("#consultation-heading")).not_to_be_empty()
    await scan(page, f"[{lang}] wait: in consultation")
    await page.locator("#consultation-view button").first.focus()
    await room.finish(CLARA, ticket)
    await expect(page.locator("#final-view")).to_be_visible()
    # The focused control went away with the video: the focus is on the heading that says what happened.
    await expect(page.locator("#wait-heading")).to_be_focused()
    await scan(page, f"[{lang}] wait: finished")

    # Left on their own (first a look at the start page, which leads back to the place instead of a new one).
    page, ticket = await join(site, ctx, scan, lang, f"Bea {lang}")
    wait_url = page.url
    await page.goto("/")
    await expect(page.locator("#already")).to_be_visible()
    await scan(page, f"[{lang}] / while holding a place")
    await page.goto(wait_url)
    await expect(page.locator("#waiting-view")).to_be_visible()
    await room.call(CLARA, ticket)
    await expect(page.locator("#answer")).to_be_focused()
    await room.return_to_queue(CLARA, ticket)
    await expect(page.locator("#notice")).to_be_visible()
    await expect(page.locator("#wait-heading")).to_be_focused()  # the call's button went away
    await scan(page, f"[{lang}] wait: back in the queue after a call")
    await page.locator("#leave").click()
    await page.locator("#leave-yes").click()
    await expect(page.locator("#final-view")).to_be_visible()
    await expect(page.locator("#wait-heading")).to_be_focused()  # not the page body: the leave button is gone
    await scan(page, f"[{lang}] wait: left")

    # Called and did not answer: first the old place on offer, then (no rejoin time left) the plain end.
    settings = room.settings
    for rejoin in (600.0, 0.0):
        page, ticket = await join(site, ctx, scan, lang, f"Cem {lang}")
        await room.call(CLARA, ticket)
        await expect(page.locator("#called-view")).to_be_visible()
        room.settings = dataclasses.replace(settings, answer_seconds=0.0, rejoin_seconds=rejoin)
        try:
            await room.no_show(CLARA, ticket)
        finally:
            room.settings = settings
        await expect(page.locator("#final-view")).to_be_visible()
        await expect(page.locator("#rejoin-place" if rejoin else "#rejoin")).to_be_visible()
        await scan(page, f"[{lang}] wait: no-show" + (" (old place on offer)" if rejoin else ""))

    # Expired: the page was away longer than the grace period (the core's move, applied as the sweep does).
    page, ticket = await join(site, ctx, scan, lang, f"Dan {lang}")
    await room._apply(ticket, lambda t, now: core.expire(t.replace(disconnected_at=now - 1000), now, 300))
    await expect(page.locator("#final-view")).to_be_visible()
    await scan(page, f"[{lang}] wait: expired")

    # A lead closes the department at once; waiting citizens lose their place and are told.
    page, ticket = await join(site, ctx, scan, lang, f"Eva {lang}")
    await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(
        d, closed_now=True, closed_message="Wegen Krankheit heute geschlossen."))
    try:
        await room.end_waiting("buergerbuero")
        await expect(page.locator("#final-view")).to_be_visible()
        await scan(page, f"[{lang}] wait: department closed by a lead")
    finally:
        await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(d, closed_now=False,
                                                                                    closed_message=""))
    # Checked in for a booked appointment: the page names its time instead of a walk-in estimate.
    booked, token = await room.join("bauamt", JoinRequest(name=f"Fay {lang}", consent=True), "192.0.2.30",
                                    appointment_at=time.time() + 600)
    await page.goto(f"/wait/{booked.id}#{token}")
    await expect(page.locator("[data-field='appointment']")).to_be_visible()
    await scan(page, f"[{lang}] wait: waiting for a booked appointment")
    await room.leave_ticket(booked.id)
    # Unknown ticket (an old link).
    await page.goto(f"/wait/{secrets.token_urlsafe(9)}#{secrets.token_urlsafe(16)}")
    await expect(page.locator("#final-view")).to_be_visible()
    await scan(page, f"[{lang}] wait: unknown ticket")
    await ctx.close()
    scan.done()


async def add_recording(site: Site, ticket_id: str) -> None:
    """A finished, composed recording as the recording service leaves one (only listed; never played here)."""
    from server.http.keys import RECORDINGS
    from server.recording.model import Composition, ConsentEntry, Recording, RecordingState

    now = time.time()
    await site.app[RECORDINGS].store.create(Recording(
        id=secrets.token_urlsafe(9), ticket=ticket_id, department="buergerbuero", requested_by="ada",
        purpose="Schulung neuer Mitarbeitender", retention_days=30, state=RecordingState.STOPPED,
        created_at=now - 600, expires_at=now + 30 * 86400, segments=((now - 590, now - 290),),
        consents=(ConsentEntry("staff:ada", "clerk", "agreed", now - 595),), stopped_at=now - 290,
        stop_reason="ended", composition=Composition.DONE, duration=300.0, size=1_000_000))


@pytest.mark.parametrize("lang", LANGS)
async def test_staff_and_admin_pages(browser: Browser, site: Site, lang: str) -> None:
    """Staff login, the dashboard with a waiting and a called ticket and the transfer dialog open, recordings,
    the town-hall staff pages, and the /admin pages."""
    scan = Scan()
    room = site.room
    ctx = await context(browser, site, lang, permissions=["camera", "microphone"])
    page = await open_page(ctx, scan, lang)
    await scan.page(page, "/staff", f"[{lang}] /staff logged out", "#login-form")
    await page.locator("#username").fill("ada")
    await page.locator("#password").fill("wrong password")
    await page.locator("#login-form button[type='submit']").click()
    await expect(page.locator("#login-error")).to_be_visible()
    await scan(page, f"[{lang}] /staff login error")
    await page.locator("#password").fill(PASSWORD)
    await page.locator("#login-form button[type='submit']").click()
    await expect(page.locator("#dashboard-heading")).to_be_focused()

    ada = Clerk("ada", "Ada Admin", frozenset({"buergerbuero", "bauamt", "standesamt"}))
    # The dashboard first (a dashboard that arrives after the call joins the consultation by itself).
    await expect(page.locator(".panel[data-department='buergerbuero']")).to_be_visible()
    waiting, _ = await room.join("bauamt", JoinRequest(name=f"Wanda {lang}", consent=True), "192.0.2.20")
    called, _ = await room.join("buergerbuero", JoinRequest(name=f"Carl {lang}", consent=True), "192.0.2.21")
    await room.call(ada, called.id)
    panel = page.locator(".panel[data-department='bauamt']")
    await expect(panel.locator(".ticket--waiting", has_text=f"Wanda {lang}")).to_be_visible()
    mine = page.locator(".panel[data-department='buergerbuero'] .ticket--called", has_text=f"Carl {lang}")
    await expect(mine).to_be_visible()
    await scan(page, f"[{lang}] /staff dashboard (waiting and called ticket)")
    await mine.locator("[data-action='transfer']").click()
    await expect(page.locator("#transfer-dialog")).to_be_visible()
    await scan(page, f"[{lang}] /staff transfer dialog")
    await page.locator("#transfer-department").select_option("standesamt")
    await page.locator("#transfer-form button[value='transfer']").click()
    await expect(page.locator("#transfer-warning")).to_be_visible()
    await scan(page, f"[{lang}] /staff transfer dialog, closed department warning")
    await page.locator("#transfer-form button[value='cancel']").click()
    # The consultation from the clerk's side: the panel with the video (already open when the dashboard
    # went back into it by itself, as after a reload).
    consult = page.locator("#consult-panel")
    video = mine.locator("[data-action='video']")
    await expect(video.or_(page.locator("#consult-panel:not([hidden])")).first).to_be_visible()
    if not await consult.is_visible():
        await video.click()
    await expect(consult).to_be_visible()
    await expect(page.locator("#consult-heading")).not_to_be_empty()
    await scan(page, f"[{lang}] /staff in a consultation")
    await room.finish(ada, called.id)
    await expect(page.locator("#consult-panel")).to_be_hidden()
    await room.call(ada, waiting.id)
    await room.finish(ada, waiting.id)

    await add_recording(site, called.id)
    if await scan.page(page, "/staff/recordings", f"[{lang}] /staff/recordings (one recording)",
                       "#recordings-list tbody tr"):
        # The consent record: the player's panel without playing (the stand-in recording has no media file).
        await page.locator("#recordings-list tbody tr button.button--quiet").first.click()
        await expect(page.locator("#player-panel")).to_be_visible()
        await page.wait_for_load_state("networkidle")
        await scan(page, f"[{lang}] /staff/recordings consent record and access log")
    await scan.page(page, "/staff/townhall", f"[{lang}] /staff/townhall", "h1")
    event = await site.app[TOWNHALL].create(Clerk("ada", "Ada Admin", frozenset(), frozenset({"moderator"})), {
        "title": "Bürgerdialog Schule", "politicians": ["ada"], "starts_at": time.time() + 3600,
        "ends_at": time.time() + 7200, "advance_questions": True})
    await scan.page(page, f"/townhall/{event.id}/moderate", f"[{lang}] /townhall/<event>/moderate", "h1")
    await scan.page(page, f"/townhall/{event.id}/presenter", f"[{lang}] /townhall/<event>/presenter", "h1")

    if await scan.page(page, "/admin", f"[{lang}] /admin", "h1", idle=True):
        card = page.locator(".admin-dept[data-department='bauamt']")
        await card.locator("button").first.click()  # edit
        await expect(page.locator("#edit-panel")).to_be_visible()
        await page.locator("#add-closure").click()
        await scan(page, f"[{lang}] /admin editing a department, with a closure")
        await page.locator("#edit-cancel").click()
        await card.locator("button.button--danger").click()  # close at once
        await expect(page.locator("#close-panel")).to_be_visible()
        await scan(page, f"[{lang}] /admin closing a department")
        await page.locator("#close-cancel").click()
    if await scan.page(page, "/admin/staff", f"[{lang}] /admin/staff", "h1", idle=True):
        await page.locator("#staff-add-form button[type='submit']").click()
        await expect(page.locator("#staff-add-error")).to_be_visible()
        await scan(page, f"[{lang}] /admin/staff adding with an error")
        await page.locator("[data-username='clara'] button").first.click()  # edit
        await expect(page.locator("#staff-edit-panel")).to_be_visible()
        await scan(page, f"[{lang}] /admin/staff editing an account")
    for path in ("/admin/stats", "/admin/audit"):
        await scan.page(page, path, f"[{lang}] {path}", "h1", idle=True)
    if await scan.page(page, "/admin/settings", f"[{lang}] /admin/settings", "h1", idle=True):
        await page.fill("#setting-answer_seconds", "-1")
        await page.keyboard.press("Enter")  # submits the form from the field
        await expect(page.locator("#settings-error")).to_be_visible()
        await expect(page.locator("#settings-error")).to_be_focused()
        await scan(page, f"[{lang}] /admin/settings refusing a value")
    await ctx.close()
    scan.done()
