"""The collector policy of ``sprechstunde serve`` (server/gcpolicy.py) rests on one property: a waiting
page's life leaves no reference cycles in the server, so its objects are freed by reference counting and
the rare full collection finds nothing. Checked on a real server process with real socket.io pages."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import socket
import subprocess
import sys
import weakref
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from server import gcpolicy
from server.settings import ConfigError, load_settings

from .app_fixtures import free_port, wait_until_healthy
from .socket_clients import citizen_socket, join

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[server]
data_dir = "{data}"
port = {port}
full_gc_interval = 0.3
ping_interval = 1
joins_per_address = 1000

[[departments]]
id = "buergerbuero"
name = "Bürgerbüro"
hours = {{ {hours} }}
"""
ALWAYS_OPEN = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
FULL = re.compile(r"^(\S+ \S+) INFO sprechstunde.gc: full garbage collection: (\d+) objects freed", re.M)
PING_INTERVAL = 1.0
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"
"""A client's websocket close frame, code 1000, masked with a zero key (RFC 6455 5.5.1)."""


async def _until(condition, seconds: float = 60.0) -> None:
    """Poll a condition on another process's log: there is no event to wait on."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - a file written by another process
            await asyncio.sleep(0.1)


@pytest.fixture
def server_process(tmp_path):
    port = free_port()
    config = tmp_path / "townhall.toml"
    config.write_text(CONFIG.format(data=tmp_path / "var", port=port, hours=ALWAYS_OPEN), "utf-8")
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config", str(config), "serve"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "REDIS_URL": ""})
    try:
        wait_until_healthy(proc, port, log.read_text)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_pages_coming_and_going_leave_nothing_for_the_full_collection(server_process):
    url, log = server_process

    def collections() -> list[tuple[datetime, int]]:
        return [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), int(m.group(2)))
                for m in FULL.finditer(log.read_text("utf-8"))]

    tickets = [await join(url) for _ in range(20)]
    for _ in range(2):  # the second round reconnects the same tickets, as a reload or a storm does
        pages = [await citizen_socket(url, t["token"]) for t in tickets]
        for p in pages:
            await p.wait_for("queue")
            await p.wait_for("ticket")
        answered = await pages[0].call("leave")  # a transition, an acknowledgement, events to the others
        assert answered["ok"]
        for p in pages:
            await p.close()
        tickets = tickets[1:]
    for t in tickets[:10]:  # pages that vanish without a websocket closing handshake
        await _page_lost(url, t["token"])
    # A closed page's engine.io socket stays referenced by its ping task for one more ping interval;
    # after that, only a reference cycle would keep its objects for a full collection to find.
    closed = datetime.now()
    settled = closed + timedelta(seconds=PING_INTERVAL + 1.0)
    await _until(lambda: sum(1 for at, _ in collections() if at > settled) >= 2)
    freed = [n for at, n in collections() if at > closed]
    assert not any(freed), log.read_text("utf-8")[-3000:]
    text = log.read_text("utf-8")
    assert "POST /api/departments/buergerbuero/tickets" in text  # the access log is on ...
    assert "/socket.io/" not in text  # ... without a line per page socket


async def _page_lost(url: str, token: str) -> None:
    """A page that is closed and gone at once (a killed tab, a phone losing its network): its close frame
    and the end of its TCP connection in one segment, from a plain blocking socket, so that nothing closes
    politely. Whether the server reads both before its websocket task runs depends on timing; the case
    where it does (aiohttp then keeps an error that holds the response in a cycle) is made certain in
    tests/test_managers.py."""
    host, port = url.removeprefix("http://").split(":")

    def page() -> None:
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
            seen = b""
            while b'"sid"' not in seen:  # engine.io OPEN
                seen += sock.recv(65536)
            text = ("40" + json.dumps({"token": token})).encode()
            assert len(text) < 126
            sock.sendall(bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text)  # masked with a zero key
            while not (b"40{" in seen and b'"queue"' in seen):  # CONNECT accepted, the page's state arrived
                seen += sock.recv(65536)
            # The close frame and the end of the connection in one TCP segment (corked, then FIN).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            sock.sendall(CLOSE_FRAME)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # until the server has closed its side
                pass

    await asyncio.to_thread(page)


def test_full_gc_interval_must_be_positive(tmp_path):
    config = tmp_path / "t.toml"
    config.write_text("[server]\nfull_gc_interval = 0\n\n[[departments]]\nid = \"a\"\nname = \"A\"\n", "utf-8")
    with pytest.raises(ConfigError, match="full_gc_interval"):
        load_settings(config, env={})


class _Node:
    pass


def cycle() -> weakref.ref[_Node]:
    """Two objects that only a collection frees; the weak reference tells whether one did."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    return weakref.ref(a)


@pytest.fixture
def manual_gc(monkeypatch) -> Iterator[None]:
    """Automatic collection off, as in the server; frozen objects thawed and collection back on after; no
    burst seen yet."""
    monkeypatch.setattr(gcpolicy, "_burst_until", float("-inf"))
    enabled = gc.isenabled()
    gc.disable()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_young_collection_scans_a_few_objects_and_freezes_a_burst_unscanned(monkeypatch, manual_gc):
    """Below YOUNG_SCAN_LIMIT young objects a young collection frees a fresh cycle; above it (a reconnect
    storm's burst) it only freezes them, and the full collection frees the cycle later."""
    monkeypatch.setattr(gcpolicy, "YOUNG_SCAN_LIMIT", 1000)
    gc.collect()
    skipped = gcpolicy.skipped_scans
    small = cycle()
    gcpolicy.young_collection()
    assert small() is None and gcpolicy.skipped_scans == skipped

    burst = [[i] for i in range(5000)]
    big = cycle()
    gcpolicy.young_collection()
    assert big() is not None and gcpolicy.skipped_scans == skipped + 1
    freed, _seconds = gcpolicy.full_collection()
    assert big() is None and freed >= 2
    del burst


def test_young_collection_does_not_trust_a_count_that_deaths_brought_to_zero_nor_scans_when_late(
        monkeypatch, manual_gc):
    """CPython's young count is allocations minus deallocations of any generation: old objects dying (pages
    closing) bring it to 0 while the young generation is full (a bench run scanned 100,000-290,000 young
    objects so, stopping the loop for up to 100 ms). A count of 0 and a late collection scan nothing."""
    old = [[i] for i in range(1000)]
    gc.collect()
    gc.freeze()  # as in the server: what survived is frozen
    skipped = gcpolicy.skipped_scans
    young = [[i] for i in range(500)]  # young objects the count knows of ...
    hidden = cycle()
    assert len(gc.get_objects(0)) >= 500
    del old  # ... until 1,000 old ones die: the count says 0 (nothing may allocate between these lines)
    gcpolicy.young_collection()
    assert hidden() is not None and gcpolicy.skipped_scans == skipped  # frozen unscanned, not counted
    assert len(gc.get_objects(0)) == 0

    late = cycle()
    gcpolicy.young_collection(late=True, now=1000.0)
    assert late() is not None and gcpolicy.skipped_scans == skipped + 1
    on_time = cycle()
    gcpolicy.young_collection(now=1000.0 + gcpolicy.YOUNG_BURST)
    assert on_time() is None  # a few objects, on time, the burst over: scanned, the cycle freed

    # A small positive count over a large young generation: its size decides.
    monkeypatch.setattr(gcpolicy, "YOUNG_SCAN_LIMIT", 1000)
    old = [[i] for i in range(3000)]
    gc.freeze()
    many = [[i] for i in range(2990)]
    crowded = cycle()
    del old  # the count: 2,990 young objects + the cycle, minus 3,000 old ones... clamped, then a few
    spare = [[i] for i in range(5)]  # ... allocated: a count of about 5 over some 3,000 young objects
    assert 0 < gc.get_count()[0] <= 1000
    gcpolicy.young_collection(now=2000.0)
    assert crowded() is not None and gcpolicy.skipped_scans == skipped + 2
    del many, spare
    gcpolicy.full_collection()
    assert hidden() is None and late() is None and crowded() is None
    del young



def test_after_a_burst_young_collections_neither_list_nor_scan_for_a_while(monkeypatch, manual_gc):
    """A reconnect storm lasts seconds and its young generation is large at every collection: once one
    collection saw the burst, those of the next YOUNG_BURST seconds freeze without listing the young objects
    (listing them cost as much as scanning them); then scanning resumes."""
    monkeypatch.setattr(gcpolicy, "YOUNG_SCAN_LIMIT", 1000)
    listed = []
    real = gc.get_objects
    monkeypatch.setattr(gcpolicy.gc, "get_objects", lambda *a: listed.append(a) or real(*a))
    gc.collect()
    gc.freeze()
    skipped = gcpolicy.skipped_scans
    burst = [[i] for i in range(5000)]
    gcpolicy.young_collection(now=10.0)
    assert gcpolicy.skipped_scans == skipped + 1
    del burst
    in_burst = cycle()
    gcpolicy.young_collection(now=10.0 + gcpolicy.YOUNG_BURST / 2)
    assert in_burst() is not None and gcpolicy.skipped_scans == skipped + 2
    assert listed == []  # the burst was told by the count, the one in it by the time: nothing listed
    after = cycle()
    gcpolicy.young_collection(now=10.0 + gcpolicy.YOUNG_BURST)
    assert after() is None and gcpolicy.skipped_scans == skipped + 2
    assert listed == [(0,)]  # a small count, on time: its real size was looked at, then it was scanned
    gcpolicy.full_collection()
    assert in_burst() is None
