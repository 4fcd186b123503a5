"""Real-browser test of /admin/staff and /admin/audit: a lead adds a clerk with the keyboard alone, sees the
generated password once and the account in the list, and finds the change in the audit log; both pages
pass axe-core's WCAG 2.1 A/AA rules and run under the strict Content-Security-Policy without errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from server.http.auth import verify_password
from server.http.keys import AUTH, STORE
from tests.axe import axe_violations
from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, launched, new_page, staff_login

pytestmark = pytest.mark.browser

@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(CHROMIUM_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


async def test_a_lead_adds_a_clerk_with_the_keyboard_and_finds_it_in_the_audit_log(browser: Browser,
                                                                                    live_server) -> None:
    await live_server.app[AUTH].add_staff("lena", "Lena Leitung", PASSWORD, ["buergerbuero"], ["clerk", "lead"])
    await live_server.app[AUTH].add_staff("bert", "Bert Bauamt", PASSWORD, ["bauamt"], ["clerk"])
    problems = Problems()
    _, page = await new_page(browser, problems, live_server.url)
    await staff_login(page, "lena")
    await expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
    await page.goto("/admin/staff")
    rows = page.locator("#staff-list tbody tr")
    await expect(rows).to_have_count(1)  # lena only: bert works in another department
    assert await axe_violations(page) == []

    # Keyboard only: type, Tab from field to field, Enter to send.
    form = page.locator("#staff-add-form")
    await form.get_by_label("Benutzername").focus()
    await page.keyboard.type("neu.clerk")
    await page.keyboard.press("Tab")
    await expect(form.get_by_label("Angezeigter Name")).to_be_focused()
    await page.keyboard.type("Nora Neu")
    await page.keyboard.press("Tab")
    await expect(form.get_by_label("Sachbearbeitung")).to_be_focused()
    await expect(form.get_by_label("Sachbearbeitung")).to_be_checked()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await expect(form.get_by_role("checkbox", name="Bürgerbüro")).to_be_focused()
    await expect(form.get_by_role("checkbox", name="Bürgerbüro")).to_be_checked()
    await page.keyboard.press("Tab")
    await expect(form.get_by_label("Passwort (freiwillig)")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page.locator("#staff-status")).to_have_text("Das Konto neu.clerk wurde angelegt.")
    secret = page.locator("#staff-secret")
    await expect(secret).to_be_focused()
    password = (await page.locator("#staff-secret-value").text_content() or "").strip()
    account = await live_server.app[STORE].get_staff("neu.clerk")
    assert account is not None and account.roles == ("clerk",) and account.departments == ("buergerbuero",)
    assert account.display_name == "Nora Neu" and verify_password(account.password_hash, password)
    await expect(rows).to_have_count(2)
    await expect(page.locator("tr[data-username='neu.clerk']")).to_contain_text("Nora Neu")
    assert await axe_violations(page) == []

    await page.get_by_role("link", name="Protokoll").click()
    await expect(page).to_have_url(f"{live_server.url}/admin/audit")
    log = page.locator("#audit-list tbody")
    await expect(log).to_contain_text("Konto angelegt")
    await expect(log).to_contain_text("neu.clerk")
    await expect(log).to_contain_text("angemeldet")
    await page.get_by_label("Art").select_option("staff")
    await page.get_by_role("button", name="Anzeigen").click()
    await expect(page.locator("#audit-list tbody tr")).to_have_count(1)
    await expect(page.locator("#audit-status")).to_have_text("Angezeigte Einträge: 1")
    assert await axe_violations(page) == []
    assert problems == []
