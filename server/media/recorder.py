"""RoomRecorder: the live recorder, a tap on the packets the forwarding path already decrypts.

Per published track: ``Inbound.receive`` hands each packet (after SRTP, RTX
already unwrapped, so repaired packets come too) to a tap that reorders it,
assembles frames (depacketize.py) and puts complete frames on the bounded queue
of a writer thread (trackwriter.py). Nothing here decodes, calls PyAV or touches
the disk on the event loop. Output, for the composer: ``tracks/<n>-<kind>.webm``
per track and ``tracks.json`` (see :meth:`RoomRecorder.stop`).

Timing. Each file's timestamps start at 0 and follow the RTP timestamps of its
track. Where a file starts on the recording's timeline comes from the publisher's
RTCP sender reports: RTP timestamp -> sender's NTP time -> server clock, with one
offset per participant (the smallest SR arrival minus SR NTP time seen), so the
audio and video of one person line up; without a sender report, arrival time.
Paused stretches are cut out of the timeline and out of the files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .depacketize import (
    Frame,
    OpusAssembler,
    ReorderBuffer,
    RtpPacket,
    Vp8Assembler,
    extend_seq,
    extend_timestamp,
    opus_duration,
    rtp_packet,
    vp8_keyframe_size,
)
from .forwarding import Inbound
from .trackwriter import CloseTrack, OpenTrack, TrackWriter

logger = logging.getLogger(__name__)
_time = time.time

DEFAULT_QUEUE_SIZE = 1024
"Frames (and commands) the writer may lag behind: about 4 s of a three-person call."
REORDER = {"audio": (16, 0.1), "video": (128, 0.5)}
"""Reorder buffer per kind: packets (Galene's sizes) and the longest wait for a
missing one. Only video is NACKed upstream; 0.5 s covers a repair round trip."""
AUDIO_WAITS_FOR_VIDEO = 2.0
"Audio starts with its participant's video, or after this many seconds without it."
FINISH_TIMEOUT = 10.0
"How long stop() waits for the writer thread to write what is queued."
MAX_CLOCK_JUMP = 5.0
"An RTP timestamp this far from arrival time (publisher restarted its clock) re-anchors the track."


class Timeline:
    """The recording's clock: wall time since the start with the paused stretches removed (pure)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.pauses: list[tuple[float, float | None]] = []
        "(begin, end) of each pause in wall time; end None while paused."

    @property
    def paused(self) -> bool:
        return bool(self.pauses) and self.pauses[-1][1] is None

    def pause(self, now: float) -> None:
        if not self.paused:
            self.pauses.append((now, None))

    def resume(self, now: float) -> None:
        if self.paused:
            self.pauses[-1] = (self.pauses[-1][0], now)

    def paused_before(self, t: float) -> float:
        """Seconds paused between the start and wall time ``t``."""
        total = 0.0
        for begin, end in self.pauses:
            if begin >= t:
                break
            total += (t if end is None else min(end, t)) - begin
        return total

    def at(self, t: float) -> float:
        """Timeline position of wall time ``t``."""
        return t - self.start - self.paused_before(t)


@dataclass(frozen=True)
class RecordedTrack:
    """What was recorded of one published track."""

    participant: str
    kind: str
    file: str | None
    "Path relative to the recording directory; None if nothing was written (no keyframe came)."
    frames_written: int
    frames_dropped: int
    "Frames lost to gaps that NACK could not fill, and frames skipped until the next keyframe after one."
    keyframe_requests: int
    "PLIs sent to the publisher for this recording (after the Inbound's throttle)."
    start: float | None
    "Seconds on the recording's timeline where the file's time 0 is."
    end: float | None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class RecordingStats:
    """The outcome of a recording (also the benchmark's counters)."""

    duration: float
    "Seconds of recorded time, pauses removed."
    tracks: tuple[RecordedTrack, ...]
    failed: str | None
    "Why the recording failed (then no tracks.json is written), None if it did not."
    writer_queue_peak: int


class _SenderClock:
    """Maps one participant's sender clock to the server's: the smallest SR arrival - SR NTP time."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None

    def observe(self, sr: tuple[float, int, float]) -> None:
        offset = sr[2] - sr[0]
        if self.offset is None or offset < self.offset:
            self.offset = offset


class _Tap:
    """The recording of one published track; ``receive`` is installed as ``Inbound.tap``."""

    def __init__(self, recorder: RoomRecorder, index: int, participant: str, inbound: Inbound) -> None:
        self.recorder = recorder
        self.index = index
        self.participant = participant
        self.inbound = inbound
        self.kind = inbound.kind
        self.video = inbound.video
        self.clock_rate = inbound.clock_rate
        capacity, wait = REORDER[self.kind]
        self.buffer: ReorderBuffer[RtpPacket] = ReorderBuffer(capacity, wait)
        self.assembler: Vp8Assembler | OpusAssembler = Vp8Assembler() if self.video else OpusAssembler()
        self.sender = recorder._sender_clock(participant)
        self.file = f"tracks/{index}-{self.kind}.webm"
        self.highest_seq: int | None = None
        self.opened = False
        self.closed = False
        self.started = False
        "Writing since the last (re)start: a keyframe (video) or the video of the participant (audio) came."
        self.wait_since = 0.0
        self.last_sr: tuple[float, int, float] | None = None
        self.best_sr: tuple[float, int, float] | None = None
        """The sender report whose NTP time is earliest for its RTP timestamp. A sender pairs
        them when it sends; one that sends late (aiortc under load: up to a few hundred ms)
        makes a later pair, so the earliest is the truest (browsers' pairs all agree)."""
        # file timing
        self.origin_ts: int | None = None
        "Extended RTP timestamp of the file's first frame (pts 0)."
        self.origin: float = 0.0
        "Server-clock capture time of the file's first frame, as estimated when it was written."
        self.anchor_ts = 0
        self.anchor_time = 0.0
        self.last_ts: int | None = None
        self.last_pts = -1
        self.last_duration = 0
        self.width: int | None = None
        self.height: int | None = None
        self.keyframe_requests = 0
        self.queued = 0

    # -- on the packet path --------------------------------------------------------

    def receive(self, data: bytes, seq: int, offset: int, now: float) -> None:
        try:
            ext = extend_seq(seq, self.highest_seq)
            if self.highest_seq is None or ext > self.highest_seq:
                self.highest_seq = ext
            ready = self.buffer.push(ext, rtp_packet(data, offset, now), now)
            for ext_seq, packet in ready:
                self._assemble(ext_seq, packet, now)
        except Exception:  # a bug here must cost the recording, never the call
            logger.exception("recording: tap failed")
            self.recorder._fail("internal error in the recorder")

    def _assemble(self, ext_seq: int, packet: RtpPacket, now: float) -> None:
        assembler = self.assembler
        frame = assembler.push(ext_seq, packet)
        if self.video and assembler.wants_keyframe:  # type: ignore[union-attr]
            self.request_keyframe()
        if frame is not None:
            self._write(frame, now)

    def request_keyframe(self) -> None:
        inbound = self.inbound
        before = inbound.keyframe_requests
        inbound.request_keyframe()  # throttled to one per keyframe_interval
        self.keyframe_requests += inbound.keyframe_requests - before

    def _write(self, frame: Frame, now: float) -> None:
        recorder = self.recorder
        if recorder._failed is not None:
            return
        if not self.started:
            if self.video:
                if not self.opened:
                    size = vp8_keyframe_size(frame.data)
                    if size is None:
                        return
                    self.width, self.height = size
                    if not recorder._put(
                        OpenTrack(self.index, recorder.directory / self.file, "video", size[0], size[1])
                    ):
                        return
                    self.opened = True
            else:
                video = recorder._video_tap(self.participant)
                if (video is None or not video.started) and now - self.wait_since < AUDIO_WAITS_FOR_VIDEO:
                    return
                if not self.opened:
                    if not recorder._put(OpenTrack(self.index, recorder.directory / self.file, "audio")):
                        return
                    self.opened = True
            self.started = True

        sr = self.inbound.last_sr
        if sr is not None and sr is not self.last_sr:
            self._observe(sr)
        ts = extend_timestamp(frame.timestamp, self.last_ts)
        self.last_ts = ts
        clock_rate = self.clock_rate
        if self.origin_ts is None:
            self.origin_ts = self.anchor_ts = ts
            self.origin = self.anchor_time = self._capture_time(ts, frame.arrival)
        captured = self.anchor_time + (ts - self.anchor_ts) / clock_rate
        if abs(captured - frame.arrival) > MAX_CLOCK_JUMP:
            # the publisher's RTP clock jumped (e.g. its encoder restarted): follow arrival time
            self.anchor_ts, self.anchor_time = ts, frame.arrival
            captured = frame.arrival
        timeline = recorder.timeline
        paused = timeline.paused_before(captured) - timeline.paused_before(self.origin)
        pts = round((captured - self.origin - paused) * 1000)
        if pts <= self.last_pts:
            pts = self.last_pts + 1
        if self.video:
            duration = 0  # unknown until the next frame; the muxer does not need it
            self.last_duration = pts - self.last_pts if self.last_pts >= 0 else 0
        else:
            duration = self.last_duration = opus_duration(frame.data) // 48
        self.last_pts = pts
        if recorder._put((self.index, frame.data, pts, duration, frame.keyframe)):
            self.queued += 1

    def _observe(self, sr: tuple[float, int, float]) -> None:
        self.last_sr = sr
        self.sender.observe(sr)
        best = self.best_sr
        if best is None:
            self.best_sr = sr
            return
        # the NTP time this report gives to the best one's RTP timestamp: earlier is truer
        since_best = (extend_timestamp(sr[1], best[1]) - best[1]) / self.clock_rate
        if sr[0] - since_best < best[0]:
            self.best_sr = sr

    def _capture_time(self, ts: int, arrival: float) -> float:
        """Server-clock time a frame was captured: from the sender report if there is one."""
        sr = self.best_sr
        offset = self.sender.offset
        if sr is None or offset is None:
            return arrival
        sr_ts = extend_timestamp(sr[1], ts)
        return sr[0] + (ts - sr_ts) / self.clock_rate + offset

    # -- control (event loop, outside the packet path) -----------------------------------

    def attach(self, now: float) -> None:
        self.buffer.reset()
        self.highest_seq = None
        self.assembler.restart()
        self.started = False
        self.wait_since = now
        self.inbound.tap = self.receive
        if self.video:
            self.request_keyframe()

    def detach(self, now: float, write: bool) -> None:
        """Stop tapping; with ``write``, the frames already received are written first."""
        if self.inbound.tap == self.receive:
            self.inbound.tap = None
        held = self.buffer.flush()
        if write:
            for ext_seq, packet in held:
                self._assemble_no_request(ext_seq, packet, now)
        self.started = False

    def _assemble_no_request(self, ext_seq: int, packet: RtpPacket, now: float) -> None:
        frame = self.assembler.push(ext_seq, packet)
        if frame is not None:
            self._write(frame, now)

    def stats(self, recorder: RoomRecorder) -> RecordedTrack:
        written = recorder._writer.written.get(self.index, 0)
        start = end = None
        if self.origin_ts is not None:
            start = recorder.timeline.at(self._best_origin())
            end = start + (self.last_pts + self.last_duration) / 1000
        return RecordedTrack(
            participant=self.participant,
            kind=self.kind,
            file=self.file if self.opened else None,
            frames_written=written,
            frames_dropped=self.assembler.dropped,
            keyframe_requests=self.keyframe_requests,
            start=start,
            end=end,
            width=self.width,
            height=self.height,
        )

    def _best_origin(self) -> float:
        """The first frame's capture time with what is known now (a sender report may have come since)."""
        sr = self.inbound.last_sr
        if sr is not None and sr is not self.last_sr:
            self._observe(sr)
        if self.origin_ts is None:
            return self.origin
        if self.anchor_ts != self.origin_ts:
            return self.origin  # the clock jumped since: the report no longer describes the first frame
        return self._capture_time(self.origin_ts, self.origin)


class RoomRecorder:
    """Records every track published in one room, one WebM file per track (see module doc).

    Made by :meth:`MediaHub.start_recording`; starts recording at once.
    """

    def __init__(
        self,
        room_id: str,
        directory: Path,
        on_failure: Callable[[str], None] | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        on_finished: Callable[[RoomRecorder], None] | None = None,
    ) -> None:
        self.room_id = room_id
        self.directory = Path(directory)
        self._on_failure = on_failure
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        (self.directory / "tracks").mkdir(mode=0o700, exist_ok=True)
        self.timeline = Timeline(_time())
        self._taps: list[_Tap] = []
        self._clocks: dict[str, _SenderClock] = {}
        self._failed: str | None = None
        self._stopping = False
        self._result: asyncio.Future[RecordingStats] | None = None
        self._writer = TrackWriter(queue_size, self._writer_error)
        self._writer.start()

    # -- public ----------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        """True while frames are written (not paused, stopped or failed)."""
        return not self._stopping and self._failed is None and not self.timeline.paused

    @property
    def failed(self) -> str | None:
        return self._failed

    def pause(self) -> None:
        """Stop writing at once; frames while paused are dropped. Files stay open."""
        if self._stopping or self._failed is not None or self.timeline.paused:
            return
        now = _time()
        for tap in self._live_taps():
            tap.detach(now, write=True)
        self.timeline.pause(now)
        logger.info("recording in room %s paused", self.room_id)

    def resume(self) -> None:
        """Write again: video from its next keyframe (requested now), audio once its video started."""
        if self._stopping or self._failed is not None or not self.timeline.paused:
            return
        now = _time()
        self.timeline.resume(now)
        for tap in self._live_taps():
            tap.attach(now)
        logger.info("recording in room %s resumed", self.room_id)

    def stats(self) -> RecordingStats:
        """Counters so far (the final ones come from :meth:`stop`)."""
        return self._stats(_time())

    async def stop(self) -> RecordingStats:
        """Write what was received, close the files, write ``tracks.json``; idempotent.

        ``tracks.json`` (the composer's input)::

            {"version": 1, "duration": 12.34,
             "tracks": [{"file": "tracks/0-video.webm", "participant": "citizen:abc", "kind": "video",
                         "start": 0.0, "end": 12.3, "frames": 370, "width": 320, "height": 240}]}

        Only tracks with frames are listed; audio tracks have no width/height. No
        ``tracks.json`` is written for a failed recording.
        """
        if self._result is not None:
            return await asyncio.shield(self._result)
        self._result = self._loop.create_future()
        try:
            stats = await self._finish()
        except BaseException as exc:
            self._result.set_exception(exc)
            raise
        self._result.set_result(stats)
        return stats

    # -- called by the hub -------------------------------------------------------------

    def add_track(self, participant_id: str, inbound: Inbound) -> None:
        """Record a track published in the room (now, or by a participant who joined or moved in)."""
        if self._stopping or self._failed is not None:
            return
        if any(t.inbound is inbound and not t.closed for t in self._taps):
            return
        tap = _Tap(self, len(self._taps), participant_id, inbound)
        self._taps.append(tap)
        now = _time()
        if self.timeline.paused:
            tap.wait_since = now
        else:
            tap.attach(now)

    def remove_participant(self, participant_id: str) -> None:
        """A participant left the room: write what it sent, close its files."""
        now = _time()
        for tap in self._taps:
            if tap.participant == participant_id and not tap.closed:
                tap.detach(now, write=self.recording)
                tap.closed = True
                if tap.opened and self._failed is None:
                    self._put(CloseTrack(tap.index))

    # -- internals ----------------------------------------------------------------------

    def _live_taps(self) -> list[_Tap]:
        return [t for t in self._taps if not t.closed]

    def _sender_clock(self, participant_id: str) -> _SenderClock:
        return self._clocks.setdefault(participant_id, _SenderClock())

    def _video_tap(self, participant_id: str) -> _Tap | None:
        for tap in self._taps:
            if tap.video and tap.participant == participant_id and not tap.closed:
                return tap
        return None

    def _put(self, item: object) -> bool:
        if self._writer.put(item):
            return True
        self._fail("writer queue full (the disk is too slow)")
        return False

    def _writer_error(self, reason: str) -> None:
        """From the writer thread."""
        self._loop.call_soon_threadsafe(self._fail, reason)

    def _fail(self, reason: str) -> None:
        if self._failed is not None:
            return
        self._failed = reason
        logger.error("recording in room %s failed: %s", self.room_id, reason)
        now = _time()
        for tap in self._taps:
            tap.detach(now, write=False)
        self._writer.abort()
        if self._on_finished is not None:
            self._on_finished(self)
        if self._on_failure is not None:
            self._loop.call_soon(self._on_failure, reason)

    async def _finish(self) -> RecordingStats:
        self._stopping = True
        now = _time()
        for tap in self._taps:
            if not tap.closed:
                tap.detach(now, write=self._failed is None and not self.timeline.paused)
        self.timeline.resume(now)
        finished = await asyncio.to_thread(self._writer.finish, FINISH_TIMEOUT)
        if not finished and self._failed is None:
            self._fail("the writer did not finish (the disk stalled)")
        if self._writer.error is not None and self._failed is None:
            self._fail(self._writer.error)
        stats = self._stats(now)
        if self._failed is None:
            await asyncio.to_thread(self._write_index, stats)
        if self._on_finished is not None:
            self._on_finished(self)
        logger.info(
            "recording in room %s stopped: %.1f s, %d tracks%s",
            self.room_id,
            stats.duration,
            sum(1 for t in stats.tracks if t.frames_written),
            ", failed" if stats.failed else "",
        )
        return stats

    def _stats(self, now: float) -> RecordingStats:
        tracks = [tap.stats(self) for tap in self._taps]
        # A first frame captured just before start_recording (in flight then) starts before 0:
        # shift the whole timeline, so that every start is >= 0 and the tracks keep their sync.
        shift = max([0.0] + [-t.start for t in tracks if t.start is not None])
        if shift:
            tracks = [
                replace(t, start=t.start + shift, end=t.end + shift) if t.start is not None and t.end is not None else t
                for t in tracks
            ]
        return RecordingStats(
            duration=max(self.timeline.at(now), 0.0) + shift,
            tracks=tuple(tracks),
            failed=self._failed,
            writer_queue_peak=self._writer.peak,
        )

    def _write_index(self, stats: RecordingStats) -> None:
        tracks: list[dict[str, Any]] = []
        for t in stats.tracks:
            if not t.frames_written or t.file is None or t.start is None or t.end is None:
                continue
            entry: dict[str, Any] = {
                "file": t.file,
                "participant": t.participant,
                "kind": t.kind,
                "start": round(t.start, 3),
                "end": round(t.end, 3),
                "frames": t.frames_written,
            }
            if t.kind == "video":
                entry["width"], entry["height"] = t.width, t.height
            tracks.append(entry)
        index = {"version": 1, "duration": round(stats.duration, 3), "tracks": tracks}
        path = self.directory / "tracks.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(index, indent=1) + "\n")
        temporary.chmod(0o600)
        temporary.replace(path)
