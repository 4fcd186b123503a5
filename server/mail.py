"""E-mail through the configured SMTP server (``[smtp]``): appointment confirmations and reminders.

Uses the standard library's ``smtplib`` in a worker thread (``asyncio.to_thread``): a few messages an hour
need no extra dependency, and the event loop never waits on the mail server. Nothing personal is logged:
failures name the message kind and the error, never the recipient.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

log = logging.getLogger("sprechstunde.mail")

SEND_TIMEOUT = 10.0
"""Seconds the mail server gets (connect, and each command): a booking waits for its confirmation at most this
long, then tells the citizen it was not sent (the link and the .ics are on the page either way)."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    sender: str
    """The From address, e.g. ``Bürgerbüro <termine@example.org>``."""
    public_url: str
    """Where citizens reach this service, e.g. ``https://termine.example.org``: links in e-mails start so."""
    port: int = 587
    starttls: bool = True
    user: str | None = None
    password: str | None = None
    ssl: bool = False
    """Implicit TLS (port 465) instead of STARTTLS."""

    def __repr__(self) -> str:  # never print the password
        return f"SmtpSettings(host={self.host!r}, port={self.port}, starttls={self.starttls})"


_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str, "port": int, "starttls": bool, "user": str, "password": str, "from": str, "public_url": str,
    "ssl": bool,
}


def parse_smtp(raw: Any) -> SmtpSettings:
    """The ``[smtp]`` table; raises ``ValueError`` naming the problem."""
    if not isinstance(raw, dict):
        raise ValueError("must be a table")
    for key, value in raw.items():
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r}")
        if not isinstance(value, _KEYS[key]) or (_KEYS[key] is int and isinstance(value, bool)):
            raise ValueError(f"{key} has the wrong type")
    for key in ("host", "from", "public_url"):
        if not str(raw.get(key, "")).strip():
            raise ValueError(f"{key} is required")
    if not str(raw["public_url"]).startswith(("https://", "http://")):
        raise ValueError("public_url must start with https:// (or http:// for tests)")
    port = raw.get("port", 465 if raw.get("ssl") else 587)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    if bool(raw.get("user")) != bool(raw.get("password")):
        raise ValueError("user and password go together")
    return SmtpSettings(
        host=raw["host"], sender=raw["from"], public_url=raw["public_url"].rstrip("/"), port=port,
        starttls=raw.get("starttls", not raw.get("ssl", False)), user=raw.get("user"),
        password=raw.get("password"), ssl=raw.get("ssl", False),
    )


def build_message(smtp: SmtpSettings, to: str, subject: str, text: str,
                  attachment: tuple[str, bytes] | None = None) -> EmailMessage:
    """A plain-text message, optionally with an iCalendar attachment ``(filename, data)``."""
    msg = EmailMessage()
    msg["From"] = smtp.sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2].strip("> ") or None)
    msg.set_content(text)
    if attachment is not None:
        name, data = attachment
        msg.add_attachment(data, maintype="text", subtype="calendar", filename=name,
                           params={"method": "PUBLISH"})
    return msg


def _send_blocking(smtp: SmtpSettings, msg: EmailMessage) -> None:
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.ssl:
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=SEND_TIMEOUT, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=SEND_TIMEOUT)
    with client:
        if smtp.starttls and not smtp.ssl:
            client.starttls(context=context)
        if smtp.user and smtp.password:
            client.login(smtp.user, smtp.password)
        client.send_message(msg)


class Mailer:
    """Sends messages through one SMTP server, each in a worker thread."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp

    async def send(self, msg: EmailMessage, kind: str) -> bool:
        """Send; False (and one log line without the recipient) when the server refused or did not answer."""
        try:
            await asyncio.wait_for(asyncio.to_thread(_send_blocking, self.smtp, msg), SEND_TIMEOUT + 2)
        except (OSError, smtplib.SMTPException, TimeoutError) as e:
            log.warning("sending the %s e-mail failed: %s", kind, type(e).__name__)
            return False
        log.info("%s e-mail sent", kind)
        return True
