"""Video consultations end to end: the live app, real socket.io clients, real aiortc peers.

Offers and answers travel over the socket exactly as a browser's would (docs/protocol.md, "Media");
the peers draw their frame number into every frame, so a test can tell whose video arrived, and in
which order, after it went through the server's SFU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCRtpSender

from server.app import MEDIA
from server.media import MediaHub
from server.settings import ConfigError
from server.signaling.media import browser_ice_servers, server_ice_servers, turn_credential

from .app_fixtures import make_settings
from .media.peers import Client, consecutive, wait_for
from .socket_clients import Recorder, citizen_socket, join, staff_socket

PASSWORD = "correct horse battery"


def hub_of(live_server) -> MediaHub:
    hub = live_server.app[MEDIA].hub
    assert hub is not None
    return hub


async def offer(socket: Recorder, peer: Client, **extra: Any) -> dict[str, Any]:
    """Offer ``peer``'s connection over the socket and apply the answer; returns the ack."""
    ack = await socket.call("media_offer", {"sdp": await peer.offer(), **extra})
    assert ack.get("ok"), ack
    await peer.accept(ack["sdp"])
    return ack


def slot_of(layout: dict[str, Any], participant: str) -> dict[str, Any]:
    return next(s for s in layout["slots"] if s["participant"] == participant)


def numbers(peer: Client, video_mid: str) -> list[int]:
    return [n for n, _ in peer.frames_from(video_mid)]


async def next_event(socket: Recorder, event: str, predicate: Any, since: int) -> Any:
    """The first ``event`` recorded after index ``since`` whose payload satisfies ``predicate``."""
    def found() -> Any:
        return next((d for e, d in socket.events[since:] if e == event and predicate(d)), None)

    await wait_for(lambda: found() is not None, what=event)
    return found()


@dataclass
class Consultation:
    ticket: str
    token: str
    citizen: Recorder
    clerk: Recorder
    citizen_peer: Client
    clerk_peer: Client
    citizen_sees_clerk: str
    "video mid in which the citizen's peer shows the clerk"
    clerk_sees_citizen: str


async def start_consultation(live_server, clients: list[Recorder], peers: list[Client],
                             department: str = "buergerbuero") -> Consultation:
    """Anna (available) is connected; a citizen joins and pre-warms; Anna calls and joins."""
    await live_server.add_staff("anna", PASSWORD, [department], "Anna Amt")
    clerk = await staff_socket(live_server.url, "anna", PASSWORD)
    clients.append(clerk)
    await clerk.wait_for("dashboard")
    joined = await join(live_server.url, department, name="Alex")
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(live_server.url, joined["token"])
    clients.append(citizen)
    citizen_peer, clerk_peer = Client("citizen"), Client("clerk")
    peers += [citizen_peer, clerk_peer]

    # position 1 <= 2 x 1 available clerk: the connection opens while waiting (pre-warmed)
    assert (await offer(citizen, citizen_peer))["room"] == "waiting"
    assert (await clerk.call("call_next", {"department": department}))["ok"]
    await citizen.wait_for("media_layout", lambda m: m["room"] == "consultation")
    assert hub_of(live_server).participants(f"c:{ticket}") == [f"citizen:{ticket}"]
    assert hub_of(live_server).participants(f"w:{ticket}") == []

    assert (await offer(clerk, clerk_peer, ticket=ticket))["room"] == "consultation"
    seen_by_citizen = await citizen.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    seen_by_clerk = await clerk.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    anna = slot_of(seen_by_citizen, "staff:anna")
    assert (anna["name"], anna["role"]) == ("Anna Amt", "clerk")
    alex = slot_of(seen_by_clerk, f"citizen:{ticket}")
    assert (alex["name"], alex["role"]) == ("Alex", "citizen")
    return Consultation(
        ticket, joined["token"], citizen, clerk, citizen_peer, clerk_peer, anna["video_mid"], alex["video_mid"]
    )


async def test_camera_check_loops_the_citizens_own_video_through_the_server(live_server, clients, peers):
    """A waiting citizen (no clerk staffed, so not near the head) may check their camera: their own
    frames come back through the server, in order; media_check_done stops the self view."""
    joined = await join(live_server.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(live_server.url, joined["token"])
    clients.append(citizen)
    config = await citizen.call("media_config")
    assert config == {"ok": True, "ice_servers": [], "max_video_bitrate": 1_000_000}

    peer = Client("citizen")
    peers.append(peer)
    assert (await offer(citizen, peer, check=True))["room"] == "waiting"
    layout = await citizen.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    own = slot_of(layout, f"citizen:{ticket}")
    assert layout["room"] == "waiting" and own["role"] == "citizen"
    await wait_for(lambda: len(peer.frames_from(own["video_mid"])) >= 15, what="15 of the citizen's own frames")
    assert consecutive(numbers(peer, own["video_mid"]))
    assert peer.received[own["video_mid"]].unreadable == 0

    assert await citizen.call("media_check_done") == {"ok": True}
    await citizen.wait_for("media_layout", lambda m: m["slots"] == [])
    assert (await citizen.call("media_stats"))["stats"]["participant_id"] == f"citizen:{ticket}"
    assert await citizen.call("media_leave") == {"ok": True}
    assert hub_of(live_server).participants(f"w:{ticket}") == []


async def test_call_switches_a_prewarmed_citizen_into_the_consultation(live_server, clients, peers):
    """The citizen's connection opened while waiting; "call next" only moves it. Both sides decode
    the other's frames in order, and the server never decoded a frame nor made an encoder."""
    c = await start_consultation(live_server, clients, peers)
    await wait_for(lambda: len(c.clerk_peer.frames_from(c.clerk_sees_citizen)) >= 30, what="the clerk sees Alex")
    await wait_for(lambda: len(c.citizen_peer.frames_from(c.citizen_sees_clerk)) >= 30, what="Alex sees the clerk")
    assert consecutive(numbers(c.clerk_peer, c.clerk_sees_citizen))
    assert consecutive(numbers(c.citizen_peer, c.citizen_sees_clerk))
    counters = hub_of(live_server).counters()
    assert counters.decoded_frames == 0 and counters.encoders == 0
    assert counters.forwarded_packets > 0


async def test_offers_are_authorised(live_server, clients, peers):
    """Citizens only for their own ticket and near the head; clerks only for tickets they hold;
    citizens cannot invite; an offer without VP8 is refused."""
    await live_server.add_staff("anna", PASSWORD, ["buergerbuero"], "Anna Amt")
    await live_server.add_staff("ben", PASSWORD, ["buergerbuero"], "Ben Bau")
    tickets = [await join(live_server.url) for _ in range(4)]
    first, fourth = tickets[0], tickets[3]
    sdp_peer = Client("any")
    peers.append(sdp_peer)
    sdp = await sdp_peer.offer()

    citizen = await citizen_socket(live_server.url, first["token"])
    clients.append(citizen)
    # nobody staffed: not near the head
    assert (await citizen.call("media_offer", {"sdp": sdp}))["error"]["code"] == "not_yet"
    # a citizen never names a ticket, not even their own
    for ticket in (first["ticket"]["id"], fourth["ticket"]["id"]):
        ack = await citizen.call("media_offer", {"sdp": sdp, "ticket": ticket})
        assert ack["error"]["code"] == "forbidden"
    ack = await citizen.call("invite", {"ticket": first["ticket"]["id"], "username": "anna"})
    assert ack["error"]["code"] == "forbidden"
    assert (await citizen.call("chat", {"text": "hallo"}))["error"]["code"] == "not_in_consultation"

    anna = await staff_socket(live_server.url, "anna", PASSWORD)
    ben = await staff_socket(live_server.url, "ben", PASSWORD)
    clients += [anna, ben]
    await anna.wait_for("dashboard")
    await ben.wait_for("dashboard")
    # after Anna calls the first, Ben alone is available: positions 1 and 2 may pre-warm, 3 not yet
    called = (await anna.call("call_next", {"department": "buergerbuero"}))["ticket"]["id"]
    assert called == first["ticket"]["id"]
    fourth_socket = await citizen_socket(live_server.url, fourth["token"])
    clients.append(fourth_socket)
    assert (await fourth_socket.call("media_offer", {"sdp": sdp}))["error"]["code"] == "not_yet"
    assert (await ben.call("media_offer", {"sdp": sdp, "ticket": called}))["error"]["code"] == "not_your_ticket"
    assert (await ben.call("invite", {"ticket": called, "username": "ben"}))["error"]["code"] == "invalid_input"
    ack = await ben.call("invite", {"ticket": called, "username": "anna"})
    assert ack["error"]["code"] == "not_your_ticket"
    waiting = tickets[1]["ticket"]["id"]
    ack = await anna.call("media_offer", {"sdp": sdp, "ticket": waiting})
    assert ack["error"]["code"] == "not_in_consultation"
    assert (await anna.call("media_offer", {"sdp": sdp, "ticket": "nope"}))["error"]["code"] == "ticket_not_found"
    assert (await anna.call("media_offer", {"sdp": sdp}))["error"]["code"] == "invalid_input"

    # the called citizen may connect; an offer without VP8 is refused and leaves nothing behind
    h264_only = Client("h264")
    peers.append(h264_only)
    video = next(t for t in h264_only.pc.getTransceivers() if t.kind == "video")
    video.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == "video/h264"]
    )
    ack = await citizen.call("media_offer", {"sdp": await h264_only.offer()})
    assert ack["error"]["code"] == "no_media"
    assert hub_of(live_server).participants(f"c:{called}") == []
    assert (await citizen.call("media_offer", {"sdp": "v=0 nonsense"}))["error"]["code"] == "no_media"


async def test_finish_ends_everyones_media(live_server, clients, peers):
    """The clerk finishes: both sides get media_end and the server's room is empty."""
    c = await start_consultation(live_server, clients, peers)
    assert (await c.clerk.call("finish", {"ticket": c.ticket}))["ok"]
    for socket in (c.citizen, c.clerk):
        end = await socket.wait_for("media_end")
        assert end == {"ticket": c.ticket, "reason": "finished"}
    hub = hub_of(live_server)
    assert hub.participants(f"c:{c.ticket}") == [] and hub.participants(f"w:{c.ticket}") == []
    assert (await c.clerk.call("media_stats"))["error"]["code"] == "not_in_consultation"
    assert (await c.citizen.call("chat", {"text": "noch da?"}))["error"]["code"] == "not_in_consultation"


async def test_chat_reaches_the_other_participants_only(live_server, clients, peers):
    """Chat is relayed within the consultation: not back to the writer, not to other pages."""
    c = await start_consultation(live_server, clients, peers)
    other = await join(live_server.url, name="Bea")
    bystander = await citizen_socket(live_server.url, other["token"])
    clients.append(bystander)
    assert await c.citizen.call("chat", {"text": "Guten Tag"}) == {"ok": True}
    message = await c.clerk.wait_for("chat")
    assert (message["from"], message["role"], message["text"]) == ("Alex", "citizen", "Guten Tag")
    assert await c.clerk.call("chat", {"text": "Hallo Alex"}) == {"ok": True}
    reply = await c.citizen.wait_for("chat")
    assert (reply["from"], reply["role"], reply["text"]) == ("Anna Amt", "clerk", "Hallo Alex")
    assert [e for e, _ in c.citizen.events].count("chat") == 1
    assert [e for e, _ in c.clerk.events].count("chat") == 1
    assert bystander.last("chat") is None
    assert (await c.citizen.call("chat", {"text": "x" * 1001}))["error"]["code"] == "invalid_input"
    assert (await bystander.call("chat", {"text": "hallo?"}))["error"]["code"] == "not_in_consultation"


async def test_invited_colleague_joins_the_consultation(live_server, clients, peers):
    """Anna invites Ben (another department): he is told, joins with the ticket id, and everyone's
    layout shows two remotes."""
    c = await start_consultation(live_server, clients, peers)
    await live_server.add_staff("ben", PASSWORD, ["bauamt"], "Ben Bau")
    ben = await staff_socket(live_server.url, "ben", PASSWORD)
    clients.append(ben)
    await ben.wait_for("dashboard")
    sdp_peer = Client("early")
    peers.append(sdp_peer)
    early = await ben.call("media_offer", {"sdp": await sdp_peer.offer(), "ticket": c.ticket})
    assert early["error"]["code"] == "ticket_not_found"  # another department's ticket, not invited

    assert await c.clerk.call("invite", {"ticket": c.ticket, "username": "ben"}) == {"ok": True}
    invitation = await ben.wait_for("invitation")
    assert invitation == {"ticket": c.ticket, "from": "Anna Amt", "department": "buergerbuero"}
    ben_peer = Client("ben")
    peers.append(ben_peer)
    assert (await offer(ben, ben_peer, ticket=c.ticket))["room"] == "consultation"
    layouts = [await s.wait_for("media_layout", lambda m: len(m["slots"]) == 2) for s in (c.citizen, c.clerk, ben)]
    assert slot_of(layouts[0], "staff:ben")["role"] == "guest"
    assert {s["participant"] for s in layouts[2]["slots"]} == {f"citizen:{c.ticket}", "staff:anna"}
    ben_sees_citizen = slot_of(layouts[2], f"citizen:{c.ticket}")["video_mid"]
    await wait_for(lambda: len(ben_peer.frames_from(ben_sees_citizen)) >= 10, what="Ben sees Alex")
    assert consecutive(numbers(ben_peer, ben_sees_citizen))
    # While in the consultation Ben is busy for his own queue; when it ends he is free again.
    assert (await live_server.room.store.presences("bauamt"))["ben"].value == "busy"
    assert (await c.clerk.call("finish", {"ticket": c.ticket}))["ok"]
    await ben.wait_for("media_end")
    assert (await live_server.room.store.presences("bauamt"))["ben"].value == "available"


async def test_a_disconnecting_socket_leaves_the_media_room(live_server, clients, peers):
    """The citizen's page goes away: the server drops its connection and tells the clerk; the reloaded
    page offers again and re-enters the consultation."""
    c = await start_consultation(live_server, clients, peers)
    await c.citizen.close()
    await c.clerk.wait_for("media_layout", lambda m: m["slots"] == [])
    assert hub_of(live_server).participants(f"c:{c.ticket}") == ["staff:anna"]

    since = len(c.clerk.events)
    again = await citizen_socket(live_server.url, c.token)
    clients.append(again)
    peer = Client("citizen-again")
    peers.append(peer)
    assert (await offer(again, peer))["room"] == "consultation"
    layout = await next_event(c.clerk, "media_layout", lambda m: len(m["slots"]) == 1, since)
    mid = slot_of(layout, f"citizen:{c.ticket}")["video_mid"]
    before = len(c.clerk_peer.frames_from(mid))
    await wait_for(lambda: len(c.clerk_peer.frames_from(mid)) >= before + 30, what="the clerk sees the reloaded page")
    assert consecutive([n for n, _ in c.clerk_peer.frames_from(mid)[-25:]])  # the new page's camera


async def test_media_rooms_are_capped_per_process(make_live_server, clients, peers):
    """Beyond ``max_media_rooms`` an offer is refused with media_busy; a freed room can be used again."""
    live_server = await make_live_server(max_media_rooms=1)
    first, second = await join(live_server.url), await join(live_server.url)
    a = await citizen_socket(live_server.url, first["token"])
    b = await citizen_socket(live_server.url, second["token"])
    clients += [a, b]
    pa, pb = Client("a"), Client("b")
    peers += [pa, pb]
    await offer(a, pa, check=True)
    sdp = await pb.offer()
    assert (await b.call("media_offer", {"sdp": sdp, "check": True}))["error"]["code"] == "media_busy"
    assert await a.call("media_leave") == {"ok": True}
    assert (await b.call("media_offer", {"sdp": sdp, "check": True}))["ok"]


def test_turn_credentials_follow_coturns_rest_scheme():
    """username ``<expiry>:<participant>``, credential base64(HMAC-SHA1(secret, username))."""
    username, credential = turn_credential("s3cret", "citizen:abc", 1795000000.7)
    assert username == "1795000000:citizen:abc"
    assert credential == "qrYuR63Xoc6VWZ9BjFkQvKHvT6E="
    settings = make_settings(turn_urls=["turn:turn.example.org:3478"], turn_secret="s3cret")
    (browser,) = browser_ice_servers(settings, "staff:anna", 1000.0)
    assert browser["urls"] == ["turn:turn.example.org:3478"]
    assert browser["username"] == f"{int(1000 + settings.turn_ttl_seconds)}:staff:anna"
    (server,) = server_ice_servers(settings, 1000.0)
    assert server.urls == ["turn:turn.example.org:3478"] and server.username.endswith(":sprechstunde")
    assert browser_ice_servers(make_settings(), "x", 0) == [] and server_ice_servers(make_settings(), 0) == []
    with pytest.raises(ConfigError):
        make_settings(turn_urls=["https://turn.example.org"])
    with pytest.raises(ConfigError):
        make_settings(turn_secret="s3cret")
