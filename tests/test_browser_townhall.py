"""Real-browser test of a town-hall event: a question sent in advance, moderated, voted on, answered.

A moderator creates the event on /staff/townhall; a citizen sends a question on the event page and its
link says "wartet auf Prüfung"; the moderator approves it on the moderation page; it appears live on the
citizen's page and on a second audience member's, who votes: "1 Stimme" on both pages without a reload;
the politician's presenter view lists it next and, once the moderator starts the event and marks it
"Wird beantwortet", shows it in large type. Every wait is on a condition.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from server.http.keys import AUTH
from server.i18n import DE, EN
from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, launched, new_page, staff_login

pytestmark = pytest.mark.browser

SCREENSHOTS = os.environ.get("SCREENSHOTS")  # a directory: keep pictures of the pages for a human to look at
WEB = Path(__file__).resolve().parents[1] / "web"
QUESTION = "Wann wird der Radweg an der Hauptstraße endlich saniert?"


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(CHROMIUM_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


@pytest.fixture
def problems() -> Problems:
    return Problems()


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


async def logged_in(page: Page, username: str) -> None:
    await staff_login(page, username)
    await expect(page.locator("#dashboard-view")).to_be_visible()


# A datetime-local value `hours` from now in the browser's own time zone (what a moderator types).
LOCAL_INPUT = """(hours) => { const d = new Date(Date.now() + hours * 3600e3);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`; }"""


async def test_question_from_advance_to_answer(browser: Browser, live_server, problems: Problems) -> None:
    auth = live_server.app[AUTH]
    await auth.add_staff("mona", "Mona Moderation", PASSWORD, [], roles=["moderator"])
    await auth.add_staff("paula", "Paula Politik", PASSWORD, [], roles=["clerk"])

    # The moderator creates an event with questions in advance.
    _, moderator = await new_page(browser, problems, live_server.url)
    await logged_in(moderator, "mona")
    await moderator.goto("/staff/townhall")
    await moderator.get_by_label("Titel", exact=True).fill("Bürgerdialog Verkehr")
    await moderator.get_by_label("Beschreibung").fill("Ihre Fragen zu Radwegen und Bussen.")
    await moderator.get_by_label("Politikerinnen und Politiker").fill("paula")
    await moderator.get_by_label("Beginn", exact=True).fill(await moderator.evaluate(LOCAL_INPUT, 2))
    await moderator.get_by_label("Ende", exact=True).fill(await moderator.evaluate(LOCAL_INPUT, 3))
    await expect(moderator.get_by_label("Fragen vorab erlauben")).to_be_checked()
    await screenshot(moderator, "th-staff-form")
    await moderator.get_by_role("button", name="Veranstaltung anlegen").click()
    await expect(moderator.get_by_role("status").filter(has_text="wurde angelegt")).to_be_visible()
    card = moderator.locator("#events li").filter(has_text="Bürgerdialog Verkehr")
    event_url = await card.get_by_role("link", name="Veranstaltungsseite").get_attribute("href")
    assert event_url and re.fullmatch(r"/townhall/[A-Za-z0-9_-]+", event_url)
    await screenshot(moderator, "th-staff-list")

    # The public list shows it; a citizen sends a question in advance and keeps its link.
    _, citizen = await new_page(browser, problems, live_server.url)
    await citizen.goto("/townhall")
    await citizen.get_by_role("link", name="Bürgerdialog Verkehr").click()
    await expect(citizen).to_have_url(re.compile(re.escape(event_url) + "$"))
    await expect(citizen.get_by_role("heading", name="Bürgerdialog Verkehr", level=1)).to_be_visible()
    await citizen.get_by_label("Frage", exact=True).fill(QUESTION)
    await citizen.get_by_role("button", name="Frage senden").click()
    sent = citizen.locator("#ask-done")
    await expect(sent).to_be_focused()
    await expect(sent).to_contain_text("Bewahren Sie diesen Link auf")
    link = sent.get_by_role("link", name=re.compile(r"townhall.questions."))
    question_url = await link.get_attribute("href")
    assert question_url and re.fullmatch(r"/townhall/questions/[A-Za-z0-9_-]+", question_url)
    kept = await citizen.evaluate("() => JSON.parse(localStorage.getItem('sps_th_questions'))")
    assert [q["link"] for q in kept] == [question_url]
    await screenshot(citizen, "th-event-sent")
    await link.click()
    await expect(citizen.get_by_role("status")).to_contain_text("wartet auf Prüfung")
    await expect(citizen.locator("#question-text")).to_have_text(QUESTION)
    await screenshot(citizen, "th-question-waiting")
    await citizen.get_by_role("link", name="Zur Veranstaltung: Bürgerdialog Verkehr").click()
    await expect(citizen.locator("#mine")).to_contain_text("Radweg")  # the page remembers its questions
    await expect(citizen.locator("#questions")).to_contain_text("Noch keine veröffentlichten Fragen.")

    # The moderator approves it; it appears live on the citizen's page.
    await moderator.goto(f"{event_url}/moderate")
    item = moderator.locator("#moderation li").filter(has_text="wartet auf Prüfung")
    await expect(item.get_by_label("Text (vor dem Freigeben bearbeitbar)")).to_have_value(QUESTION)
    await expect(moderator.locator("#pending-count")).to_have_text("1 Frage wartet auf Prüfung.")
    await screenshot(moderator, "th-moderate-pending")
    await item.get_by_role("button", name="Freigeben").click()
    published = moderator.locator("#moderation li").filter(has_text="veröffentlicht")
    await expect(published.get_by_role("button", name="Als Nächstes")).to_be_visible()
    citizen_question = citizen.locator("#questions li").filter(has_text=QUESTION)
    await expect(citizen_question).to_be_visible()

    # A second audience member sees it and votes; both pages count the vote without a reload.
    _, audience = await new_page(browser, problems, live_server.url)
    await audience.goto(event_url)
    audience_question = audience.locator("#questions li").filter(has_text=QUESTION)
    vote = audience_question.get_by_role("button", name="Unterstützen")
    await expect(vote).to_have_attribute("aria-pressed", "false")
    await vote.click()
    await expect(vote).to_have_attribute("aria-pressed", "true")
    for page in (audience, citizen):
        await expect(page.locator("#questions li").filter(has_text=QUESTION).locator(".th-q__votes")).to_have_text(
            "1 Stimme")
    await expect(citizen_question.get_by_role("button", name="Unterstützen")).to_have_attribute("aria-pressed", "false")
    await expect(published).to_contain_text("1 Stimme")  # and the moderators' list
    await screenshot(audience, "th-event-voted")

    # The politician's presenter view lists it next; the moderator starts the event and marks it.
    _, politician = await new_page(browser, problems, live_server.url)
    await logged_in(politician, "paula")
    await politician.goto(f"{event_url}/presenter")
    await expect(politician.locator("#next")).to_contain_text(QUESTION)
    await expect(politician.locator("#now")).to_contain_text("Gerade wird keine Frage beantwortet.")
    await moderator.get_by_role("button", name="Veranstaltung starten").click()
    await expect(moderator.locator("#event-state")).to_have_text("läuft gerade")
    await published.get_by_role("button", name="Wird beantwortet").click()
    await expect(politician.locator("#now")).to_contain_text(QUESTION)
    await expect(politician.locator("#next")).to_contain_text("Keine weiteren Fragen.")
    await expect(citizen.locator("#now-answering")).to_contain_text(QUESTION)  # highlighted for the audience
    await expect(citizen.locator("#live-section")).to_be_visible()
    await expect(citizen.get_by_role("button", name="Hand heben")).to_have_attribute("aria-pressed", "false")
    await screenshot(politician, "th-presenter")
    await screenshot(citizen, "th-event-live")
    await screenshot(moderator, "th-moderate-live")

    # A raised hand is invited on stage: the dialog takes the focus, Escape is no answer; accepting shows
    # the guest to the moderators, who end it.
    hand = audience.get_by_role("button", name="Hand heben")
    await hand.click()
    await expect(hand).to_have_attribute("aria-pressed", "true")
    raised = moderator.locator("#hands li").filter(has_text="Meldung 1")
    await raised.get_by_role("button", name="Auf die Bühne einladen").click()
    dialog = audience.get_by_role("dialog", name="Sie wurden auf die Bühne eingeladen")
    await expect(dialog.get_by_role("heading", name="Sie wurden auf die Bühne eingeladen")).to_be_focused()
    await audience.keyboard.press("Escape")
    await expect(dialog).to_be_visible()
    await screenshot(audience, "th-invited")
    await dialog.get_by_role("button", name="Auf die Bühne").click()
    await expect(dialog).to_be_hidden()
    await expect(audience.locator("#stage-box")).to_contain_text("Sie sind auf der Bühne")
    guest = moderator.locator("#stage li").filter(has_text="Gast 1: auf der Bühne")
    await guest.get_by_role("button", name="Bühne beenden").click()
    await expect(audience.locator("#stage-box")).to_be_hidden()
    await expect(audience.get_by_role("status").filter(has_text="Ihre Zeit auf der Bühne ist beendet")).to_have_count(1)
    await expect(hand).to_have_attribute("aria-pressed", "false")
    await expect(moderator.locator("#stage")).to_contain_text("Niemand aus dem Publikum ist auf der Bühne.")

    # English on request.
    await audience.goto(f"{event_url}?lang=en")
    await expect(audience.get_by_role("heading", name="Questions from the audience")).to_be_visible()
    await expect(audience.locator("#questions li").filter(has_text=QUESTION)).to_contain_text("being answered now")

    # The author's link follows.
    await citizen.goto(question_url)
    await expect(citizen.get_by_role("status")).to_contain_text("wird gerade beantwortet")
    assert problems == []


def test_town_hall_messages_exist_in_both_languages() -> None:
    """Every message id the town-hall templates and scripts use exists in German and English."""
    assert set(DE) == set(EN)
    used: set[str] = set()
    for path in (WEB / "templates").glob("townhall_*.html"):
        used |= set(re.findall(r"""_\(["']([\w.]+)["']""", path.read_text("utf-8")))
    for path in (WEB / "static" / "js").glob("townhall*.js"):
        used |= {f"js.{m}" for m in re.findall(r"""\btn?\(\s*['`]([\w.]+)['`]""", path.read_text("utf-8"))}
    prefixes = {m for m in used if m.endswith(".")}  # `_("js.th.state." ~ event.state)`
    plural = {m for m in used if f"{m}.one" in DE}
    assert sorted(m for m in used - plural - prefixes if m not in DE) == []
    assert all(any(k.startswith(p) for k in DE) for p in prefixes)
    assert len(used) > 50  # the patterns found the ids
