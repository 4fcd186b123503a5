"""The appointments core, table-driven: slots, every legal and illegal move, limits, deadlines, the check-in
window, no-shows; the config's parsing; and the queue's priority rule for appointment tickets."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from server.appointments import core
from server.appointments.errors import (
    AppointmentStateError,
    CheckInClosed,
    CheckInNotOpen,
    DayFull,
    DeadlinePassed,
    NotOffered,
    SlotUnavailable,
)
from server.appointments.model import Appointment, AppointmentConfig, AppointmentState, BookingRequest
from server.queue import core as queue_core
from server.queue.errors import DepartmentClosed, InvalidInput, QueueEmpty, QueueFull, RateLimited
from server.queue.model import JoinRequest
from server.rooms.departments import Closure, Department, parse_hours
from server.settings import ConfigError, settings_from_dict

TZ = ZoneInfo("Europe/Berlin")
MIN = 60.0


def at(day: int, hour: int, minute: int = 0) -> float:
    """Epoch seconds of a local time in March 2026 (2026-03-02 is a Monday)."""
    return datetime(2026, 3, day, hour, minute, tzinfo=TZ).timestamp()


NOW = at(2, 8)  # Monday 08:00
CONFIG = AppointmentConfig(
    hours=parse_hours({"mon": "09:00-10:00", "wed": "14:00-15:00, 16:00-16:40"}), slot_minutes=20, parallel=2,
    days_ahead=14, min_notice_minutes=60, cancel_minutes=120, checkin_minutes=10, late_minutes=15,
    per_address_day=2, day_cap=0,
)
DEPT = Department("buergerbuero", "Bürgerbüro", appointments=CONFIG,
                  closures=(Closure(date(2026, 3, 9), date(2026, 3, 9), "Betriebsausflug"),))
PLAIN = Department("bauamt", "Bauamt")


def request(start: float, **kw: object) -> BookingRequest:
    return BookingRequest(start=start, consent=True, **kw)  # type: ignore[arg-type]


def booked(start: float = at(4, 14, 20), state: AppointmentState = AppointmentState.BOOKED) -> Appointment:
    a, _ = core.book(DEPT, request(at(4, 14, 20)), slot_taken=0, day_taken=0, address_bookings=0,
                     appointment_id="a1", token_hash="h", now=NOW, tz=TZ)
    if start != a.start:
        a = a.replace(start=start, end=start + 20 * MIN)
    return a.replace(state=state)


# -- slots --
@pytest.mark.parametrize(("day", "times"), [
    (date(2026, 3, 2), ["09:00", "09:20", "09:40"]),           # Monday: one window
    (date(2026, 3, 3), []),                                     # Tuesday: none
    (date(2026, 3, 4), ["14:00", "14:20", "14:40", "16:00", "16:20"]),  # Wednesday: two windows
    (date(2026, 3, 9), []),                                     # a closure day
])
def test_day_slots(day: date, times: list[str]) -> None:
    assert [s.time for s in core.day_slots(CONFIG, DEPT, day, TZ)] == times


def test_slots_fit_whole_into_their_window_and_cross_daylight_saving_by_the_wall_clock() -> None:
    config = AppointmentConfig(hours=parse_hours({"sun": "01:00-04:00"}), slot_minutes=50)
    slots = core.day_slots(config, DEPT, date(2026, 3, 29), TZ)  # the clocks go forward at 02:00
    assert [s.time for s in slots] == ["01:00", "01:50"]  # 01:50 + 50 min is 03:40 summer time; 04:30 > 04:00
    assert all(s.end - s.start == 50 * MIN for s in slots)


@pytest.mark.parametrize(("now", "start", "bookable"), [
    (NOW, at(2, 9), True),                   # exactly the minimum notice
    (at(2, 8, 1), at(2, 9), False),          # less than an hour ahead
    (NOW, at(16, 9), True),                  # the last day of the horizon
    (NOW, at(18, 14), False),                # beyond days_ahead
    (at(2, 10), at(2, 9, 40), False),        # past
])
def test_bookable_by_notice_and_horizon(now: float, start: float, bookable: bool) -> None:
    slot = next(s for s in core.day_slots(CONFIG, DEPT, datetime.fromtimestamp(start, TZ).date(), TZ)
                if s.start == start)
    assert core.is_bookable(CONFIG, slot, now, TZ) is bookable


def test_bookable_days_skip_days_without_slots_and_closures() -> None:
    days = core.bookable_days(CONFIG, DEPT, NOW, TZ)
    assert days == [date(2026, 3, 2), date(2026, 3, 4), date(2026, 3, 11), date(2026, 3, 16)]


@pytest.mark.parametrize(("start", "error"), [
    (at(2, 9, 10), SlotUnavailable),   # not a slot start
    (at(3, 9), SlotUnavailable),       # no slots that day
    (at(9, 9), SlotUnavailable),       # closure
    ("09:00", InvalidInput),
    (True, InvalidInput),
    (-5, InvalidInput),
    (1e12, InvalidInput),
])
def test_find_slot_refuses(start: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        core.find_slot(CONFIG, DEPT, start, NOW, TZ)


# -- booking --
BOOK_CASES = [
    # (request overrides, slot_taken, day_taken, address_bookings, department, expected error or None)
    ({}, 0, 0, 0, DEPT, None),
    ({}, 1, 5, 1, DEPT, None),                           # one place left of two
    ({"name": "  Ada   L. ", "email": "ada@example.org", "concern": "Pass"}, 0, 0, 0, DEPT, None),
    ({}, 2, 0, 0, DEPT, SlotUnavailable),                # both places taken
    ({}, 0, 0, 2, DEPT, RateLimited),                    # this address booked that day twice already
    ({"consent": False}, 0, 0, 0, DEPT, InvalidInput),
    ({"email": "not an address"}, 0, 0, 0, DEPT, InvalidInput),
    ({"email": "a@b"}, 0, 0, 0, DEPT, InvalidInput),
    ({"name": "x" * 61}, 0, 0, 0, DEPT, InvalidInput),
    ({"concern": "x" * 501}, 0, 0, 0, DEPT, InvalidInput),
    ({"language": "xx"}, 0, 0, 0, DEPT, InvalidInput),
    ({"start": at(2, 9, 5)}, 0, 0, 0, DEPT, SlotUnavailable),
    ({}, 0, 0, 0, PLAIN, NotOffered),
]


@pytest.mark.parametrize(("changes", "slot_taken", "day_taken", "address", "department", "error"), BOOK_CASES)
def test_book(changes: dict[str, object], slot_taken: int, day_taken: int, address: int, department: Department,
              error: type[Exception] | None) -> None:
    fields: dict[str, object] = {"start": at(2, 9, 20), "consent": True, **changes}
    req = BookingRequest(**fields)  # type: ignore[arg-type]

    def run() -> tuple[Appointment, list[object]]:
        return core.book(department, req, slot_taken=slot_taken, day_taken=day_taken,  # type: ignore[return-value]
                         address_bookings=address, appointment_id="a1", token_hash="h", now=NOW, tz=TZ)

    if error is not None:
        with pytest.raises(error):
            run()
        return
    a, events = run()
    assert (a.state, a.department, a.start, a.end, a.day, a.time) == (
        AppointmentState.BOOKED, "buergerbuero", at(2, 9, 20), at(2, 9, 40), "2026-03-02", "09:20")
    assert a.name == " ".join(str(fields.get("name", "")).split())
    assert [e.kind for e in events] == ["booked"]  # type: ignore[attr-defined]


def test_day_cap() -> None:
    d = Department("x", "X", appointments=AppointmentConfig(hours=CONFIG.hours, parallel=5, day_cap=3))
    with pytest.raises(DayFull):
        core.book(d, request(at(2, 9, 20)), slot_taken=0, day_taken=3, address_bookings=0, appointment_id="a",
                  token_hash="h", now=NOW, tz=TZ)


# -- cancel, move, check-in, no-show: every state against every move --
S = AppointmentState
START = at(4, 14, 20)  # Wednesday
MOVES = {
    "cancel": lambda a, now: core.cancel(a, CONFIG, now),
    "move": lambda a, now: core.move(a, DEPT, at(11, 14), slot_taken=0, day_taken=0, now=now, tz=TZ),
    "check_in": lambda a, now: core.check_in(a, CONFIG, "t1", now),
    "no_show": lambda a, now: core.no_show(a, CONFIG, now),
}
TRANSITIONS = [
    # (state, move, now, expected new state or error)
    (S.BOOKED, "cancel", NOW, S.CANCELLED),
    (S.BOOKED, "cancel", START - 120 * MIN, S.CANCELLED),          # exactly the deadline
    (S.BOOKED, "cancel", START - 119 * MIN, DeadlinePassed),
    (S.BOOKED, "move", NOW, S.BOOKED),
    (S.BOOKED, "move", START - 119 * MIN, DeadlinePassed),
    (S.BOOKED, "check_in", START - 11 * MIN, CheckInNotOpen),
    (S.BOOKED, "check_in", START - 10 * MIN, S.CHECKED_IN),        # the window opens
    (S.BOOKED, "check_in", START + 15 * MIN, S.CHECKED_IN),        # ... and closes
    (S.BOOKED, "check_in", START + 16 * MIN, CheckInClosed),
    (S.BOOKED, "no_show", START + 15 * MIN, AppointmentStateError),  # may still come
    (S.BOOKED, "no_show", START + 16 * MIN, S.NO_SHOW),
] + [
    (state, move, when, AppointmentStateError)
    for state in (S.CHECKED_IN, S.CANCELLED, S.NO_SHOW)
    for move, when in (("cancel", NOW), ("move", NOW), ("check_in", START), ("no_show", START + 16 * MIN))
]


@pytest.mark.parametrize(("state", "move", "now", "expected"), TRANSITIONS)
def test_transitions(state: AppointmentState, move: str, now: float, expected: object) -> None:
    a = booked(START, state)
    if isinstance(expected, type):
        with pytest.raises(expected):
            MOVES[move](a, now)
        return
    new, events = MOVES[move](a, now)
    assert new.state is expected
    assert new.version == a.version + 1
    assert [e.kind for e in events] == [{"check_in": "checked_in"}.get(move, move + ("d" if move == "move" else
                                                                                   "led" if move == "cancel"
                                                                                   else ""))]
    assert events[0].previous == a


def test_check_in_records_the_ticket_and_move_the_new_slot() -> None:
    new, _ = core.check_in(booked(), CONFIG, "ticket-7", START)
    assert new.ticket_id == "ticket-7"
    moved, _ = core.move(booked(), DEPT, at(4, 16, 20), slot_taken=1, day_taken=9, now=NOW, tz=TZ)
    assert (moved.start, moved.day, moved.time, moved.moves) == (at(4, 16, 20), "2026-03-04", "16:20", 1)


@pytest.mark.parametrize(("start", "slot_taken", "day_taken", "cap", "error"), [
    (at(4, 14), 2, 0, 0, SlotUnavailable),      # the new slot is full
    (START, 0, 0, 0, InvalidInput),             # the same slot
    (at(4, 14, 30), 0, 0, 0, SlotUnavailable),  # not a slot
    (at(4, 14, 40), 0, 3, 3, None),             # same day: its own place counts, not twice
    (at(11, 14), 0, 3, 3, DayFull),             # another day that is full
])
def test_move_refusals(start: float, slot_taken: int, day_taken: int, cap: int, error: type[Exception] | None) -> None:
    d = Department("buergerbuero", "B", appointments=AppointmentConfig(
        hours=CONFIG.hours, slot_minutes=20, parallel=2, day_cap=cap))
    run = lambda: core.move(booked(), d, start, slot_taken=slot_taken, day_taken=day_taken, now=NOW, tz=TZ)  # noqa: E731
    if error is None:
        assert run()[0].start == start
    else:
        with pytest.raises(error):
            run()


def test_reminder_due_expiry_and_window() -> None:
    a = booked().replace(email="a@example.org", created_at=NOW - 2 * 86400)
    config = CONFIG  # reminder 24 h ahead
    assert not core.reminder_due(a, config, START - 24 * 3600 - 1)
    assert core.reminder_due(a, config, START - 24 * 3600)
    assert not core.reminder_due(a, config, START)                     # too late
    assert not core.reminder_due(a.replace(email=""), config, START - 60)
    assert not core.reminder_due(a.replace(created_at=START - 3600), config, START - 60)  # booked just now
    assert core.expires_at(a, config) == a.end + 24 * 3600
    assert core.checkin_window(a, config) == (START - 600, START + 900)
    assert core.may_change(a, config, NOW) and not core.may_change(a, config, START - 60)


# -- configuration --
def test_config_round_trips_and_refuses_nonsense() -> None:
    assert AppointmentConfig.from_dict(CONFIG.to_dict()) == CONFIG
    for bad in ({"hours": {}}, {"hours": {"mon": "09:00-10:00"}, "slot_minutes": 1},
                {"hours": {"mon": "09:00-10:00"}, "priority": "sometimes"},
                {"hours": {"mon": "09:00-10:00"}, "parallel": True}, {"hours": {"mon": "09:00-10:00"}, "x": 1},
                {"slot_minutes": 20}, "mon"):
        with pytest.raises(InvalidInput):
            AppointmentConfig.from_dict(bad)
    assert AppointmentConfig(hours=CONFIG.hours, priority="every", priority_every=3).every == 3
    assert CONFIG.every == 1


def test_settings_read_the_appointments_table_and_smtp() -> None:
    raw = {"departments": [{"id": "a", "name": "A", "appointments": {"hours": {"tue": "09:00-11:00"},
                                                                      "slot_minutes": 30}}],
           "smtp": {"host": "mail.example.org", "from": "termine@example.org",
                    "public_url": "https://termine.example.org/"}}
    s = settings_from_dict(raw)
    assert s.departments[0].appointments is not None and s.departments[0].appointments.slot_minutes == 30
    assert s.smtp is not None and (s.smtp.port, s.smtp.starttls, s.smtp.public_url) == (
        587, True, "https://termine.example.org")
    assert "password" not in repr(s.smtp)
    with pytest.raises(ConfigError, match="appointments"):
        settings_from_dict({"departments": [{"id": "a", "name": "A", "appointments": {"hours": {}}}]})
    with pytest.raises(ConfigError, match="smtp"):
        settings_from_dict({"departments": [{"id": "a", "name": "A"}], "smtp": {"host": "x"}})


# -- the queue: appointment tickets ahead of walk-ins --
W = [(1, "w1"), (2, "w2"), (5, "ap"), (6, "w3")]
PICK_CASES = [
    # (waiting, due, every, walkins_since, picked)
    (W, [], 1, 0, "w1"),                            # no appointment due: arrival order
    (W, [(100.0, "ap")], 1, 0, "ap"),               # strictly first
    (W, [(100.0, "ap")], 3, 0, "w1"),               # every 3rd call: two walk-ins first
    (W, [(100.0, "ap")], 3, 1, "w1"),
    (W, [(100.0, "ap")], 3, 2, "ap"),               # ... then the appointment
    (W, [(100.0, "gone")], 1, 0, "w1"),             # a due ticket no longer waiting is ignored
    ([(5, "ap"), (7, "ap2")], [(200.0, "ap2"), (100.0, "ap")], 3, 0, "ap"),  # only appointments: earliest slot
    ([(1, "w1"), (5, "ap"), (7, "ap2")], [(100.0, "ap2"), (200.0, "ap")], 1, 0, "ap2"),  # slot time, not arrival
    ([(9, "zz"), (3, "aa")], [(100.0, "zz"), (100.0, "aa")], 1, 0, "aa"),  # one slot: arrival order, not id
    ([(3, "zz"), (9, "aa")], [(100.0, "zz"), (100.0, "aa")], 1, 0, "zz"),
]


@pytest.mark.parametrize(("waiting", "due", "every", "since", "picked"), PICK_CASES)
def test_pick_next_with_appointments(waiting: list[tuple[int, str]], due: list[tuple[float, str]], every: int,
                                     since: int, picked: str) -> None:
    assert queue_core.pick_next(waiting, due, every=every, walkins_since=since) == picked


def test_pick_next_empty_and_join_of_an_appointment() -> None:
    with pytest.raises(QueueEmpty):
        queue_core.pick_next([], [(1.0, "x")])
    capped = Department("c", "C", queue_cap=1)
    args = {"request": JoinRequest(consent=True), "ticket_id": "t", "token_hash": "h", "seq": 1, "now": NOW}
    with pytest.raises(DepartmentClosed):
        queue_core.join(capped, is_open=False, waiting_count=0, **args)  # type: ignore[arg-type]
    with pytest.raises(QueueFull):
        queue_core.join(capped, is_open=True, waiting_count=1, **args)  # type: ignore[arg-type]
    ticket, _ = queue_core.join(capped, is_open=False, waiting_count=5, appointment_at=START,
                                **args)  # type: ignore[arg-type]
    assert ticket.appointment_at == START


# -- a slot inside the cancellation deadline: bookable, but not changeable online (told before booking) --
@pytest.mark.parametrize(("cancel", "notice", "minutes_ahead", "bookable", "changeable"), [
    (120, 60, 60, True, False),     # the demo's numbers: 60 .. 120 minutes ahead can never be changed online
    (120, 60, 115, True, False),
    (120, 60, 120, True, True),     # exactly the deadline: still changeable now
    (120, 60, 55, False, False),    # too soon to book at all
    (60, 120, 120, True, True),     # deadline shorter than the notice: every bookable slot is changeable
    (0, 0, 0, True, True),
])
def test_slots_within_the_deadline_are_bookable_but_not_changeable(cancel: int, notice: int, minutes_ahead: int,
                                                                   bookable: bool, changeable: bool) -> None:
    config = AppointmentConfig(hours=parse_hours({"mon": "08:00-18:00"}), slot_minutes=5, cancel_minutes=cancel,
                               min_notice_minutes=notice)
    start = NOW + minutes_ahead * MIN
    slot = next(s for s in core.day_slots(config, DEPT, date(2026, 3, 2), TZ) if s.start == start)
    assert core.is_bookable(config, slot, NOW, TZ) is bookable
    assert core.changeable_if_booked(config, start, NOW) is changeable
    if bookable:  # what /slots says is what the booked appointment's page says
        a, _ = core.book(Department("x", "X", appointments=config), request(start), slot_taken=0, day_taken=0,
                         address_bookings=0, appointment_id="a", token_hash="h", now=NOW, tz=TZ)
        assert core.may_change(a, config, NOW) is changeable


# -- control characters in names, concerns and e-mail addresses (check-in and booking) --
MEHRAN = "\u0645\u0647\u200c\u0631\u0627\u0646"  # Persian: the ZWNJ belongs to the spelling
CONTROL_CASES = [
    # (field, value, accepted value or None for refused)
    ("name", "Ada\u202eLovelace", None),           # right-to-left override
    ("name", "Ada\u202aL", None),                  # left-to-right embedding
    ("name", "Ada\u2066L\u2069", None),            # isolates
    ("name", "Ada\x00", None),                     # NUL
    ("name", "Ada\x1bL", None),                    # ESC (C0)
    ("name", "Ada\x7f", None),                     # DEL
    ("name", "Ada\x9bL", None),                    # CSI (C1)
    ("name", "Ada\ud800", None),                   # a lone surrogate (JSON allows "\ud800")
    ("concern", "Pass\u202e", None),
    ("concern", "Pass\x07verlängern", None),
    ("concern", "Reisepass\nverlängern\r\n\tbitte", "Reisepass verlängern bitte"),  # line breaks, tabs: one space
    ("name", "Ada\x85L\u2028M", "Ada L M"),        # NEL and the line separator are whitespace too
    ("name", "Ada\x0bL\x0cM", "Ada L M"),          # so are the vertical tab and the form feed (Unicode's White_Space)
    ("name", "Ada\x1fL", None),                    # an information separator (U+001C-U+001F) is not (probing:
    ("concern", "Pass\x1cport", None),             # Python's str.split took them for whitespace)
    ("name", MEHRAN + " \u200fA", MEHRAN + " \u200fA"),  # a zero-width non-joiner and a right-to-left mark stay
    ("name", "👩\u200d💻 Ada", "👩\u200d💻 Ada"),  # a joiner in an emoji stays
]


@pytest.mark.parametrize(("field", "value", "accepted"), CONTROL_CASES)
def test_control_characters_are_refused_naming_the_field(field: str, value: str, accepted: str | None) -> None:
    check_in = lambda: queue_core.validate_join(PLAIN, JoinRequest(consent=True, **{field: value}))  # noqa: E731
    booking = lambda: core.validate_booking(request(at(2, 9), **{field: value}))  # noqa: E731
    for validate in (check_in, booking):
        if accepted is None:
            with pytest.raises(InvalidInput, match=rf"^{field} contains a control character \(U\+[0-9A-F]{{4}}\)"):
                validate()
        else:
            assert getattr(validate(), field) == accepted


def test_a_control_character_in_an_email_address_is_refused() -> None:
    with pytest.raises(InvalidInput, match="^email contains a control character"):
        core.validate_booking(request(at(2, 9), email="ada\x00@example.org"))
