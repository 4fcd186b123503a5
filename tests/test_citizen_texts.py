"""What citizens are told about closed departments, without a browser: the ``queue`` update a waiting page
derives its sentences from, the landing page's cards, the relative opening times, and the demo logins.

The waiting room runs on a clock the test sets (``WaitingRoom.clock``), so that opening hours end while a
citizen waits, without waiting for the real end of a day.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from server.app import DEMO_HINT, create_app, ensure_demo_staff
from server.http.keys import AUTH, ROOM
from server.i18n import gettext, opening_text, when_text
from server.settings import settings_from_dict
from server.store.memory import MemoryStore

from .app_fixtures import free_port
from .socket_clients import citizen_socket, join

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = {d: "08:00-16:00" for d in ("mon", "tue", "wed", "thu", "fri")}
CONFIG: dict[str, Any] = {
    "server": {"timezone": "Europe/Berlin", "grace_seconds": 300, "position_interval": 0.2,
               "joins_per_address": 1000},
    "departments": [
        {"id": "amt", "name": "Ordnungsamt", "hours": WEEKDAYS},
        {"id": "nie", "name": "Standesamt", "hours": {}},
    ],
}


def at(*args: int) -> float:
    """Epoch seconds of a local time in Berlin (2026-11-30 is a Monday)."""
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def town(aiohttp_server, tmp_path):
    """The whole app on a free port, on a clock the test sets; returns (base url, app, clock)."""
    raw = {"server": {**CONFIG["server"], "data_dir": str(tmp_path / "var")}, "departments": CONFIG["departments"]}
    app = create_app(settings_from_dict(raw), store=MemoryStore(staff_file=tmp_path / "staff.json"),
                     announce=lambda _: None)
    clock = Clock(at(2026, 11, 30, 15, 59, 59))
    app[ROOM].clock = clock
    server = await aiohttp_server(app, host="127.0.0.1", port=free_port())
    return str(server.make_url("")).rstrip("/"), app, clock


async def test_closing_reaches_every_waiting_page_unasked(town, clients) -> None:
    """Opening hours end while a citizen waits: without anyone acting, the page gets a ``queue`` update
    saying closed, when it opens next (local ISO time) and no message; a lead's closing at once says
    "nobody knows when" and carries the lead's message. The ticket keeps its place."""
    url, app, clock = town
    ticket = await join(url, "amt")
    page = await citizen_socket(url, ticket["token"])
    clients.append(page)
    first = await page.wait_for("queue", lambda u: u["d"] == "amt")
    assert (first["open"], first["next"], first["msg"]) == (True, None, None)

    clock.now = at(2026, 11, 30, 16, 0, 1)  # the end of Monday's hours
    closed = await page.wait_for("queue", lambda u: not u["open"])
    assert closed["next"] == "2026-12-01T08:00+01:00"
    assert closed["msg"] is None
    seq = ticket["ticket"]["seq"]
    assert closed["w"][0] == seq  # still waiting, at the same place

    room = app[ROOM]
    await room.directory.modify(
        "amt", lambda d: dataclasses.replace(d, closed_now=True, closed_message="Heute wegen Umzug geschlossen.")
    )
    by_lead = await page.wait_for("queue", lambda u: u["msg"] is not None)
    assert (by_lead["open"], by_lead["next"], by_lead["msg"]) == (False, None, "Heute wegen Umzug geschlossen.")

    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/departments") as resp:
        departments = {d["id"]: d for d in (await resp.json())["departments"]}
    assert departments["amt"]["next_opening"] is None
    assert departments["amt"]["closed_message"] == "Heute wegen Umzug geschlossen."
    assert departments["nie"]["next_opening"] is None  # no opening hours at all


def card(html: str, department: str) -> str:
    end = r'</li>\s*(?=<li class="card|</ul>\s*</section>)'
    match = re.search(rf'<li class="card dept" data-department="{department}">(.*?){end}', html, re.S)
    assert match, html
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match[1]))


@pytest.mark.parametrize(("now", "expected"), [
    (at(2026, 11, 30, 6, 30), "Öffnet heute um 8:00"),
    (at(2026, 11, 30, 17, 0), "Öffnet morgen um 8:00"),
    (at(2026, 12, 4, 16, 30), "Öffnet Montag um 8:00"),
])
async def test_a_closed_card_says_when_it_opens(town, now, expected) -> None:
    url, _, clock = town
    clock.now = now
    async with aiohttp.ClientSession() as http, http.get(f"{url}/") as resp:
        text = card(await resp.text(), "amt")
    assert "Geschlossen" in text
    assert expected in text
    assert "niemand im Dienst" not in text


async def test_a_card_closed_by_a_lead_shows_the_message(town) -> None:
    url, app, clock = town
    clock.now = at(2026, 11, 30, 10, 0)
    await app[ROOM].directory.modify(
        "amt", lambda d: dataclasses.replace(d, closed_now=True, closed_message="Heute wegen Umzug geschlossen.")
    )
    async with aiohttp.ClientSession() as http, http.get(f"{url}/?lang=en") as resp:
        text = card(await resp.text(), "amt")
    assert "Closed" in text
    assert "It is not known yet when it opens again." in text
    assert "Heute wegen Umzug geschlossen." in text
    assert "No clerk" not in text


NOW = datetime(2026, 11, 30, 15, 0, tzinfo=BERLIN)  # a Monday


@pytest.mark.parametrize(("moment", "de", "en"), [
    (datetime(2026, 11, 30, 16, 0, tzinfo=BERLIN), "heute um 16:00", "today at 16:00"),
    (datetime(2026, 12, 1, 8, 0, tzinfo=BERLIN), "morgen um 8:00", "tomorrow at 8:00"),
    (datetime(2026, 12, 6, 9, 30, tzinfo=BERLIN), "Sonntag um 9:30", "on Sunday at 9:30"),
    (datetime(2026, 12, 7, 8, 0, tzinfo=BERLIN), "am 7.12. um 8:00", "on 7/12 at 8:00"),
])
def test_when_text(moment, de, en) -> None:
    assert when_text(gettext("de"), moment, NOW) == de
    assert when_text(gettext("en"), moment, NOW) == en


def test_opening_text_reads_the_wire_format_in_the_municipalitys_zone() -> None:
    # 07:00 UTC on Tuesday is 8:00 in Berlin: "tomorrow", at the local hour
    assert opening_text(gettext("de"), "2026-12-01T07:00+00:00", NOW) == "Öffnet morgen um 8:00"
    assert opening_text(gettext("de"), None, NOW) == "Wann es wieder öffnet, steht noch nicht fest."


async def test_demo_logins_are_printed_once_then_a_hint(tmp_path) -> None:
    raw = {"server": {"demo": True, "data_dir": str(tmp_path / "var")}, "departments": CONFIG["departments"]}
    app = create_app(settings_from_dict(raw), store=MemoryStore(staff_file=tmp_path / "staff.json"),
                     announce=lambda _: None)
    said: list[str] = []
    settings, auth = app[ROOM].settings, app[AUTH]
    await ensure_demo_staff(settings, auth, said.append)
    assert "user amt" in said[0] and "password" in said[0]
    await ensure_demo_staff(settings, auth, said.append)
    assert said[1] == DEMO_HINT.format(example="amt", command="sprechstunde staff reset-demo")
    assert "reset-demo" in said[1]
    # Started with another configuration file: the hint names it, else the reset would reach another store.
    town = settings_from_dict(raw, config_path=tmp_path / "town.toml")
    await ensure_demo_staff(town, auth, said.append)
    assert said[2].endswith(f"sprechstunde staff reset-demo --config {tmp_path / 'town.toml'}")


def test_reset_demo_prints_new_logins(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "var"}"\ndemo = true\n\n'
        '[[departments]]\nid = "amt"\nname = "Ordnungsamt"\n', "utf-8")
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(config), "staff", "reset-demo"],
                         capture_output=True, text=True, timeout=60, cwd=root, env={**os.environ, "REDIS_URL": ""})
    assert run.returncode == 0, run.stderr
    first = re.search(r"user amt\s+password (\S+)", run.stdout)
    assert first, run.stdout
    again = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(config), "staff", "reset-demo"],
                           capture_output=True, text=True, timeout=60, cwd=root, env={**os.environ, "REDIS_URL": ""})
    second = re.search(r"user amt\s+password (\S+)", again.stdout)
    assert second and second[1] != first[1]
