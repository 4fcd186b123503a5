"""Load benchmark of the media layer: N concurrent 1:1 consultations.

    python bench/media_load.py [--consultations 10] [--duration 20] [--modes direct,sfu,relay]
    python bench/media_load.py --record [--consultations 10] [--duration 20]

Each consultation is two aiortc peers sending 640x480 VP8 at 30 fps plus Opus to
each other. The peers run in ``--client-procs`` worker processes; the server is a
separate process (bench/media_server.py, offer/answer over HTTP on 127.0.0.1).

Modes: ``direct`` (the two peers connect to each other, no server: the latency
floor), ``sfu`` (server.media.MediaHub) and ``relay`` (aiortc's MediaRelay, which
decodes and re-encodes: the baseline). The table reports server CPU in
core-seconds per second, per consultation, frames delivered per second per
stream, end-to-end latency p50/p95 and what the server adds over ``direct``,
packet loss seen by the receivers, server memory, and CPU per delivered packet.

``--record`` runs instead one sfu server with twice ``--consultations``, half of them
recorded (server.media's RoomRecorder) in the middle window, and reports what
recording costs: see bench/_record.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- worker process -----------------------------------------------------------


def worker(conn, mode: str, port: int, consultations: list[int], media_path: str, record: bool = False) -> None:  # type: ignore[no-untyped-def]
    import uvloop

    with open(media_path, "rb") as f:
        media = pickle.load(f)
    uvloop.run(_worker(conn, mode, port, consultations, media, record))


async def _worker(conn, mode: str, port: int, consultations: list[int], media, record: bool = False) -> None:  # type: ignore[no-untyped-def]
    import aiohttp
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from bench.media_clients import (
        FrameLog,
        HashingQueue,
        PreEncodedAudio,
        PreEncodedVideo,
        consume_decoding,
    )

    loop = asyncio.get_running_loop()
    peers: list[dict] = []
    tasks: list[asyncio.Task] = []

    def new_peer(name: str) -> dict:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        if record:
            from bench._record import LoggedVideo  # logs every frame it hands to aiortc, for frames sent

            video, audio = LoggedVideo(media), PreEncodedAudio(media)
        else:
            video, audio = PreEncodedVideo(media), PreEncodedAudio(media)
        pc.addTrack(audio)
        pc.addTrack(video)
        peer = {"name": name, "pc": pc, "video": video, "log": FrameLog()}
        peers.append(peer)
        return peer

    def wire_receivers(peer: dict, other: dict) -> None:
        pc = peer["pc"]
        for t in pc.getTransceivers():
            if t.kind == "video":
                # a PLI from the server makes our next frame a keyframe
                t.sender._send_keyframe = peer["video"].request_keyframe
            if mode == "relay":
                if t.receiver.track is not None:
                    log = peer["log"] if t.kind == "video" else None
                    tasks.append(asyncio.ensure_future(consume_decoding(t.receiver.track, log, other["video"].sent_at)))
            else:
                log = peer["log"] if t.kind == "video" else None
                t.receiver._RTCRtpReceiver__decoder_queue = HashingQueue(media, log, other["video"].sent_at)

    async with aiohttp.ClientSession() as http:

        async def via_server(peer: dict, room: str) -> None:
            pc = peer["pc"]
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(
                f"http://127.0.0.1:{port}/offer",
                json={"room": room, "participant": peer["name"], "sdp": pc.localDescription.sdp},
            ) as r:
                answer = (await r.json())["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        for c in consultations:
            a, b = new_peer(f"a{c}"), new_peer(f"b{c}")
            if mode == "direct":
                await a["pc"].setLocalDescription(await a["pc"].createOffer())
                await b["pc"].setRemoteDescription(a["pc"].localDescription)
                wire_receivers(b, a)
                await b["pc"].setLocalDescription(await b["pc"].createAnswer())
                await a["pc"].setRemoteDescription(b["pc"].localDescription)
                wire_receivers(a, b)
            else:
                await via_server(a, f"room{c}")
                wire_receivers(a, b)
                await via_server(b, f"room{c}")
                wire_receivers(b, a)

        # ready when every peer receives frames (or after 40 s)
        deadline = time.monotonic() + 40
        # polls frame logs that aiortc's receive path fills
        while time.monotonic() < deadline and not all(p["log"].entries for p in peers):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        conn.send(
            {
                "ready": sum(1 for p in peers if p["log"].entries),
                "peers": len(peers),
                "unknown": sum(p["log"].unknown for p in peers),
            }
        )

        async def loss_counts() -> tuple[int, int]:
            received = lost = 0
            for p in peers:
                for t in p["pc"].getTransceivers():
                    stats = await t.receiver.getStats()
                    for s in stats.values():
                        if s.type == "inbound-rtp":
                            received += s.packetsReceived
                            lost += max(0, s.packetsLost)
            return received, lost

        assert await loop.run_in_executor(None, conn.recv) == "start"
        t0 = time.monotonic()
        rx0, lost0 = await loss_counts()
        assert await loop.run_in_executor(None, conn.recv) == "stop"
        t1 = time.monotonic()
        rx1, lost1 = await loss_counts()
        latencies: list[float] = []
        frames = 0
        per_peer = []
        for p in peers:
            window = [lat for (t, lat) in p["log"].entries if t0 <= t <= t1]
            frames += len(window)
            latencies.extend(window)
            slow = sorted(window)[int(0.95 * len(window))] if window else 0.0
            per_peer.append(round(slow * 1000))
        if os.environ.get("MEDIA_LOAD_DEBUG"):
            print("p95 per peer (ms)", per_peer, flush=True)
        result = {
            "streams": len(peers),
            "seconds": t1 - t0,
            "frames": frames,
            "latencies": latencies,
            "packets": rx1 - rx0,
            "lost": lost1 - lost0,
        }
        if record:  # raw logs: the driver cuts them into its windows and rooms
            result["frame_logs"] = {p["name"]: p["log"].entries for p in peers}
            result["sends"] = {p["name"]: p["video"].sends for p in peers}
        conn.send(result)
        assert await loop.run_in_executor(None, conn.recv) == "close"
        for t in tasks:
            t.cancel()
        for p in peers:
            await p["pc"].close()
    conn.send("closed")


# --- driver -------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    consultations: int
    server_cpu: float | None
    cpu_per_consultation: float | None
    fps: float
    p50_ms: float
    p95_ms: float
    added_p50_ms: float | None
    added_p95_ms: float | None
    loss_pct: float
    rss_mb: float | None
    us_per_packet: float | None
    machine_busy_pct: float
    ready: str


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy() -> tuple[int, int]:
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(mode: str, port: int, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.media_server", "--mode", mode, "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"{mode} server did not start: {line!r}")
    return proc


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.loads(r.read())


def run_mode(
    mode: str, n: int, duration: float, warmup: float, procs: int, media_path: str, server_args: list[str]
) -> tuple[Row, list]:
    port = free_port()
    server = start_server(mode, port, server_args) if mode != "direct" else None
    ctx = mp.get_context("spawn")
    groups = [list(range(n))[i::procs] for i in range(procs)]
    groups = [g for g in groups if g]
    pipes, workers = [], []
    for g in groups:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker, args=(child, mode, port, g, media_path), daemon=True)
        p.start()
        pipes.append(parent)
        workers.append(p)
    try:
        readies = [c.recv() for c in pipes]
        if os.environ.get("MEDIA_LOAD_DEBUG"):
            print(readies, flush=True)
        ready = f"{sum(r['ready'] for r in readies)}/{sum(r['peers'] for r in readies)}"
        time.sleep(warmup)  # let bitrate estimation settle before measuring
        cpu0 = proc_cpu_seconds(server.pid) if server else None
        stats0 = server_stats(port) if server else {}
        busy0 = machine_busy()
        t0 = time.monotonic()
        for c in pipes:
            c.send("start")
        time.sleep(duration)
        for c in pipes:
            c.send("stop")
        t1 = time.monotonic()
        cpu1 = proc_cpu_seconds(server.pid) if server else None
        stats1 = server_stats(port) if server else {}
        busy1 = machine_busy()
        rss = proc_rss_mb(server.pid) if server else None
        results = [c.recv() for c in pipes]
        for c in pipes:
            c.send("close")
        for c in pipes:
            c.recv()
    finally:
        for p in workers:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
        if server is not None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/shutdown", method="POST")
                urllib.request.urlopen(request, timeout=10)
                server.wait(timeout=20)
            except Exception:
                server.kill()
                server.wait()
    elapsed = t1 - t0
    latencies = [x for r in results for x in r["latencies"]]
    streams = sum(r["streams"] for r in results)
    frames = sum(r["frames"] for r in results)
    packets = sum(r["packets"] for r in results)
    lost = sum(r["lost"] for r in results)
    server_cpu = (cpu1 - cpu0) / elapsed if server else None
    forwarded = stats1.get("forwarded_packets", -1) - stats0.get("forwarded_packets", 0) if server else -1
    per_packet_count = forwarded if forwarded > 0 else packets
    row = Row(
        mode=mode,
        consultations=n,
        server_cpu=server_cpu,
        cpu_per_consultation=server_cpu / n if server_cpu is not None else None,
        fps=frames / streams / elapsed if streams else 0.0,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        added_p50_ms=None,
        added_p95_ms=None,
        loss_pct=100 * lost / max(1, packets + lost),
        rss_mb=rss,
        us_per_packet=(cpu1 - cpu0) / per_packet_count * 1e6 if server and per_packet_count > 0 else None,
        machine_busy_pct=100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        ready=ready,
    )
    return row, [stats0, stats1]


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    header = (
        "| mode | consultations | server CPU (core-s/s) | per consultation | frames/s per stream | "
        "latency p50 / p95 (ms) | added by server p50 / p95 (ms) | loss % | server RSS (MB) | "
        "CPU per delivered packet (us) | machine busy % | streams receiving |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in rows:
        print(
            f"| {r.mode} | {r.consultations} | {fmt(r.server_cpu, '.3f')} | {fmt(r.cpu_per_consultation, '.4f')} | "
            f"{r.fps:.1f} | {r.p50_ms:.0f} / {r.p95_ms:.0f} | {fmt(r.added_p50_ms, '.0f')} / "
            f"{fmt(r.added_p95_ms, '.0f')} | {r.loss_pct:.2f} | {fmt(r.rss_mb, '.0f')} | "
            f"{fmt(r.us_per_packet, '.1f')} | {r.machine_busy_pct:.0f} | {r.ready} |"
        )
    by_mode = {r.mode: r for r in rows}
    if "sfu" in by_mode and "relay" in by_mode and by_mode["sfu"].server_cpu and by_mode["relay"].server_cpu:
        print(
            f"\nrelay / sfu server CPU ratio: {by_mode['relay'].server_cpu / by_mode['sfu'].server_cpu:.1f}x "
            f"(relay at {by_mode['relay'].consultations}, sfu at {by_mode['sfu'].consultations} consultations)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consultations", "-n", type=int, default=10)
    parser.add_argument("--relay-consultations", type=int, default=None, help="default: same as -n")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--modes", default="direct,sfu,relay")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--time-fast-path", action="store_true", help="report CPU spent inside the SFU fast path")
    parser.add_argument(
        "--record",
        action="store_true",
        help="instead of --modes: one sfu server, 2 x --consultations, half of them recorded; reports what "
        "recording costs (bench/_record.py)",
    )
    parser.add_argument("--keep-recordings", action="store_true", help="with --record: keep the recorded files")
    parser.add_argument(
        "--compose", type=int, default=3, help="with --record: how many of the recordings to compose and time"
    )
    args = parser.parse_args()

    from bench.media_clients import encode_media

    started = time.monotonic()
    cache = Path(tempfile.gettempdir()) / "sprechstunde-media-load-v1.pickle"
    if cache.exists():
        with open(cache, "rb") as f:
            media = pickle.load(f)
    else:
        media = encode_media()
        with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False, dir=cache.parent) as f:
            pickle.dump(media, f)
        os.replace(f.name, cache)
    media_path = str(cache)
    mbits = sum(len(d) for d, _ in media.video) * 8 / len(media.video) * 30 / 1e6
    print(
        f"media ready in {time.monotonic() - started:.1f} s ({len(media.video)} frames, {mbits:.2f} Mbit/s)", flush=True
    )
    if args.record:
        from bench._record import run_record

        run_record(args, media, media_path)
        print(f"\ntotal {time.monotonic() - started:.0f} s")
        return
    rows: list[Row] = []
    for mode in args.modes.split(","):
        n = args.relay_consultations or args.consultations if mode == "relay" else args.consultations
        print(f"running {mode} with {n} consultations ...", flush=True)
        server_args = ["--time-fast-path"] if args.time_fast_path and mode == "sfu" else []
        row, (s0, s1) = run_mode(mode, n, args.duration, args.warmup, args.client_procs, media_path, server_args)
        rows.append(row)
        if mode == "sfu" and s1:
            print(
                "  server: "
                + ", ".join(f"{k} {s1[k] - s0.get(k, 0)}" for k in ("retransmitted_packets", "keyframe_requests"))
                + f", decoded frames {s1['decoded_frames']}, encoders {s1['encoders']}",
                flush=True,
            )
        if s1.get("fastpath_calls"):
            calls = s1["fastpath_calls"] - s0["fastpath_calls"]
            seconds = s1["fastpath_seconds"] - s0["fastpath_seconds"]
            forwarded = s1["forwarded_packets"] - s0["forwarded_packets"]
            print(
                f"  fast path: {calls} datagrams, {seconds / max(1, calls) * 1e6:.1f} us CPU each "
                f"({seconds / args.duration:.3f} core-s/s of the server's {row.server_cpu:.3f}); "
                f"{forwarded} packets forwarded",
                flush=True,
            )
    direct = next((r for r in rows if r.mode == "direct"), None)
    if direct is not None:
        for r in rows:
            if r.mode != "direct":
                r.added_p50_ms = r.p50_ms - direct.p50_ms
                r.added_p95_ms = r.p95_ms - direct.p95_ms
    print()
    print_table(rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
