"""Real-browser test of /admin/stats: a lead's page draws every chart (uPlot canvases) with its data table
beside it, switches department and granularity with labelled pickers, offers the CSV export, runs under the
strict Content-Security-Policy without errors, and axe-core finds no WCAG 2.1 A/AA violation."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from playwright.async_api import Browser, expect

from server.http.keys import AUTH, SETTINGS, STATS
from server.stats.log import LogEntry, pseudonym
from tests.axe import assert_accessible
from tests.test_browser import CHROMIUM_ARGS, PASSWORD, Problems, launched, new_page, staff_login

pytestmark = pytest.mark.browser
KEY = b"test pseudonym key"
CHARTS = 6


@pytest.fixture
async def browser(live_server) -> AsyncIterator[Browser]:
    async with launched(CHROMIUM_ARGS) as browser:  # after live_server: the browser closes its sockets first
        yield browser


def month_of_entries(tz: object) -> list[LogEntry]:
    rng = random.Random(3)
    now = time.time()
    entries = []
    for i in range(600):
        when = now - rng.uniform(0, 20 * 86400)
        if not 8 <= datetime.fromtimestamp(when, tz).hour < 17:  # type: ignore[arg-type]
            continue
        d = rng.choice(["buergerbuero", "bauamt"])
        t = pseudonym("ticket", str(i), KEY)
        entries += [LogEntry(when, "joined", d, t, language=rng.choice(["de", "en", "uk"]), interpreter=i % 17 == 0),
                    LogEntry(when + 300, "called", d, t, state="waiting", wait=rng.uniform(60, 1800)),
                    LogEntry(when + 900, "finished", d, t, state="in_consultation", duration=rng.uniform(120, 1200)),
                    LogEntry(when, "on_duty", d, pseudonym("clerk", str(i % 4), KEY))]
    return entries


async def test_the_stats_page_draws_charts_with_tables_and_passes_axe(browser: Browser, live_server) -> None:
    app = live_server.app
    await app[AUTH].add_staff("lena", "Lena Leitung", PASSWORD, ["buergerbuero", "bauamt"], ["clerk", "lead"])
    await app[STATS].store.append(month_of_entries(app[SETTINGS].tz))
    problems = Problems()
    _, page = await new_page(browser, problems, live_server.url)
    await staff_login(page, "lena")
    await expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
    await page.goto("/admin/stats")

    await expect(page.locator("#stats-charts canvas")).to_have_count(CHARTS)
    tables = page.locator("#stats-charts .admin-stats__table table")
    await expect(tables).to_have_count(CHARTS)
    await expect(page.locator("#stats-status")).to_contain_text("Statistik für alle Abteilungen")
    first = tables.first
    await expect(first.locator("caption")).to_contain_text("Ankünfte und Ausgang")
    await expect(first.locator("thead th[scope='col']").first).to_have_text("Zeitraum")
    assert await first.locator("tbody th[scope='row']").count() == 30
    await expect(page.locator("#stats-totals")).to_be_visible()
    assert int((await page.locator("#stats-totals-list dd").first.text_content() or "0").replace(".", "")) > 100
    await assert_accessible(page, "/admin/stats")

    # Labelled pickers: one department, per hour, a single day; the export follows the choice.
    await page.get_by_label("Abteilung").select_option("bauamt")
    await page.get_by_label("Einteilung").select_option("hour")
    today = datetime.now(app[SETTINGS].tz).date().isoformat()
    await page.get_by_label("Von (Datum)").fill(today)
    await page.get_by_label("Bis (Datum)").fill(today)
    await page.get_by_role("button", name="Anzeigen").click()
    await expect(first.locator("tbody th[scope='row']")).to_have_count(24)
    await expect(page.locator("#stats-status")).to_contain_text("Statistik für Bauamt")
    await expect(page.locator("#stats-charts canvas")).to_have_count(CHARTS)
    href = await page.locator("#stats-csv").get_attribute("href")
    assert href is not None and "department=bauamt" in href and "granularity=hour" in href
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Als CSV herunterladen").click()
    download = await download_info.value
    assert download.suggested_filename.startswith("statistik-bauamt-hour-")
    await assert_accessible(page, "/admin/stats per hour")
    assert problems == []
