"""Values of the town-hall core: events, questions, hands, the stage. Frozen, serialisable, no I/O.

An *event* is a politician's office hour for many citizens. Its *audience* are browsers holding an
audience token (no account); questions are sent in advance or live, moderated, voted on and answered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventState(StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


class QuestionState(StrEnum):
    """Where a question is. What its author's link shows follows from it (``public_state``)."""

    PENDING = "pending"
    """Sent, waiting for a moderator's review; visible to its author only."""
    PUBLISHED = "published"
    """Approved: everyone sees it and may vote."""
    ANSWERING = "answering"
    """Being answered now (at most one per event)."""
    ANSWERED = "answered"
    DISMISSED = "dismissed"
    """Not taken; its author is told so privately, nobody else sees it."""
    MERGED = "merged"
    """A duplicate folded into another question (``merged_into``); its votes count there."""

    @property
    def public(self) -> bool:
        """Shown to the whole audience."""
        return self in (QuestionState.PUBLISHED, QuestionState.ANSWERING, QuestionState.ANSWERED)

    @property
    def votable(self) -> bool:
        return self in (QuestionState.PUBLISHED, QuestionState.ANSWERING)


class StageState(StrEnum):
    INVITED = "invited"
    ON_STAGE = "on_stage"


@dataclass(frozen=True)
class StageGuest:
    """A citizen from the audience whom a moderator invited on stage."""

    audience: str
    """The guest's audience id (never their token)."""
    state: StageState
    since: float
    publication_consent: bool = False
    """Agreed that the recording with them in it may be published (asked at acceptance if recorded)."""


@dataclass(frozen=True)
class Hand:
    audience: str
    raised_at: float


@dataclass(frozen=True)
class TownHallEvent:
    id: str
    """URL-safe, random; names the event's page ``/townhall/<id>``."""
    title: str
    description: str
    politicians: tuple[str, ...]
    """Staff usernames who speak (and publish media)."""
    moderators: tuple[str, ...]
    """Staff usernames (role ``moderator``) who run it; the creator is the first."""
    starts_at: float
    ends_at: float
    advance_questions: bool
    """Questions may be sent before the event starts ..."""
    questions_until: float | None
    """... until then (None: until the event starts)."""
    recorded: bool
    recording_purpose: str
    retention_days: int
    audience_limit: int
    state: EventState
    created_by: str
    created_at: float
    live_since: float | None = None
    ended_at: float | None = None
    pinned: str | None = None
    """The question pinned as "next"."""
    answering: str | None = None
    """The question being answered now."""
    hands: tuple[Hand, ...] = ()
    """Raised hands, oldest first."""
    stage: tuple[StageGuest, ...] = ()
    recording: str | None = None
    """Id of the event's recording (server.recording), once one was made."""
    published: bool = False
    """The recording is public on the event page."""
    speakers: tuple[str, ...] = ()
    """The politicians' display names, as the public sees them (usernames stay internal)."""

    def replace(self, **changes: Any) -> TownHallEvent:
        return dataclasses.replace(self, **changes)

    def guest(self, audience: str) -> StageGuest | None:
        return next((g for g in self.stage if g.audience == audience), None)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["politicians"], d["moderators"], d["speakers"] = (list(self.politicians), list(self.moderators),
                                                            list(self.speakers))
        d["stage"] = [{**dataclasses.asdict(g), "state": g.state.value} for g in self.stage]
        d["hands"] = [dataclasses.asdict(h) for h in self.hands]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TownHallEvent:
        d = dict(d)
        d["state"] = EventState(d["state"])
        d["politicians"], d["moderators"] = tuple(d["politicians"]), tuple(d["moderators"])
        d["speakers"] = tuple(d.get("speakers", ()))
        d["stage"] = tuple(StageGuest(g["audience"], StageState(g["state"]), g["since"], g["publication_consent"])
                           for g in d["stage"])
        d["hands"] = tuple(Hand(h["audience"], h["raised_at"]) for h in d["hands"])
        return cls(**d)


@dataclass(frozen=True)
class Question:
    id: str
    event: str
    text: str
    author_name: str
    """What the author chose to be called publicly; empty: anonymous."""
    author: str
    """The author's audience id (stable per browser and event), never shown to others."""
    state: QuestionState
    created_at: float
    live: bool
    """Asked during the event (else sent in advance)."""
    merged_into: str | None = None
    answer_started_at: float | None = None
    answered_at: float | None = None
    edited: bool = False
    """A moderator edited the text on approval."""

    def replace(self, **changes: Any) -> Question:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        d = dict(d)
        d["state"] = QuestionState(d["state"])
        return cls(**d)


@dataclass(frozen=True)
class TownHallEventChange:
    """Something that happened in an event; the shell turns it into (coalesced) messages."""

    kind: str
    """``event`` (the event's own fields changed), ``question`` (one question changed), ``votes``."""
    event: TownHallEvent
    question: Question | None = None
