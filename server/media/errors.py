"""Typed errors of the media layer."""


class MediaError(Exception):
    """Base class of the errors the media layer raises."""


class UnsupportedOffer(MediaError):
    """The offer cannot be served: no VP8 for video, no Opus for audio, or no BUNDLE."""


class UnknownParticipant(MediaError):
    """No such participant in that room."""
