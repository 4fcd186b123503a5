"""Load benchmark of the town hall: one stage publisher, N receive-only viewers, one server process (or more).

    python bench/townhall_load.py [--viewers 50,150,300] [--duration 20] [--mode media]
    python bench/townhall_load.py --viewers 300 --edges 1   # the audience split over the origin and 1 edge process
    PY_SPY=/tmp/pyspy/bin/py-spy python bench/townhall_load.py --viewers 300 --py-spy 15   # where the time goes
    TOWNHALL_DEBUG=1 python bench/townhall_load.py ...   # also the server's raw counters (loop lag, GC pauses)

Media (``--mode media``, this file's part): the publisher sends pre-encoded 640x480 VP8 at 30 fps plus
Opus (bench/media_clients.py) to a stage of ``MediaHub`` (bench/_townhall_server.py, offer/answer over
HTTP on 127.0.0.1); the viewers are lean clients (bench/_townhall_clients.py): real ICE and DTLS, then
SRTP packets counted from their clear headers (a sample decrypted), a receiver report + REMB a second
and a PLI now and then (``--viewer-pli-rate``) that the server must merge. For each N the table gives
server CPU (total and per viewer), CPU per forwarded packet, frame rate and loss per viewer (mean and
worst), keyframe requests asked by viewers and reaching the publisher per second, the REMB the
publisher got, server RSS, and how busy the machine was (everything, the bench's own clients included).

With ``--edges E`` the viewers are split evenly over the origin process (which holds the publisher) and E
edge processes, each taking one relay of the stage from the origin (server/media/stage_relay.py). The main
table then sums the server processes' CPU; a second table gives, per process, its viewers, CPU, frame rate,
loss, the viewers' keyframe requests and the requests it sent upstream (an edge: to the origin over its relay;
the origin: PLIs to the publisher).

Q&A (``--mode qa``): the 2,000 voting audience sockets are another part of the issue; this file only
dispatches to ``bench/_townhall_qa.py:run_qa(args)`` when that exists.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.media_load import free_port, machine_busy, proc_cpu_seconds, proc_rss_mb  # noqa: E402

GOAL_VIEWERS, GOAL_FPS, GOAL_CORES, GOAL_KEYFRAMES = 300, 30.0, 1.0, 2.0


@dataclass
class Row:
    viewers: int
    receiving: int
    server_cpu: float
    server_system_share: float
    "Share of the server's CPU spent in the kernel (system time): sendmsg/recvmsg over loopback."
    cpu_per_viewer: float
    us_per_packet: float
    fps_mean: float
    fps_min: float
    loss_mean_pct: float
    loss_max_pct: float
    plis_from_viewers_per_s: float
    keyframes_at_publisher_per_s: float
    remb_at_publisher: int | None
    audio_only: int
    rss_mb: float
    publisher_fps: float
    viewer_procs_cpu: float
    "CPU of the bench's viewer processes together (core-s/s): with the server's, it must fit the machine."
    machine_busy_pct: float
    connect_s: float
    sampled_decrypt: str
    edges: int = 0
    per_process: list[dict[str, Any]] | None = None
    "With edges: one entry per server process (origin first)."


def proc_user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process: system time is mostly the kernel's UDP path (sendmsg)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def start_server(port: int, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """A bench server process; returns it and its stage relay port (0 without ``--relay``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._townhall_server", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.split()[2])


def server_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def stop_server(server: subprocess.Popen[str], port: int) -> None:
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/shutdown", method="POST")
        urllib.request.urlopen(request, timeout=30)
        server.wait(timeout=60)
    except Exception:
        server.kill()
        server.wait()


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = os.environ.get("PY_SPY", "py-spy")
    try:
        return subprocess.Popen(
            [exe, "record", "--native", "--format", "raw", "-d", str(int(seconds)), "-p", str(pid), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        print(f"  py-spy not found ({exe}); set PY_SPY to its path", flush=True)
        return None


PY_SPY_GROUPS = (
    ("sendmsg system call (UDP send; on loopback it includes delivery into the viewer's socket)", ("sendmsg",)),
    ("recvmsg system call", ("recvmsg", "recvfrom")),
    ("libsrtp + OpenSSL (protect/unprotect) and cffi", ("srtp", "aes", "gcm", "_cffi", "cdata", "mb_slice")),
    ("OutTrack.forward (header rewrite, history, per viewer)", ("OutTrack.forward",)),
    ("Inbound.receive + MediaHub._on_datagram", ("Inbound.receive", "_on_datagram", "datagram_received")),
    ("RTCP from viewers (aiortc DTLS/SRTCP, hub._on_rtcp)", ("_on_rtcp", "rtcp", "Rtcp", "_recv_next")),
    ("uvloop / libuv", ("loop.c", "uv_", "UDPTransport", "LruCache")),
)


def summarise_py_spy(path: Path, top: int = 12) -> None:
    """Where the server's samples fall: by group (leaf frame), then the top leaves; epoll waits are idle."""
    own: dict[str, int] = {}
    groups: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        if "epoll_wait" in leaf or "epoll_pwait" in leaf:
            idle += count
            continue
        own[leaf] = own.get(leaf, 0) + count
        group = next((g for g, keys in PY_SPY_GROUPS if any(k in leaf for k in keys)), "rest")
        groups[group] = groups.get(group, 0) + count
    busy = max(1, total - idle)
    print(f"  py-spy (wall-clock samples): {total}, {idle} waiting in epoll; of the others:")
    for name, count in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {100 * count / busy:5.1f}%  {name}")
    print("  top leaves:")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / busy:5.1f}%  {name}")


def run_one(n: int, args: argparse.Namespace, media_path: str) -> Row:
    from bench._townhall_clients import publisher_worker, viewer_worker

    port = free_port()
    server, relay_port = start_server(port, *(["--relay"] if args.edges else []))
    servers, ports = [server], [port]
    try:
        for _ in range(args.edges):
            edge_port = free_port()
            servers.append(start_server(edge_port, "--origin", f"127.0.0.1:{relay_port}")[0])
            ports.append(edge_port)
    except BaseException:
        for proc, p in zip(servers, ports, strict=False):
            stop_server(proc, p)
        raise
    ctx = mp.get_context("spawn")
    pub_pipe, pub_child = ctx.Pipe()
    publisher = ctx.Process(target=publisher_worker, args=(pub_child, port, media_path), daemon=True)
    publisher.start()
    procs = max(1, min(max(args.viewer_procs, len(ports)), n))
    options = {
        "slots": args.slots,
        "sample_every": args.sample_every,
        "parallel": args.connect_parallel,
        "pli_rate": args.viewer_pli_rate,
        "remb_bps": args.viewer_remb,
    }
    pipes, workers = [], []
    try:
        assert pub_pipe.recv() == "ready"
        for i in range(procs):
            names = [f"viewer{j}" for j in range(i, n, procs)]
            parent, child = ctx.Pipe()
            target = ports[i % len(ports)]  # with edges: worker i watches on server i mod (1 + edges)
            p = ctx.Process(target=viewer_worker, args=(child, target, names, options), daemon=True)
            p.start()
            pipes.append(parent)
            workers.append(p)
        readies = [c.recv() for c in pipes]
        receiving = sum(r["receiving"] for r in readies)
        connect_s = max(r["connect_seconds"] for r in readies)
        failures = [f for r in readies for f in r["failures"]]
        print(f"  {receiving}/{n} viewers receiving after {connect_s:.1f} s" + (f"; {failures}" if failures else ""))
        time.sleep(args.warmup)

        def snapshot() -> tuple[
            dict[str, Any], dict[str, Any], list[dict[str, Any]], float, tuple[int, int], float, float, dict[str, Any]
        ]:
            pub_pipe.send("snapshot")
            for c in pipes:
                c.send("snapshot")
            pub = pub_pipe.recv()
            by_pipe = [c.recv()["viewers"] for c in pipes]
            views = [v for group in by_pipe for v in group]
            clients = sum(proc_cpu_seconds(w.pid) for w in workers if w.pid is not None)
            sys_time = sum(proc_user_system(s.pid)[1] for s in servers)
            per = {
                "stats": [server_stats(p) for p in ports],
                "cpu": [proc_cpu_seconds(s.pid) for s in servers],
                "sys": [proc_user_system(s.pid)[1] for s in servers],
                "views": by_pipe,
            }
            cpu = sum(per["cpu"])  # type: ignore[arg-type]
            return per["stats"][0], pub, views, cpu, machine_busy(), clients, sys_time, per  # type: ignore[index]

        spy = None
        spy_out = Path(tempfile.gettempdir()) / f"townhall-py-spy-{n}.txt"
        if args.py_spy:
            spy = py_spy(server.pid, min(args.py_spy, args.duration), spy_out)
        s0, p0, v0, cpu0, busy0, clients0, sys0, per0 = snapshot()
        t0 = time.monotonic()
        time.sleep(args.duration)
        s1, p1, v1, cpu1, busy1, clients1, sys1, per1 = snapshot()
        elapsed = time.monotonic() - t0
        rss = sum(proc_rss_mb(s.pid) for s in servers)
        rss_each = [proc_rss_mb(s.pid) for s in servers]
        if os.environ.get("TOWNHALL_DEBUG"):
            print("  server before", s0, "\n  server after", s1, "\n  publisher", p0, p1, flush=True)
        if spy is not None:
            spy.wait(timeout=args.duration + 30)
            if spy_out.exists():
                summarise_py_spy(spy_out)
    finally:
        for c in [*pipes, pub_pipe]:
            try:
                c.send("close")
                c.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
        for p in [*workers, publisher]:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        for proc, p in zip(servers, ports, strict=True):
            stop_server(proc, p)

    per_process = None
    if args.edges:
        per_process = []
        for k in range(len(ports)):
            a_views = [v for i, g in enumerate(per0["views"]) if ports[i % len(ports)] == ports[k] for v in g]
            b_views = [v for i, g in enumerate(per1["views"]) if ports[i % len(ports)] == ports[k] for v in g]
            fps_k, loss_k = viewer_figures(a_views, b_views, elapsed)
            a, b = per0["stats"][k], per1["stats"][k]
            cpu = (per1["cpu"][k] - per0["cpu"][k]) / elapsed
            upstream = (b["keyframe_requests_upstream"] - a["keyframe_requests_upstream"]) / elapsed
            per_process.append({
                "process": "origin" if k == 0 else f"edge {k}",
                "viewers": len(b_views),
                "cpu": cpu,
                "kernel_share": (per1["sys"][k] - per0["sys"][k]) / max(1e-9, per1["cpu"][k] - per0["cpu"][k]),
                "fps_mean": sum(fps_k) / max(1, len(fps_k)),
                "fps_min": min(fps_k, default=0.0),
                "loss_mean_pct": sum(loss_k) / max(1, len(loss_k)),
                "loss_max_pct": max(loss_k, default=0.0),
                "plis_from_viewers_per_s": (b["keyframe_requests_from_viewers"] - a["keyframe_requests_from_viewers"])
                / elapsed,
                "keyframe_requests_upstream_per_s": upstream,
                "relay_keyframe_requests_per_s": (b["relay_keyframe_requests"] - a["relay_keyframe_requests"])
                / elapsed,
                "relay_dropped": b["relay_dropped"],
                "rss_mb": rss_each[k],
            })

    fps, losses = viewer_figures(v0, v1, elapsed)
    server_cpu = (cpu1 - cpu0) / elapsed
    total = {key: sum(b[key] - a[key] for a, b in zip(per0["stats"], per1["stats"], strict=True))
             for key in ("forwarded_packets", "keyframe_requests_from_viewers")}
    forwarded = total["forwarded_packets"]
    ok = sum(v["decrypted_ok"] for v in v1)
    bad = sum(v["decrypted_bad"] for v in v1)
    return Row(
        viewers=n,
        receiving=receiving,
        server_cpu=server_cpu,
        server_system_share=(sys1 - sys0) / max(1e-9, cpu1 - cpu0),
        cpu_per_viewer=server_cpu / n,
        us_per_packet=(cpu1 - cpu0) / max(1, forwarded) * 1e6,
        fps_mean=sum(fps) / len(fps),
        fps_min=min(fps),
        loss_mean_pct=sum(losses) / len(losses),
        loss_max_pct=max(losses),
        plis_from_viewers_per_s=total["keyframe_requests_from_viewers"] / elapsed,
        keyframes_at_publisher_per_s=(p1["keyframe_requests"] - p0["keyframe_requests"]) / elapsed,
        remb_at_publisher=p1["remb"],
        audio_only=sum(s["audio_only_viewers"] for s in per1["stats"]),
        rss_mb=rss,
        publisher_fps=(p1["frames_sent"] - p0["frames_sent"]) / elapsed,
        viewer_procs_cpu=(clients1 - clients0) / elapsed,
        machine_busy_pct=100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        connect_s=connect_s,
        sampled_decrypt=f"{ok}/{ok + bad}",
        edges=args.edges,
        per_process=per_process,
    )


def viewer_figures(
    v0: list[dict[str, Any]], v1: list[dict[str, Any]], elapsed: float
) -> tuple[list[float], list[float]]:
    """Frames per second and loss % of each viewer between two snapshots."""
    fps, losses = [], []
    for a, b in zip(v0, v1, strict=True):
        fps.append((b["frames"] - a["frames"]) / elapsed)
        expected = (b["video_expected"] - a["video_expected"]) + (b["audio_expected"] - a["audio_expected"])
        got = (b["video_packets"] - a["video_packets"]) + (b["audio_packets"] - a["audio_packets"])
        losses.append(100 * max(0, expected - got) / expected if expected > 0 else 100.0)
    return fps, losses


COLUMNS = (
    "viewers",
    "receiving",
    "server CPU (core-s/s)",
    "of it in the kernel",
    "per viewer (core-s/s)",
    "CPU per forwarded packet (us)",
    "frames/s per viewer mean / worst",
    "loss % mean / worst",
    "PLI from viewers /s",
    "keyframe requests at publisher /s",
    "REMB at publisher (kbit/s)",
    "audio only",
    "server RSS (MB)",
    "publisher frames/s sent",
    "viewer processes CPU (core-s/s)",
    "machine busy %",
    "connect (s)",
    "sampled SRTP decrypted",
)


def row_cells(r: Row) -> list[str]:
    return [
        str(r.viewers),
        str(r.receiving),
        f"{r.server_cpu:.3f}",
        f"{100 * r.server_system_share:.0f}%",
        f"{r.cpu_per_viewer:.5f}",
        f"{r.us_per_packet:.1f}",
        f"{r.fps_mean:.1f} / {r.fps_min:.1f}",
        f"{r.loss_mean_pct:.2f} / {r.loss_max_pct:.2f}",
        f"{r.plis_from_viewers_per_s:.1f}",
        f"{r.keyframes_at_publisher_per_s:.2f}",
        "-" if r.remb_at_publisher is None else f"{r.remb_at_publisher / 1000:.0f}",
        str(r.audio_only),
        f"{r.rss_mb:.0f}",
        f"{r.publisher_fps:.1f}",
        f"{r.viewer_procs_cpu:.2f}",
        f"{r.machine_busy_pct:.0f}",
        f"{r.connect_s:.0f}",
        r.sampled_decrypt,
    ]


PROCESS_COLUMNS = (
    "viewers",
    "process",
    "its viewers",
    "CPU (core-s/s)",
    "of it in the kernel",
    "frames/s mean / worst",
    "loss % mean / worst",
    "PLI from its viewers /s",
    "keyframe requests sent upstream /s",
    "requests from edges' relays /s",
    "relay packets dropped (send buffer full)",
    "RSS (MB)",
)


def print_table(rows: list[Row]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(row_cells(r)) + " |")
    split = [r for r in rows if r.per_process]
    if split:
        print("\nper server process (upstream: an edge's requests to the origin, the origin's PLIs to the "
              "publisher):\n")
        print("| " + " | ".join(PROCESS_COLUMNS) + " |")
        print("|" + " --- |" * len(PROCESS_COLUMNS))
        for r in split:
            for p in r.per_process or []:
                cells = [
                    str(r.viewers), p["process"], str(p["viewers"]), f"{p['cpu']:.3f}",
                    f"{100 * p['kernel_share']:.0f}%", f"{p['fps_mean']:.1f} / {p['fps_min']:.1f}",
                    f"{p['loss_mean_pct']:.2f} / {p['loss_max_pct']:.2f}",
                    f"{p['plis_from_viewers_per_s']:.1f}", f"{p['keyframe_requests_upstream_per_s']:.2f}",
                    f"{p['relay_keyframe_requests_per_s']:.2f}", str(p["relay_dropped"]), f"{p['rss_mb']:.0f}",
                ]
                print("| " + " | ".join(cells) + " |")
    goal = next((r for r in rows if r.viewers >= GOAL_VIEWERS), None)
    if goal is not None:
        met = (
            goal.server_cpu < GOAL_CORES
            and goal.fps_min >= GOAL_FPS * 0.95
            and goal.keyframes_at_publisher_per_s <= GOAL_KEYFRAMES
        )
        print(
            f"\ngoal ({GOAL_VIEWERS} viewers at {GOAL_FPS:.0f} fps, under {GOAL_CORES:.0f} core, at most "
            f"{GOAL_KEYFRAMES:.0f} keyframe requests/s at the publisher): {'met' if met else 'NOT met'} at "
            f"{goal.viewers} viewers"
        )


def load_media() -> str:
    from bench.media_clients import encode_media

    cache = Path(tempfile.gettempdir()) / "sprechstunde-media-load-v1.pickle"  # shared with media_load.py
    if not cache.exists():
        media = encode_media()
        with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False, dir=cache.parent) as f:
            pickle.dump(media, f)
        os.replace(f.name, cache)
    return str(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["media", "qa"], default="media")
    parser.add_argument("--viewers", default="50,150,300", help="comma-separated viewer counts, one run each")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewer-procs", type=int, default=2, help="at least 1 + edges")
    parser.add_argument("--edges", type=int, default=0, help="edge processes that take a relay of the stage")
    parser.add_argument("--slots", type=int, default=3, help="audio+video pairs each viewer offers (publishers shown)")
    parser.add_argument("--viewer-pli-rate", type=float, default=0.05, help="PLIs per viewer per second (<= 1)")
    parser.add_argument("--viewer-remb", type=int, default=3_000_000, help="REMB each viewer reports (bit/s)")
    parser.add_argument("--sample-every", type=int, default=200, help="a viewer decrypts one in this many packets")
    parser.add_argument("--connect-parallel", type=int, default=8, help="viewers connecting at once per process")
    parser.add_argument("--py-spy", type=float, default=0, help="profile the server this many seconds per run")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.mode == "qa":
        try:
            from bench._townhall_qa import run_qa  # type: ignore[import-not-found]
        except ImportError:
            sys.exit("the Q&A half of the town hall bench (bench/_townhall_qa.py: run_qa(args)) is not there yet")
        run_qa(args)
        return

    from bench.queue_load import host_reference_ms

    started = time.monotonic()
    media_path = load_media()
    print(f"host reference workload (bench/queue_load.py): {host_reference_ms():.0f} ms", flush=True)
    rows = []
    for n in (int(x) for x in args.viewers.split(",")):
        print(f"running {n} viewers ...", flush=True)
        rows.append(run_one(n, args, media_path))
    print()
    print_table(rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
