"""Client side of bench/media_load.py: cheap aiortc peers that still look like cameras.

Encoding 640x480 VP8 for 20 peers would take more CPU than this 2-core machine
has, so the media is encoded once (frame numbers drawn into the picture, each
frame also as a keyframe for PLI) and the peers send those packets through
aiortc's pre-encoded ``av.Packet`` path. Receivers identify frames by a hash of
the reassembled encoded frame (SFU and direct modes, no decoding) or by reading
the frame number from the decoded picture (relay mode, where the server
re-encodes).
"""

from __future__ import annotations

import asyncio
import fractions
import queue
import time
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack

from tests.media.peers import draw_frame_number, read_frame_number

VIDEO_RATE = 90000
FPS = 30


@dataclass
class Media:
    """Pre-encoded media shared by every peer of a worker process."""

    video: list[tuple[bytes, bytes]]
    "Per frame: (the frame as encoded in the stream, the same picture as a keyframe)."
    audio: list[bytes]
    "20 ms Opus packets."
    index_of: dict[bytes, int] = field(default_factory=dict)
    "encoded frame -> frame index (keyed by the bytes: str/bytes hashes differ between processes)."

    def __post_init__(self) -> None:
        for i, (delta, key) in enumerate(self.video):
            self.index_of[delta] = i
            self.index_of[key] = i


def _vp8_context(width: int, height: int, bitrate: int, keyframes_only: bool) -> av.CodecContext:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.gop_size = 1 if keyframes_only else 3000
    codec.time_base = fractions.Fraction(1, FPS)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "-6",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "partitions": "0",
    }
    return codec


def encode_media(frames: int = 150, width: int = 640, height: int = 480, bitrate: int = 1_000_000) -> Media:
    stream = _vp8_context(width, height, bitrate, keyframes_only=False)
    keys = _vp8_context(width, height, bitrate * 3, keyframes_only=True)
    video = []
    for i in range(frames):
        image = draw_frame_number(i, width, height)
        # a little moving noise so that delta frames are not empty
        noise = np.random.default_rng(i).integers(0, 12, size=(height, width), dtype=np.uint8)
        image[:height] = np.clip(image[:height].astype(np.int16) + noise - 6, 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = i
        delta = b"".join(bytes(p) for p in stream.encode(frame))
        key = b"".join(bytes(p) for p in keys.encode(frame))
        video.append((delta, key))
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = 48000, "mono", "s16"
    opus.bit_rate = 32000
    audio: list[bytes] = []
    for i in range(50):
        t = (np.arange(i * 960, (i + 1) * 960) / 48000.0).astype(np.float32)
        wave = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        a = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
        a.sample_rate, a.pts = 48000, i * 960
        audio.extend(bytes(p) for p in opus.encode(a))
    return Media(video=video, audio=audio)


class PreEncodedVideo(MediaStreamTrack):
    """30 fps of pre-encoded VP8; a PLI makes the next frame a keyframe."""

    kind = "video"

    def __init__(self, media: Media) -> None:
        super().__init__()
        self.media = media
        self.count = 0
        self.start: float | None = None
        self.want_keyframe = True
        self.sent_at: dict[int, float] = {}

    def request_keyframe(self) -> None:
        self.want_keyframe = True

    async def recv(self) -> av.Packet:
        if self.start is None:
            self.start = time.monotonic()
        target = self.start + self.count / FPS
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        index = self.count % len(self.media.video)
        delta, key = self.media.video[index]
        data = key if self.want_keyframe else delta
        self.want_keyframe = False
        packet = av.Packet(data)
        packet.pts = self.count * (VIDEO_RATE // FPS)
        packet.time_base = fractions.Fraction(1, VIDEO_RATE)
        self.sent_at[index] = time.monotonic()
        self.count += 1
        return packet


class PreEncodedAudio(MediaStreamTrack):
    """50 packets per second of pre-encoded Opus."""

    kind = "audio"

    def __init__(self, media: Media) -> None:
        super().__init__()
        self.media = media
        self.count = 0
        self.start: float | None = None

    async def recv(self) -> av.Packet:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + self.count * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.media.audio[self.count % len(self.media.audio)])
        packet.pts = self.count * 960
        packet.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        return packet


class FrameLog:
    """(arrival, latency) of every frame a subscriber got."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, float]] = []
        self.unknown = 0

    def add(self, index: int | None, sent_at: dict[int, float]) -> None:
        now = time.monotonic()
        if index is None or index not in sent_at:
            self.unknown += 1
            return
        self.entries.append((now, now - sent_at[index]))


class HashingQueue(queue.Queue):  # type: ignore[type-arg]
    """Stands in for a client receiver's decoder queue: identifies frames, decodes nothing."""

    def __init__(self, media: Media | None, log: FrameLog | None, sent_at: dict[int, float] | None) -> None:
        super().__init__()
        self.media, self.log, self.sent_at = media, log, sent_at

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        if item is None:
            super().put(None)
            return
        if self.log is not None and self.media is not None and self.sent_at is not None:
            _codec, frame = item
            self.log.add(self.media.index_of.get(frame.data), self.sent_at)


async def consume_decoding(track: MediaStreamTrack, log: FrameLog | None, sent_at: dict[int, float]) -> None:
    """Relay mode: decode and read the frame number from the picture."""
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            frame = await track.recv()
            if log is not None:
                log.add(read_frame_number(frame.to_ndarray(format="gray")), sent_at)
    except MediaStreamError:
        pass
