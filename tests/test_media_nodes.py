"""Media routed to its node: the room registry, the relay between nodes, and a consultation whose two
participants' sockets sit on different ``sprechstunde serve`` processes on one real Redis (real aiortc peers).
Then the node holding the media is killed with SIGKILL and the consultation resumes on the survivor when
the pages offer again."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from server.app import MEDIA
from server.media.registry import LocalRoomRegistry, RedisRoomRegistry, RoomRegistry
from server.signaling.relay import RELAY_TIMEOUT, MediaUnavailable, NodeGone, Relay

from .app_fixtures import free_port, wait_until_healthy
from .media.peers import Client, consecutive, wait_for
from .redis_fixtures import delete_prefix
from .socket_clients import Recorder, citizen_socket, join, staff_socket

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long password"
CONFIG = """
[server]
data_dir = "{data}"
port = {port}
joins_per_address = 1000
shutdown_seconds = 4
redis_prefix = "{prefix}"

[[departments]]
id = "buergerbuero"
name = "Bürgerbüro"
hours = {{ {hours} }}
"""
ALWAYS_OPEN = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))


# -- the registry: one contract for both implementations --

@pytest.fixture(params=["memory", "redis"])
async def registry(request, redis_url, redis_prefix):
    if request.param == "memory":
        reg: RoomRegistry = LocalRoomRegistry("node-a")
    else:
        reg = RedisRoomRegistry(redis_url, redis_prefix, "node-a")
    yield reg
    await reg.close()


async def test_a_claimed_room_is_owned_by_its_node_until_released(registry):
    assert await registry.claim("t1") == "node-a"
    assert await registry.claim("t1") == "node-a"  # claiming again confirms
    assert await registry.owner("t1") == "node-a"
    assert await registry.release("t1")
    assert await registry.claim("t2") == "node-a"


async def test_two_nodes_claiming_at_once_agree_on_one_owner(redis_url, redis_prefix):
    nodes = [RedisRoomRegistry(redis_url, redis_prefix, f"node-{i}") for i in range(4)]
    try:
        owners = await asyncio.gather(*(n.claim("t1") for n in nodes))
        assert len(set(owners)) == 1 and owners[0] in {n.node_id for n in nodes}
        a = next(n for n in nodes if n.node_id == owners[0])
        b = next(n for n in nodes if n is not a)
        assert await b.owner("t1") == a.node_id
        assert not await b.release("t1")  # only the owner releases
        assert await b.owner("t1") == a.node_id
        assert await b.claim("t1", replacing="someone-else") == a.node_id  # not the owner it means to replace
        assert await b.claim("t1", replacing=a.node_id) == b.node_id  # the owner was found gone: taken over
        assert await a.drop_node(a.node_id) == []  # its claims are gone already
        assert await a.owner("t1") == b.node_id
    finally:
        for n in nodes:
            await n.close()


async def test_a_dead_nodes_rooms_are_dropped_and_nobody_elses(redis_url, redis_prefix):
    a = RedisRoomRegistry(redis_url, redis_prefix, "node-a")
    b = RedisRoomRegistry(redis_url, redis_prefix, "node-b")
    try:
        for ticket in ("t1", "t2"):
            await a.claim(ticket)
        await b.claim("t3")
        assert sorted(await b.drop_node("node-a")) == ["t1", "t2"]
        assert (await b.owner("t1"), await b.owner("t2"), await b.owner("t3")) == (None, None, "node-b")
        assert await b.claim("t1") == "node-b"  # a page offering again re-creates the room here
    finally:
        await a.close()
        await b.close()


# -- the relay --

async def test_the_relay_answers_reports_a_gone_node_at_once_and_a_hung_one_as_media_error(redis_url, redis_prefix):
    seen: list[tuple[str, dict[str, Any]]] = []
    hang = asyncio.Event()

    async def handle_b(op: str, payload: dict[str, Any]) -> dict[str, Any]:
        seen.append((op, payload))
        if op == "hang":
            await hang.wait()
        if op == "refuse":
            raise MediaUnavailable("refused")
        return {"ok": True, "echo": payload}

    async def handle_a(op: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    a = Relay(redis_url, redis_prefix, "node-a", handle_a, timeout=0.5)
    b = Relay(redis_url, redis_prefix, "node-b", handle_b)
    await a.start()
    await b.start()
    try:
        assert await a.call("node-b", "event", {"x": [1, "ü"]}) == {"ok": True, "echo": {"x": [1, "ü"]}}
        refused = await a.call("node-b", "refuse", {})
        assert refused["error"]["code"] == "media_error"  # a refusal comes back as the acknowledgement
        with pytest.raises(NodeGone):
            await a.call("node-c", "event", {})  # nobody listens there
        with pytest.raises(MediaUnavailable):
            await a.call("node-b", "hang", {})  # within the timeout, not forever
        await a.tell("node-b", "told", {"sid": "s1"})
        await wait_for(lambda: ("told", {"sid": "s1"}) in seen, what="the told operation")
    finally:
        hang.set()
        await a.close()
        await b.close()


def test_the_redis_manager_publishes_room_changes_of_sockets_on_other_nodes():
    """The owner of a room adds a socket of another node to the consultation's socket.io room (chat,
    ``media_left``): python-socketio's pub/sub manager publishes ``enter_room``/``leave_room`` for a socket it
    does not hold. Fails loudly if an upgrade drops that."""
    source = inspect.getsource(socketio.async_pubsub_manager.AsyncPubSubManager)
    assert "'method': 'enter_room'" in source and "'method': 'leave_room'" in source
    assert "_handle_enter_room" in source and "_handle_leave_room" in source


# -- two apps on one Redis, in this process (fast) --

@pytest.fixture
async def reader(redis_url, redis_prefix):
    """The room registry as any node reads it (this test's prefix)."""
    registry = RedisRoomRegistry(redis_url, redis_prefix, "test")
    yield registry
    await registry.close()


async def test_a_call_and_the_end_on_one_node_reach_the_media_on_another(make_live_server, redis_url, redis_prefix,
                                                                        reader, clients, peers):
    """The citizen's pre-warmed connection is on node A; Anna's dashboard on B calls, connects (relayed to A),
    and finishes: A moves the connection into the consultation and ends it, and its claim is released."""
    a = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    await a.add_staff("anna", PASSWORD, ["buergerbuero"], "Anna Amt")
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    joined = await join(a.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(a.url, joined["token"])
    clients.append(citizen)
    citizen_peer, clerk_peer = Client("citizen"), Client("clerk")
    peers += [citizen_peer, clerk_peer]
    too_early = await clerk.call("media_offer", {"sdp": await clerk_peer.offer(), "ticket": ticket})
    assert too_early["error"]["code"] == "not_in_consultation"
    assert await reader.owner(ticket) is None  # a refused offer claims nothing
    assert (await offer(citizen, citizen_peer))["room"] == "waiting"
    assert (await clerk.call("call_next", {"department": "buergerbuero"}))["ok"]
    await citizen.wait_for("media_layout", lambda m: m["room"] == "consultation")
    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"
    await see_each_other(citizen, clerk, citizen_peer, clerk_peer, ticket)
    hub_a, hub_b = (node.app[MEDIA].hub for node in (a, b))
    assert hub_a is not None and hub_b is not None
    assert sorted(hub_a.participants(f"c:{ticket}")) == [f"citizen:{ticket}", "staff:anna"]
    assert hub_b.participants(f"c:{ticket}") == []
    assert await reader.owner(ticket) == a.app[MEDIA].cluster.node_id

    assert (await clerk.call("finish", {"ticket": ticket}))["ok"]  # on B
    assert (await citizen.wait_for("media_end"))["reason"] == "finished"
    assert (await clerk.wait_for("media_end"))["reason"] == "finished"  # from A, through Redis
    await wait_for(lambda: hub_a.participants(f"c:{ticket}") == [], what="A's room emptied")
    async with asyncio.timeout(10):
        while await reader.owner(ticket) is not None:  # noqa: ASYNC110 - polling Redis, no event
            await asyncio.sleep(0.05)


async def test_a_stopping_media_node_hands_pages_on_other_nodes_over(make_live_server, redis_url, redis_prefix,
                                                                    clients, peers):
    """SIGTERM (the app's shutdown) on node A, which holds the consultation's media, while Anna's dashboard
    is on B: her page is not told that the video ended but, like a page of a stopping node, gets
    ``server_stopping`` (a short retry) and is disconnected by B; it reconnects and offers again, and B takes
    the room over."""
    a = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await make_live_server(None, redis_url=redis_url, redis_prefix=redis_prefix)
    await a.add_staff("anna", PASSWORD, ["buergerbuero"], "Anna Amt")
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    joined = await join(a.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(a.url, joined["token"])
    clients.append(citizen)
    citizen_peer, clerk_peer = Client("citizen"), Client("clerk")
    peers += [citizen_peer, clerk_peer]
    assert (await offer(citizen, citizen_peer))["room"] == "waiting"
    assert (await clerk.call("call_next", {"department": "buergerbuero"}))["ok"]
    await citizen.wait_for("media_layout", lambda m: m["room"] == "consultation")
    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"
    await see_each_other(citizen, clerk, citizen_peer, clerk_peer, ticket)

    await a.stop()
    told = await clerk.wait_for("server_stopping")
    assert 0 < told["retry_after"] <= 1
    async with asyncio.timeout(5):  # disconnected by its own node, B
        while clerk.client.connected:  # noqa: ASYNC110 - no event for it
            await asyncio.sleep(0.02)
    assert "media_end" not in [name for name, _ in clerk.events]  # its video is not over: it offers again
    assert citizen.last("media_end") == {"ticket": ticket, "reason": "server_stopping"}  # a page of A, as before

    clerk = await staff_socket(b.url, "anna", PASSWORD)  # both pages reconnect, to B
    citizen = await citizen_socket(b.url, joined["token"])
    clients += [clerk, citizen]
    citizen_peer, clerk_peer = Client("citizen again"), Client("clerk again")
    peers += [citizen_peer, clerk_peer]
    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"
    assert (await offer(citizen, citizen_peer))["room"] == "consultation"
    await see_each_other(citizen, clerk, citizen_peer, clerk_peer, ticket)
    hub_b = b.app[MEDIA].hub
    assert hub_b is not None and sorted(hub_b.participants(f"c:{ticket}")) == [f"citizen:{ticket}", "staff:anna"]


# -- two real server processes on one Redis --

class Node:
    def __init__(self, tmp_path: Path, name: str, redis_url: str, prefix: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(CONFIG.format(data=tmp_path / name, port=self.port, hours=ALWAYS_OPEN,
                                             prefix=prefix), "utf-8")
        self.log = tmp_path / f"{name}.log"
        self.env = {**os.environ, "REDIS_URL": redis_url}
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config", str(self.config), "serve"],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def wait_healthy(self) -> None:
        assert self.proc is not None
        wait_until_healthy(self.proc, self.port, self.output)

    def output(self) -> str:
        return self.log.read_text("utf-8")[-4000:]

    def add_staff(self, username: str, *options: str) -> None:
        """``sprechstunde staff add`` with ``options`` (``--name``, ``--roles``, ...); staff live in Redis."""
        added = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(self.config), "staff", "add",
                                username, *options, "--password-stdin"], input=PASSWORD + "\n",
                               capture_output=True, text=True, timeout=60, cwd=ROOT, env=self.env)
        assert added.returncode == 0, added.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@contextlib.contextmanager
def node_pair(tmp_path: Path, redis_url: str, add_staff: Callable[[Node], None]) -> Iterator[tuple[Node, Node]]:
    """Two nodes on one Redis under a fresh prefix; ``add_staff(a)`` runs while they start (staff live in
    Redis: both nodes know them). Stopped and their keys removed afterwards."""
    prefix = f"sps-test-{uuid.uuid4().hex}:"
    a, b = Node(tmp_path, "a", redis_url, prefix), Node(tmp_path, "b", redis_url, prefix)
    for node in (a, b):
        node.start()
    try:
        add_staff(a)
        for node in (a, b):
            node.wait_healthy()
        yield a, b
    finally:
        for node in (a, b):
            node.stop()
        delete_prefix(redis_url, prefix)


@pytest.fixture
def two_nodes(tmp_path, redis_url):
    with node_pair(tmp_path, redis_url, lambda a: a.add_staff("anna")) as pair:
        yield pair


async def offer(socket: Recorder, peer: Client, **extra: Any) -> dict[str, Any]:
    ack = await socket.call("media_offer", {"sdp": await peer.offer(), **extra})
    assert ack.get("ok"), ack
    await peer.accept(ack["sdp"])
    return ack


async def owner_of(node: Node, ticket: str) -> str:
    registry = RedisRoomRegistry(node.env["REDIS_URL"], node.prefix, "test")
    try:
        return await registry.owner(ticket) or ""
    finally:
        await registry.close()


def mid_showing(layout: dict[str, Any], participant: str) -> str:
    return str(next(s for s in layout["slots"] if s["participant"] == participant)["video_mid"])


async def layout_showing(socket: Recorder, participant: str, since: int) -> str:
    """The video mid in which the page shows ``participant``, from a layout that came after event ``since``."""
    def found() -> dict[str, Any] | None:
        return next((d for e, d in reversed(socket.events[since:])
                     if e == "media_layout" and any(s["participant"] == participant for s in d["slots"])), None)

    await wait_for(lambda: found() is not None, what=f"a layout showing {participant}")
    layout = found()
    assert layout is not None
    return mid_showing(layout, participant)


async def see_each_other(citizen: Recorder, clerk: Recorder, citizen_peer: Client, clerk_peer: Client,
                         ticket: str, since: tuple[int, int] = (0, 0)) -> None:
    """Both pages learn where the other is shown, and each receives the other's camera, in order."""
    citizen_sees = await layout_showing(citizen, "staff:anna", since[0])
    clerk_sees = await layout_showing(clerk, f"citizen:{ticket}", since[1])
    await wait_for(lambda: len(clerk_peer.frames_from(clerk_sees)) >= 20, what="the clerk sees the citizen")
    await wait_for(lambda: len(citizen_peer.frames_from(citizen_sees)) >= 20, what="the citizen sees the clerk")
    assert consecutive([n for n, _ in clerk_peer.frames_from(clerk_sees)[-10:]])
    assert consecutive([n for n, _ in citizen_peer.frames_from(citizen_sees)[-10:]])


async def test_a_consultation_across_two_nodes_and_resumed_after_the_media_node_is_killed(two_nodes, clients, peers):
    """The citizen's page is on node A (their pre-warmed connection claims the ticket's rooms for A), Anna's
    dashboard on node B: B relays her call and her offer to A. Then A is killed: the citizen's page
    reconnects to B, both pages offer again and B takes the rooms over."""
    a, b = two_nodes
    clerk = await staff_socket(b.url, "anna", PASSWORD)
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    joined = await join(a.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(a.url, joined["token"])
    clients.append(citizen)
    await citizen.wait_for("ticket")
    citizen_peer, clerk_peer = Client("citizen"), Client("clerk")
    peers += [citizen_peer, clerk_peer]

    # Anna (available, on B) counts for the head of the queue: the citizen's connection opens while waiting, on A
    assert (await offer(citizen, citizen_peer))["room"] == "waiting"
    assert (await clerk.call("call_next", {"department": "buergerbuero"}))["ok"]  # on B; A moves the connection
    await citizen.wait_for("media_layout", lambda m: m["room"] == "consultation")
    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"  # relayed B -> A
    await see_each_other(citizen, clerk, citizen_peer, clerk_peer, ticket)
    stats = await clerk.call("media_stats")  # an event of B's socket, answered by A's hub
    assert stats["ok"] and stats["stats"]["room_id"] == f"c:{ticket}", stats
    assert (await clerk.call("chat", {"text": "Guten Tag"}))["ok"]
    said = await citizen.wait_for("chat")  # the socket.io room of the consultation spans both nodes
    assert (said["role"], said["text"]) == ("clerk", "Guten Tag")
    assert a.proc is not None and b.proc is not None
    assert f"-{a.proc.pid}-" in await owner_of(b, ticket)  # the rooms live on A
    second = await join(a.url)  # another citizen checks their camera on A: a room A holds
    checking = await citizen_socket(a.url, second["token"])
    clients.append(checking)
    check_peer = Client("checking")
    peers.append(check_peer)
    assert (await offer(checking, check_peer, check=True))["room"] == "waiting"
    assert f"-{a.proc.pid}-" in await owner_of(b, second["ticket"]["id"])

    # A hangs: B's page gets a clear error within the relay's timeout, not a hanging acknowledgement
    a.proc.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    hung = await clerk.call("media_stats")
    assert hung["error"]["code"] == "media_error", hung
    assert time.monotonic() - started < RELAY_TIMEOUT + 3

    # A (the media node, holding the citizen's page too) dies
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=15)
    await citizen.close()
    citizen = await citizen_socket(b.url, joined["token"])  # the page reconnects, to the survivor
    clients.append(citizen)
    assert (await citizen.wait_for("ticket"))["state"] in ("called", "in_consultation")
    citizen_peer, clerk_peer = Client("citizen again"), Client("clerk again")
    peers += [citizen_peer, clerk_peer]
    since = (len(citizen.events), len(clerk.events))
    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"  # B takes the room over
    assert (await offer(citizen, citizen_peer))["room"] == "consultation"
    await see_each_other(citizen, clerk, citizen_peer, clerk_peer, ticket, since)
    assert f"-{b.proc.pid}-" in await owner_of(b, ticket)
    async with asyncio.timeout(20):  # B's cluster takes A for dead (no heartbeat for 5 s) and drops its rooms
        while await owner_of(b, second["ticket"]["id"]):  # noqa: ASYNC110 - polling Redis, no event to wait on
            await asyncio.sleep(0.2)
    assert (await clerk.call("finish", {"ticket": ticket}))["ok"]
    assert (await citizen.wait_for("media_end"))["reason"] == "finished"

