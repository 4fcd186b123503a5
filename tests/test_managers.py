"""Our socket.io managers rest on python-socketio's internals: fail loudly when they move, and check
that the index of rooms stays exact through joins, leaves and disconnects."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import socketio

from server.app import SIGNALING
from server.signaling.managers import ClosingRedisManager, FastManager, broadcast

from .socket_clients import Recorder, citizen_socket, join


def test_python_socketio_internals_we_rely_on_are_there():
    base = socketio.AsyncManager()
    for attribute in ("rooms", "pending_connect", "pending_disconnect", "callbacks"):
        assert hasattr(base, attribute), f"python-socketio's manager has no {attribute!r} any more"
    for method in ("pre_connect", "pre_disconnect", "basic_enter_room", "basic_leave_room", "basic_disconnect",
                   "get_rooms", "get_participants"):
        assert callable(getattr(base, method, None)), f"python-socketio's manager has no {method}()"
    assert "eio_sid" in inspect.signature(socketio.AsyncManager.basic_enter_room).parameters
    assert callable(getattr(socketio.AsyncServer, "_send_eio_packet", None)), "AsyncServer._send_eio_packet moved"
    for method in ("_redis_connect", "_handle_emit"):
        assert callable(getattr(socketio.AsyncRedisManager, method, None)), f"AsyncRedisManager.{method} moved"
    from socketio.async_pubsub_manager import AsyncPubSubManager

    assert "room" in inspect.getsource(AsyncPubSubManager._handle_emit), "the pub/sub message format changed"


async def test_the_room_index_follows_enter_leave_and_disconnect():
    m = FastManager()
    m.set_server(socketio.AsyncServer(client_manager=m))
    a = await m.connect("eio-a", "/")
    b = await m.connect("eio-b", "/")
    assert not m.pending_connect
    m.basic_enter_room(a, "/", "d:x")
    m.basic_enter_room(b, "/", "d:x")
    m.basic_enter_room(a, "/", "t:1")
    assert sorted(m.get_rooms(a, "/")) == sorted([a, "d:x", "t:1"])
    m.basic_leave_room(a, "/", "t:1")
    assert "t:1" not in m.rooms["/"] and sorted(m.get_rooms(a, "/")) == sorted([a, "d:x"])
    m.pre_disconnect(a, "/")
    m.basic_disconnect(a, "/")
    assert m.get_rooms(a, "/") == [] and dict(m.rooms["/"]["d:x"]) == {b: "eio-b"}
    assert a not in m.rooms["/"][None] and not m.pending_disconnect


def test_redis_manager_is_indexed_too():
    assert issubclass(ClosingRedisManager, socketio.AsyncRedisManager)
    assert ClosingRedisManager.basic_disconnect is FastManager.basic_disconnect
    assert callable(broadcast)


async def test_a_broadcast_reaches_every_page_of_a_department(live_server):
    tickets = [await join(live_server.url) for _ in range(5)]
    pages = [await citizen_socket(live_server.url, t["token"]) for t in tickets]
    try:
        for p in pages:
            await p.wait_for("queue")
        sio = live_server.app[SIGNALING].sio
        await sio.emit("queue", {"d": "buergerbuero", "probe": 1}, room="d:buergerbuero")
        for p in pages:
            await p.wait_for("queue", lambda u: u.get("probe") == 1)
    finally:
        for p in pages:
            await p.close()


def test_engineio_poll_we_replace_is_still_the_one_we_know():
    """server/signaling/engineio_poll.py replaces engine.io's AsyncSocket.poll: fail loudly when
    engine.io changes it, so that the replacement is reviewed against the new version."""
    from server.signaling import engineio_poll

    source = inspect.getsource(engineio_poll._original_poll)
    for fragment in ("asyncio.wait_for(", "self.queue.get()", "self.queue.task_done()", "QueueEmpty",
                     "self.queue.put_nowait(None)", "self.server.ping_interval + self.server.ping_timeout"):
        assert fragment in source, f"engine.io's AsyncSocket.poll changed: {fragment!r} is gone"


async def test_the_cheaper_poll_keeps_engineio_semantics():
    import asyncio
    from types import SimpleNamespace

    from engineio import exceptions

    from server.signaling.engineio_poll import poll

    sock = SimpleNamespace(queue=asyncio.Queue(), server=SimpleNamespace(ping_interval=0.05, ping_timeout=0.05))
    for p in ("a", "b", None, "c"):
        sock.queue.put_nowait(p)
    assert await poll(sock) == ["a", "b"]  # up to the close marker, which is queued again (at the end)
    assert await poll(sock) == ["c"]
    assert await poll(sock) == []  # the close marker: the writer ends
    try:
        await poll(sock)  # nothing within ping interval + timeout
    except exceptions.QueueEmpty:
        pass
    else:
        raise AssertionError("an idle socket's writer must end with QueueEmpty")


def test_engineio_and_aiohttp_internals_of_the_direct_path_are_there():
    """server/signaling/engineio_ws.py writes broadcast frames straight to aiohttp's transport and learns
    which websocket belongs to which engine.io socket from engine.io's aiohttp driver."""
    from aiohttp import web
    from engineio import async_socket
    from engineio.async_drivers import aiohttp as eio_aiohttp

    assert list(inspect.signature(eio_aiohttp.WebSocket.__init__).parameters) == ["self", "handler", "server"]
    call = inspect.getsource(eio_aiohttp.WebSocket.__call__)
    assert "self._sock = WebSocketResponse(" in call and "await self.handler(self)" in call
    assert "self._websocket_handler, self.server" in inspect.getsource(async_socket.AsyncSocket._upgrade_websocket)
    handler = inspect.getsource(async_socket.AsyncSocket._websocket_handler)
    # engineio_ws.DirectWebSocket._session does what this handler does for a session that starts on the
    # websocket: review it when engine.io's changes.
    for fragment in ("packets = await self.poll()", "await ws.send(pkt.encode())", "self.upgraded = True",
                     "self.connected = True", "self.server.max_http_buffer_size", "await self.receive(pkt)",
                     "self.server.ping_interval + self.server.ping_timeout", "await self.queue.put(None)",
                     "reason=self.server.reason.TRANSPORT_CLOSE", "except exceptions.SocketIsClosedError"):
        assert fragment in handler, f"engine.io's websocket handler changed: {fragment!r} is gone"
    assert "_writer" in web.WebSocketResponse.__slots__ or "_writer" in inspect.getsource(web.WebSocketResponse)
    from aiohttp._websocket.writer import WebSocketWriter

    assert "self._exception = exc" in inspect.getsource(web.WebSocketResponse.close)  # dropped by our close()
    writer = inspect.getsource(WebSocketWriter.__init__)
    assert "self.transport = transport" in writer and "self._closing = False" in writer


def test_text_frames_have_the_three_length_forms():
    from server.signaling.engineio_ws import text_frame

    assert text_frame("4x") == b"\x81\x024x"
    assert text_frame("a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame("a" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert text_frame("ä").endswith("ä".encode()) and text_frame("ä")[1] == 2


async def test_broadcasts_reach_websocket_pages_directly_and_polling_pages_through_engineio(make_live_server):
    """Websocket pages get the one frame written to their transport, a polling page the queued packet;
    small, 16-bit and 64-bit frame lengths all arrive whole."""
    from server.signaling.managers import delivered

    # The delivery counters are global: no coalesced position broadcast may land between two probes.
    live_server = await make_live_server(position_interval=3600)

    tickets = [await join(live_server.url) for _ in range(3)]
    pages = [await citizen_socket(live_server.url, t["token"]) for t in tickets[:2]]
    polling = Recorder()
    await polling.client.connect(live_server.url, auth={"token": tickets[2]["token"]}, transports=["polling"],
                                 wait_timeout=15)
    try:
        for p in [*pages, polling]:
            await p.wait_for("queue")
        sio = live_server.app[SIGNALING].sio
        for probe, size in enumerate((10, 500, 70_000), start=1):
            before = delivered.copy()
            await sio.emit("queue", {"d": "buergerbuero", "probe": probe, "pad": "x" * size}, room="d:buergerbuero")
            for p in [*pages, polling]:
                got = await p.wait_for("queue", lambda u, probe=probe: u.get("probe") == probe)
                assert got["pad"] == "x" * size
            assert delivered["direct"] - before["direct"] == 2
            assert delivered["queued"] - before["queued"] == 1
    finally:
        for p in pages:
            await p.close()
        # python-engineio's client would wait for its pending long poll, which the server ends only at the
        # ping timeout (engine.io does not answer a poll when the client closes); a browser just drops it.
        await polling.client.eio.disconnect(abort=True)


async def test_a_direct_frame_never_overtakes_a_queued_packet(live_server):
    """A packet already on a page's engine.io queue goes out first: the broadcast behind it is queued too."""
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    from server.signaling.managers import delivered

    ticket = await join(live_server.url)
    page = await citizen_socket(live_server.url, ticket["token"])
    try:
        await page.wait_for("queue")
        sio = live_server.app[SIGNALING].sio
        eio_sid = next(iter(sio.eio.sockets))
        before = delivered.copy()
        for probe in range(1, 21):
            if probe % 2:  # straight onto engine.io's queue, as python-socketio's own emits do
                encoded = sio_packet.Packet(sio_packet.EVENT, data=["queue", {"probe": probe}]).encode()
                await sio.eio.sockets[eio_sid].send(eio_packet.Packet(eio_packet.MESSAGE, encoded))
            else:
                await sio.emit("queue", {"probe": probe}, room="d:buergerbuero")
        await page.wait_for("queue", lambda u: u.get("probe") == 20)
        probes = [d["probe"] for name, d in page.events if name == "queue" and "probe" in d]
        assert probes == list(range(1, 21))
        assert delivered["queued"] - before["queued"] >= 1  # at least one broadcast had to queue behind
    finally:
        await page.close()


async def test_a_page_whose_connection_is_gone_leaves_no_cycle(live_server):
    """When a page's TCP connection has ended before engine.io closes its websocket (a reconnect storm: the
    page's close frame and its FIN arrive together), aiohttp fails to write its close frame and keeps the
    error, whose traceback holds the response: 35 objects per page that only a full collection would free
    (server/gcpolicy.py turns automatic collection off). Here the server's side of the connection is closed
    under the page, the same path, and the response must be freed by reference counting alone."""
    import gc
    import weakref

    ticket = await join(live_server.url)
    page = await citizen_socket(live_server.url, ticket["token"])
    signaling = live_server.app[SIGNALING]
    gc.disable()
    try:
        await page.wait_for("queue")
        socket = next(iter(signaling.sio.eio.sockets.values()))
        response = socket.direct_ws._sock
        gone = weakref.ref(response)
        response._writer.transport.close()  # as if the network had ended it
        del socket, response
        async with asyncio.timeout(15):
            while signaling._citizen_sockets or gone() is not None:  # noqa: ASYNC110 - no event for "freed"
                await asyncio.sleep(0.05)
    finally:
        gc.enable()
        await page.close()


@pytest.mark.redis
async def test_nodes_hear_each_others_emits_and_not_their_own(redis_url: str, redis_prefix: str) -> None:
    """Two Redis managers on one channel (two nodes): an emit is published through the pipelined client and
    reaches the other node's listener; a node's own messages are dropped before parsing (``_listen``
    recognises them by the ``host_id`` python-socketio puts last). A publish while Redis does not answer is
    not the emitter's error."""
    nodes = [ClosingRedisManager(redis_url, channel=f"{redis_prefix}socketio") for _ in range(2)]
    heard: list[list[dict]] = [[], []]
    server = socketio.AsyncServer(async_mode="aiohttp")
    for node, got in zip(nodes, heard, strict=True):
        node.set_server(server)

        async def handle(message: dict, got: list[dict] = got) -> None:
            got.append(message)

        node._handle_emit = handle  # what each node's listener delivers, recorded
        node.initialize()
    try:
        parsed = []
        real_loads = nodes[0].json.loads
        nodes[0].json = type("J", (), {"dumps": staticmethod(nodes[0].json.dumps),
                                       "loads": staticmethod(lambda t: parsed.append(t) or real_loads(t))})
        deadline = asyncio.get_running_loop().time() + 20
        while not (heard[0] and heard[1]):  # subscriptions take a moment: emit until both hear the other
            assert asyncio.get_running_loop().time() < deadline, heard
            await nodes[0]._publish({"method": "emit", "event": "e0", "data": [1], "room": "d:x",
                                     "namespace": "/", "host_id": nodes[0].host_id})
            await nodes[1]._publish({"method": "emit", "event": "e1", "data": [2], "room": "d:x",
                                     "namespace": "/", "host_id": nodes[1].host_id})
            await asyncio.sleep(0.05)  # a pacing of the retries; the loop waits on the condition above
        assert {m["event"] for m in heard[0]} == {"e1"} and {m["event"] for m in heard[1]} == {"e0"}
        assert all(nodes[0].host_id.encode() not in p for p in parsed)  # its own were never parsed
        # What the drop rests on: python-socketio's own emit message, as published, ends with its host_id.
        probe, published = ClosingRedisManager(redis_url, channel="probe"), []
        probe.set_server(server)

        async def capture(data: dict) -> None:
            published.append(probe.json.dumps(data))

        async def nothing(message: dict) -> None:
            return None

        probe._publish, probe._handle_emit = capture, nothing
        await probe.emit("queue", {"w": [1]}, namespace="/", room="d:x")
        assert published and published[0].endswith(f'"host_id": "{probe.host_id}"}}')
        down = ClosingRedisManager("redis://127.0.0.1:1/0", channel="nowhere")
        await down._publish({"method": "emit", "host_id": down.host_id})  # refused: logged, not raised
        await down.close()
    finally:
        for node in nodes:
            await node.close()


@pytest.mark.redis
async def test_closing_a_manager_delivers_what_it_published_and_publishes_nothing_after(redis_url: str,
                                                                                      redis_prefix: str) -> None:
    """A stopping node's last updates (``Signaling.finish_stop``) are published right before the manager
    closes: a publish is only queued when ``_publish`` returns, and closing the connection dropped what was
    not written yet (always on a node whose listener never started). After the close an emit (a request
    still running) publishes nothing and opens no connection."""
    import redis.asyncio as redis_asyncio

    channel = f"{redis_prefix}socketio"
    listener = redis_asyncio.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)
    node = ClosingRedisManager(redis_url, channel=channel)
    node.set_server(socketio.AsyncServer(async_mode="aiohttp"))  # no listener task: never initialized
    try:
        for k in range(3):
            await node._publish({"method": "emit", "event": f"last{k}", "host_id": node.host_id})
        await node.close()
        await node._publish({"method": "emit", "event": "after", "host_id": node.host_id})
        assert node._publisher is None
        heard: list[bytes] = []
        async with asyncio.timeout(5):
            while len(heard) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    heard.append(message["data"])
        assert [node.json.loads(m)["event"] for m in heard] == ["last0", "last1", "last2"]
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        await node.close()
        await pubsub.aclose()
        await listener.aclose()


def test_encode_event_is_python_socketio_s_encoding_without_the_walk_for_bytes():
    """``encode_event`` skips socket.io's walk over the data for bytes (6 % of the calling phase's CPU with
    10,000 pages): JSON data gives python-socketio's own text packet, data with bytes its binary packet."""
    import socketio
    from socketio import packet

    from server.signaling.managers import encode_event

    sio = socketio.AsyncServer(async_mode="aiohttp")
    update = {"d": "buergerbuero", "t": 1.5, "w": [1] * 300, "n": None, "note": "Grüße"}
    for data in (update, None, ("a", 2), {"file": b"\x00\x01", "name": "x"}):
        args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
        expected = sio.packet_class(packet.EVENT, namespace="/", data=["queue", *args]).encode()
        assert encode_event(sio, "queue", data) == expected
    assert isinstance(encode_event(sio, "queue", {"file": b"\x00"}), list)  # binary: the packet and its attachment
