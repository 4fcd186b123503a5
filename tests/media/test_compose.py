"""Composition of a recording directory into one WebM, with the real ffmpeg (`make ffmpeg`).

The inputs are built here the way the live recorder leaves them: VP8 and Opus packets (encoded by PyAV from
synthetic media) muxed into one WebM per track with ``add_mux_stream``, timestamps from 0 in milliseconds,
plus a ``tracks.json``. The video shows its frame number (peers.draw_frame_number); each audio track beeps
(1 kHz, 50 ms) at each whole second of its own file. The composed file is decoded here (never on the server)
to check order, completeness, timing and seekability.

``python -m tests.media.test_compose [minutes [width height [parties]]]`` composes a synthetic recording (default:
1 minute, two parties at 320x240) and prints the composition time per minute of recording.
"""

from __future__ import annotations

import fractions
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

from server.media.compose import ComposeError, ComposeResult, compose
from tests.media.peers import draw_frame_number, read_frame_number

RATE = 48000
PACKET = 960  # 20 ms of Opus, as WebRTC sends it
MS = fractions.Fraction(1, 1000)
BEEP_HZ = 1000
BEEP_SECONDS = 0.05


@dataclass
class VideoSpec:
    participant: str
    start: float
    seconds: float
    drop: set[int] = field(default_factory=set)
    "Frame numbers left out of the file (a gap in its timestamps)."
    width: int = 320
    height: int = 240
    resize_at: int | None = None
    "From this frame on the picture is half as wide and high."


@dataclass
class AudioSpec:
    participant: str
    start: float
    seconds: float
    drop: set[int] = field(default_factory=set)
    "20 ms packet indexes left out of the file."


def _vp8_encoder(width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = MS
    encoder.framerate = fractions.Fraction(30)
    encoder.bit_rate = 800_000
    encoder.gop_size = 60
    encoder.options = {"deadline": "realtime", "cpu-used": "8"}
    return encoder


def write_video(path: Path, spec: VideoSpec) -> int:
    """VP8 frames of 30 fps, pts in ms from 0, muxed without an encoder on the stream (as the recorder does)."""
    encoder = _vp8_encoder(spec.width, spec.height)
    count = round(spec.seconds * 30)
    written = 0
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_mux_stream("vp8", width=spec.width, height=spec.height)
        stream.time_base = MS
        size = (spec.width, spec.height)
        for n in [*range(count), None]:
            frame = None
            if n is not None:
                if n == spec.resize_at:
                    # A sender that adapts to the network sends a smaller picture from a keyframe on.
                    frames_left = list(encoder.encode(None))
                    written += _mux(container, stream, frames_left, spec)
                    size = (spec.width // 2, spec.height // 2)
                    encoder = _vp8_encoder(*size)
                # Number 0 would be an all-black grid, like the padding before a participant joins: start at 1.
                frame = av.VideoFrame.from_ndarray(draw_frame_number(n + 1, *size), format="yuv420p")
                if n - 1 in spec.drop and n not in spec.drop:
                    # As the recorder does after a gap it cannot fill: it resumes at a (requested) keyframe.
                    frame.pict_type = av.video.frame.PictureType.I
                frame.pts = round(n * 1000 / 30)
            written += _mux(container, stream, encoder.encode(frame), spec)
    return written


def _mux(
    container: av.container.OutputContainer, stream: av.stream.Stream, packets: list[av.Packet], spec: VideoSpec
) -> int:
    written = 0
    for packet in packets:
        if round(packet.pts * 30 / 1000) in spec.drop:
            continue
        packet.stream = stream
        packet.time_base = MS
        packet.dts = packet.pts
        container.mux(packet)
        written += 1
    return written


def beep_samples(seconds: float, beep_at: list[float]) -> np.ndarray:
    samples = np.zeros(round(seconds * RATE), dtype=np.float32)
    t = np.arange(round(BEEP_SECONDS * RATE)) / RATE
    tone = (0.5 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)
    for at in beep_at:
        first = round(at * RATE)
        samples[first : first + len(tone)] = tone[: len(samples) - first]
    return samples


def write_audio(path: Path, spec: AudioSpec, beep_at: list[float]) -> None:
    """Opus packets of 20 ms, pts in ms from 0; a beep at each time of ``beep_at`` (seconds of this file)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = RATE, "mono", "flt"
    encoder.time_base = fractions.Fraction(1, RATE)
    encoder.bit_rate = 64_000
    samples = beep_samples(spec.seconds, beep_at)
    packets = []
    for i in range(len(samples) // PACKET):
        frame = av.AudioFrame.from_ndarray(
            samples[i * PACKET : (i + 1) * PACKET].reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * PACKET, encoder.time_base
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_mux_stream("opus", rate=RATE)
        stream.time_base = MS
        # Like RTP, the packets are numbered from the first one sent: the encoder's pre-skip is not shifted out.
        for i, packet in enumerate(packets):
            if i in spec.drop:
                continue
            packet.stream = stream
            packet.time_base = MS
            packet.pts = packet.dts = i * 20
            container.mux(packet)


def make_recording(
    directory: Path, video: list[VideoSpec], audio: list[AudioSpec], beeps: dict[str, list[float]] | None = None
) -> Path:
    """A recording directory as the live recorder leaves it. ``beeps``: timeline times per participant."""
    (directory / "tracks").mkdir(parents=True)
    tracks = []
    for i, spec in enumerate(video):
        name = f"tracks/{i}-video.webm"
        frames = write_video(directory / name, spec)
        tracks.append(
            {
                "file": name,
                "participant": spec.participant,
                "kind": "video",
                "start": spec.start,
                "end": spec.start + spec.seconds,
                "frames": frames,
                "width": spec.width,
                "height": spec.height,
            }
        )
    for i, spec in enumerate(audio):
        name = f"tracks/{i}-audio.webm"
        at = [t - spec.start for t in (beeps or {}).get(spec.participant, [])]
        write_audio(directory / name, spec, at)
        tracks.append(
            {
                "file": name,
                "participant": spec.participant,
                "kind": "audio",
                "start": spec.start,
                "end": spec.start + spec.seconds,
            }
        )
    duration = max(t["end"] for t in tracks)
    (directory / "tracks.json").write_text(json.dumps({"version": 1, "duration": duration, "tracks": tracks}))
    return directory


@dataclass
class Decoded:
    """The composed file, decoded: frame times with the number in each tile, and mono audio."""

    video: list[tuple[float, list[int | None]]]
    audio: np.ndarray
    audio_start: float
    duration: float
    size: tuple[int, int]


def decode(path: Path, tiles: list[tuple[int, int, int, int]]) -> Decoded:
    """``tiles``: (x, y, width, height) of each tile; per frame and tile: the input frame index, or None."""
    frames: list[tuple[float, list[int | None]]] = []
    chunks: list[np.ndarray] = []
    audio_start = 0.0
    size = (0, 0)
    with av.open(str(path)) as container:
        duration = container.duration / 1e6 if container.duration else 0.0
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                luma = frame.to_ndarray(format="gray")
                size = (frame.width, frame.height)
                numbers = [read_frame_number(luma[y : y + h, x : x + w]) for x, y, w, h in tiles]
                # Frame n of an input shows n + 1; 0 is the black padding, read as None (no frame).
                frames.append((float(frame.time), [None if not n else n - 1 for n in numbers]))
            else:
                if not chunks:
                    audio_start = float(frame.time)
                chunks.append(frame.to_ndarray().astype(np.float32).mean(axis=0))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return Decoded(video=frames, audio=audio, audio_start=audio_start, duration=duration, size=size)


def beep_onsets(audio: np.ndarray, offset: float) -> list[float]:
    """Times where the 1 kHz tone's energy crosses half its peak (after at least 200 ms of quiet)."""
    window = RATE // 1000  # 1 ms
    t = np.arange(len(audio)) / RATE
    mixed = audio * np.exp(-2j * np.pi * BEEP_HZ * t)
    energy = np.abs(np.convolve(mixed, np.ones(window * 5) / (window * 5), mode="same"))
    threshold = energy.max() / 2
    onsets: list[float] = []
    for i in np.flatnonzero(energy > threshold):
        at = offset + i / RATE
        if not onsets or at - onsets[-1] > 0.2:
            onsets.append(at)
    return onsets


def first_showing(decoded: Decoded, tile: int, number: int) -> float:
    return next(t for t, numbers in decoded.video if numbers[tile] == number)


def check_numbers(decoded: Decoded, tile: int, expected: list[int]) -> None:
    """The tile shows exactly ``expected`` in order (repeats allowed), nothing skipped, nothing unreadable."""
    shown = [numbers[tile] for _, numbers in decoded.video if numbers[tile] is not None]
    distinct = [n for i, n in enumerate(shown) if i == 0 or n != shown[i - 1]]
    assert distinct == expected


def cue_times(path: Path) -> list[float]:
    """The video cue points (Matroska Cues) the demuxer found; it reads them on the first seek."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(0, stream=stream)
        return [float(entry.timestamp * stream.time_base) for entry in stream.index_entries]


def seek_near(path: Path, target: float) -> float:
    """Seek (by cues) and return the time of the first video frame decoded after it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(round(target / stream.time_base), stream=stream)
        frame = next(container.decode(stream))
        return float(frame.time)


def test_two_participants_side_by_side_in_time(tmp_path: Path) -> None:
    """10 s each, the second joins 0.5 s later (its audio path 20 ms after its video): numbers in order, none
    missing, every beep within 80 ms of the frame that carries its number, seekable."""
    beeps = {"citizen": [float(k) for k in range(1, 10)], "clerk": [k + 0.5 for k in range(1, 10)]}
    directory = make_recording(
        tmp_path / "rec",
        [VideoSpec("citizen", 0.0, 10.0), VideoSpec("clerk", 0.5, 10.0)],
        [AudioSpec("citizen", 0.0, 10.0), AudioSpec("clerk", 0.52, 10.0 - 0.02)],
        beeps,
    )
    result = compose(directory)
    assert isinstance(result, ComposeResult)
    assert result.output == directory / "recording.webm" and result.output.is_file()
    assert result.output.stat().st_mode & 0o077 == 0  # the server's user's only (probing: was 0644)
    assert (result.video_tracks, result.audio_tracks) == (2, 2)
    assert result.duration == pytest.approx(10.5)
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []

    decoded = decode(result.output, [(0, 0, 320, 240), (320, 0, 320, 240)])
    assert decoded.size == (640, 240)
    assert decoded.duration == pytest.approx(10.5, abs=0.05)
    assert len(decoded.video) == pytest.approx(10.5 * 30, abs=2)
    check_numbers(decoded, 0, list(range(300)))
    check_numbers(decoded, 1, list(range(300)))
    # Before the clerk's start their tile is black (unreadable), and number n shows at its timeline time.
    assert all(numbers[1] is None for t, numbers in decoded.video if t < 0.5 - 0.04)
    for tile, start in ((0, 0.0), (1, 0.5)):
        for n in (0, 1, 150, 299):
            assert first_showing(decoded, tile, n) == pytest.approx(start + n / 30, abs=0.034)

    assert len(decoded.audio) == pytest.approx(10.5 * RATE, rel=0.01)
    onsets = beep_onsets(decoded.audio, decoded.audio_start)
    expected = sorted(
        (at, tile, start) for tile, (who, start) in enumerate((("citizen", 0.0), ("clerk", 0.5))) for at in beeps[who]
    )
    assert len(onsets) == len(expected)
    drifts = []
    for onset, (at, tile, start) in zip(onsets, expected, strict=True):
        shown = first_showing(decoded, tile, round((at - start) * 30))
        drifts.append(onset - shown)
        assert abs(onset - at) < 0.04, f"beep at {at} s plays at {onset:.3f} s"
    assert max(abs(d) for d in drifts) < 0.080, drifts

    # A cue at each keyframe (every 5 s); seeking lands on the keyframe at or before the target.
    assert cue_times(result.output) == pytest.approx([0.0, 5.0, 10.0], abs=0.034)
    assert seek_near(result.output, 8.0) == pytest.approx(5.0, abs=0.034)
    assert seek_near(result.output, 10.2) == pytest.approx(10.0, abs=0.034)


def test_dropped_frames_and_packets_keep_their_time(tmp_path: Path) -> None:
    """Gaps in a track's timestamps (frames and audio packets lost) leave later media at its time."""
    directory = make_recording(
        tmp_path / "rec",
        [VideoSpec("citizen", 0.0, 4.0, drop=set(range(40, 50)) | {100, 101})],
        [AudioSpec("citizen", 0.0, 4.0, drop=set(range(60, 75)))],  # 300 ms of audio lost at 1.2 s
        {"citizen": [1.0, 2.0, 3.0]},
    )
    result = compose(directory)
    assert (result.video_tracks, result.audio_tracks) == (1, 1)
    decoded = decode(result.output, [(0, 0, 320, 240)])
    assert decoded.size == (320, 240)
    check_numbers(decoded, 0, [n for n in range(120) if n not in set(range(40, 50)) | {100, 101}])
    for n in (39, 50, 102, 119):
        assert first_showing(decoded, 0, n) == pytest.approx(n / 30, abs=0.034)
    onsets = beep_onsets(decoded.audio, decoded.audio_start)
    assert onsets == pytest.approx([1.0, 2.0, 3.0], abs=0.04)


def test_resolution_change_mid_track(tmp_path: Path) -> None:
    """A sender halving its picture size mid-stream: the tile keeps its size, no frame of any tile is lost."""
    directory = make_recording(
        tmp_path / "rec", [VideoSpec("citizen", 0.0, 2.0, resize_at=30), VideoSpec("clerk", 0.0, 2.0)], []
    )
    result = compose(directory)
    assert (result.video_tracks, result.audio_tracks) == (2, 0)
    decoded = decode(result.output, [(0, 0, 320, 240), (320, 0, 320, 240)])
    assert decoded.size == (640, 240)
    check_numbers(decoded, 0, list(range(60)))
    check_numbers(decoded, 1, list(range(60)))


def test_three_participants_in_a_grid(tmp_path: Path) -> None:
    """Three cameras, one held upright: a 2x2 grid at the tallest input's height, each tile in its own shape."""
    directory = make_recording(
        tmp_path / "rec",
        [
            VideoSpec("citizen", 0.0, 1.0),
            VideoSpec("interpreter", 0.0, 1.0, width=240, height=320),
            VideoSpec("clerk", 0.2, 0.8),
        ],
        [],
    )
    decoded = decode(compose(directory).output, [(0, 0, 426, 320), (426, 0, 240, 320), (0, 320, 426, 320)])
    assert decoded.size == (666, 640)
    for tile, first in ((0, 0), (1, 0), (2, 6)):
        shown = [numbers[tile] for t, numbers in decoded.video]
        assert [n for n in shown if n is not None] == list(range(30 - first))
        assert shown[:first] == [None] * first


def test_audio_only(tmp_path: Path) -> None:
    """Two participants without cameras: an audio-only WebM, beeps at their timeline times."""
    beeps = {"citizen": [1.0, 2.0], "interpreter": [1.5, 2.5]}
    directory = make_recording(
        tmp_path / "rec", [], [AudioSpec("citizen", 0.0, 3.0), AudioSpec("interpreter", 0.25, 2.75)], beeps
    )
    output = tmp_path / "out.webm"
    result = compose(directory, output)
    assert result.output == output and (result.video_tracks, result.audio_tracks) == (0, 2)
    with av.open(str(output)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    decoded = decode(output, [])
    assert decoded.duration == pytest.approx(3.0, abs=0.05)
    assert beep_onsets(decoded.audio, decoded.audio_start) == pytest.approx([1.0, 1.5, 2.0, 2.5], abs=0.04)


def test_chapters(tmp_path: Path) -> None:
    directory = make_recording(tmp_path / "rec", [], [AudioSpec("citizen", 0.0, 3.0)])
    result = compose(directory, chapters=[(0.0, 1.5, "Begrüßung"), (1.5, 3.0, "Fragen; Antworten = 2")])
    with av.open(str(result.output)) as container:
        chapters = container.chapters()
    assert [(c["start"] * c["time_base"], c["end"] * c["time_base"], c["metadata"].get("title")) for c in chapters] == [
        (0, 1.5, "Begrüßung"),
        (1.5, 3, "Fragen; Antworten = 2"),
    ]
    with pytest.raises(ComposeError, match="outside"):
        compose(directory, chapters=[(2.0, 4.0, "zu lang")])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "no tracks.json"),
        ("{not json", "unreadable"),
        ('{"version": 2, "tracks": []}', "version 1"),
        ('{"version": 1, "tracks": []}', "no tracks"),
        ('{"version": 1, "tracks": [{"file": "../x.webm", "kind": "audio", "start": 0}]}', "outside"),
        ('{"version": 1, "tracks": [{"file": "tracks/none.webm", "kind": "audio", "start": 0}]}', "missing"),
        ('{"version": 1, "tracks": [{"file": "tracks/0-audio.webm", "kind": "text", "start": 0}]}', "kind"),
        ('{"version": 1, "tracks": [{"file": "tracks/0-audio.webm", "kind": "audio", "start": -1}]}', "start"),
    ],
)
def test_bad_manifest(tmp_path: Path, manifest: str | None, message: str) -> None:
    directory = tmp_path / "rec"
    (directory / "tracks").mkdir(parents=True)
    (directory / "tracks" / "0-audio.webm").write_bytes(b"")
    if manifest is not None:
        (directory / "tracks.json").write_text(manifest)
    with pytest.raises(ComposeError, match=message):
        compose(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["tracks"] + (["tracks.json"] if manifest else [])


def test_ffmpeg_failure_and_timeout_leave_nothing(tmp_path: Path) -> None:
    """A corrupt track file fails with ffmpeg's own words; a timeout kills ffmpeg; no output either way."""
    directory = make_recording(tmp_path / "rec", [VideoSpec("citizen", 0.0, 2.0)], [AudioSpec("citizen", 0.0, 2.0)])
    good = sorted(p.name for p in directory.iterdir())
    with pytest.raises(ComposeError, match="took longer than"):
        compose(directory, timeout=0.05)
    assert sorted(p.name for p in directory.iterdir()) == good
    (directory / "tracks" / "0-video.webm").write_bytes(b"\x1a\x45\xdf\xa3 this is no webm" * 10)
    with pytest.raises(ComposeError, match="exit code") as failure:
        compose(directory)
    assert "0-video.webm" in str(failure.value)
    assert sorted(p.name for p in directory.iterdir()) == good
    with pytest.raises(ComposeError, match="not found"):
        compose(directory, ffmpeg=str(tmp_path / "no-ffmpeg"))


def test_module_main_prints_one_json_line(tmp_path: Path) -> None:
    """How the server runs it: a separate process under nice, one JSON line, exit status 0 or 1."""
    directory = make_recording(tmp_path / "rec", [], [AudioSpec("citizen", 0.0, 1.0)])
    ok = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-m", "server.media.compose", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    line = json.loads(ok.stdout)
    assert line["output"] == str(directory / "recording.webm") and line["audio_tracks"] == 1
    assert line["duration"] == 1.0 and line["seconds_taken"] > 0
    failed = subprocess.run(
        [sys.executable, "-m", "server.media.compose", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1 and "error" in json.loads(failed.stdout)


def test_terminated_composition_leaves_nothing(tmp_path: Path) -> None:
    """The server stops a composition (SIGTERM): ffmpeg goes with it, and so does the temporary file."""
    directory = make_recording(tmp_path / "rec", [VideoSpec("citizen", 300.0, 1.0)], [])  # 300 s of black first
    process = subprocess.Popen(
        [sys.executable, "-m", "server.media.compose", str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not any(p.suffix == ".part" for p in directory.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, "ffmpeg never started writing"
            time.sleep(0.01)
        process.terminate()
        assert process.wait(timeout=30) == 128 + 15
    finally:
        process.kill()
        process.communicate()
    assert sorted(p.name for p in directory.iterdir()) == ["tracks", "tracks.json"]
    ffmpegs = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True, check=False)
    assert ffmpegs.stdout == ""


def bench(minutes: float = 1.0, width: int = 320, height: int = 240, parties: int = 2) -> None:
    """Composition time per minute of recording: ``parties`` participants, each with camera and microphone."""
    import tempfile

    seconds = minutes * 60
    roles = ["citizen", "clerk", "colleague", "interpreter"][:parties]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        directory = make_recording(
            Path(tmp) / "rec",
            [VideoSpec(who, i * 0.5, seconds - i * 0.5, width=width, height=height) for i, who in enumerate(roles)],
            [AudioSpec(who, i * 0.5 + 0.02, seconds - i * 0.5 - 0.02) for i, who in enumerate(roles)],
        )
        prepared = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = compose(directory)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        size = result.output.stat().st_size
    print(
        json.dumps(
            {
                "parties": parties,
                "input": f"{width}x{height}",
                "recording_seconds": result.duration,
                "compose_seconds": round(result.seconds_taken, 2),
                "compose_seconds_per_minute": round(result.seconds_taken / (result.duration / 60), 2),
                "ffmpeg_cpu_seconds_per_minute": round(cpu / (result.duration / 60), 2),
                "output_bytes": size,
                "input_preparation_seconds": round(prepared, 2),
            }
        )
    )


if __name__ == "__main__":
    # python -m tests.media.test_compose [minutes] [width] [height] [parties]
    arguments = sys.argv[1:]
    bench(float(arguments[0]) if arguments else 1.0, *(int(a) for a in arguments[1:4]))
