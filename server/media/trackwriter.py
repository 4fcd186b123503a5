"""The recorder's writer thread: encoded frames in through a bounded queue, WebM files out.

The event loop never touches the disk or PyAV: it appends commands to a bounded
queue that this thread drains every ``BATCH_INTERVAL``, and muxes them with PyAV's mux streams (already
encoded packets, no codec is ever opened). One WebM file per track, opened by
this thread with mode 0600. A full queue is the caller's business (it fails the
recording); an error here is reported through ``on_error`` from this thread.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import struct
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)
"Milliseconds: the container's own unit (Matroska's default timecode scale)."
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, 48000, 0, 0)
"""Opus identification header (RFC 7845 section 5.1): version 1, 2 channels (what
WebRTC signals as opus/48000/2), pre-skip 0 (the RTP stream has no priming to
drop), 48 kHz, gain 0, mapping family 0. WebM players need it as CodecPrivate."""


BATCH_INTERVAL = 0.05
"""The writer thread looks for new frames this often (seconds); frames wait at most this long."""


@dataclass(frozen=True)
class OpenTrack:
    """Create the file of one track (video: dimensions from its first keyframe)."""

    index: int
    path: Path
    kind: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class CloseTrack:
    index: int


FrameItem = tuple[int, bytes, int, int, bool]
"(track index, encoded frame, pts in ms, duration in ms (0: unknown), keyframe): a tuple, one per frame."

_STOP = object()


class _OpenFile:
    __slots__ = ("container", "stream", "file", "last_pts")

    def __init__(self, container: Any, stream: Any, file: Any) -> None:
        self.container = container
        self.stream = stream
        self.file = file
        self.last_pts = -1


def _open_exclusive(path: Path) -> Any:
    # O_EXCL/O_NOFOLLOW: never overwrite or follow something planted in the directory
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def _opus_stream(container: Any) -> Any:
    """An Opus stream with an OpusHead header and no codec opened.

    ``add_mux_stream`` cannot carry a codec header, so the stream is made from a
    template whose (never opened) codec context carries it; PyAV marks streams
    made from templates as initialized and does not open their codec.
    """
    scratch = av.open(io.BytesIO(), "w", format="webm")
    try:
        template = scratch.add_stream("libopus", rate=48000)
        stream = container.add_stream_from_template(template, opaque=True)
    finally:
        scratch.close()
    stream.codec_context.extradata = OPUS_HEAD
    stream.time_base = TIME_BASE
    return stream


class TrackWriter:
    """A thread writing the frames of one recording's tracks, fed through a bounded queue."""

    def __init__(self, queue_size: int, on_error: Any) -> None:
        self._items: collections.deque[object] = collections.deque()
        """Commands and frames from the event loop. ``deque.append``/``popleft`` are atomic; nobody is
        notified per item: the thread drains the queue every ``BATCH_INTERVAL``. Waking it per frame (a
        ``queue.Queue``) cost more than muxing: ~50 us of futex and GIL hand-over per frame against 5 us
        (bench/media_load.py --record)."""
        self._size = queue_size
        self._wake = threading.Event()
        self.on_error = on_error
        "Called from the writer thread with a reason (no names, no paths) when writing fails."
        self.peak = 0
        "Most items the queue held at once (sampled at each put)."
        self.written: dict[int, int] = {}
        "Frames muxed per track index (updated by the writer thread)."
        self.error: str | None = None
        self._abort = threading.Event()
        self._files: dict[int, _OpenFile] = {}
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- event loop side -------------------------------------------------------

    def put(self, item: object) -> bool:
        """Queue a command or frame without blocking; False if the queue is full."""
        items = self._items
        size = len(items)
        if size >= self._size:
            return False
        items.append(item)
        if size >= self.peak:
            self.peak = size + 1
        return True

    def abort(self) -> None:
        """Stop writing as soon as possible; queued frames are discarded, files closed."""
        self._abort.set()
        self._wake.set()

    def finish(self, timeout: float) -> bool:
        """Blocking (run it in a thread): write what is queued, close the files, end the thread.

        Returns False if the thread did not end within ``timeout`` (a stalled disk).
        """
        self._items.append(_STOP)  # a control item: past the bound, so that a full queue still ends
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- writer thread -----------------------------------------------------------

    def _run(self) -> None:
        items = self._items
        while True:
            if not items:
                self._wake.wait(BATCH_INTERVAL)
                self._wake.clear()  # a set() lost here only delays the next look by one interval
                continue
            item = items.popleft()
            if item is _STOP:
                break
            if self._abort.is_set():
                continue  # drain without writing, so that a blocked put/_STOP gets through
            try:
                if type(item) is tuple:
                    self._frame(*item)
                elif isinstance(item, OpenTrack):
                    self._open(item)
                elif isinstance(item, CloseTrack):
                    self._close(item.index)
            except Exception as exc:  # whatever it is, the recording fails and the thread goes on draining
                self._failed(exc)
        for index in list(self._files):
            try:
                self._close(index)
            except Exception as exc:
                self._failed(exc)

    def _open(self, item: OpenTrack) -> None:
        file = _open_exclusive(item.path)
        try:
            container = av.open(file, "w", format="webm")
            if item.kind == "video":
                stream = container.add_mux_stream("vp8", width=item.width, height=item.height)
                stream.time_base = TIME_BASE
            else:
                stream = _opus_stream(container)
        except BaseException:
            file.close()
            raise
        self._files[item.index] = _OpenFile(container, stream, file)
        self.written[item.index] = 0

    def _frame(self, index: int, data: bytes, pts: int, duration: int, keyframe: bool) -> None:
        track = self._files.get(index)
        if track is None:
            return
        if pts <= track.last_pts:
            pts = track.last_pts + 1  # the muxer needs increasing timestamps
        packet = av.Packet(data)
        packet.stream = track.stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts
        if duration:
            packet.duration = duration
        packet.is_keyframe = keyframe
        track.container.mux(packet)
        track.last_pts = pts
        self.written[index] += 1

    def _close(self, index: int) -> None:
        track = self._files.pop(index, None)
        if track is None:
            return
        try:
            track.container.close()  # trailer: cues and duration, so players can seek
        finally:
            track.file.close()

    def _failed(self, exc: BaseException) -> None:
        reason = f"cannot write the recording: {exc.strerror if isinstance(exc, OSError) else type(exc).__name__}"
        self._abort.set()
        if self.error is None:
            self.error = reason
            try:
                self.on_error(reason)
            except RuntimeError:  # the event loop is gone
                pass
        for index in list(self._files):
            try:
                self._close(index)
            except Exception:
                logger.debug("recording: closing a track after a failure failed")
