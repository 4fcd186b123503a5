"""No-show fairness through the API, the sockets and both stores: a called citizen's answer time before
"no-show" is possible, and taking the old place back within the rejoin window (issue 12)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.http.keys import ROOM
from server.queue.errors import AnswerTimeRunning, RejoinExpired
from server.queue.model import Clerk, JoinRequest, TicketState
from server.store.base import TERMINAL_RETENTION_SECONDS, Store
from server.store.memory import MemoryStore
from server.store.redis import RedisStore
from server.waitingroom import WaitingRoom

from .app_fixtures import add_staff, login, make_settings
from .socket_clients import citizen_socket, join, staff_socket
from .store_contract import CALL, NO_SHOW, NOW, REJOIN, make_ticket, put, update

ANNA = Clerk("anna", "Anna", frozenset({"buergerbuero", "bauamt"}))
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the service with an injected clock, on both stores --
@pytest.fixture
async def room(store: Store, tmp_path: Path) -> WaitingRoom:
    return WaitingRoom(make_settings(tmp_path, answer_seconds=120, rejoin_seconds=600), store, clock=Clock())


async def test_no_show_waits_for_the_answer_time_and_the_citizen_may_rejoin_at_the_old_place(room):
    clock = room.clock
    first, token = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    later, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.2")
    called = await room.call_next(ANNA, "buergerbuero")
    assert called.id == first.id
    assert (await room.citizen_view(called))["answer_seconds_left"] == 120

    clock.now += 119
    with pytest.raises(AnswerTimeRunning, match="1 seconds to answer"):
        await room.no_show(ANNA, first.id)
    assert (await room.store.get_ticket(first.id)).state is TicketState.CALLED  # nothing changed
    clock.now += 1
    gone = await room.no_show(ANNA, first.id)
    view = await room.citizen_view(gone)
    assert (view["state"], view["rejoin_seconds_left"], view["answer_seconds_left"]) == ("no_show", 600, None)

    clock.now += 300
    back = await room.rejoin(token)
    assert (back.state, back.seq) == (TicketState.WAITING, first.seq)
    assert await room.store.waiting("buergerbuero") == [(first.seq, first.id), (later.seq, later.id)]
    assert (await room.citizen_view(back))["position"] == 1  # ahead of the one who came later
    assert back.disconnected_at == clock.now  # over HTTP: the page's connect clears it

    # Once: a second no-show is final.
    await room.call_next(ANNA, "buergerbuero")
    clock.now += 120
    gone = await room.no_show(ANNA, first.id)
    assert (await room.citizen_view(gone))["rejoin_seconds_left"] is None
    with pytest.raises(RejoinExpired):
        await room.rejoin(token)


async def test_the_rejoin_window_closes(room):
    ticket, token = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
    await room.call_next(ANNA, "buergerbuero")
    room.clock.now += 120
    await room.no_show(ANNA, ticket.id)
    room.clock.now += 600
    with pytest.raises(RejoinExpired):
        await room.rejoin(token)
    assert (await room.store.get_ticket(ticket.id)).state is TicketState.NO_SHOW
    assert await room.store.waiting("buergerbuero") == []


async def test_a_rejoined_ticket_is_live_again_in_the_store(store: Store, tmp_path: Path) -> None:
    """A final ticket is kept for the retention period only; taken back, it is live again on either store."""
    clock = [NOW]
    if isinstance(store, MemoryStore):
        store = MemoryStore(staff_file=tmp_path / "staff.json", clock=lambda: clock[0])
    await put(store, make_ticket("t1", 1), make_ticket("t2", 2))
    await update(store, "t1", CALL)
    await update(store, "t1", NO_SHOW)
    await update(store, "t1", REJOIN)
    assert await store.waiting("a") == [(1, "t1"), (2, "t2")]
    assert await store.position("a", "t1", 1) == 1
    if isinstance(store, RedisStore):
        assert await store._resp.call("TTL", store._keys.ticket("t1")) == -1
        assert await store._resp.call("TTL", store._keys.token("hash-t1")) == -1
    else:
        clock[0] += TERMINAL_RETENTION_SECONDS + 1
        assert (await store.get_ticket("t1")).state is TicketState.WAITING
        assert await store.ticket_id_for_token("hash-t1") == "t1"


# -- HTTP --
async def test_http_no_show_too_early_then_rejoin(make_app, aiohttp_client):
    app = make_app(answer_seconds=120)
    client = await aiohttp_client(app)
    clock = Clock()
    app[ROOM].clock = clock
    await add_staff(app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    a = await (await client.post("/api/departments/buergerbuero/tickets", json={"consent": True})).json()
    b = await (await client.post("/api/departments/buergerbuero/tickets", json={"consent": True})).json()
    tid = a["ticket"]["id"]
    await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
    mine = (await (await client.get("/api/tickets/me", headers=bearer(a["token"]))).json())["ticket"]
    assert (mine["state"], mine["answer_seconds"], mine["answer_seconds_left"]) == ("called", 120, 120)

    clock.now += 1.5  # the 1.5-second no-show of issue 12
    resp = await client.post(f"/api/staff/tickets/{tid}/no-show", headers=h)
    error = (await resp.json())["error"]
    assert (resp.status, error["code"]) == (409, "answer_time_running") and "119 seconds" in error["message"]

    resp = await client.post("/api/tickets/me/rejoin", headers=bearer(a["token"]))  # not a no-show
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "illegal_transition")

    clock.now += 118.5
    resp = await client.post(f"/api/staff/tickets/{tid}/no-show", headers=h)
    assert (await resp.json())["ticket"]["state"] == "no_show"
    mine = (await (await client.get("/api/tickets/me", headers=bearer(a["token"]))).json())["ticket"]
    assert (mine["state"], mine["rejoin_seconds_left"]) == ("no_show", app[ROOM].settings.rejoin_seconds)

    resp = await client.post("/api/tickets/me/rejoin", headers=bearer(a["token"]))
    back = (await resp.json())["ticket"]
    assert (resp.status, back["state"], back["seq"], back["position"]) == (200, "waiting", a["ticket"]["seq"], 1)
    other = (await (await client.get("/api/tickets/me", headers=bearer(b["token"]))).json())["ticket"]
    assert other["position"] == 2

    resp = await client.post("/api/tickets/me/rejoin", headers=bearer("x" * 32))
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "ticket_not_found")


async def test_rejoin_into_a_department_that_closed_meanwhile_is_refused(make_app, aiohttp_client):
    app = make_app(answer_seconds=0)
    client = await aiohttp_client(app)
    await add_staff(app, "anna")
    h = {"X-CSRF-Token": await login(client, "anna")}
    a = await (await client.post("/api/departments/buergerbuero/tickets", json={"consent": True})).json()
    await client.post("/api/staff/departments/buergerbuero/call-next", headers=h)
    await client.post(f"/api/staff/tickets/{a['ticket']['id']}/no-show", headers=h)
    room = app[ROOM]
    room.is_open = lambda department, now=None: False  # the hours ended meanwhile
    resp = await client.post("/api/tickets/me/rejoin", headers=bearer(a["token"]))
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "department_closed")
    assert (await room.store.get_ticket(a["ticket"]["id"])).state is TicketState.NO_SHOW


# -- sockets --
async def test_socket_rejoin_with_the_page_still_connected(make_live_server, clients):
    server = await make_live_server(answer_seconds=0)
    await server.add_staff("anna", PASSWORD, ["buergerbuero"])
    a = await join(server.url)
    b = await join(server.url)
    page = await citizen_socket(server.url, a["token"])
    other = await citizen_socket(server.url, b["token"])
    clerk = await staff_socket(server.url, "anna", PASSWORD)
    clients.extend([page, other, clerk])
    dashboard = await clerk.wait_for("dashboard")
    assert dashboard["departments"][0]["answer_seconds"] == 0

    ack = await clerk.call("call_next", {"department": "buergerbuero"})
    ack = await clerk.call("no_show", {"ticket": ack["ticket"]["id"]})
    assert ack["ticket"]["state"] == "no_show"
    gone = await page.wait_for("ticket", lambda t: t["state"] == "no_show")
    assert gone["rejoin_seconds_left"] > 0

    ack = await page.call("rejoin")
    assert (ack["ticket"]["state"], ack["ticket"]["position"]) == ("waiting", 1)
    event = await clerk.wait_for("ticket", lambda e: e["kind"] == "rejoined")
    assert event["ticket"]["id"] == a["ticket"]["id"] and event["ticket"]["state"] == "waiting"
    # The other citizen's page learns that someone is ahead again (the compact queue update).
    seqs = [a["ticket"]["seq"], b["ticket"]["seq"]]
    await other.wait_for("queue", lambda q: q["w"] == [seqs[0], seqs[1] - seqs[0]])
    # Connected over its socket: the ticket does not count as gone (it would expire after the grace period).
    assert (await server.room.store.get_ticket(a["ticket"]["id"])).disconnected_at is None

    ack = await page.call("rejoin")
    assert ack["error"]["code"] == "illegal_transition"  # waiting already


async def test_the_answer_time_is_enforced_on_the_socket_too(make_live_server, clients):
    server = await make_live_server()  # the default: two minutes
    await server.add_staff("anna", PASSWORD, ["buergerbuero"])
    await join(server.url)
    clerk = await staff_socket(server.url, "anna", PASSWORD)
    clients.append(clerk)
    assert (await clerk.wait_for("dashboard"))["departments"][0]["answer_seconds"] == 120
    ack = await clerk.call("call_next", {"department": "buergerbuero"})
    started = time.time()
    ack = await clerk.call("no_show", {"ticket": ack["ticket"]["id"]})
    assert ack["error"]["code"] == "answer_time_running"
    assert time.time() - started < 120  # (a clear refusal, at once)


def test_the_scripts_messages_exist_in_both_languages() -> None:
    """Every message id the waiting page and the dashboard scripts use exists in German and English."""
    import re

    from server.i18n import DE, EN

    web = Path(__file__).resolve().parents[1] / "web" / "static" / "js"
    used: set[str] = set()
    for name in ("wait.js", "staff.js", "common.js"):
        text = (web / name).read_text("utf-8")
        used |= {f"js.{m}" for m in re.findall(r"""\btn?\(\s*['`]([\w.]+)['`]""", text)}
    prefixes = {m for m in used if m.endswith(".")}  # t(`final_title.${state}`)
    plural = {m for m in used if f"{m}.one" in DE}
    for catalog in (DE, EN):
        assert sorted(m for m in used - plural - prefixes if m not in catalog) == []
    assert {"js.no_show_rejoin", "js.answer_soon", "js.staff_answer_ended", "js.transfer_confirm"} <= used
