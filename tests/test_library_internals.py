"""The signaling layer reaches into python-socketio, python-engineio and aiohttp: fail loudly when they move.

What is patched, and where:

- ``server/signaling/engineio_poll.py`` replaces engine.io's ``AsyncSocket.poll`` (a class attribute);
- ``server/signaling/engineio_ws.py`` subclasses engine.io's aiohttp driver ``WebSocket`` (``_sock``,
  ``handler.__self__``), swaps it into one server's ``_async`` driver table, replaces its ``wait``, and
  reads aiohttp's ``WebSocketResponse._writer`` / ``._exception`` and ``WebSocketWriter._closing`` /
  ``.transport`` to write broadcast frames straight to the page's transport;
- ``server/signaling/managers.py`` keeps its own room index beside python-socketio's manager state
  (``rooms``, ``pending_connect``, ``pending_disconnect``, ``callbacks``), replaces ``basic_disconnect`` and
  ``get_rooms`` wholesale, sends with ``AsyncServer._send_eio_packet`` and, for Redis,
  overrides ``AsyncRedisManager._redis_connect`` / ``_handle_emit`` and stops the listener task ``thread``;
- ``server/http/accesslog.py`` subclasses aiohttp's concrete ``web_log.AccessLogger``.

The three libraries are pinned exactly in pyproject.toml. Each check below names the attribute or the
behaviour and the pin; when one fails after an upgrade, fix the module named in the message (and
docs/architecture.md), run this file again, and only then move the pin.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp import web, web_log, web_protocol
from aiohttp._websocket.writer import WebSocketWriter
from engineio import async_server as eio_async_server
from engineio import async_socket, base_server, base_socket
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from socketio import async_manager, async_pubsub_manager, async_redis_manager, base_manager

from server.app import SIGNALING
from server.http.accesslog import AccessLogger
from server.signaling import engineio_poll, engineio_ws
from server.signaling.managers import ClosingRedisManager, FastManager, _PendingSids, _SidSet, delivered, encode_event

from .socket_clients import citizen_socket, join

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
PINNED = ("python-socketio", "python-engineio", "aiohttp")
WAIT = 15.0


def _pins() -> dict[str, str]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _pin_of(module: str) -> str:
    dist = {"socketio": "python-socketio", "engineio": "python-engineio", "aiohttp": "aiohttp"}[module.split(".")[0]]
    return f"{dist}=={_pins().get(dist, '?')}"


def _where(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


def _need(obj: Any, name: str, patch: str) -> Any:
    """``obj.name``, or a failure naming the attribute, the module that relies on it and the pin."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    assert hasattr(obj, name), (
        f"{module}.{_where(obj)} has no attribute {name!r} any more ({patch} relies on it; checked against "
        f"{_pin_of(module)})"
    )
    return getattr(obj, name)


def _source_has(func: Any, fragments: tuple[str, ...], patch: str) -> None:
    """``func``'s source still contains each fragment: the behaviour ``patch`` relies on is still there."""
    source = inspect.getsource(func)
    for fragment in fragments:
        assert fragment in source, (
            f"{func.__module__}.{func.__qualname__} changed: {fragment!r} is gone ({patch} relies on it; "
            f"checked against {_pin_of(func.__module__)})"
        )


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


# --- the pins ------------------------------------------------------------------------------------------------

def test_the_patched_libraries_are_pinned_exactly_and_installed_at_the_pin():
    pins = _pins()
    for dist in PINNED:
        assert dist in pins, f"pyproject.toml must pin {dist} exactly (==): its internals are patched"
        installed = metadata.version(dist)
        assert installed == pins[dist], (
            f"{dist} {installed} installed, pyproject.toml pins {pins[dist]}: run tests/test_library_internals.py "
            f"against {installed}, fix server/signaling (and docs/architecture.md), then move the pin"
        )


# --- engine.io: AsyncSocket.poll (server/signaling/engineio_poll.py) -------------------------------------------

def test_engineio_poll_replacement_matches_the_poll_it_replaces():
    patch = "server/signaling/engineio_poll.py"
    original = engineio_poll._original_poll
    assert (original.__module__, original.__qualname__) == ("engineio.async_socket", "AsyncSocket.poll"), (
        f"{patch} captured {original.__module__}.{original.__qualname__}, not engine.io's AsyncSocket.poll"
    )
    # The semantics the replacement copies: one deadline of ping interval + timeout, QueueEmpty on timeout or
    # cancellation, None as the close marker (put back for the next poll), every queued packet drained.
    _source_has(original, ("asyncio.wait_for(", "self.queue.get()", "self.queue.task_done()", "QueueEmpty",
                           "self.server.ping_interval + self.server.ping_timeout", "if packets == [None]",
                           "self.queue.get_nowait()", "self.queue.put_nowait(None)"), patch)
    # The writer must call it through ``self`` (a class attribute swap reaches it) and handle its two endings.
    _source_has(async_socket.AsyncSocket._websocket_handler,
                ("packets = await self.poll()", "except exceptions.QueueEmpty:", "if not packets:"), patch)
    _source_has(async_socket.AsyncSocket.handle_get_request, ("await self.poll()",), patch)
    # The attributes the replacement reads on an engine.io socket.
    _source_has(base_socket.BaseSocket.__init__, ("self.queue = self.server.create_queue()",), patch)
    _need(eio_async_server.AsyncServer, "create_queue", patch)
    assert eio_aiohttp._async.get("queue") is None, "engine.io's aiohttp driver now brings its own queue class"


# --- engine.io's aiohttp driver and aiohttp's websocket (server/signaling/engineio_ws.py) -----------------------

def test_engineio_aiohttp_driver_that_direct_websocket_subclasses():
    patch = "server/signaling/engineio_ws.py"
    ws_cls = eio_aiohttp.WebSocket
    assert _params(ws_cls.__init__) == ["self", "handler", "server"], f"engine.io's WebSocket() changed ({patch})"
    _source_has(ws_cls.__init__, ("self._sock = None",), patch)
    _source_has(ws_cls.__call__, ("self._sock = WebSocketResponse(", "await self._sock.prepare(request)",
                                  "await self.handler(self)", "return self._sock"), patch)
    _source_has(ws_cls.close, ("await self._sock.close()",), patch)
    _source_has(ws_cls.send, ("self._sock.send_str",), patch)
    # DirectWebSocket.wait returns None for a gone page where the driver raises OSError; the handler must
    # still treat None as "closed by the client" (and a None during an upgrade as a failed upgrade).
    _source_has(ws_cls.wait, ("msg = await self._sock.receive()", "raise OSError()"), patch)
    handler = async_socket.AsyncSocket._websocket_handler
    _source_has(handler, ("data = await ws.wait()", "if p is None:", "await ws.send(pkt.encode())",
                          "await ws.close()", "self.upgrading = True", "self.upgraded = True",
                          "self.upgrading = False"), patch)
    # The websocket is built from the server's own driver table with the socket's bound handler: install()
    # swaps the class in that table, and DirectWebSocket finds its engine.io socket as handler.__self__.
    _source_has(async_socket.AsyncSocket._upgrade_websocket,
                ("self.server._async['websocket'](", "self._websocket_handler, self.server"), patch)
    _source_has(base_server.BaseServer.__init__, ("'engineio.async_drivers.' + mode)._async",), patch)
    assert eio_aiohttp._async["websocket"] is ws_cls, "engine.io's aiohttp driver table has no 'websocket' entry"


def test_aiohttp_websocket_internals_of_the_direct_path():
    patch = "server/signaling/engineio_ws.py"
    response_cls = web.WebSocketResponse
    for name in ("_writer", "_exception", "closed"):
        _need(response_cls, name, patch)
    # DirectWebSocket.close drops the error aiohttp keeps when it cannot write its close frame.
    _source_has(response_cls.close, ("self._exception = exc",), patch)
    _source_has(WebSocketWriter.__init__, ("self.transport = transport", "self._closing = False"), patch)
    # A frame written straight to the transport must not land inside one aiohttp is writing: aiohttp writes
    # each frame with transport.write in one synchronous call, so two frames are never interleaved.
    frame_writer = _need(WebSocketWriter, "_write_websocket_frame", patch)
    assert not inspect.iscoroutinefunction(frame_writer), "aiohttp now awaits in the middle of writing a frame"
    _source_has(frame_writer, ("self.transport.write(",), patch)


@pytest.mark.asyncio
async def test_internals_on_a_live_websocket_page(live_server):
    """The attributes both patches read, on a real page's engine.io socket, websocket and aiohttp response."""
    ws_patch, mgr_patch = "server/signaling/engineio_ws.py", "server/signaling/managers.py"
    sio = live_server.app[SIGNALING].sio
    assert async_socket.AsyncSocket.poll is engineio_poll.poll, "engineio_poll.install() did not take"
    assert sio.eio._async["websocket"] is engineio_ws.DirectWebSocket, "engineio_ws.install() did not take"
    assert eio_aiohttp._async["websocket"] is eio_aiohttp.WebSocket, "install() must not touch the shared table"

    ticket = await join(live_server.url)
    page = await citizen_socket(live_server.url, ticket["token"])
    try:
        await page.wait_for("queue")
        eio_sockets = _need(sio.eio, "sockets", mgr_patch)
        (eio_sid, eio_socket), = eio_sockets.items()
        for name in ("upgraded", "upgrading", "closed", "queue", "server"):
            _need(eio_socket, name, ws_patch)
        assert isinstance(eio_socket.queue, asyncio.Queue)
        ws = getattr(eio_socket, "direct_ws", None)
        assert isinstance(ws, engineio_ws.DirectWebSocket), (
            "the engine.io socket has no DirectWebSocket: engine.io no longer passes its bound _websocket_handler"
        )
        assert ws.owner is eio_socket
        response = _need(ws, "_sock", ws_patch)
        assert isinstance(response, web.WebSocketResponse)
        writer = _need(response, "_writer", ws_patch)
        assert isinstance(writer, WebSocketWriter)
        assert _need(writer, "_closing", ws_patch) is False
        transport = _need(writer, "transport", ws_patch)
        for name in ("write", "is_closing", "get_write_buffer_size"):
            _need(transport, name, ws_patch)
        assert _need(response, "_exception", ws_patch) is None

        manager = sio.manager
        assert isinstance(manager, FastManager)
        for name in ("rooms", "pending_connect", "pending_disconnect", "callbacks"):
            _need(manager, name, mgr_patch)
        assert isinstance(manager.pending_connect, _PendingSids), "python-socketio replaced pending_connect"
        assert isinstance(manager.pending_disconnect, _PendingSids), "python-socketio replaced pending_disconnect"
        assert "d:buergerbuero" in manager.rooms["/"]
        assert [eio for _, eio in manager.get_participants("/", "d:buergerbuero")] == [eio_sid]
        assert callable(_need(manager.server, "_send_eio_packet", mgr_patch))
        _need(manager.server, "packet_class", mgr_patch)

        # The frame the broadcast writes is one the page's engine.io reads as the event.
        frame = engineio_ws.text_frame(eio_packet.Packet(eio_packet.MESSAGE,
                                                         encode_event(sio, "queue", {"probe": 1})).encode())
        before = delivered["direct"]
        async with asyncio.timeout(WAIT):
            while not engineio_ws.write_direct(eio_socket, frame):  # noqa: ASYNC110 - retry while a send is queued
                await asyncio.sleep(0.01)
        await page.wait_for("queue", lambda u: u.get("probe") == 1)
        assert delivered["direct"] == before  # written here, not counted by a broadcast
    finally:
        await page.close()


# --- python-socketio's manager (server/signaling/managers.py) ---------------------------------------------------

def test_python_socketio_manager_internals():
    patch = "server/signaling/managers.py"
    base = socketio.AsyncManager()
    for name in ("rooms", "pending_connect", "pending_disconnect", "callbacks"):
        _need(base, name, patch)
    assert _params(base_manager.BaseManager.basic_enter_room) == ["self", "sid", "namespace", "room", "eio_sid"]
    assert _params(base_manager.BaseManager.basic_leave_room) == ["self", "sid", "namespace", "room"]
    assert _params(base_manager.BaseManager.basic_disconnect) == ["self", "sid", "namespace", "kwargs"]
    assert _params(base_manager.BaseManager.get_rooms) == ["self", "sid", "namespace"]
    assert _params(base_manager.BaseManager.get_participants) == ["self", "namespace", "room"]
    # Pending sids: stored as ``pending[ns] = []`` then used only with append/remove/in/len (``_PendingSids``).
    for method, name in ((base_manager.BaseManager.pre_connect, "pending_connect"),
                         (base_manager.BaseManager.pre_disconnect, "pending_disconnect")):
        _source_has(method, (f"self.{name}[namespace] = []", f"self.{name}[namespace].append(sid)"), patch)
    _source_has(base_manager.BaseManager.connect, ("self.pending_connect[namespace].remove(sid)",), patch)
    # basic_disconnect is replaced wholesale: the original must do no more than leave every room, drop the
    # socket's callbacks and its pending entries.
    _source_has(base_manager.BaseManager.basic_disconnect,
                ("self.basic_leave_room(sid, namespace, room)", "del self.callbacks[sid]",
                 "self.pending_connect[namespace].remove(sid)", "self.pending_disconnect[namespace].remove(sid)"),
                patch)
    source = inspect.getsource(base_manager.BaseManager.basic_disconnect)
    assert source.count("self.") == source.count("self.rooms") + source.count("self.basic_leave_room") + \
        source.count("self.callbacks") + source.count("self.pending_"), (
            "python-socketio's BaseManager.basic_disconnect does more than our replacement in managers.py"
        )
    # The index follows rooms only if every way in and out goes through basic_enter_room / basic_leave_room.
    _source_has(base_manager.BaseManager.pre_connect, ("self.basic_enter_room(sid, namespace, sid",), patch)
    _source_has(base_manager.BaseManager.basic_close_room, ("self.basic_leave_room(sid, namespace, room)",), patch)
    _source_has(async_manager.AsyncManager.enter_room, ("self.basic_enter_room(",), patch)
    _source_has(async_manager.AsyncManager.leave_room, ("self.basic_leave_room(",), patch)
    _source_has(async_manager.AsyncManager.disconnect, ("self.basic_disconnect(",), patch)
    _source_has(async_manager.AsyncManager.close_room, ("self.basic_close_room(",), patch)
    # FastManager.emit takes python-socketio's emit arguments.
    for name in ("event", "data", "namespace", "room", "skip_sid", "callback", "to"):
        assert name in _params(async_manager.AsyncManager.emit), f"AsyncManager.emit has no {name!r} ({patch})"
    # broadcast/deliver: the server's packet class, its engine.io server and the raw-packet send.
    assert _params(socketio.AsyncServer._send_eio_packet) == ["self", "eio_sid", "eio_pkt"], (
        f"AsyncServer._send_eio_packet(eio_sid, eio_pkt) changed ({patch})"
    )
    _source_has(socketio.AsyncServer._send_eio_packet, ("self.eio.send_packet(eio_sid, eio_pkt)",), patch)
    _source_has(async_manager.AsyncManager.emit, ("self.server._send_eio_packet(eio_sid, p)",), patch)


def test_pending_sid_sets_take_python_socketios_list_operations():
    manager = FastManager()
    manager.pending_connect["/"] = []
    sids = manager.pending_connect["/"]
    assert isinstance(sids, _SidSet)
    sids.append("a")
    assert "a" in sids and len(sids) == 1
    sids.remove("a")
    assert not sids


def test_python_socketio_redis_manager_internals():
    patch = "server/signaling/managers.py (ClosingRedisManager)"
    redis_cls = async_redis_manager.AsyncRedisManager
    pubsub_cls = async_pubsub_manager.AsyncPubSubManager
    redis_connect = _need(redis_cls, "_redis_connect", patch)
    assert not inspect.iscoroutinefunction(redis_connect), "AsyncRedisManager._redis_connect became a coroutine"
    _source_has(redis_connect, ("self.redis = ", "self.pubsub = self.redis.pubsub(", "self.connected = True"),
                patch)
    _source_has(redis_cls._publish, ("self._redis_connect()",), patch)
    _source_has(redis_cls._redis_listen_with_retries, ("self._redis_connect()",), patch)
    _need(pubsub_cls, "_handle_emit", patch)
    assert _params(pubsub_cls._handle_emit) == ["self", "message"]
    # The message ClosingRedisManager._handle_emit reads (from this node's emit and from other nodes).
    _source_has(pubsub_cls.emit, ("message = {'method': 'emit', 'event': event, 'data': data,",
                                  "'binary': binary, 'namespace': namespace, 'room': room,",
                                  "'skip_sid': skip_sid, 'callback': callback,",
                                  "await self._handle_emit(message)", "data = [data]"), patch)
    _source_has(pubsub_cls._thread, ("await self._handle_emit(data)",), patch)
    _source_has(pubsub_cls.initialize, ("self.thread = self.server.start_background_task(self._thread)",), patch)
    _source_has(eio_async_server.AsyncServer.start_background_task, ("asyncio.ensure_future(",), patch)


@pytest.mark.redis
@pytest.mark.asyncio
async def test_redis_manager_internals_on_live_managers(redis_url):
    """Two managers on one channel: the listener task is ``thread``, every client ``_redis_connect`` makes is
    remembered and closed, and an emit on one node reaches the other's fast path with its message format."""
    channel = f"test-internals-{uuid.uuid4().hex}"
    sender, receiver = ClosingRedisManager(redis_url, channel=channel), ClosingRedisManager(redis_url, channel=channel)
    for m in (sender, receiver):
        socketio.AsyncServer(async_mode="aiohttp", client_manager=m)  # the manager keeps its server
    try:
        for m in (sender, receiver):
            m.initialize()
            assert isinstance(getattr(m, "thread", None), asyncio.Task), "the pub/sub listener is not self.thread"
        async with asyncio.timeout(WAIT):
            while not (receiver.pubsub is not None and receiver.pubsub.subscribed):  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)  # the listener subscribes in the background
        assert receiver._clients == [receiver.pubsub, receiver.redis]
        for client in receiver._clients:
            _need(client, "aclose", "ClosingRedisManager.close")
        # A local participant on the receiving node (its engine.io socket is gone: the queued path).
        receiver.basic_enter_room("sid-1", "/", None, eio_sid="eio-1")
        receiver.basic_enter_room("sid-1", "/", "d:x", eio_sid="eio-1")
        before = delivered["queued"]
        await sender.emit("queue", {"n": 1}, namespace="/", room="d:x")
        async with asyncio.timeout(WAIT):
            while delivered["queued"] == before:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)
        assert len(sender._clients) >= 2  # the publishing client: _redis_connect again, remembered
    finally:
        for m in (sender, receiver):
            task = getattr(m, "thread", None)
            await m.close()
            assert task is None or task.done(), "ClosingRedisManager.close() left the listener running"
            assert not m._clients and m.connected is False


# --- aiohttp's access logger (server/http/accesslog.py) ---------------------------------------------------------

def test_aiohttp_access_logger_that_accesslog_subclasses():
    patch = "server/http/accesslog.py"
    assert issubclass(AccessLogger, web_log.AccessLogger)
    assert _params(web_log.AccessLogger.log) == ["self", "request", "response", "time"], (
        f"aiohttp's AccessLogger.log(request, response, time) changed ({patch})"
    )
    _source_has(web_protocol.RequestHandler, ("self.access_logger.log(request, response,",), patch)
    for name in ("access_log_class", "access_log_format", "backlog", "loop", "print"):
        assert name in _params(web.run_app), f"aiohttp's run_app has no {name!r} (server/cli.py)"


def test_python_socketio_packet_decoding_that_safejson_guards():
    """server/signaling/safejson.py: the server takes a packet class (``serializer``), the packet decodes its
    payload with the class attribute ``json`` (its ``loads``), and a handler's return value is the ack."""
    import socketio
    from socketio import packet

    from server.signaling.safejson import SafePacket

    patch = "server/signaling/safejson.py"
    _need(packet.Packet, "json", patch)
    _source_has(packet.Packet.decode, ("self.json.loads(ep)",), patch)
    _source_has(socketio.base_server.BaseServer.__init__, ("self.packet_class = serializer",), patch)
    assert issubclass(SafePacket, packet.Packet) and packet.Packet.json is not SafePacket.json
