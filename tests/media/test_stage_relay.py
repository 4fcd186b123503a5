"""Stage relays between two SFUs (server/media/stage_relay.py): two MediaHubs in one process joined over real
loopback TCP, a real aiortc publisher on the origin, real aiortc viewers on the edge that decode what they get."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from server.media import MediaError, MediaHub
from server.media.stage_relay import RelayLeg, StageRelays, frame, read_frame

from .peers import Client, consecutive, wait_for
from .test_broadcast import STAGE, publish, received_ssrc, watch

KEY = b"k" * 32


def mid_on(hub: MediaHub, viewer: Client, publisher: str) -> str | None:
    slot = hub.stage_layout(STAGE, viewer.name).get(publisher)
    return slot.video_mid if slot is not None else None


def relay_legs(hub: MediaHub, publisher: str) -> list[RelayLeg]:
    tracks = hub.local_publishers(STAGE).get(publisher, {})
    return [leg for inbound in tracks.values() for leg in inbound.legs if isinstance(leg, RelayLeg)]


@pytest.fixture
async def two_hubs():
    origin, edge = MediaHub(ice_servers=[]), MediaHub(ice_servers=[])
    for hub in (origin, edge):
        hub.create_stage(STAGE)
    layouts: list[str] = []
    origin_relays = StageRelays(origin, KEY, "node-a")
    edge_relays = StageRelays(edge, KEY, "node-b", linger=0.2, on_layout=layouts.append)
    host, port = await origin_relays.serve("127.0.0.1", 0)
    yield origin, edge, origin_relays, edge_relays, f"{host}:{port}", layouts
    await edge_relays.close()
    await origin_relays.close()
    await edge.close()
    await origin.close()


async def test_edge_viewers_get_the_origin_s_publisher_with_keyframe_requests_merged_and_the_relay_goes_with_them(
    two_hubs,
):
    """A publisher on the origin; one viewer there, four on the edge (one relay). Everyone decodes in order;
    a PLI storm of the edge's viewers reaches the publisher as at most about two requests a second; the edge's
    bitrate arrives upstream as one estimate; nothing is decoded or encoded on either server; when the edge's
    last viewer leaves, the relay goes on both ends."""
    origin, edge, origin_relays, edge_relays, address, layouts = two_hubs
    politician = Client("politician", slots=1)
    local = Client("local", slots=2, publish=False)
    viewers = [Client(f"edge{i}", slots=2, publish=False) for i in range(4)]
    try:
        probe = await publish(origin, politician)
        await watch(origin, local)
        await wait_for(lambda: politician.video.count >= 10, what="the politician to send")  # type: ignore[union-attr]
        joined_at = time.monotonic()
        await asyncio.gather(*(watch(edge, v) for v in viewers))
        relay = await edge_relays.pull(STAGE, "node-a", address)
        assert relay is not None
        await wait_for(lambda: all(mid_on(edge, v, "politician") for v in viewers), what="the edge to show him")
        assert layouts == [STAGE]  # the edge's signaling is told to send its viewers their layouts
        assert len(origin_relays.served[STAGE]) == 1 and len(relay_legs(origin, "politician")) == 2
        mids = {v.name: mid_on(edge, v, "politician") for v in viewers}
        local_mid = mid_on(origin, local, "politician")
        await wait_for(lambda: all(len(v.frames_from(mids[v.name])) >= 45 for v in viewers),  # type: ignore[arg-type]
                       what="45 frames on every edge viewer")
        await wait_for(lambda: len(local.frames_from(local_mid)) >= 45, what="45 frames on the origin's viewer")  # type: ignore[arg-type]
        for v in viewers:
            numbers = [n for n, _ in v.frames_from(mids[v.name])]  # type: ignore[arg-type]
            assert consecutive(numbers), f"{v.name} saw gaps or reordering: {numbers}"
            audio = edge.stage_layout(STAGE, v.name)["politician"].audio_mid
            await wait_for(lambda a=audio, v=v: v.received.get(a) is not None and v.received[a].audio_frames > 0,
                           what="sound on the edge")
        window = time.monotonic() - joined_at
        at_publisher = probe.requests_between(joined_at, time.monotonic())
        assert at_publisher <= 2 * window + 1, f"{at_publisher} keyframe requests in {window:.2f} s"

        # a PLI storm: 10 from each edge viewer at once; the edge merges, the origin merges again
        storm_at = time.monotonic()
        upstream_before = relay.tracks[next(t for t, i in relay.tracks.items() if i.video)].keyframe_requests
        for v in viewers:
            transport = v.pc.getTransceivers()[0].receiver.transport
            ssrc = received_ssrc(v, mids[v.name])  # type: ignore[arg-type]
            for _ in range(10):
                await transport._send_rtp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc)))
        await wait_for(lambda: edge.stage_stats(STAGE).keyframe_requests_from_viewers >= 40, what="40 PLIs at the edge")
        await asyncio.sleep(0.6)  # the trailing request of the window, if any, is due by now
        storm = time.monotonic() - storm_at
        video = next(i for i in relay.tracks.values() if i.video)
        sent_up = video.keyframe_requests - upstream_before
        in_storm = probe.requests_between(storm_at, time.monotonic())
        assert 1 <= sent_up <= 2 * storm + 1, f"the edge sent {sent_up} requests upstream in {storm:.2f} s"
        assert 1 <= in_storm <= 2 * storm + 1, f"{in_storm} PLIs reached the publisher in {storm:.2f} s"
        print(f"40 PLIs from 4 edge viewers: {sent_up} sent upstream, {in_storm} reached the publisher")

        # the edge's bitrate: one estimate per second for the relay, which the origin aggregates like a viewer's
        leg = next(leg for leg in relay_legs(origin, "politician") if leg.source and leg.source.video)
        await wait_for(lambda: leg.remb is not None, limit=5, what="the edge's estimate at the origin")
        await wait_for(lambda: "politician" in origin.stage_stats(STAGE).publisher_bitrate_bps, limit=5,
                       what="a REMB to the publisher")
        for hub in (origin, edge):
            assert hub.counters().decoded_frames == 0 and hub.counters().encoders == 0

        # the edge's last viewer leaves: the relay goes, the origin's legs with it; the origin's viewer goes on
        for v in viewers:
            await edge.leave(STAGE, v.name)
        await wait_for(lambda: not edge_relays.taken, limit=5, what="the edge to drop its relay")
        await wait_for(lambda: STAGE not in origin_relays.served, limit=5, what="the origin to drop it")
        assert relay_legs(origin, "politician") == []
        assert edge.stage_stats(STAGE).publishers == ()
        before = len(local.frames_from(local_mid))  # type: ignore[arg-type]
        await wait_for(lambda: len(local.frames_from(local_mid)) >= before + 10, what="the origin's viewer")  # type: ignore[arg-type]
    finally:
        for c in (politician, local, *viewers):
            await c.close()


async def test_a_publisher_leaving_or_the_origin_closing_reaches_the_edge(two_hubs):
    """The relay carries the layout: a second publisher appears on the edge and goes again; when the origin's
    listener and relays close (as when its process dies), the edge's stage has no publisher left and its
    signaling is told."""
    origin, edge, origin_relays, edge_relays, address, layouts = two_hubs
    politician, moderator = Client("politician", slots=2), Client("moderator", slots=2)
    viewer = Client("viewer", slots=3, publish=False)
    try:
        await publish(origin, politician)
        origin.set_label(STAGE, "politician", {"name": "Paul", "role": "politician"})
        await watch(edge, viewer)
        assert await edge_relays.pull(STAGE, "node-a", address) is not None
        await wait_for(lambda: mid_on(edge, viewer, "politician") is not None, what="the politician on the edge")
        assert edge.label(STAGE, "politician") == {"name": "Paul", "role": "politician"}
        await publish(origin, moderator)
        await wait_for(lambda: mid_on(edge, viewer, "moderator") is not None, what="the moderator on the edge")
        moderator_mid = mid_on(edge, viewer, "moderator")
        await wait_for(lambda: len(viewer.frames_from(moderator_mid)) >= 10, what="frames of the moderator")  # type: ignore[arg-type]
        await origin.leave(STAGE, "moderator")
        await wait_for(lambda: mid_on(edge, viewer, "moderator") is None, what="the moderator to go on the edge")
        assert edge.stage_stats(STAGE).publishers == ("politician",)

        told = len(layouts)
        await origin_relays.close()
        await wait_for(lambda: edge.stage_stats(STAGE).publishers == (), limit=5, what="the edge to lose him")
        assert len(layouts) > told and not edge_relays.taken
        assert edge.stage_stats(STAGE).viewers == 1  # the viewer stays, waiting for a publisher
    finally:
        for c in (politician, moderator, viewer):
            await c.close()


async def test_an_edge_without_the_installation_key_is_refused(two_hubs):
    """A wrong key, a stage the origin does not hold, and garbage on the port are refused; the origin serves on."""
    origin, edge, origin_relays, _, address, _ = two_hubs
    intruder = StageRelays(edge, b"x" * 32, "node-x")
    viewer = Client("viewer", slots=2, publish=False)
    try:
        await watch(edge, viewer)
        assert await intruder.pull(STAGE, "node-a", address) is None
        assert await intruder.pull("s:no-such-stage", "node-a", address) is None
        assert not origin_relays.served and not intruder.taken
        # garbage on the port: an oversized frame, a hello that is no object, silence; each connection is closed
        host, port = address.rsplit(":", 1)
        for garbage in (struct.pack("!IB", 10_000_000, ord("H")), frame(ord("H"), b"[1, 2]"), b"",
                        frame(ord("H"), b"{" + b" " * 2000 + b"}")):  # over the small limit before authentication
            reader, writer = await asyncio.open_connection(host, int(port))
            kind, _ = await read_frame(reader)
            assert kind == ord("C")  # the challenge
            writer.write(garbage)
            closed_at = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the origin hung up
            assert time.monotonic() - closed_at < 6.0  # the silent one within the handshake deadline
            writer.close()
        # the origin stays usable: a stage it does not hold is refused, a right key served
        right = StageRelays(edge, KEY, "node-b2")
        try:
            assert await right.pull("s:no-such-stage", "node-a", address) is None
            assert await right.pull(STAGE, "node-a", address) is not None
            await wait_for(lambda: STAGE in origin_relays.served, limit=5, what="the origin to serve the relay")
        finally:
            await right.close()
    finally:
        await intruder.close()
        await viewer.close()


async def test_a_stage_recorded_on_the_edge_keeps_its_relay_and_records_the_relayed_publisher(two_hubs, tmp_path):
    """The node recording the event need not be the publisher's: with nobody watching there, its relay stays
    while it records, the relayed publisher is recorded like a local one, and the relay goes after the end."""
    origin, edge, origin_relays, edge_relays, address, _ = two_hubs
    politician = Client("politician", slots=1)
    directory = tmp_path / "rec"
    directory.mkdir(mode=0o700)
    try:
        await publish(origin, politician)
        recorder = edge.start_recording(STAGE, directory)
        assert await edge_relays.pull(STAGE, "node-a", address) is not None

        def video_frames() -> int:
            return sum(t.frames_written for t in recorder.stats().tracks
                       if t.participant == "politician" and t.kind == "video")

        await wait_for(lambda: video_frames() >= 60, what="two seconds of the relayed publisher recorded")
        assert edge_relays.taken  # no viewer on the edge, but it records: the relay stays (past the linger)
        stats = await recorder.stop()
        assert {(t.participant, t.kind) for t in stats.tracks if t.file} == {("politician", "audio"),
                                                                              ("politician", "video")}
        await wait_for(lambda: not edge_relays.taken, limit=5, what="the relay to go after the recording")
        await wait_for(lambda: STAGE not in origin_relays.served, limit=5, what="the origin to drop it")
    finally:
        await politician.close()


async def test_publishers_on_both_nodes_see_each_other_and_nothing_is_relayed_back(two_hubs):
    """The politician publishes on A, the moderator on B: each node is the origin of its own publisher and an
    edge of the other's. Publishers and viewers on both see both; a relayed publisher is never relayed on."""
    origin, edge, origin_relays, edge_relays, address, _ = two_hubs
    host, port = await edge_relays.serve("127.0.0.1", 0)
    politician, moderator = Client("politician", slots=2), Client("moderator", slots=2)
    viewer_a, viewer_b = Client("viewer-a", slots=3, publish=False), Client("viewer-b", slots=3, publish=False)
    try:
        await publish(origin, politician)
        await publish(edge, moderator)
        await watch(origin, viewer_a)
        await watch(edge, viewer_b)
        assert await edge_relays.pull(STAGE, "node-a", address) is not None
        assert await origin_relays.pull(STAGE, "node-b", f"{host}:{port}") is not None
        for hub, viewer in ((origin, viewer_a), (edge, viewer_b)):
            await wait_for(lambda h=hub, v=viewer: mid_on(h, v, "politician") and mid_on(h, v, "moderator"),
                           what="both publishers on both nodes")
            for who in ("politician", "moderator"):
                mid = mid_on(hub, viewer, who)
                await wait_for(lambda v=viewer, m=mid: len(v.frames_from(m)) >= 15, what=f"frames of the {who}")  # type: ignore[arg-type]
        # the publishers see each other: the moderator (on B) gets the politician through B's relay
        assert set(edge.layout(STAGE, "moderator")) == {"politician"}
        assert set(origin.layout(STAGE, "politician")) == {"moderator"}
        # each relay carries its origin's own publisher only
        assert set(origin.local_publishers(STAGE)) == {"politician"}
        assert set(edge.local_publishers(STAGE)) == {"moderator"}
        assert len(relay_legs(origin, "politician")) == 2 and len(relay_legs(edge, "moderator")) == 2
        assert set(edge.stage_stats(STAGE).publishers) == {"moderator", "politician"}
    finally:
        for c in (politician, moderator, viewer_a, viewer_b):
            await c.close()


async def test_a_relayed_publisher_is_not_replaced_by_an_offer_of_the_same_participant_on_the_edge(two_hubs):
    """The politician publishes on A and opens a second page on B: B's offer for the same participant must not
    take the relayed publisher off B's stage (B's viewers would lose him); it is refused."""
    origin, edge, _, edge_relays, address, _ = two_hubs
    politician, viewer = Client("politician", slots=1), Client("viewer", slots=2, publish=False)
    again = Client("politician", slots=2, publish=False)
    try:
        await publish(origin, politician)
        await watch(edge, viewer)
        assert await edge_relays.pull(STAGE, "node-a", address) is not None
        await wait_for(lambda: mid_on(edge, viewer, "politician") is not None, what="the politician on the edge")
        with pytest.raises(MediaError):
            await edge.handle_offer(STAGE, "politician", await again.offer(), role="viewer")
        assert mid_on(edge, viewer, "politician") is not None
    finally:
        for c in (politician, viewer, again):
            await c.close()


async def test_the_origin_drops_an_edge_that_went_silent(two_hubs, monkeypatch):
    """An edge that vanished without closing its connection (power, network) answers no ping: the origin drops
    its relay after the silence limit, so its leg neither holds a slot nor caps the publishers' bitrate."""
    import json

    from server.media import stage_relay

    monkeypatch.setattr(stage_relay, "SILENCE_LIMIT", 0.5)
    origin, _, origin_relays, _, address, _ = two_hubs
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        kind, challenge = await read_frame(reader)
        assert kind == ord("C")
        hello = {"room": STAGE, "node": "node-z", "nonce": "00" * 16,
                 "mac": stage_relay._mac(KEY, "edge", challenge, STAGE, "node-z")}
        writer.write(frame(ord("H"), json.dumps(hello).encode()))
        kind, _ = await read_frame(reader)
        assert kind == ord("W")  # welcomed: a proper edge, which from now on says nothing
        await wait_for(lambda: STAGE in origin_relays.served, limit=5, what="the origin to serve the relay")
        await wait_for(lambda: STAGE not in origin_relays.served, limit=10, what="the silent edge to be dropped")
    finally:
        writer.close()
