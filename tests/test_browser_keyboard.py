"""The citizen's way from the landing page to the call with the keyboard alone (Tab, Shift+Tab, Enter, Space;
no clicks), checking after each step where the focus is and what the live regions say.

The clerk's call comes through the waiting room (the command the dashboard sends); what is tested is the
citizen's page.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from server.i18n import gettext
from server.queue.model import Clerk, Presence
from tests.axe import assert_accessible
from tests.test_browser import Problems, launched
from tests.test_browser_media import MEDIA_ARGS

pytestmark = pytest.mark.browser

CLARA = Clerk("clara", "Clara Schulz", frozenset({"buergerbuero"}))
_ = gettext("de")
MAX_TABS = 30

FOCUSED = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return 'body';
  const name = (e.getAttribute('aria-label') || e.textContent || e.value || '').trim().replace(/\\s+/g, ' ');
  return `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${name.slice(0, 40)}"`;
}"""


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    # After live_server, so that the browser closes its sockets first (as in test_browser).
    async with launched(MEDIA_ARGS) as browser:
        yield browser


async def focused(page: Page) -> str:
    return str(await page.evaluate(FOCUSED))


async def tab_to(page: Page, selector: str, key: str = "Tab") -> list[str]:
    """Press Tab (or Shift+Tab) until ``selector`` has the focus; returns the stops on the way (for messages)."""
    target = page.locator(selector)
    stops: list[str] = []
    for _ in range(MAX_TABS):
        await page.keyboard.press(key)
        stops.append(await focused(page))
        if await target.evaluate("(e) => e === document.activeElement"):
            return stops
    raise AssertionError(f"{selector} never got the focus with {key}; stops: {stops}")


async def test_keyboard_only_from_landing_page_to_the_call(browser: Browser, live_server) -> None:
    problems = Problems()
    context = await browser.new_context(base_url=live_server.url, locale="de-DE",
                                        permissions=["camera", "microphone"])
    page = problems.watch(await context.new_page())
    await live_server.room.set_presence(CLARA, Presence.AVAILABLE)

    # Landing page: the first Tab reaches the skip link; Enter moves the focus to the main content.
    await page.goto("/")
    await page.keyboard.press("Tab")
    await expect(page.locator(".skip-link")).to_be_focused()
    await expect(page.locator(".skip-link")).to_be_in_viewport()
    await page.keyboard.press("Enter")
    await expect(page.locator("#main")).to_be_focused()
    stops = await tab_to(page, "[data-department='buergerbuero'] [data-field='join']")
    assert len(stops) <= 3, stops  # the Leichte-Sprache link, then the first department's button
    await page.keyboard.press("Enter")

    # The check-in form, field by field.
    await expect(page).to_have_url(re.compile(r"/join/buergerbuero$"))
    await tab_to(page, "#name")
    await page.keyboard.type("Kim")
    await page.keyboard.press("Tab")
    await expect(page.locator("#concern")).to_be_focused()
    await page.keyboard.type("Personalausweis beantragen")
    await page.keyboard.press("Tab")
    await expect(page.locator("#language")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.locator("#interpreter")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.locator("#consent")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.locator("#consent-link")).to_be_focused()
    await page.keyboard.press("Tab")
    submit = page.get_by_role("button", name=_("join.submit"))
    await expect(submit).to_be_focused()

    # Sent without consent: the error is announced and the focus goes to the field to fix.
    await page.keyboard.press("Enter")
    await expect(page.locator("#form-error")).to_be_visible()
    await expect(page.locator("#form-error")).to_have_attribute("role", "alert")
    await expect(page.locator("#consent")).to_be_focused()
    await expect(page.locator("#consent")).to_have_attribute("aria-invalid", "true")
    await page.keyboard.press("Space")
    await expect(page.locator("#consent")).to_be_checked()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await expect(submit).to_be_focused()
    await page.keyboard.press("Shift+Tab")  # back once, and forward again
    await expect(page.locator("#consent-link")).to_be_focused()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")

    # The waiting page: the focus is on its heading, the position is in a polite live region.
    await expect(page).to_have_url(re.compile(r"/wait/[A-Za-z0-9_-]+#.+"))
    heading = page.locator("#wait-heading")
    await expect(page.locator("[data-field='position-number']")).to_have_text("1")
    await expect(heading).to_be_focused()
    live = page.locator("#position-text")
    await expect(live).to_have_attribute("aria-live", "polite")
    await expect(live).to_contain_text("1")

    # The leave dialog from the keyboard: its safe answer has the focus; Enter on it keeps the place and the
    # focus returns to the button that opened it.
    leave = page.get_by_role("button", name=_("wait.leave"))
    await tab_to(page, "#leave")
    await page.keyboard.press("Enter")
    dialog = page.locator("#leave-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("button", name=_("wait.leave_no"))).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(leave).to_be_focused()

    # Back up to the heading's neighbourhood with Shift+Tab: the page's controls are all reachable backwards.
    await tab_to(page, "#check-start", key="Shift+Tab")

    # The clerk calls: the call is announced at once (role=alert) and the focus is on "Jetzt eintreten".
    ticket_id = page.url.rsplit("/", 1)[1].split("#", 1)[0]
    await live_server.room.call(CLARA, ticket_id)
    alert = page.locator("#alert")
    await expect(alert).to_have_attribute("role", "alert")
    await expect(alert).to_contain_text(_("js.called_title"))
    await expect(alert).to_contain_text(_("js.called_by", clerk="Clara Schulz"))
    answer = page.get_by_role("button", name=_("wait.join_now"))
    await expect(answer).to_be_focused()
    await expect(page).to_have_title(_("js.document_called"))
    await assert_accessible(page, "called, reached with the keyboard")

    # Enter answers: the consultation's heading takes the focus.
    await page.keyboard.press("Enter")
    await expect(page.locator("#consultation-heading")).to_be_focused()
    await expect(page.locator("#consultation-heading")).to_have_text(
        _("js.in_consultation", clerk="Clara Schulz"))
    assert problems == []
