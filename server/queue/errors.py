"""Typed errors of the waiting-room core.

Each error carries a stable ``code`` (what API clients match on) and a message for people. The
HTTP and socket.io layers map them to responses in one place (``server.errors``); nothing else
decides how an error looks on the wire.
"""


class QueueError(Exception):
    """Base class: a command was refused and nothing changed."""

    code = "error"
    status = 400

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.code)


class InvalidInput(QueueError):
    """The request is malformed or a field is out of range."""

    code = "invalid_input"


class UnknownDepartment(QueueError):
    """No such department."""

    code = "unknown_department"
    status = 404


class DepartmentClosed(QueueError):
    """The department is closed now."""

    code = "department_closed"
    status = 409


class QueueFull(QueueError):
    """The department's queue is full."""

    code = "queue_full"
    status = 409


class QueueEmpty(QueueError):
    """Nobody is waiting in this department."""

    code = "queue_empty"
    status = 409


class TicketNotFound(QueueError):
    """No such ticket (or the token is wrong or expired)."""

    code = "ticket_not_found"
    status = 404


class IllegalTransition(QueueError):
    """The ticket is not in a state that allows this action."""

    code = "illegal_transition"
    status = 409


class NotYourTicket(QueueError):
    """Another clerk is handling this ticket."""

    code = "not_your_ticket"
    status = 409


class NotAuthorised(QueueError):
    """You may not do this."""

    code = "forbidden"
    status = 403


class NotAuthenticated(QueueError):
    """Log in first (or the session expired)."""

    code = "unauthenticated"
    status = 401


class AlreadyQueued(QueueError):
    """This browser already holds an active ticket."""

    code = "already_queued"
    status = 409


class RateLimited(QueueError):
    """Too many requests from this address; try again later. ``retry_after``: in how many seconds, if known
    (the answer then carries it as ``Retry-After`` and ``error.retry_after``: server/errors.py)."""

    code = "rate_limited"
    status = 429
    retry_after: int | None = None


class Conflict(QueueError):
    """The state changed concurrently too often; try again."""

    code = "conflict"
    status = 409


class AnswerTimeRunning(QueueError):
    """The called citizen's time to answer is still running: "no-show" is possible once it is over."""

    code = "answer_time_running"
    status = 409


class RejoinExpired(QueueError):
    """The time to rejoin the queue at the old place has passed (or the place was taken back once already)."""

    code = "rejoin_expired"
    status = 409


class JoinLimited(RateLimited):
    """Too many check-ins from this address; ``retry_after`` says in how many seconds one is possible again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
