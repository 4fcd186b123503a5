"""axe-core in the browser tests: every page and state is checked against WCAG 2.1 A and AA.

axe-core comes from npm (web/package.json, installed by ``make``). Pages are CSP-strict (``script-src
'self'``), so an inline script tag — what Playwright's ``add_script_tag(path=...)`` inserts — is refused by
the page. Instead of switching the policy off (``bypass_csp``, which would also hide the CSP violations our
own scripts must never cause), the helper serves axe from the page's own origin: the page loads
``/__axe__/axe.min.js`` through a ``<script src>`` tag and Playwright answers that one request from the file
on disk. The server never sees or serves it; the policy stays on for everything the test looks at.
"""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page, Route

AXE_FILE = Path(__file__).resolve().parents[1] / "web" / "node_modules" / "axe-core" / "axe.min.js"
AXE_PATH = "/__axe__/axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

REVIEW = bool(os.environ.get("AXE_REVIEW"))
"""Set AXE_REVIEW=1 to also print what axe could not decide ("needs review", e.g. contrast over an image)."""

_RUN = """async ([tags, review]) => {
  const result = await window.axe.run(document, {
    runOnly: { type: 'tag', values: tags },
    resultTypes: review ? ['violations', 'incomplete'] : ['violations'],
  });
  const plain = (list) => list.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary || '' })),
  }));
  return { violations: plain(result.violations), incomplete: review ? plain(result.incomplete) : [] };
}"""


@functools.cache
def axe_source() -> str:
    if not AXE_FILE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{AXE_FILE} is missing: run `make` (npm ci in web/)")
        pytest.skip(f"{AXE_FILE} is missing: run `make` (npm ci in web/)")
    return AXE_FILE.read_text(encoding="utf-8")


_routed: weakref.WeakKeyDictionary[BrowserContext, set[str]] = weakref.WeakKeyDictionary()


async def _serve_axe(route: Route) -> None:
    await route.fulfill(status=200, content_type="text/javascript; charset=utf-8", body=axe_source())


async def inject_axe(page: Page) -> None:
    """Load axe-core into the page from its own origin (allowed by ``script-src 'self'``)."""
    if await page.evaluate("() => Boolean(window.axe)"):
        return
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
    routed = _routed.setdefault(page.context, set())
    if origin not in routed:  # once per context and origin
        await page.context.route(f"{origin}{AXE_PATH}", _serve_axe)
        routed.add(origin)
    await page.add_script_tag(url=f"{origin}{AXE_PATH}")


def describe(violations: list[dict], context_label: str) -> str:
    lines = [f"{context_label}: {len(violations)} WCAG 2.1 A/AA finding(s) ({page_hint(violations)})"]
    for v in violations:
        lines.append(f"- {v['id']} [{v['impact']}]: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"]:
            summary = " ".join(node["summary"].split())
            lines.append(f"    {node['target']}: {summary}")
    return "\n".join(lines)


def page_hint(violations: list[dict]) -> str:
    return ", ".join(sorted({v["id"] for v in violations}))


async def axe_violations(page: Page) -> list[dict]:
    """The WCAG 2.1 A/AA violations axe finds in the page as it is now."""
    await inject_axe(page)
    result = await page.evaluate(_RUN, [WCAG_TAGS, REVIEW])
    if result["incomplete"]:
        print(describe(result["incomplete"], f"needs review on {page.url}"))
    return result["violations"]


async def assert_accessible(page: Page, context_label: str) -> None:
    """Run axe-core on the page as it is now; fail with every violation (id, impact, help, nodes)."""
    violations = await axe_violations(page)
    if violations:
        report = describe(violations, context_label)
        print(report)
        pytest.fail(report, pytrace=False)
