"""/metrics: Prometheus text that parses, values that follow the waiting room, never public.

The app's metrics live in a registry of their own, so several apps in one test process do not clash.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.http.keys import ROOM
from server.http.metrics import METRICS, start_metrics_site
from server.queue.model import Presence
from server.settings import ConfigError

from .app_fixtures import TEST_CONFIG, add_staff, free_port, login, make_settings, wait_until_healthy
from .socket_clients import citizen_socket, join
from .test_redis_faults import PREFIX, _wait_ready
from .test_redis_faults import private_redis as private_redis  # a fixture, used by name

TOKEN = "metrics-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and labels (prometheus_client's own parser)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(client: Any, headers: dict[str, str] | None = None) -> dict[Any, float]:
    resp = await client.get("/metrics", headers=AUTH if headers is None else headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


@pytest.mark.parametrize(("server", "message"), [
    ({"metrics_token": "short"}, "metrics_token must be at least 16 characters"),
    ({"metrics_port": 8080}, "metrics_port must be 0 (none) or a port other than port"),
    ({"metrics_port": 70000}, "metrics_port must be 0"),
    ({"metrics_port": "9180"}, "metrics_port has the wrong type"),
])
def test_bad_metrics_settings_are_refused(server: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_settings(**server)


async def test_presences_of_several_departments_at_once(store):
    """The batched read /metrics uses gives what ``presences`` gives per department, on both stores."""
    await store.set_presence("anna", ["bauamt", "buergerbuero"], Presence.AVAILABLE, 60)
    await store.set_presence("ben", ["bauamt"], Presence.BUSY, 60)
    await store.set_presence("cleo", ["bauamt"], Presence.AWAY, 60)
    await store.set_presence("cleo", ["bauamt"], Presence.OFFLINE, 60)
    departments = ["bauamt", "buergerbuero", "standesamt", "nowhere"]
    expected = {d: await store.presences(d) for d in departments}
    assert expected["bauamt"] == {"anna": Presence.AVAILABLE, "ben": Presence.BUSY}
    assert await store.presences_of(departments) == expected
    assert await store.presences_of([]) == {}


async def test_without_token_or_port_metrics_is_not_found(client):
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/metrics", headers=AUTH)).status == 404


async def test_the_token_is_required(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(metrics_token=TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"]["code"] == "unauthenticated"  # the one error shape (was plain text)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "sprechstunde" not in await resp.text()
    samples = await scrape(client)
    assert value(samples, "sprechstunde_store_up") == 1.0


async def test_values_follow_a_join_and_a_call(make_app, aiohttp_client):
    app = make_app(metrics_token=TOKEN)
    client = await aiohttp_client(app)
    now = [1000.0]
    app[METRICS].clock = lambda: now[0]  # the store's values are cached for a second: step the clock
    await add_staff(app, "anna", departments=["buergerbuero", "bauamt"])

    before = await scrape(client)
    assert value(before, "sprechstunde_waiting_citizens", department="buergerbuero") == 0
    assert value(before, "sprechstunde_waiting_citizens", department="standesamt") == 0
    assert ("sprechstunde_calls_total", (("department", "buergerbuero"),)) not in before

    resp = await client.post("/api/departments/buergerbuero/tickets", json={"consent": True})
    assert resp.status == 201
    cached = await scrape(client)
    assert value(cached, "sprechstunde_waiting_citizens", department="buergerbuero") == 0  # within the second
    now[0] += 1.0
    joined = await scrape(client)
    assert value(joined, "sprechstunde_waiting_citizens", department="buergerbuero") == 1

    csrf = await login(client, "anna")
    resp = await client.put("/api/staff/presence", json={"status": "available"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    resp = await client.post("/api/staff/departments/buergerbuero/call-next", headers={"X-CSRF-Token": csrf})
    assert resp.status == 200, await resp.text()
    now[0] += 1.0
    called = await scrape(client)
    assert value(called, "sprechstunde_waiting_citizens", department="buergerbuero") == 0
    assert value(called, "sprechstunde_calls_total", department="buergerbuero") == 1
    assert value(called, "sprechstunde_wait_seconds_count", department="buergerbuero") == 1
    assert value(called, "sprechstunde_wait_seconds_bucket", department="buergerbuero", le="+Inf") == 1
    assert value(called, "sprechstunde_clerks", department="buergerbuero", presence="busy") == 1
    assert value(called, "sprechstunde_clerks", department="bauamt", presence="busy") == 1
    assert value(called, "sprechstunde_clerks", department="buergerbuero", presence="available") == 0
    for name in ("sprechstunde_media_rooms", "sprechstunde_media_forwarded_packets_total",
                 "sprechstunde_store_unavailable_total", "sprechstunde_event_loop_lag_seconds_count"):
        assert (name, ()) in called, name


async def test_sockets_are_counted_and_the_loop_lag_is_probed(make_live_server, clients):
    server = await make_live_server(metrics_token=TOKEN)
    now = [0.0]
    server.app[METRICS].clock = lambda: now[0]
    ticket = await join(server.url)
    async with aiohttp.ClientSession(headers=AUTH) as http:

        async def samples() -> dict[Any, float]:
            now[0] += 1.0
            async with http.get(f"{server.url}/metrics") as resp:
                assert resp.status == 200
                return parse(await resp.text())

        assert value(await samples(), "sprechstunde_sockets", kind="page") == 0
        clients.append(await citizen_socket(server.url, ticket["token"]))
        await clients[-1].wait_for("queue")  # the connect handler has run
        assert value(await samples(), "sprechstunde_sockets", kind="page") == 1
        await clients[-1].close()
        while value(await samples(), "sprechstunde_sockets", kind="page") != 0:  # noqa: ASYNC110 - no event for it
            await asyncio.sleep(0.05)
        while value(await samples(), "sprechstunde_event_loop_lag_seconds_count") < 1:  # noqa: ASYNC110 - 0.5 s timer
            await asyncio.sleep(0.1)
        assert value(await samples(), "sprechstunde_waiting_citizens", department="buergerbuero") == 1


async def test_the_separate_listener_serves_metrics_without_a_token(make_live_server):
    server = await make_live_server()
    port = free_port()
    runner = await start_metrics_site(server.app, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                samples = parse(await resp.text())
            assert value(samples, "sprechstunde_store_up") == 1
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 404  # the listener serves /metrics and nothing else
            async with http.get(f"{server.url}/metrics") as resp:
                assert resp.status == 404  # not on the public port (no token configured)
    finally:
        await runner.cleanup()
    assert server.app[ROOM] is not None


def test_serve_starts_the_metrics_listener_on_its_address(tmp_path: Path):
    """The real command: ``metrics_port`` in the configuration opens a second listener; SIGTERM ends both."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    lines = ["[server]", f'data_dir = "{tmp_path / "var"}"', 'metrics_host = "127.0.0.1"',
             f"metrics_port = {metrics_port}", ""]
    for d in TEST_CONFIG["departments"][:2]:
        lines += ["[[departments]]", f'id = "{d["id"]}"', f'name = "{d["name"]}"', ""]
    config.write_text("\n".join(lines), "utf-8")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "--config", str(config), "serve", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "REDIS_URL": ""},
        )
    try:
        wait_until_healthy(proc, port, lambda: log.read_text("utf-8", "replace"))
        import urllib.error
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            samples = parse(resp.read().decode())
        assert value(samples, "sprechstunde_waiting_citizens", department="bauamt") == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert refused.value.code == 404
        refused.value.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text("utf-8", "replace")


@pytest.mark.redis
async def test_a_redis_outage_is_counted_and_the_scrape_still_answers(private_redis, make_live_server):
    """Redis refusing (killed): the scrape still answers, says the store is down, counts the refusals; once
    Redis is back (restarted on its port, its AOF kept) the store's values return."""
    server = await make_live_server(redis_url=private_redis.url, redis_prefix=PREFIX, metrics_token=TOKEN)
    now = [0.0]
    server.app[METRICS].clock = lambda: now[0]
    async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=20)) as http:

        async def samples() -> dict[Any, float]:
            now[0] += 1.0
            async with http.get(f"{server.url}/metrics") as resp:
                assert resp.status == 200
                return parse(await resp.text())

        up = await samples()
        assert value(up, "sprechstunde_store_up") == 1
        errors = value(up, "sprechstunde_store_unavailable_total")
        private_redis.kill()
        async with http.post(f"{server.url}/api/departments/buergerbuero/tickets", json={"consent": True}) as resp:
            assert resp.status == 503
        down = await samples()
        assert value(down, "sprechstunde_store_up") == 0
        assert ("sprechstunde_waiting_citizens", (("department", "buergerbuero"),)) not in down
        assert value(down, "sprechstunde_store_unavailable_total") >= errors + 2  # the join and the scrape
        private_redis.start()
        await _wait_ready(server.url)
        back = await samples()
        assert value(back, "sprechstunde_store_up") == 1
        assert value(back, "sprechstunde_waiting_citizens", department="buergerbuero") == 0
