"""The server side of bench/media_load.py: one process, offer/answer over local HTTP.

    python -m bench.media_server --mode sfu|relay --port 8765

``sfu``: server.media.MediaHub (forwards encoded RTP).
``relay``: aiortc's MediaRelay, the way aiortc's examples relay media (each
participant's tracks are decoded, and re-encoded for the other).

Routes: POST /offer {room, participant, sdp} -> {sdp}; GET /stats -> counters;
POST /shutdown. Binds to 127.0.0.1 only. ``sfu`` only, for ``media_load.py --record``:
POST /record {rooms, directory} starts recording each room into ``directory/<room>``
(MediaHub.start_recording) -> {started: {room: monotonic time}}; POST /record/stop
{rooms} -> {rooms: {room: {t_start, t_stop, stop_seconds, failure, stats}}}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

from aiohttp import web
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from server.media import MediaHub


class RelayServer:
    """Baseline: aiortc MediaRelay between the two participants of a room."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.rooms: dict[str, dict[str, RTCPeerConnection]] = {}
        self.tracks: dict[str, dict[str, dict[str, object]]] = {}
        self.senders: dict[str, dict[str, dict[str, object]]] = {}

    async def handle_offer(self, room: str, participant: str, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.rooms.setdefault(room, {})[participant] = pc
        my_tracks = self.tracks.setdefault(room, {}).setdefault(participant, {})
        my_senders = self.senders.setdefault(room, {}).setdefault(participant, {})

        @pc.on("track")
        def on_track(track) -> None:  # type: ignore[no-untyped-def]
            my_tracks[track.kind] = track
            for other, senders in self.senders[room].items():
                if other != participant and track.kind in senders:
                    senders[track.kind].replaceTrack(self.relay.subscribe(track))  # type: ignore[attr-defined]

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for t in pc.getTransceivers():
            t.direction = "sendrecv"
            if t.kind not in my_senders:
                my_senders[t.kind] = t.sender
                for other, tracks in self.tracks[room].items():
                    if other != participant and t.kind in tracks:
                        t.sender.replaceTrack(self.relay.subscribe(tracks[t.kind]))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def counters(self) -> dict[str, int]:
        return {"forwarded_packets": -1, "decoded_frames": -1}

    async def close(self) -> None:
        for room in self.rooms.values():
            for pc in room.values():
                await pc.close()


FASTPATH = {"seconds": 0.0, "calls": 0}


def instrument_fast_path() -> None:
    """Measure the thread CPU time spent in the SFU's datagram fast path (bench only)."""
    original = MediaHub._on_datagram
    clock = time.thread_time

    def timed(self, participant, data):  # type: ignore[no-untyped-def]
        start = clock()
        try:
            return original(self, participant, data)
        finally:
            FASTPATH["seconds"] += clock() - start
            FASTPATH["calls"] += 1

    MediaHub._on_datagram = timed  # type: ignore[method-assign]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread, from /proc; 0 if it has ended."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def writer_threads_cpu() -> tuple[int, float]:
    """The recorders' writer threads alive now, and their CPU seconds so far (from /proc)."""
    tids = [t.native_id for t in threading.enumerate() if t.name == "recording-writer" and t.native_id]
    return len(tids), sum(thread_cpu_seconds(os.getpid(), tid) for tid in tids)


def make_app(mode: str) -> web.Application:
    app = web.Application()
    backend: MediaHub | RelayServer = MediaHub(ice_servers=[]) if mode == "sfu" else RelayServer()
    stop = asyncio.Event()
    recordings: dict[str, dict] = {}

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        answer = await backend.handle_offer(body["room"], body["participant"], body["sdp"])
        return web.json_response({"sdp": answer})

    async def stats(request: web.Request) -> web.Response:
        if isinstance(backend, MediaHub):
            c = backend.counters()
            writers, writer_cpu = writer_threads_cpu()
            return web.json_response(
                {
                    "forwarded_packets": c.forwarded_packets,
                    "retransmitted_packets": c.retransmitted_packets,
                    "keyframe_requests": c.keyframe_requests,
                    "decoded_frames": c.decoded_frames,
                    "encoders": c.encoders,
                    "fastpath_seconds": FASTPATH["seconds"],
                    "fastpath_calls": FASTPATH["calls"],
                    # the event loop runs in the main thread, whose thread id is the process id
                    "loop_cpu": thread_cpu_seconds(os.getpid(), os.getpid()),
                    "writers": writers,
                    "writer_cpu": writer_cpu,
                }
            )
        return web.json_response(backend.counters())

    async def record(request: web.Request) -> web.Response:
        assert isinstance(backend, MediaHub), "recording needs --mode sfu"
        body = await request.json()
        started = {}
        for room in body["rooms"]:
            directory = Path(body["directory"]) / room
            directory.mkdir(mode=0o700)
            entry: dict = {"failure": None}

            def failed(reason: str, entry: dict = entry) -> None:
                entry["failure"] = reason

            entry["t_start"] = time.monotonic()
            entry["recorder"] = backend.start_recording(room, directory, on_failure=failed)
            recordings[room] = entry
            started[room] = entry["t_start"]
        return web.json_response({"started": started})

    async def record_stop(request: web.Request) -> web.Response:
        body = await request.json()

        async def stop_one(room: str) -> dict:
            entry = recordings.pop(room)
            # stop() detaches the taps before its first await: frames after t_stop are not recorded
            t_stop = time.monotonic()
            result = await entry["recorder"].stop()
            return {
                "t_start": entry["t_start"],
                "t_stop": t_stop,
                "stop_seconds": time.monotonic() - t_stop,
                "failure": entry["failure"],
                "stats": dataclasses.asdict(result),
            }

        rooms = list(body["rooms"])
        results = await asyncio.gather(*(stop_one(room) for room in rooms))
        return web.json_response({"rooms": dict(zip(rooms, results, strict=True))})

    async def shutdown(request: web.Request) -> web.Response:
        stop.set()
        return web.json_response({"ok": True})

    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    app.router.add_post("/shutdown", shutdown)
    app.router.add_post("/record", record)
    app.router.add_post("/record/stop", record_stop)
    app["stop"] = stop
    app["backend"] = backend
    return app


async def serve(mode: str, port: int) -> None:
    app = make_app(mode)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"ready {port}", flush=True)
    await app["stop"].wait()
    await app["backend"].close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["sfu", "relay"], default="sfu")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--time-fast-path", action="store_true", help="measure CPU inside the fast path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.time_fast_path:
        instrument_fast_path()
    if args.no_uvloop:
        asyncio.run(serve(args.mode, args.port))
    else:
        import uvloop

        uvloop.run(serve(args.mode, args.port))


if __name__ == "__main__":
    main()
