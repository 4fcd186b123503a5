"""Real-browser tests of video consultations: Chromium's fake camera and microphone through our SFU.

Media is asserted the way DESIGN.md §4 says: from the page's own RTCPeerConnection (exposed as
``window.sprechstundeMedia.pc``), inbound video ``framesDecoded`` rising, or a video element that has a
size and a moving ``currentTime``; never an exact resolution, and never by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, check_in, launched, staff_login

pytestmark = pytest.mark.browser

MEDIA_ARGS = [*CHROMIUM_ARGS, "--disable-features=WebRtcHideLocalIpsWithMdns"]
MEDIA_TIMEOUT_MS = 10_000

@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    # As in test_browser: after live_server, so that the browser closes its sockets first.
    async with launched(MEDIA_ARGS) as browser:
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()


async def media_page(browser: Browser, problems: Problems, base_url: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(
        base_url=base_url,
        locale="de-DE",
        permissions=["camera", "microphone"],
    )
    return context, problems.watch(await context.new_page())


FRAMES_ABOVE = """(above) => {
  const pc = window.sprechstundeMedia && window.sprechstundeMedia.pc;
  if (!pc) return false;
  if (!window.spsFramesPending) {
    window.spsFramesPending = true;
    pc.getStats().then((report) => {
      let frames = 0;
      report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0; });
      window.spsFrames = frames;
    }).finally(() => { window.spsFramesPending = false; });
  }
  return (window.spsFrames || 0) > above;
}"""


async def frames_rising(page: Page, frames: int = 5) -> None:
    """Wait until the page has decoded remote video, then until it decodes ``frames`` more (it plays, not
    froze). The check is synchronous: ``wait_for_function`` takes a pending Promise for a truthy result, so
    an async check returned at once and waited for nothing (the earlier version of this helper)."""
    await page.wait_for_function(FRAMES_ABOVE, arg=0, polling=100, timeout=MEDIA_TIMEOUT_MS)
    seen = await page.evaluate("() => window.spsFrames")
    await page.wait_for_function(FRAMES_ABOVE, arg=seen + frames, polling=100, timeout=MEDIA_TIMEOUT_MS)


async def test_device_check_loops_through_the_server(browser: Browser, live_server, problems: Problems) -> None:
    """The citizen tests camera and microphone while waiting: their own picture comes back through the
    server and plays; ending the test closes the connection (nobody is near the head: no clerk)."""
    _, page = await media_page(browser, problems, live_server.url)
    await check_in(page, "Alex")
    await expect(page.locator("[data-field='position-number']")).to_have_text("1")
    check = page.locator("#check")
    await expect(check.get_by_label("Mit Kamera und Mikrofon")).to_be_checked()
    await check.get_by_role("button", name="Test starten").click()

    await page.wait_for_function(
        """() => {
          const v = document.getElementById('check-video');
          if (!v || v.videoWidth === 0) return false;
          if (window.checkStartedAt === undefined) window.checkStartedAt = v.currentTime;
          return v.currentTime > window.checkStartedAt + 0.3;
        }""",
        timeout=MEDIA_TIMEOUT_MS,
    )
    await expect(page.locator("#check-result")).to_contain_text("Alles in Ordnung")
    await frames_rising(page)

    await check.get_by_role("button", name="Test beenden").click()
    await page.wait_for_function("() => !window.sprechstundeMedia || !window.sprechstundeMedia.pc")
    await expect(check.get_by_role("button", name="Test starten")).to_be_visible()
    assert problems == []


async def test_consultation_both_ways_then_done(browser: Browser, live_server, problems: Problems) -> None:
    """A clerk calls a citizen: each sees the other's video (frames decoded and rising on both pages),
    a chat message arrives; the clerk finishes and the citizen's page says the visit is done."""
    await live_server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
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

    await frames_rising(citizen)
    await frames_rising(clerk)
    await expect(citizen.locator(".tile--main .tile__name")).to_have_text(re.compile("Clara Schulz"))

    await clerk.get_by_label("Nachricht schreiben").fill("Guten Tag!")
    await clerk.get_by_role("button", name="Senden").click()
    await expect(citizen.locator(".chat__log")).to_contain_text("Guten Tag!")

    await consult.get_by_role("button", name=re.compile("^Abschließen")).click()
    await expect(citizen.locator("#wait-heading")).to_have_text("Ihr Gespräch ist beendet")
    await expect(citizen.locator("#final-view")).to_contain_text("Vielen Dank für Ihren Besuch")
    await expect(consult).to_be_hidden()
    assert await citizen.evaluate("() => !window.sprechstundeMedia")
    assert problems == []
