"""``bench/media_load.py --record``: what recording a consultation costs the server.

One sfu server process (bench/media_server.py) carries 2 x ``--consultations``
consultations for the whole run. The run has three measured windows on the same
connections: a baseline with nothing recorded (``--duration``/2), a window in
which the first half of the rooms is recorded (``--duration``; recording starts
1 s before it, so that the recorder's keyframe has come), and a second baseline
(``--duration``/2). Measuring the baseline before and after cancels a steady
drift of the machine; comparing windows of one process with the same peers leaves
recording as the only difference. Extra CPU per recorded consultation =
(recorded window - mean of the baselines) / recorded consultations, from
/proc/<server>/stat, so it holds the writer threads, the taps on the packet path
and everything else. The recorded rooms' latency is also set against the
unrecorded rooms' in the same window.

Frames sent are counted exactly: every peer logs each pre-encoded frame it hands
to aiortc (time, frame index, keyframe or not). After the run the bench demuxes
each recorded video file (no decoding), maps every packet back to its frame by its
bytes, finds the frame the file starts with among the frames sent after the
recording started, and counts the frames the publisher sent from it up to the last
frame the server had before the stop (the file's last frame, or the last frame the
other participant received before the stop: the hub forwards a packet before its
recorder tap sees it). Frames still on their way to the server at the stop are
reported apart. Then ``--compose`` (default 3) of the recordings are composed with
``python -m server.media.compose`` (one at a time, in its own process, as the
server's background job would), timed in wall clock and CPU (its ffmpeg included)
per minute of recording.

With ``MEDIA_LOAD_PYSPY=<path to py-spy>`` the server is sampled through the
recorded window and a summary printed (py-spy adds load: profile in a separate run).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.media_clients import PreEncodedVideo

ROOT = Path(__file__).resolve().parent.parent
SETTLE = 1.0
"Seconds between starting (stopping) the recorders and the next measured window."
GOAL_CPU = 0.012
"Core-seconds per second of extra server CPU per recorded consultation (issue 8)."


class LoggedVideo(PreEncodedVideo):
    """PreEncodedVideo that logs (time handed to aiortc, frame index, keyframe) of every frame it sends."""

    def __init__(self, media: Any) -> None:
        super().__init__(media)
        self.sends: list[tuple[float, int, bool]] = []

    async def recv(self) -> Any:
        packet = await super().recv()
        index = (self.count - 1) % len(self.media.video)
        key = self.media.video[index][1]
        self.sends.append((self.sent_at[index], index, packet.size == len(key) and bytes(packet) == key))
        return packet


# --- the driver ---------------------------------------------------------------------------------


@dataclass
class Snap:
    t: float
    cpu: float
    busy: tuple[int, int]
    stats: dict[str, Any]
    workers_cpu: float


@dataclass
class Window:
    name: str
    start: Snap
    end: Snap

    @property
    def seconds(self) -> float:
        return self.end.t - self.start.t

    def rate(self, value: float) -> float:
        return value / self.seconds

    @property
    def server(self) -> float:
        return self.rate(self.end.cpu - self.start.cpu)

    def stat(self, key: str) -> float:
        return self.rate(self.end.stats[key] - self.start.stats[key])

    @property
    def workers(self) -> float:
        return self.rate(self.end.workers_cpu - self.start.workers_cpu)

    @property
    def machine(self) -> float:
        """Core-seconds per second busy on the whole machine (every process, this bench's included)."""
        busy = self.end.busy[0] - self.start.busy[0]
        total = self.end.busy[1] - self.start.busy[1]
        return busy / max(1, total) * (os.cpu_count() or 1)


def post(port: int, path: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def host_reference() -> float | None:
    """bench/queue_load.py's host reference workload (ms), so that runs on different hosts compare."""
    try:
        from bench.queue_load import host_reference_ms
    except ImportError:
        return None
    return host_reference_ms()


def run_record(args: Any, media: Any, media_path: str) -> None:
    from bench import media_load as load

    n = args.consultations
    total = 2 * n
    recorded = [f"room{c}" for c in range(n)]
    host_ms = host_reference()
    load1, load5, _ = os.getloadavg()
    directory = Path(tempfile.mkdtemp(prefix="sprechstunde-record-bench-"))
    print(
        f"running sfu with {total} consultations, {n} of them recorded in the middle window "
        f"(recordings in {directory}) ...",
        flush=True,
    )
    port = load.free_port()
    server = load.start_server("sfu", port, ["--time-fast-path"])
    ctx = mp.get_context("spawn")
    groups = [g for g in (list(range(total))[i :: args.client_procs] for i in range(args.client_procs)) if g]
    pipes, workers = [], []
    for g in groups:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=load.worker, args=(child, "sfu", port, g, media_path, True), daemon=True)
        p.start()
        pipes.append(parent)
        workers.append(p)

    def snap() -> Snap:
        return Snap(
            t=time.monotonic(),
            cpu=load.proc_cpu_seconds(server.pid),
            busy=load.machine_busy(),
            stats=load.server_stats(port),
            workers_cpu=sum(load.proc_cpu_seconds(p.pid) for p in workers),
        )

    def window(name: str, seconds: float) -> Window:
        start = snap()
        time.sleep(seconds)
        return Window(name, start, snap())

    try:
        readies = [c.recv() for c in pipes]
        ready = f"{sum(r['ready'] for r in readies)}/{sum(r['peers'] for r in readies)}"
        time.sleep(args.warmup)
        for c in pipes:
            c.send("start")
        base1 = window("baseline 1", args.duration / 2)
        post(port, "/record", {"rooms": recorded, "directory": str(directory)})
        time.sleep(SETTLE)
        spy = start_py_spy(server.pid, args.duration, directory.parent / f"{directory.name}.pyspy.txt")
        rec = window("recorded", args.duration)
        stopped = post(port, "/record/stop", {"rooms": recorded})["rooms"]
        stop_done = snap()
        time.sleep(SETTLE)
        base2 = window("baseline 2", args.duration / 2)
        for c in pipes:
            c.send("stop")
        results = [c.recv() for c in pipes]
        rss = load.proc_rss_mb(server.pid)
        for c in pipes:
            c.send("close")
        for c in pipes:
            c.recv()
    finally:
        for p in workers:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
        try:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/shutdown", method="POST"), timeout=10
            )
            server.wait(timeout=20)
        except Exception:
            server.kill()
            server.wait()

    frame_logs = {k: v for r in results for k, v in r["frame_logs"].items()}
    sends = {k: v for r in results for k, v in r["sends"].items()}
    print(f"composing {min(args.compose, n)} of the recordings, one at a time ...", flush=True)
    composed = [compose(directory / room) for room in recorded[: args.compose]]
    frames = count_frames(media, directory, stopped, sends, frame_logs)
    if spy is not None:
        spy[0].wait(timeout=60)
        print_py_spy(spy[1], args.duration)
    print_report(
        n=n,
        windows=(base1, rec, base2),
        stop_done=stop_done,
        stopped=stopped,
        frames=frames,
        composed=composed,
        frame_logs=frame_logs,
        host_ms=host_ms,
        loads=(load1, load5),
        ready=ready,
        rss=rss,
    )
    if args.keep_recordings:
        print(f"\nrecordings kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


# --- where the time goes -------------------------------------------------------------------------


def start_py_spy(pid: int, seconds: float, out: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    """With MEDIA_LOAD_PYSPY=<py-spy binary>: sample the server through the recorded window."""
    binary = os.environ.get("MEDIA_LOAD_PYSPY")
    if not binary:
        return None
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
    command += ["--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def py_spy_part(frames: list[str]) -> str | None:
    """Which part of the server a sampled stack is in; None for a thread waiting (idle)."""
    leaf = frames[-1]
    if "recording-writer" in frames[0]:
        if leaf.startswith("Condition.wait") and any(f.startswith("Queue.get") for f in frames):
            return None  # waiting for a frame
        if any(f.startswith("mux ") or ".mux " in f for f in frames) or leaf.startswith("TrackWriter._frame"):
            return "writer thread: TrackWriter._frame (Packet, mux: PyAV + libavformat)"
        return "writer thread: other (Queue.get wake-up, open/close)"
    if leaf.startswith("Runner.run"):
        return "event loop: in uvloop's C code (socket I/O and waiting in epoll; not split without --native)"
    if any("server/media/recorder.py" in f for f in frames):
        if any(f.startswith(("TrackWriter.put", "Queue.")) for f in frames):
            return "event loop: recorder tap, handing a frame to the writer (Queue.put_nowait, qsize)"
        return "event loop: recorder tap, reorder + depacketize + timestamps"
    if any("server/media/" in f for f in frames):
        return "event loop: forwarding and the rest of server/media"
    return "event loop: other (aiortc, aiohttp, asyncio)"


def print_py_spy(path: Path, seconds: float, top: int = 12) -> None:
    """Busy samples by part of the server, and the recorder's hottest leaf frames."""
    from collections import Counter

    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    idle = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        part = py_spy_part(frames)
        if part is None:
            idle += count
            continue
        parts[part] += count
        if "recorder" in part or "writer" in part:
            leaves[" <- ".join(f.split(" (")[0] for f in frames[-1:-4:-1])] += count
    busy = sum(parts.values())
    if not busy:
        print("\npy-spy: no samples")
        return
    print(
        f"\nserver profile, recorded window (py-spy at 100 Hz, {busy} samples; {idle} of writer threads waiting "
        f"for frames left out; a thread waiting for the GIL counts as busy):"
    )
    for part, count in parts.most_common():
        print(f"  {100 * count / busy:5.1f}%  {count / 100 / seconds:.3f} s/s  {part}")
    print("recorder and writer leaf frames (leaf <- caller <- caller):")
    for frame, count in leaves.most_common(top):
        print(f"  {100 * count / busy:5.1f}%  {frame}")


# --- frames written / frames sent -----------------------------------------------------------------


@dataclass
class TrackCount:
    room: str
    participant: str
    written: int
    "frames_written as the recorder counted them."
    in_file: int
    "Video packets demuxed from the file that are frames the peers send."
    sent: int
    """Frames the publisher sent from the file's first frame up to the last frame the server had before
    the stop: the file's last frame, or the last frame the other participant received before the stop,
    whichever came later (the hub forwards a packet before its tap sees it)."""
    gaps: int
    "Places in the file where the next frame is not the one sent next."
    unknown: int
    "Packets in the file that match no frame the peers send."
    starts_with_keyframe: bool
    first_frame_after: float
    "Seconds from start_recording to sending the file's first frame (the keyframe the recorder asked for)."
    in_flight: int
    "Frames sent before the stop that had not come through the server by then (not counted in ``sent``)."


def demux(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def count_frames(
    media: Any,
    directory: Path,
    stopped: dict[str, Any],
    sends: dict[str, list[tuple[float, int, bool]]],
    frame_logs: dict[str, list[tuple[float, float]]],
) -> list[TrackCount]:
    counts = []
    cycle = len(media.video)
    for room, info in stopped.items():
        t_start, t_stop = info["t_start"], info["t_stop"]
        for track in info["stats"]["tracks"]:
            if track["kind"] != "video" or track["file"] is None:
                continue
            packets = demux(directory / room / track["file"])
            indices = [media.index_of.get(p) for p in packets]
            known = [i for i in indices if i is not None]
            missing = gaps_missing(known, cycle)
            publisher = track["participant"]
            log = sends[publisher]
            first = known[0] if known else None
            # the file's first frame: sent after the start (0.1 s of slack for a frame in flight)
            k0 = next((k for k, (t, i, _key) in enumerate(log) if t >= t_start - 0.1 and i == first), None)
            sent, after, in_flight = 0, float("nan"), 0
            if k0 is not None:
                after = log[k0][0] - t_start
                k_file = k0 + len(known) + missing - 1
                # the other participant's log: (arrival, latency), so arrival - latency is the send time
                receiver = ("b" if publisher[0] == "a" else "a") + publisher[1:]
                delivered = [t - lat for t, lat in frame_logs[receiver] if t < t_stop]
                t_delivered = max(delivered, default=0.0)
                k_delivered = max((k for k, (t, _i, _key) in enumerate(log) if t <= t_delivered + 1e-6), default=-1)
                k_end = max(k_file, k_delivered)
                sent = k_end - k0 + 1
                in_flight = sum(1 for t, _i, _key in log[k_end + 1 :] if t < t_stop)
                if os.environ.get("MEDIA_LOAD_DEBUG"):
                    print(
                        f"  {room} {publisher}: sent {sent}, in file {len(known)} (missing inside {missing}), "
                        f"in flight {in_flight}, file's last frame {k_file - k0} / last delivered "
                        f"{k_delivered - k0}, first frame {after * 1000:.0f} ms after start",
                        flush=True,
                    )
            counts.append(
                TrackCount(
                    room=room,
                    participant=publisher,
                    written=track["frames_written"],
                    in_file=len(known),
                    sent=sent,
                    gaps=sum(1 for a, b in zip(known, known[1:], strict=False) if (b - a) % cycle != 1),
                    unknown=len(indices) - len(known),
                    starts_with_keyframe=bool(packets) and first is not None and packets[0] == media.video[first][1],
                    first_frame_after=after,
                    in_flight=in_flight,
                )
            )
    return counts


def gaps_missing(known: list[int], cycle: int) -> int:
    """Frames missing inside the file (between its first and last frame)."""
    return sum((b - a) % cycle - 1 for a, b in zip(known, known[1:], strict=False) if (b - a) % cycle != 1)


# --- composition ------------------------------------------------------------------------------------


@dataclass
class Composed:
    room: str
    ok: bool
    minutes: float
    wall: float
    cpu: float
    "Seconds of CPU of the compose process and its ffmpeg."
    error: str | None
    size_mb: float


def compose(directory: Path) -> Composed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "server.media.compose", str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = done.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {"error": done.stderr.strip()[-300:]}
    except json.JSONDecodeError:
        out = {"error": done.stdout.strip()[-300:]}
    if done.returncode != 0 or "error" in out:
        return Composed(directory.name, False, 0.0, wall, cpu, str(out.get("error")), 0.0)
    size = Path(out["output"]).stat().st_size / 2**20
    return Composed(directory.name, True, out["duration"] / 60, wall, cpu, None, size)


# --- the report ----------------------------------------------------------------------------------------


def latency(
    frame_logs: dict[str, list[tuple[float, float]]], peers: list[str], w: Window
) -> tuple[float, float, float]:
    """p50, p95 (ms) and frames/s per stream of these peers' received video in the window."""
    t0, t1 = w.start.t, w.end.t
    values = sorted(lat for p in peers for t, lat in frame_logs[p] if t0 <= t <= t1)
    if not values:
        return float("nan"), float("nan"), 0.0
    return (
        values[len(values) // 2] * 1000,
        values[min(len(values) - 1, int(0.95 * len(values)))] * 1000,
        len(values) / len(peers) / w.seconds,
    )


def print_report(
    *,
    n: int,
    windows: tuple[Window, Window, Window],
    stop_done: Snap,
    stopped: dict[str, Any],
    frames: list[TrackCount],
    composed: list[Composed],
    frame_logs: dict[str, list[tuple[float, float]]],
    host_ms: float | None,
    loads: tuple[float, float],
    ready: str,
    rss: float,
) -> None:
    base1, rec, base2 = windows
    cores = os.cpu_count() or 1

    def extra(get: Any) -> float:
        return (get(rec) - (get(base1) + get(base2)) / 2) / n

    server_extra = extra(lambda w: w.server)
    writer = rec.stat("writer_cpu") / n
    fastpath = extra(lambda w: w.stat("fastpath_seconds"))
    loop_thread = extra(lambda w: w.stat("loop_cpu"))
    noise = abs(base1.server - base2.server) / n
    stop_wall = stop_done.t - rec.end.t
    stop_cpu = (stop_done.cpu - rec.end.cpu - stop_wall * (base1.server + base2.server) / 2) / n

    all_stats = [info["stats"] for info in stopped.values()]
    failures = [info["failure"] or info["stats"]["failed"] for info in stopped.values()]
    failures = [f for f in failures if f]
    tracks = [t for s in all_stats for t in s["tracks"]]
    dropped_video = sum(t["frames_dropped"] for t in tracks if t["kind"] == "video")
    dropped_audio = sum(t["frames_dropped"] for t in tracks if t["kind"] == "audio")
    peak = max(s["writer_queue_peak"] for s in all_stats)
    durations = [s["duration"] for s in all_stats]
    audio_rates = [t["frames_written"] / s["duration"] for s in all_stats for t in s["tracks"] if t["kind"] == "audio"]
    keyframe_requests = sum(t["keyframe_requests"] for t in tracks)

    written = sum(f.written for f in frames)
    sent = sum(f.sent for f in frames)
    worst = min(frames, key=lambda f: f.written / f.sent if f.sent else 0.0) if frames else None
    in_file_mismatch = sum(1 for f in frames if f.in_file != f.written)
    gaps = sum(f.gaps for f in frames)
    unknown = sum(f.unknown for f in frames)
    not_key = sum(1 for f in frames if not f.starts_with_keyframe)
    in_flight = sum(f.in_flight for f in frames)
    first_after = [f.first_frame_after for f in frames]

    ok = [c for c in composed if c.ok]
    minutes = sum(c.minutes for c in ok)
    wall_per_min = sum(c.wall for c in ok) / minutes if minutes else float("nan")
    cpu_per_min = sum(c.cpu for c in ok) / minutes if minutes else float("nan")

    rec_peers = [p for p in frame_logs if int(p[1:]) < n]
    plain_peers = [p for p in frame_logs if int(p[1:]) >= n]
    lat_rec = latency(frame_logs, rec_peers, rec)
    lat_plain = latency(frame_logs, plain_peers, rec)
    lat_base_rec = latency(frame_logs, rec_peers, base1)

    host = host_ms if host_ms is not None else float("nan")
    print()
    print(
        f"config: {2 * n} consultations (sfu, one server process, 640x480 VP8 30 fps + Opus each way), "
        f"{n} recorded for {rec.seconds:.0f} s (+{SETTLE:.0f} s before the window), baselines "
        f"{base1.seconds:.0f} s before and {base2.seconds:.0f} s after; streams receiving {ready}; "
        f"host reference workload {host:.0f} ms (bench/queue_load.py; round 4 in docs/performance.md: 62-64 ms); "
        f"{cores} cores, load average {loads[0]:.2f} / {loads[1]:.2f} (1 / 5 min) at the start"
    )
    print()
    print(
        "| window | server CPU (core-s/s) | of it event loop thread | fast path (timed) | writer threads | "
        "bench clients | machine busy (core-s/s, all processes) | others (busy - server - clients) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for w in windows:
        print(
            f"| {w.name} ({w.seconds:.0f} s) | {w.server:.3f} | {w.stat('loop_cpu'):.3f} | "
            f"{w.stat('fastpath_seconds'):.3f} | {w.stat('writer_cpu'):.3f} | {w.workers:.2f} | "
            f"{w.machine:.2f} of {cores} | {max(0.0, w.machine - w.server - w.workers):.2f} |"
        )
    rows = [
        (
            "extra server CPU per recorded consultation, writer included (core-s/s)",
            f"< {GOAL_CPU}",
            f"{server_extra:.4f} ({'met' if server_extra < GOAL_CPU else 'MISSED'}; recorded window "
            f"{rec.server:.3f} vs baselines {base1.server:.3f} / {base2.server:.3f}, for {n}; baseline "
            f"drift {noise:.4f} per consultation)",
        ),
        ("  of it: writer threads (from /proc per thread: muxing and queue wake-ups)", "-", f"{writer:.4f}"),
        ("  of it: taps on the packet path (timed fast path, difference)", "-", f"{fastpath:.4f}"),
        ("  of it: event loop thread in all (difference)", "-", f"{loop_thread:.4f}"),
        (
            "frames written / frames sent per recorded video track",
            "1.000",
            f"{written / sent if sent else float('nan'):.4f} over {len(frames)} tracks ({written} / {sent}); "
            f"worst track {worst.written}/{worst.sent}"
            if worst
            else "no tracks",
        ),
        (
            "  file check: frames missing inside files / unknown / not starting at a keyframe",
            "0 / 0 / 0",
            f"{gaps} / {unknown} / {not_key}; frames_written != frames in the file: {in_file_mismatch} tracks; "
            f"not counted as sent: {in_flight} frames sent before the stop that had not come through the "
            f"server by then (with them: {written / (sent + in_flight) if sent else float('nan'):.4f})",
        ),
        (
            "  first frame of a file sent after start_recording (median / max)",
            "-",
            f"{statistics.median(first_after) * 1000:.0f} / {max(first_after) * 1000:.0f} ms" if first_after else "-",
        ),
        ("frames dropped (video / audio, all recorded tracks)", "0", f"{dropped_video} / {dropped_audio}"),
        ("writer queue peak (largest of the recordings; queue holds 1024)", "-", f"{peak}"),
        (
            "recordings failed / audio frames written per track per s",
            "0 / 50",
            f"{len(failures)}{' ' + str(failures[:3]) if failures else ''} / "
            f"{min(audio_rates, default=0):.1f}-{max(audio_rates, default=0):.1f}",
        ),
        ("keyframe requests by the recorders (PLIs after the throttle)", "-", f"{keyframe_requests}"),
        (
            "stop(): wall for all recordings / extra CPU per recording",
            "-",
            f"{stop_wall * 1000:.0f} ms / {stop_cpu * 1000:.0f} ms",
        ),
        (
            "composition time per minute of recording (wall / CPU incl. ffmpeg)",
            "-",
            f"{wall_per_min:.1f} s / {cpu_per_min:.1f} s ({len(ok)} of {len(composed)} composed, "
            f"{minutes:.2f} min in all, {statistics.median(durations):.1f} s each, 2 tiles; one at a time, "
            f"not niced; output {statistics.median([c.size_mb for c in ok]) if ok else 0:.1f} MB each)",
        ),
        (
            "video latency p50 / p95, fps: recorded rooms vs unrecorded (recorded window)",
            "no difference",
            f"{lat_rec[0]:.0f} / {lat_rec[1]:.0f} ms, {lat_rec[2]:.1f} vs {lat_plain[0]:.0f} / "
            f"{lat_plain[1]:.0f} ms, {lat_plain[2]:.1f} (recorded rooms before: {lat_base_rec[0]:.0f} / "
            f"{lat_base_rec[1]:.0f} ms)",
        ),
        ("server RSS at the end", "-", f"{rss:.0f} MB"),
    ]
    failed_composes = [c for c in composed if not c.ok]
    print()
    print("| metric | goal | measured |")
    print("| --- | --- | --- |")
    for metric, goal, measured in rows:
        print(f"| {metric} | {goal} | {measured} |")
    for c in failed_composes[:3]:
        print(f"\ncomposition of {c.room} failed: {c.error}")
