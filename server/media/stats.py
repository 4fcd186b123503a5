"""Values the media layer reports: per-track quality and hub-wide counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackStats:
    """Quality of one RTP stream between a participant and the server."""

    kind: str
    "'audio' or 'video'."
    direction: str
    "'up' (participant -> server) or 'down' (server -> participant)."
    peer: str | None
    "For 'down': whose media this stream carries (None if the slot is empty)."
    packets: int
    bitrate_bps: float
    "Payload bitrate over the last statistics interval (about 1 s)."
    packets_lost: int
    "Cumulative: counted by the server for 'up', reported by the participant for 'down'."
    fraction_lost: float
    "0..1 over the last report interval."
    jitter_ms: float
    rtt_ms: float | None
    "Round-trip time from SR/RR ('down' only, once the participant reported)."
    nacks: int
    "'up': NACKs the server sent; 'down': NACKs the participant sent."
    retransmissions: int
    "'up': lost packets that arrived later; 'down': packets the server resent."
    keyframe_requests: int
    "'up': PLIs the server sent; 'down': PLI/FIR the participant sent."


@dataclass(frozen=True)
class ParticipantStats:
    """Everything a connection-quality display needs about one participant."""

    room_id: str
    participant_id: str
    connection_state: str
    up: tuple[TrackStats, ...]
    down: tuple[TrackStats, ...]


@dataclass(frozen=True)
class HubCounters:
    """Process-wide counters of the media hub."""

    forwarded_packets: int
    retransmitted_packets: int
    keyframe_requests: int
    dropped_packets: int
    decoded_frames: int
    "Frames handed to a decoder by any server-side receiver, plus running decoder threads: must stay 0."
    encoders: int
    "Server-side senders that created an encoder: must stay 0."


@dataclass(frozen=True)
class RemoteSlot:
    """Where a participant sees another one: the mids of its transceivers."""

    audio_mid: str | None
    video_mid: str | None
