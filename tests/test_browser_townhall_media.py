"""Real-browser test of a town hall's video: the stage live, a guest on it, the published recording.

Chromium's fake camera and microphone through our SFU (as in test_browser_media). The politician turns
the camera on in the presenter view; three audience pages play it (inbound ``framesDecoded`` rising on
each); a raised hand is invited, checks camera and microphone, comes on stage, and another audience page
plays the guest's tile; a question is answered meanwhile, so the recording gets a chapter. The moderator
ends the event and publishes the composed recording; the audience page shows the player without a
reload, its chapter menu lists the question and seeks the player; the author's question link jumps to
the answer. Every wait is on a condition.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from server.http.keys import AUTH, TOWNHALL
from tests.test_browser import PASSWORD, Problems, launched, staff_login
from tests.test_browser_media import MEDIA_ARGS, MEDIA_TIMEOUT_MS, frames_rising, media_page

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(os.environ.get("SCREENSHOTS", "/tmp/townhall-media"))
QUESTION = "Wie geht es mit dem Freibad weiter?"
PUBLISH_TIMEOUT_S = 90.0  # composition runs in a niced ffmpeg process; a loaded CI machine is slow

# Synchronous, as FRAMES_ABOVE in test_browser_media: frames decoded for the video mid of one tile.
TILE_FRAMES_ABOVE = """([selector, above]) => {
  const pc = window.sprechstundeMedia && window.sprechstundeMedia.pc;
  const tile = document.querySelector(selector);
  if (!pc || !tile || !tile.dataset.videoMid) return false;
  const mid = tile.dataset.videoMid;
  window.spsTile = window.spsTile || {};
  if (!window.spsTile.pending) {
    window.spsTile.pending = true;
    pc.getStats().then((report) => {
      let frames = 0;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.mid === mid) frames = s.framesDecoded || 0;
      });
      window.spsTile[selector] = frames;
    }).finally(() => { window.spsTile.pending = false; });
  }
  return (window.spsTile[selector] || 0) > above;
}"""


# The published player has its metadata and stands (within a second) at ``arg``, not seeking.
PLAYER_AT = """(at) => { const v = document.getElementById('recording-player');
  return v.readyState >= 1 && !v.seeking && Math.abs(v.currentTime - at) < 1; }"""

# After "Aufzeichnung veröffentlichen": published, or the clear "not ready yet" while it is being composed.
PUBLISH_OUTCOME = """() => {
  if (!document.getElementById('recording-box').hidden) return 'published';
  const error = document.getElementById('action-error');
  return !error.hidden && error.textContent.includes('noch nicht fertig') ? 'not ready' : false;
}"""


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(MEDIA_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()


async def screenshot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def logged_in(page: Page, username: str) -> None:
    await staff_login(page, username)
    await expect(page.locator("#dashboard-view")).to_be_visible()


async def tile_frames_rising(page: Page, selector: str, frames: int = 5) -> None:
    """The tile's own video (by its mid) decodes frames, and then ``frames`` more: it plays."""
    await page.wait_for_function(TILE_FRAMES_ABOVE, arg=[selector, 0], polling=100, timeout=MEDIA_TIMEOUT_MS)
    seen = await page.evaluate("(selector) => window.spsTile[selector]", selector)
    await page.wait_for_function(TILE_FRAMES_ABOVE, arg=[selector, seen + frames], polling=100,
                                 timeout=MEDIA_TIMEOUT_MS)


async def test_stage_guest_and_published_recording(browser: Browser, live_server, problems: Problems) -> None:
    auth = live_server.app[AUTH]
    service = live_server.app[TOWNHALL]
    mona = auth.clerk_from_account(await auth.add_staff("mona", "Mona Moderation", PASSWORD, [], ["moderator"]))
    await auth.add_staff("paul", "Paul Politik", PASSWORD, [], ["clerk"])
    now = time.time()
    event = await service.create(mona, {
        "title": "Bürgerdialog Freibad", "politicians": ["paul"], "starts_at": now + 3600, "ends_at": now + 7200,
        "advance_questions": True, "recorded": True, "recording_purpose": "Veröffentlichung auf der Website",
        "retention_days": 30})
    _, author = await service.join(event.id, None)
    question = await service.ask(author, QUESTION, "", "192.0.2.7")
    await service.moderate(mona, event.id, "approve", {"question": question.id})
    await service.start(mona, event.id)
    event_url = f"/townhall/{event.id}"

    # The politician turns the camera on in the presenter view; three audience pages watch.
    _, politician = await media_page(browser, problems, live_server.url)
    await logged_in(politician, "paul")
    await politician.goto(f"{event_url}/presenter")
    await politician.get_by_role("button", name="Kamera und Mikrofon einschalten").click()
    await expect(politician.locator("#video-status")).to_have_text("Sie sind auf Sendung: Alle sehen und hören Sie.")
    await expect(politician.get_by_role("button", name="Kamera und Mikrofon ausschalten")).to_be_visible()

    audience = []
    for _ in range(3):
        _, page = await media_page(browser, problems, live_server.url)
        await page.goto(event_url)
        audience.append(page)
    for page in audience:
        main = page.locator("#stage-video .th-tile--main")
        await expect(main.locator(".tile__name")).to_have_text("Paul Politik")
        await expect(main).to_have_attribute("data-role", "politician")
        await frames_rising(page)
    await expect(audience[0].locator("#stage-video")).not_to_contain_text("nur Ton")
    await screenshot(audience[2], "th-live-politician")

    # The moderator marks the question being answered (a chapter of the recording starts).
    _, moderator = await media_page(browser, problems, live_server.url)
    await logged_in(moderator, "mona")
    await moderator.goto(f"{event_url}/moderate")
    item = moderator.locator("#moderation li").filter(has_text=QUESTION)
    await item.get_by_role("button", name="Wird beantwortet").click()
    await expect(audience[0].locator("#now-answering")).to_contain_text(QUESTION)

    # A raised hand is invited; the guest checks camera and microphone and comes on stage.
    guest, other = audience[0], audience[1]
    await guest.get_by_role("button", name="Hand heben").click()
    await moderator.locator("#hands li").filter(has_text="Meldung 1").get_by_role(
        "button", name="Auf die Bühne einladen").click()
    dialog = guest.get_by_role("dialog", name="Sie wurden auf die Bühne eingeladen")
    await dialog.get_by_label("Ich bin einverstanden, dass die veröffentlichte Aufzeichnung mich zeigt.").check()
    await dialog.get_by_role("button", name="Auf die Bühne").click()
    await expect(dialog).to_be_hidden()
    await expect(guest.locator("#stage-box")).to_contain_text("Sie sind auf der Bühne")
    await guest.wait_for_function("() => window.sprechstundeMedia && window.sprechstundeMedia.mode === 'publisher'")
    await expect(guest.locator("#stage-video .th-tile--self")).to_be_visible()  # own picture while on stage

    guest_tile = "#stage-video .th-tile[data-role='guest']"
    await expect(other.locator(guest_tile).locator(".tile__name")).to_have_text("Gast")
    await expect(other.locator("#stage-video .th-tile--main")).to_have_attribute("data-role", "politician")
    await tile_frames_rising(other, guest_tile)
    await expect(politician.locator(guest_tile)).to_be_visible()  # the politician sees the guest too
    await tile_frames_rising(politician, guest_tile)
    await screenshot(other, "th-live-guest")
    await screenshot(politician, "th-presenter-guest")

    # The guest leaves: camera off, back to watching.
    await guest.get_by_role("button", name="Bühne verlassen").click()
    await expect(guest.locator("#stage-box")).to_be_hidden()
    await guest.wait_for_function("() => window.sprechstundeMedia && window.sprechstundeMedia.mode === 'viewer'")
    await expect(other.locator(guest_tile)).to_have_count(0)
    await expect(guest.locator("#stage-video .th-tile--self")).to_have_count(0)

    await item.get_by_role("button", name="Beantwortet").click()
    await expect(audience[0].locator("#now-answering")).to_be_empty()

    # The moderator ends the event; the stage closes everywhere; publishing waits for the composition.
    moderator.on("dialog", lambda d: d.accept())
    await moderator.get_by_role("button", name="Veranstaltung beenden").click()
    await expect(moderator.locator("#event-state")).to_have_text("beendet")
    await expect(politician.get_by_role("button", name="Kamera und Mikrofon ausschalten")).to_be_hidden()
    for page in audience:
        await page.wait_for_function("() => !window.sprechstundeMedia.pc")
    publish = moderator.get_by_role("button", name="Aufzeichnung veröffentlichen")
    done = moderator.locator("#recording-published")
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while True:
        await publish.click()
        outcome = await (await moderator.wait_for_function(PUBLISH_OUTCOME)).json_value()
        if outcome == "published":
            break
        assert time.monotonic() < deadline, "the recording was not composed in time"
        await moderator.wait_for_timeout(500)  # composition sends no event: ask again
    await expect(done).to_have_text("Die Aufzeichnung ist auf der Veranstaltungsseite veröffentlicht.")
    await expect(publish).to_be_hidden()
    await screenshot(moderator, "th-moderate-published")

    # The audience page shows the player without a reload; the chapter menu seeks it.
    player = other.locator("#recording-player")
    await expect(player).to_be_visible()
    chapters = other.locator("#chapters")
    await expect(chapters.get_by_role("button")).to_have_count(3)  # Begrüßung, the answer, "…" after it
    await expect(chapters.get_by_role("button").first).to_contain_text("0:00")
    await expect(chapters.get_by_role("button").first).to_contain_text("Begrüßung")
    answer = chapters.get_by_role("button", name=re.compile(re.escape(QUESTION)))
    start = float(await answer.get_attribute("data-start") or "nan")
    assert start > 0
    await other.wait_for_function("() => document.getElementById('recording-player').readyState >= 1")
    await answer.click()
    await other.wait_for_function(PLAYER_AT, arg=start, timeout=MEDIA_TIMEOUT_MS)
    await expect(answer).to_have_attribute("aria-current", "true")
    await screenshot(other, "th-published")

    # The author's question link jumps to the answer in the recording.
    viewer = audience[2]
    await viewer.goto(f"/townhall/questions/{question.id}")
    await viewer.get_by_role("link", name="Zur Antwort in der Aufzeichnung").click()
    await expect(viewer).to_have_url(re.compile(re.escape(event_url) + r"\?t=[0-9.]+#recording$"))
    at = float(re.search(r"t=([0-9.]+)", viewer.url).group(1))  # type: ignore[union-attr]
    assert abs(at - start) < 1.0
    await viewer.wait_for_function(PLAYER_AT, arg=at, timeout=MEDIA_TIMEOUT_MS)
    assert problems == []
