"""Two real nodes on one Redis behind Debian's nginx with the shipped site (deploy/nginx/sprechstunde.conf,
its upstream listing both nodes): a page connected through nginx survives its node being killed (it
reconnects through nginx to the other node within seconds and still sees its ticket waiting), and a node
stopped with SIGTERM tells its pages at once, and they come back through nginx on the other node. nginx's
HTTPS listener queues as many connections as the kernel allows, not nginx's default 511 (a reconnect storm of
2,000 pages overflowed that: docs/performance.md, "Several nodes")."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import socketio

from . import test_cluster_nodes as cluster_nodes
from .app_fixtures import free_port
from .socket_clients import join
from .test_cluster_nodes import counted_on, wait_for_counts
from .test_deploy import Nginx, _nginx_conf, _self_signed, _site

start_nodes = cluster_nodes.start_nodes  # the fixtures: real nodes, and the test's own view of Redis
shared = cluster_nodes.shared

pytestmark = pytest.mark.redis

RECONNECTED_WITHIN = 10.0
"""Seconds from a node's death until its page is connected again through nginx, on the other node."""
TOLD_WITHIN = 2.0


class Page:
    """A citizen's page through nginx: python-socketio with its own reconnection (as socket.io in the browser),
    and, like web/static/js/common.js ``reconnectAfterStop``, a reconnect after the server's own disconnect."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=1,
                                           ssl_verify=False)
        self.tickets: list[dict[str, Any]] = []
        self.stopping: list[tuple[float, dict[str, Any]]] = []
        self.connects = 0
        self.refusals: list[Any] = []
        self._changed = asyncio.Event()
        self._retry_after = 5.0

        @self.client.on("connect")
        async def connected() -> None:
            self.connects += 1
            self._changed.set()

        @self.client.on("connect_error")
        async def refused(data: Any = None) -> None:
            self.refusals.append(data)

        @self.client.on("ticket")
        async def ticket(data: dict[str, Any]) -> None:
            self.tickets.append(data)
            self._changed.set()

        @self.client.on("server_stopping")
        async def stopping(data: dict[str, Any]) -> None:
            self.stopping.append((time.monotonic(), data))
            self._retry_after = float(data["retry_after"])
            self._changed.set()

        @self.client.on("disconnect")
        async def disconnected(reason: Any = None) -> None:
            if reason == self.client.reason.SERVER_DISCONNECT:  # as the pages do after server_stopping
                asyncio.get_running_loop().call_later(self._retry_after,
                                                      lambda: asyncio.ensure_future(self.connect()))
            self._changed.set()

    async def connect(self) -> None:
        await self.client.connect(self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10)

    async def until(self, condition: Any, timeout: float) -> None:  # noqa: ASYNC109 - a bound for the wait
        async def scan() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(scan(), timeout)

    async def close(self) -> None:
        await self.client.disconnect()


def _proxy(tmp_path: Path, upstreams: list[int]) -> Nginx:
    """nginx with the shipped site on free ports, its upstream listing the nodes."""
    cert, key = _self_signed(tmp_path)
    http, https = free_port(), free_port()
    site = _site(cert, key, (http, https, upstreams[0]))
    first = f"server 127.0.0.1:{upstreams[0]} max_fails=1 fail_timeout=10s;"
    assert site.count(first) == 1, "the shipped upstream line changed: adapt this test"
    site = site.replace(first, "\n    ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;"
                                             for port in upstreams))
    # Behind a port other than 443 the app's same-origin checks need the port in Host (as the site's comment says)
    assert site.count("proxy_set_header Host $host;") == 2
    site = site.replace("proxy_set_header Host $host;", f"proxy_set_header Host $host:{https};")
    proxy = Nginx(tmp_path, _nginx_conf(tmp_path, site, foreground=True), http, https)
    proxy.wait_listening()
    return proxy


@pytest.fixture
def nginx(tmp_path: Path) -> Any:
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        proxy = _proxy(tmp_path / "nginx", upstreams)
        started.append(proxy)
        return proxy

    (tmp_path / "nginx").mkdir()
    yield start
    for proxy in started:
        proxy.stop()


async def _page_on_a_node(start_nodes: Any, nginx: Any, raw: Any, prefix: str) -> tuple[Any, Any, Page, str]:
    """Two nodes, nginx in front, a citizen's page through nginx; (its node, the other, the page, ticket id)."""
    nodes = start_nodes(2, grace=60)  # the pages of a stopping node come back after retry_after: well within
    proxy = nginx([n.port for n in nodes])
    url = f"https://127.0.0.1:{proxy.https}"
    joined = await join(nodes[0].url)
    ticket_id = joined["ticket"]["id"]
    page = Page(url, joined["token"])
    await page.connect()
    await page.until(lambda: page.tickets, 10)
    counts: dict[int, int] = {}

    async def counted() -> None:
        nonlocal counts
        while not counts:  # noqa: ASYNC110 - another process counts
            counts = await counted_on(raw, prefix, ticket_id)
            await asyncio.sleep(0.05)  # the node counts the page in its own process: polled

    await asyncio.wait_for(counted(), 10)
    (pid,) = counts
    here = next(n for n in nodes if n.proc.pid == pid)
    other = next(n for n in nodes if n is not here)
    return here, other, page, ticket_id


async def test_a_page_through_nginx_survives_its_node_being_killed(start_nodes, nginx, shared, redis_prefix):
    store, _, raw = shared
    here, other, page, ticket_id = await _page_on_a_node(start_nodes, nginx, raw, redis_prefix)
    try:
        seen = len(page.tickets)
        killed = time.monotonic()
        here.kill()
        await page.until(lambda: page.connects >= 2 and len(page.tickets) > seen, RECONNECTED_WITHIN)
        print(f"reconnected through nginx {time.monotonic() - killed:.2f} s after the kill")
        view = page.tickets[-1]
        assert (view["id"], view["state"], view["position"]) == (ticket_id, "waiting", 1)  # its place kept
        # the survivor notices the dead node and drops its count; the page on the survivor keeps the citizen
        # connected throughout (no grace period starts)
        await wait_for_counts(raw, redis_prefix, ticket_id, {other.proc.pid: 1})
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.disconnected_at is None
    finally:
        await page.close()


async def test_sigterm_behind_nginx_tells_pages_at_once_and_they_come_back_on_the_other_node(
        start_nodes, nginx, shared, redis_prefix):
    store, _, raw = shared
    here, other, page, ticket_id = await _page_on_a_node(start_nodes, nginx, raw, redis_prefix)
    try:
        sent = time.monotonic()
        here.proc.send_signal(signal.SIGTERM)
        await page.until(lambda: page.stopping, TOLD_WITHIN)
        assert page.stopping[0][0] - sent < TOLD_WITHIN
        retry_after = page.stopping[0][1]["retry_after"]
        try:
            await page.until(lambda: page.connects >= 2, retry_after + RECONNECTED_WITHIN)
        except TimeoutError:
            raise AssertionError((page.refusals, here.output(), other.output())) from None
        await page.until(lambda: page.tickets[-1]["state"] == "waiting" and len(page.tickets) >= 2, 10)
        assert await counted_on(raw, redis_prefix, ticket_id) == {other.proc.pid: 1}
        assert await asyncio.to_thread(here.proc.wait, 15) == 0
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.disconnected_at is None and ticket.state.value == "waiting"
    finally:
        await page.close()


async def test_a_waiting_page_in_chromium_comes_back_on_the_other_node_after_sigterm(start_nodes, nginx, shared,
                                                                                       redis_prefix, tmp_path):
    """The real waiting page (web/static/js/wait.js): after ``server_stopping`` and the server's disconnect it
    reconnects by itself (socket.io would not), through nginx, to the node that still runs."""
    from playwright.async_api import expect

    from .test_browser import CHROMIUM_ARGS, Problems, check_in, launched

    store, _, raw = shared
    nodes = start_nodes(2, grace=60)
    proxy = nginx([n.port for n in nodes])
    problems = Problems()
    async with launched(CHROMIUM_ARGS) as browser:
        context = await browser.new_context(base_url=f"https://127.0.0.1:{proxy.https}", locale="de-DE",
                                            ignore_https_errors=True)
        page = problems.watch(await context.new_page())
        await check_in(page, "Alex")
        ticket_id = page.url.split("/wait/", 1)[1].split("#", 1)[0]
        connection = page.locator("#connection")
        await expect(connection).to_have_attribute("data-state", "connected")
        counts: dict[int, int] = {}
        while not counts:  # noqa: ASYNC110 - another process counts the page
            counts = await counted_on(raw, redis_prefix, ticket_id)
            await asyncio.sleep(0.05)
        (pid,) = counts
        here = next(n for n in nodes if n.proc.pid == pid)
        other = next(n for n in nodes if n is not here)

        here.proc.send_signal(signal.SIGTERM)
        await expect(connection).to_have_attribute("data-state", "reconnecting", timeout=TOLD_WITHIN * 1000)
        # retry_after (5 s) plus up to as much again at random, then the connect through nginx
        await expect(connection).to_have_attribute("data-state", "connected", timeout=25_000)
        await wait_for_counts(raw, redis_prefix, ticket_id, {other.proc.pid: 1})
        await expect(page.locator("[data-field='position-number']")).to_have_text("1")
        ticket = await store.get_ticket(ticket_id)
        assert ticket is not None and ticket.state.value == "waiting" and ticket.disconnected_at is None
        await context.close()
    assert not problems, problems


def test_nginx_s_https_listener_queues_a_reconnect_storm(nginx: Any):
    """The shipped site's ``listen ... backlog=``: the kernel queues up to ``net.core.somaxconn`` connections that
    nginx has not accepted yet, as for the nodes (server/cli.py LISTEN_BACKLOG), not the 511 nginx asks for
    unless told; seen on the listening socket itself (``ss``: Send-Q of a listener is its backlog)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is missing")
    proxy = nginx([free_port()])  # no node needed: only the listener is looked at
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text().strip())
    out = subprocess.run([ss, "-ltnH", f"sport = :{proxy.https}"], capture_output=True, text=True, timeout=30,
                         check=True).stdout.split()
    assert len(out) >= 4, out  # State Recv-Q Send-Q Local
    assert int(out[2]) == min(65535, somaxconn), out
    assert int(out[2]) > 511 or somaxconn <= 511, out
