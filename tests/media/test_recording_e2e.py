"""A recording end to end: real aiortc peers through the SFU, the recorder taps what it forwards, the
composer (Debian's ffmpeg) makes one file, and the test decodes that file (decoding is fine in a test,
never on the server): frames in order with none missing over 10 s, audio present, A/V drift < 80 ms; and
with packets lost for good on the publisher's leg the file still decodes, in order, with no broken frame.

The camera of the drift test sends frames encoded before the test (all keyframes, 320x240), so that the
sender's clock (its RTCP sender reports) is not shifted by live encoding on a loaded machine: aiortc pairs
a sender report's RTP time with the moment a packet is *sent*, and live VP8 encoding under load delays
that by 100-300 ms (browsers do not have this problem). What is measured is then what the server does.
"""

from __future__ import annotations

import asyncio
import fractions
import statistics
import time
from pathlib import Path

import av
import numpy as np
from aiortc import AudioStreamTrack, MediaStreamTrack

from server.media.compose import compose

from .peers import GRID_COLS, Client, ToneTrack, draw_frame_number, read_frame_number, wait_for

ROOM = "c:recorded"
FPS = 30
WIDTH, HEIGHT = 320, 240
SECONDS = 10
FIRST_NUMBER = 100
"""The camera's first frame number: an all-black picture (the composer's padding) reads as 0."""


def keyframes(count: int) -> list[bytes]:
    """``count`` VP8 keyframes showing the numbers FIRST_NUMBER, FIRST_NUMBER + 1, ..."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.bit_rate, codec.gop_size = 600_000, 1
    codec.time_base = fractions.Fraction(1, FPS)
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(draw_frame_number(FIRST_NUMBER + i, WIDTH, HEIGHT), format="yuv420p")
        frame.pts = i
        out.append(b"".join(bytes(p) for p in codec.encode(frame)))
    return out


class NumberedCamera(MediaStreamTrack):
    """30 fps of pre-encoded frames; remembers the wall time each number was 'captured'."""

    kind = "video"

    def __init__(self, frames: list[bytes]) -> None:
        super().__init__()
        self.frames = frames
        self.count = 0
        self.start: float | None = None
        self.captured: dict[int, float] = {}

    async def recv(self) -> av.Packet:
        if self.start is None:
            self.start = time.time()
        wait = self.start + self.count / FPS - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        index = self.count % len(self.frames)
        self.captured[FIRST_NUMBER + index] = time.time()
        packet = av.Packet(self.frames[index])
        packet.pts, packet.time_base = self.count * (90000 // FPS), fractions.Fraction(1, 90000)
        self.count += 1
        return packet


def replace_track(peer: Client, kind: str, track: MediaStreamTrack) -> None:
    sender = next(s for s in peer.pc.getSenders() if s.track is not None and s.track.kind == kind)
    sender.replaceTrack(track)


def decode_tiles(path: Path, tiles: int) -> tuple[list[list[tuple[float, int | None]]], float]:
    """Per tile (left to right): (time, number or None) of every output frame; and the video's frame rate."""
    per_tile: list[list[tuple[float, int | None]]] = [[] for _ in range(tiles)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or FPS)
        for frame in container.decode(stream):
            luma = frame.to_ndarray(format="gray")
            width = luma.shape[1] // tiles
            for i in range(tiles):
                per_tile[i].append((float(frame.time), read_frame_number(luma[:, i * width : (i + 1) * width])))
    return per_tile, rate


def beep_onsets(path: Path) -> list[float]:
    """Output times where the mixed audio turns from silence to a tone."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks, first = [], None
        for frame in container.decode(stream):
            if first is None:
                first = float(frame.time)
            chunks.append(frame.to_ndarray().reshape(frame.samples, -1).mean(axis=1)
                          if frame.format.is_packed else frame.to_ndarray()[0])
        rate = stream.rate
    samples = np.concatenate(chunks)
    window = rate // 200  # 5 ms
    energy = np.sqrt(np.convolve(samples.astype(np.float64) ** 2, np.ones(window) / window, mode="same"))
    loud = energy > 0.05 * float(energy.max())
    onsets = []
    last = -1.0
    for index in np.flatnonzero(loud[1:] & ~loud[:-1]) + 1:
        t = (first or 0.0) + index / rate
        if t - last > 0.5:
            onsets.append(t - window / 2 / rate)  # the window centres on the edge
            last = t
    return onsets


async def record(hub, directory: Path, publisher: Client, frames: int, what: str) -> None:  # type: ignore[no-untyped-def]
    recorder = hub.start_recording(ROOM, directory)
    sent = publisher.pc.getSenders()
    camera = next(s.track for s in sent if s.track is not None and s.track.kind == "video")
    start = camera.count
    await wait_for(lambda: camera.count - start >= frames, limit=60, what=what)
    stats = await recorder.stop()
    assert stats.failed is None
    assert hub.counters().decoded_frames == 0 and hub.counters().encoders == 0


async def test_composed_recording_keeps_every_frame_and_audio_in_sync(hub, tmp_path: Path) -> None:
    encoded = await asyncio.to_thread(keyframes, (SECONDS + 3) * FPS)
    alice, bob = Client("alice"), Client("bob")
    cameras = {"alice": NumberedCamera(encoded), "bob": NumberedCamera(encoded)}
    replace_track(alice, "video", cameras["alice"])
    replace_track(bob, "video", cameras["bob"])
    replace_track(bob, "audio", AudioStreamTrack())  # silence: the beeps in the mix are alice's
    try:
        for peer in (alice, bob):
            await peer.join(hub, ROOM)
        mid = hub.layout(ROOM, "bob")["alice"].video_mid
        await wait_for(lambda: len(bob.frames_from(mid)) >= 15, what="the call to run")
        directory = tmp_path / "rec"
        directory.mkdir(mode=0o700)
        await record(hub, directory, alice, SECONDS * FPS, f"{SECONDS} s of recorded video")
        result = await asyncio.to_thread(compose, directory)
    finally:
        await alice.close()
        await bob.close()
    assert result.video_tracks == 2 and result.audio_tracks == 2
    assert result.duration >= SECONDS - 0.5

    import json

    order = [t["participant"] for t in json.loads((directory / "tracks.json").read_text())["tracks"]
             if t["kind"] == "video"]
    tiles, _ = decode_tiles(result.output, len(order))
    offsets = []
    for participant, shown in zip(order, tiles, strict=True):
        numbers = [n for _, n in shown if n]  # 0: black padding before the first frame
        unreadable = sum(1 for _, n in shown if n is None)
        assert unreadable == 0, f"{participant}: {unreadable} unreadable frames"
        distinct = list(dict.fromkeys(numbers))
        assert len(distinct) >= SECONDS * FPS - 5, f"{participant}: {len(distinct)} frames"
        steps = [b - a for a, b in zip(distinct, distinct[1:], strict=False)]
        assert all(s == 1 for s in steps), f"{participant}: missing or reordered frames: {steps}"
        first_seen = {}
        for t, n in shown:
            if n and n not in first_seen:
                first_seen[n] = t
        camera = cameras[participant]
        offsets.append(statistics.median(t - camera.captured[n] for n, t in first_seen.items()))
    video_offset = offsets[order.index("alice")]

    tone = alice.audio
    assert isinstance(tone, ToneTrack) and tone.start is not None
    onsets = beep_onsets(result.output)
    assert len(onsets) >= SECONDS - 2, f"audio missing: beeps at {onsets}"
    # each beep k starts at tone.start + k: match each onset to the beep whose output time it is
    audio_offsets = []
    for onset in onsets:
        made = tone.start + round(onset - video_offset - tone.start)  # the nearest whole second on alice's clock
        audio_offsets.append(onset - made)
    drift = statistics.median(audio_offsets) - video_offset
    print(f"A/V drift in the composed file: {drift * 1000:.1f} ms over {len(onsets)} beeps")
    assert abs(drift) < 0.080, f"A/V drift {drift * 1000:.0f} ms (audio {audio_offsets}, video {video_offset})"


async def test_losses_on_the_publishers_leg_still_give_a_decodable_file(hub, tmp_path: Path) -> None:
    """1 in 10 of alice's video packets and every retransmission of them are lost for good: the recorder
    drops what it cannot complete, waits for a keyframe, and the composed file decodes in order."""
    alice, bob = Client("alice"), Client("bob")
    try:
        for peer in (alice, bob):
            await peer.join(hub, ROOM)
        mid = hub.layout(ROOM, "bob")["alice"].video_mid
        await wait_for(lambda: len(bob.frames_from(mid)) >= 15, what="the call to run")
        video = next(t for t in alice.pc.getTransceivers() if t.kind == "video")
        payload_types = {c.payloadType for c in video._codecs}  # VP8 and its RTX
        ice = video.sender.transport.transport
        original = ice._send
        seen = [0]
        lost: list[int] = []

        async def lossy(data: bytes) -> None:
            if len(data) > 12 and 128 <= data[0] < 192 and (data[1] & 0x7F) in payload_types:
                seen[0] += 1
                if seen[0] % 10 == 0:
                    lost.append(seen[0])
                    return
            await original(data)

        ice._send = lossy
        directory = tmp_path / "rec"
        directory.mkdir(mode=0o700)
        recorder = hub.start_recording(ROOM, directory)
        camera = alice.video
        assert camera is not None
        start = camera.count
        await wait_for(lambda: camera.count - start >= 6 * FPS, limit=60, what="6 s recorded with losses")
        stats = await recorder.stop()
        ice._send = original
        result = await asyncio.to_thread(compose, directory)
    finally:
        await alice.close()
        await bob.close()
    assert stats.failed is None and len(lost) >= 10
    tiles, _ = decode_tiles(result.output, result.video_tracks)
    alice_tile = tiles[[t.participant for t in stats.tracks if t.kind == "video"].index("alice")]
    numbers = [n for _, n in alice_tile if n is not None]
    assert len(set(numbers)) >= 2 * FPS, "too little of alice's video survived"
    distinct = list(dict.fromkeys(numbers))
    assert all(b > a for a, b in zip(distinct, distinct[1:], strict=False)), "frames out of order"
    assert GRID_COLS == 4  # the frame-number code the test reads (peers.draw_frame_number)
