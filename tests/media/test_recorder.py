"""The live recorder: real aiortc peers through a real MediaHub; the files are decoded here, never on the server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest

from server.media import RecordingStats

from .peers import Client, consecutive, read_frame_number, wait_for

pytestmark = pytest.mark.asyncio

ROOM = "consultation-rec"


def client(name: str) -> Client:
    return Client(name)


def recording_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "recording"
    directory.mkdir(mode=0o700)
    return directory


def decode_video(path: Path) -> list[tuple[int | None, float, bool]]:
    """(frame number or None, pts in s, keyframe) of every frame of a recorded video file."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            out.append((read_frame_number(frame.to_ndarray(format="gray")), float(frame.time), frame.key_frame))
    return out


def audio_packets(path: Path) -> list[tuple[float, float]]:
    """(pts, duration) in seconds of every packet of a recorded audio file (demuxed, and decodable)."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.extradata[:8] == b"OpusHead"
        for packet in container.demux(stream):
            if packet.size:
                out.append((float(packet.pts * packet.time_base), float(packet.duration * packet.time_base)))
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(container.streams.audio[0]))
    assert samples > 0
    return out


def beep_onsets(path: Path) -> list[float]:
    """File time (s) of every beep onset in a recorded audio file (decoded here)."""
    onsets: list[float] = []
    first: float | None = None
    last: float | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            time0 = float(frame.time)
            if first is None:
                first = time0
            loud = np.flatnonzero(np.abs(frame.to_ndarray()).max(axis=0) > 0.05)
            if not len(loud):
                continue
            begins = time0 + loud[0] / 48000
            if (last is None and begins - first > 0.01) or (last is not None and begins - last > 0.5):
                onsets.append(begins)  # (a file that begins inside a beep has no onset for it)
            last = time0 + loud[-1] / 48000
    return onsets


def audio_start(index: dict, participant: str) -> float:
    return next(t["start"] for t in index["tracks"] if t["participant"] == participant and t["kind"] == "audio")


def track(stats: RecordingStats, participant: str, kind: str):
    return next(t for t in stats.tracks if t.participant == participant and t.kind == kind and t.frames_written)


async def test_two_peers_are_recorded_frame_by_frame(hub, tmp_path):
    """~10 s of a call: every frame the publishers sent over the recorded span is in their files, in order."""
    alice, bob = client("alice"), client("bob")
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        a_mid = hub.layout(ROOM, "bob")["alice"].video_mid
        seen_by = {
            "alice": bob.frames_from(a_mid),
            "bob": alice.frames_from(hub.layout(ROOM, "alice")["bob"].video_mid),
        }
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= 10, what="the call to run")

        started_wall = time.time()
        recorder = hub.start_recording(ROOM, directory)
        assert hub.recorder(ROOM) is recorder and recorder.recording
        with pytest.raises(ValueError):
            hub.start_recording(ROOM, directory)
        begin = alice.video.count
        await wait_for(lambda: alice.video.count >= begin + 300, what="alice to send 10 s more")
        assert hub.counters().decoded_frames == 0
        stats = await recorder.stop()
        assert await recorder.stop() == stats  # idempotent
        assert hub.recorder(ROOM) is None and not recorder.recording
    finally:
        await alice.close()
        await bob.close()

    assert stats.failed is None
    assert hub.counters().decoded_frames == 0 and hub.counters().encoders == 0
    index = json.loads((directory / "tracks.json").read_text())
    assert index["version"] == 1 and 9.5 < index["duration"] < 20
    assert {(t["participant"], t["kind"]) for t in index["tracks"]} == {
        ("alice", "audio"),
        ("alice", "video"),
        ("bob", "audio"),
        ("bob", "video"),
    }
    assert oct((directory / "tracks").stat().st_mode & 0o777) == "0o700"
    for entry in index["tracks"]:
        assert set(entry) >= {"file", "participant", "kind", "start", "end", "frames"}
        assert 0 <= entry["start"] < entry["end"] <= index["duration"] + 0.1, index
        assert os.stat(directory / entry["file"]).st_mode & 0o777 == 0o600

    for name, peer in (("alice", alice), ("bob", bob)):
        video = next(t for t in index["tracks"] if t["participant"] == name and t["kind"] == "video")
        assert (video["width"], video["height"]) == (320, 240)
        frames = decode_video(directory / video["file"])
        numbers = [n for n, _, _ in frames]
        assert None not in numbers, "unreadable frame in the recording"
        assert consecutive(numbers), f"{name}: gaps or reordering in the recorded frames"
        assert len(numbers) == video["frames"] >= 290
        assert frames[0][2], "the file does not start at a keyframe"
        # the file covers what was sent while recording: from (about) the start to (about) the stop
        assert numbers[0] <= begin + 20 if name == "alice" else True
        # pts follow the capture clock: 30 fps
        span = frames[-1][1] - frames[0][1]
        assert abs(span - (len(frames) - 1) / 30) < 0.1, f"pts span {span:.3f} s for {len(frames)} frames"
        sent_wall = peer.video.sent_at[numbers[0]] + (time.time() - time.monotonic())
        print(
            f"{name}: video start {video['start']:.3f} s, its first frame made at {sent_wall - started_wall:.3f} s;"
            f" audio start {audio_start(index, name):.3f} s"
        )

        audio = next(t for t in index["tracks"] if t["participant"] == name and t["kind"] == "audio")
        packets = audio_packets(directory / audio["file"])
        assert len(packets) == audio["frames"] > 400
        assert all(abs(d - 0.02) < 0.001 for _, d in packets)
        steps = [b[0] - a[0] for a, b in zip(packets, packets[1:], strict=False)]
        assert sorted(steps)[len(steps) // 2] == pytest.approx(0.02, abs=0.002)
        # A/V alignment: where the recording puts each beep and each frame vs. when they were made
        tone_start = peer.audio.start
        audio_errors = []
        for onset in beep_onsets(directory / audio["file"]):
            at = audio["start"] + onset + started_wall  # wall time on the recording's clock
            made = tone_start + round(at - tone_start)
            audio_errors.append(at - made)
        clock = time.time() - time.monotonic()
        video_errors = [
            video["start"] + pts + started_wall - (peer.video.sent_at[n] + clock)
            for n, pts, _ in frames  # type: ignore[index]
        ]
        assert len(audio_errors) >= 8
        audio_error, video_error = float(np.median(audio_errors)), float(np.median(video_errors))
        # how late the other peer decoded this publisher's frames: bounds the publisher's own lag
        latency = float(np.median([arrival - peer.video.sent_at[n] for n, arrival in seen_by[name]]))
        print(
            f"{name}: audio placed {audio_error * 1000:+.1f} ms (max {max(map(abs, audio_errors)) * 1000:.1f}),"
            f" video {video_error * 1000:+.1f} ms (max {max(map(abs, video_errors)) * 1000:.1f}) after capture;"
            f" A/V {(audio_error - video_error) * 1000:+.1f} ms; frames reached the other peer after"
            f" {latency * 1000:.0f} ms"
        )
        # The recorder places frames where the publisher's sender reports say. aiortc pairs an RTP
        # timestamp with the time it *sent* that packet, so a publisher that encodes late (a loaded
        # machine) is placed late by that lag, as a browser's lip sync would place it; never later
        # than its frames reached the other peer. With a publisher that keeps up, audio and video
        # land within a few ms of their capture (the goal: A/V drift < 80 ms).
        assert -0.03 < video_error < latency + 0.03
        assert -0.03 < audio_error < 0.3
        if latency < 0.1:
            assert abs(audio_error - video_error) < 0.08, "A/V drift"
            assert abs(video_error) < 0.05 and abs(audio_error) < 0.05
        # audio waits for the participant's video, then both run together
        assert abs(audio["start"] - video["start"]) < 0.15
        assert abs(audio["end"] - video["end"]) < 0.15

    for t in stats.tracks:
        assert t.frames_dropped == 0
    assert stats.writer_queue_peak >= 1


async def test_files_are_seekable(hub, tmp_path):
    """The writer closes each file with cues and a duration: a player can seek without reading it all."""
    alice, bob = client("alice"), client("bob")
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(
            lambda: any(t.kind == "video" and t.frames_written > 60 for t in recorder.stats().tracks),
            what="2 s of video",
        )
        stats = await recorder.stop()
    finally:
        await alice.close()
        await bob.close()
    video = next(t for t in stats.tracks if t.kind == "video" and t.frames_written)
    with av.open(str(directory / video.file)) as container:
        assert container.duration is not None and container.duration > 1_500_000
        container.seek(container.duration // 2)
        frame = next(container.decode(video=0))
        assert read_frame_number(frame.to_ndarray(format="gray")) is not None


def video_numbers(directory: Path, stats: RecordingStats, participant: str) -> list[tuple[int | None, float, bool]]:
    return decode_video(directory / track(stats, participant, "video").file)  # type: ignore[operator]


def written(recorder, participant: str, kind: str = "video") -> int:
    return sum(t.frames_written for t in recorder.stats().tracks if t.participant == participant and t.kind == kind)


async def test_pause_drops_the_paused_stretch_and_resumes_at_a_keyframe(hub, tmp_path):
    """Nothing from the paused stretch is written; video resumes at a keyframe; the pause is cut from the time."""
    alice, bob = client("alice"), client("bob")
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        started = time.time()
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(lambda: written(recorder, "alice") >= 45, what="1.5 s recorded")
        recorder.pause()
        paused_at, paused_wall = alice.video.count, time.time()
        assert not recorder.recording
        await wait_for(lambda: alice.video.count >= paused_at + 45, what="1.5 s of pause")
        assert written(recorder, "alice") <= paused_at + 1
        resumed_at, resumed_wall = alice.video.count, time.time()
        recorder.resume()
        assert recorder.recording
        before = written(recorder, "alice")
        await wait_for(lambda: written(recorder, "alice") >= before + 45, what="1.5 s more recorded")
        stats = await recorder.stop()
        stopped = time.time()
    finally:
        await alice.close()
        await bob.close()

    pause = resumed_wall - paused_wall
    assert stats.failed is None
    assert abs(stats.duration - (stopped - started - pause)) < 0.1
    frames = video_numbers(directory, stats, "alice")
    numbers = [n for n, _, _ in frames]
    assert None not in numbers
    breaks = [i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1]
    assert len(breaks) == 1, f"expected one jump (the pause): {numbers}"
    cut = breaks[0]
    assert numbers[cut - 1] < paused_at + 2, "frames sent after pause() were written"
    assert numbers[cut] >= resumed_at - 2, "frames sent while paused were written"
    assert frames[cut][2], "the video did not resume at a keyframe"
    assert frames[0][2]
    # the file holds no dead time: across the cut its time moves on by less than a third of the pause (about
    # 1.5 s), and never backwards. (Not compared with frame numbers / 30 - pause: on a loaded machine the test's
    # sender makes fewer than 30 frames a second, so its frame numbers do not measure time; seen in CI as a
    # jump of 0.03 s against an "expected" -0.20 s.)
    jump = frames[cut][1] - frames[cut - 1][1]
    assert pause >= 1.0 and -0.05 < jump < pause / 3, (jump, pause)
    audio = audio_packets(directory / track(stats, "alice", "audio").file)  # type: ignore[operator]
    assert audio[-1][0] < stats.duration
    assert len(audio) < (stats.duration + 0.1) / 0.02


async def test_participants_joining_or_moved_in_later_are_recorded(hub, tmp_path):
    """An interpreter who joins and a citizen moved in from the waiting room get tracks; leaving closes them."""
    alice, bob, interpreter, citizen = client("alice"), client("bob"), client("interpreter"), client("citizen")
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        await citizen.join(hub, "waiting-citizen")
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(lambda: written(recorder, "alice") >= 15, what="the recording to run")
        assert written(recorder, "citizen") == 0

        await interpreter.join(hub, ROOM)
        hub.move("citizen", "waiting-citizen", ROOM)
        await wait_for(lambda: written(recorder, "interpreter") >= 30, what="the interpreter's video")
        await wait_for(lambda: written(recorder, "citizen") >= 30, what="the citizen's video")
        await wait_for(lambda: written(recorder, "interpreter", "audio") >= 20, what="the interpreter's audio")
        await hub.leave(ROOM, "interpreter")
        at_leave = written(recorder, "interpreter")
        base = written(recorder, "alice")
        await wait_for(lambda: written(recorder, "alice") >= base + 15, what="the recording to go on")
        assert written(recorder, "interpreter") == at_leave
        stats = await recorder.stop()
    finally:
        for c in (alice, bob, interpreter, citizen):
            await c.close()

    assert stats.failed is None
    index = json.loads((directory / "tracks.json").read_text())
    recorded = {(t["participant"], t["kind"]) for t in index["tracks"]}
    assert recorded == {(p, k) for p in ("alice", "bob", "interpreter", "citizen") for k in ("audio", "video")}
    for name in ("interpreter", "citizen"):
        frames = video_numbers(directory, stats, name)
        assert frames[0][2] and consecutive([n for n, _, _ in frames])  # type: ignore[misc]
        entry = next(t for t in index["tracks"] if t["participant"] == name and t["kind"] == "video")
        alice_entry = next(t for t in index["tracks"] if t["participant"] == "alice" and t["kind"] == "video")
        assert entry["start"] > alice_entry["start"] + 0.3
    interpreter_end = next(t["end"] for t in index["tracks"] if t["participant"] == "interpreter")
    assert interpreter_end < index["duration"] - 0.3
    assert hub.counters().decoded_frames == 0


async def test_losses_on_the_uplink_still_give_a_complete_file(hub, tmp_path):
    """1 in 8 of alice's video packets lost on the way to the server: NACK/RTX repairs reach the recording too."""
    alice, bob = client("alice"), client("bob")
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(lambda: written(recorder, "alice") >= 15, what="the recording to run")

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
        await wait_for(lambda: len(dropped) >= 30, what="30 dropped packets")
        ice._send = original_send
        base = written(recorder, "alice")
        await wait_for(lambda: written(recorder, "alice") >= base + 30, what="1 s more recorded")
        stats = await recorder.stop()
    finally:
        await alice.close()
        await bob.close()

    assert stats.failed is None
    frames = video_numbers(directory, stats, "alice")
    numbers = [n for n, _, _ in frames]
    assert None not in numbers
    assert numbers == sorted(numbers), "frames out of order"
    alice_video = track(stats, "alice", "video")
    # repaired packets came through the tap: nothing (or at worst a keyframe interval) lost
    assert consecutive(numbers) or alice_video.frames_dropped > 0
    assert len(numbers) >= numbers[-1] - numbers[0] + 1 - 15
    print(f"uplink loss: {len(dropped)} packets dropped, frames dropped {alice_video.frames_dropped}")


async def test_a_failing_writer_fails_the_recording_not_the_call(hub, tmp_path):
    """The track directory cannot take files: on_failure is called, the recording ends, forwarding goes on."""
    alice, bob = client("alice"), client("bob")
    directory = recording_dir(tmp_path)
    failures: list[str] = []
    try:
        for c in (alice, bob):
            await c.join(hub, ROOM)
        a_mid = hub.layout(ROOM, "bob")["alice"].video_mid
        recorder = hub.start_recording(ROOM, directory, failures.append)
        (directory / "tracks").rmdir()
        (directory / "tracks").write_bytes(b"")  # no file can be created in it now
        await wait_for(lambda: bool(failures), what="on_failure")
        assert "cannot write" in failures[0]
        assert recorder.failed == failures[0] and not recorder.recording
        assert hub.recorder(ROOM) is None
        seen = len(bob.frames_from(a_mid))
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= seen + 30, what="the call to go on")
        stats = await recorder.stop()
        assert stats.failed == failures[0]
        assert not (directory / "tracks.json").exists()
        assert consecutive([n for n, _ in bob.frames_from(a_mid)])

        # the room may record again; a writer queue of one frame overflows at once
        failures.clear()
        again = tmp_path / "again"
        again.mkdir(mode=0o700)
        recorder = hub.start_recording(ROOM, again, failures.append, queue_size=1)
        await wait_for(lambda: bool(failures), what="on_failure (queue full)")
        assert "queue full" in failures[0]
        seen = len(bob.frames_from(a_mid))
        await wait_for(lambda: len(bob.frames_from(a_mid)) >= seen + 30, what="the call to go on")
        assert (await recorder.stop()).failed == failures[0]
        assert hub.counters().decoded_frames == 0
    finally:
        await alice.close()
        await bob.close()
    assert failures == [failures[0]], "on_failure called more than once"


async def test_closing_the_hub_stops_its_recorders(tmp_path):
    """hub.close() writes what was recorded and the index."""
    from server.media import MediaHub

    hub = MediaHub()
    alice = client("alice")
    directory = recording_dir(tmp_path)
    try:
        await alice.join(hub, ROOM)
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(lambda: written(recorder, "alice") >= 15, what="the recording to run")
    finally:
        await hub.close()
        await alice.close()
    assert not recorder.recording and hub.recorder(ROOM) is None
    index = json.loads((directory / "tracks.json").read_text())
    assert {t["kind"] for t in index["tracks"]} == {"audio", "video"}


async def test_audio_without_video_starts_after_two_seconds(hub, tmp_path):
    """A participant who publishes no video (camera off) is recorded from 2 s after the start."""
    alice, caller = client("alice"), client("caller")
    video = next(t for t in caller.pc.getTransceivers() if t.kind == "video" and t.sender.track is not None)
    video.direction = "recvonly"  # the camera is off: nothing published for video
    directory = recording_dir(tmp_path)
    try:
        for c in (alice, caller):
            await c.join(hub, ROOM)
        await wait_for(lambda: alice.connected_at is not None and caller.connected_at is not None, what="connect")
        recorder = hub.start_recording(ROOM, directory)
        await wait_for(lambda: written(recorder, "caller", "audio") >= 25, what="the caller's audio")
        stats = await recorder.stop()
    finally:
        await alice.close()
        await caller.close()
    index = json.loads((directory / "tracks.json").read_text())
    recorded = {(t["participant"], t["kind"]) for t in index["tracks"]}
    assert ("caller", "video") not in recorded and ("caller", "audio") in recorded
    assert 1.9 < audio_start(index, "caller") < 2.3
    assert stats.failed is None
