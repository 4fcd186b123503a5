"""Media layer: an SFU that forwards encoded RTP between participants, never decoding."""

from .errors import MediaError, UnknownParticipant, UnsupportedOffer
from .hub import MediaHub
from .recorder import RecordedTrack, RecordingStats, RoomRecorder
from .stats import HubCounters, ParticipantStats, RemoteSlot, TrackStats

__all__ = [
    "HubCounters",
    "MediaError",
    "MediaHub",
    "ParticipantStats",
    "RecordedTrack",
    "RecordingStats",
    "RemoteSlot",
    "RoomRecorder",
    "TrackStats",
    "UnknownParticipant",
    "UnsupportedOffer",
]
