"""SIGTERM on a real ``sprechstunde serve`` process: connected pages and dashboards are told at once, new
connections are refused, and the process exits within ``shutdown_seconds`` even with a hung request open."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from server.cli import REQUESTS_SHARE
from server.settings import ConfigError, load_settings

from .app_fixtures import free_port, wait_until_healthy
from .media.peers import Client
from .socket_clients import Recorder, citizen_socket, join, staff_socket

ROOT = Path(__file__).resolve().parent.parent
SHUTDOWN_SECONDS = 4
TOLD_WITHIN = 2.0
CONFIG = """
[server]
data_dir = "{data}"
port = {port}
joins_per_address = 1000
shutdown_seconds = {shutdown}

[[departments]]
id = "buergerbuero"
name = "Bürgerbüro"
hours = {{ {hours} }}
"""
ALWAYS_OPEN = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
ENV = {**os.environ, "REDIS_URL": ""}


@pytest.fixture
def server(tmp_path):
    port = free_port()
    config = tmp_path / "townhall.toml"
    config.write_text(CONFIG.format(data=tmp_path / "var", port=port, hours=ALWAYS_OPEN,
                                    shutdown=SHUTDOWN_SECONDS), "utf-8")
    added = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(config), "staff", "add", "anna",
                            "--password-stdin"], input="a long password\n", capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env=ENV)
    assert added.returncode == 0, added.stderr
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config", str(config), "serve"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_until_healthy(proc, port, log.read_text)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def _offer(socket: Recorder, peer: Client, **extra: object) -> None:
    ack = await socket.call("media_offer", {"sdp": await peer.offer(), **extra})
    assert ack.get("ok"), ack
    await peer.accept(ack["sdp"])


def _hung_post(port: int) -> socket.socket:
    """A request whose body never finishes arriving: headers promise 100 bytes, 10 are sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /api/departments/buergerbuero/tickets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"consent\"".encode())
    return sock


def _new_request(port: int) -> str:
    """What a new HTTP request gets while the server stops: ``refused`` or the error code of its JSON."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return f"answered {resp.status}"
    except urllib.error.HTTPError as e:
        return str(e.code) + " " + e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        return "refused" if isinstance(reason, ConnectionRefusedError) else f"other: {reason!r}"


async def test_sigterm_tells_sockets_at_once_refuses_new_work_and_exits_within_the_deadline(server, peers):
    """A citizen in a consultation with Anna (real aiortc peers), their page and her dashboard connected,
    and a request whose body never completes; then SIGTERM."""
    proc, port, log = server
    url = f"http://127.0.0.1:{port}"
    dashboard = await staff_socket(url, "anna", "a long password")
    await dashboard.wait_for("dashboard")
    joined = await join(url)
    ticket = joined["ticket"]["id"]
    page = await citizen_socket(url, joined["token"])
    await page.wait_for("ticket")
    citizen_peer, clerk_peer = Client("citizen"), Client("clerk")
    peers += [citizen_peer, clerk_peer]
    await _offer(page, citizen_peer)  # pre-warmed while waiting
    assert (await dashboard.call("call_next", {"department": "buergerbuero"}))["ok"]
    await page.wait_for("media_layout", lambda m: m["room"] == "consultation")
    await _offer(dashboard, clerk_peer, ticket=ticket)
    await page.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    hung = await asyncio.to_thread(_hung_post, port)
    try:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        told = await asyncio.gather(page.wait_for("server_stopping", timeout=TOLD_WITHIN),
                                    dashboard.wait_for("server_stopping", timeout=TOLD_WITHIN))
        told_after = time.monotonic() - sent
        assert all(t["retry_after"] > 0 for t in told)
        for socket in (page, dashboard):  # the consultation ended first, with the reason
            names = [name for name, _ in socket.events]
            assert names.index("media_end") < names.index("server_stopping")
            assert socket.last("media_end") == {"ticket": ticket, "reason": "server_stopping"}
        async with asyncio.timeout(TOLD_WITHIN):  # disconnected by the server, not by a ping timeout
            while page.client.connected or dashboard.client.connected:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.02)
        disconnected_after = time.monotonic() - sent
        # The listener is closed before anything else: a new connection is refused (no 503 to send).
        assert await asyncio.to_thread(_new_request, port) == "refused"
        assert proc.poll() is None  # the hung request holds the stop, up to its share of the deadline
        code = await asyncio.to_thread(proc.wait, SHUTDOWN_SECONDS + 5)
        exited_after = time.monotonic() - sent
    finally:
        hung.close()
    assert code == 0, log.read_text("utf-8")[-3000:]
    assert exited_after < SHUTDOWN_SECONDS + 0.5, (exited_after, log.read_text("utf-8")[-3000:])
    print(f"told {told_after:.3f} s, disconnected {disconnected_after:.3f} s, exited {exited_after:.3f} s")


async def test_sigterm_with_sockets_that_do_not_hang_up_exits_without_waiting_for_them(server):
    """The stop does not wait for clients to close what the server ended: a dashboard and pages on the
    websocket and on long-polling whose clients keep their engine.io session open after socket.io's
    DISCONNECT (python-socketio's client does), and a bare engine.io websocket that never connected to
    socket.io. Before, each such connection held aiohttp's stop for its requests' share of the deadline,
    then again while it was cancelled."""
    proc, port, log = server
    url = f"http://127.0.0.1:{port}"
    dashboard = await staff_socket(url, "anna", "a long password")
    await dashboard.wait_for("dashboard")
    pages = [await citizen_socket(url, (await join(url))["token"], transport) for transport in ("websocket", "polling")]
    for page in pages:
        await page.wait_for("ticket")
    async with aiohttp.ClientSession() as http:
        bare = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
        opened = await bare.receive_str(timeout=5)
        assert opened.startswith("0{"), opened  # engine.io's open packet; no socket.io CONNECT follows
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, SHUTDOWN_SECONDS + 5)
        exited_after = time.monotonic() - sent
        await bare.close()
    for told in (dashboard, *pages):
        assert told.last("server_stopping") is not None
    text = log.read_text("utf-8")
    assert code == 0, text[-3000:]
    assert exited_after < SHUTDOWN_SECONDS * REQUESTS_SHARE, (exited_after, text[-3000:])
    assert "did not finish" not in text and "exiting now" not in text, text[-3000:]
    assert text.rstrip().endswith("stopped"), text[-3000:]


def test_shutdown_seconds_is_validated(tmp_path):
    config = tmp_path / "t.toml"
    for bad in ("0", "601", '"soon"'):
        config.write_text(f"[server]\nshutdown_seconds = {bad}\n\n[[departments]]\nid = \"a\"\nname = \"A\"\n",
                          "utf-8")
        with pytest.raises(ConfigError, match="shutdown_seconds"):
            load_settings(config, env={})
    config.write_text("[[departments]]\nid = \"a\"\nname = \"A\"\n", "utf-8")
    assert load_settings(config, env={}).shutdown_seconds == 10
