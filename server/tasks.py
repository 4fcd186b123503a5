"""Background loops that end when they are told to, even when a library swallows the cancellation.

redis-py can turn a cancellation that lands inside its own timeout into a TimeoutError or a
ConnectionError; a loop that catches ``Exception`` to survive a store hiccup would then go on forever and
the server's stop would wait for it. ``stopping()`` lets such a handler tell the two apart, and
``stop_all`` bounds the wait in any case.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("sprechstunde")


def stopping() -> bool:
    """True inside a task that was asked to stop (a cancellation is pending), whatever was raised."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_all(tasks: list[asyncio.Task[None]], seconds: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them at most ``seconds``; a task that does not end is reported."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        log.warning("background task %s did not stop within %.0f s", task.get_name(), seconds)
