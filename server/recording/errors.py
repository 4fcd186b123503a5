"""Typed errors of the recording core; they map to the wire like the queue's (``server.errors``)."""

from ..queue.errors import QueueError


class RecordingOff(QueueError):
    """This department does not allow recordings."""

    code = "recording_off"
    status = 409


class AlreadyRecording(QueueError):
    """A recording of this consultation is already asked for or running."""

    code = "already_recording"
    status = 409


class RecordingEnded(QueueError):
    """This recording has ended."""

    code = "recording_ended"
    status = 409


class NotAParticipant(QueueError):
    """You are not a participant of this recording."""

    code = "not_a_participant"
    status = 403


class AlreadyAnswered(QueueError):
    """You have already answered this request."""

    code = "already_answered"
    status = 409


class ConsentWithdrawn(QueueError):
    """You withdrew your consent; this recording cannot ask you again."""

    code = "consent_withdrawn"
    status = 409


class NotAgreed(QueueError):
    """There is no consent of yours to withdraw."""

    code = "not_agreed"
    status = 409


class RecordingNotFound(QueueError):
    """No such recording."""

    code = "recording_not_found"
    status = 404
