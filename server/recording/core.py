"""The recording consent state machine: every command is a pure function returning (recording, events).

States and moves (anything else raises a typed error naming why)::

    (request) -> asking --every participant agreed--> recording
    recording --someone joins--> paused --they agree--> recording
    asking | recording | paused --declined, withdrawn, an agreed participant left, stopped by the clerk,
                                   consultation ended, writer failed--> stopped

Consent is asked of every participant in their own browser, the clerk who asked included; an on-screen
notice is not consent (DSK Orientierungshilfe Videokonferenzsysteme 2020). Nothing is recorded unless
the state is ``recording``. The consent log only grows; it names participants by ticket id or staff
username, never by display name. No function here awaits, reads a clock or touches storage.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..queue.errors import InvalidInput, NotAuthorised
from .errors import (
    AlreadyAnswered,
    AlreadyRecording,
    ConsentWithdrawn,
    NotAgreed,
    NotAParticipant,
    RecordingEnded,
    RecordingOff,
)
from .model import (
    Answer,
    Composition,
    ConsentEntry,
    ConsentText,
    Participant,
    Recording,
    RecordingEvent,
    RecordingPolicy,
    RecordingState,
)

ASKING, RECORDING, PAUSED, STOPPED = (
    RecordingState.ASKING,
    RecordingState.RECORDING,
    RecordingState.PAUSED,
    RecordingState.STOPPED,
)
ROLES = frozenset({"citizen", "clerk", "guest"})
DAY = 86400.0

Result = tuple[Recording, list[RecordingEvent]]

TEXT_VERSION = "2026-11"
"""Version of the consent text template; bump it whenever the wording below changes."""

_TEMPLATES = {
    "de": (
        "Einwilligung in die Aufzeichnung dieses Gesprächs ({department}).\n"
        "Zweck: {purpose}\n"
        "Die Aufzeichnung enthält Bild und Ton aller Teilnehmenden. Sie wird {days} Tage nach dieser "
        "Anfrage gelöscht, zusammen mit dem Nachweis Ihrer Einwilligung. Nur die Leitung der Abteilung und "
        "die aufzeichnende Person können sie ansehen; jeder Zugriff wird protokolliert.\n"
        "Die Einwilligung ist freiwillig. Wenn Sie ablehnen, wird nicht aufgezeichnet und das Gespräch geht "
        "ganz normal weiter. Sie können Ihre Einwilligung jederzeit widerrufen; die Aufzeichnung endet dann "
        "sofort."
    ),
    "en": (
        "Consent to recording this conversation ({department}).\n"
        "Purpose: {purpose}\n"
        "The recording contains the picture and sound of everyone taking part. It is deleted {days} days "
        "after this request, together with the proof of your consent. Only the department's lead and the "
        "person recording can view it; every access is logged.\n"
        "Consent is voluntary. If you decline, nothing is recorded and the conversation goes on as usual. You "
        "can withdraw your consent at any time; the recording then ends at once."
    ),
}
TEXT_LANGUAGES = frozenset(_TEMPLATES)


def consent_text(policy: RecordingPolicy, department_name: str, language: str) -> ConsentText:
    """The text a participant is shown, in their language (German when we have no translation)."""
    lang = language if language in _TEMPLATES else "de"
    text = _TEMPLATES[lang].format(department=department_name, purpose=policy.purpose, days=policy.retention_days)
    return ConsentText.of(f"{TEXT_VERSION}-{lang}", text)


def _live(rec: Recording) -> None:
    if not rec.state.is_live:
        raise RecordingEnded(f'recording {rec.id} is "{rec.state.value}"')


def _entry(p: Participant, action: str, now: float, text: ConsentText | None = None) -> ConsentEntry:
    return ConsentEntry(p.id, p.role, action, now, text.version if text else "", text.sha256 if text else "")


def _with_text(rec: Recording, text: ConsentText) -> tuple[ConsentText, ...]:
    return rec.texts if text in rec.texts else (*rec.texts, text)


def _close_segment(rec: Recording, now: float) -> tuple[tuple[float, float | None], ...]:
    if rec.segments and rec.segments[-1][1] is None:
        return (*rec.segments[:-1], (rec.segments[-1][0], now))
    return rec.segments


def _settle(rec: Recording, now: float, events: list[RecordingEvent]) -> Recording:
    """Start or resume once every participant present has agreed."""
    if rec.state in (ASKING, PAUSED) and rec.participants and all(
        p.answer is Answer.AGREED for p in rec.participants
    ):
        kind = "started" if rec.state is ASKING else "resumed"
        rec = rec.replace(state=RECORDING, segments=(*rec.segments, (now, None)), composition=Composition.PENDING)
        events.append(RecordingEvent(kind, rec))
    return rec


def _stop(rec: Recording, reason: str, now: float, events: list[RecordingEvent]) -> Recording:
    rec = rec.replace(
        state=STOPPED,
        stopped_at=now,
        stop_reason=reason,
        segments=_close_segment(rec, now),
    )
    events.append(RecordingEvent("stopped", rec))
    return rec


def request(
    *,
    recording_id: str,
    ticket_id: str,
    department: str,
    policy: RecordingPolicy,
    requester: str,
    requester_role: str,
    present: Sequence[tuple[str, str]],
    live: Recording | None,
    now: float,
) -> Result:
    """The clerk holding a consultation asks to record it; every participant present is asked.

    ``present`` is (participant id, role) of everyone in the consultation; ``live`` the ticket's
    recording that has not stopped, if any.
    """
    if requester_role != "clerk":
        raise NotAuthorised("only the clerk holding the consultation can ask to record it")
    if not policy.allowed:
        raise RecordingOff()
    if live is not None and live.state.is_live:
        raise AlreadyRecording()
    if requester not in {p for p, _ in present}:
        raise NotAParticipant("join the consultation before asking to record it")
    for _, role in present:
        if role not in ROLES:
            raise InvalidInput(f"unknown participant role {role!r}")
    participants = tuple(Participant(p, role) for p, role in dict(present).items())
    rec = Recording(
        id=recording_id,
        ticket=ticket_id,
        department=department,
        requested_by=requester.removeprefix("staff:"),
        purpose=policy.purpose,
        retention_days=policy.retention_days,
        state=ASKING,
        created_at=now,
        expires_at=now + policy.retention_days * DAY,
        participants=participants,
        consents=tuple(_entry(p, "asked", now) for p in participants),
    )
    return rec, [RecordingEvent("asked", rec, p.id) for p in participants]


def answer(rec: Recording, participant: str, agree: bool, text: ConsentText, now: float) -> Result:
    """A participant answers the request, having been shown ``text``. A "no" ends the recording."""
    p = rec.participant(participant)
    # Before the liveness check: a withdrawal always ends the recording, so checking that first would
    # answer "ended" and never say why this participant cannot be asked again.
    if p is not None and p.answer is Answer.WITHDRAWN:
        raise ConsentWithdrawn()
    _live(rec)
    if p is None:
        raise NotAParticipant()
    if p.answer is not Answer.PENDING:
        raise AlreadyAnswered()
    new = Participant(p.id, p.role, Answer.AGREED if agree else Answer.DECLINED)
    rec = rec.replace(
        participants=tuple(new if q.id == participant else q for q in rec.participants),
        consents=(*rec.consents, _entry(p, "agreed" if agree else "declined", now, text)),
        texts=_with_text(rec, text),
    )
    events: list[RecordingEvent] = []
    if not agree:
        return _stop(rec, "declined", now, events), events
    return _settle(rec, now, events), events


def withdraw(rec: Recording, participant: str, now: float) -> Result:
    """A participant who agreed takes it back: the recording ends at once."""
    p = rec.participant(participant)
    if p is not None and p.answer is Answer.WITHDRAWN:  # before _live, as in ``answer``
        raise ConsentWithdrawn()
    _live(rec)
    if p is None:
        raise NotAParticipant()
    if p.answer is not Answer.AGREED:
        raise NotAgreed()
    rec = rec.replace(
        participants=tuple(Participant(q.id, q.role, Answer.WITHDRAWN) if q.id == participant else q
                           for q in rec.participants),
        consents=(*rec.consents, _entry(p, "withdrawn", now)),
    )
    events: list[RecordingEvent] = []
    return _stop(rec, "withdrawn", now, events), events


def joined(rec: Recording, participant: str, role: str, now: float) -> Result:
    """Someone joins the consultation while a recording is live: they are asked, recording pauses."""
    if role not in ROLES:
        raise InvalidInput(f"unknown participant role {role!r}")
    if not rec.state.is_live or rec.participant(participant) is not None:
        return rec, []
    p = Participant(participant, role)
    was_recording = rec.state is RECORDING
    rec = rec.replace(
        state=PAUSED if was_recording else rec.state,
        segments=_close_segment(rec, now),
        participants=(*rec.participants, p),
        consents=(*rec.consents, _entry(p, "asked", now)),
    )
    events = [RecordingEvent("asked", rec, participant)]
    if was_recording:
        events.append(RecordingEvent("paused", rec))
    return rec, events


def left(rec: Recording, participant: str, now: float) -> Result:
    """Someone left the consultation. One who had agreed ends the recording; one who had not answered
    yet is no longer waited for."""
    p = rec.participant(participant)
    if not rec.state.is_live or p is None:
        return rec, []
    events: list[RecordingEvent] = []
    if p.answer is Answer.AGREED:
        rec = rec.replace(consents=(*rec.consents, _entry(p, "left", now)))
        return _stop(rec, "left", now, events), events
    rec = rec.replace(
        participants=tuple(q for q in rec.participants if q.id != participant),
        consents=(*rec.consents, _entry(p, "left", now)),
    )
    if not rec.participants:
        return _stop(rec, "left", now, events), events
    rec = _settle(rec, now, events)
    if not events:  # still asking (or paused): the others' pages stop showing them as awaited (probing)
        events.append(RecordingEvent("left", rec, participant))
    return rec, events


def stop(rec: Recording, participant: str, role: str, now: float) -> Result:
    """The clerk holding the consultation stops the recording."""
    if role != "clerk":
        raise NotAuthorised("only the clerk holding the consultation can stop the recording")
    _live(rec)
    if rec.participant(participant) is None:
        raise NotAParticipant()
    events: list[RecordingEvent] = []
    return _stop(rec, "stopped", now, events), events


def end(rec: Recording, reason: str, now: float) -> Result:
    """The consultation ended (``ended``) or the recorder failed (``failed``): stop if still live."""
    if reason not in ("ended", "failed"):
        raise InvalidInput(f"unknown reason {reason!r}")
    if not rec.state.is_live:
        return rec, []
    events: list[RecordingEvent] = []
    return _stop(rec, reason, now, events), events


def composed(rec: Recording, ok: bool, duration: float, size: int, empty: bool = False) -> Recording:
    """Record the outcome of the composition job (only for a stopped recording that recorded media).
    ``empty``: the recorder wrote no frame at all (stopped before a keyframe came), so there is nothing."""
    if rec.state.is_live:
        raise RecordingEnded(f'recording {rec.id} is still "{rec.state.value}"')
    if rec.composition is Composition.NONE:
        raise InvalidInput(f"recording {rec.id} recorded nothing")
    if empty:
        return rec.replace(composition=Composition.NONE)
    if not ok:
        return rec.replace(composition=Composition.FAILED)
    return rec.replace(composition=Composition.DONE, duration=duration, size=size)


def expired(rec: Recording, now: float) -> bool:
    """The retention period has ended: delete the recording, its files and its consent records."""
    return rec.expires_at <= now
