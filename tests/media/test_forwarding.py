"""End-to-end tests of the SFU with real aiortc peers over loopback."""

from __future__ import annotations

import asyncio

import pytest

from .peers import Client, consecutive, wait_for

pytestmark = pytest.mark.asyncio

ROOM = "consultation-1"


async def join_all(hub, *clients: Client) -> None:
    for client in clients:
        await client.join(hub, ROOM)


def video_mid(hub, viewer: Client, publisher: Client) -> str:
    return hub.layout(ROOM, viewer.name)[publisher.name].video_mid


async def test_video_and_audio_are_forwarded_in_order(hub):
    """Each side decodes the other's frames, numbers strictly consecutive; audio arrives too."""
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        a_mid, b_mid = video_mid(hub, bob, alice), video_mid(hub, alice, bob)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 45, what="bob decodes 45 of alice's frames")
        await wait_for(lambda: len(alice.frames_from(b_mid)) >= 45, what="alice decodes 45 of bob's frames")
        for viewer, mid in ((bob, a_mid), (alice, b_mid)):
            numbers = [n for n, _ in viewer.frames_from(mid)]
            assert consecutive(numbers), f"{viewer.name} saw gaps or reordering: {numbers}"
            assert viewer.received[mid].unreadable == 0
        audio_mids = {hub.layout(ROOM, "bob")["alice"].audio_mid, hub.layout(ROOM, "alice")["bob"].audio_mid}
        await wait_for(
            lambda: (
                bob.received[hub.layout(ROOM, "bob")["alice"].audio_mid].audio_frames >= 25
                and alice.received[hub.layout(ROOM, "alice")["bob"].audio_mid].audio_frames >= 25
            ),
            what="audio frames on both sides",
        )
        assert len(audio_mids) >= 1

        stats = hub.stats(ROOM, "bob")
        assert stats.connection_state == "connected"
        assert {s.kind for s in stats.up} == {"audio", "video"}
        down_video = next(s for s in stats.down if s.kind == "video" and s.peer == "alice")
        assert down_video.packets > 0
        await wait_for(
            lambda: (
                next(s for s in hub.stats(ROOM, "bob").down if s.kind == "video" and s.peer == "alice").rtt_ms
                is not None
            ),
            what="an RTT from bob's receiver reports",
        )
    finally:
        await alice.close()
        await bob.close()


async def test_late_joiner_gets_a_keyframe_within_a_second(hub):
    """A third participant (an interpreter) joining a running call sees video within 1 s."""
    alice, bob, interpreter = Client("alice"), Client("bob"), Client("interpreter")
    try:
        await join_all(hub, alice, bob)
        a_mid = video_mid(hub, bob, alice)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 30, what="the call to run")

        await interpreter.join(hub, ROOM)
        mid = video_mid(hub, interpreter, alice)
        await wait_for(lambda: interpreter.connected_at is not None, what="the interpreter to connect")
        await wait_for(lambda: len(interpreter.frames_from(mid)) >= 1, what="the interpreter's first frame")
        first_frame_after = interpreter.frames_from(mid)[0][1] - interpreter.connected_at
        assert first_frame_after < 1.0, f"first frame {first_frame_after:.3f} s after connecting"

        # the interpreter sees both, and both see the interpreter
        await wait_for(lambda: len(interpreter.frames_from(video_mid(hub, interpreter, bob))) >= 10, what="bob")
        await wait_for(lambda: len(alice.frames_from(video_mid(hub, alice, interpreter))) >= 10, what="alice")
        await wait_for(lambda: len(bob.frames_from(video_mid(hub, bob, interpreter))) >= 10, what="bob 2")
        # alice's stream to bob was not disturbed by the keyframe request
        numbers = [n for n, _ in bob.frames_from(a_mid)]
        assert consecutive(numbers)
    finally:
        for c in (alice, bob, interpreter):
            await c.close()


async def test_losses_on_the_downlink_are_repaired_by_nack(hub):
    """Drop 1 in 8 video packets before bob's peer sees them: NACKs to the server repair every one."""
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        a_mid = video_mid(hub, bob, alice)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 15, what="the call to run")

        # Lose packets on bob's receive side (after the UDP socket, before SRTP).
        connection = bob.pc.getTransceivers()[0].receiver.transport.transport._connection
        original = connection.data_received
        vp8_pts = {
            c.payloadType
            for t in bob.pc.getTransceivers()
            if t.kind == "video"
            for c in t._codecs
            if c.mimeType == "video/VP8"
        }
        dropped = []
        seen = [0]

        def lossy(data: bytes, component: int) -> None:
            if len(data) > 12 and 128 <= data[0] < 192 and (data[1] & 0x7F) in vp8_pts:
                seen[0] += 1
                seq = (data[2] << 8) | data[3]
                if seen[0] % 8 == 0 and seq not in dropped:
                    dropped.append(seq)  # each packet lost once; its retransmission passes
                    return
            original(data, component)

        connection.data_received = lossy
        start = len(bob.frames_from(a_mid))
        await wait_for(lambda: len(dropped) >= 40, what="40 dropped packets")
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= start + 60, what="60 more frames")
        connection.data_received = original
        await wait_for(
            lambda: hub.counters().retransmitted_packets >= len(dropped), what="a retransmission per lost packet"
        )

        numbers = [n for n, _ in bob.frames_from(a_mid)]
        assert consecutive(numbers), f"gaps despite NACK: {numbers[start - 1 :]}"
        down = next(s for s in hub.stats(ROOM, "bob").down if s.kind == "video" and s.peer == "alice")
        assert down.nacks > 0 and down.retransmissions >= 40
    finally:
        await alice.close()
        await bob.close()


async def test_server_never_decodes_nor_encodes(hub):
    """The SFU forwards encoded packets: no decoder, no encoder on the server side."""
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        a_mid = video_mid(hub, bob, alice)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 30, what="frames flowing")
        counters = hub.counters()
        assert counters.forwarded_packets > 50
        assert counters.decoded_frames == 0
        assert counters.encoders == 0
    finally:
        await alice.close()
        await bob.close()
    assert hub.counters().decoded_frames == 0


async def test_forwarding_switch_and_leave(hub):
    """Forwarding off stops media; on again resumes it from a keyframe; leaving frees the slot."""
    hub.set_forwarding(ROOM, False)
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        a_mid = video_mid(hub, bob, alice)
        await wait_for(lambda: bob.connected_at is not None and alice.connected_at is not None, what="connect")
        await wait_for(lambda: alice.video.count >= 30, what="alice to send for a second")
        assert bob.frames_from(a_mid) == []

        hub.set_forwarding(ROOM, True)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 10, what="frames after switching on")

        await hub.leave(ROOM, "alice")
        assert hub.participants(ROOM) == ["bob"]
        assert "alice" not in hub.layout(ROOM, "bob")
        await asyncio.sleep(0)  # let aiortc finish closing
    finally:
        await alice.close()
        await bob.close()


async def test_losses_on_the_uplink_are_repaired_by_server_nack_and_rtx(hub):
    """Drop 1 in 8 of alice's outgoing video packets: the server NACKs, unwraps her RTX, bob misses nothing."""
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        a_mid = video_mid(hub, bob, alice)
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 15, what="the call to run")

        video_t = next(t for t in alice.pc.getTransceivers() if t.kind == "video")
        vp8_pt = next(c.payloadType for c in video_t._codecs if c.mimeType == "video/VP8")
        ice = video_t.sender.transport.transport
        original_send = ice._send
        dropped: list[int] = []
        seen = [0]

        async def lossy_send(data: bytes) -> None:
            if len(data) > 12 and 128 <= data[0] < 192 and (data[1] & 0x7F) == vp8_pt:
                seen[0] += 1
                if seen[0] % 8 == 0:
                    dropped.append((data[2] << 8) | data[3])
                    return
            await original_send(data)

        ice._send = lossy_send
        start = len(bob.frames_from(a_mid))
        await wait_for(lambda: len(dropped) >= 30, what="30 dropped packets")
        ice._send = original_send
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= start + 60, what="60 more frames")

        numbers = [n for n, _ in bob.frames_from(a_mid)]
        assert consecutive(numbers), f"gaps despite upstream NACK: {numbers[start - 1 :]}"

        def up_video():
            return next(s for s in hub.stats(ROOM, "alice").up if s.kind == "video")

        await wait_for(lambda: up_video().retransmissions >= len(dropped), what="every lost packet recovered")
        assert up_video().nacks > 0
    finally:
        await alice.close()
        await bob.close()


async def test_offer_without_vp8_is_refused(hub):
    """Every leg must use the same codec: an H.264-only video offer gets a typed error."""
    from aiortc import RTCRtpSender

    from server.media import UnknownParticipant, UnsupportedOffer

    client = Client("safari-without-vp8")
    try:
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        for t in client.pc.getTransceivers():
            if t.kind == "video":
                t.setCodecPreferences(h264)
        with pytest.raises(UnsupportedOffer, match="VP8"):
            await hub.handle_offer(ROOM, client.name, await client.offer())
        assert hub.participants(ROOM) == []
        with pytest.raises(UnknownParticipant):
            hub.stats(ROOM, client.name)
    finally:
        await client.close()


@pytest.mark.parametrize("damage", ["half", "bogus_setup", "no_bundle", "no_fingerprint", "no_ice"])
async def test_a_malformed_or_unbundled_offer_is_refused_as_unsupported(hub, damage):
    """Found by probing: half an offer, or ``a=setup:bogus``, escaped as aiortc's AttributeError or KeyError (a
    500 and a traceback per offer), and an offer without a BUNDLE group was answered with one it never
    proposed. Each is ``UnsupportedOffer`` (``no_media`` to the page), and nothing is left behind."""
    from server.media import UnsupportedOffer

    client = Client(f"broken-{damage}")
    try:
        sdp = await client.offer()
        broken = {
            "half": sdp[: len(sdp) // 2],
            "bogus_setup": sdp.replace("a=setup:actpass", "a=setup:bogus"),
            "no_bundle": "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=group:BUNDLE")),
            "no_fingerprint": "\r\n".join(line for line in sdp.split("\r\n")
                                           if not line.startswith("a=fingerprint")),
            "no_ice": "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=ice-pwd")),
        }[damage]
        assert broken != sdp
        with pytest.raises(UnsupportedOffer):
            await hub.handle_offer(ROOM, client.name, broken)
        assert hub.participants(ROOM) == []
    finally:
        await client.close()


async def test_peer_that_disappears_is_removed(hub):
    """A client closing its connection without signaling leaves the room; the others' slot frees up."""
    alice, bob = Client("alice"), Client("bob")
    try:
        await join_all(hub, alice, bob)
        await wait_for(lambda: len(bob.frames_from(video_mid(hub, bob, alice))) >= 5, what="media to flow")
        await alice.close()
        await wait_for(lambda: hub.participants(ROOM) == ["bob"], what="the server to notice alice is gone")
        assert "alice" not in hub.layout(ROOM, "bob")
        assert hub.counters().decoded_frames == 0
    finally:
        await alice.close()
        await bob.close()


async def test_waiting_citizen_is_moved_into_the_consultation(hub):
    """Self view while waiting, then "call next" moves the same connection into the clerk's room."""
    citizen, clerk = Client("citizen"), Client("clerk")
    try:
        await citizen.join(hub, "waiting-citizen")
        hub.set_self_view("waiting-citizen", "citizen", True)
        own_mid = hub.layout("waiting-citizen", "citizen")["citizen"].video_mid
        await wait_for(lambda: len(citizen.frames_from(own_mid)) >= 10, what="the citizen's self view")
        await clerk.join(hub, ROOM)

        hub.set_self_view("waiting-citizen", "citizen", False)
        hub.move("citizen", "waiting-citizen", ROOM)
        assert hub.participants("waiting-citizen") == []
        assert sorted(hub.participants(ROOM)) == ["citizen", "clerk"]
        to_clerk = hub.layout(ROOM, "clerk")["citizen"].video_mid
        to_citizen = hub.layout(ROOM, "citizen")["clerk"].video_mid
        took = await wait_for(lambda: len(clerk.frames_from(to_clerk)) >= 1, what="the clerk's first frame")
        assert took < 1.0, f"first frame {took:.3f} s after the move"
        await wait_for(lambda: len(citizen.frames_from(to_citizen)) >= 10, what="the citizen sees the clerk")
        await wait_for(lambda: len(clerk.frames_from(to_clerk)) >= 10, what="the clerk sees the citizen")
        assert consecutive([n for n, _ in clerk.frames_from(to_clerk)])
    finally:
        await citizen.close()
        await clerk.close()
