"""The service on both stores, with an injected clock: grace periods, service times, presence."""

from __future__ import annotations

import asyncio

import pytest

from server.queue.errors import TicketNotFound
from server.queue.model import Clerk, JoinRequest, Presence
from server.waitingroom import WaitingRoom

from .app_fixtures import make_settings

ANNA = Clerk("anna", "Anna", frozenset({"buergerbuero", "bauamt"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def room(store, clock, tmp_path):
    return WaitingRoom(make_settings(tmp_path, grace_seconds=300), store, clock=clock)


async def test_disconnected_citizen_keeps_the_place_within_grace_then_expires(room, clock):
    first, token = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    ticket, other_token = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.2")
    for t in (first, ticket):  # both pages connect; the second one goes away
        await room.citizen_connected(t.id)
    await room.citizen_disconnected(ticket.id)
    clock.now += 299
    assert await room.sweep() == 0
    assert (await room.citizen_view(await room.ticket_for_token(other_token)))["position"] == 2
    clock.now += 2
    assert await room.sweep() == 1
    expired = await room.store.get_ticket(ticket.id)
    assert expired.state.value == "expired"
    assert [i for _, i in await room.store.waiting("buergerbuero")] == [(await room.ticket_for_token(token)).id]


async def test_a_ticket_whose_page_never_connected_expires_after_the_grace_period(room, clock):
    never, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    connected, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.2")
    assert never.disconnected_at == clock.now
    await room.citizen_connected(connected.id)
    clock.now += 299
    assert await room.sweep() == 0
    clock.now += 2
    assert await room.sweep() == 1
    assert (await room.store.get_ticket(never.id)).state.value == "expired"
    assert (await room.store.get_ticket(connected.id)).state.value == "waiting"


async def test_reconnecting_within_grace_cancels_the_expiry(room, clock):
    ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    await room.citizen_disconnected(ticket.id)
    clock.now += 200
    await room.citizen_connected(ticket.id)
    clock.now += 1000
    assert await room.sweep() == 0
    assert (await room.store.get_ticket(ticket.id)).state.value == "waiting"


async def test_service_times_feed_the_estimate(room, clock):
    await room.set_presence(ANNA, Presence.AVAILABLE)
    assert (await room.load("buergerbuero")).service_seconds == 600  # configured default: 10 minutes
    for _ in range(3):
        ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
        await room.call_next(ANNA, "buergerbuero")
        await room.start(ANNA, ticket.id)
        clock.now += 240
        await room.finish(ANNA, ticket.id)
    load = await room.load("buergerbuero")
    # Three 4-minute consultations against the configured 10 minutes (counted as 5): (5*600 + 3*240) / 8
    assert load.service_seconds == 465 and load.available == 1
    assert load.to_public()["estimate_minutes"] == [3, 6]  # next joiner: position 1, one clerk, 7.75 min


async def test_presence_follows_the_clerks_work(room, clock):
    await room.set_presence(ANNA, Presence.AVAILABLE)
    await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    ticket = await room.call_next(ANNA, "buergerbuero")
    assert (await room.store.presences("buergerbuero")) == {"anna": Presence.BUSY}
    clock.now += room.settings.answer_seconds  # the citizen's time to answer is over
    await room.no_show(ANNA, ticket.id)
    assert (await room.store.presences("bauamt")) == {"anna": Presence.AVAILABLE}


async def test_a_left_ticket_still_answers_its_owner_until_retention_ends(room):
    """Retention itself is the store's (see the contract suite); here: leaving keeps the answer."""
    _, token = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    await room.leave(token)
    assert (await room.ticket_for_token(token)).state.value == "left"
    with pytest.raises(TicketNotFound):
        await room.ticket_for_token("x" * 32)


async def test_a_failing_listener_neither_fails_the_command_nor_silences_the_others(room, caplog):
    heard: list[str] = []

    async def broken(events):
        raise RuntimeError("listener down")

    async def working(events):
        heard.extend(e.kind for e in events)

    room.on_events(broken)
    room.on_events(working)
    ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    assert (await room.store.get_ticket(ticket.id)).state.value == "waiting"
    assert heard == ["joined"]
    assert "a listener of queue events failed" in caplog.text


async def test_a_listener_with_kinds_hears_only_batches_with_one_of_them(room):
    """The audit, statistics and metrics listen to a few kinds: a page coming and going (thousands in a
    reconnect storm) costs them nothing, the pages' listener hears everything."""
    everything: list[str] = []
    called: list[list[str]] = []

    async def pages(events):
        everything.extend(e.kind for e in events)

    async def calls(events):
        called.append([e.kind for e in events])

    room.on_events(pages)
    room.on_events(calls, frozenset({"called"}))
    await room.set_presence(ANNA, Presence.AVAILABLE)
    ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    await room.citizen_connected(ticket.id)
    await room.citizen_disconnected(ticket.id)
    await room.call_next(ANNA, "buergerbuero")
    assert everything == ["joined", "reconnected", "disconnected", "called"]
    assert called == [["called"]]


async def test_a_failing_presence_listener_does_not_fail_the_presence_change(room, caplog):
    async def broken(clerk, presence):
        raise RuntimeError("listener down")

    room.on_presence(broken)
    await room.set_presence(ANNA, Presence.AVAILABLE)
    assert (await room.store.presences("buergerbuero"))["anna"] is Presence.AVAILABLE
    assert "a listener of clerk presence failed" in caplog.text


async def test_live_settings_follow_a_replaced_configuration(room):
    import dataclasses

    assert room.live("answer_seconds") == room.settings.answer_seconds
    room.settings = dataclasses.replace(room.settings, answer_seconds=7.0)
    assert room.live("answer_seconds") == 7.0  # not the value cached from the first configuration


async def _clerk_of(auth, session_id: str) -> Clerk:
    return (await auth.session(session_id)).clerk


@pytest.mark.redis
async def test_a_clerk_command_checks_the_session_in_the_same_round_trip_as_its_first_read(
    redis_store, clock, tmp_path
):
    """On Redis every awaited round trip is a turn of a busy event loop: the dashboard's session check and
    the command's first read leave in one write. "Call next": session + the queue's head, the commit, the
    clerk's presence; "finish": session + the ticket, the commit, the service time and the presence."""
    from server.http.auth import Auth

    settings = make_settings(tmp_path)
    room = WaitingRoom(settings, redis_store, clock=clock)
    auth = Auth(settings, redis_store)
    await auth.add_staff("anna", "Anna", "correct horse", ["buergerbuero"])
    session = await auth.login("anna", "correct horse", "10.0.0.9")
    ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    resp = redis_store._resp

    before = resp.writes
    called = await room.call_next(_clerk_of(auth, session.session_id), "buergerbuero")
    assert called.id == ticket.id and called.clerk == "anna"
    assert resp.writes - before == 3

    await room.start(session.clerk, ticket.id)
    before = resp.writes
    finished = await room.finish(_clerk_of(auth, session.session_id), ticket.id)
    assert finished.state.value == "done"
    assert resp.writes - before == 3  # the service time and the presence leave together


async def test_a_refused_session_is_the_answer_to_a_clerk_command_whatever_else_is_wrong(room, clock):
    """The session check runs alongside the command's reads; when it refuses, that refusal is the answer
    (not "unknown department" or "no ticket"), and nothing changed."""
    from server.queue.errors import NotAuthenticated

    async def refused() -> Clerk:
        raise NotAuthenticated("log in first")

    ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    for command in (
        lambda: room.call_next(refused(), "buergerbuero"),
        lambda: room.call_next(refused(), "no-such-department"),
        lambda: room.finish(refused(), "no-such-ticket"),
        lambda: room.call(refused(), ticket.id),
        lambda: room.transfer(refused(), ticket.id, "no-such-department", "note"),
        lambda: room.call(refused(), 17),
    ):
        with pytest.raises(NotAuthenticated):
            await command()
    assert (await room.store.get_ticket(ticket.id)).state.value == "waiting"
    # A clerk whose session is fine but who does not serve the department is refused as before.
    other = Clerk("bert", "Bert", frozenset({"bauamt"}))

    async def checked() -> Clerk:
        return other

    from server.queue.errors import NotAuthorised

    with pytest.raises(NotAuthorised):
        await room.call_next(checked(), "buergerbuero")
    with pytest.raises(TicketNotFound):
        await room.call(checked(), ticket.id)
    assert (await room.store.get_ticket(ticket.id)).state.value == "waiting"


async def test_a_failed_session_check_left_behind_by_a_cancelled_command_is_not_reported_unretrieved(caplog):
    """A command cancelled after its session check failed (the client went away): closing the gate reads the
    check's error, so asyncio does not log "Task exception was never retrieved" for it."""
    import gc

    from server.queue.errors import NotAuthenticated
    from server.waitingroom import _ClerkGate

    async def refused() -> Clerk:
        raise NotAuthenticated("log in first")

    gate = _ClerkGate(refused())
    for _ in range(3):  # the check runs and fails
        await asyncio.sleep(0)
    gate.close()
    del gate
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
