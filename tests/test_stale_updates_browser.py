"""The real waiting page (web/static/js/wait.js) keeps the newest ``queue`` update it has: with several nodes an
older update can arrive after a newer one (the one a page is sent on connecting, then another node's broadcast
made before it), and the position shown must not go back to the older state (issue 11).

The server sends the updates here itself, to the page's own room, as a node does: an older one, then a newer one.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, expect

from server.app import SIGNALING
from server.queue.model import JoinRequest
from tests import test_browser
from tests.test_browser import Problems, check_in, new_page

pytestmark = pytest.mark.browser

browser = test_browser.browser  # the same fixtures: the browser goes before live_server at teardown
problems = test_browser.problems


def with_seqs(update: dict[str, Any], seqs: list[int], t: float) -> dict[str, Any]:
    """``update`` listing ``seqs`` (delta-encoded, as the server sends them), made at ``t``."""
    return {**update, "t": t, "w": [b - a for a, b in zip([0, *seqs], seqs, strict=False)]}


async def test_the_page_ignores_a_queue_update_older_than_the_one_it_shows(browser: Browser, live_server,
                                                                           problems: Problems) -> None:
    room = live_server.room
    ahead = [(await room.join("buergerbuero", JoinRequest(name=f"Vor {k}", consent=True), "192.0.2.1"))[0]
             for k in range(3)]
    _, page = await new_page(browser, problems, live_server.url)
    await check_in(page, "Wartend")
    position = page.locator("[data-field='position-number']")
    await expect(position).to_have_text("4")
    ticket = next(t for t in await room.store.waiting("buergerbuero") if t[1] not in {a.id for a in ahead})
    mine = ticket[0]
    others = [a.seq for a in ahead]

    signaling = live_server.app[SIGNALING]
    shown = await room.queue_update("buergerbuero")  # the newest the page has: made after its own
    newer = with_seqs(shown, [others[2], mine], shown["t"] + 2.0)  # two called since: position 2
    await signaling.sio.emit("queue", newer, room=f"d:{shown['d']}")
    await expect(position).to_have_text("2")

    # Every text the position takes from now on (a MutationObserver): the older update must never show.
    await page.evaluate("""() => {
      const field = document.querySelector("[data-field='position-number']");
      window.positionsShown = [];
      new MutationObserver(() => window.positionsShown.push(field.textContent))
        .observe(field, { childList: true, characterData: true, subtree: true });
    }""")
    older = with_seqs(shown, [*others, mine], shown["t"] + 1.0)  # made before "newer", arriving after it
    await signaling.sio.emit("queue", older, room=f"d:{shown['d']}")
    latest = with_seqs(shown, [mine], shown["t"] + 3.0)
    await signaling.sio.emit("queue", latest, room=f"d:{shown['d']}")  # the page handles it after "older"
    await expect(position).to_have_text("1")
    assert await page.evaluate("() => window.positionsShown") == ["1"]  # never 4, the older update's
    assert (await page.title()).startswith("(1)")
    assert problems == []
