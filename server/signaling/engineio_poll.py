"""A cheaper wait in engine.io's per-socket writer.

engine.io's ``AsyncSocket.poll`` waits for each outgoing packet with ``asyncio.wait_for``, which on
Python 3.11 creates a task and a timer for every packet: with thousands of waiting pages receiving a
position update a second, that was the largest single cost in the server's profile
(docs/performance.md). ``asyncio.timeout`` gives the same deadline without the extra task. Same
semantics otherwise: a timeout or a cancellation ends the writer with ``QueueEmpty``; ``None`` closes.
``tests/test_managers.py`` checks that engine.io's own ``poll`` is still the one this replaces.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import async_socket, exceptions

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


def install() -> None:
    async_socket.AsyncSocket.poll = poll  # type: ignore[method-assign]
