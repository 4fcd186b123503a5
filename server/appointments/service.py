"""The appointments service: runs the pure core (``server.appointments.core``) against the store, creates the
waiting-room ticket at check-in, sends e-mails, and tells the waiting room which tickets go first.

It decides nothing itself beyond "read, decide with the core, commit (again on a conflict)". Nothing personal
is logged: ids, departments and transitions only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from icalendar import Alarm, Calendar, Event

from ..i18n import PAGE_LANGUAGES, gettext
from ..mail import Mailer, build_message
from ..queue.errors import Conflict, InvalidInput, NotAuthorised, RateLimited
from ..queue.model import Clerk, JoinRequest, Ticket
from ..rooms.departments import Department
from ..settings import Settings
from ..store.appointments import DAY_FULL, OK, SLOT_FULL, AppointmentStore
from ..waitingroom import WaitingRoom, hash_token
from . import core
from .errors import AppointmentNotFound, AppointmentStateError, BookingLimited, DayFull, SlotUnavailable
from .model import Appointment, AppointmentConfig, AppointmentEvent, AppointmentState, BookingRequest

log = logging.getLogger("sprechstunde.appointments")

COMMIT_ATTEMPTS = 8
RATE_WINDOW_SECONDS = 3600.0
RATE_PER_ADDRESS = 10
"""Bookings (and moves) from one address per hour, across departments."""
SWEEP_SECONDS = 60.0

Decide = Callable[[Appointment, AppointmentConfig, Department], tuple[Appointment, list[AppointmentEvent]]]


def appointment_link(appointment_id: str, token: str) -> str:
    """The citizen's link (relative): the token travels in the fragment, never to the server's logs."""
    return f"/appointment/{appointment_id}#{token}"


class AppointmentService:
    def __init__(self, settings: Settings, room: WaitingRoom, store: AppointmentStore,
                 mailer: Mailer | None = None, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.room = room
        self.store = store
        self.mailer = mailer
        self.clock = clock or room.clock
        self.tz = settings.tz

    # -- offers and slots --
    def offer(self, department_id: object) -> tuple[Department, AppointmentConfig]:
        d = self.room.department(department_id)
        return d, core.offer(d)

    def offering(self) -> list[Department]:
        return [d for d in self.room.departments.values() if d.appointments is not None]

    def _parse_day(self, raw: object) -> date:
        """A day like 2026-03-01 (years 2000 to 2999: further, date arithmetic overflows), else ``date.min``."""
        try:
            day = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else date.min
        except ValueError:
            return date.min
        return day if 2000 <= day.year <= 2999 else date.min

    async def days(self, department_id: str) -> list[dict[str, Any]]:
        """Days with at least one free place, with their counts."""
        d, config = self.offer(department_id)
        now = self.clock()
        out = []
        for day in core.bookable_days(config, d, now, self.tz):
            free = sum(s["free"] for s in await self._slots(d, config, day, now))
            if free:
                out.append({"date": day.isoformat(), "weekday": day.weekday(), "free": free})
        return out

    async def slots(self, department_id: str, day: object) -> list[dict[str, Any]]:
        d, config = self.offer(department_id)
        parsed = self._parse_day(day)
        if parsed == date.min:
            raise InvalidInput("day must be a date like 2026-03-01")
        return await self._slots(d, config, parsed, self.clock())

    async def _slots(self, d: Department, config: AppointmentConfig, day: date, now: float) -> list[dict[str, Any]]:
        slots = core.bookable_slots(config, d, day, now, self.tz)
        taken = await self.store.taken(d.id, [s.start for s in slots])
        day_left = config.day_cap - await self.store.day_count(d.id, day.isoformat()) if config.day_cap else None
        out = []
        for s, n in zip(slots, taken, strict=True):
            free = max(0, config.parallel - n)
            if day_left is not None:
                free = min(free, max(0, day_left))
            out.append({"start": s.start, "end": s.end, "time": s.time, "free": free,
                        "can_change": core.changeable_if_booked(config, s.start, now)})
        return out

    # -- citizen commands --
    async def book(self, department_id: str, fields: dict[str, Any], address: str) -> tuple[Appointment, str, bool]:
        """Book; returns the appointment, the citizen's token, and whether the confirmation e-mail went out."""
        d, config = self.offer(department_id)
        request = BookingRequest(**fields)
        now = self.clock()
        core.validate_booking(request)
        if self.mailer is None and request.email:
            # Without [smtp] nothing is ever sent: an address would only be stored, never used.
            request = dataclasses.replace(request, email="")
        await self._check_rate(address)
        slot = core.find_slot(config, d, request.start, now, self.tz)
        day = slot.day.isoformat()
        address_key = f"book-day:{d.id}:{day}:{address}"
        token = secrets.token_urlsafe(24)
        appointment_id = secrets.token_urlsafe(9)
        for _ in range(COMMIT_ATTEMPTS):
            try:
                appointment, events = core.book(
                    d, request, slot_taken=(await self.store.taken(d.id, [slot.start]))[0],
                    day_taken=await self.store.day_count(d.id, day),
                    address_bookings=await self.room.store.count(address_key), appointment_id=appointment_id,
                    token_hash=hash_token(token), now=now, tz=self.tz,
                )
            except RateLimited as e:  # the per-day limit: when its window ends comes from the store
                raise await self._limited(str(e), address_key) from None
            result = await self._commit(appointment, None, config)
            if result == OK:
                await self.room.store.hit(f"book:{address}", RATE_WINDOW_SECONDS)  # successful bookings only
                await self.room.store.hit(address_key, max(60.0, appointment.end - now + 3600))
                self._log(events)
                return appointment, token, await self._confirm(appointment, token)
        raise Conflict("too many concurrent changes; please try again")

    async def _limited(self, message: str, key: str) -> BookingLimited:
        return BookingLimited(message, max(1, math.ceil(await self.room.store.window_left(key))))

    async def _check_rate(self, address: str) -> None:
        """Bookings and moves from one address per hour (successful ones count); refused with when to retry."""
        if await self.room.store.count(f"book:{address}") >= RATE_PER_ADDRESS:
            raise await self._limited("too many bookings from this address; please try again later",
                                      f"book:{address}")

    async def _commit(self, new: Appointment, previous: Appointment | None, config: AppointmentConfig) -> str:
        result = await self.store.commit(new, previous, parallel=config.parallel, day_cap=config.day_cap,
                                         expires_at=core.expires_at(new, config))
        if result == SLOT_FULL:
            raise SlotUnavailable("this time has just been booked; please choose another")
        if result == DAY_FULL:
            raise DayFull("no more appointments can be booked on this day")
        return result

    async def by_token(self, token: object) -> Appointment:
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise AppointmentNotFound("appointment not found or expired")
        appointment_id = await self.store.id_for_token(hash_token(token))
        appointment = await self.store.get(appointment_id) if appointment_id else None
        if appointment is None or not secrets.compare_digest(appointment.token_hash, hash_token(token)):
            raise AppointmentNotFound("appointment not found or expired")
        return appointment

    async def _change(self, appointment_id: str, decide: Decide) -> Appointment:
        for _ in range(COMMIT_ATTEMPTS):
            current = await self.store.get(appointment_id)
            if current is None:
                raise AppointmentNotFound("appointment not found or expired")
            d = self.room.department(current.department)
            new, events = decide(current, core.offer(d), d)
            if await self._commit(new, current, core.offer(d)) == OK:
                self._log(events)
                return new
        raise Conflict("too many concurrent changes; please try again")

    async def cancel(self, token: object) -> Appointment:
        a = await self.by_token(token)
        now = self.clock()
        return await self._change(a.id, lambda cur, config, d: core.cancel(cur, config, now))

    async def move(self, token: object, start: object, address: str) -> Appointment:
        a = await self.by_token(token)
        await self._check_rate(address)
        now = self.clock()
        d, config = self.offer(a.department)
        slot = core.find_slot(config, d, start, now, self.tz)
        taken = (await self.store.taken(d.id, [slot.start]))[0]
        day_taken = await self.store.day_count(d.id, slot.day.isoformat())
        new = await self._change(a.id, lambda cur, config, d: core.move(
            cur, d, start, slot_taken=taken, day_taken=day_taken, now=now, tz=self.tz))
        await self.room.store.hit(f"book:{address}", RATE_WINDOW_SECONDS)
        return new

    async def check_in(self, token: object, address: str, existing_token: str | None) -> tuple[Appointment,
                                                                                               Ticket, str]:
        """Enter the waiting room for the appointment: a ticket marked with the appointment's time."""
        a = await self.by_token(token)
        d, config = self.offer(a.department)
        core.check_in(a, config, "-", self.clock())  # refuse outside the window before making a ticket
        request = JoinRequest(name=a.name, concern=a.concern,
                              language=a.language, consent=True)
        ticket, ticket_token = await self.room.join(d.id, request, address, existing_token=existing_token,
                                                    appointment_at=a.start)
        try:
            new = await self._change(a.id, lambda cur, config, d: core.check_in(cur, config, ticket.id, self.clock()))
        except Exception:
            await self.room.leave(ticket_token)  # someone else checked in meanwhile: no second ticket
            raise
        return new, ticket, ticket_token

    def view(self, a: Appointment) -> dict[str, Any]:
        """What the citizen's own page shows (their own name and concern included)."""
        d = self.room.departments.get(a.department)
        config = d.appointments if d else None
        opens, closes = core.checkin_window(a, config) if config else (a.start, a.start)
        return {
            "id": a.id, "department": a.department, "department_name": d.name if d else a.department,
            "start": a.start, "end": a.end, "day": a.day, "time": a.time, "state": a.state.value,
            "name": a.name, "concern": a.concern, "email": bool(a.email),
            "can_change": bool(config) and core.may_change(a, config, self.clock()),  # type: ignore[arg-type]
            "change_until": core.change_deadline(a, config) if config else None,
            "checkin_opens": opens, "checkin_closes": closes, "ticket_id": a.ticket_id,
            "start_local": datetime.fromtimestamp(a.start, self.tz).isoformat(),
        }

    # -- calendar and e-mail --
    def ics(self, a: Appointment, link: str) -> bytes:
        _ = gettext(a.language if a.language in PAGE_LANGUAGES else "de")
        d = self.room.departments.get(a.department)
        name = d.name if d else a.department
        cal = Calendar()
        cal.add("prodid", "-//Sprechstunde//Termine//DE")
        cal.add("version", "2.0")
        cal.add("method", "PUBLISH")
        event = Event()
        event.add("uid", f"{a.id}@sprechstunde")
        event.add("dtstamp", datetime.fromtimestamp(self.clock(), self.tz))
        event.add("dtstart", datetime.fromtimestamp(a.start, self.tz))
        event.add("dtend", datetime.fromtimestamp(a.end, self.tz))
        event.add("summary", _("appt.ics.summary", department=name))
        event.add("description", _("appt.ics.description", link=link))
        event.add("url", link)
        event.add("location", link)
        # A moved or cancelled appointment's file replaces the first one in a calendar (same UID): only with a
        # higher SEQUENCE (RFC 5545 3.8.7.4), and a cancelled one says so instead of showing as booked.
        cancelled = a.state is AppointmentState.CANCELLED
        event.add("sequence", a.moves + (1 if cancelled else 0))
        event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
        alarm = Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", _("appt.ics.summary", department=name))
        alarm.add("trigger", timedelta(minutes=-15))
        event.add_component(alarm)
        cal.add_component(event)
        # RFC 5545 3.2.19: every TZID used needs its VTIMEZONE (Outlook and others misplace the event without);
        # only the transitions around the appointment, not decades of them.
        day = datetime.fromtimestamp(a.start, self.tz).date()
        cal.add_missing_timezones(first_date=day - timedelta(days=366), last_date=day + timedelta(days=2))
        return cal.to_ical()

    def _when(self, a: Appointment, translate: Callable[..., str]) -> str:
        local = datetime.fromtimestamp(a.start, self.tz)
        return translate("appt.mail.when", date=f"{local:%d.%m.%Y}", time=a.time)

    async def _mail(self, a: Appointment, token: str, kind: str) -> bool:
        if self.mailer is None or not a.email:
            return False
        translate = gettext(a.language if a.language in PAGE_LANGUAGES else "de")
        d = self.room.departments.get(a.department)
        name = d.name if d else a.department
        link = self.mailer.smtp.public_url + appointment_link(a.id, token) if token else (
            self.mailer.smtp.public_url + f"/appointment/{a.id}")
        subject = translate(f"appt.mail.{kind}.subject", department=name, time=a.time)
        body = translate(f"appt.mail.{kind}.body", department=name, when=self._when(a, translate), link=link)
        msg = build_message(self.mailer.smtp, a.email, subject, body, ("termin.ics", self.ics(a, link)))
        return await self.mailer.send(msg, kind)

    async def _confirm(self, a: Appointment, token: str) -> bool:
        if not await self._mail(a, token, "confirm"):
            return False
        await self.store.claim(a.id, "confirmed", max(60.0, a.end - self.clock()))
        return True

    async def send_reminders(self) -> int:
        """Remind each booked appointment once, on whichever node gets there first (an atomic flag). The
        token is not kept, so the reminder links to the page by id; the citizen's stored link still works."""
        now = self.clock()
        sent = 0
        horizon = max((d.appointments.reminder_minutes for d in self.offering() if d.appointments), default=0)
        for a in await self.store.starting_between(now, now + horizon * 60):
            d = self.room.departments.get(a.department)
            if d is None or d.appointments is None or not core.reminder_due(a, d.appointments, now):
                continue
            if await self.store.claim(a.id, "reminded", max(60.0, a.end - now + 3600)):
                sent += await self._mail(a, "", "reminder")
        return sent

    # -- sweeps --
    async def sweep(self) -> int:
        """Mark appointments nobody came to as no-shows; delete expired ones."""
        now = self.clock()
        marked = 0
        for a in await self.store.starting_between(now - 24 * 3600, now):
            d = self.room.departments.get(a.department)
            if d is None or d.appointments is None or a.state is not AppointmentState.BOOKED:
                continue
            if now > core.checkin_window(a, d.appointments)[1]:
                try:
                    await self._change(a.id, lambda cur, config, dep: core.no_show(cur, config, now))
                    marked += 1
                except (AppointmentStateError, AppointmentNotFound):
                    continue
        await self.store.purge(now)
        return marked

    async def run(self) -> None:
        """The lifecycle loop: reminders, no-shows, retention."""
        import asyncio

        from ..tasks import stopping

        while True:
            try:
                await self.send_reminders()
                await self.sweep()
            except Exception:  # noqa: BLE001 - the loop goes on after a store or mail hiccup
                if stopping():
                    raise asyncio.CancelledError from None
                log.exception("appointments sweep failed")
            await asyncio.sleep(SWEEP_SECONDS)

    def _log(self, events: list[AppointmentEvent]) -> None:
        for e in events:
            log.info("appointment %s %s (%s %s)", e.appointment.id, e.kind, e.appointment.department,
                     e.appointment.day)

    # -- staff --
    async def staff_day(self, clerk: Clerk, department_id: str, day: object = None) -> list[dict[str, Any]]:
        d, _ = self.offer(department_id)
        if d.id not in clerk.departments:
            raise NotAuthorised(f"you do not serve {d.name}")
        parsed = self._parse_day(day) if day else datetime.fromtimestamp(self.clock(), self.tz).date()
        if parsed == date.min:
            raise InvalidInput("day must be a date like 2026-03-01")
        return await self._day(d.id, parsed.isoformat())

    async def _day(self, department_id: str, day: str) -> list[dict[str, Any]]:
        return [
            {"id": a.id, "time": a.time, "start": a.start, "end": a.end, "state": a.state.value, "name": a.name,
             "concern": a.concern, "ticket_id": a.ticket_id}
            for a in await self.store.day(department_id, day) if a.state is not AppointmentState.CANCELLED
        ]

    # -- the waiting room's hooks (server.waitingroom.AppointmentHooks) --
    async def due(self, department: str, now: float) -> tuple[list[tuple[float, str]], int, str | None]:
        d = self.room.departments.get(department)
        if d is None or d.appointments is None:
            return [], 1, None
        day = datetime.fromtimestamp(now, self.tz).date().isoformat()
        due = [(a.start, a.ticket_id) for a in await self.store.day(department, day)
               if a.state is AppointmentState.CHECKED_IN and a.ticket_id and a.start <= now]
        return due, d.appointments.every, f"appt-walkins:{department}"

    async def today(self, department: str) -> list[dict[str, Any]]:
        d = self.room.departments.get(department)
        if d is None or d.appointments is None:
            return []
        return await self._day(department, datetime.fromtimestamp(self.clock(), self.tz).date().isoformat())

    async def close(self) -> None:
        await self.store.close()
