"""Real-browser test of /admin: a lead changes a department's opening hours and the landing page shows
them; the page passes axe-core's WCAG 2.1 A/AA rules (before and with the edit form open) and runs under
the strict Content-Security-Policy without script errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from server.appointments.model import AppointmentConfig
from server.http.keys import AUTH, ROOM
from tests.axe import assert_accessible, axe_violations
from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, launched, new_page, staff_login

pytestmark = pytest.mark.browser

@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(CHROMIUM_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


async def test_a_lead_changes_opening_hours_and_the_landing_page_shows_them(browser: Browser, live_server) -> None:
    await live_server.app[AUTH].add_staff("lena", "Lena Leitung", PASSWORD, ["buergerbuero"], ["clerk", "lead"])
    problems = Problems()
    _, page = await new_page(browser, problems, live_server.url)
    await staff_login(page, "lena")
    await expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
    await page.goto("/admin")
    card = page.locator(".admin-dept[data-department='buergerbuero']")
    await expect(card).to_contain_text("Bürgerbüro")
    assert await page.locator(".admin-dept").count() == 1  # a lead sees only the departments they lead
    assert await axe_violations(page) == []

    await card.get_by_role("button", name="Bearbeiten: Bürgerbüro").click()
    await expect(page.get_by_role("heading", name="Bürgerbüro bearbeiten")).to_be_focused()
    assert await axe_violations(page) == []
    opening = page.locator("#hours-days")  # the appointments fieldset has weekday fields too
    await opening.get_by_label("Montag").fill("9-11")  # not a time: said at once, nothing sent
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.get_by_role("alert").filter(has_text="08:00-12:00")).to_contain_text("Montag")
    await expect(opening.get_by_label("Montag")).to_have_attribute("aria-invalid", "true")
    await opening.get_by_label("Montag").fill("09:00-11:30, 13:00-15:00")
    await opening.get_by_label("Dienstag").fill("")
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.locator("#admin-status")).to_have_text("Bürgerbüro wurde gespeichert.")
    await expect(card.locator("[data-field='hours']")).to_contain_text("Mo 09:00-11:30, 13:00-15:00")

    # Appointments: the department's AppointmentConfig, edited in its own fieldset and sent in the PATCH.
    await card.get_by_role("button", name="Bearbeiten: Bürgerbüro").click()
    appointments = page.get_by_role("group", name="Termine", exact=True)
    await appointments.get_by_label("Termine zum Buchen anbieten").check()
    await assert_accessible(page, "/admin with the appointments fieldset open")
    await appointments.locator("#appt-settings").get_by_label("Mittwoch").fill("09:00-12:00, 14:00-15:00")
    await appointments.get_by_label("Länge eines Termins (Minuten)").fill("1")  # refused by the server, named
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.locator("#edit-error")).to_contain_text("slot_minutes")
    await expect(appointments.get_by_label("Länge eines Termins (Minuten)")).to_have_attribute("aria-invalid", "true")
    await appointments.get_by_label("Länge eines Termins (Minuten)").fill("30")
    await appointments.get_by_label("Frist zum Absagen und Verschieben (Minuten vorher)").fill("180")
    await appointments.get_by_label("Termine und Laufkundschaft abwechseln").check()
    await appointments.get_by_label("jeder wievielte Aufruf").fill("3")
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.locator("#edit-panel")).to_be_hidden()  # hidden once the server took it (status: as before)
    config = live_server.app[ROOM].department("buergerbuero").appointments
    assert config is not None and config.hours.describe() == {"wed": ["09:00-12:00", "14:00-15:00"]}
    assert (config.slot_minutes, config.cancel_minutes, config.priority, config.priority_every) == (30, 180, "every", 3)
    assert config.min_notice_minutes == AppointmentConfig(hours=config.hours).min_notice_minutes  # empty: default
    await card.get_by_role("button", name="Bearbeiten: Bürgerbüro").click()  # the form shows what is stored
    await expect(appointments.get_by_label("Länge eines Termins (Minuten)")).to_have_value("30")
    await expect(appointments.get_by_label("Termine und Laufkundschaft abwechseln")).to_be_checked()
    await appointments.get_by_label("Termine zum Buchen anbieten").uncheck()  # off again: null in the PATCH
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.locator("#edit-panel")).to_be_hidden()
    assert live_server.app[ROOM].department("buergerbuero").appointments is None

    await page.goto("/")
    landing = page.locator(".dept[data-department='buergerbuero']")
    await landing.locator("summary").click()
    hours = landing.locator("dl")
    await expect(hours).to_contain_text("09:00-11:30, 13:00-15:00")
    await expect(hours).not_to_contain_text("Dienstag")
    assert problems == []
