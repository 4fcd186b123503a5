"""The town-hall Q&A state machine: pure functions over events and questions, ``now`` passed in.

Events: scheduled -> live -> ended. Questions::

    (submit) -> pending --approve--> published --answering--> answering --answered--> answered
                pending | published --dismiss--> dismissed --approve--> published
                pending | published --merge into another--> merged   (votes count there)
                answering --back--> published;  answered --answering--> answering (again)

Only staff with the role ``moderator`` moderate; citizens are audience ids (one per browser and event).
Votes are a set per question kept by the store; this module decides whether a vote is allowed. Chapters
of the published recording come from when each question was being answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..queue.core import _clean as one_line
from ..queue.errors import InvalidInput, NotAuthorised
from ..queue.model import Clerk
from .errors import (
    EventNotLive,
    IllegalQuestionMove,
    NoRecording,
    NotInvited,
    NotVotable,
    QuestionsClosed,
)
from .model import (
    EventState,
    Hand,
    Question,
    QuestionState,
    StageGuest,
    StageState,
    TownHallEvent,
)

MAX_TITLE = 120
MAX_DESCRIPTION = 2000
MAX_QUESTION = 500
MAX_AUTHOR = 60
MAX_POLITICIANS = 5
MAX_AUDIENCE = 10_000
MAX_STAGE_GUESTS = 2
MAX_RETENTION_DAYS = 3650
"""As for a department's recordings (server/rooms/directory.py): ten years at most."""
P, A, AD = QuestionState.PUBLISHED, QuestionState.ANSWERING, QuestionState.ANSWERED


def _clean(text: object, limit: int, what: str, required: bool = False) -> str:
    """One line of plain text, by the check-in's rule (whitespace folded, any other control character or bidi
    override refused, naming the field: found by probing, a question's BEL and a name's U+202E were kept)."""
    text = one_line(text, limit, what)
    if required and not text:
        raise InvalidInput(f"{what} must not be empty")
    return text


def require_moderator(clerk: Clerk) -> None:
    if "moderator" not in clerk.roles:
        raise NotAuthorised("only moderators may do this")


def may_publish(event: TownHallEvent, clerk: Clerk) -> bool:
    """The event's politicians and its moderators send media on stage."""
    return clerk.username in event.politicians or "moderator" in clerk.roles


def create_event(
    *,
    event_id: str,
    creator: Clerk,
    title: object,
    description: object,
    politicians: object,
    starts_at: float,
    ends_at: float,
    advance_questions: bool,
    questions_until: float | None,
    recorded: bool,
    recording_purpose: object,
    retention_days: int,
    audience_limit: int,
    now: float,
) -> TownHallEvent:
    require_moderator(creator)
    title = _clean(title, MAX_TITLE, "title", required=True)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be text of at most {MAX_DESCRIPTION} characters")
    for line in description.replace("\r\n", "\n").split("\n"):  # lines, each plain text (not splitlines: it
        one_line(line, MAX_DESCRIPTION, "description")  # takes U+001C-U+001E for line breaks)
    if (not isinstance(politicians, list | tuple) or not politicians or len(politicians) > MAX_POLITICIANS
            or not all(isinstance(p, str) and p for p in politicians) or len(set(politicians)) != len(politicians)):
        raise InvalidInput(f"politicians: 1 to {MAX_POLITICIANS} different staff usernames")
    if not ends_at > starts_at or ends_at <= now:
        raise InvalidInput("the event must end after it starts, and in the future")
    if questions_until is not None and (not advance_questions or questions_until > starts_at):
        raise InvalidInput("questions_until needs advance_questions and must not be after the start")
    if not 1 <= audience_limit <= MAX_AUDIENCE:
        raise InvalidInput(f"audience_limit: 1 to {MAX_AUDIENCE}")
    purpose = _clean(recording_purpose, MAX_DESCRIPTION, "recording_purpose")
    if recorded and (not purpose or not 1 <= retention_days <= MAX_RETENTION_DAYS):
        raise InvalidInput(f"a recorded event needs recording_purpose and retention_days (1 to {MAX_RETENTION_DAYS})")
    return TownHallEvent(
        id=event_id, title=title, description=description.strip(), politicians=tuple(politicians),
        moderators=(creator.username,), starts_at=starts_at, ends_at=ends_at,
        advance_questions=advance_questions, questions_until=questions_until, recorded=recorded,
        recording_purpose=purpose if recorded else "", retention_days=retention_days if recorded else 0,
        audience_limit=audience_limit, state=EventState.SCHEDULED, created_by=creator.username, created_at=now,
    )


def _moderating(event: TownHallEvent, clerk: Clerk) -> TownHallEvent:
    """Moderators who act on an event are listed as its moderators (several may work at once)."""
    require_moderator(clerk)
    if clerk.username in event.moderators:
        return event
    return event.replace(moderators=(*event.moderators, clerk.username))


def start(event: TownHallEvent, clerk: Clerk, now: float) -> TownHallEvent:
    event = _moderating(event, clerk)
    if event.state is not EventState.SCHEDULED:
        raise IllegalQuestionMove(f'Cannot start event {event.id} in state "{event.state.value}"')
    return event.replace(state=EventState.LIVE, live_since=now)


def end(event: TownHallEvent, clerk: Clerk, now: float, answering: Question | None = None) -> tuple[
        TownHallEvent, list[Question]]:
    """live -> ended; a question still being answered counts as answered; hands and stage are cleared."""
    event = _moderating(event, clerk)
    if event.state is not EventState.LIVE:
        raise EventNotLive()
    changed = []
    if answering is not None and answering.state is A:
        changed.append(answering.replace(state=AD, answered_at=now))
    return event.replace(state=EventState.ENDED, ended_at=now, answering=None, pinned=None, hands=(),
                         stage=()), changed


# -- questions -----------------------------------------------------------------------------------------
def questions_open(event: TownHallEvent, now: float) -> bool:
    if event.state is EventState.LIVE:
        return True
    if event.state is EventState.SCHEDULED and event.advance_questions:
        deadline = event.questions_until if event.questions_until is not None else event.starts_at
        return now <= deadline
    return False


def submit(event: TownHallEvent, *, question_id: str, text: object, author_name: object, author: str,
           now: float) -> Question:
    """A citizen sends a question; it waits for review."""
    if not questions_open(event, now):
        raise QuestionsClosed("questions are not taken now (past the deadline, or the event has ended)")
    return Question(
        id=question_id, event=event.id, text=_clean(text, MAX_QUESTION, "question", required=True),
        author_name=_clean(author_name, MAX_AUTHOR, "name"), author=author, state=QuestionState.PENDING,
        created_at=now, live=event.state is EventState.LIVE,
    )


def _require(q: Question, event: TownHallEvent, allowed: Iterable[QuestionState], action: str) -> None:
    if q.event != event.id:
        raise IllegalQuestionMove(f"question {q.id} belongs to another event")
    if q.state not in tuple(allowed):
        raise IllegalQuestionMove(f'Cannot {action} question {q.id} in state "{q.state.value}"')


def approve(event: TownHallEvent, q: Question, clerk: Clerk, text: object = None) -> tuple[TownHallEvent, Question]:
    """Publish a question, optionally with an edited text."""
    event = _moderating(event, clerk)
    _require(q, event, (QuestionState.PENDING, QuestionState.DISMISSED), "approve")
    if event.state is EventState.ENDED:
        raise IllegalQuestionMove("the event has ended")
    if text is None:
        return event, q.replace(state=P)
    edited = _clean(text, MAX_QUESTION, "question", required=True)
    return event, q.replace(state=P, text=edited, edited=q.edited or edited != q.text)


def dismiss(event: TownHallEvent, q: Question, clerk: Clerk) -> tuple[TownHallEvent, Question]:
    """Not taken: its author is told privately; nobody else sees it."""
    event = _moderating(event, clerk)
    _require(q, event, (QuestionState.PENDING, P), "dismiss")
    if event.pinned == q.id:
        event = event.replace(pinned=None)
    return event, q.replace(state=QuestionState.DISMISSED)


def merge(event: TownHallEvent, duplicate: Question, into: Question, clerk: Clerk) -> tuple[TownHallEvent, Question]:
    """Fold a duplicate into another question: its votes count there, its author's link follows it."""
    event = _moderating(event, clerk)
    _require(duplicate, event, (QuestionState.PENDING, P), "merge")
    _require(into, event, (P, A, AD), "merge into")
    if duplicate.id == into.id:
        raise IllegalQuestionMove("a question cannot be merged into itself")
    if event.pinned == duplicate.id:
        event = event.replace(pinned=None)
    return event, duplicate.replace(state=QuestionState.MERGED, merged_into=into.id)


def pin(event: TownHallEvent, q: Question | None, clerk: Clerk) -> TownHallEvent:
    """Pin a published question as "next" (None: unpin)."""
    event = _moderating(event, clerk)
    if event.state is EventState.ENDED:
        raise IllegalQuestionMove("the event has ended")
    if q is None:
        return event.replace(pinned=None)
    _require(q, event, (P,), "pin")
    return event.replace(pinned=q.id)


def answering(event: TownHallEvent, q: Question, clerk: Clerk, now: float,
              current: Question | None = None) -> tuple[TownHallEvent, list[Question]]:
    """Mark a question as being answered now; the one answered before goes back to published."""
    event = _moderating(event, clerk)
    if event.state is not EventState.LIVE:
        raise EventNotLive()
    _require(q, event, (P, AD), "answer")
    changed: list[Question] = []
    if current is not None and current.id != q.id and current.state is A:
        changed.append(current.replace(state=P, answer_started_at=None))
    changed.append(q.replace(state=A, answer_started_at=now, answered_at=None))
    return event.replace(answering=q.id, pinned=None if event.pinned == q.id else event.pinned), changed


def answered(event: TownHallEvent, q: Question, clerk: Clerk, now: float) -> tuple[TownHallEvent, Question]:
    event = _moderating(event, clerk)
    _require(q, event, (A,), "mark as answered")
    return event.replace(answering=None), q.replace(state=AD, answered_at=now)


def back(event: TownHallEvent, q: Question, clerk: Clerk) -> tuple[TownHallEvent, Question]:
    """Undo "being answered": published again."""
    event = _moderating(event, clerk)
    _require(q, event, (A,), "take back")
    return event.replace(answering=None), q.replace(state=P, answer_started_at=None)


def check_vote(event: TownHallEvent, q: Question) -> None:
    """Whether the audience may vote for ``q`` (the store keeps one vote per audience id)."""
    if q.event != event.id:
        raise NotVotable("the question belongs to another event")
    if event.state is EventState.ENDED:
        raise NotVotable("the event has ended")
    if not q.state.votable:
        raise NotVotable(f'question {q.id} is "{q.state.value}"')


def public_state(q: Question, root: Question | None = None) -> str:
    """What the author's link says: ``waiting``, ``published``, ``answering``, ``answered`` or ``not_taken``.
    A merged question follows the one it was merged into (``root``)."""
    if q.state is QuestionState.MERGED:
        return public_state(root) if root is not None and root.state is not QuestionState.MERGED else "published"
    return {
        QuestionState.PENDING: "waiting",
        QuestionState.PUBLISHED: "published",
        QuestionState.ANSWERING: "answering",
        QuestionState.ANSWERED: "answered",
        QuestionState.DISMISSED: "not_taken",
    }[q.state]


def ordered(questions: Iterable[Question], votes: Mapping[str, int], by: str = "votes") -> list[Question]:
    """Public questions in the order the audience sees them: by votes (ties: older first) or by time."""
    public = [q for q in questions if q.state.public]
    if by == "time":
        return sorted(public, key=lambda q: (q.created_at, q.id))
    if by != "votes":
        raise InvalidInput('order must be "votes" or "time"')
    return sorted(public, key=lambda q: (-votes.get(q.id, 0), q.created_at, q.id))


# -- hands and stage -------------------------------------------------------------------------------------
def raise_hand(event: TownHallEvent, audience: str, now: float) -> TownHallEvent:
    if event.state is not EventState.LIVE:
        raise EventNotLive()
    if event.guest(audience) is not None or any(h.audience == audience for h in event.hands):
        return event
    return event.replace(hands=(*event.hands, Hand(audience, now)))


def lower_hand(event: TownHallEvent, audience: str) -> TownHallEvent:
    return event.replace(hands=tuple(h for h in event.hands if h.audience != audience))


def invite(event: TownHallEvent, clerk: Clerk, audience: str, now: float) -> TownHallEvent:
    """Invite a citizen whose hand is raised on stage (going on stage takes both sides)."""
    event = _moderating(event, clerk)
    if event.state is not EventState.LIVE:
        raise EventNotLive()
    if not any(h.audience == audience for h in event.hands):
        raise NotInvited("only a raised hand can be invited on stage")
    if len(event.stage) >= MAX_STAGE_GUESTS:
        raise IllegalQuestionMove(f"at most {MAX_STAGE_GUESTS} guests on stage at once")
    return lower_hand(event, audience).replace(
        stage=(*event.stage, StageGuest(audience, StageState.INVITED, now)))


def accept(event: TownHallEvent, audience: str, publication_consent: bool, now: float) -> TownHallEvent:
    """The invited citizen accepts (after their camera and microphone check). If the event is recorded,
    ``publication_consent`` says whether they may be in the published recording."""
    guest = event.guest(audience)
    if event.state is not EventState.LIVE:
        raise EventNotLive()
    if guest is None or guest.state is not StageState.INVITED:
        raise NotInvited()
    new = StageGuest(audience, StageState.ON_STAGE, now, bool(publication_consent) and event.recorded)
    return event.replace(stage=tuple(new if g.audience == audience else g for g in event.stage))


def leave_stage(event: TownHallEvent, audience: str, clerk: Clerk | None = None) -> TownHallEvent:
    """A guest declines or leaves, or a moderator ends their time on stage."""
    if clerk is not None:
        event = _moderating(event, clerk)
    if event.guest(audience) is None:
        raise NotInvited("not on stage")
    return event.replace(stage=tuple(g for g in event.stage if g.audience != audience))


# -- the published recording -------------------------------------------------------------------------------
def publish(event: TownHallEvent, clerk: Clerk, composed: bool, published: bool = True) -> TownHallEvent:
    """A moderator publishes the event's composed recording on its page (or takes it down again)."""
    event = _moderating(event, clerk)
    if not event.recorded:
        raise NoRecording()
    if event.state is not EventState.ENDED:
        raise IllegalQuestionMove("a recording is published after the event")
    if published and not composed:
        raise NoRecording("the recording is not ready yet")
    return event.replace(published=published)


# -- chapters of the published recording ----------------------------------------------------------------
Chapter = tuple[float, float, str]


def chapters(event: TownHallEvent, questions: Sequence[Question], recording_start: float,
             recording_end: float, intro: str = "Begrüßung") -> list[Chapter]:
    """One chapter per answered question, from "being answered" to "answered", in seconds from the start
    of the recording; the time before the first answer is an intro chapter."""
    if not event.recorded:
        raise NoRecording()
    length = recording_end - recording_start
    spans = sorted(
        (max(0.0, q.answer_started_at - recording_start), min(length, q.answered_at - recording_start), q.text)
        for q in questions
        if q.state is AD and q.answer_started_at is not None and q.answered_at is not None
        and q.answered_at > recording_start and q.answer_started_at < recording_end
    )
    result: list[Chapter] = []
    cursor = 0.0
    for start_at, end_at, title in spans:
        start_at = max(start_at, cursor)
        if end_at <= start_at:
            continue
        if start_at > cursor:
            result.append((cursor, start_at, intro if not result else "…"))
        result.append((start_at, end_at, title))
        cursor = end_at
    if cursor < length:
        result.append((cursor, length, intro if not result else "…"))
    return result


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def youtube_description(chapters_: Sequence[Chapter]) -> str:
    """Chapter lines for a YouTube description: the first at 0:00, at least three, each at least 10 s
    (shorter ones are folded into the one before; a short first one into the one after). Raises NoRecording
    when fewer than three remain."""
    merged: list[list[object]] = []
    for start_at, end_at, title in chapters_:
        if merged and end_at - start_at < 10:
            merged[-1][1] = end_at
            continue
        if merged and float(merged[-1][1]) - float(merged[-1][0]) < 10:  # type: ignore[arg-type]
            # Only the first chapter can be short here: the next one absorbs it (and starts at 0:00)
            # rather than disappearing under a few seconds of greeting.
            merged[-1][1:] = [end_at, title]
            continue
        merged.append([start_at, end_at, title])
    if merged:
        merged[0][0] = 0.0
    if len(merged) < 3:
        raise NoRecording("YouTube needs at least three chapters of 10 s or more")
    return "\n".join(f"{_clock(float(s))} {' '.join(str(t).split())}" for s, _, t in merged)  # type: ignore[arg-type]


def webvtt(chapters_: Sequence[Chapter]) -> str:
    """A WebVTT chapters track (``<track kind="chapters">``; pages build their menu from its cues)."""

    def ts(seconds: float) -> str:
        ms = round(seconds * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    cues = [f"{i}\n{ts(s)} --> {ts(e)}\n{' '.join(t.split()).replace('-->', '->')}"
            for i, (s, e, t) in enumerate(chapters_, 1)]
    return "WEBVTT\n\n" + "\n\n".join(cues) + "\n"
