"""Typed errors of the town-hall core; they map to the wire like the queue's (``server.errors``)."""

from ..queue.errors import QueueError


class EventNotFound(QueueError):
    """No such town-hall event."""

    code = "event_not_found"
    status = 404


class QuestionNotFound(QueueError):
    """No such question."""

    code = "question_not_found"
    status = 404


class QuestionsClosed(QueueError):
    """This event takes no questions now."""

    code = "questions_closed"
    status = 409


class EventNotLive(QueueError):
    """The event is not live."""

    code = "event_not_live"
    status = 409


class IllegalQuestionMove(QueueError):
    """The question is not in a state that allows this."""

    code = "illegal_transition"
    status = 409


class NotVotable(QueueError):
    """Only published questions can be voted on."""

    code = "not_votable"
    status = 409


class AlreadyVoted(QueueError):
    """This browser has already voted for this question."""

    code = "already_voted"
    status = 409


class NotVoted(QueueError):
    """This browser has not voted for this question."""

    code = "not_voted"
    status = 409


class NotInvited(QueueError):
    """You have not been invited on stage."""

    code = "not_invited"
    status = 403


class AudienceFull(QueueError):
    """The event has reached its audience limit."""

    code = "audience_full"
    status = 409


class NoRecording(QueueError):
    """This event has no recording."""

    code = "no_recording"
    status = 409
