"""The appointments state machine and slot arithmetic: pure functions, ``now`` passed in.

States and moves (anything else raises ``AppointmentStateError``)::

    (book) -> booked -> checked_in          (check-in window: checkin_minutes before .. late_minutes after)
              booked -> cancelled           (until cancel_minutes before the slot)
              booked -> booked at another slot (move; same deadline, the new slot must be free)
              booked -> no_show             (nobody came by late_minutes after the start)

Counts of taken places (``slot_taken``, ``day_taken``) are read by the shell; the store re-checks them
atomically when it writes, so two nodes never both get the last place.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..queue.core import LANGUAGES, MAX_CONCERN, MAX_NAME, _clean
from ..queue.errors import InvalidInput, RateLimited
from ..rooms.departments import Department
from .errors import (
    AppointmentStateError,
    CheckInClosed,
    CheckInNotOpen,
    DayFull,
    DeadlinePassed,
    NotOffered,
    SlotUnavailable,
)
from .model import (
    Appointment,
    AppointmentConfig,
    AppointmentEvent,
    AppointmentState,
    BookingRequest,
    Slot,
)

MAX_EMAIL = 254
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[^@\s<>\"',;]+@{_LABEL}(?:\.{_LABEL})+$")

B = AppointmentState.BOOKED
Result = tuple[Appointment, list[AppointmentEvent]]


def offer(department: Department) -> AppointmentConfig:
    """The department's appointment offer; raises ``NotOffered``."""
    config = getattr(department, "appointments", None)
    if config is None:
        raise NotOffered(f"{department.name} does not offer appointments")
    return config


def _local_day(ts: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def day_slots(config: AppointmentConfig, department: Department, day: date, tz: ZoneInfo) -> list[Slot]:
    """Every slot of a local day (none on a closure day), earliest first."""
    if department.closure_on(day) is not None or config.hours.slots is None:
        return []
    length = config.slot_minutes * 60
    out = []
    for start, end in config.hours.slots[day.weekday()]:
        window_end = (datetime.combine(day + timedelta(days=1), time(0), tz) if end == time.max
                      else datetime.combine(day, end, tz)).timestamp()
        at = datetime.combine(day, start, tz).timestamp()
        while at + length <= window_end:  # real minutes: a slot across a clock change still lasts its length
            out.append(Slot(at, at + length, day, f"{datetime.fromtimestamp(at, tz):%H:%M}"))
            at += length
    return sorted(out, key=lambda s: s.start)


def last_day(config: AppointmentConfig, now: float, tz: ZoneInfo) -> date:
    return _local_day(now, tz) + timedelta(days=config.days_ahead)


def is_bookable(config: AppointmentConfig, slot: Slot, now: float, tz: ZoneInfo) -> bool:
    """Far enough ahead (``min_notice_minutes``) and not beyond ``days_ahead``; places not counted."""
    return slot.start >= now + config.min_notice_minutes * 60 and slot.day <= last_day(config, now, tz)


def bookable_slots(config: AppointmentConfig, department: Department, day: date, now: float,
                   tz: ZoneInfo) -> list[Slot]:
    return [s for s in day_slots(config, department, day, tz) if is_bookable(config, s, now, tz)]


def bookable_days(config: AppointmentConfig, department: Department, now: float, tz: ZoneInfo) -> list[date]:
    """Days from today to ``days_ahead`` with at least one bookable slot (taken places not counted)."""
    today = _local_day(now, tz)
    days = (today + timedelta(days=i) for i in range(config.days_ahead + 1))
    return [d for d in days if bookable_slots(config, department, d, now, tz)]


def find_slot(config: AppointmentConfig, department: Department, start: object, now: float,
              tz: ZoneInfo) -> Slot:
    """The bookable slot starting at ``start`` (epoch seconds); raises ``SlotUnavailable``."""
    if not isinstance(start, int | float) or isinstance(start, bool) or not 0 < start < 1e11:
        raise InvalidInput("start must be a time in epoch seconds")
    for slot in day_slots(config, department, _local_day(float(start), tz), tz):
        if slot.start == start:
            if not is_bookable(config, slot, now, tz):
                raise SlotUnavailable("this time can no longer be booked (or not yet)")
            return slot
    raise SlotUnavailable("no appointment starts at this time")


def validate_booking(request: BookingRequest) -> BookingRequest:
    """Check and normalise what the citizen entered; raises ``InvalidInput``."""
    if request.consent is not True:
        raise InvalidInput("the privacy notice must be accepted")
    name = _clean(request.name, MAX_NAME, "name")
    concern = _clean(request.concern, MAX_CONCERN, "concern")
    email = _clean(request.email, MAX_EMAIL, "email")
    if email and not _EMAIL.match(email):
        raise InvalidInput("the e-mail address is not valid")
    if request.language not in LANGUAGES:
        raise InvalidInput(f"unsupported language {request.language!r}")
    return BookingRequest(request.start, name, concern, email, request.language, True)


def _check_places(config: AppointmentConfig, slot_taken: int, day_taken: int) -> None:
    if slot_taken >= config.parallel:
        raise SlotUnavailable("this time has just been booked; please choose another")
    if config.day_cap and day_taken >= config.day_cap:
        raise DayFull("no more appointments can be booked on this day")


def book(
    department: Department,
    request: BookingRequest,
    *,
    slot_taken: int,
    day_taken: int,
    address_bookings: int,
    appointment_id: str,
    token_hash: str,
    now: float,
    tz: ZoneInfo,
) -> Result:
    """A citizen books a slot. ``address_bookings``: bookings from their address for that department day."""
    config = offer(department)
    request = validate_booking(request)
    slot = find_slot(config, department, request.start, now, tz)
    if address_bookings >= config.per_address_day:
        raise RateLimited("too many appointments from this address on this day")
    _check_places(config, slot_taken, day_taken)
    appointment = Appointment(
        id=appointment_id, token_hash=token_hash, department=department.id, start=slot.start, end=slot.end,
        day=slot.day.isoformat(), time=slot.time, state=B, created_at=now, name=request.name,
        concern=request.concern, email=request.email, language=request.language,
    )
    return appointment, [AppointmentEvent("booked", appointment)]


def _require(appointment: Appointment, action: str) -> None:
    if appointment.state is not B:
        raise AppointmentStateError(f'cannot {action} an appointment that is "{appointment.state.value}"')


def change_deadline(appointment: Appointment, config: AppointmentConfig) -> float:
    """Until when the citizen may cancel or move (epoch seconds)."""
    return appointment.start - config.cancel_minutes * 60


def changeable_if_booked(config: AppointmentConfig, start: float, now: float) -> bool:
    """Whether a slot booked (or moved to) now could still be cancelled or moved online. Not when it starts
    within ``cancel_minutes`` (possible when that is longer than ``min_notice_minutes``): the slot stays
    bookable, and the citizen is told before booking that it cannot be changed online."""
    return now <= start - config.cancel_minutes * 60


def may_change(appointment: Appointment, config: AppointmentConfig, now: float) -> bool:
    return appointment.state is B and now <= change_deadline(appointment, config)


def _require_deadline(appointment: Appointment, config: AppointmentConfig, now: float) -> None:
    if now > change_deadline(appointment, config):
        raise DeadlinePassed("the appointment can no longer be changed online; please contact the office")


def cancel(appointment: Appointment, config: AppointmentConfig, now: float) -> Result:
    _require(appointment, "cancel")
    _require_deadline(appointment, config, now)
    new = appointment.replace(state=AppointmentState.CANCELLED, version=appointment.version + 1)
    return new, [AppointmentEvent("cancelled", new, appointment)]


def move(
    appointment: Appointment,
    department: Department,
    start: object,
    *,
    slot_taken: int,
    day_taken: int,
    now: float,
    tz: ZoneInfo,
) -> Result:
    """Move a booked appointment to another free slot of its department (before the deadline)."""
    config = offer(department)
    _require(appointment, "move")
    _require_deadline(appointment, config, now)
    slot = find_slot(config, department, start, now, tz)
    if slot.start == appointment.start:
        raise InvalidInput("the appointment is at this time already")
    same_day = slot.day.isoformat() == appointment.day
    _check_places(config, slot_taken, day_taken - 1 if same_day else day_taken)
    new = appointment.replace(start=slot.start, end=slot.end, day=slot.day.isoformat(), time=slot.time,
                              version=appointment.version + 1, moves=appointment.moves + 1)
    return new, [AppointmentEvent("moved", new, appointment)]


def checkin_window(appointment: Appointment, config: AppointmentConfig) -> tuple[float, float]:
    """From when until when the link lets the citizen into the waiting room."""
    return appointment.start - config.checkin_minutes * 60, appointment.start + config.late_minutes * 60


def check_in(appointment: Appointment, config: AppointmentConfig, ticket_id: str, now: float) -> Result:
    """booked -> checked_in: shortly before the slot, the citizen enters the waiting room."""
    _require(appointment, "join with")
    opens, closes = checkin_window(appointment, config)
    if now < opens:
        raise CheckInNotOpen("the waiting room opens for your appointment shortly before its time")
    if now > closes:
        raise CheckInClosed("the time to join for this appointment has passed")
    new = appointment.replace(state=AppointmentState.CHECKED_IN, ticket_id=ticket_id,
                              version=appointment.version + 1)
    return new, [AppointmentEvent("checked_in", new, appointment)]


def no_show(appointment: Appointment, config: AppointmentConfig, now: float) -> Result:
    """booked -> no_show once the check-in window has closed."""
    _require(appointment, "mark as no-show")
    if now <= checkin_window(appointment, config)[1]:
        raise AppointmentStateError("the citizen may still join")
    new = appointment.replace(state=AppointmentState.NO_SHOW, version=appointment.version + 1)
    return new, [AppointmentEvent("no_show", new, appointment)]


def expires_at(appointment: Appointment, config: AppointmentConfig | None) -> float:
    """When the appointment and its personal data are deleted."""
    hours = config.retention_hours if config else 24
    return appointment.end + hours * 3600


def reminder_due(appointment: Appointment, config: AppointmentConfig, now: float) -> bool:
    """An e-mail reminder is due: booked, with an address, within ``reminder_minutes`` of the start, not
    yet begun, and booked before the reminder time (a late booking got its confirmation just now)."""
    send_at = appointment.start - config.reminder_minutes * 60
    return (appointment.state is B and bool(appointment.email) and send_at <= now < appointment.start
            and appointment.created_at < send_at)
