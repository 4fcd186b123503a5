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

This rests on engine.io's aiohttp driver (``WebSocket`` with ``_sock``, created per socket with its
``_websocket_handler``) and aiohttp's ``WebSocketResponse._writer``; ``tests/test_managers.py`` fails
loudly when they move.
"""

from __future__ import annotations

import struct
from typing import Any

from engineio.async_drivers import aiohttp as eio_aiohttp

MAX_BUFFERED = 64 * 1024
"""A page whose transport holds more unsent bytes than this is slow: it gets engine.io's path, which
waits for the transport to drain."""


class DirectWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp websocket, remembered on its engine.io socket, counting sends in progress."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.sending = 0
        self.owner = getattr(handler, "__self__", None)  # the engine.io socket whose _websocket_handler this is
        if self.owner is not None:
            self.owner.direct_ws = self

    async def __call__(self, environ: dict[str, Any]) -> Any:
        try:
            return await super().__call__(environ)
        finally:  # socket -> direct_ws -> handler -> socket: break the cycle, or only a full collection frees it
            if getattr(self.owner, "direct_ws", None) is self:
                self.owner.direct_ws = None
            self.owner = None

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

    async def wait(self) -> Any:
        """The next message, or None once the page has gone (engine.io then ends the socket as "closed by
        the client"). engine.io's driver raises OSError here instead: the exception, its traceback and
        the frames of two tasks form a cycle per closed page that only a full collection frees."""
        msg = await self._sock.receive()
        return msg.data if isinstance(msg.data, (str, bytes)) else None


def install(eio_server: Any) -> None:
    """Use DirectWebSocket for this engine.io server only (its driver table is a shared module dict)."""
    eio_server._async = {**eio_server._async, "websocket": DirectWebSocket}


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
