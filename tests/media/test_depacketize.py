"""Table-driven tests of the recorder's pure parts: reorder buffer, VP8/Opus frame assembly, header fields."""

from __future__ import annotations

import struct

import pytest

from server.media.depacketize import (
    OpusAssembler,
    ReorderBuffer,
    RtpPacket,
    Vp8Assembler,
    extend_seq,
    extend_timestamp,
    opus_duration,
    rtp_packet,
    vp8_descriptor,
    vp8_is_keyframe,
    vp8_keyframe_size,
)


def keyframe(width: int = 320, height: int = 240, body: bytes = b"K") -> bytes:
    """A VP8 keyframe header (frame tag with P=0, start code, size) and some bytes."""
    return b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + body


def interframe(body: bytes = b"I") -> bytes:
    return b"\x31\x02\x00" + body  # P bit 1: not a keyframe


# descriptor: S=1 PID=0 with no extension; with X, I (7 and 15 bit picture id), L, T/K
DESCRIPTORS = [
    ("minimal start", b"\x10", 1, True, 0),
    ("continuation", b"\x00", 1, False, 0),
    ("partition 1 start", b"\x11", 1, True, 1),
    ("X, 7-bit picture id", b"\x90\x80\x05", 3, True, 0),
    ("X, 15-bit picture id", b"\x90\x80\x85\x21", 4, True, 0),
    ("X, picture id, TL0PICIDX, TID", b"\x90\xe0\x85\x21\x07\x40", 6, True, 0),
    ("X, only K", b"\x90\x10\x20", 3, True, 0),
    ("X, nothing set", b"\x80\x00", 2, False, 0),
]


@pytest.mark.parametrize(("name", "descriptor", "size", "start", "pid"), DESCRIPTORS, ids=[d[0] for d in DESCRIPTORS])
def test_vp8_descriptor(name, descriptor, size, start, pid):
    parsed = vp8_descriptor(descriptor + b"payload")
    assert (parsed.size, parsed.start, parsed.partition) == (size, start, pid)


@pytest.mark.parametrize("truncated", [b"", b"\x90", b"\x90\x80", b"\x90\x80\x85"])  # last: 15-bit id cut
def test_vp8_descriptor_truncated(truncated):
    with pytest.raises(ValueError):
        vp8_descriptor(truncated)


@pytest.mark.parametrize(
    ("frame", "size"),
    [
        (keyframe(320, 240), (320, 240)),
        (keyframe(1280, 720), (1280, 720)),
        (keyframe(640 | 0x4000, 480 | 0x8000), (640, 480)),  # scaling bits are not part of the size
        (interframe(), None),
        (b"\x10\x02\x00\x00\x00\x00\x40\x01\xf0\x00", None),  # bad start code
        (b"\x10\x02", None),
    ],
)
def test_vp8_keyframe_size(frame, size):
    assert vp8_keyframe_size(frame) == size


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xFC]), 960),  # config 31 (CELT 20 ms), one frame
        (bytes([0xF8 | 1]), 1920),  # two 20 ms frames
        (bytes([0x78]), 960),  # config 15: hybrid 20 ms
        (bytes([0x08]), 960),  # config 1: SILK NB 20 ms
        (bytes([0x18]), 2880),  # config 3: SILK 60 ms
        (bytes([0xE3, 0x03]), 360),  # config 28 (CELT 2.5 ms), code 3 with a count of 3 frames
        (b"", 0),
        (bytes([0xFF]), 0),  # code 3 without its frame count byte
    ],
)
def test_opus_duration(packet, samples):
    assert opus_duration(packet) == samples


@pytest.mark.parametrize(
    ("seq", "highest", "expected"),
    [
        (5, None, 5),
        (101, 100, 101),
        (99, 100, 99),
        (0, 65535, 65536),  # wrap forward
        (65535, 65536, 65535),  # late packet from before the wrap
        (3, 0x10000 + 65530, 0x20003),
    ],
)
def test_extend_seq(seq, highest, expected):
    assert extend_seq(seq, highest) == expected


def test_extend_timestamp_wraps():
    assert extend_timestamp(100, 0xFFFFFF00) == 0x100000064
    assert extend_timestamp(0xFFFFFF00, 0x100000064) == 0xFFFFFF00


# -- reorder buffer ------------------------------------------------------------------------------

REORDER_CASES = [
    # (name, [(ext_seq, arrival)], capacity, max_wait, released ext_seqs, held after)
    ("in order", [(1, 0), (2, 0), (3, 0)], 16, 0.1, [1, 2, 3], 0),
    ("swap", [(1, 0), (3, 0), (2, 0)], 16, 0.1, [1, 2, 3], 0),
    ("duplicate and late dropped", [(1, 0), (2, 0), (2, 0), (1, 0), (3, 0)], 16, 0.1, [1, 2, 3], 0),
    ("hole waits", [(1, 0), (3, 0.01), (4, 0.02)], 16, 0.1, [1], 2),
    ("hole given up after max_wait", [(1, 0), (3, 0.01), (4, 0.2)], 16, 0.1, [1, 3, 4], 0),
    ("hole given up when full", [(1, 0)] + [(s, 0) for s in range(3, 7)], 4, 10.0, [1, 3, 4, 5, 6], 0),
    ("repair arrives in time", [(1, 0), (3, 0.01), (4, 0.02), (2, 0.05), (5, 0.06)], 16, 0.1, [1, 2, 3, 4, 5], 0),
    ("jump far ahead skips at once", [(1, 0), (500, 0), (501, 0)], 128, 0.5, [1, 500, 501], 0),
]


@pytest.mark.parametrize(
    ("name", "arrivals", "capacity", "max_wait", "released", "held"),
    REORDER_CASES,
    ids=[c[0] for c in REORDER_CASES],
)
def test_reorder_buffer(name, arrivals, capacity, max_wait, released, held):
    buffer: ReorderBuffer[int] = ReorderBuffer(capacity, max_wait)
    out = []
    for seq, now in arrivals:
        out += [s for s, _ in buffer.push(seq, seq, now)]
    assert out == released
    assert len(buffer.held) == held


def test_reorder_buffer_poll_and_flush():
    buffer: ReorderBuffer[str] = ReorderBuffer(16, 0.1)
    buffer.push(10, "a", 0.0)
    buffer.push(12, "c", 0.0)
    buffer.push(14, "e", 0.0)
    assert buffer.poll(0.05) == []
    assert buffer.poll(0.2) == [(12, "c"), (14, "e")]
    buffer.push(16, "g", 0.3)
    assert buffer.flush() == [(16, "g")]
    assert buffer.push(17, "h", 0.3) == [(17, "h")]
    assert buffer.push(11, "late", 0.3) == [] and buffer.late == 1


def test_reorder_buffer_across_the_sequence_wrap():
    buffer: ReorderBuffer[int] = ReorderBuffer(16, 0.1)
    highest = None
    out = []
    for seq in (65533, 65534, 0, 65535, 1, 2):
        ext = extend_seq(seq, highest)
        highest = ext if highest is None else max(highest, ext)
        out += [s for s, _ in buffer.push(ext, seq, 0.0)]
    assert out == [65533, 65534, 65535, 65536, 65537, 65538]


# -- VP8 frame assembly -----------------------------------------------------------------------------


def vp8_packets(frame: bytes, ts: int, parts: int = 3, picture_id: int | None = None) -> list[RtpPacket]:
    """Split a frame into RTP packets with descriptors: the first S=1 PID=0, the last with the marker."""
    size = -(-len(frame) // parts)
    chunks = [frame[i : i + size] for i in range(0, len(frame), size)]
    packets = []
    for i, chunk in enumerate(chunks):
        s_bit = 0x10 if i == 0 else 0
        if picture_id is None:
            descriptor = bytes([s_bit])
        else:
            descriptor = bytes([0x80 | s_bit, 0x80, 0x80 | (picture_id >> 8), picture_id & 0xFF])
        packets.append(RtpPacket(ts, i == len(chunks) - 1, descriptor + chunk, float(ts)))
    return packets


def feed(assembler, packets, first_seq=100, skip=()):
    frames = []
    for i, packet in enumerate(packets):
        if i in skip:
            continue
        frame = assembler.push(first_seq + i, packet)
        if frame is not None:
            frames.append(frame)
    return frames


def test_vp8_frames_are_assembled_and_descriptors_stripped():
    k = keyframe(body=b"K" * 40)
    i1, i2 = interframe(b"1" * 30), interframe(b"2" * 30)
    packets = vp8_packets(k, 3000) + vp8_packets(i1, 6000, picture_id=300) + vp8_packets(i2, 9000, parts=1)
    frames = feed(Vp8Assembler(), packets)
    assert [f.data for f in frames] == [k, i1, i2]
    assert [f.timestamp for f in frames] == [3000, 6000, 9000]
    assert [f.keyframe for f in frames] == [True, False, False]


def test_vp8_starts_at_a_keyframe():
    packets = vp8_packets(interframe(), 3000) + vp8_packets(keyframe(), 6000) + vp8_packets(interframe(), 9000)
    assembler = Vp8Assembler()
    frames = feed(assembler, packets)
    assert [f.timestamp for f in frames] == [6000, 9000]
    assert assembler.skipped == 1 and assembler.dropped == 0


def test_vp8_joining_mid_frame_waits_for_the_next_start():
    packets = vp8_packets(keyframe(body=b"x" * 30), 3000) + vp8_packets(keyframe(), 6000)
    frames = feed(Vp8Assembler(), packets[1:])
    assert [f.timestamp for f in frames] == [6000]


@pytest.mark.parametrize(
    ("lost", "expected_ts", "dropped"),
    [
        (4, [3000, 12000], 2),  # middle of the first interframe: it and the next interframe are lost
        (5, [3000, 12000], 2),  # its marker packet: the frame never completes
        (6, [3000, 6000, 12000], 1),  # first packet of the second interframe: only that one is lost
    ],
)
def test_vp8_gap_waits_for_the_next_keyframe(lost, expected_ts, dropped):
    packets = (
        vp8_packets(keyframe(body=b"k" * 30), 3000)  # 0..2
        + vp8_packets(interframe(b"a" * 30), 6000)  # 3..5
        + vp8_packets(interframe(b"b" * 30), 9000)  # 6..8
        + vp8_packets(keyframe(body=b"c" * 30), 12000)  # 9..11
    )
    assembler = Vp8Assembler()
    frames = feed(assembler, packets, skip={lost})
    assert [f.timestamp for f in frames] == expected_ts
    assert assembler.dropped == dropped
    assert not assembler.wants_keyframe


def test_vp8_gap_sets_wants_keyframe_until_one_comes():
    packets = vp8_packets(keyframe(), 3000) + vp8_packets(interframe(b"a" * 9), 6000)
    assembler = Vp8Assembler()
    feed(assembler, packets, skip={4})
    assert assembler.wants_keyframe


def test_vp8_padding_keeps_the_sequence():
    packets = vp8_packets(keyframe(), 3000) + [RtpPacket(3000, False, b"", 0.0)] + vp8_packets(interframe(), 6000)
    assembler = Vp8Assembler()
    assert [f.timestamp for f in feed(assembler, packets)] == [3000, 6000]
    assert assembler.dropped == 0


def test_vp8_restart_waits_for_a_keyframe_without_counting_drops():
    assembler = Vp8Assembler()
    feed(assembler, vp8_packets(keyframe(), 3000))
    assembler.restart()
    frames = feed(assembler, vp8_packets(interframe(), 6000) + vp8_packets(keyframe(), 9000), first_seq=500)
    assert [f.timestamp for f in frames] == [9000]
    assert assembler.dropped == 0 and assembler.skipped == 1


def test_vp8_keyframe_flag():
    assert vp8_is_keyframe(keyframe()) and not vp8_is_keyframe(interframe()) and not vp8_is_keyframe(b"")


def test_opus_one_packet_one_frame_and_gaps_counted():
    assembler = OpusAssembler()
    packets = [RtpPacket(960 * i, False, bytes([0xFC, i]), 0.0) for i in range(5)]
    frames = feed(assembler, packets, skip={2, 3})
    assert [f.timestamp for f in frames] == [0, 960, 3840]
    assert all(f.keyframe for f in frames)
    assert assembler.dropped == 2


def test_rtp_packet_strips_padding():
    header = bytes([0xA0, 0xE0, 0, 1]) + struct.pack("!II", 1234, 5)  # P bit, marker, PT 96
    packet = rtp_packet(header + b"payload" + b"\x00\x00\x03", 12, 1.5)
    assert packet == RtpPacket(1234, True, b"payload", 1.5)
