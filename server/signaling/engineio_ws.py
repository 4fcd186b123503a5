"""Broadcast frames written once, straight to each page's websocket.

A position update for a department goes to every waiting page of it. Through engine.io each page costs
a queue hop, a wake-up of that socket's writer task, the packet's encoding and aiohttp's framing: with
10,000 waiting pages that was most of the server's time, and a clerk's "call next" waited behind it
(docs/performance.md). Here the broadcast builds the websocket frame once and writes the same bytes to
each page's transport, a few microseconds per page.

A page takes the direct path only when nothing can overtake: its engine.io socket is on the websocket
transport (not polling, not in the middle of an upgrade), has no packet queued, its writer is not inside
a send, and its transport is open and not backed up. Otherwise the packet goes through engine.io as
before. Frames are sent uncompressed; that is allowed when permessage-deflate was negotiated (RFC 7692:
only frames with RSV1 set are inflated) and leaves the compressor's context untouched.

The same ``install`` gives every engine.io session ``CONNECT_DEADLINE`` to complete its socket.io
CONNECT; a session without one then is closed (``end_session``). One whose CONNECT was refused is
closed right after the refusal on a websocket (``managers.IndexedRoomsMixin.disconnect``), at the
deadline on long-polling.

This rests on engine.io's aiohttp driver (``WebSocket`` with ``_sock``, created per socket with its
``_websocket_handler``) and aiohttp's ``WebSocketResponse._writer``; ``tests/test_managers.py`` fails
loudly when they move.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp

log = logging.getLogger("sprechstunde.signaling")

CONNECT_DEADLINE = 10.0
"""Seconds an engine.io session may stay open without a socket.io connection: a client that opens the
transport (and answers pings) but never sends its CONNECT, or whose CONNECT was refused and does not
leave, is closed then. A browser's CONNECT follows the open packet within a round trip."""
deadlines: Counter[str] = Counter()
"""What the checks at the deadline found: ``kept`` (connected), ``closed``, ``connecting`` (its connect
handler still running: checked again one deadline later); for tests."""

MAX_BUFFERED = 64 * 1024
"""A page whose transport holds more unsent bytes than this is slow: it gets engine.io's path, which
waits for the transport to drain."""


class DirectWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp websocket, remembered on its engine.io socket, counting sends in progress."""

    handler: Any

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.sending = 0
        self.owner = getattr(handler, "__self__", None)  # the engine.io socket whose _websocket_handler this is
        if self.owner is not None:
            self.owner.direct_ws = self
            if not self.owner.connected:  # a session that starts on the websocket (an upgrade keeps engine.io's)
                self.handler = self._session

    async def __call__(self, environ: dict[str, Any]) -> Any:
        try:
            return await super().__call__(environ)
        finally:  # socket -> direct_ws -> handler -> socket: break the cycle, or only a full collection frees it
            owner = self.owner
            if owner is not None and getattr(owner, "direct_ws", None) is self:
                owner.direct_ws = None
            # engine.io's request handler drops a closed session from its table after this returns; a
            # cancellation (aiohttp's stop cancels open requests) skips that, and engine.io's own handler
            # swallowed it: the session stayed in the table until the process exited.
            # (``closing`` without ``closed``: a second cancellation ended its close half way.)
            if owner is not None and (owner.closed or owner.closing) \
                    and owner.server.sockets.get(owner.sid) is owner:
                del owner.server.sockets[owner.sid]
            self.owner = None
            self.handler = None  # ws -> its bound _session -> ws, too

    async def close(self) -> None:
        """Close the websocket. When the page's connection has already ended (its close frame and its FIN
        arrived together, as in a reconnect storm), aiohttp cannot write its own close frame and keeps the
        error on the response: the error's traceback holds the frames that hold the response, a cycle of
        35 objects per page that only a full collection frees. Nobody asks the response for that error
        after this, so it is dropped."""
        try:
            await super().close()
        finally:
            if self._sock is not None and getattr(self._sock, "_exception", None) is not None:
                self._sock._exception = None

    async def send(self, message: Any) -> None:
        self.sending += 1
        try:
            await super().send(message)
        finally:
            self.sending -= 1

    async def _session(self, ws: DirectWebSocket) -> None:
        """engine.io's websocket handler (``AsyncSocket._websocket_handler``) for a session that starts on
        the websocket, without a task and an ``asyncio.wait_for`` per received message: engine.io wraps each
        wait in both (a workaround for an old asyncio bug), a cost per page in a reconnect storm.
        ``asyncio.timeout`` gives the same deadline; otherwise as engine.io: the writer sends what the
        socket queues (its ``poll``), a read error, a message over ``max_http_buffer_size``, one that is no
        engine.io packet or the page leaving ends the session, a packet that fails is logged and the
        session goes on."""
        socket = self.owner
        assert socket is not None
        socket.connected = socket.upgraded = True
        server = socket.server
        limit = server.ping_interval + server.ping_timeout
        writer = asyncio.ensure_future(_send_queued(socket, ws))
        try:
            while True:
                try:
                    async with asyncio.timeout(limit):
                        data = await ws.wait()
                except Exception:  # noqa: BLE001 - silent too long, or the connection failed: as a close
                    break
                if data is None or len(data) > server.max_http_buffer_size:
                    break
                try:
                    pkt = eio_packet.Packet(encoded_packet=data)
                except ValueError:  # not an engine.io packet: the session ends, as engine.io's does (no traceback)
                    log.debug("engine.io: an unreadable packet ended a session")
                    break
                if not 0 <= pkt.packet_type < len(eio_packet.packet_names):  # "7", "9x": no packet type either
                    log.debug("engine.io: a packet of no known type ended a session")
                    break
                try:
                    await socket.receive(pkt)
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    break
                except Exception:  # noqa: BLE001 - as engine.io: one bad packet does not end the session
                    log.exception("engine.io: a received packet failed")
        finally:
            await socket.queue.put(None)  # the writer ends after what is queued
            try:
                await writer
            finally:  # also when cancelled (aiohttp's stop): the session ends closed, as engine.io's did
                await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)

    async def wait(self) -> Any:
        """The next message, or None once the page has gone (engine.io then ends the socket as "closed by
        the client"). engine.io's driver raises OSError here instead: the exception, its traceback and
        the frames of two tasks form a cycle per closed page that only a full collection frees."""
        msg = await self._sock.receive()
        return msg.data if isinstance(msg.data, (str, bytes)) else None


async def _send_queued(socket: Any, ws: DirectWebSocket) -> None:
    """The session's writer, as engine.io's: what ``poll`` hands out goes to the websocket, in order;
    nothing within the ping deadline, the close marker or a failed send ends it and closes the websocket."""
    while True:
        try:
            packets = await socket.poll()
        except eio_exceptions.QueueEmpty:
            break
        if not packets:
            break
        try:
            for pkt in packets:
                await ws.send(pkt.encode())
        except Exception:  # noqa: BLE001 - the connection is gone: close below
            break
    await ws.close()


def install(eio_server: Any) -> None:
    """Use DirectWebSocket for this engine.io server only (its driver table is a shared module dict), and
    give every engine.io session ``CONNECT_DEADLINE`` to connect to socket.io."""
    eio_server._async = {**eio_server._async, "websocket": DirectWebSocket}
    on_connect = eio_server.handlers["connect"]  # python-socketio's AsyncServer._handle_eio_connect
    sio = on_connect.__self__

    async def connect(eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await on_connect(eio_sid, environ)
        arm_deadline(eio_server, sio.manager, eio_sid)
        return result

    eio_server.on("connect", connect)


def arm_deadline(eio_server: Any, manager: Any, eio_sid: str) -> None:
    """Check ``CONNECT_DEADLINE`` from now whether the session has connected to socket.io. A timer
    handle per session, no task: a reconnect storm opens thousands of sessions at once."""
    asyncio.get_running_loop().call_later(CONNECT_DEADLINE, _check_deadline, eio_server, manager, eio_sid)


def _check_deadline(eio_server: Any, manager: Any, eio_sid: str) -> None:
    socket = eio_server.sockets.get(eio_sid)
    if socket is None or socket.closed or socket.closing:
        return
    sids = [(manager.sid_from_eio_sid(eio_sid, ns), ns) for ns in list(manager.get_namespaces())]
    if any(sid is not None and manager.is_connected(sid, ns) for sid, ns in sids):
        deadlines["kept"] += 1
        return
    if any(sid is not None and manager.is_pre_connected(sid, ns) for sid, ns in sids):
        # Its connect handler is still running (a slow store): closing now would leave that handler to
        # finish for a session that is gone. Look again later.
        deadlines["connecting"] += 1
        arm_deadline(eio_server, manager, eio_sid)
        return
    deadlines["closed"] += 1
    log.debug("engine.io session closed: no socket.io connection within %.0f s", CONNECT_DEADLINE)
    task = asyncio.ensure_future(end_session(eio_server, eio_sid))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()


async def end_session(eio_server: Any, eio_sid: str) -> None:
    """Close an engine.io session now (``close_now``); engine.io forgets the closed socket when its
    websocket ends, at the next request for it, or at its periodic check."""
    socket = eio_server.sockets.get(eio_sid)
    if socket is not None:
        await close_now(socket)


async def end_refused_session(eio_server: Any, eio_sid: str) -> None:
    """Close the session of a refused CONNECT once the refusal can still reach the client. On a websocket
    that is now: the writer sends the queued CONNECT_ERROR, then CLOSE, then closes. A polling client
    collects packets with its next GET, and engine.io answers no GET for a closed session, so closing now
    could swallow the refusal (a dashboard would not learn that it must log in again): such a session is
    left to ``CONNECT_DEADLINE``, by which time that GET has long come."""
    socket = eio_server.sockets.get(eio_sid)
    if socket is not None and socket.upgraded and not socket.upgrading:
        await close_now(socket)


async def close_now(socket: Any) -> None:
    """Close an engine.io socket without waiting. engine.io's ``close()`` waits until its send queue is
    drained, which on the polling transport needs the client's next GET: a client that sends no more
    requests held that wait (and the request that caused it) for ever. Here the packets already queued
    and the CLOSE packet still go out where they can: on a websocket the writer sends them and then closes
    the websocket (the ``None`` after them ends it); on polling a GET already waiting collects them, and
    a later GET gets engine.io's 400 for a closed session."""
    if socket.closed or socket.closing:
        return
    await socket.close(wait=False, reason=socket.server.reason.SERVER_DISCONNECT)
    socket.queue.put_nowait(None)


def text_frame(text: str) -> bytes:
    """One final, unmasked websocket text frame (RFC 6455 5.2), as a server sends it."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def write_direct(eio_socket: Any, frame: bytes) -> bool:
    """Write ``frame`` to the page's websocket if nothing can overtake it; False: use engine.io's path."""
    ws = getattr(eio_socket, "direct_ws", None)
    if ws is None or ws.sending or not eio_socket.upgraded or eio_socket.upgrading or eio_socket.closed:
        return False
    if not eio_socket.queue.empty():
        return False
    response = ws._sock
    writer = getattr(response, "_writer", None) if response is not None else None
    if writer is None or writer._closing or response.closed:
        return False
    transport = writer.transport
    if transport is None or transport.is_closing() or transport.get_write_buffer_size() > MAX_BUFFERED:
        return False
    transport.write(frame)
    return True
