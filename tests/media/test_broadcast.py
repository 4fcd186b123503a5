"""The stage (town hall) in the SFU: one or two publishers, receive-only viewers, real aiortc peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

from server.media import MediaHub, UnknownParticipant, UnsupportedOffer
from server.media.broadcast import (
    NotOnStage,
    StagePolicy,
    UnknownStage,
    ViewerHealth,
    aggregate_remb,
    judge_viewer,
)

from .peers import Client, consecutive, wait_for

STAGE = "townhall-1"
FLOOR = 150_000
TINY = 5_000
GOOD = 800_000
"A REMB far below what the test publisher sends (tens of kbit/s for its mostly still picture)."


# -- the pure rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimates", "expected"),
    [
        ([], 1_000_000),  # nothing known: the cap
        ([40_000], 1_000_000),  # only a viewer below the floor: ignored
        ([40_000, 600_000, 800_000], 600_000),  # the slow one does not set the rate
        ([2_000_000], 1_000_000),  # never above the cap
        ([150_000, 900_000], 150_000),  # at the floor counts
        (list(range(200_000, 1_200_000, 10_000)), 300_000),  # the 10th percentile of 100
    ],
)
def test_aggregate_remb(estimates, expected):
    assert aggregate_remb(estimates, cap=1_000_000, floor=FLOOR) == expected


POLICY = StagePolicy(floor_bps=FLOOR, max_loss=0.1, audio_only_after=3.0)


@pytest.mark.parametrize(
    ("before", "remb", "loss", "sent", "now", "after"),
    [
        (ViewerHealth(), None, None, 0, 10.0, ViewerHealth()),  # nothing reported yet
        (ViewerHealth(), 500_000, 0.02, 900_000, 10.0, ViewerHealth()),
        (ViewerHealth(), 100_000, 0.0, 900_000, 10.0, ViewerHealth(bad_since=10.0)),  # below floor and stream
        (ViewerHealth(), 40_000, 0.0, 38_000, 10.0, ViewerHealth()),  # a slide: low estimate, takes all it gets
        (ViewerHealth(), 500_000, 0.2, 900_000, 10.0, ViewerHealth(bad_since=10.0)),  # loss: starts counting
        (ViewerHealth(bad_since=10.0), 100_000, 0.0, 900_000, 12.9, ViewerHealth(bad_since=10.0)),
        (ViewerHealth(bad_since=10.0), 100_000, 0.0, 900_000, 13.0, ViewerHealth(10.0, audio_only=True)),
        (ViewerHealth(bad_since=10.0), 500_000, 0.0, 900_000, 12.0, ViewerHealth()),  # recovered: afresh
        (ViewerHealth(bad_since=1.0, audio_only=True), 900_000, 0.0, 900_000, 20.0, ViewerHealth(1.0, True)),
    ],
)
def test_judge_viewer(before, remb, loss, sent, now, after):
    assert judge_viewer(before, remb, loss, sent, now, POLICY) == after


# -- real peers ---------------------------------------------------------------------------------


class PublisherProbe:
    """What reaches a publisher's aiortc sender: keyframe requests (PLI/FIR) and REMB values."""

    def __init__(self, client: Client) -> None:
        sender = next(t.sender for t in client.pc.getTransceivers() if t.kind == "video")
        self.keyframe_requests: list[float] = []
        self.rembs: list[tuple[float, int]] = []
        send_keyframe = sender._send_keyframe
        handle_rtcp = sender._handle_rtcp_packet

        def counting_keyframe() -> None:
            self.keyframe_requests.append(time.monotonic())
            send_keyframe()

        async def watching_rtcp(packet) -> None:  # type: ignore[no-untyped-def]
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                self.rembs.append((time.monotonic(), unpack_remb_fci(packet.fci)[0]))
            await handle_rtcp(packet)

        sender._send_keyframe = counting_keyframe
        sender._handle_rtcp_packet = watching_rtcp

    def requests_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.keyframe_requests if start <= t <= end)


async def publish(hub: MediaHub, client: Client) -> PublisherProbe:
    hub.promote(STAGE, client.name)
    probe = PublisherProbe(client)
    await client.accept(await hub.handle_offer(STAGE, client.name, await client.offer(), role="publisher"))
    return probe


async def watch(hub: MediaHub, client: Client) -> None:
    await client.accept(await hub.handle_offer(STAGE, client.name, await client.offer(), role="viewer"))


def received_ssrc(client: Client, mid: str) -> int:
    """The SSRC the server sends on one of the client's transceivers (as a receiving browser knows it)."""
    receiver = next(t.receiver for t in client.pc.getTransceivers() if t.mid == mid)
    return receiver.getSynchronizationSources()[0].source


def video_mid(hub: MediaHub, viewer: Client, publisher: Client) -> str:
    return hub.stage_layout(STAGE, viewer.name)[publisher.name].video_mid  # type: ignore[return-value]


def audio_mid(hub: MediaHub, viewer: Client, publisher: Client) -> str:
    return hub.stage_layout(STAGE, viewer.name)[publisher.name].audio_mid  # type: ignore[return-value]


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


@pytest.mark.asyncio
async def test_viewers_decode_in_order_and_keyframe_requests_are_merged(hub):
    """Five viewers join at once: all decode the publisher in order; at most 2 PLIs a second reach it;
    a late viewer gets its first frame within 1 s of connecting."""
    hub.create_stage(STAGE)
    politician = Client("politician", slots=1)
    viewers = [Client(f"viewer{i}", slots=3, publish=False) for i in range(5)]
    late = Client("late", slots=3, publish=False)
    try:
        probe = await publish(hub, politician)
        await wait_for(lambda: politician.video.count >= 10, what="the politician to send")
        joined_at = time.monotonic()
        await asyncio.gather(*(watch(hub, v) for v in viewers))
        mids = {v.name: video_mid(hub, v, politician) for v in viewers}
        await wait_for(lambda: all(len(v.frames_from(mids[v.name])) >= 45 for v in viewers), what="45 frames each")
        window = time.monotonic() - joined_at
        for v in viewers:
            numbers = [n for n, _ in v.frames_from(mids[v.name])]
            assert consecutive(numbers), f"{v.name} saw gaps or reordering: {numbers}"
            assert v.received[mids[v.name]].unreadable == 0
        at_publisher = probe.requests_between(joined_at, time.monotonic())
        assert at_publisher <= 2 * window + 1, f"{at_publisher} keyframe requests in {window:.2f} s"
        print(f"5 viewers joined: {at_publisher} keyframe requests reached the publisher in {window:.2f} s")
        stats = hub.stage_stats(STAGE)
        assert stats.publishers == ("politician",) and stats.viewers == 5
        assert stats.keyframe_requests_from_viewers >= 5  # one per joining viewer at least
        assert stats.keyframe_requests_upstream <= 2 * (time.monotonic() - joined_at) + 2
        # every viewer holds 3 slots, only one shows somebody; no viewer sees another viewer
        assert all(list(hub.stage_layout(STAGE, v.name)) == ["politician"] for v in viewers)
        assert hub.layout(STAGE, "politician") == {}

        # a PLI storm from all five viewers at once is merged too
        storm_at = time.monotonic()
        for v in viewers:
            transport = v.pc.getTransceivers()[0].receiver.transport
            ssrc = received_ssrc(v, mids[v.name])
            for _ in range(10):
                await transport._send_rtp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc)))
        await wait_for(
            lambda: hub.stage_stats(STAGE).keyframe_requests_from_viewers >= stats.keyframe_requests_from_viewers + 50,
            what="the server to receive 50 PLIs",
        )
        await asyncio.sleep(0.6)  # the trailing PLI of the window, if any, is due by now
        storm_window = time.monotonic() - storm_at
        in_storm = probe.requests_between(storm_at, time.monotonic())
        assert 1 <= in_storm <= 2 * storm_window + 1, f"{in_storm} PLIs reached the publisher in {storm_window:.2f} s"
        print(f"50 PLIs from 5 viewers: {in_storm} reached the publisher in {storm_window:.2f} s")

        await watch(hub, late)
        late_mid = video_mid(hub, late, politician)
        await wait_for(lambda: late.connected_at is not None, what="the late viewer to connect")
        await wait_for(lambda: len(late.frames_from(late_mid)) >= 1, what="the late viewer's first frame")
        first = late.frames_from(late_mid)[0][1] - late.connected_at  # type: ignore[operator]
        assert first < 1.0, f"first frame {first:.3f} s after connecting"
        print(f"late viewer: first frame {first:.3f} s after connecting")
        assert hub.counters().decoded_frames == 0 and hub.counters().encoders == 0
    finally:
        await close_all(politician, late, *viewers)


@pytest.mark.asyncio
async def test_a_viewer_cannot_publish(hub):
    """A viewer's offer with a sendrecv track is refused, nothing left behind; so is a publisher offer
    without promotion, and a viewer offer on a room that is no stage."""
    hub.create_stage(STAGE)
    sneaky = Client("sneaky", slots=3, publish=True)
    honest = Client("honest", slots=3, publish=False)
    try:
        with pytest.raises(UnsupportedOffer, match="only receive"):
            await hub.handle_offer(STAGE, sneaky.name, await sneaky.offer(), role="viewer")
        assert hub.participants(STAGE) == []
        with pytest.raises(UnknownParticipant):
            hub.stats(STAGE, sneaky.name)
        with pytest.raises(NotOnStage):
            await hub.handle_offer(STAGE, sneaky.name, await sneaky.offer(), role="publisher")
        assert hub.participants(STAGE) == []

        await watch(hub, honest)
        await wait_for(lambda: honest.connected_at is not None, what="the viewer to connect")
        stats = hub.stats(STAGE, honest.name)
        assert stats.up == ()  # a viewer holds no publishing transceiver
        # the same participant trying to publish with its next offer: refused, its viewer connection stays
        with pytest.raises(UnsupportedOffer):
            await hub.handle_offer(STAGE, honest.name, await sneaky.offer(), role="viewer")
        assert hub.participants(STAGE) == ["honest"]
        assert hub.stats(STAGE, honest.name).connection_state == "connected"
        assert hub.stage_stats(STAGE).viewers == 1

        with pytest.raises(UnknownStage):
            await hub.handle_offer("consultation-1", "x", await honest.offer(), role="viewer")
        assert hub.participants("consultation-1") == []
    finally:
        await close_all(sneaky, honest)


def _quiet_own_remb(client: Client) -> Callable[[bytes], Awaitable[None]]:
    """Drop the REMB that the client's own aiortc receivers send; returns the unfiltered send for the test's."""
    transport = client.pc.getTransceivers()[0].receiver.transport
    original = transport._send_rtp

    async def send(data: bytes) -> None:
        if len(data) > 1 and data[1] == 206 and data[0] & 0x1F == 15:
            return
        await original(data)

    transport._send_rtp = send
    return original


def _lose_video(client: Client, every: int) -> None:
    """Lose every ``every``-th video sequence number on the client's receive side, retransmissions included."""
    connection = client.pc.getTransceivers()[0].receiver.transport.transport._connection
    original = connection.data_received
    vp8 = {
        c.payloadType for t in client.pc.getTransceivers() if t.kind == "video" for c in t._codecs if c.name == "VP8"
    }

    def lossy(data: bytes, component: int) -> None:
        if len(data) > 12 and 128 <= data[0] < 192 and (data[1] & 0x7F) in vp8:
            if ((data[2] << 8) | data[3]) % every == 0:
                return
        original(data, component)

    connection.data_received = lossy


@pytest.mark.asyncio
async def test_slow_viewers_do_not_lower_the_bitrate_and_drop_to_audio(hub):
    """A viewer announcing a tiny REMB does not pull the publisher below the floor-based aggregate; it and a
    viewer with sustained loss are switched to audio only and signaling is told; the healthy one is not."""
    hub.create_stage(STAGE, max_viewer_bitrate_floor=FLOOR, max_viewer_loss=0.1, audio_only_after=2.0)
    told: list[tuple[str, str]] = []
    hub.on_viewer_audio_only = lambda room, participant: told.append((room, participant))
    politician = Client("politician", slots=1)
    healthy = Client("healthy", slots=1, publish=False)
    tiny = Client("tiny", slots=1, publish=False)
    lossy = Client("lossy", slots=1, publish=False)
    try:
        probe = await publish(hub, politician)
        for v in (healthy, tiny, lossy):
            await watch(hub, v)
        mids = {v.name: video_mid(hub, v, politician) for v in (healthy, tiny, lossy)}
        await wait_for(lambda: all(len(v.frames_from(mids[v.name])) >= 10 for v in (healthy, tiny, lossy)))

        send_rtcp = _quiet_own_remb(tiny)
        send_healthy = _quiet_own_remb(healthy)  # aiortc's own estimate dips when a loaded CI machine delays it
        _lose_video(lossy, every=4)
        tiny_ssrc = received_ssrc(tiny, mids["tiny"])
        slow_from = time.monotonic()

        healthy_ssrc = received_ssrc(healthy, mids["healthy"])

        async def tiny_remb() -> None:
            while True:
                remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(TINY, [tiny_ssrc]))
                await send_rtcp(bytes(remb))
                good = pack_remb_fci(GOOD, [healthy_ssrc])
                await send_healthy(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=2, media_ssrc=0, fci=good)))
                await asyncio.sleep(0.2)

        sender = asyncio.ensure_future(tiny_remb())
        try:
            await wait_for(lambda: len(told) >= 2, what="both slow viewers to be switched to audio only")
        finally:
            sender.cancel()
        assert sorted(told) == [(STAGE, "lossy"), (STAGE, "tiny")]
        took = time.monotonic() - slow_from
        assert took < 8, f"audio only after {took:.1f} s"
        print(f"both slow viewers audio only {took:.1f} s after they started to be slow (audio_only_after 2 s)")
        stats = hub.stage_stats(STAGE)
        assert sorted(stats.audio_only_viewers) == ["lossy", "tiny"]

        # the publisher was never asked for less than the floor, though one viewer said 5 kbit/s: it got the
        # healthy viewer's estimate (the lossy one's own aiortc estimate may count too while it had video)
        rembs = [b for t, b in probe.rembs if t >= slow_from]
        assert rembs, "no REMB reached the publisher"
        assert min(rembs) >= FLOOR, rembs
        await wait_for(lambda: probe.rembs[-1][1] == GOOD, what="the publisher to be asked for the healthy estimate")
        assert stats.publisher_bitrate_bps["politician"] >= FLOOR

        # audio goes on for the audio-only viewers; their video stops; the healthy viewer keeps both
        for v in (tiny, lossy):
            a = v.received[audio_mid(hub, v, politician)]
            frames, audio = len(v.frames_from(mids[v.name])), a.audio_frames
            await wait_for(lambda a=a, audio=audio: a.audio_frames >= audio + 25, what=f"{v.name}'s audio")
            assert len(v.frames_from(mids[v.name])) <= frames + 3  # what was in flight
        before = len(healthy.frames_from(mids["healthy"]))
        await wait_for(lambda: len(healthy.frames_from(mids["healthy"])) >= before + 30, what="healthy video")
        assert consecutive([n for n, _ in healthy.frames_from(mids["healthy"])])
        assert "healthy" not in hub.stage_stats(STAGE).audio_only_viewers

        # asked to try again, the viewer gets video back from a keyframe
        hub.restore_video(STAGE, "tiny")
        frames = len(tiny.frames_from(mids["tiny"]))
        await wait_for(lambda: len(tiny.frames_from(mids["tiny"])) >= frames + 10, what="tiny's video back")
    finally:
        await close_all(politician, healthy, tiny, lossy)


@pytest.mark.asyncio
async def test_loss_on_the_publishers_uplink_does_not_send_viewers_to_audio_only(hub):
    """Every viewer sees the loss of a bad uplink; it is not theirs, so nobody is switched to audio only."""
    hub.create_stage(STAGE, max_viewer_loss=0.1, audio_only_after=1.5)
    told: list[tuple[str, str]] = []
    hub.on_viewer_audio_only = lambda room, participant: told.append((room, participant))
    politician = Client("politician", slots=1)
    viewer = Client("viewer", slots=1, publish=False)
    try:
        await publish(hub, politician)
        await watch(hub, viewer)
        await wait_for(lambda: len(viewer.frames_from(video_mid(hub, viewer, politician))) >= 10, what="video")

        # lose every 4th video packet on the way to the server, and every retransmission: no repair possible
        video_t = next(t for t in politician.pc.getTransceivers() if t.kind == "video")
        pts = {c.payloadType: c.mimeType for c in video_t._codecs}
        ice = video_t.sender.transport.transport
        original_send = ice._send

        async def lossy_send(data: bytes) -> None:
            if len(data) > 12 and 128 <= data[0] < 192:
                mime = pts.get(data[1] & 0x7F)
                if mime == "video/rtx" or (mime == "video/VP8" and ((data[2] << 8) | data[3]) % 4 == 0):
                    return
            await original_send(data)

        ice._send = lossy_send

        def fraction(direction: str, participant: str) -> float:
            stats = hub.stats(STAGE, participant)
            return next(t.fraction_lost for t in getattr(stats, direction) if t.kind == "video")

        lossy_since: list[float] = []

        def lossy_for_long() -> bool:
            if fraction("down", "viewer") > 0.1 and fraction("up", "politician") > 0.1:
                lossy_since.append(time.monotonic())
                return lossy_since[-1] - lossy_since[0] > 3.0  # twice audio_only_after
            lossy_since.clear()
            return False

        await wait_for(lossy_for_long, what="3 s of >10% loss reported by the viewer and seen upstream")
        assert told == []
        assert hub.stage_stats(STAGE).audio_only_viewers == ()
        ice._send = original_send
    finally:
        await close_all(politician, viewer)


@pytest.mark.asyncio
async def test_a_citizen_on_stage_is_seen_by_every_viewer(hub, tmp_path: Path):
    """Politician and a promoted citizen publish; viewers see both, the two see each other; the stage is
    recorded (publishers only); demoting the citizen takes them off everyone's screens."""
    hub.create_stage(STAGE)
    politician = Client("politician", slots=2)
    citizen_watching = Client("citizen", slots=2, publish=False)
    viewers = [Client(f"viewer{i}", slots=2, publish=False) for i in range(3)]
    citizen_on_stage = Client("citizen", slots=2)
    directory = tmp_path / "recording"
    directory.mkdir(mode=0o700)
    try:
        await publish(hub, politician)
        await watch(hub, citizen_watching)
        for v in viewers:
            await watch(hub, v)
        recorder = hub.start_recording(STAGE, directory)

        # invited and accepted: promotion, then the citizen's next offer publishes
        hub.promote(STAGE, "citizen")
        await citizen_watching.close()
        await publish(hub, citizen_on_stage)
        assert sorted(hub.stage_stats(STAGE).publishers) == ["citizen", "politician"]
        for v in viewers:
            assert sorted(hub.stage_layout(STAGE, v.name)) == ["citizen", "politician"]
            for p in (politician, citizen_on_stage):
                mid = video_mid(hub, v, p)
                await wait_for(lambda v=v, mid=mid: len(v.frames_from(mid)) >= 20, what=f"{v.name} sees {p.name}")
                assert consecutive([n for n, _ in v.frames_from(mid)])
        to_citizen = video_mid(hub, citizen_on_stage, politician)
        to_politician = video_mid(hub, politician, citizen_on_stage)
        await wait_for(lambda: len(citizen_on_stage.frames_from(to_citizen)) >= 10, what="the citizen sees")
        await wait_for(lambda: len(politician.frames_from(to_politician)) >= 10, what="the politician sees")

        stats = await recorder.stop()
        recorded = {(t.participant, t.kind) for t in stats.tracks if t.frames_written > 0}
        assert recorded == {
            ("politician", "video"),
            ("politician", "audio"),
            ("citizen", "video"),
            ("citizen", "audio"),
        }

        hub.demote(STAGE, "citizen")
        assert hub.stage_stats(STAGE).publishers == ("politician",)
        for v in viewers:
            assert list(hub.stage_layout(STAGE, v.name)) == ["politician"]
        again = Client("citizen", slots=2)
        try:
            with pytest.raises(NotOnStage):
                await hub.handle_offer(STAGE, "citizen", await again.offer(), role="publisher")
        finally:
            await again.close()
    finally:
        await close_all(politician, citizen_watching, citizen_on_stage, *viewers)
    await hub.close_stage(STAGE)
    with pytest.raises(UnknownStage):
        hub.stage_stats(STAGE)
