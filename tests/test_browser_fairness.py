"""Fairness in Chromium, where a citizen and a clerk see it (issue 12): the called citizen's time to answer counts
down on both pages (said at the call and once more near its end, not every second), "no-show" only after it,
the no-show citizen takes the old place back; and a transfer to a closed department is shown, warned about and
confirmed, and the citizen is told when it opens."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from playwright.async_api import Browser, expect

from server.rooms.departments import Closure
from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, check_in, launched, new_page, staff_login

pytestmark = pytest.mark.browser


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    # After live_server (and so after the servers of make_live_server): the browser closes its sockets first.
    async with launched(CHROMIUM_ARGS) as browser:
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()

SHORT = 4
"""The answer time of these tests, in seconds (the default is two minutes)."""


async def test_answer_time_no_show_and_rejoin(browser: Browser, make_live_server, problems: Problems) -> None:
    server = await make_live_server(answer_seconds=SHORT)
    await server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
    _, citizen = await new_page(browser, problems, server.url)
    await check_in(citizen, "Alex")
    await expect(citizen.locator("[data-field='position-number']")).to_have_text("1")
    _, other = await new_page(browser, problems, server.url)
    await check_in(other, "Bea")
    await expect(other.locator("[data-field='position-number']")).to_have_text("2")

    _, clerk = await new_page(browser, problems, server.url)
    await staff_login(clerk, "clara")
    panel = clerk.locator(".panel[data-department='buergerbuero']")
    await panel.get_by_role("button", name="Nächste Person aufrufen").click()
    called = panel.locator(".ticket--called")
    await expect(called).to_contain_text("Alex")
    # The clerk: a countdown on the ticket, "no-show" not yet possible; told once how long the citizen has.
    await expect(called.locator(".ticket__countdown")).to_contain_text(re.compile(r"Antwortzeit: noch 0:0\d"))
    no_show = called.get_by_role("button", name=re.compile("Nicht erschienen"))
    await expect(no_show).to_be_disabled()
    await expect(clerk.locator("#action-status")).to_contain_text(f"{SHORT} Sekunden Zeit")

    # The citizen: the call says how long there is to answer; the countdown is visible, not a live region.
    view = citizen.locator("#called-view")
    await expect(citizen.locator("#alert")).to_contain_text(f"Bitte treten Sie innerhalb von {SHORT} Sekunden ein.")
    await expect(citizen.locator("#answer-time")).to_contain_text(re.compile(r"Zeit zum Eintreten: noch 0:0\d"))
    assert await citizen.locator("#answer-time").get_attribute("aria-live") is None
    # Near the end a second alert, seen and spoken (no sound): the card turns to a warning.
    warning = citizen.locator("#answer-warning")
    await expect(warning).to_contain_text("Bitte treten Sie jetzt ein", timeout=15000)
    await expect(citizen.locator("#alert")).to_contain_text("Bitte treten Sie jetzt ein")
    await expect(view).to_have_class(re.compile("status-card--urgent"))
    await expect(citizen.locator("#answer-time")).to_contain_text("Die Zeit zum Eintreten ist um", timeout=15000)

    # Over: the clerk hears it once and may mark the no-show.
    await expect(no_show).to_be_enabled(timeout=15000)
    await expect(called.locator(".ticket__countdown")).to_have_text("Antwortzeit vorbei")
    await expect(clerk.locator("#action-status")).to_contain_text("„Nicht erschienen“ ist jetzt möglich")
    await no_show.click()
    await expect(panel.locator(".ticket--called")).to_have_count(0)

    # The citizen is not blamed and may take the old place back, ahead of Bea.
    rejoin = citizen.get_by_role("button", name="Wieder an meinem Platz einreihen")
    await expect(rejoin).to_be_focused()
    final = citizen.locator("[data-field='final']")
    await expect(final).to_contain_text("das Gespräch kam nicht zustande")
    await expect(final).to_contain_text(re.compile(r"Bis \d{1,2}:\d\d Uhr können Sie sich wieder an Ihrem alten Platz"))
    await expect(final).not_to_contain_text("nicht reagiert")
    await expect(other.locator("[data-field='position-number']")).to_have_text("1")
    await rejoin.click()
    await expect(citizen.locator("#notice")).to_have_text("Sie sind wieder an Ihrem alten Platz in der Warteschlange.")
    await expect(citizen.locator("[data-field='position-number']")).to_have_text("1")
    await expect(other.locator("[data-field='position-number']")).to_have_text("2")
    await expect(panel.locator(".ticket--waiting").first).to_contain_text("Alex")
    assert problems == []


async def test_transfer_to_a_closed_department(browser: Browser, live_server, problems: Problems) -> None:
    room = live_server.room
    await live_server.add_staff("clara", PASSWORD, ["buergerbuero"], "Clara Schulz")
    today = datetime.fromtimestamp(room.clock(), room.settings.tz).date()
    await room.directory.modify("bauamt", lambda d: dataclasses.replace(d, closures=(Closure(today, today, ""),)))

    _, citizen = await new_page(browser, problems, live_server.url)
    await check_in(citizen, "Alex")
    _, clerk = await new_page(browser, problems, live_server.url)
    await staff_login(clerk, "clara")
    panel = clerk.locator(".panel[data-department='buergerbuero']")
    await panel.get_by_role("button", name="Nächste Person aufrufen").click()
    await panel.locator(".ticket--called").get_by_role("button", name=re.compile("^Weiterleiten")).click()

    dialog = clerk.locator("#transfer-dialog")
    select = dialog.get_by_label("An welches Amt?")
    await expect(select.locator("option[value='bauamt']")).to_have_text("Bauamt – geschlossen, öffnet morgen um 0:00")
    await expect(select.locator("option[value='standesamt']")).to_contain_text("Standesamt – geschlossen")
    await select.select_option("bauamt")
    submit = dialog.get_by_role("button", name="Weiterleiten")
    await submit.click()
    # Warned, not transferred: the second press confirms.
    warning = dialog.locator("#transfer-warning")
    await expect(warning).to_have_text(re.compile("Bauamt ist gerade geschlossen .*Trotzdem weiterleiten?"))
    assert (await room.store.get_ticket(citizen.url.rsplit("/", 1)[1].split("#")[0])).department == "buergerbuero"
    await dialog.get_by_role("button", name="Trotzdem weiterleiten").click()
    await expect(dialog).to_be_hidden()

    # The citizen is told when it opens, and gets no estimate for a closed office.
    notice = citizen.locator("#notice")
    await expect(notice).to_contain_text("Sie wurden an Bauamt weitergeleitet.")
    await expect(notice).to_contain_text("Bauamt ist gerade geschlossen und öffnet morgen um 0:00")
    await expect(citizen.locator("[data-field='estimate']")).to_have_text("–")

    # (The check-in page's refusal for a shared connection says from when it is possible again.)
    said = await citizen.evaluate("""async () => {
      const { errorMessage } = await import('/static/js/common.js');
      return [errorMessage({ code: 'rate_limited', retryAfter: 600 }), errorMessage({ code: 'rate_limited' })];
    }""")
    assert re.fullmatch(r"Von diesem Anschluss .* Bitte versuchen Sie es ab \d{1,2}:\d\d Uhr wieder\.", said[0])
    assert said[1] == "Zu viele Versuche. Bitte warten Sie einige Minuten."
    assert problems == []
