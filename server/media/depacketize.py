"""Pure parts of the recorder: RTP packets in arrival order -> complete encoded frames.

No I/O, no clock of its own (``now`` is passed in), no aiortc: a reorder buffer by
extended sequence number, VP8 frame assembly (RFC 7741), Opus (one packet, one
frame, RFC 7587), and the few header fields the recorder needs (VP8 keyframe size,
Opus packet duration).
"""

from __future__ import annotations

import struct
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


def extend_seq(seq: int, highest: int | None) -> int:
    """Extend a 16-bit sequence number to the extended number nearest to ``highest``."""
    if highest is None:
        return seq
    delta = (seq - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


def extend_timestamp(ts: int, last: int | None) -> int:
    """Extend a 32-bit RTP timestamp the same way (signed distance to the last one)."""
    if last is None:
        return ts
    delta = (ts - last) & 0xFFFFFFFF
    if delta >= 0x80000000:
        delta -= 0x100000000
    return last + delta


class ReorderBuffer(Generic[T]):
    """Releases packets in sequence order; waits a little for late or repaired ones.

    A missing packet is waited for until the buffer spans ``capacity`` packets or
    the first packet held behind the hole has waited ``max_wait`` seconds (enough
    for a NACK round trip: the server asks the publisher as soon as it sees a gap,
    and the RTX repair comes back through the same receive path). Then the hole is
    skipped: the caller sees the jump in the extended sequence numbers it is given.
    Late packets (behind what was already released) and duplicates are dropped.
    """

    __slots__ = ("capacity", "max_wait", "next_seq", "held", "hole_since", "late")

    def __init__(self, capacity: int, max_wait: float) -> None:
        self.capacity = capacity
        self.max_wait = max_wait
        self.next_seq: int | None = None
        "Extended sequence number released next."
        self.held: dict[int, T] = {}
        self.hole_since = 0.0
        self.late = 0
        "Packets dropped because they came after their place was released (or twice)."

    def push(self, ext_seq: int, item: T, now: float) -> list[tuple[int, T]]:
        """Add one packet; returns the packets now releasable, in order."""
        next_seq = self.next_seq
        if next_seq is None or (ext_seq == next_seq and not self.held):
            self.next_seq = ext_seq + 1  # the common case: in order, nothing held
            return [(ext_seq, item)]
        if ext_seq < next_seq or ext_seq in self.held:
            self.late += 1
            return []
        if not self.held:
            self.hole_since = now
        self.held[ext_seq] = item
        return self._release(now)

    def poll(self, now: float) -> list[tuple[int, T]]:
        """Release what waited long enough (call when no packet comes for a while)."""
        return self._release(now) if self.held else []

    def flush(self) -> list[tuple[int, T]]:
        """Everything held, in order, holes skipped (pause, stop)."""
        out = sorted(self.held.items())
        self.held.clear()
        if out:
            self.next_seq = out[-1][0] + 1
        return out

    def reset(self) -> None:
        self.held.clear()
        self.next_seq = None

    def _release(self, now: float) -> list[tuple[int, T]]:
        out: list[tuple[int, T]] = []
        held = self.held
        seq = self.next_seq
        assert seq is not None
        while held:
            if seq in held:
                out.append((seq, held.pop(seq)))
                seq += 1
                continue
            if max(held) - seq + 1 <= self.capacity and now - self.hole_since < self.max_wait:
                break
            seq = min(held)  # give the hole up
        if held and out:
            self.hole_since = now  # the packets still held wait for a new hole from now
        self.next_seq = seq
        return out


class Vp8Descriptor(NamedTuple):
    """The fields of an RFC 7741 payload descriptor the recorder uses."""

    size: int
    "Bytes of descriptor before the VP8 payload."
    start: bool
    "S bit: the packet starts a partition."
    partition: int
    "PID: the partition index (0 for the first)."


def vp8_descriptor(payload: bytes | memoryview) -> Vp8Descriptor:
    """Parse the VP8 payload descriptor (RFC 7741 section 4.2). Raises ValueError if truncated."""
    end = len(payload)
    if end < 1:
        raise ValueError("empty VP8 payload")
    first = payload[0]
    pos = 1
    if first & 0x80:  # X: extension byte follows
        if pos >= end:
            raise ValueError("VP8 descriptor truncated")
        ext = payload[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= end:
                raise ValueError("VP8 descriptor truncated")
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    if pos > end:
        raise ValueError("VP8 descriptor truncated")
    return Vp8Descriptor(size=pos, start=bool(first & 0x10), partition=first & 0x07)


def vp8_is_keyframe(frame: bytes) -> bool:
    """The inverse keyframe bit P of the VP8 frame tag (RFC 6386 section 9.1)."""
    return len(frame) > 0 and not frame[0] & 0x01


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe header, None if not a keyframe or malformed.

    Keyframe: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height
    (little endian, the top two bits of each are a scaling hint).
    """
    if len(frame) < 10 or not vp8_is_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


_OPUS_SILK = (480, 960, 1920, 2880)
_OPUS_HYBRID = (480, 960)
_OPUS_CELT = (120, 240, 480, 960)


def opus_duration(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 section 3.1); 0 if malformed."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        per_frame = _OPUS_SILK[config & 3]
    elif config < 16:
        per_frame = _OPUS_HYBRID[config & 1]
    else:
        per_frame = _OPUS_CELT[config & 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code < 3:
        count = 2
    else:
        if len(packet) < 2:
            return 0
        count = packet[1] & 0x3F
    return per_frame * count


class Frame(NamedTuple):
    """One encoded frame, as the container stores it (a tuple: one is built per frame)."""

    data: bytes
    timestamp: int
    "RTP timestamp (32 bits, as sent)."
    keyframe: bool
    arrival: float
    "When its last packet arrived (the caller's clock)."


class RtpPacket(NamedTuple):
    """The parts of an RTP packet the assemblers need (a tuple: one is built per packet)."""

    timestamp: int
    marker: bool
    payload: bytes
    arrival: float


class Vp8Assembler:
    """In-order VP8 packets -> complete frames (RFC 7741 section 4.5).

    A frame is the packets of one RTP timestamp, from the one that starts
    partition 0 (S=1, PID=0) to the one with the marker bit, with no sequence gap.
    Any gap breaks the decoding chain (inter frames refer to earlier ones), so after
    a gap only a keyframe is accepted again: ``wants_keyframe`` tells the caller to
    ask the publisher for one.
    """

    __slots__ = ("last_seq", "parts", "timestamp", "orphan", "wants_keyframe", "broken", "dropped", "skipped")

    def __init__(self) -> None:
        self.last_seq: int | None = None
        self.parts: list[bytes] = []
        self.timestamp: int | None = None
        "RTP timestamp of the frame being assembled, None between frames."
        self.orphan: int | None = None
        "RTP timestamp of the last frame seen without its start packet (counted once)."
        self.wants_keyframe = True
        "Only a keyframe may come next (at the start and after a gap)."
        self.broken = False
        "The keyframe wait is due to a gap (its skipped frames count as dropped)."
        self.dropped = 0
        "Frames lost to gaps, broken starts, and frames skipped until the next keyframe after a gap."
        self.skipped = 0
        "Complete frames skipped while waiting for the first keyframe (start, resume)."

    def push(self, ext_seq: int, packet: RtpPacket) -> Frame | None:
        """One in-order packet; returns a frame when this packet completes one."""
        gap = self.last_seq is not None and ext_seq != self.last_seq + 1
        self.last_seq = ext_seq
        if gap:
            self._break()
        payload = packet.payload
        if not payload:
            return None  # padding only: keeps the sequence, carries nothing
        try:
            descriptor = vp8_descriptor(payload)
        except ValueError:
            self._break()
            return None
        if descriptor.start and descriptor.partition == 0:
            if self.timestamp is not None:
                self._break()  # the previous frame never saw its marker
            self.timestamp = packet.timestamp
            self.parts = []
        elif self.timestamp is None:
            # the middle of a frame whose start we did not take: lost to a gap, or joined mid-frame
            if self.broken and packet.timestamp != self.orphan:
                self.orphan = packet.timestamp
                self.dropped += 1
            return None
        elif packet.timestamp != self.timestamp:
            self._break()
            return None
        self.parts.append(payload[descriptor.size :])
        if not packet.marker:
            return None
        data = b"".join(self.parts)
        timestamp = self.timestamp
        self.parts = []
        self.timestamp = None
        keyframe = vp8_is_keyframe(data)
        if self.wants_keyframe:
            if not keyframe:
                if self.broken:
                    self.dropped += 1
                else:
                    self.skipped += 1
                return None
            self.wants_keyframe = self.broken = False
        return Frame(data=data, timestamp=timestamp, keyframe=keyframe, arrival=packet.arrival)

    def restart(self) -> None:
        """Forget the sequence and wait for a keyframe (recording resumed)."""
        self.last_seq = None
        self.parts = []
        self.timestamp = None
        self.wants_keyframe = True
        self.broken = False

    def _break(self) -> None:
        if self.timestamp is not None:
            self.dropped += 1
            self.orphan = self.timestamp  # its remaining packets are not another lost frame
        self.parts = []
        self.timestamp = None
        self.wants_keyframe = True
        self.broken = True


class OpusAssembler:
    """In-order Opus packets -> frames: one packet is one frame; a gap loses only its packets."""

    __slots__ = ("last_seq", "dropped")

    def __init__(self) -> None:
        self.last_seq: int | None = None
        self.dropped = 0

    def push(self, ext_seq: int, packet: RtpPacket) -> Frame | None:
        if self.last_seq is not None and ext_seq > self.last_seq + 1:
            self.dropped += ext_seq - self.last_seq - 1
        self.last_seq = ext_seq
        if not packet.payload:
            return None
        return Frame(data=packet.payload, timestamp=packet.timestamp, keyframe=True, arrival=packet.arrival)

    def restart(self) -> None:
        self.last_seq = None


def rtp_packet(data: bytes, offset: int, arrival: float) -> RtpPacket:
    """Header fields and payload (padding removed) of a decrypted RTP packet whose payload starts at ``offset``."""
    end = len(data)
    if data[0] & 0x20 and end > offset:
        end -= data[-1]
    return RtpPacket(
        timestamp=(data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7],
        marker=bool(data[1] & 0x80),
        payload=data[offset:end] if end > offset else b"",
        arrival=arrival,
    )
