"""Table-driven tests of the recording consent state machine (``server.recording.core``): every legal
move and every illegal one, the consent proof it keeps, and its serialisation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import pytest

from server.queue.errors import InvalidInput, NotAuthorised
from server.recording import core
from server.recording.errors import (
    AlreadyAnswered,
    AlreadyRecording,
    ConsentWithdrawn,
    NotAgreed,
    NotAParticipant,
    RecordingEnded,
    RecordingOff,
)
from server.recording.model import (
    Answer,
    Composition,
    ConsentEntry,
    Recording,
    RecordingMode,
    RecordingPolicy,
    RecordingState,
)

S = RecordingState
ON = RecordingPolicy(RecordingMode.ON_REQUEST, "Nachweis der Beratung", 30)
OFF = RecordingPolicy()
ANNA, CIT, BEN, CARL = "staff:anna", "citizen:t1", "staff:ben", "staff:carl"
PRESENT = ((ANNA, "clerk"), (CIT, "citizen"))
DE = core.consent_text(ON, "Bürgerbüro", "de")
EN = core.consent_text(ON, "Bürgerbüro", "en")
T0 = 1000.0


def req(*, policy: RecordingPolicy = ON, requester: str = ANNA, role: str = "clerk",
        present: tuple[tuple[str, str], ...] = PRESENT, live: Recording | None = None) -> core.Result:
    return core.request(recording_id="r1", ticket_id="t1", department="buergerbuero", policy=policy,
                        requester=requester, requester_role=role, present=present, live=live, now=T0)


def ok(result: core.Result) -> Recording:
    return result[0]


# Recordings in each state, built only with the core's own moves (times T0 .. T0+9).
def asking() -> Recording:
    return ok(req())


def anna_agreed() -> Recording:
    return ok(core.answer(asking(), ANNA, True, DE, T0 + 1))


def recording() -> Recording:
    return ok(core.answer(anna_agreed(), CIT, True, EN, T0 + 2))


def paused() -> Recording:
    return ok(core.joined(recording(), BEN, "guest", T0 + 5))


def resumed() -> Recording:
    return ok(core.answer(paused(), BEN, True, DE, T0 + 6))


def declined() -> Recording:
    return ok(core.answer(asking(), CIT, False, EN, T0 + 1))


def withdrawn() -> Recording:
    return ok(core.withdraw(recording(), CIT, T0 + 7))


def stopped() -> Recording:
    return ok(core.stop(recording(), ANNA, "clerk", T0 + 9))


STATES: dict[str, Callable[[], Recording]] = {
    "asking": asking,
    "anna agreed": anna_agreed,
    "recording": recording,
    "paused": paused,
    "resumed": resumed,
    "declined": declined,
    "withdrawn": withdrawn,
    "stopped": stopped,
}
LIVE = ("asking", "anna agreed", "recording", "paused", "resumed")
ENDED = ("declined", "withdrawn", "stopped")


def test_the_built_states_are_what_they_say() -> None:
    assert [STATES[s]().state for s in STATES] == [S.ASKING, S.ASKING, S.RECORDING, S.PAUSED, S.RECORDING,
                                                   S.STOPPED, S.STOPPED, S.STOPPED]


# -- request --
def test_request_asks_every_participant_present() -> None:
    rec, events = req(present=((ANNA, "clerk"), (CIT, "citizen"), (BEN, "guest"), (CIT, "citizen")))
    assert (rec.id, rec.ticket, rec.department, rec.requested_by, rec.state) == (
        "r1", "t1", "buergerbuero", "anna", S.ASKING)
    assert (rec.purpose, rec.retention_days, rec.created_at, rec.expires_at) == (
        ON.purpose, 30, T0, T0 + 30 * 86400)
    assert [(p.id, p.role, p.answer) for p in rec.participants] == [
        (ANNA, "clerk", Answer.PENDING), (CIT, "citizen", Answer.PENDING), (BEN, "guest", Answer.PENDING)]
    assert [(c.participant, c.action, c.at) for c in rec.consents] == [
        (ANNA, "asked", T0), (CIT, "asked", T0), (BEN, "asked", T0)]
    assert [(e.kind, e.participant) for e in events] == [("asked", ANNA), ("asked", CIT), ("asked", BEN)]
    assert all(e.recording == rec for e in events)
    assert (rec.segments, rec.texts, rec.composition, rec.stopped_at, rec.stop_reason) == (
        (), (), Composition.NONE, None, None)


@pytest.mark.parametrize("previous", ENDED)
def test_request_after_a_stopped_recording_is_allowed(previous: str) -> None:
    rec, _ = req(live=STATES[previous]())
    assert rec.state is S.ASKING


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"role": "citizen", "requester": CIT}, NotAuthorised),
        ({"role": "guest", "requester": BEN}, NotAuthorised),
        ({"role": "lead"}, NotAuthorised),
        ({"role": "citizen", "requester": CIT, "policy": OFF}, NotAuthorised),  # who asks is checked first
        ({"policy": OFF}, RecordingOff),
        ({"live": asking()}, AlreadyRecording),
        ({"live": anna_agreed()}, AlreadyRecording),
        ({"live": recording()}, AlreadyRecording),
        ({"live": paused()}, AlreadyRecording),
        ({"requester": CARL}, NotAParticipant),  # not in the consultation
        ({"present": ()}, NotAParticipant),
        ({"present": ((ANNA, "clerk"), (CIT, "visitor"))}, InvalidInput),
        ({"present": ((ANNA, "Clerk"),)}, InvalidInput),
    ],
)
def test_request_refusals(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        req(**kwargs)


# -- every legal move from every state: (state, move, new state, event kinds, stop reason) --
Move = Callable[[Recording], core.Result]
T = T0 + 20

LEGAL: list[tuple[str, str, Move, S, list[str], str | None]] = [
    ("asking", "clerk agrees", lambda r: core.answer(r, ANNA, True, DE, T), S.ASKING, [], None),
    ("asking", "citizen agrees first", lambda r: core.answer(r, CIT, True, EN, T), S.ASKING, [], None),
    ("asking", "clerk declines", lambda r: core.answer(r, ANNA, False, DE, T), S.STOPPED, ["stopped"], "declined"),
    ("asking", "citizen declines", lambda r: core.answer(r, CIT, False, EN, T), S.STOPPED, ["stopped"],
     "declined"),
    ("anna agreed", "last one agrees", lambda r: core.answer(r, CIT, True, EN, T), S.RECORDING, ["started"], None),
    ("anna agreed", "last one declines", lambda r: core.answer(r, CIT, False, EN, T), S.STOPPED, ["stopped"],
     "declined"),
    ("anna agreed", "agreed one withdraws before the start", lambda r: core.withdraw(r, ANNA, T), S.STOPPED,
     ["stopped"], "withdrawn"),
    ("recording", "citizen withdraws", lambda r: core.withdraw(r, CIT, T), S.STOPPED, ["stopped"], "withdrawn"),
    ("recording", "clerk withdraws", lambda r: core.withdraw(r, ANNA, T), S.STOPPED, ["stopped"], "withdrawn"),
    ("paused", "agreed one withdraws", lambda r: core.withdraw(r, CIT, T), S.STOPPED, ["stopped"], "withdrawn"),
    ("resumed", "late joiner withdraws", lambda r: core.withdraw(r, BEN, T), S.STOPPED, ["stopped"], "withdrawn"),
    ("asking", "someone joins", lambda r: core.joined(r, BEN, "guest", T), S.ASKING, ["asked"], None),
    ("anna agreed", "someone joins", lambda r: core.joined(r, BEN, "guest", T), S.ASKING, ["asked"], None),
    ("recording", "someone joins", lambda r: core.joined(r, BEN, "guest", T), S.PAUSED, ["asked", "paused"], None),
    ("paused", "another one joins", lambda r: core.joined(r, CARL, "guest", T), S.PAUSED, ["asked"], None),
    ("paused", "late joiner agrees", lambda r: core.answer(r, BEN, True, DE, T), S.RECORDING, ["resumed"], None),
    ("paused", "late joiner declines", lambda r: core.answer(r, BEN, False, DE, T), S.STOPPED, ["stopped"],
     "declined"),
    ("paused", "late joiner leaves unanswered", lambda r: core.left(r, BEN, T), S.RECORDING, ["resumed"], None),
    ("recording", "agreed citizen leaves", lambda r: core.left(r, CIT, T), S.STOPPED, ["stopped"], "left"),
    ("paused", "agreed clerk leaves", lambda r: core.left(r, ANNA, T), S.STOPPED, ["stopped"], "left"),
    ("anna agreed", "agreed clerk leaves while asking", lambda r: core.left(r, ANNA, T), S.STOPPED, ["stopped"],
     "left"),
    ("anna agreed", "the only pending one leaves: start", lambda r: core.left(r, CIT, T), S.RECORDING,
     ["started"], None),
    ("asking", "a pending one leaves, another still pending", lambda r: core.left(r, CIT, T), S.ASKING, ["left"],
     None),  # told, so that pages stop showing them as awaited (found by probing)
    ("asking", "clerk stops", lambda r: core.stop(r, ANNA, "clerk", T), S.STOPPED, ["stopped"], "stopped"),
    ("recording", "clerk stops", lambda r: core.stop(r, ANNA, "clerk", T), S.STOPPED, ["stopped"], "stopped"),
    ("paused", "clerk stops", lambda r: core.stop(r, ANNA, "clerk", T), S.STOPPED, ["stopped"], "stopped"),
    ("asking", "consultation ends", lambda r: core.end(r, "ended", T), S.STOPPED, ["stopped"], "ended"),
    ("recording", "consultation ends", lambda r: core.end(r, "ended", T), S.STOPPED, ["stopped"], "ended"),
    ("paused", "consultation ends", lambda r: core.end(r, "ended", T), S.STOPPED, ["stopped"], "ended"),
    ("recording", "writer fails", lambda r: core.end(r, "failed", T), S.STOPPED, ["stopped"], "failed"),
    ("paused", "writer fails", lambda r: core.end(r, "failed", T), S.STOPPED, ["stopped"], "failed"),
]


@pytest.mark.parametrize(("start", "what", "move", "state", "kinds", "reason"), LEGAL,
                         ids=[f"{row[0]}: {row[1]}" for row in LEGAL])
def test_legal_moves(start: str, what: str, move: Move, state: S, kinds: list[str], reason: str | None) -> None:
    before = STATES[start]()
    rec, events = move(before)
    assert rec.state is state
    assert [e.kind for e in events] == kinds
    assert all(e.recording == rec for e in events if e.kind != "asked")
    assert rec.stop_reason == reason
    assert rec.stopped_at == (T if state is S.STOPPED else None)
    assert rec.consents[: len(before.consents)] == before.consents  # the log only grows
    # Media is written exactly while recording: an open segment then, none otherwise.
    open_segments = [s for s in rec.segments if s[1] is None]
    assert open_segments == ([rec.segments[-1]] if state is S.RECORDING else [])
    assert all(end is None or start_ <= end for start_, end in rec.segments)
    recorded = state is S.RECORDING or before.composition is Composition.PENDING
    assert rec.composition is (Composition.PENDING if recorded else Composition.NONE)


# -- no-ops: moves that change nothing and say nothing --
NO_OPS: list[tuple[str, str, Move]] = [
    *[(s, "a participant joins again", lambda r: core.joined(r, ANNA, "clerk", T)) for s in LIVE],
    ("paused", "the late joiner joins twice", lambda r: core.joined(r, BEN, "guest", T)),
    *[(s, "someone joins after the end", lambda r: core.joined(r, CARL, "guest", T)) for s in ENDED],
    *[(s, "a stranger leaves", lambda r: core.left(r, CARL, T)) for s in LIVE],
    *[(s, "a participant leaves after the end", lambda r: core.left(r, ANNA, T)) for s in ENDED],
    *[(s, "the consultation ends after the end", lambda r: core.end(r, "ended", T)) for s in ENDED],
    *[(s, "the writer fails after the end", lambda r: core.end(r, "failed", T)) for s in ENDED],
]


@pytest.mark.parametrize(("start", "what", "move"), NO_OPS, ids=[f"{row[0]}: {row[1]}" for row in NO_OPS])
def test_no_op_moves(start: str, what: str, move: Move) -> None:
    before = STATES[start]()
    assert move(before) == (before, [])


# -- illegal moves: a typed error, nothing changes (the input is frozen and nothing else is returned) --
ILLEGAL: list[tuple[str, str, Move, type[Exception]]] = [
    *[(s, "a stranger answers", lambda r: core.answer(r, CARL, True, DE, T), NotAParticipant) for s in LIVE],
    ("anna agreed", "agreed one answers again", lambda r: core.answer(r, ANNA, False, DE, T), AlreadyAnswered),
    ("recording", "agreed one answers again", lambda r: core.answer(r, CIT, True, EN, T), AlreadyAnswered),
    ("paused", "agreed one answers again", lambda r: core.answer(r, ANNA, True, DE, T), AlreadyAnswered),
    ("withdrawn", "withdrawn one answers again", lambda r: core.answer(r, CIT, True, EN, T), ConsentWithdrawn),
    ("withdrawn", "withdrawn one withdraws again", lambda r: core.withdraw(r, CIT, T), ConsentWithdrawn),
    ("withdrawn", "another one answers", lambda r: core.answer(r, ANNA, True, DE, T), RecordingEnded),
    ("declined", "declined one answers again", lambda r: core.answer(r, CIT, True, EN, T), RecordingEnded),
    ("declined", "pending one answers after the end", lambda r: core.answer(r, ANNA, True, DE, T), RecordingEnded),
    ("stopped", "someone answers after the stop", lambda r: core.answer(r, CIT, True, EN, T), RecordingEnded),
    ("stopped", "someone withdraws after the stop", lambda r: core.withdraw(r, CIT, T), RecordingEnded),
    ("asking", "pending one withdraws", lambda r: core.withdraw(r, CIT, T), NotAgreed),
    ("paused", "late joiner withdraws unanswered", lambda r: core.withdraw(r, BEN, T), NotAgreed),
    *[(s, "a stranger withdraws", lambda r: core.withdraw(r, CARL, T), NotAParticipant) for s in LIVE],
    *[(s, "the citizen stops", lambda r: core.stop(r, CIT, "citizen", T), NotAuthorised) for s in STATES],
    *[(s, "a guest stops", lambda r: core.stop(r, BEN, "guest", T), NotAuthorised) for s in LIVE],
    *[(s, "a clerk from elsewhere stops", lambda r: core.stop(r, CARL, "clerk", T), NotAParticipant)
      for s in LIVE],
    *[(s, "the clerk stops twice", lambda r: core.stop(r, ANNA, "clerk", T), RecordingEnded) for s in ENDED],
    *[(s, "an unknown end reason", lambda r: core.end(r, "bored", T), InvalidInput) for s in STATES],
    *[(s, "someone joins with an unknown role", lambda r: core.joined(r, CARL, "visitor", T), InvalidInput)
      for s in STATES],
    *[(s, "composed while live", lambda r: (core.composed(r, True, 1.0, 1), []), RecordingEnded) for s in LIVE],
    ("declined", "composed without media", lambda r: (core.composed(r, True, 1.0, 1), []), InvalidInput),
]


@pytest.mark.parametrize(("start", "what", "move", "error"), ILLEGAL, ids=[f"{row[0]}: {row[1]}" for row in ILLEGAL])
def test_illegal_moves(start: str, what: str, move: Move, error: type[Exception]) -> None:
    before = STATES[start]()
    with pytest.raises(error):
        move(before)
    assert before == STATES[start]()


# -- the story in order, with its segments and its consent proof --
def test_late_joiner_pauses_and_resumes_with_a_new_segment() -> None:
    rec = recording()
    assert rec.segments == ((T0 + 2, None),) and rec.composition is Composition.PENDING
    rec, events = core.joined(rec, BEN, "guest", T0 + 5)
    assert [(e.kind, e.participant) for e in events] == [("asked", BEN), ("paused", None)]
    assert rec.segments == ((T0 + 2, T0 + 5),)
    assert rec.participant(BEN).answer is Answer.PENDING  # type: ignore[union-attr]
    rec, events = core.answer(rec, BEN, True, DE, T0 + 6)
    assert [e.kind for e in events] == ["resumed"]
    assert rec.segments == ((T0 + 2, T0 + 5), (T0 + 6, None))
    assert rec.recorded_seconds(T0 + 10) == pytest.approx(3 + 4)
    rec, _ = core.stop(rec, ANNA, "clerk", T0 + 10)
    assert rec.segments == ((T0 + 2, T0 + 5), (T0 + 6, T0 + 10))
    assert rec.recorded_seconds(T0 + 999) == pytest.approx(7)


def test_joined_while_asking_waits_for_the_newcomer_too() -> None:
    rec, _ = core.joined(anna_agreed(), BEN, "guest", T0 + 2)
    rec, events = core.answer(rec, CIT, True, EN, T0 + 3)
    assert rec.state is S.ASKING and events == []
    rec, events = core.answer(rec, BEN, True, DE, T0 + 4)
    assert rec.state is S.RECORDING and [e.kind for e in events] == ["started"]
    assert rec.segments == ((T0 + 4, None),)


def test_pending_one_who_left_and_came_back_is_asked_again() -> None:
    rec, _ = core.left(anna_agreed(), CIT, T0 + 2)  # recording starts with the clerk alone
    rec, events = core.joined(rec, CIT, "citizen", T0 + 3)
    assert rec.state is S.PAUSED and [e.kind for e in events] == ["asked", "paused"]
    assert rec.participant(CIT).answer is Answer.PENDING  # type: ignore[union-attr]


def test_last_pending_participant_leaving_an_empty_request_stops_it() -> None:
    rec = ok(req(present=((ANNA, "clerk"),)))
    rec, events = core.left(rec, ANNA, T0 + 1)
    assert (rec.state, rec.stop_reason, [e.kind for e in events]) == (S.STOPPED, "left", ["stopped"])
    assert rec.participants == ()


def test_agreed_participant_who_left_stays_on_record() -> None:
    rec, _ = core.left(recording(), CIT, T0 + 3)
    assert rec.participant(CIT).answer is Answer.AGREED  # type: ignore[union-attr]
    assert rec.consents[-1] == ConsentEntry(CIT, "citizen", "left", T0 + 3)


def test_consent_log_is_proof_without_names() -> None:
    """Who (ids given, roles), when, which text (version and SHA-256), which answer; nothing else."""
    rec = resumed()
    rec, _ = core.withdraw(rec, BEN, T0 + 8)
    assert [f.name for f in dataclasses.fields(ConsentEntry)] == [
        "participant", "role", "action", "at", "text_version", "text_sha256"]
    assert [(c.participant, c.role, c.action, c.at, c.text_version, c.text_sha256) for c in rec.consents] == [
        (ANNA, "clerk", "asked", T0, "", ""),
        (CIT, "citizen", "asked", T0, "", ""),
        (ANNA, "clerk", "agreed", T0 + 1, DE.version, DE.sha256),
        (CIT, "citizen", "agreed", T0 + 2, EN.version, EN.sha256),
        (BEN, "guest", "asked", T0 + 5, "", ""),
        (BEN, "guest", "agreed", T0 + 6, DE.version, DE.sha256),
        (BEN, "guest", "withdrawn", T0 + 8, "", ""),
    ]
    assert {c.participant for c in rec.consents} <= {ANNA, CIT, BEN}
    assert rec.texts == (DE, EN)  # each text shown once, word for word
    strings = json.dumps([dataclasses.asdict(c) for c in rec.consents])
    assert "anna" in strings and "Anna" not in strings


def test_declined_answer_is_logged_with_the_text_shown() -> None:
    rec = declined()
    assert rec.consents[-1] == ConsentEntry(CIT, "citizen", "declined", T0 + 1, EN.version, EN.sha256)
    assert rec.texts == (EN,) and rec.composition is Composition.NONE and rec.segments == ()


# -- composition and retention --
@pytest.mark.parametrize("start", ["withdrawn", "stopped"])
def test_composed(start: str) -> None:
    rec = STATES[start]()
    done = core.composed(rec, True, 5.5, 4096)
    assert (done.composition, done.duration, done.size) == (Composition.DONE, 5.5, 4096)
    failed = core.composed(rec, False, 5.5, 4096)
    assert (failed.composition, failed.duration, failed.size) == (Composition.FAILED, 0.0, 0)
    assert done.replace(composition=rec.composition, duration=0.0, size=0) == rec


def test_expired_at_the_end_of_retention() -> None:
    rec = stopped()
    end = T0 + 30 * 86400
    assert rec.expires_at == end
    assert [core.expired(rec, t) for t in (T0, end - 0.001, end, end + 1)] == [False, False, True, True]


# -- consent texts --
def test_consent_text_versions_and_digests() -> None:
    de, en = core.consent_text(ON, "Bürgerbüro", "de"), core.consent_text(ON, "Bürgerbüro", "en")
    assert (de.version, en.version) == (f"{core.TEXT_VERSION}-de", f"{core.TEXT_VERSION}-en")
    for t in (de, en):
        assert t.sha256 == hashlib.sha256(t.text.encode("utf-8")).hexdigest()
        assert "Bürgerbüro" in t.text and ON.purpose in t.text and "30" in t.text
    assert de.sha256 != en.sha256 and de.text != en.text
    assert core.consent_text(ON, "Bürgerbüro", "de") == de  # stable: the same text, the same digest
    assert core.consent_text(ON, "Bürgerbüro", "tr") == de  # no translation: German
    other = core.consent_text(RecordingPolicy(ON.mode, "Schulung", 30), "Bürgerbüro", "de")
    assert other.version == de.version and other.sha256 != de.sha256  # the digest pins the purpose shown
    assert core.consent_text(RecordingPolicy(ON.mode, ON.purpose, 7), "Bürgerbüro", "de").sha256 != de.sha256
    assert core.TEXT_LANGUAGES == {"de", "en"}


# -- serialisation --
@pytest.mark.parametrize("start", [*STATES, "composed"])
def test_to_dict_from_dict_round_trip(start: str) -> None:
    rec = core.composed(stopped(), True, 9.25, 777) if start == "composed" else STATES[start]()
    assert Recording.from_dict(rec.to_dict()) == rec
    assert Recording.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
