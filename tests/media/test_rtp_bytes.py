"""Table-driven tests of the pure RTP byte helpers."""

from __future__ import annotations

import struct

import pytest

from server.media.rtp_bytes import (
    extension_block,
    find_one_byte_extension,
    is_rtcp,
    one_byte_element,
    payload_offset,
    seq_newer,
    vp8_keyframe_start,
)


def rtp(payload: bytes, ext: bytes = b"", csrc: int = 0, pt: int = 96) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0) | csrc
    return struct.pack("!BBHII", b0, pt, 1, 2, 3) + bytes(4 * csrc) + ext + payload


@pytest.mark.parametrize(
    "descriptor_and_header, keyframe",
    [
        (bytes([0x10, 0x00]), True),  # S=1 PID=0, no X; P=0
        (bytes([0x10, 0x01]), False),  # interframe
        (bytes([0x00, 0x00]), False),  # not a partition start
        (bytes([0x11, 0x00]), False),  # PID=1
        (bytes([0x90, 0x80, 0x12, 0x00]), True),  # X, I with 7-bit picture id
        (bytes([0x90, 0x80, 0x92, 0x34, 0x00]), True),  # X, I with 15-bit picture id
        (bytes([0x90, 0x80, 0x92, 0x34, 0x01]), False),
        (bytes([0x90, 0xE0, 0x12, 0x05, 0x40, 0x00]), True),  # I, L, T
        (bytes([0x90, 0x80, 0x92]), False),  # truncated
        (b"", False),
    ],
)
def test_vp8_keyframe_start(descriptor_and_header, keyframe):
    packet = rtp(descriptor_and_header)
    assert vp8_keyframe_start(packet, 12) is keyframe


def test_payload_offset_skips_csrcs_and_extensions():
    ext = extension_block(one_byte_element(1, b"0") + one_byte_element(3, b"\x01\x02\x03"))
    assert payload_offset(rtp(b"xy")) == 12
    assert payload_offset(rtp(b"xy", csrc=2)) == 20
    packet = rtp(b"xy", ext=ext)
    assert packet[payload_offset(packet) :] == b"xy"
    with pytest.raises(ValueError):
        payload_offset(rtp(b"", ext=struct.pack("!HH", 0xBEDE, 9)))


def test_find_one_byte_extension():
    ext = extension_block(one_byte_element(1, b"10") + one_byte_element(2, b"\x85"))
    packet = rtp(b"payload", ext=ext)
    assert find_one_byte_extension(packet, 1) == b"10"
    assert find_one_byte_extension(packet, 2) == b"\x85"
    assert find_one_byte_extension(packet, 3) is None
    assert find_one_byte_extension(rtp(b"payload"), 1) is None


@pytest.mark.parametrize(
    "a, b, newer",
    [(1, 0, True), (0, 1, False), (0, 65535, True), (65535, 0, False), (5, 5, False), (0x8000, 0, False)],
)
def test_seq_newer_wraps(a, b, newer):
    assert seq_newer(a, b) is newer


@pytest.mark.parametrize("second_byte, rtcp", [(200, True), (201, True), (206, True), (96, False), (224, False)])
def test_is_rtcp(second_byte, rtcp):
    assert is_rtcp(bytes([0x80, second_byte, 0, 0])) is rtcp


def test_extension_block_is_word_aligned():
    block = extension_block(one_byte_element(1, b"1"))
    assert len(block) % 4 == 0 and block[:2] == b"\xbe\xde" and block[3] == (len(block) - 4) // 4
    with pytest.raises(ValueError):
        one_byte_element(15, b"x")


async def test_tone_track_runs_in_real_time() -> None:
    """The test peers' microphone gives 20 ms of 48 kHz audio per frame, paced at wall speed (it once
    relabelled 8 kHz frames as 48 kHz and so sent a sixth of real time)."""
    import time

    from .peers import ToneTrack

    tone = ToneTrack()
    frames = [await tone.recv() for _ in range(26)]
    assert tone.start is not None
    elapsed = time.time() - tone.start
    assert all(f.sample_rate == 48000 and f.samples == 960 for f in frames)
    assert [f.pts for f in frames[:3]] == [0, 960, 1920]
    assert elapsed >= 0.49  # 25 frames after the first: 0.5 s of audio took at least that long
