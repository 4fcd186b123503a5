"""socket.io end to end, with real python-socketio clients against the running app."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from .socket_clients import WAIT, citizen_socket, join, positions, staff_socket


async def test_citizen_sees_ticket_and_position_and_is_told_when_called(live_server, clients):
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"], "Anna Amt")
    first, second = await join(live_server.url), await join(live_server.url)
    c1 = await citizen_socket(live_server.url, first["token"])
    c2 = await citizen_socket(live_server.url, second["token"])
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients += [c1, c2, clerk]
    assert (await c2.wait_for("ticket"))["position"] == 2
    update = await c2.wait_for("queue")
    assert positions(update).index(second["ticket"]["seq"]) + 1 == 2
    dash = await clerk.wait_for("dashboard")
    assert [t["id"] for t in dash["departments"][0]["tickets"]] == [first["ticket"]["id"], second["ticket"]["id"]]

    ack = await clerk.call("call_next", {"department": "buergerbuero"})
    assert ack["ok"] and ack["ticket"]["id"] == first["ticket"]["id"]
    called = await c1.wait_for("ticket", lambda t: t["state"] == "called")
    assert called["clerk_name"] == "Anna Amt"
    # The second citizen derives position 1 from the next compact department update.
    await c2.wait_for("queue", lambda u: positions(u) == [second["ticket"]["seq"]])
    # The clerk's colleagues' dashboards hear of it too, and the clerk is now busy.
    await clerk.wait_for("ticket", lambda e: e["kind"] == "called")
    await clerk.wait_for("presence", lambda p: p["username"] == "anna" and p["status"] == "busy")

    assert (await c1.call("answer"))["ticket"]["state"] == "in_consultation"
    ack = await clerk.call("finish", {"ticket": first["ticket"]["id"]})
    assert ack["ticket"]["state"] == "done"
    await c1.wait_for("ticket", lambda t: t["state"] == "done")


async def test_citizen_socket_cannot_send_staff_events(live_server, clients):
    ticket = await join(live_server.url)
    await join(live_server.url)
    c = await citizen_socket(live_server.url, ticket["token"])
    clients.append(c)
    for event, data in (("call_next", {"department": "buergerbuero"}), ("call", {"ticket": ticket["ticket"]["id"]}),
                        ("finish", {"ticket": ticket["ticket"]["id"]}), ("presence", {"status": "available"})):
        ack = await c.call(event, data)
        assert ack["error"]["code"] == "forbidden", event
    assert (await live_server.room.store.waiting_counts(["buergerbuero"])) == {"buergerbuero": 2}


async def test_staff_socket_cannot_send_citizen_events(live_server, clients):
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"])
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients.append(clerk)
    assert (await clerk.call("leave"))["error"]["code"] == "forbidden"


@pytest.mark.parametrize("auth", [{"token": "x" * 32}, {"token": 5}, {"token": None}, None, {"other": 1}])
async def test_wrong_tokens_and_missing_sessions_are_refused_at_connect(live_server, auth):
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(live_server.url, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    await client.disconnect()


async def test_malformed_payloads_and_foreign_tickets(live_server, clients):
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"])
    bau = await join(live_server.url, "bauamt")
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients.append(clerk)
    assert (await clerk.call("call", "not an object"))["error"]["code"] == "invalid_input"
    assert (await clerk.call("call", {"ticket": 5}))["error"]["code"] == "invalid_input"
    assert (await clerk.call("call", {"ticket": bau["ticket"]["id"]}))["error"]["code"] == "ticket_not_found"
    assert (await clerk.call("call_next", {"department": "bauamt"}))["error"]["code"] == "forbidden"
    assert (await clerk.call("call_next", {"department": "nope"}))["error"]["code"] == "unknown_department"
    assert (await clerk.call("call_next", {"department": "buergerbuero"}))["error"]["code"] == "queue_empty"


async def test_oversized_socket_messages_are_refused(live_server, clients):
    ticket = await join(live_server.url)
    c = await citizen_socket(live_server.url, ticket["token"])
    clients.append(c)
    with pytest.raises((socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError,
                        socketio.exceptions.DisconnectedError)):
        await c.client.call("leave", {"pad": "x" * 64_000}, timeout=5)
    # The message was dropped (the server closes such a connection); the ticket is untouched.
    t = await live_server.room.store.get_ticket(ticket["ticket"]["id"])
    assert t.state.value == "waiting"


async def test_a_browser_sized_offer_fits_the_message_cap(live_server, clients):
    """Chromium's offer with three audio+video pairs and every codec is about 18 KB (a town-hall viewer):
    it must reach the server and get an answer, not a dropped connection (the cap was 16 KiB)."""
    ticket = await join(live_server.url)
    c = await citizen_socket(live_server.url, ticket["token"])
    clients.append(c)
    ack = await c.call("media_offer", {"sdp": "v=0\r\n" + "a=x-padding\r\n" * 1600, "check": True})
    assert ack["error"]["code"] == "no_media"  # read and refused as an offer, with a clear answer
    assert c.client.connected


async def test_reload_keeps_ticket_and_position_and_disconnect_starts_the_grace_period(live_server, clients):
    await join(live_server.url)
    mine = await join(live_server.url)
    c = await citizen_socket(live_server.url, mine["token"])
    assert (await c.wait_for("ticket"))["position"] == 2
    await c.close()
    store = live_server.room.store

    async def until_disconnected():
        while (await store.get_ticket(mine["ticket"]["id"])).disconnected_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polls a condition in the store; no event to wait on

    await asyncio.wait_for(until_disconnected(), WAIT)
    again = await citizen_socket(live_server.url, mine["token"])  # the reload
    clients.append(again)
    view = await again.wait_for("ticket")
    assert (view["id"], view["position"], view["state"]) == (mine["ticket"]["id"], 2, "waiting")
    t = await store.get_ticket(mine["ticket"]["id"])
    assert t.disconnected_at is None


async def test_dashboards_hear_of_pages_coming_and_going_once_per_interval(live_server, clients):
    """Pages that disconnect and reconnect reach the clerk's dashboard as one ``connectivity`` message per
    department and interval, with each ticket's latest state, not as a ``ticket`` event per page."""
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"])
    tickets = [await join(live_server.url) for _ in range(3)]
    pages = [await citizen_socket(live_server.url, t["token"]) for t in tickets]
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    ids = {t["ticket"]["id"] for t in tickets}
    for p in pages:
        await p.close()

    def states(update):  # every ticket's latest state, once all three are in one message or across several
        return {i: s for u in [*(d for n, d in clerk.events if n == "connectivity"), update]
                for i, s in u["tickets"].items()}

    gone = await clerk.wait_for("connectivity", lambda u: set(states(u)) == ids
                                and all(s is not None for s in states(u).values()))
    assert gone["department"] == "buergerbuero"
    again = [await citizen_socket(live_server.url, t["token"]) for t in tickets]
    clients.extend(again)
    await clerk.wait_for("connectivity", lambda u: all(states(u)[i] is None for i in ids))
    assert not [d for n, d in clerk.events if n == "ticket" and d["kind"] in ("disconnected", "reconnected")]
    # A dashboard opened now sees them connected, as the messages said.
    other = await staff_socket(live_server.url, "anna", "correct horse battery", clerk.cookie)
    clients.append(other)
    dash = await other.wait_for("dashboard")
    assert all(t["disconnected_at"] is None for t in dash["departments"][0]["tickets"])


async def test_transferred_citizen_follows_the_new_department(live_server, clients):
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero", "bauamt"])
    await join(live_server.url, "bauamt")
    mine = await join(live_server.url)
    c = await citizen_socket(live_server.url, mine["token"])
    clerk = await staff_socket(live_server.url, "anna", "correct horse battery")
    clients += [c, clerk]
    await clerk.call("call_next", {"department": "buergerbuero"})
    ack = await clerk.call("transfer", {"ticket": mine["ticket"]["id"], "department": "bauamt", "note": "Anbau"})
    assert ack["ok"], ack
    moved = await c.wait_for("ticket", lambda t: t["department"] == "bauamt")
    assert moved["state"] == "waiting" and moved["transferred_from"] == "buergerbuero"
    # Arrival order is kept: the citizen who joined the Bauamt earlier than them is still ahead.
    assert moved["position"] == 2
    sub = await c.call("subscribe")
    assert sub["ok"]
    await c.wait_for("queue", lambda u: u["d"] == "bauamt" and mine["ticket"]["seq"] in positions(u))
    event = await clerk.wait_for("ticket", lambda e: e["kind"] == "transferred")
    assert event["ticket"]["transfer_note"] == "Anbau" and event["previous_department"] == "buergerbuero"


async def test_position_updates_are_coalesced(make_live_server, clients):
    """Ten joins in a burst cost a waiting page at most a few queue updates, not ten."""
    live_server = await make_live_server(position_interval=3.0)
    first = await join(live_server.url)
    c = await citizen_socket(live_server.url, first["token"])
    clients.append(c)
    await c.wait_for("queue")
    before = sum(1 for name, _ in c.events if name == "queue")
    others = await asyncio.gather(*(join(live_server.url) for _ in range(10)))
    seqs = {o["ticket"]["seq"] for o in others}
    await c.wait_for("queue", lambda u: seqs <= set(positions(u)))
    received = sum(1 for name, _ in c.events if name == "queue") - before
    assert 1 <= received <= 3


async def test_away_survives_a_dashboard_reload_and_names_reach_colleagues(live_server, clients):
    """Regression: reconnecting always made a clerk available again."""
    await live_server.add_staff("anna", "correct horse battery", ["buergerbuero"], "Anna Amt")
    await live_server.add_staff("ben", "correct horse battery", ["buergerbuero"], "Ben Bau")
    anna = await staff_socket(live_server.url, "anna", "correct horse battery")
    assert (await anna.call("presence", {"status": "away"}))["status"] == "away"
    ben = await staff_socket(live_server.url, "ben", "correct horse battery")
    clients.append(ben)
    dash = await ben.wait_for("dashboard")
    assert dash["departments"][0]["clerk_names"] == {"anna": "Anna Amt", "ben": "Ben Bau"}
    await anna.close()
    await ben.wait_for("presence", lambda p: p["username"] == "anna" and p["status"] == "offline")
    anna = await staff_socket(live_server.url, "anna", "correct horse battery", cookie=anna.cookie)  # reload
    clients.append(anna)
    await ben.wait_for("presence", lambda p: p["username"] == "anna" and p["status"] == "away")
