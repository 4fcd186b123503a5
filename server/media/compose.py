"""Offline composition of a finished recording into one playable, seekable WebM.

The live recorder leaves one WebM per sender track (encoded packets muxed as received, never decoded) and a
``tracks.json`` that places each file on the recording's timeline. This module turns that directory into one
file with Debian's ffmpeg: video tiles side by side (a 2x2 grid from three tiles on), audio mixed, every track
offset by its start so that a moment at timeline time t plays at time t. It decodes and encodes, so it runs
after the recording, in its own low-priority process, never in the forwarding process:

    nice -n 10 python -m server.media.compose <dir>     # prints one JSON line; exit 0, or 1 with {"error": ...}

The module is a pure core (``read_manifest``, ``build_command``: no I/O beyond reading the manifest) and a thin
shell (``compose``) that runs ffmpeg with a deadline and renames the result into place only when it is whole.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MediaError

MANIFEST = "tracks.json"
DEFAULT_OUTPUT = "recording.webm"
FPS = 30
TILE_HEIGHT = 360
"Tiles are scaled to this height, or to the tallest input when all are smaller (no upscaling for nothing)."
AUDIO_RATE = 48000
MAX_TRACKS = 16
"Per kind; a consultation has at most four participants, a stage a few more."
GOP_SECONDS = 5
"A keyframe (and so a cue point) every 5 s: seeking lands at most that far before the target."
STDERR_LINES = 15


class ComposeError(MediaError):
    """The recording could not be composed: bad manifest, missing file, ffmpeg failed or timed out."""


@dataclass(frozen=True)
class Track:
    """One per-track file of a recording, placed on the recording's timeline."""

    path: Path
    kind: str
    "'video' or 'audio'."
    start: float
    "Seconds on the recording's timeline at which the file's own timestamp 0 plays."
    end: float
    width: int = 0
    "Video only: the first frame's size as the recorder saw it (0 when unknown)."
    height: int = 0


@dataclass(frozen=True)
class Manifest:
    """A recording directory's ``tracks.json``, validated."""

    duration: float
    "Seconds; the composed file is exactly this long."
    video: tuple[Track, ...]
    audio: tuple[Track, ...]


@dataclass(frozen=True)
class ComposeResult:
    """What one composition produced."""

    output: Path
    duration: float
    "Seconds of the composed file."
    seconds_taken: float
    "Wall-clock seconds ffmpeg took (the figure 'composition time per minute' is derived from)."
    video_tracks: int
    audio_tracks: int


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ComposeError(f"{what} must be a non-negative number, not {value!r}")
    return float(value)


def _size(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 8192:
        raise ComposeError(f"{what} must be an integer from 0 to 8192, not {value!r}")
    return value


def read_manifest(directory: Path) -> Manifest:
    """Parse and check ``<directory>/tracks.json``; every track file must exist inside ``directory``."""
    try:
        raw = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ComposeError(f"no {MANIFEST} in the recording directory") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ComposeError(f"unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("tracks"), list):
        raise ComposeError(f"{MANIFEST} is not a version 1 manifest with a list of tracks")
    root = directory.resolve()
    video: list[Track] = []
    audio: list[Track] = []
    for i, entry in enumerate(raw["tracks"]):
        if not isinstance(entry, dict):
            raise ComposeError(f"track {i} is not an object")
        kind = entry.get("kind")
        if kind not in ("video", "audio"):
            raise ComposeError(f"track {i} has kind {kind!r}, not 'video' or 'audio'")
        name = entry.get("file")
        if not isinstance(name, str) or not name:
            raise ComposeError(f"track {i} names no file")
        path = (root / name).resolve()
        # A manifest is written by our recorder, but a path outside the directory is refused all the same.
        if not path.is_relative_to(root):
            raise ComposeError(f"track {i} points outside the recording directory")
        start = _number(entry.get("start"), f"track {i} start")
        end = _number(entry.get("end", start), f"track {i} end")
        if end < start:
            raise ComposeError(f"track {i} ends before it starts")
        if entry.get("frames") == 0:
            continue  # the recorder opened the file but never got a keyframe: nothing to show
        if not path.is_file():
            raise ComposeError(f"track {i}: file {name!r} is missing")
        track = Track(
            path=path,
            kind=kind,
            start=start,
            end=end,
            width=_size(entry.get("width"), f"track {i} width"),
            height=_size(entry.get("height"), f"track {i} height"),
        )
        (video if kind == "video" else audio).append(track)
    if len(video) > MAX_TRACKS or len(audio) > MAX_TRACKS:
        raise ComposeError(f"more than {MAX_TRACKS} tracks of one kind")
    if not video and not audio:
        raise ComposeError("the recording has no tracks")
    latest_end = max(t.end for t in (*video, *audio))
    duration = _number(raw["duration"], "duration") if raw.get("duration") is not None else latest_end
    if duration <= 0:
        raise ComposeError("the recording is empty (duration 0)")
    return Manifest(duration=duration, video=tuple(video), audio=tuple(audio))


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def tile_sizes(video: tuple[Track, ...]) -> list[tuple[int, int]]:
    """Each tile keeps its input's aspect ratio at a common height (4:3 when the size is unknown)."""
    known = [t.height for t in video if t.width and t.height]
    height = _even(min(TILE_HEIGHT, max(known))) if known else TILE_HEIGHT
    return [
        (_even(height * (t.width / t.height)) if t.width and t.height else _even(height * 4 / 3), height) for t in video
    ]


def grid_layout(sizes: list[tuple[int, int]]) -> tuple[str, int, int]:
    """xstack positions: one row up to two tiles, then rows of ceil(sqrt(n)); returns (layout, width, height)."""
    columns = len(sizes) if len(sizes) <= 2 else math.ceil(math.sqrt(len(sizes)))
    positions = []
    x = y = width = 0
    row_height = 0
    for i, (w, h) in enumerate(sizes):
        if i and i % columns == 0:
            x, y = 0, y + row_height
            row_height = 0
        positions.append(f"{x}_{y}")
        x += w
        width = max(width, x)
        row_height = max(row_height, h)
    return "|".join(positions), width, y + row_height


def _seconds(value: float) -> str:
    return f"{value:.6f}"


def video_bitrate(width: int, height: int) -> int:
    """About 0.1 bit per pixel at 30 fps: enough for faces and screens, bounded for big grids."""
    return max(300_000, min(4_000_000, int(width * height * FPS * 0.1)))


def build_command(
    manifest: Manifest, output: Path, *, ffmpeg: str = "ffmpeg", metadata: Path | None = None
) -> list[str]:
    """The ffmpeg command line that composes ``manifest`` into ``output`` (WebM, whatever its name)."""
    duration = _seconds(manifest.duration)
    args = [ffmpeg, "-nostdin", "-y", "-hide_banner", "-loglevel", "error"]
    for track in (*manifest.video, *manifest.audio):
        # A sender adapting to the network changes its resolution mid-stream. By default ffmpeg then flushes
        # and rebuilds the whole filter graph, which loses a frame of every tile; scale copes on its own.
        if track.kind == "video":
            args += ["-reinit_filter", "0"]
        args += ["-i", str(track.path)]
    if metadata is not None:
        args += ["-f", "ffmetadata", "-i", str(metadata)]
    filters: list[str] = []
    maps: list[str] = []
    if manifest.video:
        sizes = tile_sizes(manifest.video)
        for i, (track, (w, h)) in enumerate(zip(manifest.video, sizes, strict=True)):
            # fps first makes the input constant-rate (dropped frames become repeats, timestamps kept), so
            # tpad can count its black lead-in in frames; stop=-1 pads black after the participant left.
            filters.append(
                f"[{i}:v:0]scale={w}:{h},setsar=1,fps={FPS},"
                f"tpad=start_duration={_seconds(track.start)}:stop=-1:color=black[v{i}]"
            )
        if len(sizes) == 1:
            filters.append(f"[v0]trim=end={duration}[vout]")
            width, height = sizes[0]
        else:
            layout, width, height = grid_layout(sizes)
            labels = "".join(f"[v{i}]" for i in range(len(sizes)))
            filters.append(f"{labels}xstack=inputs={len(sizes)}:layout={layout}:fill=black,trim=end={duration}[vout]")
        maps += ["-map", "[vout]"]
    if manifest.audio:
        first = len(manifest.video)
        for j, track in enumerate(manifest.audio):
            # aresample with async fills gaps in the input's timestamps (lost packets) with silence, so that
            # later audio is not pulled earlier; min_hard_comp=0.01 fills any gap over 10 ms at once.
            delay = round(track.start * AUDIO_RATE)
            filters.append(
                f"[{first + j}:a:0]aresample={AUDIO_RATE}:async=1:min_hard_comp=0.01:first_pts=0,"
                f"aformat=sample_fmts=fltp:sample_rates={AUDIO_RATE}:channel_layouts=mono,"
                f"adelay=delays={delay}S:all=1[a{j}]"
            )
        labels = "".join(f"[a{j}]" for j in range(len(manifest.audio)))
        mix = f"amix=inputs={len(manifest.audio)}:duration=longest:normalize=0," if len(manifest.audio) > 1 else ""
        filters.append(f"{labels}{mix}apad=whole_dur={duration},atrim=end={duration}[aout]")
        maps += ["-map", "[aout]"]
    args += ["-filter_complex", ";".join(filters), *maps]
    if metadata is not None:
        index = len(manifest.video) + len(manifest.audio)
        args += ["-map_metadata", str(index), "-map_chapters", str(index)]
    if manifest.video:
        # Realtime speed: a minute of two 480x360 tiles composes in about 8 s here (docs/performance.md).
        args += ["-c:v", "libvpx", *"-deadline realtime -cpu-used 8 -pix_fmt yuv420p".split()]
        args += ["-b:v", str(video_bitrate(width, height)), "-g", str(FPS * GOP_SECONDS)]
    if manifest.audio:
        args += ["-c:a", "libopus", "-b:a", "48k", "-ac", "1"]
    # A regular file as output: the Matroska muxer seeks back and writes cues and the duration.
    args += ["-f", "webm", str(output)]
    return args


def _escape_metadata(text: str) -> str:
    for char in ("\\", "=", ";", "#", "\n"):
        text = text.replace(char, "\\" + char)
    return text


def chapters_metadata(chapters: list[tuple[float, float, str]], duration: float) -> str:
    """An ffmetadata file with one chapter per (start, end, title); ffmpeg needs TIMEBASE=1/1000 spelt out."""
    lines = [";FFMETADATA1"]
    for start, end, title in chapters:
        if not (0 <= start < end <= duration + 1e-6) or not isinstance(title, str):
            raise ComposeError(f"chapter {title!r} at {start}-{end} s lies outside the recording")
        lines += [
            "[CHAPTER]",
            "TIMEBASE=1/1000",
            f"START={round(start * 1000)}",
            f"END={round(end * 1000)}",
            f"title={_escape_metadata(title)}",
        ]
    return "\n".join(lines) + "\n"


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-STDERR_LINES:])


def compose(
    directory: Path,
    output: Path | None = None,
    *,
    ffmpeg: str = "ffmpeg",
    timeout: float = 600,
    chapters: list[tuple[float, float, str]] | None = None,
) -> ComposeResult:
    """Compose the recording in ``directory`` into ``output`` (default ``<directory>/recording.webm``).

    Synchronous and CPU-heavy: run it in its own process. The output appears under its name only when
    complete (written to a temporary name beside it, then renamed); on any failure nothing is left behind.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    output = Path(output) if output is not None else directory / DEFAULT_OUTPUT
    unique = secrets.token_hex(4)  # two compositions (threads of one process) never share a temporary file
    partial = output.with_name(f".{output.name}.{unique}.part")
    metadata = output.with_name(f".{output.name}.{unique}.chapters") if chapters else None
    command = build_command(manifest, partial, ffmpeg=ffmpeg, metadata=metadata)
    started = time.monotonic()
    try:
        if metadata is not None and chapters:
            metadata.write_text(chapters_metadata(chapters, manifest.duration), encoding="utf-8")
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ComposeError(f"ffmpeg not found ({ffmpeg!r}): run `make ffmpeg`") from exc
        except subprocess.TimeoutExpired as exc:  # subprocess.run has killed ffmpeg and reaped it
            raise ComposeError(f"ffmpeg took longer than {timeout} s:\n{_tail(exc.stderr or b'')}") from exc
        if done.returncode != 0:
            raise ComposeError(f"ffmpeg failed with exit code {done.returncode}:\n{_tail(done.stderr)}")
        with partial.open("rb") as written:
            os.fsync(written.fileno())  # the rename must not outlive the data after a crash
        partial.chmod(0o600)  # ffmpeg creates it by the umask: readable by the server's user only, as the tracks
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
        if metadata is not None:
            metadata.unlink(missing_ok=True)
    return ComposeResult(
        output=output,
        duration=manifest.duration,
        seconds_taken=time.monotonic() - started,
        video_tracks=len(manifest.video),
        audio_tracks=len(manifest.audio),
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _chapters_file(path: Path) -> list[tuple[float, float, str]] | None:
    """``<dir>/chapters.json`` (``[[start, end, "title"], ...]`` in seconds), if the caller left one."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text("utf-8"))
        return [(float(start), float(end), str(title)) for start, end, title in raw]
    except (ValueError, TypeError) as exc:
        raise ComposeError(f"chapters.json is not a list of [start, end, title]: {exc}") from exc


def main(argv: list[str]) -> int:
    """``python -m server.media.compose <dir> [<output>]``: one JSON line on stdout, exit 0 or 1. Matroska
    chapters come from ``<dir>/chapters.json`` when it exists."""
    if len(argv) not in (1, 2):
        print(json.dumps({"error": "usage: python -m server.media.compose <recording dir> [<output file>]"}))
        return 1
    # Stopped by the server (SIGTERM): unwind, so that subprocess.run kills ffmpeg and the temporary file goes.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        # Long recordings take long: allow twice their length (measured: well under half of it), at least 600 s.
        timeout = max(600.0, 2 * read_manifest(Path(argv[0])).duration)
        result = compose(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else None, timeout=timeout,
                         chapters=_chapters_file(Path(argv[0]) / "chapters.json"))
    except ComposeError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    line = {
        "output": str(result.output),
        "duration": result.duration,
        "seconds_taken": round(result.seconds_taken, 3),
        "video_tracks": result.video_tracks,
        "audio_tracks": result.audio_tracks,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
