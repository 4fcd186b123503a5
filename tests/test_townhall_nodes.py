"""A town-hall stage across two real ``sprechstunde serve`` processes on one real Redis: the politician
publishes on node A, a viewer whose socket sits on node B gets him through B's relay of the stage (real aiortc
peers that decode what they get); when A is killed with SIGKILL, B's viewer is told at once (its layout loses
the publisher)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .media.peers import Client, consecutive, wait_for
from .socket_clients import Recorder, staff_socket
from .test_media_nodes import PASSWORD, Node, node_pair
from .test_townhall_signaling import audience_socket, iso

pytestmark = pytest.mark.redis


def add_town_hall_staff(a: Node) -> None:
    a.add_staff("mona", "--name", "Mona Moderation", "--roles", "moderator")
    a.add_staff("paul", "--name", "Paul Politik", "--roles", "clerk")


@pytest.fixture
def two_nodes(tmp_path: Path, redis_url: str) -> Any:
    with node_pair(tmp_path, redis_url, add_town_hall_staff) as pair:
        yield pair


async def create_live_event(url: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        resp = await http.post(f"{url}/api/session", json={"username": "mona", "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        csrf = (await resp.json())["csrf"]
        now = time.time()
        body = {"title": "Bürgersprechstunde mit Paul", "description": "Haushalt", "politicians": ["paul"],
                "starts_at": iso(now + 60), "ends_at": iso(now + 3600), "audience_limit": 50}
        resp = await http.post(f"{url}/api/townhall/events", json=body, headers={"X-CSRF-Token": csrf})
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["event"]["id"])


async def audience_on(url: str, event: str) -> Recorder:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{url}/api/townhall/events/{event}/audience")
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["token"]
    socket = await audience_socket(url, token)
    await socket.wait_for("th_state")
    return socket


async def stage_offer(socket: Recorder, peer: Client, **extra: Any) -> dict[str, Any]:
    ack = await socket.call("th_media_offer", {"sdp": await peer.offer(), **extra})
    assert ack.get("ok"), ack
    await peer.accept(ack["sdp"])
    return ack


def showing(layout: dict[str, Any], participant: str) -> dict[str, Any] | None:
    return next((s for s in layout["slots"] if s["participant"] == participant), None)


async def watch_on_b(b: Node, event: str, clients: list[Recorder], peers: list[Client],
                     name: str) -> tuple[Recorder, Client, dict[str, Any]]:
    """An audience member on node B offers as a viewer and gets the politician (publishing on node A)."""
    socket = await audience_on(b.url, event)
    clients.append(socket)
    viewer = Client(name, slots=2, publish=False)
    peers.append(viewer)
    assert (await stage_offer(socket, viewer))["role"] == "viewer"
    layout = await socket.wait_for("th_media_layout", lambda m: showing(m, "staff:paul") is not None)
    slot = showing(layout, "staff:paul")
    assert slot is not None
    mid = slot["video_mid"]
    await wait_for(lambda: len(viewer.frames_from(mid)) >= 30, what="the viewer on node B to see the politician")
    assert consecutive([n for n, _ in viewer.frames_from(mid)])
    await wait_for(lambda: viewer.received.get(slot["audio_mid"]) is not None
                   and viewer.received[slot["audio_mid"]].audio_frames > 0, what="sound on node B")
    return socket, viewer, slot


async def test_a_viewer_on_node_b_watches_the_politician_publishing_on_node_a(two_nodes, clients, peers) -> None:
    """The stage across two processes: B takes one relay of it from A. Ending the event on A ends B's stage
    within a round; killing A tells B's viewers at once."""
    a, b = two_nodes
    mona = await staff_socket(a.url, "mona", PASSWORD)
    paul = await staff_socket(a.url, "paul", PASSWORD)
    clients.extend([mona, paul])

    async def live_on_a_watched_on_b(viewer: str) -> tuple[str, Recorder, dict[str, Any]]:
        """A new event started on A with Paul publishing there, and a viewer of it on B."""
        event = await create_live_event(a.url)
        assert (await mona.call("th_start", {"event": event}))["ok"]
        politician = Client("paul", slots=1)
        peers.append(politician)
        assert (await stage_offer(paul, politician, event=event))["role"] == "publisher"
        socket, _, slot = await watch_on_b(b, event, clients, peers, viewer)
        return event, socket, slot

    first, socket, slot = await live_on_a_watched_on_b("viewer1")
    assert slot["name"] == "Paul Politik" and slot["role"] == "politician"  # labels travel with the relay

    # the event ends on node A: node B's viewer is told (th_media_end) within a round
    assert (await mona.call("th_end", {"event": first}))["ok"]
    ended_at = time.monotonic()
    await socket.wait_for("th_media_end", timeout=10)
    print(f"event ended on node A: node B's viewer told after {time.monotonic() - ended_at:.2f} s")

    _second, socket, _ = await live_on_a_watched_on_b("viewer2")

    # node A dies: node B's viewer is told within seconds (the relay's connection closes with the process)
    seen = len(socket.events)
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait(timeout=10)
    killed_at = time.monotonic()
    await wait_for(lambda: any(name == "th_media_layout" and showing(data, "staff:paul") is None
                               for name, data in socket.events[seen:]), limit=10,
                   what="node B's viewer to be told that the politician is gone")
    told = time.monotonic() - killed_at
    assert told < 6.0
    print(f"node A killed: node B's viewer told after {told:.2f} s")


@pytest.mark.parametrize(("server", "error"), [
    ({"stage_relay_host": "10.0.0.11", "stage_relay_port": 7443}, None),
    ({"stage_relay_port": 0}, None),
    ({"stage_relay_port": 70000}, "stage_relay_port"),
    ({"stage_relay_port": -1}, "stage_relay_port"),
    ({"stage_relay_port": "7443"}, "stage_relay_port"),
])
def test_the_stage_relay_listener_is_configured(server: dict[str, Any], error: str | None) -> None:
    from server.settings import ConfigError, settings_from_dict

    raw = {"server": server, "departments": [{"id": "buergerbuero", "name": "Bürgerbüro"}]}
    if error is None:
        settings = settings_from_dict(raw, env={})
        assert settings.stage_relay_port == server["stage_relay_port"]
        assert settings.stage_relay_host == server.get("stage_relay_host")
    else:
        with pytest.raises(ConfigError, match=error):
            settings_from_dict(raw, env={})


def test_a_wildcard_listener_is_advertised_by_the_host_s_address() -> None:
    from server.signaling.townhall import advertised_host

    assert advertised_host("10.0.0.11") == "10.0.0.11"
    assert advertised_host("0.0.0.0") not in ("", "0.0.0.0")
