"""Pure helpers on raw RTP bytes.

No aiortc, no I/O: these functions run once per forwarded packet, so they work on
``bytes`` with ``struct`` and integer arithmetic instead of building packet objects.
"""

from __future__ import annotations

import struct
import time

RTP_HEADER = struct.Struct("!BBHII")
"""First 12 bytes of an RTP header: V/P/X/CC, M/PT, sequence, timestamp, SSRC."""

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
ONE_BYTE_PROFILE = 0xBEDE
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def is_rtcp(data: bytes) -> bool:
    """RTP and RTCP share one port (RFC 5761): RTCP packet types are 192-208."""
    return len(data) >= 2 and 192 <= data[1] <= 208


def payload_offset(data: bytes) -> int:
    """Offset of the payload: fixed header, CSRCs, then the extension block if any.

    Raises ValueError when the header claims more bytes than the packet has.
    """
    b0 = data[0]
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < offset + 4:
            raise ValueError("RTP extension header truncated")
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    if offset > len(data):
        raise ValueError("RTP header longer than packet")
    return offset


def find_one_byte_extension(data: bytes, ext_id: int) -> bytes | None:
    """Value of the one-byte-header extension ``ext_id``, or None."""
    b0 = data[0]
    if not b0 & 0x10:
        return None
    start = 12 + 4 * (b0 & 0x0F)
    if ((data[start] << 8) | data[start + 1]) != ONE_BYTE_PROFILE:
        return None
    pos = start + 4
    end = pos + 4 * ((data[start + 2] << 8) | data[start + 3])
    while pos < end:
        head = data[pos]
        if head == 0:
            pos += 1
            continue
        length = (head & 0x0F) + 1
        if head >> 4 == ext_id:
            return data[pos + 1 : pos + 1 + length]
        if head >> 4 == 15:
            return None
        pos += 1 + length
    return None


def vp8_keyframe_start(data: bytes, offset: int) -> bool:
    """True if this VP8 RTP payload starts a keyframe (RFC 7741 sections 4.2 and 4.3).

    The payload descriptor must have S=1 and PID=0; the first byte of the VP8
    payload header that follows carries the inverse keyframe flag P in bit 0.
    """
    end = len(data)
    if offset >= end:
        return False
    first = data[offset]
    if not first & 0x10 or first & 0x07:
        return False
    pos = offset + 1
    if first & 0x80:  # X: extension byte follows
        if pos >= end:
            return False
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= end:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    return pos < end and not data[pos] & 0x01


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` comes after ``b`` (RFC 1982 arithmetic)."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


def abs_send_time_now() -> bytes:
    """The 24-bit abs-send-time value (6.18 fixed point NTP seconds) for now.

    The NTP epoch is 2208988800 s before the Unix epoch, a multiple of 64 s, so
    the low 6 bits of the seconds are the same in both epochs.
    """
    return (int(time.time() * 262144) & 0xFFFFFF).to_bytes(3, "big")


def one_byte_element(ext_id: int, value: bytes) -> bytes:
    """One element of a one-byte-header extension block (RFC 8285 section 4.2)."""
    if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError(f"extension id {ext_id} / length {len(value)} not one-byte")
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def extension_block(body: bytes) -> bytes:
    """Wrap one-byte elements into an extension block padded to 32-bit words."""
    pad = -len(body) & 3
    return struct.pack("!HH", ONE_BYTE_PROFILE, (len(body) + pad) >> 2) + body + b"\x00" * pad
