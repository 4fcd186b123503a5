"""Real-browser tests: what a citizen and a clerk do, in Debian's Chromium driven by Playwright.

Few and meaningful (each a few seconds): they catch what no API test can, such as a script that
fails under the Content-Security-Policy, a live region that never updates, or a socket that does not
reconnect after a reload. They wait on conditions, never on time.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from server.queue.estimate import estimate_wait
from server.queue.model import JoinRequest, TicketState

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    # Pages follow Accept-Language: the tests read German unless a context asks for another locale.
    "--accept-lang=de-DE",
]
PASSWORD = "correct horse battery"


@contextlib.asynccontextmanager
async def launched(args: list[str]) -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright (no browser download). Missing: a failure in CI, else a skip."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: run `make chromium`")
        pytest.skip(f"{CHROMIUM} is missing: run `make chromium`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    # Depends on live_server so that the browser (and its sockets) goes first at teardown: a server
    # stopping under open sockets waits out aiohttp's shutdown timeout.
    async with launched(CHROMIUM_ARGS) as browser:
        yield browser


class Problems(list[str]):
    """Script errors and Content-Security-Policy violations seen by the pages of a test."""

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.append(f"{page.url}: {error}"))
        page.on(
            "console",
            lambda message: self.append(f"{page.url}: {message.text}")
            if message.type == "error" and "Content Security Policy" in message.text
            else None,
        )
        return page


@pytest.fixture
def problems() -> Problems:
    return Problems()


async def new_page(browser: Browser, problems: Problems, base_url: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(base_url=base_url, locale="de-DE")
    return context, problems.watch(await context.new_page())


async def staff_login(page: Page, username: str, password: str = PASSWORD) -> None:
    """Log in on /staff the way a clerk does."""
    await page.goto("/staff")
    await page.get_by_label("Benutzername").fill(username)
    await page.get_by_label("Passwort").fill(password)
    await page.get_by_role("button", name="Anmelden").click()


async def check_in(page: Page, name: str, department: str = "buergerbuero") -> None:
    """Fill the check-in form the way a person does and land on the waiting page."""
    await page.goto(f"/join/{department}")
    await page.get_by_label("Name oder Pseudonym").fill(name)
    await page.get_by_label("Ihr Anliegen in Stichworten").fill("Reisepass verlängern")
    await page.get_by_label("Ich habe den Datenschutzhinweis gelesen").check()
    await page.get_by_role("button", name="Jetzt anstellen").click()
    await expect(page).to_have_url(re.compile(r"/wait/[A-Za-z0-9_-]+#.+"))


async def test_clerk_calls_citizen(browser: Browser, live_server, problems: Problems) -> None:
    """A citizen checks in and waits at position 1; a clerk logs in and calls next; the citizen's page
    shows the call with the clerk's name and the citizen joins."""
    await live_server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
    _, citizen = await new_page(browser, problems, live_server.url)
    await check_in(citizen, "Alex")
    await expect(citizen.locator("[data-field='position-number']")).to_have_text("1")
    await expect(citizen.locator("#position-text")).to_contain_text("Position 1")

    _, clerk = await new_page(browser, problems, live_server.url)
    await staff_login(clerk, "clara")
    panel = clerk.locator(".panel[data-department='buergerbuero']")
    await expect(panel.locator(".ticket--waiting")).to_contain_text("Alex")
    await panel.get_by_role("button", name="Nächste Person aufrufen").click()
    await expect(panel.locator(".ticket--called")).to_contain_text("Von Ihnen aufgerufen")

    called = citizen.locator("#called-view")
    await expect(called).to_be_visible()
    await expect(called).to_contain_text("Clara Schulz ruft Sie auf.")
    await expect(citizen).to_have_title(re.compile("Sie sind dran"))
    await called.get_by_role("button", name="Jetzt eintreten").click()
    await expect(citizen.locator("#consultation-view")).to_contain_text("Clara Schulz")
    await expect(panel.locator(".ticket--in_consultation")).to_contain_text("Alex")
    assert problems == []


async def test_dashboard_marks_a_citizen_whose_page_is_gone(browser: Browser, live_server,
                                                             problems: Problems) -> None:
    """The clerk sees that a waiting citizen's page has gone (closed tab, lost network) and that it came
    back: the coalesced ``connectivity`` message updates the waiting list."""
    await live_server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
    citizen_context, citizen = await new_page(browser, problems, live_server.url)
    await check_in(citizen, "Alex")
    await expect(citizen.locator("[data-field='position-number']")).to_have_text("1")
    url = citizen.url

    _, clerk = await new_page(browser, problems, live_server.url)
    await staff_login(clerk, "clara")
    waiting = clerk.locator(".panel[data-department='buergerbuero'] .ticket--waiting")
    await expect(waiting).to_contain_text("Alex")
    await expect(waiting).not_to_contain_text("Verbindung unterbrochen")

    await citizen.close()
    await expect(waiting).to_contain_text("Verbindung unterbrochen")
    again = problems.watch(await citizen_context.new_page())
    await again.goto(url)
    await expect(again.locator("[data-field='position-number']")).to_have_text("1")
    await expect(waiting).not_to_contain_text("Verbindung unterbrochen")
    # a check-in whose page never opened says so (it expires after the grace period unless it does)
    await live_server.room.join("buergerbuero", JoinRequest(name="Bea", consent=True), "192.0.2.7")
    bea = clerk.locator(".panel[data-department='buergerbuero'] .ticket--waiting", has_text="Bea")
    await expect(bea).to_contain_text("Seite noch nicht geöffnet")
    await expect(bea).not_to_contain_text("Verbindung unterbrochen")
    assert problems == []


async def test_reload_keeps_ticket_and_position(browser: Browser, live_server, problems: Problems) -> None:
    """A reload (with the fragment) and a visit without it (localStorage) show the same ticket and place."""
    await live_server.room.join("buergerbuero", JoinRequest(name="First", consent=True), "192.0.2.1")
    _, page = await new_page(browser, problems, live_server.url)
    await check_in(page, "Second")
    url = page.url
    position = page.locator("[data-field='position-number']")
    number = page.locator("[data-field='number']")
    await expect(position).to_have_text("2")
    seq = await number.text_content()

    await page.reload()
    await expect(position).to_have_text("2")
    await expect(number).to_have_text(seq or "")
    assert page.url == url

    await page.goto(url.split("#", 1)[0])  # no fragment: the token comes from localStorage
    await expect(position).to_have_text("2")
    await expect(number).to_have_text(seq or "")

    await page.goto("/")  # one place at a time: the start page leads back instead of to a second check-in
    back = page.get_by_role("link", name="Zurück zu Ihrem Platz")
    await expect(back).to_be_visible()
    await expect(page.locator("#already")).to_contain_text("Bürgerbüro")
    await expect(page.locator("[data-field='join']:visible")).to_have_count(0)
    await back.click()
    await expect(position).to_have_text("2")

    ticket_id = url.rsplit("/", 1)[1].split("#", 1)[0]
    ticket = await live_server.room.store.get_ticket(ticket_id)
    assert ticket is not None and ticket.state is TicketState.WAITING
    assert problems == []


async def test_keyboard_check_in_and_live_region(browser: Browser, live_server, problems: Problems) -> None:
    """The form works from the keyboard alone, and the waiting page announces the position in a polite
    live region. The estimate in the page matches the server's formula."""
    _, page = await new_page(browser, problems, live_server.url)
    await page.goto("/join/buergerbuero?lang=en")
    await page.get_by_label("Name or pseudonym").focus()
    await page.keyboard.type("Kim")
    await page.get_by_label("I have read the privacy notice").focus()
    await page.keyboard.press("Space")
    await expect(page.get_by_label("I have read the privacy notice")).to_be_checked()
    await page.get_by_label("Name or pseudonym").focus()
    await page.keyboard.press("Enter")  # submits the form
    await expect(page).to_have_url(re.compile(r"/wait/"))

    live = page.locator("[aria-live='polite']", has_text="number 1")
    await expect(live).to_have_count(1)
    await expect(live).to_have_attribute("aria-atomic", "true")
    await expect(page.get_by_role("button", name="Leave the queue")).to_be_visible()

    table = [(p, k, s) for p in (0, 1, 2, 3, 7, 20, 60) for k in (0, 1, 2, 3) for s in (120, 480, 600, 1333)]
    in_page = await page.evaluate(
        """async (table) => {
            const { estimateWait } = await import('/static/js/estimate.js');
            return table.map(([p, k, s]) => estimateWait(p, k, s));
        }""",
        table,
    )
    assert in_page == [list(e) if e else None for e in (estimate_wait(p, k, s) for p, k, s in table)]
    assert problems == []
