"""Our socket.io managers rest on python-socketio's internals: fail loudly when they move, and check
that the index of rooms stays exact through joins, leaves and disconnects."""

from __future__ import annotations

import inspect

import socketio

from server.app import SIGNALING
from server.signaling.managers import ClosingRedisManager, FastManager, broadcast

from .socket_clients import citizen_socket, join


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
