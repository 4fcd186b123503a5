"""What citizens and clerks read, in Chromium: a true sentence and a next step in every state of a ticket, a
department closing while citizens wait, the end of the video call by the clerk, connection quality from one
source, focus after actions, the phone layout of the video, and the microphone meter.

The clerk's moves in the first test go straight to the waiting room (the same commands the dashboard sends):
what is tested is the citizen's page. The others drive both pages, with Chromium's fake camera and microphone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from playwright.async_api import Browser, Page, expect

from server.i18n import gettext, when_text
from server.queue.model import Clerk, Presence
from server.rooms.departments import Closure
from tests.test_browser import PASSWORD, Problems, check_in, launched, staff_login
from tests.test_browser_media import MEDIA_ARGS, frames_rising, media_page

pytestmark = pytest.mark.browser

CLARA = Clerk("clara", "Clara Schulz", frozenset({"buergerbuero", "bauamt"}))


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    # After live_server, so that the browser closes its sockets first (as in test_browser).
    async with launched(MEDIA_ARGS) as browser:
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()


def ticket_id(page: Page) -> str:
    return page.url.rsplit("/", 1)[1].split("#", 1)[0]


async def test_every_waiting_state_has_its_own_sentence(browser: Browser, live_server, problems: Problems) -> None:
    """Waiting without a clerk, with one, while the department is closed for the day (with the closure's
    message and when it opens), opened again, called, transferred, returned, and left: each says what is
    true and what comes next."""
    room = live_server.room
    _, page = await media_page(browser, problems, live_server.url)
    await check_in(page, "Alex")
    status = page.locator("[data-field='clerks']")
    notice = page.locator("#notice")
    await expect(status).to_have_text(re.compile("Gerade ist niemand im Dienst. Sie behalten Ihren Platz"))

    await room.set_presence(CLARA, Presence.AVAILABLE)
    await expect(status).to_have_text("1 Mitarbeiterin oder Mitarbeiter im Dienst")
    await expect(page.locator("[data-field='estimate']")).not_to_have_text("–")

    # Closed for the rest of today: every waiting page is told at once, with when it opens and the message.
    today = datetime.fromtimestamp(room.clock(), room.settings.tz)
    closure = Closure(today.date(), today.date(), "Heute wegen Betriebsausflug geschlossen.")
    await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(d, closures=(closure,)))
    opens = when_text(gettext("de"), datetime.combine(today.date() + timedelta(days=1), datetime.min.time(),
                                                       today.tzinfo), today)
    closed = f"Bürgerbüro ist gerade geschlossen und öffnet {opens} wieder."
    await expect(notice).to_contain_text(closed)
    await expect(notice).to_contain_text("Sie behalten Ihren Platz, solange diese Seite geöffnet bleibt.")
    await expect(status).to_contain_text(closed)
    await expect(page.locator("[data-field='closure']")).to_have_text("Heute wegen Betriebsausflug geschlossen.")
    await expect(page.locator("[data-field='estimate']")).to_have_text("–")
    await expect(page.locator("[data-field='position-number']")).to_have_text("1")

    await room.directory.modify("buergerbuero", lambda d: dataclasses.replace(d, closures=()))
    await expect(notice).to_have_text("Bürgerbüro hat wieder geöffnet. Sie sind weiter an Ihrem Platz.")
    await expect(page.locator("[data-field='closure']")).to_be_hidden()

    ticket = ticket_id(page)
    await room.call_next(CLARA, "buergerbuero")
    await expect(page.locator("#called-view")).to_contain_text("Clara Schulz ruft Sie auf.")
    await room.transfer(CLARA, ticket, "bauamt", "")
    await expect(notice).to_contain_text("Sie wurden an Bauamt weitergeleitet.")
    await expect(page.locator("[data-field='department']")).to_have_text("Bauamt")
    await room.call(CLARA, ticket)
    await expect(page.locator("#called-view")).to_be_visible()
    await room.return_to_queue(CLARA, ticket)
    await expect(notice).to_have_text("Sie sind wieder in der Warteschlange – an Ihrem ursprünglichen Platz.")

    await page.get_by_role("button", name="Warteschlange verlassen").click()
    dialog = page.locator("#leave-dialog")
    await expect(dialog.get_by_role("button", name="Nein, weiter warten")).to_be_visible()
    await dialog.get_by_role("button", name="Ja, verlassen").click()
    await expect(page.locator("#wait-heading")).to_have_text("Sie haben die Warteschlange verlassen")
    await expect(page.get_by_role("link", name="Neu anstellen")).to_have_attribute("href", "/join/bauamt")
    await expect(page.locator("body")).not_to_contain_text("Ihr Platz in der Warteschlange")
    assert problems == []


QUALITY = """(loss) => {
  // Stand-in statistics for the clerk's connection (the same shape as MediaSession.inbound()): the view
  // rates them once per interval; the tile and the status line must agree.
  const media = window.sprechstundeMedia;
  window.spsLoss = loss;
  if (media.spsFake) return;
  media.spsFake = { packets: 0, lost: 0, bytes: 0, frames: 0 };
  media.inbound = async () => {
    const f = media.spsFake;
    f.packets += 300; f.lost += Math.round(300 * window.spsLoss / (1 - window.spsLoss));
    f.bytes += 150000; f.frames += 90;
    const byMid = {};
    for (const t of media.pc.getTransceivers()) {
      if (t.mid === null) continue;
      byMid[t.mid] = { ...f, kind: t.receiver.track.kind };
    }
    return { byMid, rtt: 0.05, at: performance.now(), connection: media.pc };
  };
}"""


async def test_consultation_ended_by_the_clerk(browser: Browser, live_server, problems: Problems) -> None:
    """The clerk logs in (focus on the dashboard heading, drawn calmly), calls and talks to a citizen on a
    phone (the name is a small label on the picture). Connection quality: the tile and the status line say
    the same. The citizen's leave dialog has its own answers. The clerk hangs up: the citizen reads that the
    clerk ended the call and what happens now, not that the clerk is coming; then the clerk finishes."""
    await live_server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
    citizen_context = await browser.new_context(
        base_url=live_server.url, locale="de-DE", permissions=["camera", "microphone"],
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
    )
    citizen = problems.watch(await citizen_context.new_page())
    await check_in(citizen, "Alex")

    _, clerk = await media_page(browser, problems, live_server.url)
    await staff_login(clerk, "clara")
    heading = clerk.locator("#dashboard-heading")
    await expect(heading).to_be_focused()
    style = await heading.evaluate(
        "(e) => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineColor, s.boxShadow]; }")
    assert style == ["solid", "rgb(11, 79, 138)", "none"]  # calm blue, no yellow box

    panel = clerk.locator(".panel[data-department='buergerbuero']")
    await panel.get_by_role("button", name="Nächste Person aufrufen").click()
    await citizen.get_by_role("button", name="Jetzt eintreten").click()
    await expect(citizen.locator("#consultation-heading")).to_have_text("Ihr Gespräch mit Clara Schulz hat begonnen.")
    await frames_rising(citizen)
    await frames_rising(clerk)

    # On a phone the caption is a small label at the edge, not a bar over the picture.
    main = citizen.locator(".tile--main")
    await expect(main.locator(".tile__name")).to_have_text(re.compile("Clara Schulz"))
    tile_box = await main.bounding_box()
    caption_box = await main.locator(".tile__caption").bounding_box()
    assert tile_box and caption_box
    assert caption_box["height"] * caption_box["width"] < 0.12 * tile_box["height"] * tile_box["width"]
    assert caption_box["height"] < 0.2 * tile_box["height"]

    # One source of truth for the connection quality.
    consult = clerk.locator("#consult-panel")
    tile_quality = consult.locator(".tile--main .quality")
    status_line = consult.locator(".consult__status")
    await clerk.evaluate(QUALITY, 0.2)
    await expect(tile_quality).to_have_text("Verbindung schlecht", timeout=15_000)
    await expect(status_line).to_have_text(re.compile("Die Verbindung zu Alex ist schlecht"))
    await clerk.evaluate(QUALITY, 0.0)
    await expect(tile_quality).to_have_text("Verbindung gut", timeout=15_000)
    await expect(status_line).to_have_text("Die Verbindung zu Alex ist wieder in Ordnung.")

    # Leaving the consultation is asked with its own words.
    await citizen.get_by_role("button", name="Gespräch verlassen").click()
    dialog = citizen.locator("#leave-dialog")
    await expect(dialog).to_contain_text("Möchten Sie das Gespräch wirklich verlassen?")
    await expect(dialog).not_to_contain_text("weiter warten")
    await dialog.get_by_role("button", name="Nein, im Gespräch bleiben").click()
    await expect(dialog).to_be_hidden()

    await consult.get_by_role("button", name="Auflegen").click()
    view = citizen.locator("#consultation-view")
    await expect(citizen.locator("#consultation-heading")).to_have_text("Clara Schulz hat das Videogespräch beendet.")
    next_step = citizen.locator("#consultation-next")
    await expect(next_step).to_have_text(re.compile("Ihr Anliegen wird jetzt abgeschlossen"))
    await expect(view).not_to_contain_text("kommt gleich")
    await expect(view).not_to_contain_text("hat begonnen")

    await consult.get_by_role("button", name=re.compile("^Abschließen")).click()
    await expect(citizen.locator("#wait-heading")).to_have_text("Ihr Gespräch ist beendet")
    await expect(citizen.locator("#final-view")).to_contain_text("Vielen Dank für Ihren Besuch!")
    await expect(citizen.get_by_role("link", name="Neu anstellen")).to_be_hidden()
    assert problems == []


async def test_device_check_focus_and_microphone_meter(browser: Browser, live_server, problems: Problems) -> None:
    """The landing page's refresh keeps a closed card's opening sentence. After "Test starten" the focus is on
    the test's status, not the page body. The meter is fed and scaled in decibels (speech fills the middle of
    the bar); "Wir hören Sie" needs a voice, not one click. The pages' relative opening times match the
    server's."""
    _, page = await media_page(browser, problems, live_server.url)
    # The landing page's live refresh says when a closed department opens, never "niemand im Dienst".
    await page.goto("/")
    closed = page.locator("[data-department='standesamt'] [data-field='estimate']")
    await expect(closed).to_have_text("Wann es wieder öffnet, steht noch nicht fest.")
    await closed.evaluate("(e) => { e.textContent = ''; document.dispatchEvent(new Event('visibilitychange')); }")
    await expect(closed).to_have_text("Wann es wieder öffnet, steht noch nicht fest.")

    await check_in(page, "Alex")
    await page.get_by_role("button", name="Test starten").click()
    await expect(page.locator("#check-result")).to_be_focused()

    # Chromium's fake microphone beeps: the meter rises well above the bottom and the voice is heard.
    await page.wait_for_function("() => document.getElementById('mic-meter').value > 0.35", timeout=10_000)
    await expect(page.locator("#mic-status")).to_have_text("Wir hören Sie.")

    units = await page.evaluate("""async () => {
      const { levelFromRms, voiceDetector } = await import('/static/js/media.js');
      const click = voiceDetector();
      const once = [click(0.9, 0), click(0, 20), click(0, 40), click(0.9, 3000)];
      const voice = voiceDetector();
      const speaking = [0, 100, 200, 300].map((at) => voice(0.6, at));
      return {
        silence: levelFromRms(0.0005), quiet: levelFromRms(0.003), speech: levelFromRms(0.03),
        loud: levelFromRms(0.5), once, speaking,
      };
    }""")
    assert units["silence"] == 0 and units["loud"] == 1
    assert 0.1 < units["quiet"] < units["speech"] and 0.5 < units["speech"] < 0.8
    assert units["once"] == [False, False, False, False]  # a click, then another seconds later: no voice
    assert units["speaking"] == [False, False, False, True]

    now = datetime(2026, 11, 30, 15, 0, tzinfo=live_server.room.settings.tz)  # a Monday
    moments = [now.replace(hour=16), now + timedelta(days=1, hours=-7), now + timedelta(days=6, hours=-5),
               now + timedelta(days=7, hours=-7)]
    in_page = await page.evaluate(
        """async ([isos, now]) => {
          const { whenText } = await import('/static/js/common.js');
          return isos.map((iso) => whenText(iso, 'Europe/Berlin', new Date(now)));
        }""",
        [[m.isoformat(timespec="minutes") for m in moments], now.timestamp() * 1000],
    )
    assert in_page == [when_text(gettext("de"), m, now) for m in moments]
    assert problems == []


async def test_a_page_away_when_the_department_closed_learns_it_on_return(
        browser: Browser, live_server, problems: Problems) -> None:
    """The citizen's page was not open when a lead closed at once and the places were lost; opening it again
    says the department closed (with the lead's message), not that the ticket is unknown."""
    room = live_server.room
    _, page = await media_page(browser, problems, live_server.url)
    await check_in(page, "Alex")
    wait_url = page.url
    await expect(page.locator("[data-field='position-number']")).to_have_text("1")
    await page.goto("about:blank")  # the page is gone (its socket with it)
    await room.directory.modify(
        "buergerbuero", lambda d: dataclasses.replace(d, closed_now=True, closed_message="Wegen Wasserschaden."))
    assert await room.end_waiting("buergerbuero") == 1
    await page.goto(wait_url)
    await expect(page.locator("#wait-heading")).to_have_text("Das Amt hat geschlossen")
    await expect(page.locator("#final-text")).to_contain_text(
        "Bürgerbüro hat geschlossen, bevor Sie an der Reihe waren. Ihr Platz ist damit verfallen.")
    await expect(page.locator("#final-text")).to_contain_text("Wegen Wasserschaden.")
    assert problems == []
