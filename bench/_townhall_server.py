"""The server side of bench/townhall_load.py: one process, one stage, offer/answer over local HTTP.

    python -m bench._townhall_server --port 8765

Routes (127.0.0.1 only): POST /offer {participant, sdp, role} -> {sdp} (the participant named
``politician`` is promoted first); GET /stats -> hub counters, the stage's stats and the event loop
thread's CPU; POST /shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time

from aiohttp import web

from bench.media_server import thread_cpu_seconds
from server.media import MediaHub

STAGE = "townhall"
PUBLISHER = "politician"


def make_app() -> web.Application:
    app = web.Application()
    hub = MediaHub(ice_servers=[])
    hub.create_stage(STAGE)
    hub.promote(STAGE, PUBLISHER)
    audio_only: list[str] = []
    hub.on_viewer_audio_only = lambda room, participant: audio_only.append(participant)
    stop = asyncio.Event()
    lag = {"max": 0.0, "over_50ms": 0, "gc_max": 0.0, "gc_seconds": 0.0, "gc_full": 0}
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
            return
        took = time.perf_counter() - gc_started[0]
        lag["gc_seconds"] += took
        lag["gc_max"] = max(lag["gc_max"], took)
        lag["gc_full"] += info.get("generation") == 2

    gc.callbacks.append(on_gc)

    async def watch_loop() -> None:
        """How late the event loop runs a 10 ms timer: a stalled loop lets socket buffers overflow."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - start - 0.01
            lag["max"] = max(lag["max"], late)
            lag["over_50ms"] += late > 0.05

    async def start_watch(app: web.Application) -> None:
        app["watch"] = asyncio.ensure_future(watch_loop())

    app.on_startup.append(start_watch)

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        answer = await hub.handle_offer(STAGE, body["participant"], body["sdp"], role=body["role"])
        return web.json_response({"sdp": answer})

    async def stats(request: web.Request) -> web.Response:
        c = hub.counters()
        s = hub.stage_stats(STAGE)
        up = hub.stats(STAGE, PUBLISHER).up if PUBLISHER in s.publishers else ()
        return web.json_response(
            {
                "forwarded_packets": c.forwarded_packets,
                "retransmitted_packets": c.retransmitted_packets,
                "keyframe_requests": c.keyframe_requests,
                "dropped_packets": c.dropped_packets,
                "decoded_frames": c.decoded_frames,
                "encoders": c.encoders,
                "viewers": s.viewers,
                "publishers": list(s.publishers),
                "audio_only_viewers": len(s.audio_only_viewers),
                "keyframe_requests_from_viewers": s.keyframe_requests_from_viewers,
                "keyframe_requests_upstream": s.keyframe_requests_upstream,
                "publisher_bitrate_bps": s.publisher_bitrate_bps.get(PUBLISHER),
                "upstream_packets": sum(t.packets for t in up),
                "upstream_lost": sum(t.packets_lost for t in up),
                # the event loop runs in the main thread, whose thread id is the process id
                "loop_cpu": thread_cpu_seconds(os.getpid(), os.getpid()),
                "loop_lag_max_ms": lag["max"] * 1000,
                "loop_lags_over_50ms": lag["over_50ms"],
                "gc_max_ms": lag["gc_max"] * 1000,
                "gc_seconds": lag["gc_seconds"],
                "gc_full": lag["gc_full"],
            }
        )

    async def shutdown(request: web.Request) -> web.Response:
        stop.set()
        return web.json_response({"ok": True})

    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    app.router.add_post("/shutdown", shutdown)
    app["stop"] = stop
    app["hub"] = hub
    return app


async def serve(port: int) -> None:
    app = make_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ready {port}", flush=True)
    await app["stop"].wait()
    app["watch"].cancel()
    await app["hub"].close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
