"""The town-hall service: runs the Q&A core (``server.townhall.core``) against its store and tells the
listeners what changed. No rules of its own: "read, decide with the core, write, publish".

Audience members are browsers: joining an event hands out a secret token (192 bits; only its SHA-256 is
stored) and a public audience id. Votes change a set per question and mark the event "dirty"; the
signaling layer sends each dirty event's question list once per interval, however many votes came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .queue.errors import InvalidInput, RateLimited
from .queue.model import Clerk
from .store.base import Store
from .store.files import write_private
from .store.townhall import Decision, TownHallStore
from .townhall import core
from .townhall.errors import AlreadyVoted, AudienceFull, EventNotFound, NoRecording, NotVoted, QuestionNotFound
from .townhall.model import EventState, Question, TownHallEvent

if TYPE_CHECKING:
    from .media import MediaHub

log = logging.getLogger("sprechstunde.townhall")

Listener = Callable[[str, set[str]], Awaitable[None]]
"""``listener(event_id, kinds)``: kinds among ``event``, ``questions`` (public list or votes), ``moderation``."""

MAX_QUESTIONS_PER_EVENT = 2000
QUESTIONS_PER_ADDRESS = 5
QUESTION_WINDOW_SECONDS = 600.0
PUBLISHED_FILE = "recording.webm"
DAY = 86400.0


def stage_room(event_id: str) -> str:
    """The event's media room in the hub (a stage: few publishers, many viewers)."""
    return f"s:{event_id}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Audience:
    event: str
    audience: str
    """Public id of this browser in this event (never the token)."""


EARLIEST_TIME, LATEST_TIME = 946684800.0, 32503680000.0
"""2000-01-01 and 3000-01-01 (UTC): the times an event may have (beyond them dates overflow when shown)."""


def _time(value: object, what: str) -> float:
    """An ISO 8601 date-time with offset, or epoch seconds, between 2000 and 3000."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                seconds = parsed.timestamp()
    if seconds is not None and EARLIEST_TIME <= seconds <= LATEST_TIME:  # (NaN is not)
        return seconds
    raise InvalidInput(f"{what} must be an ISO 8601 date-time with a time zone offset, in the years 2000 to 2999")


class TownHallService:
    def __init__(self, store: TownHallStore, shared: Store, data_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.shared = shared
        """The main store: staff accounts (politicians must exist) and rate limits across nodes."""
        self.clock = clock
        self.root = data_dir / "townhall"
        """One directory per recorded event (mode 0700): tracks, the published file, its chapters."""
        self.hub: Callable[[], MediaHub | None] = lambda: None
        """Set by the signaling layer: this process's media hub."""
        self.composer: list[str] = ["nice", "-n", "10", sys.executable, "-m", "server.media.compose"]
        self._listeners: list[Listener] = []
        self._jobs: set[asyncio.Task[Any]] = set()

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _publish(self, event_id: str, *kinds: str) -> None:
        for listener in self._listeners:
            await listener(event_id, set(kinds))

    # -- events --
    async def create(self, clerk: Clerk, body: dict[str, Any]) -> TownHallEvent:
        core.require_moderator(clerk)
        allowed = {"title", "description", "politicians", "starts_at", "ends_at", "advance_questions",
                   "questions_until", "recorded", "recording_purpose", "retention_days", "audience_limit"}
        unknown = set(body) - allowed
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        politicians = body.get("politicians")
        speakers = []
        if isinstance(politicians, list):
            for username in politicians:
                account = await self.shared.get_staff(username) if isinstance(username, str) else None
                if account is None:
                    raise InvalidInput(f"politician {username!r} has no staff account")
                speakers.append(account.display_name)
        flags = {k: body.get(k, False) for k in ("advance_questions", "recorded")}
        numbers = {"retention_days": body.get("retention_days", 0), "audience_limit": body.get("audience_limit", 500)}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise InvalidInput(f"{key} must be true or false")
        for key, value in numbers.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInput(f"{key} must be a whole number")
        until = body.get("questions_until")
        event = core.create_event(
            event_id=secrets.token_urlsafe(9), creator=clerk, title=body.get("title"),
            description=body.get("description", ""), politicians=politicians,
            starts_at=_time(body.get("starts_at"), "starts_at"), ends_at=_time(body.get("ends_at"), "ends_at"),
            advance_questions=flags["advance_questions"],
            questions_until=None if until is None else _time(until, "questions_until"),
            recorded=flags["recorded"], recording_purpose=body.get("recording_purpose", ""),
            retention_days=numbers["retention_days"], audience_limit=numbers["audience_limit"], now=self.clock(),
        )
        event = event.replace(speakers=tuple(speakers))
        await self.store.create_event(event)
        log.info("town-hall event %s created", event.id)
        return event

    async def event(self, event_id: object) -> TownHallEvent:
        event = await self.store.get_event(event_id) if isinstance(event_id, str) and len(event_id) <= 64 else None
        if event is None:
            raise EventNotFound()
        return event

    async def events(self) -> list[TownHallEvent]:
        return await self.store.list_events()

    async def _update(self, event_id: object, decide: Callable[[TownHallEvent, dict[str, Question]], Decision[Any]],
                      *kinds: str) -> Any:
        await self.event(event_id)  # a clear EventNotFound for malformed ids too

        async def fn(event: TownHallEvent, questions: dict[str, Question]) -> Decision[Any]:
            return decide(event, questions)

        result = await self.store.update(str(event_id), fn)
        await self._publish(str(event_id), *kinds)
        return result

    async def start(self, clerk: Clerk, event_id: object) -> TownHallEvent:
        def decide(event: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.start(event, clerk, self.clock())
            return new, [], new

        event: TownHallEvent = await self._update(event_id, decide, "event")
        log.info("town-hall event %s is live", event.id)
        if event.recorded:
            self._start_recording(event)
        return event

    async def end(self, clerk: Clerk, event_id: object) -> TownHallEvent:
        def decide(event: TownHallEvent, questions: dict[str, Question]) -> Decision[TownHallEvent]:
            current = questions.get(event.answering) if event.answering else None
            new, changed = core.end(event, clerk, self.clock(), current)
            return new, changed, new

        event: TownHallEvent = await self._update(event_id, decide, "event", "questions", "moderation")
        log.info("town-hall event %s ended", event.id)
        if event.recorded:
            await self._stop_recording(event)
        return event

    # -- moderation --
    @staticmethod
    def _question(questions: dict[str, Question], question_id: object) -> Question:
        q = questions.get(question_id) if isinstance(question_id, str) else None
        if q is None:
            raise QuestionNotFound()
        return q

    async def moderate(self, clerk: Clerk, event_id: object, action: object, data: dict[str, Any]) -> Question | None:
        """approve (optional ``text``), dismiss, merge (``into``), pin, unpin, answering, answered, back."""
        core.require_moderator(clerk)
        now = self.clock()
        merged: list[tuple[str, str]] = []

        def decide(event: TownHallEvent, questions: dict[str, Question]) -> Decision[Question | None]:
            if action == "unpin":
                return core.pin(event, None, clerk), [], None
            q = self._question(questions, data.get("question"))
            if action == "approve":
                event, q = core.approve(event, q, clerk, data.get("text"))
            elif action == "dismiss":
                event, q = core.dismiss(event, q, clerk)
            elif action == "merge":
                event, q = core.merge(event, q, self._question(questions, data.get("into")), clerk)
                merged.append((q.id, str(q.merged_into)))
            elif action == "pin":
                return core.pin(event, q, clerk), [], q
            elif action == "answering":
                current = questions.get(event.answering) if event.answering else None
                event, changed = core.answering(event, q, clerk, now, current)
                return event, changed, changed[-1]
            elif action == "answered":
                event, q = core.answered(event, q, clerk, now)
            elif action == "back":
                event, q = core.back(event, q, clerk)
            else:
                raise InvalidInput("action must be approve, dismiss, merge, pin, unpin, answering, answered or back")
            return event, [q], q

        result: Question | None = await self._update(event_id, decide, "event", "questions", "moderation")
        for duplicate, into in merged:
            await self.store.merge_votes(duplicate, into)
        log.info("town-hall event %s: question %s %s", event_id, result.id if result else "-", action)
        return result

    # -- audience --
    async def join(self, event_id: object, token: object) -> tuple[str, Audience]:
        """A browser joins an event's audience; a token it already holds for this event keeps its id."""
        event = await self.event(event_id)
        if isinstance(token, str) and 20 <= len(token) <= 64:
            known = await self.store.audience_for(hash_token(token))
            if known is not None and known[0] == event.id:
                return token, Audience(*known)
        token = secrets.token_urlsafe(24)
        audience = await self.store.join_audience(event.id, hash_token(token), secrets.token_urlsafe(9),
                                                  event.audience_limit)
        if audience is None:
            raise AudienceFull()
        return token, Audience(event.id, audience)

    async def audience(self, token: object) -> Audience:
        found = await self.store.audience_for(hash_token(token)) if isinstance(token, str) and token else None
        if found is None:
            raise EventNotFound("unknown audience token")
        return Audience(*found)

    async def ask(self, who: Audience, text: object, author_name: object, address: str) -> Question:
        event = await self.event(who.event)
        q = core.submit(event, question_id=secrets.token_urlsafe(16), text=text, author_name=author_name,
                        author=who.audience, now=self.clock())
        # counted after validation: a mistyped question does not use up a citizen's allowance
        if await self.shared.hit(f"thq:{address}", QUESTION_WINDOW_SECONDS) > QUESTIONS_PER_ADDRESS:
            refused = RateLimited("too many questions from this address; try again in a few minutes")
            refused.retry_after = max(1, math.ceil(await self.shared.window_left(f"thq:{address}")))
            raise refused
        if not await self.store.add_question(q, MAX_QUESTIONS_PER_EVENT):
            raise InvalidInput("this event has reached its number of questions")
        log.info("town-hall event %s: question %s sent", event.id, q.id)
        await self._publish(event.id, "moderation")
        return q

    async def _votable(self, who: Audience, question_id: object) -> Question:
        event = await self.event(who.event)
        q = await self.store.get_question(question_id) if isinstance(question_id, str) else None
        if q is None or q.event != who.event:
            raise QuestionNotFound()
        core.check_vote(event, q)
        return q

    async def vote(self, who: Audience, question_id: object) -> None:
        q = await self._votable(who, question_id)
        if not await self.store.vote(q.id, who.audience):
            raise AlreadyVoted()
        await self._publish(who.event, "questions")

    async def unvote(self, who: Audience, question_id: object) -> None:
        q = await self._votable(who, question_id)
        if not await self.store.unvote(q.id, who.audience):
            raise NotVoted()
        await self._publish(who.event, "questions")

    async def hand(self, who: Audience, raised: object) -> TownHallEvent:
        if not isinstance(raised, bool):
            raise InvalidInput("raised must be true or false")
        now = self.clock()

        def decide(event: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.raise_hand(event, who.audience, now) if raised else core.lower_hand(event, who.audience)
            return (new if new != event else None), [], new

        result: TownHallEvent = await self._update(who.event, decide, "event")
        return result

    async def invite(self, clerk: Clerk, event_id: object, audience: object) -> TownHallEvent:
        now = self.clock()

        def decide(event: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.invite(event, clerk, str(audience), now)
            return new, [], new

        result: TownHallEvent = await self._update(event_id, decide, "event")
        return result

    async def accept(self, who: Audience, publication_consent: object) -> TownHallEvent:
        now = self.clock()

        def decide(event: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.accept(event, who.audience, publication_consent is True, now)
            return new, [], new

        result: TownHallEvent = await self._update(who.event, decide, "event")
        if result.recorded:  # kept with the recording: who may be shown in the published file
            guest = result.guest(who.audience)
            consents = self._meta(result.id).get("consents", {})
            consents[who.audience] = bool(guest and guest.publication_consent)
            self._write_meta(result.id, consents=consents)
        return result

    async def leave_stage(self, event_id: object, audience: object, clerk: Clerk | None = None) -> TownHallEvent:
        def decide(event: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.leave_stage(event, str(audience), clerk)
            return new, [], new

        result: TownHallEvent = await self._update(event_id, decide, "event")
        return result

    # -- the recording: made while live, composed with a chapter per answered question, published --
    def directory(self, event_id: str) -> Path:
        return self.root / event_id

    def _meta(self, event_id: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((self.directory(event_id) / "meta.json").read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return meta

    def _write_meta(self, event_id: str, **changes: Any) -> None:
        directory = self.directory(event_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        meta = self._meta(event_id) | changes
        write_private(directory / "meta.json", json.dumps(meta))

    def _start_recording(self, event: TownHallEvent) -> None:
        hub = self.hub()
        if hub is None:
            log.error("town-hall event %s: no media hub, not recorded", event.id)
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._write_meta(event.id, started_at=self.clock(), composition="recording")
        hub.start_recording(stage_room(event.id), self.directory(event.id),
                            on_failure=lambda reason: log.error("town-hall event %s: recording failed: %s",
                                                                event.id, reason))
        log.info("town-hall event %s: recording", event.id)

    async def _stop_recording(self, event: TownHallEvent) -> None:
        hub = self.hub()
        recorder = hub.recorder(stage_room(event.id)) if hub is not None else None
        if recorder is None:
            return
        await recorder.stop()
        self._write_meta(event.id, ended_at=self.clock(), composition="pending")
        task = asyncio.ensure_future(self.compose(event.id))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def compose(self, event_id: str) -> bool:
        """Compose the published file: only guests who agreed to publication are in it; Matroska chapters,
        a WebVTT chapters track and a YouTube description block, one chapter per answered question."""
        from .recordings import run_composer

        event = await self.event(event_id)
        directory = self.directory(event_id)
        meta = self._meta(event_id)
        try:
            manifest = json.loads((directory / "tracks.json").read_text("utf-8"))
        except (OSError, ValueError):
            self._write_meta(event_id, composition="failed")
            log.error("town-hall event %s: no tracks to compose", event_id)
            return False
        everyone = json.loads((directory / "tracks.all.json").read_text("utf-8")) if (
            directory / "tracks.all.json").exists() else manifest
        write_private(directory / "tracks.all.json", json.dumps(everyone))
        consents = meta.get("consents", {})
        shown = [t for t in everyone["tracks"] if not t["participant"].startswith("audience:")
                 or consents.get(t["participant"].removeprefix("audience:")) is True]
        write_private(directory / "tracks.json", json.dumps({**everyone, "tracks": shown}))
        started = float(meta.get("started_at", event.live_since or 0.0))
        ended = float(meta.get("ended_at", event.ended_at or started))
        # the recorder's timeline is the file's: it may end a little before the event did
        ended = min(ended, started + float(everyone.get("duration") or ended - started))
        chapters = core.chapters(event, await self.store.questions(event_id), started, ended)
        write_private(directory / "chapters.json", json.dumps(chapters))
        ok, result, error = await run_composer(self.composer, directory)
        if not ok:
            self._write_meta(event_id, composition="failed")
            log.error("town-hall event %s: composition failed: %s", event_id, error[-500:])
            return False
        write_private(directory / "chapters.vtt", core.webvtt(chapters))
        youtube = None
        with contextlib.suppress(NoRecording):
            youtube = core.youtube_description(chapters)
        self._write_meta(event_id, composition="done", duration=float(result.get("duration", 0.0)),
                         chapters=chapters, youtube=youtube)
        shutil.rmtree(directory / "tracks", ignore_errors=True)
        log.info("town-hall event %s: recording composed (%d chapters)", event_id, len(chapters))
        return True

    def published_file(self, event: TownHallEvent, name: str = PUBLISHED_FILE) -> Path | None:
        path = self.directory(event.id) / name
        return path if event.published and path.is_file() else None

    def recording_info(self, event: TownHallEvent) -> dict[str, Any]:
        """Chapters and the YouTube block of the published recording."""
        if not event.recorded:
            raise NoRecording()
        meta = self._meta(event.id)
        if not event.published or meta.get("composition") != "done":
            raise NoRecording("the recording is not published")
        return {"duration": meta.get("duration"), "started_at": meta.get("started_at"),
                "chapters": [{"start": s, "end": e, "title": t} for s, e, t in meta.get("chapters", [])],
                "youtube": meta.get("youtube")}

    async def publish(self, clerk: Clerk, event_id: object, published: object) -> TownHallEvent:
        if not isinstance(published, bool):
            raise InvalidInput("published must be true or false")
        event = await self.event(event_id)
        composed = self._meta(event.id).get("composition") == "done"

        def decide(current: TownHallEvent, _: dict[str, Question]) -> Decision[TownHallEvent]:
            new = core.publish(current, clerk, composed, published)
            return new, [], new

        result: TownHallEvent = await self._update(event.id, decide, "event")
        log.info("town-hall event %s: recording %s", event.id, "published" if published else "withdrawn")
        return result

    async def sweep(self, now: float | None = None) -> int:
        """Delete recordings of ended events whose retention has passed."""
        now = self.clock() if now is None else now
        deleted = 0
        for event in await self.store.list_events():
            if (event.state is EventState.ENDED and event.recorded and event.ended_at is not None
                    and event.ended_at + event.retention_days * DAY <= now and self.directory(event.id).exists()):
                await asyncio.to_thread(shutil.rmtree, self.directory(event.id), True)
                if event.published:
                    await self.store.update(event.id, _unpublished)
                log.info("town-hall event %s: recording deleted (retention ended)", event.id)
                deleted += 1
        return deleted

    # -- views --
    async def public_questions(self, event_id: str, by: str = "votes") -> list[dict[str, Any]]:
        """The audience's list: public questions in order, with votes (merged duplicates counted in)."""
        questions = await self.store.questions(event_id)
        public = [q for q in questions if q.state.public]
        votes = await self.store.vote_counts([q.id for q in public])
        return [question_view(q, votes.get(q.id, 0)) for q in core.ordered(public, votes, by)]

    async def moderation_questions(self, event_id: str) -> list[dict[str, Any]]:
        """Every question for moderators, with votes and state, oldest first."""
        questions = await self.store.questions(event_id)
        votes = await self.store.vote_counts([q.id for q in questions])
        return [question_view(q, votes.get(q.id, 0), moderation=True) for q in questions]

    async def question_status(self, question_id: object) -> dict[str, Any]:
        """What a question's link shows (its id is the capability: 128 random bits)."""
        q = await self.store.get_question(question_id) if isinstance(question_id, str) else None
        if q is None:
            raise QuestionNotFound()
        root = await self.store.get_question(q.merged_into) if q.merged_into else None
        shown = root if root is not None else q
        status = {"id": q.id, "event": q.event, "text": q.text, "state": core.public_state(q, root),
                  "answer_started_at": shown.answer_started_at, "answered_at": shown.answered_at,
                  "merged_into": q.merged_into, "recording_at": None}
        event = await self.store.get_event(q.event)
        started = self._meta(q.event).get("started_at") if event is not None and event.published else None
        if started is not None and shown.answer_started_at is not None:
            status["recording_at"] = round(max(0.0, shown.answer_started_at - float(started)), 1)
        return status

    async def my_votes(self, who: Audience) -> list[str]:
        questions = await self.store.questions(who.event)
        return sorted(await self.store.voted([q.id for q in questions if q.state.votable], who.audience))

    async def close(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.store.close()


async def _unpublished(event: TownHallEvent, _: dict[str, Question]) -> Decision[None]:
    return event.replace(published=False), [], None


def question_view(q: Question, votes: int, moderation: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {"id": q.id, "text": q.text, "author_name": q.author_name, "votes": votes,
                            "state": q.state.value, "live": q.live, "created_at": q.created_at,
                            "answered_at": q.answered_at}
    if moderation:
        view |= {"merged_into": q.merged_into, "edited": q.edited}
    return view


def event_view(event: TownHallEvent) -> dict[str, Any]:
    """What anyone may know about an event (no audience ids except those on stage)."""
    return {
        "id": event.id, "title": event.title, "description": event.description,
        "politicians": list(event.politicians), "speakers": list(event.speakers or event.politicians),
        "starts_at": event.starts_at, "ends_at": event.ends_at,
        "state": event.state.value, "advance_questions": event.advance_questions,
        "questions_until": event.questions_until, "recorded": event.recorded,
        "recording_purpose": event.recording_purpose, "retention_days": event.retention_days,
        "pinned": event.pinned, "answering": event.answering, "hands": len(event.hands),
        "stage": [{"audience": g.audience, "state": g.state.value} for g in event.stage],
        "published": event.published,
    }


def staff_event_view(event: TownHallEvent) -> dict[str, Any]:
    """For moderators and politicians: raised hands in order too."""
    return event_view(event) | {
        "hands": [{"audience": h.audience, "raised_at": h.raised_at} for h in event.hands],
        "moderators": list(event.moderators),
    }


