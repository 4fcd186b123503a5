"""Typed errors of the appointments core. They are ``QueueError``s, so the HTTP layer maps them to JSON
errors in one place (``server.errors``) with a stable ``code``."""

from __future__ import annotations

from ..queue.errors import JoinLimited, QueueError


class NotOffered(QueueError):
    """This department does not offer appointments."""

    code = "appointments_not_offered"
    status = 404


class AppointmentNotFound(QueueError):
    """No such appointment (or the link is wrong or expired)."""

    code = "appointment_not_found"
    status = 404


class SlotUnavailable(QueueError):
    """This time is not bookable (taken, past, too far ahead, or not offered)."""

    code = "slot_unavailable"
    status = 409


class DayFull(QueueError):
    """No more appointments can be booked on this day."""

    code = "day_full"
    status = 409


class DeadlinePassed(QueueError):
    """The appointment can no longer be cancelled or moved."""

    code = "deadline_passed"
    status = 409


class CheckInNotOpen(QueueError):
    """The waiting room opens for this appointment shortly before its time."""

    code = "checkin_not_open"
    status = 409


class CheckInClosed(QueueError):
    """The time to join for this appointment has passed."""

    code = "checkin_closed"
    status = 409


class AppointmentStateError(QueueError):
    """The appointment is not in a state that allows this."""

    code = "appointment_state"
    status = 409


class BookingLimited(JoinLimited):
    """Too many bookings (or moves) from this address (429 ``rate_limited``); ``retry_after`` says in how many
    seconds the limit's window ends, as for check-ins (``Retry-After`` header and ``error.retry_after``)."""
