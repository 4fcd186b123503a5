"""E-mail through a real SMTP server (aiosmtpd, started here on a free port): the confirmation with the link
and the .ics attachment, and the reminder sent once however often (and on however many nodes) the loop runs."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import icalendar
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from server.app import create_app
from server.appointments.service import AppointmentService
from server.http.appointments import APPOINTMENTS
from server.http.keys import ROOM
from server.mail import Mailer, parse_smtp
from server.settings import settings_from_dict
from server.store.memory import MemoryStore

from .app_fixtures import free_port
from .test_appointments_api import BOOK, SLOT, Clock, config


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
async def mail_client(aiohttp_client: Any, tmp_path: Any, smtp_server: tuple[Inbox, int]) -> Any:
    raw = config()
    raw["server"]["data_dir"] = str(tmp_path / "var")
    raw["smtp"] = {"host": "127.0.0.1", "port": smtp_server[1], "starttls": False,
                   "from": "Termine <termine@example.org>", "public_url": "https://termine.example.org"}
    clock = Clock()
    app = create_app(settings_from_dict(raw), store=MemoryStore(staff_file=tmp_path / "staff.json"),
                     announce=lambda _: None)
    app[ROOM].clock = clock
    app[APPOINTMENTS].clock = clock
    app[APPOINTMENTS].store.clock = clock  # type: ignore[attr-defined]
    client = await aiohttp_client(app)
    client.clock = clock
    return client


def attachment(msg: EmailMessage) -> bytes:
    part = next(p for p in msg.iter_attachments() if p.get_content_type() == "text/calendar")
    assert part.get_filename() == "termin.ics"
    content = part.get_content()
    return content if isinstance(content, bytes) else content.encode()


async def test_confirmation_and_one_reminder(mail_client: Any, smtp_server: tuple[Inbox, int]) -> None:
    inbox, _ = smtp_server
    page = await (await mail_client.get("/book/buergerbuero")).text()
    assert 'id="email"' in page  # with SMTP the page asks for an address
    resp = await mail_client.post("/api/appointments/buergerbuero", json={**BOOK, "email": "ada@example.org"})
    body = await resp.json()
    assert resp.status == 201 and body["email_sent"] is True
    assert len(inbox.messages) == 1 and inbox.recipients[0] == ["ada@example.org"]
    msg = inbox.messages[0]
    assert msg["Subject"] == "Ihr Termin: Bürgerbüro, 10:00 Uhr"
    link = f"https://termine.example.org/appointment/{body['appointment']['id']}#{body['token']}"
    assert link in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    event = next(iter(icalendar.Calendar.from_ical(attachment(msg)).walk("VEVENT")))
    assert event.decoded("dtstart").timestamp() == SLOT and str(event["url"]) == link

    # Without an address: no e-mail.
    await mail_client.post("/api/appointments/buergerbuero", json={**BOOK, "start": SLOT + 1800, "email": ""})
    assert len(inbox.messages) == 1

    service: AppointmentService = mail_client.app[APPOINTMENTS]
    mail_client.clock.now = SLOT - 3600  # booked at 07:00 for 10:00: the confirmation was the reminder
    assert await service.send_reminders() == 0
    assert len(inbox.messages) == 1


async def test_reminder_goes_out_once_across_nodes(mail_client: Any, smtp_server: tuple[Inbox, int]) -> None:
    inbox, _ = smtp_server
    start = SLOT + 3 * 86400  # Thursday 10:00, booked on Monday: the reminder is due on Wednesday 10:00
    resp = await mail_client.post("/api/appointments/buergerbuero",
                                  json={**BOOK, "start": start, "email": "ada@example.org"})
    assert resp.status == 201
    service: AppointmentService = mail_client.app[APPOINTMENTS]
    other_node = AppointmentService(service.settings, service.room, service.store, Mailer(service.mailer.smtp))  # type: ignore[union-attr]
    other_node.clock = service.clock
    mail_client.clock.now = start - 24 * 3600 - 60
    assert await service.send_reminders() == 0
    mail_client.clock.now = start - 24 * 3600 + 60
    sent = [await service.send_reminders(), await other_node.send_reminders(), await service.send_reminders()]
    assert sent == [1, 0, 0]
    assert len(inbox.messages) == 2
    reminder = inbox.messages[1]
    assert reminder["Subject"] == "Erinnerung: Ihr Termin um 10:00 Uhr"
    assert attachment(reminder)


async def test_a_mail_server_that_refuses_does_not_break_booking(aiohttp_client: Any, tmp_path: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    raw = config()
    raw["server"]["data_dir"] = str(tmp_path / "var")
    raw["smtp"] = {"host": "127.0.0.1", "port": free_port(), "starttls": False, "from": "t@example.org",
                   "public_url": "https://termine.example.org"}
    app = create_app(settings_from_dict(raw), store=MemoryStore(staff_file=tmp_path / "staff.json"),
                     announce=lambda _: None)
    clock = Clock()
    app[ROOM].clock = clock
    app[APPOINTMENTS].clock = clock
    app[APPOINTMENTS].store.clock = clock  # type: ignore[attr-defined]
    client = await aiohttp_client(app)
    resp = await client.post("/api/appointments/buergerbuero", json={**BOOK, "email": "ada@example.org"})
    assert resp.status == 201 and (await resp.json())["email_sent"] is False  # told the truth
    assert "sending the confirm e-mail failed" in caplog.text and "ada@example.org" not in caplog.text


def test_smtp_settings_are_checked() -> None:
    good = {"host": "mail", "from": "a@b.org", "public_url": "https://x.org"}
    assert parse_smtp({**good, "ssl": True}).port == 465
    for bad in ({**good, "port": "25"}, {**good, "user": "u"}, {**good, "public_url": "x.org"}, {"host": "mail"},
                {**good, "nope": 1}):
        with pytest.raises(ValueError):
            parse_smtp(bad)
