"""The forwarding path: published tracks in, rewritten RTP out, and their RTCP.

Everything here runs on the event loop, synchronously, in the datagram callback
of the ICE layer: one incoming SRTP packet is decrypted once, then for every
subscriber its header is rewritten on the raw bytes, encrypted with that
subscriber's SRTP session and written to its UDP socket. Nothing decodes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import pylibsrtp
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    clamp_packets_lost,
    pack_remb_fci,
)

from . import aiortc_glue
from .rtp_bytes import (
    RTP_HEADER,
    extension_block,
    find_one_byte_extension,
    one_byte_element,
    payload_offset,
    seq_newer,
    vp8_keyframe_start,
)

logger = logging.getLogger(__name__)
_time = time.time

HISTORY_SIZE = 1024
"""Packets kept per outgoing track to answer NACKs (about 1 s of 1 Mbit/s video)."""
HISTORY_MASK = HISTORY_SIZE - 1
NTP_UNIX_OFFSET = 2208988800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""
MAX_NACK_GAP = 256
"""A bigger sequence gap is not NACKed packet by packet; a keyframe is asked instead."""


class Counters:
    """Process-wide counters of the forwarding path (cheap integer attributes)."""

    __slots__ = ("forwarded", "retransmitted", "keyframe_requests", "dropped", "errors")

    def __init__(self) -> None:
        self.forwarded = 0
        self.retransmitted = 0
        self.keyframe_requests = 0
        self.dropped = 0
        self.errors = 0


class PeerLink:
    """A peer connection as the fast path sees it: SRTP sessions and a UDP sink."""

    __slots__ = ("dtls", "connection", "rx", "tx", "tx_rtcp", "sendto", "addr", "rtcp_ssrc")

    def __init__(self, dtls: Any, rtcp_ssrc: int) -> None:
        self.dtls = dtls
        self.connection = aiortc_glue.ice_connection(dtls)
        self.rx: Any = None
        self.tx: Any = None
        self.tx_rtcp: Any = None
        self.sendto: Callable[[bytes, Any], None] | None = None
        self.addr: Any = None
        self.rtcp_ssrc = rtcp_ssrc
        """SSRC the server uses as sender of its RTCP feedback on this connection."""

    def ready(self) -> bool:
        """True once DTLS gave SRTP keys and ICE nominated a pair."""
        if self.tx is None:
            rx, tx = aiortc_glue.dtls_srtp(self.dtls)
            if tx is None:
                return False
            self.rx, self.tx = aiortc_glue.FastSrtp(rx), aiortc_glue.FastSrtp(tx)
            self.tx_rtcp = tx
        if self.sendto is None:
            sink = aiortc_glue.datagram_sink(self.connection)
            if sink is None:
                return False
            self.sendto, self.addr = sink
        return True

    def send_rtcp(self, data: bytes) -> None:
        if not self.ready():
            return
        try:
            self.sendto(self.tx_rtcp.protect_rtcp(data), self.addr)  # type: ignore[misc]
        except (pylibsrtp.Error, OSError) as exc:
            logger.debug("RTCP send failed: %s", exc)


class RelayedLink(PeerLink):
    """The link of a publisher relayed from another node (server/media/stage_relay.py): there is no connection
    here, and its RTCP goes nowhere; the relay sends keyframe requests and the bitrate upstream itself."""

    def __init__(self) -> None:  # no DTLS transport to look into: PeerLink.__init__ is not called
        self.dtls = None
        self.connection = None
        self.rx = self.tx = self.tx_rtcp = None
        self.sendto = None
        self.addr = None
        self.rtcp_ssrc = 0

    def ready(self) -> bool:
        return True

    def send_rtcp(self, data: bytes) -> None:
        pass


class Leg(Protocol):
    """Where an :class:`Inbound` forwards to: an :class:`OutTrack` (a subscriber's stream), or a stage relay's
    leg to another node (server/media/stage_relay.py), which the publisher sees as one more subscriber."""

    source: Inbound | None
    remb: int | None
    "The subscriber's last bitrate estimate (bit/s), None before the first."

    def forward(
        self, data: bytes, payload: bytes, seq: int, ts: int, offset: int, abs3: bytes, level: bytes | None
    ) -> None: ...

    def send_sender_report(self, info: RtcpSenderInfo) -> None: ...

    def detach(self) -> None: ...


class Inbound:
    """One track a participant publishes, as the server receives it."""

    def __init__(
        self,
        link: PeerLink,
        counters: Counters,
        kind: str,
        ssrc: int | None,
        payload_type: int,
        clock_rate: int,
        rtx_ssrc: int | None = None,
        rtx_payload_type: int | None = None,
        audio_level_id: int | None = None,
        keyframe_interval: float = 0.5,
    ) -> None:
        self.link = link
        self.counters = counters
        self.kind = kind
        self.video = kind == "video"
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.audio_level_id = audio_level_id
        self.keyframe_interval = keyframe_interval
        self.legs: list[Leg] = []
        """Outgoing tracks (and stage relays) this one is forwarded to right now."""
        self.tap: Callable[[bytes, int, int, float], None] | None = None
        """The recorder's tap while this track is recorded: (packet, sequence, payload offset, arrival)."""
        self.last_sr: tuple[float, int, float] | None = None
        """The publisher's last sender report: (NTP time as Unix seconds, RTP timestamp, arrival)."""

        # receive statistics (RFC 3550 appendix A.3 and A.8)
        self.packets = 0
        self.octets = 0
        self.base_seq: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.jitter = 0.0
        self.last_transit: int | None = None
        self.expected_prior = 0
        self.received_prior = 0
        self.lost_fraction = 0
        self.missing: set[int] = set()
        self.nacks_sent = 0
        self.recovered = 0
        self.last_keyframe_request = -1e9
        self.keyframe_requests = 0
        self.keyframe_seen = -1e9
        "Monotonic time the last packet starting a VP8 keyframe arrived."
        self.trailing_keyframe: asyncio.TimerHandle | None = None
        "A PLI asked inside the throttle window, to be sent when the window ends."
        self.lsr = 0
        self.lsr_time = 0.0
        self.bitrate = 0.0
        self.rate_octets = 0
        self.rate_time = time.monotonic()

    # -- fast path --------------------------------------------------------

    def receive(self, data: bytes, recovered: bool = False) -> None:
        """Forward one decrypted RTP packet to every leg."""
        seq = (data[2] << 8) | data[3]
        ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        try:
            offset = payload_offset(data)
        except ValueError:
            self.counters.dropped += 1
            return
        now = _time()
        self.packets += 1
        self.octets += len(data) - offset
        if self.video and vp8_keyframe_start(data, offset):
            self.keyframe_seen = time.monotonic()
        if self.base_seq is None:
            self.base_seq = self.max_seq = seq
        elif 0 < ((seq - self.max_seq) & 0xFFFF) < 0x8000:
            gap = (seq - self.max_seq) & 0xFFFF
            if seq < self.max_seq:
                self.cycles += 0x10000
            if gap > 1 and self.video:
                self._lost(seq, gap)
            self.max_seq = seq
            transit = int(now * self.clock_rate) - ts
            if self.last_transit is not None:
                d = abs(transit - self.last_transit)
                self.jitter += (d - self.jitter) / 16.0
            self.last_transit = transit
        elif seq in self.missing:
            self.missing.discard(seq)
            self.recovered += 1

        legs = self.legs
        if legs:
            abs3 = (int(now * 262144) & 0xFFFFFF).to_bytes(3, "big")  # abs-send-time, see rtp_bytes
            level = None
            if self.audio_level_id is not None:
                level = find_one_byte_extension(data, self.audio_level_id)
            payload = data[offset:]
            for leg in legs:
                leg.forward(data, payload, seq, ts, offset, abs3, level)
        tap = self.tap
        if tap is not None:  # recording: after forwarding, so it never delays the call
            tap(data, seq, offset, now)

    def _lost(self, seq: int, gap: int) -> None:
        if gap > MAX_NACK_GAP:
            self.missing.clear()
            self.request_keyframe()
            return
        lost = [(self.max_seq + i) & 0xFFFF for i in range(1, gap)]
        self.missing.update(lost)
        if len(self.missing) > MAX_NACK_GAP:
            self.missing = {s for s in self.missing if not seq_newer(seq - MAX_NACK_GAP, s)}
        self.send_nack(lost)

    def unwrap_rtx(self, data: bytes) -> bytes | None:
        """Turn an RTX packet (RFC 4588) back into the original packet."""
        try:
            offset = payload_offset(data)
        except ValueError:
            return None
        end = len(data) - (data[-1] if data[0] & 0x20 else 0)
        if end - offset < 2:
            return None  # padding-only probe
        b0 = data[0] & 0xDF  # the original carries no padding
        return (
            bytes((b0, (data[1] & 0x80) | self.payload_type))
            + data[offset : offset + 2]
            + data[4:8]
            + (self.ssrc or 0).to_bytes(4, "big")
            + data[12:offset]
            + data[offset + 2 : end]
        )

    # -- feedback to the publisher ----------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe: at most one PLI per ``keyframe_interval``, however many ask.

        A request inside the window is merged: if the PLI already sent is still unanswered (no keyframe
        arrived since), the keyframe on its way serves this request too; otherwise one trailing PLI goes
        out when the window ends (so a subscriber's PLI on a running stream is never just dropped).
        """
        if not self.video or self.ssrc is None:
            return
        now = time.monotonic()
        wait = self.last_keyframe_request + self.keyframe_interval - now
        if wait <= 0:
            self._send_pli(now)
            return
        if self.trailing_keyframe is not None or self.keyframe_seen < self.last_keyframe_request:
            return  # a trailing PLI is planned, or the keyframe asked for is on its way
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.trailing_keyframe = loop.call_later(wait, self._send_trailing)

    def _send_trailing(self) -> None:
        self.trailing_keyframe = None
        if self.keyframe_seen < self.last_keyframe_request:
            return  # the window's own PLI is still unanswered: its keyframe serves everybody who asked
        self._send_pli(time.monotonic())

    def _send_pli(self, now: float) -> None:
        self.last_keyframe_request = now
        self.keyframe_requests += 1
        self.counters.keyframe_requests += 1
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.link.rtcp_ssrc, media_ssrc=self.ssrc or 0)
        self.link.send_rtcp(bytes(pli))

    def cancel_trailing(self) -> None:
        """The publisher leaves: no PLI after it."""
        if self.trailing_keyframe is not None:
            self.trailing_keyframe.cancel()
            self.trailing_keyframe = None

    def send_nack(self, lost: list[int]) -> None:
        if self.ssrc is None or not lost:
            return
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self.link.rtcp_ssrc, media_ssrc=self.ssrc)
        nack.lost = sorted(lost)
        self.nacks_sent += 1
        self.link.send_rtcp(bytes(nack))

    def on_sender_report(self, sr: RtcpSrPacket) -> None:
        ntp = sr.sender_info.ntp_timestamp
        self.lsr = (ntp >> 16) & 0xFFFFFFFF
        self.lsr_time = time.time()
        ntp_seconds = (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 2**32
        self.last_sr = (ntp_seconds, sr.sender_info.rtp_timestamp, self.lsr_time)
        for leg in self.legs:
            leg.send_sender_report(sr.sender_info)

    def receiver_report(self) -> RtcpReceiverInfo | None:
        if self.base_seq is None or self.ssrc is None:
            return None
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        interval_expected = expected - self.expected_prior
        interval_received = self.packets - self.received_prior
        self.expected_prior, self.received_prior = expected, self.packets
        interval_lost = interval_expected - interval_received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        self.lost_fraction = fraction
        dlsr = 0
        if self.lsr_time:
            delay = time.time() - self.lsr_time
            if 0 < delay < 65536:
                dlsr = int(delay * 65536)
        return RtcpReceiverInfo(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=clamp_packets_lost(expected - self.packets),
            highest_sequence=extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=self.lsr,
            dlsr=dlsr,
        )

    def remb(self, cap: int) -> bytes | None:
        """REMB for the publisher: the cap, lowered to what the slowest subscriber takes (1:1 rooms)."""
        bitrate = cap
        for leg in self.legs:
            if leg.remb is not None:
                bitrate = min(bitrate, leg.remb)
        return self.remb_packet(bitrate)

    def remb_packet(self, bitrate: int) -> bytes | None:
        """A REMB asking the publisher for ``bitrate`` (a stage computes it from all its viewers)."""
        if not self.video or self.ssrc is None:
            return None
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=self.link.rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(int(bitrate), [self.ssrc]),
        )
        return bytes(packet)

    def update_rate(self, now: float) -> None:
        elapsed = now - self.rate_time
        if elapsed > 0:
            self.bitrate = (self.octets - self.rate_octets) * 8 / elapsed
        self.rate_octets, self.rate_time = self.octets, now


class OutTrack:
    """One RTP stream the server sends to a subscriber (one sender of its connection).

    The sequence number and timestamp spaces belong to this object, not to the
    source, so that a new source (or the same one after a pause) continues them.
    """

    def __init__(
        self,
        link: PeerLink,
        counters: Counters,
        kind: str,
        ssrc: int,
        payload_type: int,
        clock_rate: int,
        mid: str | None,
        extension_ids: dict[str, int],
    ) -> None:
        self.link = link
        self.counters = counters
        self.kind = kind
        self.video = kind == "video"
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.mid = mid
        self.source: Inbound | None = None
        self.active = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.next_seq = random.randint(0, 0x7FFF)
        self.last_ts_out: int | None = None
        self.last_time_out = 0.0
        self.last_seq_in = 0
        self.last_ts_in = 0
        self.history: list[bytes | None] = [None] * HISTORY_SIZE
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0
        self.nacks_received = 0
        self.keyframe_requests_received = 0
        self.remb: int | None = None
        self.rtt: float | None = None
        self.fraction_lost = 0
        self.packets_lost = 0
        self.jitter = 0
        self.lsr = 0
        self.lsr_time = 0.0
        self.bitrate = 0.0
        self.rate_octets = 0
        self.rate_time = time.monotonic()
        self._configure_extensions(extension_ids)

    def _configure_extensions(self, ids: dict[str, int]) -> None:
        mid_id = ids.get("mid")
        abs_id = ids.get("abs-send-time")
        level_id = ids.get("audio-level")
        self.level_id = level_id
        self.abs_id = abs_id
        mid_element = b""
        if mid_id is not None and self.mid:
            mid_element = one_byte_element(mid_id, self.mid.encode())
        self.mid_element = mid_element
        # precomputed block for the common case: [mid][abs-send-time], no level
        body_len = len(mid_element) + (4 if abs_id is not None else 0)
        pad = -body_len & 3
        self.ext_head = (
            struct.pack("!HH", 0xBEDE, (body_len + pad) >> 2)
            + mid_element
            + (bytes([(abs_id << 4) | 2]) if abs_id is not None else b"")
        )
        self.ext_tail = b"\x00" * pad
        self.has_ext = body_len > 0 or level_id is not None

    def _extension(self, abs3: bytes, level: bytes | None) -> bytes:
        if self.level_id is None or level is None:
            if self.abs_id is not None:
                return self.ext_head + abs3 + self.ext_tail
            return self.ext_head + self.ext_tail if self.mid_element else b""
        body = self.mid_element
        if self.abs_id is not None:
            body += one_byte_element(self.abs_id, abs3)
        body += one_byte_element(self.level_id, level[:1])
        return extension_block(body)

    # -- source switching --------------------------------------------------

    def attach(self, source: Inbound) -> None:
        self.detach()
        self.source = source
        self.active = False
        source.legs.append(self)
        if self.video and self.link.ready():
            source.request_keyframe()

    def detach(self) -> None:
        source = self.source
        if source is not None and self in source.legs:
            source.legs.remove(self)
        self._deactivate()

    def _deactivate(self) -> None:
        if self.active:
            self.next_seq = (self.last_seq_in + self.seq_offset + 1) & 0xFFFF
            self.last_ts_out = (self.last_ts_in + self.ts_offset) & 0xFFFFFFFF
            self.last_time_out = time.time()
        self.active = False

    def _activate(self, seq: int, ts: int) -> None:
        self.seq_offset = (self.next_seq - seq) & 0xFFFF
        if self.last_ts_out is None:
            out_ts = random.randint(0, 0xFFFFFFFF)
        else:
            elapsed = max(time.time() - self.last_time_out, 0.001)
            out_ts = self.last_ts_out + int(elapsed * self.clock_rate)
        self.ts_offset = (out_ts - ts) & 0xFFFFFFFF
        self.last_seq_in, self.last_ts_in = seq, ts
        self.active = True

    def on_link_ready(self) -> None:
        if self.video and self.source is not None and not self.active:
            self.source.request_keyframe()

    # -- fast path --------------------------------------------------------

    def forward(
        self,
        data: bytes,
        payload: bytes,
        seq: int,
        ts: int,
        offset: int,
        abs3: bytes,
        level: bytes | None,
    ) -> None:
        link = self.link
        if not self.active:
            if link.tx is None and not link.ready():
                return
            if self.video and not vp8_keyframe_start(data, offset):
                # gated until a keyframe starts: ask for one (throttled)
                self.source.request_keyframe()  # type: ignore[union-attr]
                return
            self._activate(seq, ts)
        elif 0 < ((seq - self.last_seq_in) & 0xFFFF) < 0x8000:
            self.last_seq_in, self.last_ts_in = seq, ts
        out_seq = (seq + self.seq_offset) & 0xFFFF
        header = RTP_HEADER.pack(
            (0x90 if self.has_ext else 0x80) | (data[0] & 0x20),
            (data[1] & 0x80) | self.payload_type,
            out_seq,
            (ts + self.ts_offset) & 0xFFFFFFFF,
            self.ssrc,
        )
        if level is None and self.abs_id is not None:
            extension = self.ext_head + abs3 + self.ext_tail
        else:
            extension = self._extension(abs3, level)
        try:
            packet = link.tx.protect(header + extension + payload)
        except pylibsrtp.Error:
            self.counters.errors += 1
            return
        self.history[out_seq & HISTORY_MASK] = packet
        link.sendto(packet, link.addr)  # type: ignore[misc]
        self.packets += 1
        self.octets += len(payload)
        self.counters.forwarded += 1

    # -- RTCP from the subscriber -------------------------------------------

    def retransmit(self, lost: list[int]) -> None:
        """Answer a NACK: resend the very SRTP bytes we sent (RFC 4585 section 6.2.1)."""
        self.nacks_received += 1
        link = self.link
        if not link.ready():
            return
        for seq in lost:
            packet = self.history[seq & HISTORY_MASK]
            if packet is not None and ((packet[2] << 8) | packet[3]) == seq:
                link.sendto(packet, link.addr)  # type: ignore[misc]
                self.retransmitted += 1
                self.counters.retransmitted += 1

    def keyframe_wanted(self) -> None:
        self.keyframe_requests_received += 1
        if self.source is not None:
            self.source.request_keyframe()

    def on_report(self, report: RtcpReceiverInfo) -> None:
        self.fraction_lost = report.fraction_lost
        self.packets_lost = report.packets_lost
        self.jitter = report.jitter
        if report.lsr and report.lsr == self.lsr and report.dlsr:
            rtt = time.time() - self.lsr_time - report.dlsr / 65536
            if rtt >= 0:
                self.rtt = rtt if self.rtt is None else 0.85 * self.rtt + 0.15 * rtt

    def send_sender_report(self, info: RtcpSenderInfo) -> None:
        """Translate the publisher's SR into this stream's timestamp space (lip sync, RTT)."""
        if not self.active:
            return
        sr = RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=info.ntp_timestamp,
                rtp_timestamp=(info.rtp_timestamp + self.ts_offset) & 0xFFFFFFFF,
                packet_count=self.packets & 0xFFFFFFFF,
                octet_count=self.octets & 0xFFFFFFFF,
            ),
        )
        self.lsr = (info.ntp_timestamp >> 16) & 0xFFFFFFFF
        self.lsr_time = time.time()
        self.link.send_rtcp(bytes(sr))

    def update_rate(self, now: float) -> None:
        elapsed = now - self.rate_time
        if elapsed > 0:
            self.bitrate = (self.octets - self.rate_octets) * 8 / elapsed
        self.rate_octets, self.rate_time = self.octets, now


def receiver_report_packet(link: PeerLink, inbounds: list[Inbound]) -> bytes | None:
    reports = [r for r in (i.receiver_report() for i in inbounds) if r is not None]
    if not reports:
        return None
    return bytes(RtcpRrPacket(ssrc=link.rtcp_ssrc, reports=reports))
