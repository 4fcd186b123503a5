"""A cheaper wait in engine.io's per-socket writer.

engine.io's ``AsyncSocket.poll`` waits for each outgoing packet with ``asyncio.wait_for``, which on
Python 3.11 creates a task and a timer for every packet: with thousands of waiting pages receiving a
position update a second, that was the largest single cost in the server's profile
(docs/performance.md). ``asyncio.timeout`` gives the same deadline without the extra task. Same
semantics otherwise: a timeout or a cancellation ends the writer with ``QueueEmpty``; ``None`` closes.
``tests/test_managers.py`` checks that engine.io's own ``poll`` is still the one this replaces.

It also replaces ``AsyncSocket.handle_post_request`` so that an oversized POST is answered at once
(``handle_post_request`` below).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import async_socket, exceptions
from engineio import packet as eio_packet

from .engineio_ws import close_now

_original_poll = async_socket.AsyncSocket.poll


async def poll(self: Any) -> list[Any]:
    queue = self.queue
    try:
        if queue.empty():
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await queue.get()
        else:
            first = queue.get_nowait()
        queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise exceptions.QueueEmpty() from None
    if first is None:
        return []
    packets = [first]
    while not queue.empty():
        pkt = queue.get_nowait()
        queue.task_done()
        if pkt is None:
            queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


_original_handle_post_request = async_socket.AsyncSocket.handle_post_request


async def handle_post_request(self: Any, environ: dict[str, Any]) -> None:
    """engine.io's long-polling POST, with a body over ``max_http_buffer_size`` refused at once. engine.io
    refuses it too, but then closes the session with ``AsyncServer.disconnect``, which waits until the
    CLOSE packet is collected by a GET that may never come: the POST hung without an answer and kept a
    stopping server waiting for it. Closing the socket first (``close_now``) makes that wait a no-op, and
    the POST gets engine.io's 400 at once."""
    length = int(environ.get("CONTENT_LENGTH", "0"))  # as engine.io reads it (aiohttp checked the header)
    if length > self.server.max_http_buffer_size:
        await close_now(self)
        raise exceptions.ContentTooLongError()
    try:
        await _original_handle_post_request(self, environ)
    except exceptions.UnknownPacketError:  # a packet of no known type: the session ends, as on the websocket
        await close_now(self)
        raise


_original_receive = async_socket.AsyncSocket.receive


async def receive(self: Any, pkt: Any) -> None:
    """engine.io's ``receive``, refusing a packet type past 6 ("7", "9x") as unknown: engine.io's own looks its
    name up first and fails with an IndexError, a traceback per long-polling POST (found by probing)."""
    if not 0 <= pkt.packet_type < len(eio_packet.packet_names):
        raise exceptions.UnknownPacketError()
    await _original_receive(self, pkt)


def install() -> None:
    async_socket.AsyncSocket.poll = poll  # type: ignore[method-assign]
    async_socket.AsyncSocket.handle_post_request = handle_post_request  # type: ignore[method-assign]
    async_socket.AsyncSocket.receive = receive  # type: ignore[method-assign]
