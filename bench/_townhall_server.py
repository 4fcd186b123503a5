"""The server side of bench/townhall_load.py: one process, one stage, offer/answer over local HTTP.

    python -m bench._townhall_server --port 8765 [--relay]          # the origin (with --relay: serves edges)
    python -m bench._townhall_server --port 8766 --origin 127.0.0.1:PORT   # an edge: takes the stage's relay

An edge (``--origin``, server/media/stage_relay.py) has no publisher of its own: it takes one relay of the stage
from the origin when its first viewer offers, and its viewers see the relayed publisher. ``ready`` is printed
with the HTTP port and, with ``--relay``, the relay's port.

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
from server.media.stage_relay import StageRelays

STAGE = "townhall"
PUBLISHER = "politician"


RELAY_KEY = b"bench" * 8


def make_app(origin: str | None = None) -> web.Application:
    app = web.Application()
    hub = MediaHub(ice_servers=[])
    relays = StageRelays(hub, RELAY_KEY, "edge" if origin else "origin")
    app["relays"] = relays
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
        if origin is not None:  # an edge: the stage's relay, taken once (pull is idempotent)
            await relays.pull(STAGE, "origin", origin)
        return web.json_response({"sdp": answer})

    async def stats(request: web.Request) -> web.Response:
        c = hub.counters()
        s = hub.stage_stats(STAGE)
        up = hub.stats(STAGE, PUBLISHER).up if PUBLISHER in s.publishers else ()
        served = relays.served.get(STAGE, [])
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
                "relays_served": len(served),
                "relay_keyframe_requests": sum(r.keyframe_requests for r in served),
                "relay_dropped": sum(r.dropped for r in served),
                "relays_taken": len(relays.relays_taken(STAGE)),
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


async def serve(port: int, relay: bool, origin: str | None) -> None:
    app = make_app(origin)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    relay_port = (await app["relays"].serve("127.0.0.1", 0))[1] if relay else 0
    print(f"ready {port} {relay_port}", flush=True)
    await app["stop"].wait()
    app["watch"].cancel()
    await app["relays"].close()
    await app["hub"].close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay", action="store_true", help="serve the stage to edge processes")
    parser.add_argument("--origin", help="be an edge: take the stage's relay from this host:port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(serve(args.port, args.relay, args.origin))


if __name__ == "__main__":
    main()
