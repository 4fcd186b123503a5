"""KeyedLocks: one key's holders take turns, other keys do not wait, and no lock outlives its users."""

from __future__ import annotations

import asyncio

from server.locks import KeyedLocks


async def test_holders_of_one_key_take_turns_and_the_table_empties() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("t1"):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("t1"):
            order.append("second in")

    async def other() -> None:
        async with locks.hold("t2"):
            order.append("other key")

    a = asyncio.create_task(first())
    await inside.wait()
    b = asyncio.create_task(second())
    await other()  # another key is not held up by t1
    assert order == ["first in", "other key"] and len(locks) == 1
    release.set()
    await asyncio.gather(a, b)
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(locks) == 0
