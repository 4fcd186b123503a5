"""Microbenchmark of the SFU's per-packet fast path, in one process.

    python bench/media_fastpath.py [--packets 20000]

Two real aiortc peers join a MediaHub over loopback. Then the publisher's video
sender is paused and synthetic 1100-byte VP8 packets, encrypted with the
publisher's real SRTP session, are handed straight to the server's UDP socket
callback; the process CPU time per packet is what one forwarded packet costs
the server in Python, libsrtp and the sendto() system call (the kernel's
receive path and the event loop's own wake-ups are not included: the load
benchmark measures those).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.media import MediaHub, aiortc_glue  # noqa: E402
from tests.media.peers import Client, wait_for  # noqa: E402


async def run(packets: int, profile: bool) -> None:
    hub = MediaHub(ice_servers=[])
    alice, bob = Client("alice"), Client("bob")
    try:
        await alice.join(hub, "bench")
        await bob.join(hub, "bench")
        mid = hub.layout("bench", "bob")["alice"].video_mid
        await wait_for(lambda: len(bob.frames_from(mid)) >= 10, what="media to flow")

        video_t = next(t for t in alice.pc.getTransceivers() if t.kind == "video")
        video_t.sender.replaceTrack(None)  # alice's encoder stops; we inject instead
        ssrc = aiortc_glue.sender_ssrc(video_t.sender)
        pt = next(c.payloadType for c in aiortc_glue.transceiver_codecs(video_t) if c.mimeType == "video/VP8")
        ext_ids = {e.uri: e.id for e in aiortc_glue.transceiver_header_extensions(video_t)}
        mid_id = ext_ids["urn:ietf:params:rtp-hdrext:sdes:mid"]
        abs_id = ext_ids["http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"]
        ext = (
            struct.pack("!HH", 0xBEDE, 2)
            + bytes([(mid_id << 4), ord(video_t.mid)])
            + bytes([(abs_id << 4) | 2, 0, 0, 0])
            + b"\x00\x00"
        )
        tx = aiortc_glue.dtls_srtp(video_t.sender.transport)[1]
        await asyncio.sleep(0.2)

        server_participant = hub._rooms["bench"].participants["alice"]
        pair = server_participant.link.connection._nominated[1]
        datagram_received = pair.protocol.datagram_received
        remote = pair.remote_addr

        def deliver(data: bytes, _component: int) -> None:
            datagram_received(data, remote)

        seq0 = (server_participant.inbound["video"].max_seq + 100) & 0xFFFF
        payload = bytes([0x90, 0x80, 0x12, 0x34]) + bytes(1096)  # VP8 descriptor, not a keyframe start
        datagrams = [
            tx.protect(struct.pack("!BBHII", 0x90, pt, (seq0 + i) & 0xFFFF, 3000 * (i // 8), ssrc) + ext + payload)
            for i in range(packets)
        ]
        before = hub.counters().forwarded_packets
        profiler = cProfile.Profile() if profile else None
        start = time.process_time()
        if profiler:
            profiler.enable()
        for d in datagrams:
            deliver(d, 1)
        if profiler:
            profiler.disable()
        cpu = time.process_time() - start
        forwarded = hub.counters().forwarded_packets - before
        print(f"{packets} packets in, {forwarded} forwarded, {cpu / packets * 1e6:.1f} us CPU per packet")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    finally:
        await alice.close()
        await bob.close()
        await hub.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loop")
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args.packets, args.profile))


if __name__ == "__main__":
    main()
