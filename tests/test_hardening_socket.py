"""Probing the socket.io endpoint from outside, as a broken or hostile client would, with raw engine.io
clients on real sockets: sessions that never send the socket.io CONNECT, refused CONNECTs, oversized
long-polling posts, and tickets whose page never connected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp

from server.app import SIGNALING
from server.signaling import engineio_ws

from .socket_clients import WAIT, citizen_socket, join

EIO = "/socket.io/?EIO=4"
PROMPT = 5.0
"""An answer that is due at once: generous for a loaded machine, far below anything that hangs."""


async def next_engineio_packet(ws: aiohttp.ClientWebSocketResponse) -> str | None:
    """The next engine.io packet the server sends (pings answered, as a live page does); None once the
    server has closed the websocket."""
    while True:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return None
        if msg.data == "2":
            await ws.send_str("3")
            continue
        return msg.data


async def open_websocket(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await http.ws_connect(f"{url}{EIO}&transport=websocket")
    opened = await next_engineio_packet(ws)
    assert opened is not None and opened.startswith("0"), opened
    return ws, json.loads(opened[1:])["sid"]


async def packet_starting(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    """The next engine.io packet that starts with ``prefix`` (others skipped); fails if the server closes."""
    while True:
        packet = await asyncio.wait_for(next_engineio_packet(ws), WAIT)
        assert packet is not None, f"the server closed the websocket before a packet {prefix!r}"
        if packet.startswith(prefix):
            return packet


async def citizen_page(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientWebSocketResponse:
    """A websocket connected to socket.io as the ticket's page."""
    ws, _ = await open_websocket(http, url)
    await ws.send_str("40" + json.dumps({"token": token}))
    await packet_starting(ws, "40")
    return ws


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    """Every engine.io packet up to the server's close of the websocket."""
    packets = []
    while (p := await next_engineio_packet(ws)) is not None:
        packets.append(p)
    return packets


def session_gone(live_server, eio_sid: str) -> bool:
    sio = live_server.app[SIGNALING].sio
    socket = sio.eio.sockets.get(eio_sid)
    return (socket is None or socket.closed) and eio_sid not in sio.environ


async def test_a_session_that_never_sends_connect_is_closed_at_the_deadline(live_server, monkeypatch):
    """A client that opens the engine.io transport and answers pings but never sends ``40`` used to hold
    its session (and a connection) for ever."""
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 0.5)
    async with aiohttp.ClientSession() as http:
        ws, eio_sid = await open_websocket(http, live_server.url)
        started = time.monotonic()
        async with asyncio.timeout(10):
            packets = await until_closed(ws)
        waited = time.monotonic() - started
    assert packets == ["1"]  # engine.io's CLOSE, then the websocket's close
    assert session_gone(live_server, eio_sid)
    print(f"closed {waited:.2f} s after the open packet (deadline 0.5 s)")


async def test_a_frame_that_is_no_engineio_packet_ends_the_session_without_a_traceback(live_server, clients, caplog):
    """A connected page's websocket sends text that is no engine.io packet: the session ends at once (as
    engine.io's own handler does), nothing is logged as an error (a client must not fill the log with
    tracebacks), and other pages go on."""
    joined = [await join(live_server.url) for _ in range(2)]
    other = await citizen_socket(live_server.url, joined[1]["token"])
    clients.append(other)
    async with aiohttp.ClientSession() as http:
        for garbage in ("", "x1", "7", "8x", "9abc"):  # 7-9: no packet type either (engine.io's are 0-6)
            ws = await citizen_page(http, live_server.url, joined[0]["token"])
            await ws.send_str(garbage)
            async with asyncio.timeout(PROMPT):
                await until_closed(ws)
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text[-2000:]
    assert (await other.call("subscribe"))["ok"]


async def test_a_polling_session_that_never_sends_connect_is_closed_at_the_deadline(live_server, monkeypatch):
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 0.5)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{live_server.url}{EIO}&transport=polling")
        assert resp.status == 200
        eio_sid = json.loads((await resp.text())[1:])["sid"]
        async with asyncio.timeout(10):  # the long poll ends with the CLOSE packet at the deadline
            resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
            body = await resp.text()
        assert (resp.status, body) == (200, "1")
        resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
        assert resp.status == 400  # the session is gone
    assert session_gone(live_server, eio_sid)


async def test_a_refused_connect_closes_the_session_at_once(live_server, monkeypatch):
    """A CONNECT with a bad token is refused with ``44`` and the transport closed right after, without
    waiting for the deadline (set far away here)."""
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 60.0)
    async with aiohttp.ClientSession() as http:
        ws, eio_sid = await open_websocket(http, live_server.url)
        await ws.send_str("40" + json.dumps({"token": "x" * 24}))
        async with asyncio.timeout(PROMPT):
            packets = await until_closed(ws)
    assert len(packets) == 2 and packets[1] == "1", packets
    assert packets[0].startswith("44") and json.loads(packets[0][2:])["message"] == "ticket_not_found"
    assert session_gone(live_server, eio_sid)


async def test_a_staff_connect_without_a_session_closes_the_session_at_once(live_server, monkeypatch):
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 60.0)
    async with aiohttp.ClientSession() as http:
        ws, eio_sid = await open_websocket(http, live_server.url)
        await ws.send_str("40")
        async with asyncio.timeout(PROMPT):
            packets = await until_closed(ws)
    assert [p[:2] for p in packets] == ["44", "1"], packets
    assert session_gone(live_server, eio_sid)


async def test_a_connected_page_outlives_the_deadline(live_server, clients, monkeypatch):
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 0.3)
    checked = engineio_ws.deadlines["kept"]
    ticket = await join(live_server.url)
    page = await citizen_socket(live_server.url, ticket["token"])
    clients.append(page)

    async def until_checked() -> None:
        while engineio_ws.deadlines["kept"] <= checked:  # noqa: ASYNC110 - a counter, no event to wait on
            await asyncio.sleep(0.02)

    await asyncio.wait_for(until_checked(), WAIT)
    ack = await page.call("subscribe")
    assert ack["ok"] and page.client.connected


async def test_an_oversized_polling_post_is_refused_at_once(live_server):
    """Larger than ``max_socket_message_bytes``: engine.io refused it but then waited for a long poll to
    collect its CLOSE packet, so the POST hung without an answer (and kept a stopping server alive)."""
    cap = live_server.app[SIGNALING].settings.max_socket_message_bytes
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{live_server.url}{EIO}&transport=polling")
        eio_sid = json.loads((await resp.text())[1:])["sid"]
        started = time.monotonic()
        async with asyncio.timeout(PROMPT):
            resp = await http.post(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}",
                                   data=b"4" + b"x" * cap, headers={"Content-Type": "text/plain"})
            await resp.read()
        answered = time.monotonic() - started
        assert resp.status == 400
        resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
        assert resp.status == 400  # the session is gone
    print(f"oversized POST answered in {answered * 1000:.1f} ms")


async def test_a_polling_post_of_no_known_packet_type_ends_the_session_without_a_traceback(live_server, caplog):
    """As on the websocket: a long-polling POST of packet type 7-9 ends the session with a 400 (review: engine.io
    looked its name up and logged an IndexError traceback per POST)."""
    async with aiohttp.ClientSession() as http:
        for body in (b"7", b"9abc"):
            resp = await http.get(f"{live_server.url}{EIO}&transport=polling")
            eio_sid = json.loads((await resp.text())[1:])["sid"]
            async with asyncio.timeout(PROMPT):
                resp = await http.post(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}", data=body,
                                       headers={"Content-Type": "text/plain"})
                await resp.read()
            assert resp.status == 400, body
            resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
            assert resp.status == 400  # the session is gone
    assert not [r for r in caplog.records if r.exc_info], caplog.text[-2000:]  # no traceback


async def test_frames_of_a_namespace_never_joined_log_nothing(live_server, caplog):
    """python-socketio warns once per such frame, with the namespace's text: anyone could fill the log and forge
    lines in it (review). The libraries log errors only."""
    import logging

    caplog.set_level(logging.DEBUG)
    joined = await join(live_server.url)
    async with aiohttp.ClientSession() as http:
        ws = await citizen_page(http, live_server.url, joined["token"])
        for _ in range(20):
            await ws.send_str('42/x\n2026-12-01 10:00:00 WARNING sprechstunde.auth: forged,["x"]')
        await ws.send_str('428["subscribe",{}]')  # answered in order, after those frames
        assert json.loads((await packet_starting(ws, "438"))[3:])[0]["ok"] is True
        await ws.close()
    assert "forged" not in caplog.text


async def test_a_refused_polling_connect_is_told_then_closed_at_the_deadline(live_server, monkeypatch):
    """Long-polling: the refusal reaches the client with its next GET (closing at once would swallow it),
    the session ends at the deadline. Also: a POST within the cap is still taken."""
    monkeypatch.setattr(engineio_ws, "CONNECT_DEADLINE", 1.0)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{live_server.url}{EIO}&transport=polling")
        eio_sid = json.loads((await resp.text())[1:])["sid"]
        resp = await http.post(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}", data=b"40",
                               headers={"Content-Type": "text/plain"})
        assert (resp.status, await resp.text()) == (200, "OK")
        async with asyncio.timeout(PROMPT):  # the staff CONNECT without a session: refused
            resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
            body = await resp.text()
        assert body.startswith("44") and "unauthenticated" in body
        async with asyncio.timeout(10):
            resp = await http.get(f"{live_server.url}{EIO}&transport=polling&sid={eio_sid}")
            assert (resp.status, await resp.text()) == (200, "1")
    assert session_gone(live_server, eio_sid)


async def test_a_ticket_whose_page_never_connected_expires_after_the_grace_period(make_live_server, clients):
    live = await make_live_server(grace_seconds=1)  # swept every second
    kept = await join(live.url)
    page = await citizen_socket(live.url, kept["token"])  # connected before the other one joins
    clients.append(page)
    never = await join(live.url)  # its page never connects
    store = live.room.store

    async def until_expired() -> None:
        while (await store.get_ticket(never["ticket"]["id"])).state.value != "expired":  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the periodic sweep changes it; no event to wait on here

    await asyncio.wait_for(until_expired(), WAIT)
    assert (await store.get_ticket(kept["ticket"]["id"])).state.value == "waiting"
    assert page.client.connected


def test_engineio_and_socketio_internals_the_deadline_and_the_post_fix_rest_on():
    """server/signaling/engineio_ws.py wraps python-socketio's engine.io connect handler and closes
    sockets with ``close(wait=False)``; managers.py tells a refused CONNECT by its pending sid;
    engineio_poll.py replaces ``handle_post_request``. Fail loudly when these move."""
    import inspect

    import socketio
    from engineio import async_server, async_socket

    from server.signaling import engineio_poll

    sio = socketio.AsyncServer(async_mode="aiohttp")
    assert sio.eio.handlers["connect"] == sio._handle_eio_connect
    assert list(inspect.signature(async_socket.AsyncSocket.close).parameters) == ["self", "wait", "abort", "reason"]
    connect = inspect.getsource(socketio.AsyncServer._handle_connect)
    assert connect.index("packet.CONNECT_ERROR") < connect.index("await self.manager.disconnect(sid, namespace")
    assert "pre_connect(eio_sid, namespace)" in connect
    post = inspect.getsource(engineio_poll._original_handle_post_request)
    assert "max_http_buffer_size" in post and "ContentTooLongError" in post
    handle = inspect.getsource(async_server.AsyncServer.handle_request)
    assert "await socket.handle_post_request(environ)" in handle and "await self.disconnect(sid)" in handle
    assert "'Session is disconnected'" in inspect.getsource(async_server.AsyncServer._get_socket)


async def test_an_event_no_handler_takes_is_answered(live_server, caplog):
    """Every event is answered (docs/protocol.md): one with a name no handler takes gets ``unknown_event``
    instead of silence (found by probing: the client waited for its own timeout); the page stays served."""
    joined = await join(live_server.url)
    async with aiohttp.ClientSession() as http:
        ws = await citizen_page(http, live_server.url, joined["token"])
        await ws.send_str('425["nonexistent_event",{}]')
        answer = json.loads((await packet_starting(ws, "435"))[3:])[0]
        assert answer == {"error": {"code": "unknown_event", "message": "no such event"}}
        # Reserved names are no events a client may send: python-socketio ran the server's own disconnect
        # handler for a client's "disconnect" (the page's bookkeeping, while it stayed connected); no name, or
        # one that is no text, failed with a traceback and no answer.
        for k, packet in enumerate(('["connect"]', '["disconnect"]', '["disconnecting", 1]', "[]", "[5]",
                                    '[{"a": 1}]', '{"a": 1}', '"leave"', '["*"]', '["*", "x"]')):
            await ws.send_str(f"42{k}{packet}")
            answer = json.loads((await packet_starting(ws, f"43{k}"))[len(f"43{k}"):])[0]
            assert answer["error"]["code"] == "unknown_event", packet
        assert live_server.app[SIGNALING]._citizen_sockets[joined["ticket"]["id"]] == 1  # still one page
        await ws.send_str('428["subscribe",{}]')
        ack = await packet_starting(ws, "438")
        assert json.loads(ack[3:])[0]["ok"] is True
        await ws.close()
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text[-2000:]


async def test_flags_of_the_wrong_type_are_invalid_input(live_server, clients):
    """Found by probing: ``media_offer`` with ``"check": "yes"`` was taken for false. Wrong types are
    ``invalid_input`` (docs/protocol.md). (``th_stage_accept``'s ``publication_consent``: tests/
    test_townhall_signaling.py.)"""
    joined = await join(live_server.url)
    page = await citizen_socket(live_server.url, joined["token"])
    clients.append(page)
    await page.wait_for("ticket")
    answer = await page.call("media_offer", {"sdp": "v=0", "check": "yes"})
    assert answer["error"] == {"code": "invalid_input", "message": "check must be true or false"}


async def test_a_message_nested_too_deeply_gets_a_clear_error(live_server):
    """A socket.io event whose JSON is nested 5,000 levels deep (it fits the size cap) is answered with
    ``invalid_input`` instead of a RecursionError traceback and silence; the ticket is untouched and the
    page stays connected."""
    joined = await join(live_server.url)
    async with aiohttp.ClientSession() as http:
        ws = await citizen_page(http, live_server.url, joined["token"])
        depth = 5000
        await ws.send_str('427["leave",' + "[" * depth + "]" * depth + "]")
        answer = await packet_starting(ws, "437")
        assert json.loads(answer[3:])[0]["error"]["code"] == "invalid_input"
        await ws.send_str('428["subscribe",{}]')  # still connected, still served
        ack = await packet_starting(ws, "438")
        assert json.loads(ack[3:])[0]["ok"] is True
        await ws.close()
    ticket = await live_server.room.store.get_ticket(joined["ticket"]["id"])
    assert ticket is not None and ticket.state.value == "waiting"


async def test_a_message_with_text_that_is_not_unicode_gets_a_clear_error(live_server):
    """A socket.io event carrying half a surrogate pair (valid JSON, no Unicode) is answered with
    ``invalid_input``; nothing of it reaches the store and the page stays served."""
    joined = await join(live_server.url)
    async with aiohttp.ClientSession() as http:
        ws = await citizen_page(http, live_server.url, joined["token"])
        await ws.send_str('427["leave",{"reason":"\\ud800"}]')
        answer = await packet_starting(ws, "437")
        assert json.loads(answer[3:])[0]["error"]["code"] == "invalid_input"
        await ws.send_str('428["subscribe",{}]')
        ack = await packet_starting(ws, "438")
        assert json.loads(ack[3:])[0]["ok"] is True
        await ws.close()
    ticket = await live_server.room.store.get_ticket(joined["ticket"]["id"])
    assert ticket is not None and ticket.state.value == "waiting"


def _awaiting(task: asyncio.Task, name: str) -> bool:
    """Whether the task's chain of awaited coroutines passes through a function called ``name``."""
    coro = task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_qualname == name:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def test_a_websocket_session_whose_handler_is_cancelled_leaves_the_session_table(live_server):
    """aiohttp cancels the handlers of open requests at the stop: the session still ends as engine.io's own
    handler ended it (engine.io swallowed the cancellation), closed and out of engine.io's table, and the
    cancellation goes on (the stop waits for it)."""
    sio = live_server.app[SIGNALING].sio
    async with aiohttp.ClientSession() as http:
        ws, eio_sid = await open_websocket(http, live_server.url)
        handlers = [t for t in asyncio.all_tasks() if _awaiting(t, "DirectWebSocket._session")]
        assert len(handlers) == 1
        page = asyncio.ensure_future(until_closed(ws))  # the page reads on, as a browser does
        handlers[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(handlers[0]), PROMPT)
        assert handlers[0].cancelled()
        assert eio_sid not in sio.eio.sockets
        assert await asyncio.wait_for(page, PROMPT) == []


async def test_call_next_without_a_department_says_so(live_server, clients):
    """Found by probing: ``call_next {}`` answered "unknown department None" (Python's text for nothing)."""
    from .socket_clients import staff_socket

    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"])
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    for payload in ({}, {"department": None}, {"department": ""}, {"department": 5}):
        answer = await clerk.call("call_next", payload)
        assert answer["error"]["code"] == "unknown_department" and "None" not in answer["error"]["message"], payload
        assert "department missing" in answer["error"]["message"]
