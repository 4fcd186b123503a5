"""Real-browser test of a recorded consultation: consent in both browsers, the indicator, stop, playback.

The citizen and the clerk (who also leads the department) are two Chromium contexts with fake devices.
Each is asked in a modal dialog that takes the focus and that Escape does not dismiss; "Aufnahme läuft"
shows on both while video flows; the clerk stops it, and as lead plays the composed file on
/staff/recordings: the player's ``currentTime`` advances. Everything waits on conditions.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from server.http.keys import AUTH
from tests.test_browser import PASSWORD, Problems, check_in, launched, staff_login
from tests.test_browser_media import MEDIA_ARGS, MEDIA_TIMEOUT_MS, frames_rising, media_page

pytestmark = pytest.mark.browser

COMPOSE_TIMEOUT_S = 120.0  # composition runs in a niced ffmpeg process; a loaded CI machine is slow
SCREENSHOTS = os.environ.get("SCREENSHOTS")  # a directory: keep pictures of the pages for a human to look at

# Playwright's wait_for_function takes any truthy result, a pending Promise included, so an async
# predicate returns at once. This one is synchronous: it starts a getStats() in the page when none is
# running and compares the inbound video frames decoded (as last counted) with ``arg``.
PLAYER_STATE = """(v) => ({ src: v.currentSrc, readyState: v.readyState, networkState: v.networkState, paused: v.paused,
  currentTime: v.currentTime, duration: v.duration, videoWidth: v.videoWidth, error: v.error && v.error.message })"""


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(MEDIA_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:  # Playwright creates the directory
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


async def consent_in(page: Page, picture: str | None = None) -> None:
    """The consent dialog opens modal with the focus on its heading; Escape leaves it open; "Ja" answers."""
    dialog = page.get_by_role("dialog", name="Darf dieses Gespräch aufgezeichnet werden?")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("Schulung neuer Mitarbeitender")
    await expect(dialog).to_contain_text("30 Tage")
    heading = dialog.get_by_role("heading", name="Darf dieses Gespräch aufgezeichnet werden?")
    await expect(heading).to_be_focused()
    assert await dialog.evaluate("(d) => d.matches(':modal')")
    if picture:
        await screenshot(page, picture)
    await page.keyboard.press("Escape")  # not an answer: the request stays open
    await expect(dialog).to_be_visible()
    await expect(heading).to_be_focused()
    await dialog.get_by_role("button", name="Ja, ich willige ein").click()
    await expect(dialog).to_be_hidden()


async def record_announcements(page: Page) -> None:
    """Keep every text a status line of the page says from now on: a later announcement (the connection
    turning poor on a loaded machine) may replace the one a test looks for before it looks."""
    await page.evaluate("""() => {
        window.__announced = [];
        new MutationObserver(() => {
            for (const region of document.querySelectorAll('[role=status]')) {
                if (region.textContent) window.__announced.push(region.textContent);
            }
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")


async def announced(page: Page, text: str) -> None:
    await page.wait_for_function("(text) => window.__announced.some((said) => said.includes(text))", arg=text,
                                 timeout=10_000)


def indicator(page: Page) -> Locator:
    return page.get_by_role("status").filter(has_text="Aufnahme läuft")


async def test_both_consent_clerk_stops_lead_plays(browser: Browser, live_server, problems: Problems) -> None:
    """A clerk (and lead) calls a citizen; video flows both ways; the clerk asks to record; both consent in
    their own browser; "Aufnahme läuft" shows on both while video flows; the clerk stops it and both
    indicators go; on /staff/recordings the composed file plays and the view is in the access log."""
    await live_server.app[AUTH].add_staff("clara", "Clara Schulz", PASSWORD, ["buergerbuero"],
                                          roles=["clerk", "lead"])
    _, citizen = await media_page(browser, problems, live_server.url)
    await check_in(citizen, "Alex")
    await expect(citizen.locator("[data-field='position-number']")).to_have_text("1")

    _, clerk = await media_page(browser, problems, live_server.url)
    await staff_login(clerk, "clara")
    panel = clerk.locator(".panel[data-department='buergerbuero']")
    await expect(panel.locator(".ticket--waiting")).to_contain_text("Alex")
    await panel.get_by_role("button", name="Nächste Person aufrufen").click()
    consult = clerk.locator("#consult-panel")
    await expect(consult).to_contain_text("Gespräch mit Alex")
    await citizen.get_by_role("button", name="Jetzt eintreten").click()
    await expect(citizen.locator("#consultation-view")).to_contain_text("Clara Schulz")
    for page in (citizen, clerk):
        await frames_rising(page, 5)

    # The citizen has no button to ask for a recording; the clerk has.
    await expect(citizen.get_by_role("button", name="Aufzeichnung anfragen")).to_have_count(0)
    await consult.get_by_role("button", name="Aufzeichnung anfragen").click()
    await consent_in(citizen, picture="consent-dialog")
    await expect(indicator(citizen)).to_have_count(0)  # one "yes" is not enough
    await consent_in(clerk)
    for page in (citizen, clerk):
        await expect(indicator(page)).to_be_visible()
    await expect(citizen.get_by_role("button", name="Einwilligung widerrufen")).to_be_visible()
    await expect(consult.get_by_role("button", name="Einwilligung widerrufen")).to_be_hidden()  # clerk: "beenden"
    await screenshot(clerk, "consultation-recording")

    # Some seconds of media flow into the recording: 60 more frames decoded on both sides (~2 s at 30 fps).
    await asyncio.gather(*(frames_rising(page, 60) for page in (citizen, clerk)))

    for page in (citizen, clerk):
        await record_announcements(page)
    await consult.get_by_role("button", name="Aufzeichnung beenden").click()
    for page in (citizen, clerk):
        await expect(indicator(page)).to_have_count(0)
        await announced(page, "Die Aufzeichnung wurde beendet.")
    await expect(consult.get_by_role("button", name="Aufzeichnung anfragen")).to_be_visible()

    # The lead finds it on /staff/recordings once composed, and plays it.
    recordings = await clerk.context.new_page()
    problems.watch(recordings)
    await recordings.goto("/staff/recordings")
    row = recordings.locator("#recordings-list tbody tr")
    deadline = time.monotonic() + COMPOSE_TIMEOUT_S
    while not re.search(r"\bbereit\b", await row.inner_text()):
        assert "fehlgeschlagen" not in await row.inner_text()
        assert time.monotonic() < deadline, f"not composed within {COMPOSE_TIMEOUT_S} s: {await row.inner_text()}"
        await recordings.wait_for_timeout(500)  # the page has no live update: reload until composed
        await recordings.reload()
        await expect(row).to_have_count(1)
    await expect(row).to_contain_text("Bürgerbüro")
    await expect(row).to_contain_text("Bürger:in")
    await expect(row).to_contain_text("Sachbearbeitung")

    await row.get_by_role("button", name=re.compile("^Abspielen")).click()
    player = recordings.locator("video#player")
    await expect(player).to_be_visible()
    await expect(recordings.locator("#player-heading")).to_be_focused()
    await expect(recordings.locator("#consent-record")).to_contain_text("eingewilligt")
    try:
        await recordings.wait_for_function(
            "() => { const v = document.getElementById('player'); return v.videoWidth > 0 && v.currentTime > 0.5; }",
            polling=100, timeout=MEDIA_TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        pytest.fail(f"the player did not play: {await player.evaluate(PLAYER_STATE)}")
    assert await player.evaluate("(v) => v.duration") > 1.5  # the seconds recorded, not a fragment
    await screenshot(recordings, "recordings-player")
    await expect(recordings.locator("#access-log")).to_contain_text("angesehen")  # the lead sees the view logged
    assert problems == []
