"""Client processes of bench/townhall_load.py: the stage publisher and many lean viewers.

The publisher is an aiortc peer sending pre-encoded 640x480 VP8 + Opus (bench/media_clients.py); it
counts the keyframe requests (PLI/FIR) and REMBs that reach it.

A lean viewer is an aiortc peer connection with receive-only transceivers that does ICE and DTLS the
ordinary way and then takes its SRTP packets off the UDP socket before aioice sees them (as the server
does, server/media/aiortc_glue.py). It decrypts nothing but a sample (every ``sample_every``-th packet,
to show the stream is genuine SRTP for this viewer): per SSRC it counts packets, follows the sequence
numbers of the clear RTP header (loss) and counts marker bits on the video (frames). Its aiortc receivers
never start (no decoder thread), and once a second it sends what a browser sends: a receiver report with
its real loss, a REMB, and now and then a PLI (``pli_rate`` per second), which the server must merge.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

ROLE_VIEWER = "viewer"


# --- the publisher ----------------------------------------------------------------------------------


def publisher_worker(conn: Any, port: int, media_path: str) -> None:
    import pickle

    import uvloop

    with open(media_path, "rb") as f:
        media = pickle.load(f)
    uvloop.run(_publisher(conn, port, media))


async def _publisher(conn: Any, port: int, media: Any) -> None:
    import aiohttp
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

    from bench.media_clients import PreEncodedAudio, PreEncodedVideo

    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    video, audio = PreEncodedVideo(media), PreEncodedAudio(media)
    pc.addTrack(audio)
    pc.addTrack(video)
    counts = {"keyframe_requests": 0, "remb": None}
    sender = next(t.sender for t in pc.getTransceivers() if t.kind == "video")
    handle_rtcp = sender._handle_rtcp_packet

    def keyframe_requested() -> None:
        counts["keyframe_requests"] += 1  # type: ignore[operator]
        video.request_keyframe()

    async def watch_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            counts["remb"] = unpack_remb_fci(packet.fci)[0]
        await handle_rtcp(packet)

    sender._send_keyframe = keyframe_requested
    sender._handle_rtcp_packet = watch_rtcp
    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/offer",
            json={"participant": "politician", "sdp": pc.localDescription.sdp, "role": "publisher"},
        ) as r,
    ):
        answer = (await r.json())["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    while pc.connectionState != "connected":  # noqa: ASYNC110 (aiortc's state, no event to await here)
        await asyncio.sleep(0.05)
    conn.send("ready")
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "snapshot":
            conn.send({"time": time.monotonic(), "frames_sent": video.count, **counts})
        elif command == "close":
            await pc.close()
            conn.send("closed")
            return


# --- lean viewers ------------------------------------------------------------------------------------


class TrackCount:
    """One SSRC as a lean viewer sees it."""

    __slots__ = ("video", "packets", "markers", "max_seq", "expected_prior", "received_prior")

    def __init__(self, video: bool, seq: int) -> None:
        self.video = video
        self.packets = 0
        self.markers = 0
        self.max_seq = seq - 1
        "Extended highest sequence number (starts one before the first packet)."
        self.expected_prior = self.max_seq
        self.received_prior = 0


class LeanViewer:
    def __init__(self, name: str, slots: int, sample_every: int) -> None:
        from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection

        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        for _ in range(slots):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        self.sample_every = sample_every
        self.tracks: dict[int, TrackCount] = {}
        self.video_pts: set[int] = set()
        self.datagrams = 0
        self.decrypted_ok = 0
        self.decrypted_bad = 0
        self.rtcp_ssrc = random.getrandbits(32)
        self.dtls: Any = None
        self.connection: Any = None
        self.rx: Any = None

    async def connect(self, http: Any, port: int) -> None:
        from aiortc import RTCSessionDescription

        from server.media import aiortc_glue

        await self.pc.setLocalDescription(await self.pc.createOffer())
        transceivers = self.pc.getTransceivers()
        for t in transceivers:  # no decoder thread, no receiver RTCP task: this viewer counts packets itself
            aiortc_glue.intercept_receiver(t.receiver, lambda params: None)
        self.dtls = transceivers[0].receiver.transport

        async def ignore_rtcp(data: bytes) -> None:
            return None

        aiortc_glue.intercept_rtcp(self.dtls, ignore_rtcp)  # the server's sender reports: not needed here
        self.connection = aiortc_glue.ice_connection(self.dtls)
        aiortc_glue.intercept_datagrams(self.connection, self.on_datagram)
        for protocol in self.connection._protocols:  # a browser's socket buffer, not the bench's hiccups
            protocol.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        async with http.post(
            f"http://127.0.0.1:{port}/offer",
            json={"participant": self.name, "sdp": self.pc.localDescription.sdp, "role": ROLE_VIEWER},
        ) as r:
            r.raise_for_status()
            answer = (await r.json())["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for t in transceivers:
            if t.kind == "video":
                self.video_pts.update(int(c.payloadType or 0) for c in aiortc_glue.transceiver_codecs(t))

    def on_datagram(self, data: bytes) -> bool:
        """Every datagram of the connection; True for SRTP (consumed here), False for the rest (aioice)."""
        if len(data) < 12:
            return False
        b1 = data[1]
        if not 128 <= data[0] <= 191 or 192 <= b1 <= 208:
            return False
        ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
        seq = (data[2] << 8) | data[3]
        track = self.tracks.get(ssrc)
        if track is None:
            track = self.tracks[ssrc] = TrackCount((b1 & 0x7F) in self.video_pts, seq)
        track.packets += 1
        if b1 & 0x80:
            track.markers += 1
        gap = (seq - track.max_seq) & 0xFFFF
        if 0 < gap < 0x8000:
            track.max_seq += gap
        self.datagrams += 1
        if self.datagrams % self.sample_every == 0:
            self._decrypt_sample(data)
        return True

    def _decrypt_sample(self, data: bytes) -> None:
        import pylibsrtp

        from server.media import aiortc_glue

        if self.rx is None:
            rx, _tx = aiortc_glue.dtls_srtp(self.dtls)
            if rx is None:
                return
            self.rx = rx
        try:
            self.rx.unprotect(data)
            self.decrypted_ok += 1
        except pylibsrtp.Error:
            self.decrypted_bad += 1

    def got_video(self) -> bool:
        return any(t.video and t.markers > 0 for t in self.tracks.values())

    def send_feedback(self, remb_bps: int, pli: bool) -> None:
        """What a browser sends about once a second: RR (loss since the last one), REMB, maybe a PLI."""
        from aiortc.rtp import (
            RTCP_PSFB_APP,
            RTCP_PSFB_PLI,
            RtcpPsfbPacket,
            RtcpReceiverInfo,
            RtcpRrPacket,
            pack_remb_fci,
        )

        from server.media import aiortc_glue

        if not self.tracks:
            return
        reports = []
        for ssrc, t in self.tracks.items():
            expected = t.max_seq - t.expected_prior
            lost = expected - (t.packets - t.received_prior)
            t.expected_prior, t.received_prior = t.max_seq, t.packets
            fraction = min(255, (lost << 8) // expected) if expected > 0 and lost > 0 else 0
            reports.append(
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=fraction,
                    packets_lost=0,
                    highest_sequence=t.max_seq & 0xFFFFFFFF,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
            )
        video = [ssrc for ssrc, t in self.tracks.items() if t.video]
        compound = bytes(RtcpRrPacket(ssrc=self.rtcp_ssrc, reports=reports))
        if video:
            fci = pack_remb_fci(remb_bps, video)
            compound += bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=self.rtcp_ssrc, media_ssrc=0, fci=fci))
            if pli:
                compound += bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc, media_ssrc=video[0]))
        _rx, tx = aiortc_glue.dtls_srtp(self.dtls)
        sink = aiortc_glue.datagram_sink(self.connection)
        if tx is None or sink is None:
            return
        sendto, addr = sink
        sendto(tx.protect_rtcp(compound), addr)

    def snapshot(self) -> dict[str, Any]:
        video = [t for t in self.tracks.values() if t.video]
        audio = [t for t in self.tracks.values() if not t.video]
        return {
            "video_packets": sum(t.packets for t in video),
            "video_expected": sum(t.max_seq for t in video),
            "frames": sum(t.markers for t in video),
            "audio_packets": sum(t.packets for t in audio),
            "audio_expected": sum(t.max_seq for t in audio),
            "decrypted_ok": self.decrypted_ok,
            "decrypted_bad": self.decrypted_bad,
        }


def viewer_worker(conn: Any, port: int, names: list[str], options: dict[str, Any]) -> None:
    import uvloop

    uvloop.run(_viewers(conn, port, names, options))


async def _viewers(conn: Any, port: int, names: list[str], options: dict[str, Any]) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    viewers = [LeanViewer(name, options["slots"], options["sample_every"]) for name in names]
    gate = asyncio.Semaphore(options["parallel"])
    failures: list[str] = []

    async with aiohttp.ClientSession() as http:

        async def join(viewer: LeanViewer) -> None:
            async with gate:
                try:
                    await viewer.connect(http, port)
                except Exception as exc:  # reported, the run goes on with the others
                    failures.append(f"{type(exc).__name__}: {exc}")

        started = time.monotonic()
        await asyncio.gather(*(join(v) for v in viewers))
        deadline = time.monotonic() + 60
        # counters filled by the datagram hooks; there is no event to wait on
        while time.monotonic() < deadline and not all(v.got_video() for v in viewers):  # noqa: ASYNC110
            await asyncio.sleep(0.1)

        async def feedback() -> None:
            interval = 1.0 / max(1, len(viewers))
            while True:
                for v in viewers:  # spread over the second, as independent browsers would
                    try:
                        v.send_feedback(options["remb_bps"], random.random() < options["pli_rate"])
                    except Exception:  # a viewer that went away: the others go on
                        pass
                    await asyncio.sleep(interval)

        feeder = asyncio.ensure_future(feedback())
        conn.send(
            {
                "viewers": len(viewers),
                "receiving": sum(v.got_video() for v in viewers),
                "failures": failures[:3],
                "connect_seconds": time.monotonic() - started,
            }
        )
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "snapshot":
                conn.send({"time": time.monotonic(), "viewers": [v.snapshot() for v in viewers]})
            elif command == "close":
                feeder.cancel()
                for v in viewers:
                    await v.pc.close()
                conn.send("closed")
                return
