"""socket.io client managers that stay fast with thousands of waiting pages.

python-socketio's ``BaseManager`` finds a socket's rooms by scanning every room (each socket has a
room of its own), so each disconnect, and ``rooms(sid)``, costs O(sockets): a reconnect storm of N pages
costs O(N^2) and blocks the loop for seconds. Its ``emit`` creates one task per recipient. Here:

- ``IndexedRoomsMixin`` keeps an index socket -> rooms, so leaving every room on disconnect costs
  O(rooms of that socket), and the pending connect/disconnect lists become sets;
- ``broadcast`` encodes a packet once, as one websocket frame, and writes it straight to each
  recipient's websocket (``engineio_ws``); a recipient that cannot take it directly (polling, an upgrade
  in progress, packets already queued, a slow transport) gets it on its engine.io send queue. It yields
  to the event loop every few hundred recipients, so that a clerk's "call next" is not stuck behind a
  department's position update.

Both rest on python-socketio's manager attributes (``rooms``, ``pending_connect``,
``pending_disconnect``, ``callbacks``, ``server._send_eio_packet``); ``tests/test_managers.py`` fails
loudly if they move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from ..errors import STORE_ERRORS, store_unavailable
from ..store.resp import RespClient
from .engineio_ws import end_refused_session, text_frame, write_direct

log = logging.getLogger("sprechstunde.signaling")

CLOSE_FLUSH_SECONDS = 1.0
"""How long closing the Redis manager waits for the publishes made before it (``ClosingRedisManager.close``)."""
YIELD_EVERY = 128
_sent = [0]
delivered: Counter[str] = Counter()
"""How broadcasts reached their recipients: ``direct`` (one frame written to the websocket) or ``queued``
(engine.io's send queue); for tests and the bench."""


class _SidSet(dict):  # type: ignore[type-arg]
    """The list interface python-socketio uses for pending sids (append, remove, in, len), in O(1)."""

    def append(self, sid: str) -> None:
        self[sid] = None

    def remove(self, sid: str) -> None:
        del self[sid]


class _PendingSids(dict):  # type: ignore[type-arg]
    """python-socketio stores ``pending[namespace] = []`` and then appends; keep a _SidSet instead."""

    def __setitem__(self, namespace: str, sids: Any) -> None:
        super().__setitem__(namespace, _SidSet.fromkeys(sids) if isinstance(sids, list) else sids)


class IndexedRoomsMixin:
    rooms: dict[Any, Any]
    pending_connect: dict[str, Any]
    pending_disconnect: dict[str, Any]
    callbacks: dict[str, Any]
    server: Any
    eio_sid_from_sid: Callable[[str, str], str | None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sid_rooms: dict[tuple[str, str], set[Any]] = {}
        self.pending_connect = _PendingSids()
        self.pending_disconnect = _PendingSids()

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._sid_rooms.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._sid_rooms.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._sid_rooms[(namespace, sid)]

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        """Forget a socket.io connection. One still waiting to be connected was refused (python-socketio
        has queued its CONNECT_ERROR): its engine.io session is closed as well, after that packet
        (``end_refused_session``), instead of staying open for a client that has nothing left to do on it."""
        pending = self.pending_connect.get(namespace)
        refused = self.eio_sid_from_sid(sid, namespace) if pending is not None and sid in pending else None
        result = await super().disconnect(sid, namespace, **kwargs)  # type: ignore[misc]
        if refused is not None:
            await end_refused_session(self.server.eio, refused)
        return result

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        for room in list(self._sid_rooms.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [r for r in self._sid_rooms.get((namespace, sid), ()) if r is not None]


def encode_event(server: Any, event: str, data: Any, namespace: str = "/") -> Any:
    """The socket.io packet of one event, as python-socketio encodes it (a str; a list when binary)."""
    args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
    try:  # JSON only (all our events): not walked first for bytes, which took 6 % of the calling phase's CPU
        return server.packet_class(packet.EVENT, namespace=namespace, data=[event, *args], binary=False).encode()
    except TypeError:  # bytes in it (json cannot write them): socket.io's binary packet, as python-socketio does
        return server.packet_class(packet.EVENT, namespace=namespace, data=[event, *args]).encode()


async def broadcast(manager: Any, event: str, data: Any, namespace: str, room: Any, skip_sid: Any = None) -> None:
    """Send one event to every local participant of ``room`` (a name or a list of names)."""
    if namespace not in manager.rooms:
        return
    await deliver(manager, encode_event(manager.server, event, data, namespace), namespace, room, skip_sid)


async def deliver(manager: Any, encoded: Any, namespace: str, room: Any, skip_sid: Any = None) -> None:
    """Send an encoded socket.io packet (``encode_event``) to every local participant of ``room``."""
    if namespace not in manager.rooms:
        return
    packets = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in (encoded if isinstance(encoded, list) else [encoded])]
    frame = text_frame(packets[0].encode()) if isinstance(encoded, str) else None  # binary: engine.io's path
    skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
    send = manager.server._send_eio_packet
    eio_sockets = manager.server.eio.sockets
    for sid, eio_sid in list(manager.get_participants(namespace, room)):
        if sid in skip:
            continue
        _sent[0] += 1
        if _sent[0] % YIELD_EVERY == 0:  # counted across broadcasts: small rooms add up too
            await asyncio.sleep(0)
        if frame is not None:
            eio_socket = eio_sockets.get(eio_sid)
            if eio_socket is not None and write_direct(eio_socket, frame):
                delivered["direct"] += 1
                continue
        delivered["queued"] += 1
        for p in packets:
            try:
                await send(eio_sid, p)  # puts the packet on the socket's queue; its writer sends it
            except Exception:  # noqa: BLE001 - one broken socket must not stop the broadcast
                log.debug("send to a socket failed", exc_info=True)


class FastManager(IndexedRoomsMixin, socketio.AsyncManager):  # type: ignore[misc]
    """The single-node manager."""

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> Any:
        target = to or room
        if callback is None and target is not None:
            return await broadcast(self, event, data, namespace, target, skip_sid)
        return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback,
                                  to=to, **kwargs)


def _published(answer: asyncio.Future[Any]) -> None:
    if answer.cancelled():
        return
    error = answer.exception()
    if isinstance(error, STORE_ERRORS):
        store_unavailable(error)
    elif error is not None:
        log.warning("publishing an emit failed: %s", error)


class ClosingRedisManager(IndexedRoomsMixin, socketio.AsyncRedisManager):  # type: ignore[misc]
    """The multi-node manager: emits travel through Redis pub/sub.

    python-socketio's ``_redis_connect()`` replaces ``self.redis`` without closing the client it had (the
    first emit connects for publishing, the listener connects again), and ``AsyncServer.shutdown()`` does
    not stop the listener. This subclass remembers every client it creates and closes them all.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: list[Any] = []
        self._publisher: RespClient | None = None
        self._closed = False
        self.on_queue: Callable[[str, dict[str, Any], Any], None] | None = None
        """Told every department's ``queue`` update (room ``d:<department>``) that a node broadcast, this one
        included, with its encoded event: the signaling keeps the newest for pages connecting here
        (``Signaling._heard_update``)."""

    def _redis_connect(self) -> None:
        super()._redis_connect()
        self._clients += [self.pubsub, self.redis]

    async def _publish(self, data: Any) -> None:
        """Every emit is published for the other nodes: through the waiting room's pipelined client
        (server/store/resp.py), a sixth of redis-py's CPU per command, and without waiting for Redis's answer
        (the number of listeners): the emitter goes on at once instead of one round trip later ("call next"
        emits three times). Publishes leave in the order of the emits, on one connection. As python-socketio
        does, a publish that fails is not the emitter's error (it was delivered here already): logged once
        per outage."""
        if self._closed:  # an emit after the stop closed the manager (a request still running): not published
            return
        if self._publisher is None:
            self._publisher = RespClient(self.redis_url)
        try:
            answer = await self._publisher.send("PUBLISH", self.channel, self.json.dumps(data))
        except STORE_ERRORS as e:
            store_unavailable(e)
            return
        answer.add_done_callback(_published)

    async def _listen(self) -> Any:
        """Messages from the channel, without this node's own: they end with its ``host_id`` (python-socketio
        puts it last), so they are dropped before being parsed (the base class would parse, then drop them)."""
        own = f'"host_id": "{self.host_id}"}}'.encode()
        async for message in super()._listen():
            if isinstance(message, bytes) and message.endswith(own):
                continue
            yield message

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> Any:
        target, ns = to or room, namespace or "/"
        if callback is None and isinstance(target, str) and target in self.rooms.get(ns, {}).get(None, {}):
            # One socket of this process (a page's own ``ticket`` and ``queue`` at its connect): no other node
            # has it, so no PUBLISH for every node to decode and drop (two per page in a reconnect storm).
            return await broadcast(self, event, data, ns, target, skip_sid)
        return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                  callback=callback, to=to, **kwargs)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("callback") is None and message.get("room") is not None and not message.get("binary"):
            data = message["data"]
            if isinstance(data, list):
                data = data[0] if len(data) == 1 else tuple(data)
            namespace, room = message.get("namespace") or "/", message["room"]
            if (self.on_queue is not None and message["event"] == "queue" and isinstance(room, str)
                    and room.startswith("d:") and isinstance(data, dict)):
                encoded = encode_event(self.server, "queue", data, namespace)
                self.on_queue(room[2:], data, encoded)  # even with no page of the department here
                await deliver(self, encoded, namespace, room, message.get("skip_sid"))
                return
            await broadcast(self, message["event"], data, namespace, room, message.get("skip_sid"))
            return
        await super()._handle_emit(message)

    async def close(self) -> None:
        """Stop listening and close every Redis connection. The publishes already made are delivered first:
        they are only queued when ``_publish`` returns, and closing drops what is not written yet (a
        stopping node's last updates, ``Signaling.finish_stop``); Redis answers in order, so a PING answered
        means every earlier PUBLISH was handled."""
        self._closed = True
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publisher.call("PING"), CLOSE_FLUSH_SECONDS)
        task = getattr(self, "thread", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients.clear()
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None
        self.connected = False
