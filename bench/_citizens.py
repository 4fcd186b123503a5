"""One client process of the queue bench: a share of the simulated citizens.

Each citizen joins over HTTP, then holds a socket and behaves like a waiting page: it computes its
position from every ``queue`` update (decode the delta-encoded seqs, find its own seq), notes when its
``ticket`` says it was called, and closes its page once the ticket is done (a new citizen then joins in
its place, so that queues stay full).

Two socket clients, both real socket.io clients on a real websocket:

- ``lean`` (default): ``LeanPage``, a minimal socket.io v5 / engine.io v4 client on its own websocket
  client (RFC 6455 on an asyncio transport; ``/socket.io/?EIO=4&transport=websocket``): the open
  packet, ``40{auth}`` and its answer ``40{sid}`` or ``44{error}``, ping ``2`` answered with ``3``,
  events ``42[...]``. No task per page or per message; the server does exactly the protocol work it
  does for a browser.
- ``socketio``: python-socketio's ``AsyncClient`` (websocket transport only), about three times the
  client CPU per page (a read task, a write task and a task per received event).

The process is driven by the bench over a pipe: commands in, reports out. It records receipt times
with ``time.time()``; the bench compares them with its own stamps (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import gc
import hashlib
import json
import logging
import os
import random
import resource
import signal
import ssl
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import socketio

FINAL = frozenset({"done", "no_show", "left", "expired"})
CLIENTS = ("lean", "socketio")
CONNECT_TIMEOUT = 60.0
CONNECT_ATTEMPTS = 3
REPLACERS = 8
JOIN_SOURCES = 8
"""Behind the proxy: loopback addresses a process joins from (its join connections take turns)."""
LAG_TICK = 0.005
"""Concurrent replacement joins per process (bounds the background work during the steady phase)."""


class SharedJson:
    """``json`` for this process's socket.io clients: one broadcast text reaches thousands of simulated
    pages here, so each distinct text is parsed once (a browser parses it once per page, on its own
    core). Handlers must not mutate what they receive."""

    dumps = staticmethod(json.dumps)

    def __init__(self, size: int = 256) -> None:
        self._parsed: dict[str, Any] = {}
        self._size = size

    def loads(self, text: str) -> Any:
        value = self._parsed.get(text)
        if value is None:
            value = json.loads(text)
            if len(self._parsed) >= self._size:
                self._parsed.clear()
            self._parsed[text] = value
        return value


SHARED_JSON = SharedJson()


class ConnectFailed(Exception):
    """A lean page's connect did not reach socket.io CONNECT (refused, closed, or no open packet)."""


class LeanPage(asyncio.Protocol):
    """One waiting page's socket: a websocket client (RFC 6455) straight on an asyncio transport, with
    the socket.io / engine.io protocol on top (``Worker._on_text``). No task per page and no aiohttp
    client machinery: per connect and per frame the load generator costs a fraction of what aiohttp's
    client does, so that a reconnect storm measures the server, not this process. ``disconnect()``
    sends a close frame and closes the connection, the way a closing or reloading page does (no
    socket.io DISCONNECT packet first)."""

    def __init__(self, on_text: Any, key: bytes) -> None:
        self.on_text = on_text
        self.key = base64.b64encode(key)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.connected = False
        self.closing = False
        self.closed = False
        self.lost = False
        """The connection ended while connected without this page asking (the server or the proxy closed it,
        or no ping came): what a citizen would see as a lost connection."""
        self.last_rx = time.monotonic()
        self.ping_interval = 25.0
        self.ping_timeout = 20.0

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def handshake(self, host: str, port: int, path: str) -> None:
        assert self.transport is not None
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[:end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if " 101 " not in head[0] + " " or headers.get("sec-websocket-accept") != accept:
                self.fail()
                return
            self.upgraded = True
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + n:
                return
            payload = bytes(buf[at:at + n])
            del buf[:at + n]
            if opcode == 0x1:  # text (the server sends each message in one frame)
                self.last_rx = time.monotonic()
                self.on_text(self, payload.decode())
            elif opcode == 0x8:  # close
                self.fail()
                return
            elif opcode == 0x9:  # ping
                self._send(0xA, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.connected and not self.closing:
            self.lost = True
        self.connected = False
        if not self.ready.done():
            self.ready.set_result(False)

    # -- the page --
    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.transport.write(header + mask + masked)

    def send_str(self, text: str) -> None:
        self._send(0x1, text.encode())

    def fail(self) -> None:
        """The server closed or refused the socket: end this page."""
        if self.connected and not self.closing:
            self.lost = True
        self.connected = False
        if not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.close()

    async def disconnect(self) -> None:
        self.closing = True
        self.connected = False
        if not self.closed:
            self._send(0x8, (1000).to_bytes(2, "big"))
            if self.transport is not None:
                self.transport.close()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
QUEUE_PREFIX = '42["queue",'
ENGINEIO_PATH = "/socket.io/?EIO=4&transport=websocket"
"""The engine.io websocket endpoint, straight to the websocket transport (no polling first)."""


@dataclass
class Citizen:
    department: str
    token: str = ""
    ticket_id: str = ""
    seq: int = 0
    state: str = "new"
    client: socketio.AsyncClient | LeanPage | None = None
    position: int | None = None
    last_queue_t: float = 0.0
    missed: bool = False
    """The last ``queue`` update applied did not list this page's seq while it was waiting."""
    has_ticket: bool = False
    has_queue: bool = False
    source: str | None = None
    """The loopback address the page connects from (behind the proxy: one per page), None: the default."""


@dataclass
class QueueMessage:
    """One ``queue`` update of a department (identical for all its pages), as seen by this process.
    ``receivers`` and ``last`` count broadcasts only, not the update a page gets alone on connect."""

    head: int | None
    seqs: list[int] | None
    receivers: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class Worker:
    conn: Connection
    url: str
    departments: list[str]
    join_concurrency: int
    connect_concurrency: int
    replace: bool
    client_kind: str = "lean"
    spread: int | None = None
    """Behind the proxy (which routes by client address): this process's number; each page then connects
    from its own loopback address 127.<10 + spread>.x.y (all of 127/8 is loopback on Linux), as citizens
    come from many addresses, and the URL is https (certificate not checked)."""
    citizens: list[Citizen] = field(default_factory=list)
    made: int = 0
    join_sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    _tls: ssl.SSLContext | None = None
    messages: dict[tuple[str, float], QueueMessage] = field(default_factory=dict)
    called: list[tuple[str, float, float]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    ready_since: float = 0.0
    ready_count: int = 0
    last_ready: float = 0.0
    replacing: bool = False
    http: aiohttp.ClientSession | None = None
    ws_http: aiohttp.ClientSession | None = None
    replacements: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    storm_pages: list[Citizen] = field(default_factory=list)
    ready_target: int = 0
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)
    lags: list[tuple[float, float]] = field(default_factory=list)
    """(time, seconds late) of this process's own event loop, sampled every LAG_TICK: the load generator's
    lag adds to every latency the pages measure."""
    queue_texts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Lean client: the decoded ``queue`` update by its raw frame text (one text reaches every page of
    a department in this process; each text is parsed once)."""

    @property
    def address(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the proxy's throwaway certificate
        return context

    def new_citizen(self, department: str) -> Citizen:
        c = Citizen(department)
        if self.spread is not None:
            k = self.made % 62000
            c.source = f"127.{10 + self.spread}.{k // 250}.{k % 250 + 1}"
        self.made += 1
        return c

    # -- one citizen --
    async def join(self, c: Citizen) -> None:
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                http = self.join_sessions[self.made % len(self.join_sessions)] if self.join_sessions else self.http
                async with http.post(f"{self.url}/api/departments/{c.department}/tickets",
                                          json={"consent": True, "language": "de"}) as resp:
                    body = await resp.json()
                    if resp.status == 201:
                        c.token, c.ticket_id = body["token"], body["ticket"]["id"]
                        c.seq, c.state = body["ticket"]["seq"], body["ticket"]["state"]
                        self.counters["joins"] += 1
                        return
                    self.counters[f"join_{resp.status}"] += 1
            except (TimeoutError, aiohttp.ClientError):
                self.counters["join_errors"] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError("join failed")

    def _make_client(self, c: Citizen) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=self.ws_http,
                                      json=SHARED_JSON)
        client.on("ticket", lambda data: self.on_ticket(c, data, time.time()))
        client.on("queue", lambda data: self.on_queue(c, data, time.time()))
        return client

    async def connect(self, c: Citizen) -> bool:
        """Open the citizen's page socket (same token on a reconnect), retrying like a page would."""
        c.has_ticket = c.has_queue = False
        if self.client_kind == "lean":
            return await self._connect_lean(c)
        for attempt in range(CONNECT_ATTEMPTS):
            c.client = self._make_client(c)
            try:
                await c.client.connect(self.url, auth={"token": c.token}, transports=["websocket"],
                                       wait_timeout=CONNECT_TIMEOUT)
                return True
            except (TimeoutError, socketio.exceptions.ConnectionError, OSError):
                self.counters["connect_retries"] += 1
                with contextlib.suppress(Exception):
                    await c.client.disconnect()
                await asyncio.sleep(random.uniform(0.5, 1.5) * (attempt + 1))
        self.counters["connect_failures"] += 1
        return False

    # -- the lean client --
    async def _connect_lean(self, c: Citizen) -> bool:
        loop = asyncio.get_running_loop()
        host, port = self.address
        for attempt in range(CONNECT_ATTEMPTS):
            page: LeanPage | None = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, page = await loop.create_connection(
                        lambda: LeanPage(lambda p, text: self._on_text(c, p, text), os.urandom(16)), host, port,
                        ssl=self._tls, server_hostname=host if self._tls else None,
                        local_addr=(c.source, 0) if c.source else None)
                    c.client = page
                    page.handshake(host, port, ENGINEIO_PATH)
                    if await page.ready:
                        return True
                    raise ConnectFailed
            except (TimeoutError, ConnectFailed, OSError):
                self.counters["connect_retries"] += 1
                if page is not None:
                    await page.disconnect()
                await asyncio.sleep(random.uniform(0.5, 1.5) * (attempt + 1))
        self.counters["connect_failures"] += 1
        return False

    def _on_text(self, c: Citizen, page: LeanPage, text: str) -> None:
        """One engine.io packet of a page, in order. Pings are answered at once; the work per ``queue``
        frame is a dict lookup and the page's own bisect."""
        try:
            if text.startswith(QUEUE_PREFIX):
                data = self.queue_texts.get(text)
                if data is None:
                    data = json.loads(text[2:])[1]
                    if len(self.queue_texts) >= 256:
                        self.queue_texts.clear()
                    self.queue_texts[text] = data
                self.on_queue(c, data, time.time())
            elif text == "2":  # engine.io ping
                page.send_str("3")
            elif text.startswith("42"):
                self._lean_event(c, text, time.time())
            elif text.startswith("0"):  # engine.io open: {"sid", "upgrades", "pingInterval", "pingTimeout"}
                opened = json.loads(text[1:])
                page.ping_interval = opened["pingInterval"] / 1000
                page.ping_timeout = opened["pingTimeout"] / 1000
                page.send_str("40" + json.dumps({"token": c.token}, separators=(",", ":")))
            elif text.startswith("40"):  # socket.io CONNECT answered: {"sid": ...}
                page.connected = True
                if not page.ready.done():
                    page.ready.set_result(True)
            elif text.startswith("44"):  # connect_error: {"message": ...}
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    self.counters[f"connect_error: {json.loads(text[2:]).get('message')}"] += 1
                page.fail()
            elif text.startswith(("41", "1")):  # socket.io DISCONNECT from the server / engine.io close
                self.counters["lean: closed by the server"] += 1
                page.fail()
        except Exception as e:  # noqa: BLE001 - count and end this page, like a client error
            self.counters[f"lean: {type(e).__name__}"] += 1
            page.fail()

    def _lean_event(self, c: Citizen, text: str, now: float) -> None:
        body = text[2:]
        if not body.startswith("["):  # an ack id before the array (not used by the server's emits)
            body = body.lstrip("0123456789")
        event, *args = json.loads(body)
        if event == "ticket":
            self.on_ticket(c, args[0], now)
        elif event == "queue":
            self.on_queue(c, args[0], now)
        else:
            self.counters[f"lean: event {event}"] += 1

    async def young_collections(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            gc.collect(1)

    async def lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            late = loop.time() - due
            if late > 0.002:
                self.lags.append((time.time(), late))

    async def watchdog(self) -> None:
        """Like python-socketio's client, give up a page that has heard nothing (not even a ping) for
        ping interval + ping timeout: one sweep a second for the whole process, no timer per page."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for c in self.citizens:
                page = c.client
                if (isinstance(page, LeanPage) and page.connected
                        and now - page.last_rx > page.ping_interval + page.ping_timeout):
                    self.counters["lean: no ping for interval + timeout, page closed"] += 1
                    page.connected = False
                    page.lost = True
                    asyncio.get_running_loop().create_task(page.disconnect())

    # -- what a page does with its events (both clients) --
    def on_ticket(self, c: Citizen, data: dict[str, Any], now: float) -> None:
        state = data.get("state")
        if state == "called" and c.state != "called":
            self.called.append((data["id"], now, data.get("called_at") or 0.0))
            if c.missed:  # the update that left it out came just before its call (the ticket event is later)
                self.counters["waiting_but_not_in_queue, then called"] += 1
        c.state = state or c.state
        if state in FINAL:
            self.counters[f"final_{state}"] += 1
            if c.client is not None:
                asyncio.get_running_loop().create_task(self._close_page(c))
            return
        if not c.has_ticket:
            c.has_ticket = True
            self._maybe_ready(c, now)

    def on_queue(self, c: Citizen, data: dict[str, Any], now: float) -> None:
        key = (data["d"], data["t"])
        msg = self.messages.get(key)
        if msg is None:
            seqs = list(accumulate(data["w"]))
            msg = self.messages[key] = QueueMessage(seqs[0] if seqs else None, seqs, 0, now, 0.0)
        elif msg.seqs is None:
            msg.seqs = list(accumulate(data["w"]))
        if c.has_queue:  # a broadcast; the first update after connecting is sent to this page alone
            msg.receivers += 1
            msg.last = max(msg.last, now)
        if data["t"] < c.last_queue_t:
            # Older than the update the page holds (another node's broadcast made before the update this page
            # got on connecting): the page keeps the newer, as web/static/js/wait.js does.
            self.counters["queue_older_than_held_ignored"] += 1
        else:
            # The page's own work: its position among the waiting seqs.
            i = bisect.bisect_left(msg.seqs, c.seq)
            c.position = i + 1 if i < len(msg.seqs) and msg.seqs[i] == c.seq else None
            c.last_queue_t = data["t"]
            c.missed = c.position is None and c.state == "waiting"
            if c.missed:
                self.counters["waiting_but_not_in_queue"] += 1
        if not c.has_queue:
            c.has_queue = True
            self._maybe_ready(c, now)

    def _maybe_ready(self, c: Citizen, now: float) -> None:
        if c.has_ticket and c.has_queue:
            self.ready_count += 1
            self.last_ready = now
            if self.ready_count >= self.ready_target:
                self.all_ready.set()

    async def _close_page(self, c: Citizen) -> None:
        client, c.client = c.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()
        if self.replace and self.replacing:
            await self.replacements.put(c.department)

    async def replacer(self) -> None:
        while True:
            department = await self.replacements.get()
            if not self.replacing:
                continue
            c = self.new_citizen(department)
            try:
                await self.join(c)
                self.citizens.append(c)
                if await self.connect(c):
                    self.counters["replaced"] += 1
            except Exception:  # noqa: BLE001 - count and go on; the report shows it
                self.counters["replace_errors"] += 1

    # -- phases --
    async def populate(self, departments: list[str]) -> dict[str, Any]:
        started = time.time()
        join_gate = asyncio.Semaphore(self.join_concurrency)
        connect_gate = asyncio.Semaphore(self.connect_concurrency)
        joined_at: list[float] = []

        async def one(department: str) -> None:
            c = self.new_citizen(department)
            async with join_gate:
                await self.join(c)
            joined_at.append(time.time())
            self.citizens.append(c)
            async with connect_gate:
                await self.connect(c)

        self.ready_count = 0
        await asyncio.gather(*(one(d) for d in departments), return_exceptions=True)
        await self._wait_ready(len(self.citizens), 30.0)
        gc.collect()
        gc.freeze()  # thousands of pages' objects: out of the collector's way, as in the server
        return {"started": started, "joined": len(joined_at), "last_join": max(joined_at, default=started),
                "ready": self.ready_count, "last_ready": self.last_ready, "connected": self.connected()}

    def connected(self) -> int:
        return sum(1 for c in self.citizens if c.client is not None and c.client.connected)

    async def _wait_ready(self, count: int, seconds: float) -> None:
        """Until ``count`` pages have their ticket and queue, or ``seconds`` have passed."""
        self.ready_target = count
        if self.ready_count < count:
            self.all_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_ready.wait(), seconds)

    def waiting(self) -> list[Citizen]:
        return [c for c in self.citizens if c.client is not None and c.state == "waiting"]

    async def storm_disconnect(self) -> dict[str, Any]:
        self.replacing = False
        pages = self.waiting()
        started = time.time()
        await asyncio.gather(*(c.client.disconnect() for c in pages if c.client), return_exceptions=True)
        self.storm_pages = pages
        return {"pages": len(pages), "started": started, "done": time.time()}

    async def storm_reconnect(self) -> dict[str, Any]:
        pages = self.storm_pages
        self.ready_count = 0
        retries_before = self.counters["connect_retries"]
        failures_before = self.counters["connect_failures"]
        started = time.time()
        await asyncio.gather(*(self.connect(c) for c in pages), return_exceptions=True)
        await self._wait_ready(len(pages), 30.0)
        return {"pages": len(pages), "started": started, "ready": self.ready_count, "last_ready": self.last_ready,
                "retries": self.counters["connect_retries"] - retries_before,
                "failures": self.counters["connect_failures"] - failures_before}

    def measurement(self, since: float) -> dict[str, Any]:
        """What the bench needs after the steady phase; older seq lists are dropped to bound memory."""
        latest: dict[str, float] = {}
        for (d, t), m in self.messages.items():
            if m.receivers:
                latest[d] = max(latest.get(d, 0.0), t)
        report = {
            "messages": [(d, t, m.head, m.receivers, m.first, m.last) for (d, t), m in self.messages.items()
                         if t >= since - 5 and m.receivers],
            "called": [x for x in self.called if x[1] >= since - 5],
            "lags": [lag for t, lag in self.lags if t >= since],
            "stale_pages": sum(1 for c in self.waiting() if c.last_queue_t < latest.get(c.department, 0.0)),
            "waiting_pages": len(self.waiting()),
            "connected": self.connected(),
            # Pages that lost their connection (not closed by the bench), apart from the pages closed because
            # their citizen's visit ended and not replaced yet: both lower "connected".
            "lost": sum(1 for c in self.citizens if isinstance(c.client, LeanPage) and c.client.lost),
            "counters": dict(self.counters),
        }
        for m in self.messages.values():
            m.seqs = None
        return report

    async def close_all(self) -> None:
        self.replacing = False
        clients = [c.client for c in self.citizens if c.client is not None]
        await asyncio.wait_for(asyncio.gather(*(cl.disconnect() for cl in clients), return_exceptions=True), 30)

    async def serve(self) -> None:
        """Answer the bench's commands until it says stop (or the pipe closes)."""
        loop = asyncio.get_running_loop()
        self._tls = self.tls
        tls: Any = False if self._tls else None
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.join_concurrency, ssl=tls))
        self.ws_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=tls))
        if self.spread is not None:
            self.join_sessions = [
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    limit=max(1, self.join_concurrency // JOIN_SOURCES), ssl=tls,
                    local_addr=(f"127.{10 + self.spread}.255.{k + 1}", 0)))
                for k in range(JOIN_SOURCES)]
        replacers = [loop.create_task(self.replacer()) for _ in range(REPLACERS)]
        replacers.append(loop.create_task(self.lag_monitor()))
        replacers.append(loop.create_task(self.young_collections()))
        if self.client_kind == "lean":
            replacers.append(loop.create_task(self.watchdog()))
        try:
            while True:
                command, arg = await _receive(self.conn)
                if command == "stop":
                    break
                if command == "populate":
                    result: Any = await self.populate(arg)
                elif command == "steady":
                    self.called.clear()
                    self.replacing = True
                    result = {"ok": True}
                elif command == "measure":
                    self.replacing = False
                    result = self.measurement(arg)
                elif command == "storm_disconnect":
                    result = await self.storm_disconnect()
                elif command == "storm_reconnect":
                    result = await self.storm_reconnect()
                else:
                    result = {"error": f"unknown command {command}"}
                self.conn.send(result)
        finally:
            for t in replacers:
                t.cancel()
            with contextlib.suppress(Exception):
                await self.close_all()
            await self.http.close()
            await self.ws_http.close()
            for session in self.join_sessions:
                await session.close()


class _CountingHandler(logging.Handler):
    def __init__(self, counters: Counter[str]) -> None:
        super().__init__(logging.ERROR)
        self.counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        self.counters[f"client log: {record.getMessage()[:60]}"] += 1


async def _receive(conn: Connection) -> tuple[str, Any]:
    loop = asyncio.get_running_loop()
    while not conn.poll():
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), lambda f=readable: f.done() or f.set_result(None))
        try:
            await asyncio.wait_for(readable, 1.0)
        except TimeoutError:
            if os.getppid() == 1:  # the bench is gone
                return ("stop", None)
        finally:
            loop.remove_reader(conn.fileno())
    try:
        message = conn.recv()
    except EOFError:
        return ("stop", None)
    command, arg = message
    return command, arg


def run(conn: Connection, url: str, departments: list[str], join_concurrency: int, connect_concurrency: int,
        replace: bool, client_kind: str = "lean", spread: int | None = None) -> None:
    """Process entry point (spawned by the bench)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench handles Ctrl-C and tells us to stop
    from _server import die_with_parent

    die_with_parent()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The load generator must not stall its pages: the same collector policy as the server (server/gcpolicy.py);
    # CPython's own full collections over thousands of pages' objects took up to 0.7 s here too.
    gc.disable()
    worker = Worker(conn, url, departments, join_concurrency, connect_concurrency, replace, client_kind, spread)
    for name in ("engineio.client", "socketio.client"):
        # Count the clients' own error reports (e.g. "packet queue is empty, aborting": a page gave up
        # after hearing nothing for ping interval + 5 s) instead of printing thousands of lines.
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        logger.propagate = False
        logger.addHandler(_CountingHandler(worker.counters))
    try:
        asyncio.run(worker.serve())
    finally:
        conn.close()
