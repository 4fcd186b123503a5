"""Real aiortc peers used as SFU clients in the tests (and by the benchmark)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

GRID_COLS, GRID_ROWS = 4, 4
NUMBER_BITS = 12
NUMBER_MOD = 1 << NUMBER_BITS


def frame_bits(number: int) -> list[int]:
    """12 bits of the frame number, then 4 parity bits (one per 3-bit group)."""
    n = number % NUMBER_MOD
    bits = [(n >> i) & 1 for i in range(NUMBER_BITS)]
    bits += [sum(bits[3 * g : 3 * g + 3]) & 1 for g in range(4)]
    return bits


def draw_frame_number(number: int, width: int, height: int) -> np.ndarray:
    """A yuv420p image whose luma is a 4x4 grid of black/white blocks encoding ``number``."""
    image = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    bw, bh = width // GRID_COLS, height // GRID_ROWS
    for i, bit in enumerate(frame_bits(number)):
        r, c = divmod(i, GRID_COLS)
        image[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 235 if bit else 16
    return image


def read_frame_number(luma: np.ndarray) -> int | None:
    """Inverse of :func:`draw_frame_number` on a decoded luma plane; None if unreadable."""
    height, width = luma.shape
    bw, bh = width // GRID_COLS, height // GRID_ROWS
    bits = []
    for i in range(GRID_COLS * GRID_ROWS):
        r, c = divmod(i, GRID_COLS)
        centre = luma[r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
        bits.append(1 if centre.mean() > 128 else 0)
    number = sum(bit << i for i, bit in enumerate(bits[:NUMBER_BITS]))
    if frame_bits(number) != bits:
        return None
    return number


class FrameNumberTrack(VideoStreamTrack):
    """Synthetic camera: 30 fps, each frame shows its own number."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(draw_frame_number(self.count, self.width, self.height), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.sent_at[self.count % NUMBER_MOD] = time.monotonic()
        self.count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A microphone in real time: 20 ms of 48 kHz audio every 20 ms, a 440 Hz beep in the first 100 ms of
    every second after the first frame (a marker to find where audio lands), silence otherwise.

    An earlier version relabelled aiortc's 8 kHz frames (160 samples) as 48 kHz: it sent a sixth of real
    time, one 20 ms Opus packet per 120 ms (``test_tone_track_runs_in_real_time``)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.start: float | None = None
        """Wall time of the first frame: beep k starts at ``start + k``."""
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.time()
        else:
            self._samples += 960
            wait = self.start + self._samples / 48000 - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        index = np.arange(self._samples, self._samples + 960)
        beep = (index % 48000) < 4800
        wave = (np.sin(2 * np.pi * 440 * index / 48000.0) * 8000 * beep).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts, frame.time_base = self._samples, fractions.Fraction(1, 48000)
        return frame


@dataclass
class Received:
    """What one remote slot of a client got."""

    frames: list[tuple[int, float]] = field(default_factory=list)
    "(frame number, monotonic arrival) of every decoded, readable video frame."
    unreadable: int = 0
    audio_frames: int = 0


class Client:
    """A participant: one peer connection to the SFU, its camera, ``slots`` remote views."""

    def __init__(self, name: str, slots: int = 2, publish: bool = True) -> None:
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.video = FrameNumberTrack() if publish else None
        self.audio = ToneTrack() if publish else None
        if publish:
            self.pc.addTrack(self.audio)
            self.pc.addTrack(self.video)
            extra = slots - 1
        else:
            extra = slots
        for _ in range(extra):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        self.received: dict[str, Received] = {}
        self.connected_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        for t in self.pc.getTransceivers():
            track = t.receiver.track
            if track is None:
                continue
            slot = self.received.setdefault(t.mid, Received())
            self._tasks.append(asyncio.ensure_future(self._consume(track, slot)))

    async def join(self, hub: object, room: str) -> None:
        answer = await hub.handle_offer(room, self.name, await self.offer())  # type: ignore[attr-defined]
        await self.accept(answer)

    def frames_from(self, video_mid: str) -> list[tuple[int, float]]:
        return self.received.setdefault(video_mid, Received()).frames

    async def _consume(self, track: MediaStreamTrack, slot: Received) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    slot.audio_frames += 1
                    continue
                luma = frame.to_ndarray(format="gray")
                number = read_frame_number(luma)
                if number is None:
                    slot.unreadable += 1
                else:
                    slot.frames.append((number, time.monotonic()))
        except MediaStreamError:
            pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


async def wait_for(condition: Callable[[], bool], limit: float = 20.0, what: str = "condition") -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails after ``limit`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def consecutive(numbers: list[int]) -> bool:
    return all((b - a) % NUMBER_MOD == 1 for a, b in zip(numbers, numbers[1:], strict=False))
