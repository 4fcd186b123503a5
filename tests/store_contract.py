"""What every store must do, written once: ``StoreContract`` runs on the ``store`` fixture, which is
the memory store and then Redis (see ``tests/redis_fixtures.py``).

Time-based behaviour (presence, sessions, rate-limit windows) uses short TTLs and waits for the
condition with a deadline, never a fixed sleep, so a loaded machine makes the suite slower, not red.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from server.queue import core
from server.queue.errors import QueueEmpty
from server.queue.estimate import RECENT_SERVICES
from server.queue.model import Clerk, Presence, Ticket, TicketState
from server.rooms.departments import Department
from server.store.base import StaffAccount, Store, Tx
from server.store.redis import RedisStore

W = TicketState.WAITING
DEPARTMENTS = ("a", "b")
DEPT_B = Department("b", "Department B")
NOW = 10_000.0
DEADLINE = 15.0
"""Seconds a polled condition may take before the test fails (generous: loaded CI machines)."""


def make_ticket(ticket_id: str, seq: int, department: str = "a", **changes: Any) -> Ticket:
    fields: dict[str, Any] = {
        "id": ticket_id,
        "token_hash": f"hash-{ticket_id}",
        "department": department,
        "seq": seq,
        "state": W,
        "arrived_at": NOW + seq,
        "enqueued_at": NOW + seq,
        "origin_department": department,
    }
    return Ticket(**(fields | changes))


def clerk(username: str, departments: tuple[str, ...] = DEPARTMENTS) -> Clerk:
    return Clerk(username, username.title(), frozenset(departments))


async def put(store: Store, *tickets: Ticket) -> None:
    async def fn(tx: Tx) -> None:
        for t in tickets:
            tx.put(t)

    await store.transaction(fn)


async def update(store: Store, ticket_id: str, change: Callable[[Ticket], Ticket]) -> Ticket:
    """Read, change and write one ticket in a transaction."""

    async def fn(tx: Tx) -> Ticket:
        ticket = await tx.ticket(ticket_id)
        assert ticket is not None
        new = change(ticket)
        tx.put(new)
        return new

    return await store.transaction(fn)


async def call_next(
    store: Store, department: str, who: Clerk, on_read: Callable[[int], Awaitable[None]] | None = None
) -> Ticket:
    """A clerk's "call next" as the service does it: pick the earliest arrival and call it.

    ``on_read(attempt)`` runs after the reads of each attempt (1, 2, ...), before the write.
    """
    attempt = 0

    async def fn(tx: Tx) -> Ticket:
        nonlocal attempt
        attempt += 1
        ticket_id = core.pick_next(await tx.waiting_head(department, 1))  # the head only, as the service
        ticket = await tx.ticket(ticket_id)
        assert ticket is not None
        if on_read is not None:
            await on_read(attempt)
        called, _ = core.call(ticket, who, NOW)
        tx.put(called)
        return called

    return await store.transaction(fn)


async def listed(store: Store, ticket_id: str) -> set[str]:
    """Every index the ticket appears in: ``waiting:<dept>``, ``active:<dept>``, ``disconnected``."""
    where = set()
    for d in DEPARTMENTS:
        if ticket_id in [i for _, i in await store.waiting(d)]:
            where.add(f"waiting:{d}")
        if ticket_id in await store.active(d):
            where.add(f"active:{d}")
    if ticket_id in await store.disconnected_before(float("inf")):
        where.add("disconnected")
    return where


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


# One move per transaction, each a step of the pure core; the ticket starts waiting in "a".
ANNA = clerk("anna")
Step = Callable[[Ticket], Ticket]
CALL: Step = lambda t: core.call(t, ANNA, NOW + 100)[0]  # noqa: E731
START: Step = lambda t: core.start(t, NOW + 110)[0]  # noqa: E731
FINISH: Step = lambda t: core.finish(t, ANNA, NOW + 120)[0]  # noqa: E731
NO_SHOW: Step = lambda t: core.no_show(t, ANNA, NOW + 120, answer_seconds=20)[0]  # noqa: E731
REJOIN: Step = lambda t: core.rejoin(t, NOW + 125, rejoin_seconds=600, is_open=True, connected=True)[0]  # noqa: E731
RETURN: Step = lambda t: core.return_to_queue(t, ANNA, NOW + 120)[0]  # noqa: E731
TRANSFER: Step = lambda t: core.transfer(t, ANNA, DEPT_B, "passport", NOW + 120)[0]  # noqa: E731
LEAVE: Step = lambda t: core.leave(t, NOW + 130)[0]  # noqa: E731
DISCONNECT: Step = lambda t: core.disconnect(t, NOW + 140)[0]  # noqa: E731
RECONNECT: Step = lambda t: core.reconnect(t)[0]  # noqa: E731
EXPIRE: Step = lambda t: core.expire(t, NOW + 1000, grace_seconds=60)[0]  # noqa: E731

MOVES: list[tuple[str, list[Step], TicketState, set[str]]] = [
    ("waiting", [], W, {"waiting:a"}),
    ("called", [CALL], TicketState.CALLED, {"active:a"}),
    ("in consultation", [CALL, START], TicketState.IN_CONSULTATION, {"active:a"}),
    ("returned", [CALL, RETURN], W, {"waiting:a"}),
    ("returned from consultation", [CALL, START, RETURN], W, {"waiting:a"}),
    ("transferred", [CALL, TRANSFER], W, {"waiting:b"}),
    ("transferred from consultation", [CALL, START, TRANSFER], W, {"waiting:b"}),
    ("transferred and called there", [CALL, TRANSFER, CALL], TicketState.CALLED, {"active:b"}),
    ("done", [CALL, START, FINISH], TicketState.DONE, set()),
    ("done without start", [CALL, FINISH], TicketState.DONE, set()),
    ("no show", [CALL, NO_SHOW], TicketState.NO_SHOW, set()),
    ("rejoined after a no-show", [CALL, NO_SHOW, REJOIN], W, {"waiting:a"}),
    ("left while waiting", [LEAVE], TicketState.LEFT, set()),
    ("left when called", [CALL, LEAVE], TicketState.LEFT, set()),
    ("disconnected", [DISCONNECT], W, {"waiting:a", "disconnected"}),
    ("disconnected, then called", [DISCONNECT, CALL], TicketState.CALLED, {"active:a", "disconnected"}),
    ("reconnected", [DISCONNECT, RECONNECT], W, {"waiting:a"}),
    ("expired", [DISCONNECT, EXPIRE], TicketState.EXPIRED, set()),
    ("expired when called", [CALL, DISCONNECT, EXPIRE], TicketState.EXPIRED, set()),
]


class StoreContract:
    """The behaviour both stores share. Subclass it in a test module to run it."""

    @pytest_asyncio.fixture
    async def open_peer(self, store: Store, request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Store]]:
        """Another handle on the same data, as another server process would have one.

        On Redis a new client (own connections, so WATCH conflicts are real); in memory the same
        store, since a memory store is only shared within its process.
        """
        opened: list[RedisStore] = []
        url = request.getfixturevalue("redis_url") if isinstance(store, RedisStore) else None

        def open_() -> Store:
            if isinstance(store, RedisStore):
                assert url is not None
                opened.append(RedisStore(url, prefix=store.prefix))
                return opened[-1]
            return store

        yield open_
        for peer in opened:
            await peer.close()

    # -- tickets --
    async def test_ticket_round_trip(self, store: Store) -> None:
        ticket = make_ticket(
            "t1",
            7,
            name="Ada",
            concern="Pass",
            language="en",
            interpreter=True,
            transfer_note="ü ✓",
            disconnected_at=NOW + 0.25,
        )
        await put(store, ticket)
        assert await store.get_ticket("t1") == ticket
        assert await store.get_ticket("nope") is None

    async def test_get_tickets_in_order_asked_skipping_missing(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1), make_ticket("t2", 2), make_ticket("t3", 3, "b"))
        got = await store.get_tickets(["t3", "missing", "t1"])
        assert [t.id for t in got] == ["t3", "t1"]
        assert await store.get_tickets([]) == []

    async def test_token_lookup(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1))
        assert await store.ticket_id_for_token("hash-t1") == "t1"
        assert await store.ticket_id_for_token("hash-unknown") is None
        assert await store.ticket_for_token("hash-t1") == await store.get_ticket("t1")
        assert await store.ticket_for_token("hash-unknown") is None

    async def test_head_and_count_of_a_queue_in_a_transaction(self, store: Store) -> None:
        await put(store, *(make_ticket(f"t{seq}", seq, d) for seq, d in [(5, "a"), (2, "a"), (9, "b"), (1, "a")]))

        async def fn(tx: Tx) -> tuple[Any, ...]:
            return (await tx.waiting_head("a", 2), await tx.waiting_head("a", 10), await tx.waiting_head("a", 0),
                    await tx.waiting_head("empty", 1), await tx.waiting_count("a"), await tx.waiting_count("b"),
                    await tx.waiting_count("empty"))

        assert await store.transaction(fn) == ([(1, "t1"), (2, "t2")], [(1, "t1"), (2, "t2"), (5, "t5")], [], [],
                                               3, 1, 0)

    async def test_waiting_in_seq_order_per_department(self, store: Store) -> None:
        await put(store, *(make_ticket(f"t{seq}", seq, d) for seq, d in [(5, "a"), (2, "a"), (9, "b"), (1, "a")]))
        assert await store.waiting("a") == [(1, "t1"), (2, "t2"), (5, "t5")]
        assert await store.waiting("b") == [(9, "t9")]
        assert await store.waiting("empty") == []
        assert await store.waiting_seqs("a") == [1, 2, 5] and await store.waiting_seqs("empty") == []
        assert await store.waiting_counts(["a", "b", "empty"]) == {"a": 3, "b": 1, "empty": 0}
        assert await store.waiting_counts([]) == {}

    async def test_position_of_a_waiting_ticket(self, store: Store) -> None:
        await put(store, *(make_ticket(f"t{seq}", seq, d) for seq, d in [(5, "a"), (2, "a"), (9, "b"), (1, "a")]))
        assert [await store.position("a", f"t{seq}", seq) for seq in (1, 2, 5)] == [1, 2, 3]
        assert await store.position("b", "t9", 9) == 1
        assert await store.position("a", "t9", 9) is None  # waiting, but elsewhere
        assert await store.position("a", "missing", 3) is None
        await update(store, "t2", CALL)
        assert await store.position("a", "t2", 2) is None and await store.position("a", "t5", 5) == 2

    async def test_returned_ticket_keeps_its_place(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1), make_ticket("t2", 2))
        await update(store, "t1", CALL)
        assert await store.waiting("a") == [(2, "t2")]
        await update(store, "t1", RETURN)
        assert await store.waiting("a") == [(1, "t1"), (2, "t2")]

    async def test_transfer_keeps_seq_among_the_others(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1), make_ticket("t0", 0, "b"), make_ticket("t5", 5, "b"))
        await update(store, "t1", CALL)
        await update(store, "t1", TRANSFER)
        assert await store.waiting("a") == []
        assert await store.waiting("b") == [(0, "t0"), (1, "t1"), (5, "t5")]

    @pytest.mark.parametrize(("steps", "state", "where"), [m[1:] for m in MOVES], ids=[m[0] for m in MOVES])
    async def test_indexes_follow_every_move(
        self, store: Store, steps: list[Step], state: TicketState, where: set[str]
    ) -> None:
        await put(store, make_ticket("t1", 1), make_ticket("other", 2))
        for step in steps:
            await update(store, "t1", step)
        ticket = await store.get_ticket("t1")
        assert ticket is not None and ticket.state is state
        assert await listed(store, "t1") == where
        assert await listed(store, "other") == {"waiting:a"}
        # Finished tickets stay readable (and findable by token) until their retention ends.
        assert await store.ticket_id_for_token("hash-t1") == "t1"

    async def test_a_burst_of_concurrent_transitions_all_land(self, store: Store) -> None:
        """A reconnect storm: hundreds of pages' transitions at once. Each must wait its turn, not fail: a
        Redis pool that refused commands past 100 connections in use lost the disconnects of a
        10,000-page storm (bench/queue_load.py --redis), and those tickets never started their grace
        period."""
        burst = 400
        await put(store, *(make_ticket(f"s{i}", i + 1) for i in range(burst)))
        await asyncio.gather(*(update(store, f"s{i}", DISCONNECT) for i in range(burst)))
        assert len(await store.disconnected_before(float("inf"))) == burst
        got = await asyncio.gather(*(store.get_ticket(f"s{i}") for i in range(burst)))
        assert all(t is not None and t.disconnected_at is not None for t in got)

    async def test_disconnected_before(self, store: Store) -> None:
        await put(
            store,
            make_ticket("early", 1, disconnected_at=100.0),
            make_ticket("late", 2, disconnected_at=200.0),
            make_ticket("connected", 3),
            make_ticket("gone", 4, state=TicketState.LEFT, disconnected_at=50.0),
        )
        assert sorted(await store.disconnected_before(150.0)) == ["early"]
        assert sorted(await store.disconnected_before(250.0)) == ["early", "late"]
        assert await store.disconnected_before(100.0) == []  # strictly before

    async def test_next_seq_increases(self, store: Store) -> None:
        first = await store.next_seq()
        second = await store.next_seq()
        assert second > first
        many = await asyncio.gather(*(store.next_seq() for _ in range(20)))
        assert len(set(many)) == 20 and min(many) > second

    # -- transactions --
    async def test_transaction_reads_its_own_writes_and_returns_the_result(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1))

        async def fn(tx: Tx) -> tuple[Ticket | None, Ticket | None]:
            tx.put(make_ticket("t2", 2))
            called = CALL(await tx.ticket("t1"))  # type: ignore[arg-type]
            tx.put(called)
            return await tx.ticket("t2"), await tx.ticket("t1")

        new, called = await store.transaction(fn)
        assert new == make_ticket("t2", 2) and called is not None and called.state is TicketState.CALLED
        assert await store.get_ticket("t1") == called
        assert await store.waiting("a") == [(2, "t2")]

    async def test_exception_inside_transaction_writes_nothing(self, store: Store) -> None:
        await put(store, make_ticket("t1", 1))

        class Boom(Exception):
            pass

        async def fn(tx: Tx) -> None:
            await tx.waiting("a")
            tx.put(make_ticket("new", 2))
            tx.put(CALL(await tx.ticket("t1")))  # type: ignore[arg-type]
            raise Boom()

        with pytest.raises(Boom):
            await store.transaction(fn)
        assert await store.get_ticket("new") is None
        assert await store.ticket_id_for_token("hash-new") is None
        assert (await store.get_ticket("t1")) == make_ticket("t1", 1)
        assert await store.waiting("a") == [(1, "t1")]
        assert await store.active("a") == []
        # and the store still works (no connection left watching)
        assert (await call_next(store, "a", ANNA)).id == "t1"

    async def test_call_next_on_empty_queue_raises_queue_empty(self, store: Store) -> None:
        with pytest.raises(QueueEmpty):
            await call_next(store, "a", ANNA)

    @pytest.mark.parametrize(("callers", "tickets"), [(2, 1), (2, 5), (10, 10), (10, 3)])
    async def test_concurrent_call_next_never_hands_out_a_ticket_twice(
        self, store: Store, open_peer: Callable[[], Store], callers: int, tickets: int
    ) -> None:
        await put(store, *(make_ticket(f"t{i:02}", i) for i in range(tickets)))
        peers = [open_peer() for _ in range(callers)]
        genuine_race = isinstance(store, RedisStore)
        # On Redis every caller reads the queue before any commits, so all first attempts pick the
        # same ticket and all but one must lose at EXEC. (The memory store serialises transactions:
        # waiting there would deadlock, and there is nothing to race.)
        barrier = asyncio.Barrier(callers)
        attempts = 0

        async def meet(attempt: int) -> None:
            nonlocal attempts
            attempts += 1
            if genuine_race and attempt == 1:
                await asyncio.wait_for(barrier.wait(), DEADLINE)

        results = await asyncio.gather(
            *(call_next(peer, "a", clerk(f"clerk{i}"), on_read=meet) for i, peer in enumerate(peers)),
            return_exceptions=True,
        )
        called = [r for r in results if isinstance(r, Ticket)]
        empty = [r for r in results if isinstance(r, QueueEmpty)]
        assert len(called) + len(empty) == callers, results
        served = min(callers, tickets)
        assert sorted(t.id for t in called) == [f"t{i:02}" for i in range(served)]
        assert len({t.clerk for t in called}) == served
        assert [i for _, i in await store.waiting("a")] == [f"t{i:02}" for i in range(served, tickets)]
        assert sorted(await store.active("a")) == sorted(t.id for t in called)
        for t in called:
            assert await store.get_ticket(t.id) == t  # the stored holder is the one who was told
        if genuine_race:  # every QueueEmpty ended an attempt that never got to meet()
            assert attempts + len(empty) > callers, "the transactions did not actually race"

    # -- clerks --
    async def test_presence_per_department(self, store: Store) -> None:
        await store.set_presence("anna", ["a", "b"], Presence.AVAILABLE, ttl=60)
        await store.set_presence("bert", ["a"], Presence.BUSY, ttl=60)
        await store.set_presence("cleo", ["a"], Presence.AWAY, ttl=60)
        assert await store.presences("a") == {"anna": Presence.AVAILABLE, "bert": Presence.BUSY, "cleo": Presence.AWAY}
        assert await store.presences("b") == {"anna": Presence.AVAILABLE}
        assert await store.presences("c") == {}
        await store.set_presence("anna", ["a", "b"], Presence.OFFLINE, ttl=60)
        await store.set_presence("cleo", ["b"], Presence.BUSY, ttl=60)  # moved departments
        assert await store.presences("a") == {"bert": Presence.BUSY}
        assert await store.presences("b") == {"cleo": Presence.BUSY}

    async def test_presence_lapses_after_ttl(self, store: Store) -> None:
        await store.set_presence("anna", ["a"], Presence.AVAILABLE, ttl=60)
        await store.set_presence("bert", ["a"], Presence.AVAILABLE, ttl=60)
        assert set(await store.presences("a")) == {"anna", "bert"}
        await store.set_presence("anna", ["a"], Presence.BUSY, ttl=0.2)

        async def anna_lapsed() -> bool:
            return "anna" not in await store.presences("a")

        await eventually(anna_lapsed, "anna's presence lapses")
        assert await store.presences("a") == {"bert": Presence.AVAILABLE}
        await store.set_presence("anna", ["a"], Presence.AVAILABLE, ttl=60)  # renewing brings her back
        assert set(await store.presences("a")) == {"anna", "bert"}

    async def test_recent_services_keep_only_the_last_few(self, store: Store) -> None:
        total = RECENT_SERVICES + 5
        for s in range(1, total + 1):
            await store.record_service("a", float(s))
        await store.record_service("b", 42.5)
        assert await store.recent_services("a") == [float(s) for s in range(total, 5, -1)]
        assert len(await store.recent_services("a")) == RECENT_SERVICES
        assert await store.recent_services("b") == [42.5]
        assert await store.recent_services("c") == []

    # -- sessions, staff, limits --
    async def test_sessions(self, store: Store) -> None:
        data = {"user": "anna", "csrf": "x", "n": 3, "roles": ["clerk"]}
        await store.put_session("s1", data, ttl=60)
        assert await store.get_session("s1") == data
        assert await store.get_session("s2") is None
        await store.delete_session("s1")
        assert await store.get_session("s1") is None
        await store.delete_session("s1")  # deleting twice is fine

    async def test_session_and_its_account_in_one_read(self, store: Store) -> None:
        zoe = StaffAccount("zoe", "Zoë", "$argon2id$z", ("clerk",), ("a",))
        await store.put_staff(zoe)
        await store.put_session("s1", {"username": "zoe", "csrf": "x", "epoch": 0}, ttl=60)
        await store.put_session("s2", {"username": "gone", "csrf": "y"}, ttl=60)
        await store.put_session("s3", {"state": "signing in"}, ttl=60)  # no username (yet): no account read
        assert await store.session_and_account("s1") == ({"username": "zoe", "csrf": "x", "epoch": 0}, zoe)
        assert await store.session_and_account("s2") == ({"username": "gone", "csrf": "y"}, None)
        assert await store.session_and_account("s3") == ({"state": "signing in"}, None)
        assert await store.session_and_account("nope") == (None, None)

    async def test_session_lapses_after_ttl(self, store: Store) -> None:
        await store.put_session("s1", {"user": "anna"}, ttl=0.2)

        async def lapsed() -> bool:
            return await store.get_session("s1") is None

        await eventually(lapsed, "the session lapses")

    async def test_staff_accounts(self, store: Store) -> None:
        zoe = StaffAccount("zoe", "Zoë", "$argon2id$z", ("clerk",), ("a",))
        adam = StaffAccount("adam", "Adam", "$argon2id$a", ("admin", "clerk"), ("a", "b"))
        assert await store.list_staff() == []
        await store.put_staff(zoe)
        await store.put_staff(adam)
        assert await store.get_staff("zoe") == zoe
        assert await store.get_staff("nobody") is None
        assert await store.list_staff() == [adam, zoe]
        renamed = StaffAccount("zoe", "Zoë Z.", "$argon2id$z2", ("clerk",), ("b",))
        await store.put_staff(renamed)
        assert await store.get_staff("zoe") == renamed
        assert await store.delete_staff("zoe") is True
        assert await store.delete_staff("zoe") is False
        assert await store.list_staff() == [adam]

    async def test_hit_counts_within_a_window(self, store: Store) -> None:
        assert [await store.hit("join:1.2.3.4", 60) for _ in range(3)] == [1, 2, 3]
        assert await store.hit("join:5.6.7.8", 60) == 1

    async def test_a_counter_read_and_set_in_a_transaction(self, store: Store) -> None:
        """``Tx.counter`` reads what ``Store.count`` reads, ``set_counter`` writes it at the commit, and two
        transactions that read and set the same counter at once count one after the other."""
        await store.hit("walkins", 60)

        async def bump(tx: Tx) -> int:
            value = await tx.counter("walkins")
            await asyncio.sleep(0)  # the other transaction reads meanwhile (Redis: retried at its commit)
            tx.set_counter("walkins", value + 1, 60)
            assert await tx.counter("walkins") == value + 1  # its own write
            return value

        seen = await asyncio.gather(*(store.transaction(bump) for _ in range(3)))
        assert sorted(seen) == [1, 2, 3] and await store.count("walkins") == 4

        async def unset(tx: Tx) -> int:
            return await tx.counter("never")

        assert await store.transaction(unset) == 0

    async def test_count_reads_a_window_without_counting(self, store: Store) -> None:
        assert await store.count("login-account:anna") == 0
        await store.hit("login-account:anna", 0.3)
        await store.hit("login-account:anna", 0.3)
        assert [await store.count("login-account:anna") for _ in range(3)] == [2, 2, 2]

        async def lapsed() -> bool:
            return await store.count("login-account:anna") == 0

        await eventually(lapsed, "the counted window lapses")

    async def test_window_left_says_when_a_window_ends(self, store: Store) -> None:
        assert await store.window_left("join:9.9.9.9") == 0
        await store.hit("join:9.9.9.9", 60)
        first = await store.window_left("join:9.9.9.9")
        assert 0 < first <= 60
        await store.hit("join:9.9.9.9", 60)  # a later hit does not move the end of a fixed window
        assert await store.window_left("join:9.9.9.9") <= first

    async def test_hit_window_is_fixed_and_restarts(self, store: Store) -> None:
        assert await store.hit("login:x", 0.3) == 1
        # Hitting every 20 ms must not stretch the window: the count starts again after it.
        counts: list[int] = []

        async def restarted() -> bool:
            counts.append(await store.hit("login:x", 0.3))
            return counts[-1] == 1

        await eventually(restarted, "the rate-limit window restarts")
        assert counts[:-1] == list(range(2, len(counts) + 1))
