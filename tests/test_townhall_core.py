"""Table-driven tests of the town-hall state machine (``server.townhall.core``): creating, starting and
ending events, every legal and illegal move of a question, votes, the public state of a question link,
ordering, hands and the stage, chapters of the published recording, and serialisation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from server.queue.errors import InvalidInput, NotAuthorised
from server.queue.model import Clerk
from server.townhall import core
from server.townhall.errors import (
    EventNotLive,
    IllegalQuestionMove,
    NoRecording,
    NotInvited,
    NotVotable,
    QuestionsClosed,
)
from server.townhall.model import (
    EventState,
    Hand,
    Question,
    QuestionState,
    StageGuest,
    StageState,
    TownHallEvent,
)

Q = QuestionState
T0 = 1_800_000_000.0
START = T0 + 3600
MIA = Clerk("mia", "Mia", frozenset(), frozenset({"moderator"}))
MAX = Clerk("max", "Max", frozenset(), frozenset({"moderator"}))
CARL = Clerk("carl", "Carl", frozenset({"buergerbuero"}))  # staff, but no moderator
PAULA = Clerk("paula", "Paula", frozenset())  # the politician


def new_event(**over: Any) -> TownHallEvent:
    kwargs: dict[str, Any] = dict(
        event_id="ev1", creator=MIA, title="Bürgersprechstunde", description="Fragen Sie!", politicians=["paula"],
        starts_at=START, ends_at=START + 3600, advance_questions=True, questions_until=None, recorded=True,
        recording_purpose="Veröffentlichung auf der Website", retention_days=90, audience_limit=500, now=T0)
    kwargs.update(over)
    return core.create_event(**kwargs)


def scheduled(**over: Any) -> TownHallEvent:
    return new_event(**over)


def live(**over: Any) -> TownHallEvent:
    return core.start(new_event(**over), MIA, START)


def ended(**over: Any) -> TownHallEvent:
    return core.end(live(**over), MIA, START + 3000)[0]


def submit(event: TownHallEvent, q_id: str = "q1", text: object = "Wann kommt der Bus?", name: object = "Erika",
           now: float = START + 20) -> Question:
    return core.submit(event, question_id=q_id, text=text, author_name=name, author=f"aud-{q_id}", now=now)


# -- creating events -------------------------------------------------------------------------------------
def test_create_event_fills_every_field() -> None:
    e = new_event(title="  Bürger\n sprechstunde ", description="  Fragen Sie!\n", politicians=("paula", "peter"))
    assert (e.id, e.title, e.description, e.politicians, e.moderators) == (
        "ev1", "Bürger sprechstunde", "Fragen Sie!", ("paula", "peter"), ("mia",))
    assert (e.starts_at, e.ends_at, e.advance_questions, e.questions_until) == (START, START + 3600, True, None)
    assert (e.recorded, e.recording_purpose, e.retention_days, e.audience_limit) == (
        True, "Veröffentlichung auf der Website", 90, 500)
    assert (e.state, e.created_by, e.created_at, e.live_since, e.ended_at) == (EventState.SCHEDULED, "mia", T0,
                                                                               None, None)
    assert (e.pinned, e.answering, e.hands, e.stage, e.recording, e.published) == (None, None, (), (), None, False)


def test_an_unrecorded_event_keeps_no_purpose_or_retention() -> None:
    e = new_event(recorded=False, recording_purpose="egal", retention_days=30)
    assert (e.recorded, e.recording_purpose, e.retention_days) == (False, "", 0)


@pytest.mark.parametrize(
    "over",
    [
        {"questions_until": START},  # the deadline may be the start itself
        {"questions_until": T0 - 10},
        {"audience_limit": 1},
        {"audience_limit": core.MAX_AUDIENCE},
        {"starts_at": T0 - 600, "ends_at": T0 + 1},  # already begun, still to end
        {"advance_questions": False},
        {"title": "x" * core.MAX_TITLE, "description": "d" * core.MAX_DESCRIPTION},
        {"politicians": [f"p{i}" for i in range(core.MAX_POLITICIANS)]},
        {"recorded": False, "recording_purpose": "", "retention_days": 0},
    ],
)
def test_create_event_accepts(over: dict[str, Any]) -> None:
    assert new_event(**over).state is EventState.SCHEDULED


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"creator": CARL}, NotAuthorised),
        ({"creator": PAULA}, NotAuthorised),
        ({"creator": CARL, "title": ""}, NotAuthorised),  # who asks is checked first
        ({"title": ""}, InvalidInput),
        ({"title": " \n "}, InvalidInput),
        ({"title": "x" * (core.MAX_TITLE + 1)}, InvalidInput),
        ({"title": None}, InvalidInput),
        ({"description": "d" * (core.MAX_DESCRIPTION + 1)}, InvalidInput),
        ({"description": None}, InvalidInput),
        ({"politicians": []}, InvalidInput),
        ({"politicians": "paula"}, InvalidInput),
        ({"politicians": ["paula", "paula"]}, InvalidInput),
        ({"politicians": [""]}, InvalidInput),
        ({"politicians": [1]}, InvalidInput),
        ({"politicians": [f"p{i}" for i in range(core.MAX_POLITICIANS + 1)]}, InvalidInput),
        ({"ends_at": START}, InvalidInput),  # ends when it starts
        ({"ends_at": START - 1}, InvalidInput),  # ends before it starts
        ({"starts_at": T0 - 7200, "ends_at": T0}, InvalidInput),  # over already
        ({"advance_questions": False, "questions_until": T0 + 60}, InvalidInput),
        ({"questions_until": START + 1}, InvalidInput),
        ({"audience_limit": 0}, InvalidInput),
        ({"audience_limit": core.MAX_AUDIENCE + 1}, InvalidInput),
        ({"recording_purpose": ""}, InvalidInput),  # recorded without a purpose
        ({"recording_purpose": "  \n"}, InvalidInput),
        ({"retention_days": 0}, InvalidInput),
        ({"recording_purpose": 5}, InvalidInput),
        ({"recording_purpose": "x" * (core.MAX_DESCRIPTION + 1)}, InvalidInput),
        ({"retention_days": core.MAX_RETENTION_DAYS + 1}, InvalidInput),  # probing: 10**12 was taken
        ({"title": "Bürger\u202efragen"}, InvalidInput),  # control characters, by the check-in's rule (probing)
        ({"title": "Bürger\x07fragen"}, InvalidInput),
        ({"description": "Zeile 1\nZeile\u202e 2"}, InvalidInput),
        ({"description": "Zeile 1\x1cZeile 2"}, InvalidInput),  # (splitlines took it for a line break: review)
        ({"recording_purpose": "Website\x1b"}, InvalidInput),
    ],
)
def test_create_event_refusals(over: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        new_event(**over)


def test_may_publish_only_politicians_and_moderators() -> None:
    e = new_event()
    assert [core.may_publish(e, c) for c in (PAULA, MIA, MAX, CARL)] == [True, True, True, False]


# -- start and end ---------------------------------------------------------------------------------------
def test_start_goes_live_and_lists_the_moderator() -> None:
    e = core.start(scheduled(), MAX, START - 60)
    assert (e.state, e.live_since, e.moderators) == (EventState.LIVE, START - 60, ("mia", "max"))
    assert core.start(scheduled(), MIA, START).moderators == ("mia",)  # listed once


@pytest.mark.parametrize(
    ("event", "clerk", "error"),
    [
        (scheduled, CARL, NotAuthorised),
        (scheduled, PAULA, NotAuthorised),
        (live, MIA, IllegalQuestionMove),
        (ended, MIA, IllegalQuestionMove),
    ],
)
def test_start_refusals(event: Callable[[], TownHallEvent], clerk: Clerk, error: type[Exception]) -> None:
    with pytest.raises(error):
        core.start(event(), clerk, START)


def test_end_answers_the_current_question_and_clears_the_stage() -> None:
    e = live()
    e, q = core.approve(e, submit(e), MIA)
    e, q2 = core.approve(e, submit(e, "q2"), MIA)
    e = core.pin(e, q2, MIA)
    e, [q] = core.answering(e, q, MIA, START + 30)
    e = core.raise_hand(core.raise_hand(e, "aud-1", START + 40), "aud-2", START + 41)
    e = core.invite(e, MIA, "aud-1", START + 50)
    done, changed = core.end(e, MAX, START + 100, answering=q)
    assert (done.state, done.ended_at, done.answering, done.pinned, done.hands, done.stage) == (
        EventState.ENDED, START + 100, None, None, (), ())
    assert done.moderators == ("mia", "max")
    assert [(c.id, c.state, c.answered_at, c.answer_started_at) for c in changed] == [
        ("q1", Q.ANSWERED, START + 100, START + 30)]
    # A question that is not being answered is left as it is.
    assert core.end(e, MIA, START + 100, answering=q2)[1] == []
    assert core.end(live(), MIA, START + 100) == (live().replace(state=EventState.ENDED, ended_at=START + 100), [])


@pytest.mark.parametrize(
    ("event", "clerk", "error"),
    [(live, CARL, NotAuthorised), (scheduled, MIA, EventNotLive), (ended, MIA, EventNotLive)],
)
def test_end_refusals(event: Callable[[], TownHallEvent], clerk: Clerk, error: type[Exception]) -> None:
    with pytest.raises(error):
        core.end(event(), clerk, START + 100)


# -- submitting questions --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("event", "now", "live_question"),
    [
        (scheduled, T0, False),  # in advance
        (scheduled, START, False),  # at the start, the default deadline
        (lambda: scheduled(questions_until=T0 + 100), T0 + 100, False),  # at its own deadline
        (live, START + 10, True),
        (lambda: live(questions_until=T0 + 100), START + 10, True),  # the advance deadline is past: live is open
        (lambda: live(advance_questions=False), START + 10, True),
    ],
)
def test_submit_while_open(event: Callable[[], TownHallEvent], now: float, live_question: bool) -> None:
    q = submit(event(), now=now)
    assert (q.id, q.event, q.text, q.author_name, q.author, q.state, q.created_at, q.live) == (
        "q1", "ev1", "Wann kommt der Bus?", "Erika", "aud-q1", Q.PENDING, now, live_question)
    assert (q.merged_into, q.answer_started_at, q.answered_at, q.edited) == (None, None, None, False)


@pytest.mark.parametrize(
    ("event", "now"),
    [
        (scheduled, START + 1),  # past the default deadline, not live yet
        (lambda: scheduled(questions_until=T0 + 100), T0 + 101),
        (lambda: scheduled(advance_questions=False), T0),
        (ended, START + 3001),
        (ended, T0),  # whatever the clock says
    ],
)
def test_submit_while_closed(event: Callable[[], TownHallEvent], now: float) -> None:
    with pytest.raises(QuestionsClosed):
        submit(event(), now=now)


@pytest.mark.parametrize(
    ("text", "name", "stored"),
    [
        ("  Wann\n\n kommt   der Bus? ", "  Erika  M. ", ("Wann kommt der Bus?", "Erika M.")),
        ("x" * core.MAX_QUESTION, "n" * core.MAX_AUTHOR, ("x" * core.MAX_QUESTION, "n" * core.MAX_AUTHOR)),
        ("Frage", "", ("Frage", "")),  # anonymous
        ("Frage", "   ", ("Frage", "")),
    ],
)
def test_submit_cleans_text_and_name(text: str, name: str, stored: tuple[str, str]) -> None:
    q = submit(live(), text=text, name=name)
    assert (q.text, q.author_name) == stored


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("", "Erika"),
        (" \n\t ", "Erika"),
        ("x" * (core.MAX_QUESTION + 1), "Erika"),
        (None, "Erika"),
        (["Frage"], "Erika"),
        ("Frage", "n" * (core.MAX_AUTHOR + 1)),
        ("Frage", None),
    ],
)
def test_submit_refuses_bad_text(text: object, name: object) -> None:
    with pytest.raises(InvalidInput):
        submit(live(), text=text, name=name)


# -- moderating questions: every move from every state ------------------------------------------------
World = tuple[TownHallEvent, Question, Question]
"""A live event, its published question ``q0`` (the merge target) and ``q1`` in some state."""


def world(state: str, event: Callable[[], TownHallEvent] = live) -> World:
    e = event()
    root = submit(e, "q0", "Kommt die neue Buslinie?", now=START + 10)
    e, root = core.approve(e, root, MIA)
    q = submit(e, "q1", now=START + 20)
    if state == "pending":
        return e, root, q
    if state == "dismissed":
        e, q = core.dismiss(e, q, MIA)
        return e, root, q
    if state == "merged":
        e, q = core.merge(e, q, root, MIA)
        return e, root, q
    e, q = core.approve(e, q, MIA)
    if state == "published":
        return e, root, q
    e, [q] = core.answering(e, q, MIA, START + 30)
    if state == "answering":
        return e, root, q
    e, q = core.answered(e, q, MIA, START + 90)
    assert state == "answered"
    return e, root, q


STATES = ("pending", "published", "answering", "answered", "dismissed", "merged")
T = START + 200


def test_the_built_worlds_are_what_they_say() -> None:
    assert [world(s)[2].state for s in STATES] == [Q.PENDING, Q.PUBLISHED, Q.ANSWERING, Q.ANSWERED, Q.DISMISSED,
                                                  Q.MERGED]
    assert [world(s)[0].answering for s in STATES] == [None, None, "q1", None, None, None]
    assert all(world(s)[1].state is Q.PUBLISHED for s in STATES)


def _answering(e: TownHallEvent, root: Question, q: Question, c: Clerk) -> tuple[TownHallEvent, Question]:
    e, changed = core.answering(e, q, c, T, current=q if e.answering == q.id else None)
    return e, changed[-1]


Move = Callable[[TownHallEvent, Question, Question, Clerk], tuple[TownHallEvent, Question]]
MOVES: dict[str, Move] = {
    "approve": lambda e, root, q, c: core.approve(e, q, c),
    "approve with an edit": lambda e, root, q, c: core.approve(e, q, c, "Wann kommt der  Bus 7?"),
    "dismiss": lambda e, root, q, c: core.dismiss(e, q, c),
    "merge": lambda e, root, q, c: core.merge(e, q, root, c),
    "pin": lambda e, root, q, c: (core.pin(e, q, c), q),
    "answering": _answering,
    "answered": lambda e, root, q, c: core.answered(e, q, c, T),
    "back": lambda e, root, q, c: core.back(e, q, c),
}
LEGAL: dict[tuple[str, str], QuestionState] = {
    ("pending", "approve"): Q.PUBLISHED,
    ("pending", "approve with an edit"): Q.PUBLISHED,
    ("pending", "dismiss"): Q.DISMISSED,
    ("pending", "merge"): Q.MERGED,
    ("published", "dismiss"): Q.DISMISSED,
    ("published", "merge"): Q.MERGED,
    ("published", "pin"): Q.PUBLISHED,
    ("published", "answering"): Q.ANSWERING,
    ("answering", "answered"): Q.ANSWERED,
    ("answering", "back"): Q.PUBLISHED,
    ("answered", "answering"): Q.ANSWERING,  # answered again
    ("dismissed", "approve"): Q.PUBLISHED,  # a moderator changes their mind
    ("dismissed", "approve with an edit"): Q.PUBLISHED,
}
ILLEGAL = [(s, m) for s in STATES for m in MOVES if (s, m) not in LEGAL]


@pytest.mark.parametrize(("start", "move"), list(LEGAL), ids=[f"{s}: {m}" for s, m in LEGAL])
def test_legal_question_moves(start: str, move: str) -> None:
    e, root, q = world(start)
    new_event, new_q = MOVES[move](e, root, q, MAX)
    assert new_q.state is LEGAL[(start, move)]
    assert (new_q.id, new_q.event, new_q.author, new_q.created_at) == (q.id, q.event, q.author, q.created_at)
    assert new_event.moderators == ("mia", "max")  # whoever moderates is listed
    assert new_event.answering == ("q1" if new_q.state is Q.ANSWERING else None)
    assert new_event.pinned == ("q1" if move == "pin" else None)
    assert new_q.merged_into == ("q0" if move == "merge" else None)
    assert new_q.edited is (move == "approve with an edit")
    assert new_q.text == ("Wann kommt der Bus 7?" if move == "approve with an edit" else q.text)
    if new_q.state is Q.ANSWERING:
        assert (new_q.answer_started_at, new_q.answered_at) == (T, None)
    if move == "answered":
        assert (new_q.answer_started_at, new_q.answered_at) == (START + 30, T)
    if move == "back":
        assert (new_q.answer_started_at, new_q.answered_at) == (None, None)


@pytest.mark.parametrize(("start", "move"), ILLEGAL, ids=[f"{s}: {m}" for s, m in ILLEGAL])
def test_illegal_question_moves(start: str, move: str) -> None:
    e, root, q = world(start)
    with pytest.raises(IllegalQuestionMove):
        MOVES[move](e, root, q, MAX)


@pytest.mark.parametrize(("start", "move"), list(LEGAL), ids=[f"{s}: {m}" for s, m in LEGAL])
@pytest.mark.parametrize("clerk", [CARL, PAULA], ids=["clerk", "politician"])
def test_only_moderators_moderate(start: str, move: str, clerk: Clerk) -> None:
    e, root, q = world(start)
    with pytest.raises(NotAuthorised):
        MOVES[move](e, root, q, clerk)


@pytest.mark.parametrize("move", list(MOVES))
def test_a_question_of_another_event_is_refused(move: str) -> None:
    e, root, q = world("published")
    for state in ("pending", "published", "answering", "answered", "dismissed"):
        other = world(state)[2].replace(event="ev2")
        with pytest.raises(IllegalQuestionMove):
            MOVES[move](e, root, other, MAX)


def test_approve_with_the_same_text_is_no_edit_and_an_edit_is_remembered() -> None:
    e, _, q = world("pending")
    assert core.approve(e, q, MIA, "  Wann kommt\nder Bus? ")[1].edited is False
    e, q = core.approve(e, q, MIA, "Wann kommt der Bus 7?")
    e, q = core.dismiss(e, q, MIA)
    assert core.approve(e, q, MIA)[1] == q.replace(state=Q.PUBLISHED)  # still edited, same text
    assert core.approve(e, q, MIA)[1].edited is True


@pytest.mark.parametrize("text", ["", "   ", "x" * (core.MAX_QUESTION + 1), 5])
def test_approve_refuses_a_bad_edit(text: object) -> None:
    e, _, q = world("pending")
    with pytest.raises(InvalidInput):
        core.approve(e, q, MIA, text)


def test_approve_after_the_end_is_refused() -> None:
    e, _, q = world("pending")
    e = core.end(e, MIA, START + 100)[0]
    with pytest.raises(IllegalQuestionMove):
        core.approve(e, q, MIA)
    assert core.dismiss(e, q, MIA)[1].state is Q.DISMISSED  # not taking it is still possible


def test_pinning_after_the_end_is_refused() -> None:
    e, _, q = world("published")
    e = core.end(e, MIA, START + 100)[0]
    for target in (q, None):
        with pytest.raises(IllegalQuestionMove):
            core.pin(e, target, MIA)


def test_questions_sent_in_advance_are_moderated_before_the_start() -> None:
    e, q = core.approve(scheduled(), submit(scheduled(), now=T0), MIA)
    assert q.state is Q.PUBLISHED and e.state is EventState.SCHEDULED
    assert core.pin(e, q, MIA).pinned == "q1"
    with pytest.raises(EventNotLive):
        core.answering(e, q, MIA, T0 + 10)


@pytest.mark.parametrize("into_state", ["answering", "answered"])
def test_merge_into_a_question_being_answered_or_answered(into_state: str) -> None:
    e, _, into = world(into_state)
    dup = submit(e, "q2", now=START + 100)
    e, merged = core.merge(e, dup, into, MIA)
    assert (merged.state, merged.merged_into) == (Q.MERGED, "q1")


@pytest.mark.parametrize("into_state", ["pending", "dismissed", "merged"])
def test_merge_into_a_question_nobody_sees_is_refused(into_state: str) -> None:
    e, root, into = world(into_state)
    with pytest.raises(IllegalQuestionMove):
        core.merge(e, root, into, MIA)


@pytest.mark.parametrize("state", ["pending", "published"])
def test_merge_into_itself_is_refused(state: str) -> None:
    e, _, q = world(state)
    with pytest.raises(IllegalQuestionMove):
        core.merge(e, q, q, MIA)


def test_merge_into_a_question_of_another_event_is_refused() -> None:
    e, root, q = world("published")
    with pytest.raises(IllegalQuestionMove):
        core.merge(e, q, root.replace(event="ev2"), MIA)


@pytest.mark.parametrize("move", ["dismiss", "merge"])
def test_dismissing_or_merging_the_pinned_question_unpins_it(move: str) -> None:
    e, root, q = world("published")
    pinned = core.pin(e, q, MIA)
    assert MOVES[move](pinned, root, q, MIA)[0].pinned is None
    other = core.pin(e, root, MIA)
    assert MOVES[move](other, root, q, MIA)[0].pinned == "q0"  # another pinned one stays


def test_pin_replaces_the_pinned_one_and_none_unpins() -> None:
    e, root, q = world("published")
    e = core.pin(core.pin(e, root, MIA), q, MIA)
    assert e.pinned == "q1"
    assert core.pin(e, None, MAX).pinned is None
    assert core.pin(e, None, MAX).moderators == ("mia", "max")
    with pytest.raises(NotAuthorised):
        core.pin(e, None, CARL)


def test_answering_puts_the_previous_one_back_and_unpins_only_itself() -> None:
    e, root, q = world("answering")
    e = core.pin(e, root, MIA)
    e2, changed = core.answering(e, root, MAX, T, current=q)
    assert e2.answering == "q0" and e2.pinned is None
    assert [(c.id, c.state, c.answer_started_at) for c in changed] == [("q1", Q.PUBLISHED, None),
                                                                        ("q0", Q.ANSWERING, T)]
    # A pinned question that is not the one being answered stays pinned.
    e, root, q = world("answering")
    e, q2 = core.approve(e, submit(e, "q2", now=START + 40), MIA)
    e = core.pin(e, q2, MIA)
    assert core.answering(e, root, MIA, T, current=q)[0].pinned == "q2"
    # No current one (or one that is not being answered): only the new one changes.
    e, root, q = world("published")
    assert [c.id for c in core.answering(e, q, MIA, T, current=root)[1]] == ["q1"]


def test_answering_an_answered_question_again_restarts_it() -> None:
    e, _, q = world("answered")
    e, [again] = core.answering(e, q, MIA, T)
    assert (again.state, again.answer_started_at, again.answered_at, e.answering) == (Q.ANSWERING, T, None, "q1")
    e, done = core.answered(e, again, MIA, T + 60)
    assert (done.state, done.answer_started_at, done.answered_at, e.answering) == (Q.ANSWERED, T, T + 60, None)


@pytest.mark.parametrize("event", [scheduled, ended])
def test_answering_needs_a_live_event(event: Callable[[], TownHallEvent]) -> None:
    _, root, _ = world("published")
    with pytest.raises(EventNotLive):
        core.answering(event(), root, MIA, T)


# -- votes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "votable"), [("pending", False), ("published", True), ("answering", True),
                                                ("answered", False), ("dismissed", False), ("merged", False)])
def test_check_vote_for_each_state(state: str, votable: bool) -> None:
    e, _, q = world(state)
    if votable:
        core.check_vote(e, q)
    else:
        with pytest.raises(NotVotable):
            core.check_vote(e, q)


def test_check_vote_refuses_another_events_question_and_an_ended_event() -> None:
    e, root, _ = world("published")
    with pytest.raises(NotVotable):
        core.check_vote(e, root.replace(event="ev2"))
    with pytest.raises(NotVotable):
        core.check_vote(core.end(e, MIA, T)[0], root)
    e, q = core.approve(scheduled(), submit(scheduled(), now=T0), MIA)
    core.check_vote(e, q)  # votes on questions sent in advance, before the start


# -- what a question link shows --------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "shown"), [("pending", "waiting"), ("published", "published"),
                                              ("answering", "answering"), ("answered", "answered"),
                                              ("dismissed", "not_taken")])
def test_public_state(state: str, shown: str) -> None:
    q = world(state)[2]
    assert core.public_state(q) == shown
    assert core.public_state(q, world("published")[1]) == shown  # a root is ignored unless merged


@pytest.mark.parametrize(("root_state", "shown"), [(Q.PUBLISHED, "published"), (Q.ANSWERING, "answering"),
                                                   (Q.ANSWERED, "answered"), (Q.DISMISSED, "not_taken"),
                                                   (Q.MERGED, "published"), (None, "published")])
def test_a_merged_question_follows_its_root(root_state: QuestionState | None, shown: str) -> None:
    _, root, q = world("merged")
    assert core.public_state(q, root.replace(state=root_state) if root_state else None) == shown


# -- ordering --------------------------------------------------------------------------------------------
def _q(q_id: str, state: QuestionState, at: float) -> Question:
    return Question(q_id, "ev1", f"Frage {q_id}", "", f"aud-{q_id}", state, at, True)


QUESTIONS = [_q("a", Q.PUBLISHED, 3), _q("b", Q.ANSWERING, 5), _q("c", Q.ANSWERED, 1), _q("d", Q.PENDING, 0),
             _q("e", Q.DISMISSED, 0), _q("f", Q.MERGED, 0), _q("h", Q.PUBLISHED, 3), _q("g", Q.PUBLISHED, 3),
             _q("i", Q.PUBLISHED, 9)]
VOTES = {"a": 3, "b": 5, "c": 3, "d": 99, "e": 99, "f": 99, "g": 3, "h": 3}


@pytest.mark.parametrize(("by", "order"), [("votes", "bcaghi"), ("time", "caghbi")])
def test_ordered_shows_public_questions_only(by: str, order: str) -> None:
    # By votes: ties older first (c before a), same time by id (a, g, h); no votes last.
    assert "".join(q.id for q in core.ordered(QUESTIONS, VOTES, by)) == order


def test_ordered_by_votes_is_the_default_and_a_bad_order_is_refused() -> None:
    assert core.ordered(QUESTIONS, VOTES) == core.ordered(QUESTIONS, VOTES, "votes")
    with pytest.raises(InvalidInput):
        core.ordered(QUESTIONS, VOTES, "random")


# -- hands and the stage ---------------------------------------------------------------------------------
def test_hands_queue_by_time() -> None:
    e = core.raise_hand(core.raise_hand(live(), "a1", START + 1), "a2", START + 2)
    assert e.hands == (Hand("a1", START + 1), Hand("a2", START + 2))
    assert core.raise_hand(e, "a1", START + 9) is e  # raised already: keeps its place
    assert core.lower_hand(e, "a1").hands == (Hand("a2", START + 2),)
    assert core.lower_hand(e, "a9") == e
    assert core.raise_hand(core.lower_hand(e, "a1"), "a1", START + 9).hands == (
        Hand("a2", START + 2), Hand("a1", START + 9))


@pytest.mark.parametrize("event", [scheduled, ended])
def test_raise_hand_needs_a_live_event(event: Callable[[], TownHallEvent]) -> None:
    with pytest.raises(EventNotLive):
        core.raise_hand(event(), "a1", START)


def _hands(event: TownHallEvent, *audience: str) -> TownHallEvent:
    for i, a in enumerate(audience):
        event = core.raise_hand(event, a, START + i)
    return event


def test_invite_takes_a_raised_hand_on_stage() -> None:
    e = core.invite(_hands(live(), "a1", "a2"), MAX, "a2", START + 10)
    assert e.hands == (Hand("a1", START),)
    assert e.stage == (StageGuest("a2", StageState.INVITED, START + 10),)
    assert e.moderators == ("mia", "max")
    assert core.raise_hand(e, "a2", START + 11) is e  # a guest has no hand to raise


@pytest.mark.parametrize(
    ("event", "clerk", "audience", "error"),
    [
        (lambda: _hands(live(), "a1"), MIA, "a9", NotInvited),  # only raised hands
        (lambda: core.invite(_hands(live(), "a1"), MIA, "a1", START), MIA, "a1", NotInvited),  # invited already
        (lambda: _hands(live(), "a1"), CARL, "a1", NotAuthorised),
        (lambda: _hands(live(), "a1"), PAULA, "a1", NotAuthorised),
        (scheduled, MIA, "a1", EventNotLive),
        (ended, MIA, "a1", EventNotLive),
    ],
)
def test_invite_refusals(event: Callable[[], TownHallEvent], clerk: Clerk, audience: str,
                         error: type[Exception]) -> None:
    with pytest.raises(error):
        core.invite(event(), clerk, audience, START + 10)


def test_the_stage_holds_at_most_two_guests() -> None:
    e = _hands(live(), "a1", "a2", "a3")
    e = core.invite(core.invite(e, MIA, "a1", START + 10), MIA, "a2", START + 11)
    e = core.accept(e, "a1", True, START + 12)  # on stage or invited: both count
    with pytest.raises(IllegalQuestionMove):
        core.invite(e, MIA, "a3", START + 13)
    e = core.leave_stage(e, "a2")  # declined
    assert [g.audience for g in core.invite(e, MIA, "a3", START + 14).stage] == ["a1", "a3"]


@pytest.mark.parametrize(("recorded", "consent", "stored"),
                         [(True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_accept_records_publication_consent_only_when_recorded(recorded: bool, consent: bool, stored: bool) -> None:
    e = core.invite(_hands(live(recorded=recorded), "a1", "a2"), MIA, "a1", START + 10)
    e = core.invite(e, MIA, "a2", START + 11)
    e = core.accept(e, "a1", consent, START + 20)
    assert e.stage == (StageGuest("a1", StageState.ON_STAGE, START + 20, stored),
                       StageGuest("a2", StageState.INVITED, START + 11))


@pytest.mark.parametrize(
    ("event", "audience", "error"),
    [
        (lambda: _hands(live(), "a1"), "a1", NotInvited),  # a raised hand is no invitation
        (live, "a9", NotInvited),
        (lambda: core.accept(core.invite(_hands(live(), "a1"), MIA, "a1", START), "a1", True, START), "a1",
         NotInvited),  # accepted already
        (ended, "a1", EventNotLive),
    ],
)
def test_accept_refusals(event: Callable[[], TownHallEvent], audience: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        core.accept(event(), audience, True, START + 20)


def test_leave_stage_by_the_guest_or_a_moderator() -> None:
    e = core.invite(_hands(live(), "a1", "a2"), MIA, "a1", START + 10)
    e = core.accept(core.invite(e, MIA, "a2", START + 11), "a2", True, START + 12)
    assert [g.audience for g in core.leave_stage(e, "a1").stage] == ["a2"]  # declines the invitation
    by_mod = core.leave_stage(e, "a2", MAX)
    assert [g.audience for g in by_mod.stage] == ["a1"] and by_mod.moderators == ("mia", "max")
    assert core.raise_hand(by_mod, "a2", START + 30).hands == (Hand("a2", START + 30),)  # may ask again
    with pytest.raises(NotAuthorised):
        core.leave_stage(e, "a2", CARL)
    with pytest.raises(NotInvited):
        core.leave_stage(e, "a9")
    with pytest.raises(NotInvited):
        core.leave_stage(core.leave_stage(e, "a1"), "a1")


# -- chapters --------------------------------------------------------------------------------------------
def _answered(q_id: str, started: float | None, done: float | None, state: QuestionState = Q.ANSWERED,
              text: str | None = None) -> Question:
    return Question(q_id, "ev1", text or f"Frage {q_id}", "", "aud", state, START, True,
                    answer_started_at=started, answered_at=done)


REC_START, REC_END = START + 5, START + 1005


@pytest.mark.parametrize(
    ("questions", "expected"),
    [
        ([], [(0.0, 1000.0, "Begrüßung")]),
        ([_answered("b", REC_START + 300, REC_START + 450), _answered("a", REC_START + 100, REC_START + 200)],
         [(0.0, 100.0, "Begrüßung"), (100.0, 200.0, "Frage a"), (200.0, 300.0, "…"), (300.0, 450.0, "Frage b"),
          (450.0, 1000.0, "…")]),  # by the time they were answered, not the order given
        ([_answered("a", REC_START, REC_START + 100), _answered("b", REC_START + 100, REC_END)],
         [(0.0, 100.0, "Frage a"), (100.0, 1000.0, "Frage b")]),  # no intro, no gaps
        ([_answered("a", REC_START - 50, REC_START + 30), _answered("b", REC_START + 900, REC_END + 100)],
         [(0.0, 30.0, "Frage a"), (30.0, 900.0, "…"), (900.0, 1000.0, "Frage b")]),  # clipped to the recording
        ([_answered("a", REC_START - 100, REC_START), _answered("b", REC_END, REC_END + 50)],
         [(0.0, 1000.0, "Begrüßung")]),  # entirely outside
        ([_answered("a", REC_START + 100, REC_START + 200), _answered("b", REC_START + 150, REC_START + 250)],
         [(0.0, 100.0, "Begrüßung"), (100.0, 200.0, "Frage a"), (200.0, 250.0, "Frage b"),
          (250.0, 1000.0, "…")]),  # overlapping answers: the later one starts when the first ends
        ([_answered("a", REC_START + 100, REC_START + 200), _answered("b", REC_START + 120, REC_START + 180)],
         [(0.0, 100.0, "Begrüßung"), (100.0, 200.0, "Frage a"), (200.0, 1000.0, "…")]),  # inside another: none
        ([_answered("a", REC_START + 100, None, Q.ANSWERING), _answered("b", REC_START + 100, REC_START + 200,
                                                                       Q.PUBLISHED),
          _answered("c", None, REC_START + 200)],
         [(0.0, 1000.0, "Begrüßung")]),  # only answered questions with both times
    ],
)
def test_chapters(questions: list[Question], expected: list[core.Chapter]) -> None:
    assert core.chapters(live(), questions, REC_START, REC_END) == expected


def test_chapters_from_a_moderated_event() -> None:
    e, root, q = world("answered")  # q1 answered START+30 .. START+90
    e, [root] = core.answering(e, root, MIA, START + 100)
    e, root = core.back(e, root, MIA)  # a false start leaves no chapter
    e, [root] = core.answering(e, root, MIA, START + 120)
    e, [root] = core.end(e, MIA, START + 300, answering=root)  # still being answered at the end
    assert core.chapters(e, [root, q], START, START + 400, intro="Welcome") == [
        (0.0, 30.0, "Welcome"), (30.0, 90.0, "Wann kommt der Bus?"), (90.0, 120.0, "…"),
        (120.0, 300.0, "Kommt die neue Buslinie?"), (300.0, 400.0, "…")]


def test_chapters_of_an_unrecorded_event() -> None:
    with pytest.raises(NoRecording):
        core.chapters(live(recorded=False), [_answered("a", REC_START + 1, REC_START + 20)], REC_START, REC_END)


@pytest.mark.parametrize(
    ("chapters", "lines"),
    [
        ([(0, 100, "Begrüßung"), (100, 200, "Frage a"), (200, 300, "…"), (300, 450, "Frage b"), (450, 1000, "…")],
         ["0:00 Begrüßung", "1:40 Frage a", "3:20 …", "5:00 Frage b", "7:30 …"]),
        ([(0, 60, "Begrüßung"), (60, 65, "kurz"), (65, 200, "Frage a"), (200, 3725, "Frage\n  b"), (3725, 3729, "x")],
         ["0:00 Begrüßung", "1:05 Frage a", "3:20 Frage b"]),  # short ones fold into the one before
        ([(0, 3, "Begrüßung"), (3, 100, "Frage a"), (100, 200, "Frage b"), (200, 4000, "Frage c")],
         ["0:00 Frage a", "1:40 Frage b", "3:20 Frage c"]),  # a short intro folds into the first question
        ([(0, 3, "Begrüßung"), (3, 8, "kurz"), (8, 100, "Frage a"), (100, 200, "Frage b"), (200, 300, "Frage c")],
         ["0:00 Frage a", "1:40 Frage b", "3:20 Frage c"]),
        ([(4, 100, "Frage a"), (100, 3600, "Frage b"), (3600, 3725.9, "Frage c")],
         ["0:00 Frage a", "1:40 Frage b", "1:00:00 Frage c"]),  # the first at 0:00; hours when needed
    ],
)
def test_youtube_description(chapters: list[core.Chapter], lines: list[str]) -> None:
    assert core.youtube_description(chapters) == "\n".join(lines)


@pytest.mark.parametrize(
    "chapters",
    [
        [],
        [(0, 100, "Begrüßung"), (100, 200, "Frage a")],
        [(0, 100, "Begrüßung"), (100, 200, "Frage a"), (200, 205, "Frage b")],  # the third is too short
        [(0, 5, "a"), (5, 9, "b"), (9, 15, "c"), (15, 20, "d")],
    ],
)
def test_youtube_description_needs_three_chapters(chapters: list[core.Chapter]) -> None:
    with pytest.raises(NoRecording):
        core.youtube_description(chapters)


def test_webvtt() -> None:
    vtt = core.webvtt([(0.0, 100.5, "Begrüßung"), (100.5, 3725.25, "Wann --> kommt\n der  Bus?")])
    assert vtt == ("WEBVTT\n\n"
                   "1\n00:00:00.000 --> 00:01:40.500\nBegrüßung\n\n"
                   "2\n00:01:40.500 --> 01:02:05.250\nWann -> kommt der Bus?\n")


# -- serialisation ---------------------------------------------------------------------------------------
def _through_json(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))  # type: ignore[no-any-return]


def test_event_round_trips_through_json() -> None:
    e = core.invite(_hands(live(questions_until=T0 + 60), "a1", "a2", "a3"), MAX, "a1", START + 10)
    e = core.accept(core.invite(e, MIA, "a2", START + 11), "a2", True, START + 12)
    e, q = core.approve(e, submit(e), MIA)
    e = core.pin(e, q, MIA).replace(answering="q9", recording="rec-1", published=True)
    for event in (scheduled(), ended(), e):
        d = event.to_dict()
        assert d["state"] == event.state.value and isinstance(d["politicians"], list)
        assert TownHallEvent.from_dict(_through_json(d)) == event
    d = e.to_dict()
    assert d["stage"] == [{"audience": "a1", "state": "invited", "since": START + 10, "publication_consent": False},
                          {"audience": "a2", "state": "on_stage", "since": START + 12, "publication_consent": True}]
    assert d["hands"] == [{"audience": "a3", "raised_at": START + 2}]


@pytest.mark.parametrize("state", STATES)
def test_question_round_trips_through_json(state: str) -> None:
    q = world(state)[2]
    d = q.to_dict()
    assert d["state"] == q.state.value
    assert Question.from_dict(_through_json(d)) == q
    edited = core.approve(world("pending")[0], world("pending")[2], MIA, "Anders")[1]
    assert Question.from_dict(_through_json(edited.to_dict())) == edited
