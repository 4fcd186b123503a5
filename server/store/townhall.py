"""Where town-hall events, questions, votes and audience tokens live. Two implementations, one contract
(``tests/townhall_store_contract.py``): ``MemoryTownHallStore`` (the embedded default: a JSON file in
``data_dir``, written atomically with mode 0600 after each change of events or questions, so scheduled
events and their questions survive a restart; votes and audience tokens are persisted with them) and
``RedisTownHallStore`` (shared by every node).

Moderation goes through :meth:`TownHallStore.update`: the function given to it sees the event and all its
questions as stored, decides with the pure core (``server.townhall.core``) and returns what to write; the
store writes it atomically, or runs the function again when another moderator (another node) changed
the event or a question meanwhile. Votes are sets per question (one per audience id), changed by single
atomic commands, so thousands of votes never contend with moderation.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from ..queue.errors import Conflict, InvalidInput
from ..townhall.errors import EventNotFound
from ..townhall.model import Question, TownHallEvent
from .files import write_private
from .redis import redis_client

T = TypeVar("T")

log = logging.getLogger(__name__)

Decision = tuple[TownHallEvent | None, list[Question], T]
"""What an update function returns: the event to write (None: unchanged), questions to write, a result."""


class TownHallStore(abc.ABC):
    # -- events and questions --
    @abc.abstractmethod
    async def create_event(self, event: TownHallEvent) -> None: ...

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> TownHallEvent | None: ...

    @abc.abstractmethod
    async def list_events(self) -> builtins.list[TownHallEvent]:
        """Every event, by start time (earliest first)."""

    @abc.abstractmethod
    async def get_question(self, question_id: str) -> Question | None: ...

    @abc.abstractmethod
    async def questions(self, event_id: str) -> builtins.list[Question]:
        """Every question of an event, oldest first."""

    @abc.abstractmethod
    async def add_question(self, question: Question, max_per_event: int) -> bool:
        """Store a new question unless its event already has ``max_per_event``; atomic across nodes."""

    @abc.abstractmethod
    async def update(
        self, event_id: str, fn: Callable[[TownHallEvent, dict[str, Question]], Awaitable[Decision[T]]]
    ) -> T:
        """Run ``fn(event, questions by id)`` and write what it returns, atomically; rerun on conflict
        (raises ``server.queue.errors.Conflict`` after too many). Raises ``EventNotFound`` if the event does
        not exist. Exceptions from ``fn`` propagate and nothing is written."""

    # -- votes: one per audience id and question --
    @abc.abstractmethod
    async def vote(self, question_id: str, audience: str) -> bool:
        """Add a vote; False if this audience id had already voted for it."""

    @abc.abstractmethod
    async def unvote(self, question_id: str, audience: str) -> bool:
        """Take a vote back; False if there was none."""

    @abc.abstractmethod
    async def merge_votes(self, duplicate_id: str, into_id: str) -> None:
        """The votes of ``duplicate_id`` count for ``into_id`` too (a set union: nobody counts twice)."""

    @abc.abstractmethod
    async def vote_counts(self, question_ids: builtins.list[str]) -> dict[str, int]: ...

    @abc.abstractmethod
    async def voted(self, question_ids: builtins.list[str], audience: str) -> set[str]:
        """Which of these questions this audience id has voted for."""

    # -- audience tokens (the SHA-256 of a browser's secret, never the secret) --
    @abc.abstractmethod
    async def join_audience(self, event_id: str, token_hash: str, audience: str, limit: int) -> str | None:
        """Register a browser in an event's audience: returns its audience id (the existing one when the
        token hash is known already), or None when the event has ``limit`` audience members."""

    @abc.abstractmethod
    async def audience_for(self, token_hash: str) -> tuple[str, str] | None:
        """(event id, audience id) of a token hash, or None."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _oldest_first(questions: Iterable[Question]) -> builtins.list[Question]:
    """The id breaks ties so both stores list in the same order."""
    return sorted(questions, key=lambda q: (q.created_at, q.id))


def _by_start(events: Iterable[TownHallEvent]) -> builtins.list[TownHallEvent]:
    return sorted(events, key=lambda e: (e.starts_at, e.id))


def _check_decision(event_id: str, event: TownHallEvent | None, questions: builtins.list[Question]) -> None:
    """An update writes its own event only: the conflict detection covers nothing else."""
    if event is not None and event.id != event_id:
        raise ValueError(f"an update of event {event_id} returned event {event.id}")
    for q in questions:
        if q.event != event_id:
            raise ValueError(f"an update of event {event_id} returned question {q.id} of event {q.event}")


def _other_event(event_id: str) -> InvalidInput:
    return InvalidInput(f"this audience token belongs to another event than {event_id}")


UPDATE_ATTEMPTS = 50
"""Runs of an update function before giving up with ``Conflict``."""
BACKOFF_SECONDS = 0.002
"""Upper bound of the random pause before a rerun (Redis), times the attempt number (capped)."""
FLUSH_DELAY = 0.5
"""Seconds the memory store waits before writing votes and audience joins: at 50 votes a second the
file is written twice a second, not fifty times. Events and questions are written at once."""


class MemoryTownHallStore(TownHallStore):
    """Everything in dicts, written to a JSON file (mode 0600) and read at start.

    Methods other than ``update`` never suspend, so each is atomic within the process (the embedded
    store serves one process). ``update`` holds the event's lock while ``fn`` runs, so updates of one
    event take turns; a question added meanwhile (``add_question`` takes no lock, so ``fn`` may call
    it) bumps the event's version and ``fn`` runs again on fresh data, as on Redis.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._events: dict[str, TownHallEvent] = {}
        self._questions: dict[str, Question] = {}
        self._by_event: dict[str, builtins.list[str]] = {}
        """Event id -> ids of its questions, in the order they were added."""
        self._votes: dict[str, set[str]] = {}
        self._audience: dict[str, tuple[str, str]] = {}
        """Token hash -> (event id, audience id)."""
        self._members: dict[str, set[str]] = {}
        """Event id -> its audience ids (the audience limit counts them)."""
        self._versions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._load()

    # -- the file --
    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        # A corrupt file raises: starting empty would silently drop scheduled events and their questions.
        data = json.loads(self._path.read_text("utf-8") or "{}")
        for d in data.get("events", []):
            event = TownHallEvent.from_dict(d)
            self._events[event.id] = event
        for d in data.get("questions", []):
            q = Question.from_dict(d)
            self._questions[q.id] = q
            self._by_event.setdefault(q.event, []).append(q.id)
        self._votes = {q: set(voters) for q, voters in data.get("votes", {}).items()}
        for token_hash, (event_id, audience) in data.get("audience", {}).items():
            self._audience[token_hash] = (event_id, audience)
            self._members.setdefault(event_id, set()).add(audience)

    def _persist(self) -> None:
        """Write everything now (and forget a pending delayed write: this one includes it)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {
                "events": [e.to_dict() for e in _by_start(self._events.values())],
                "questions": [q.to_dict() for q in _oldest_first(self._questions.values())],
                "votes": {q: sorted(voters) for q, voters in self._votes.items() if voters},
                "audience": {t: list(pair) for t, pair in self._audience.items()},
            },
            separators=(",", ":"),
        )
        write_private(self._path, payload)

    def _persist_soon(self) -> None:
        """Votes and joins come in bursts: one write per ``FLUSH_DELAY`` carries all of them."""
        if self._path is None or self._flush_handle is not None:
            return
        self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._persist)

    def _touch(self, event_id: str) -> None:
        self._versions[event_id] = self._versions.get(event_id, 0) + 1

    # -- events and questions --
    async def create_event(self, event: TownHallEvent) -> None:
        self._events[event.id] = event
        self._touch(event.id)
        self._persist()

    async def get_event(self, event_id: str) -> TownHallEvent | None:
        return self._events.get(event_id)

    async def list_events(self) -> builtins.list[TownHallEvent]:
        return _by_start(self._events.values())

    async def get_question(self, question_id: str) -> Question | None:
        return self._questions.get(question_id)

    async def questions(self, event_id: str) -> builtins.list[Question]:
        return _oldest_first(self._questions[i] for i in self._by_event.get(event_id, ()))

    async def add_question(self, question: Question, max_per_event: int) -> bool:
        if question.event not in self._events:
            raise EventNotFound()
        ids = self._by_event.setdefault(question.event, [])
        if question.id in self._questions or len(ids) >= max_per_event:
            return False
        self._questions[question.id] = question
        ids.append(question.id)
        self._touch(question.event)
        self._persist()
        return True

    async def update(
        self, event_id: str, fn: Callable[[TownHallEvent, dict[str, Question]], Awaitable[Decision[T]]]
    ) -> T:
        if event_id not in self._events:
            raise EventNotFound()
        lock = self._locks.setdefault(event_id, asyncio.Lock())
        async with lock:
            for _ in range(UPDATE_ATTEMPTS):
                event = self._events.get(event_id)
                if event is None:
                    raise EventNotFound()
                version = self._versions.get(event_id, 0)
                questions = {i: self._questions[i] for i in self._by_event.get(event_id, ())}
                new_event, new_questions, result = await fn(event, questions)
                if self._versions.get(event_id, 0) != version:
                    continue  # a question was added (or the event replaced) while fn ran
                _check_decision(event_id, new_event, new_questions)
                if new_event is None and not new_questions:
                    return result
                if new_event is not None:
                    self._events[event_id] = new_event
                ids = self._by_event.setdefault(event_id, [])
                for q in new_questions:
                    if q.id not in self._questions:
                        ids.append(q.id)
                    self._questions[q.id] = q
                self._touch(event_id)
                self._persist()
                return result
        log.warning("town-hall update gave up after %d conflicting attempts", UPDATE_ATTEMPTS)
        raise Conflict()

    # -- votes --
    async def vote(self, question_id: str, audience: str) -> bool:
        voters = self._votes.setdefault(question_id, set())
        if audience in voters:
            return False
        voters.add(audience)
        self._persist_soon()
        return True

    async def unvote(self, question_id: str, audience: str) -> bool:
        voters = self._votes.get(question_id)
        if voters is None or audience not in voters:
            return False
        voters.discard(audience)
        self._persist_soon()
        return True

    async def merge_votes(self, duplicate_id: str, into_id: str) -> None:
        extra = self._votes.get(duplicate_id, set())
        if extra:
            self._votes.setdefault(into_id, set()).update(extra)
            self._persist_soon()

    async def vote_counts(self, question_ids: builtins.list[str]) -> dict[str, int]:
        return {q: len(self._votes.get(q, ())) for q in question_ids}

    async def voted(self, question_ids: builtins.list[str], audience: str) -> set[str]:
        return {q for q in question_ids if audience in self._votes.get(q, ())}

    # -- audience --
    async def join_audience(self, event_id: str, token_hash: str, audience: str, limit: int) -> str | None:
        known = self._audience.get(token_hash)
        if known is not None:
            if known[0] != event_id:
                raise _other_event(event_id)
            return known[1]
        members = self._members.setdefault(event_id, set())
        if len(members) >= limit:
            return None
        self._audience[token_hash] = (event_id, audience)
        members.add(audience)
        self._persist_soon()
        return audience

    async def audience_for(self, token_hash: str) -> tuple[str, str] | None:
        return self._audience.get(token_hash)

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._persist()


# Redis. Keys, all under the prefix:
#   th:events           zset event id -> starts_at        th:e:{id}      event JSON
#   th:qs:{event}       zset question id -> created_at    th:q:{id}      question JSON
#   th:votes:{question} set of audience ids               th:aud         hash token hash -> "event:audience"
#   th:aud:{event}      set of the event's audience ids (its size is what the audience limit counts)
# Every write that must be atomic against a limit is one Lua script with its keys in KEYS.

_ADD_QUESTION = """
-- KEYS: event, questions of the event, question; ARGV: id, json, created_at, max_per_event
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

_JOIN_AUDIENCE = """
-- KEYS: token hash -> "event:audience" hash, the event's audience set
-- ARGV: token hash, event id, audience id, limit. Returns "event:audience", or false when full.
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known then return known end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return false end
local value = ARGV[2] .. ':' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('SADD', KEYS[2], ARGV[3])
return value
"""


def _pair(value: str) -> tuple[str, str]:
    """``event:audience`` (event ids are URL-safe, without a colon; audience ids may have one)."""
    event_id, _, audience = value.partition(":")
    return event_id, audience


class RedisTownHallStore(TownHallStore):
    def __init__(self, url: str, prefix: str = "sps:") -> None:
        self._redis: aioredis.Redis = redis_client(url)
        self._prefix = prefix
        self._add_question = self._redis.register_script(_ADD_QUESTION)
        self._join = self._redis.register_script(_JOIN_AUDIENCE)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def _events_key(self) -> str:
        return f"{self._prefix}th:events"

    @property
    def _aud_key(self) -> str:
        return f"{self._prefix}th:aud"

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}th:e:{event_id}"

    def _qs_key(self, event_id: str) -> str:
        return f"{self._prefix}th:qs:{event_id}"

    def _q_key(self, question_id: str) -> str:
        return f"{self._prefix}th:q:{question_id}"

    def _votes_key(self, question_id: str) -> str:
        return f"{self._prefix}th:votes:{question_id}"

    def _members_key(self, event_id: str) -> str:
        return f"{self._prefix}th:aud:{event_id}"

    # -- events and questions --
    async def create_event(self, event: TownHallEvent) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._event_key(event.id), _dumps(event.to_dict()))
            pipe.zadd(self._events_key, {event.id: event.starts_at})
            await pipe.execute()

    async def get_event(self, event_id: str) -> TownHallEvent | None:
        raw = await self._redis.get(self._event_key(event_id))
        return TownHallEvent.from_dict(json.loads(raw)) if raw is not None else None

    async def list_events(self) -> builtins.list[TownHallEvent]:
        ids = cast("list[str]", await self._redis.zrange(self._events_key, 0, -1))
        if not ids:
            return []
        raws = await self._redis.mget([self._event_key(i) for i in ids])
        return _by_start(TownHallEvent.from_dict(json.loads(raw)) for raw in raws if raw is not None)

    async def get_question(self, question_id: str) -> Question | None:
        raw = await self._redis.get(self._q_key(question_id))
        return Question.from_dict(json.loads(raw)) if raw is not None else None

    async def questions(self, event_id: str) -> builtins.list[Question]:
        ids = cast("list[str]", await self._redis.zrange(self._qs_key(event_id), 0, -1))
        if not ids:
            return []
        raws = await self._redis.mget([self._q_key(i) for i in ids])
        return _oldest_first(Question.from_dict(json.loads(raw)) for raw in raws if raw is not None)

    async def add_question(self, question: Question, max_per_event: int) -> bool:
        result = int(await self._add_question(
            keys=[self._event_key(question.event), self._qs_key(question.event), self._q_key(question.id)],
            args=[question.id, _dumps(question.to_dict()), repr(float(question.created_at)), int(max_per_event)],
        ))
        if result < 0:
            raise EventNotFound()
        return result == 1

    async def update(
        self, event_id: str, fn: Callable[[TownHallEvent, dict[str, Question]], Awaitable[Decision[T]]]
    ) -> T:
        event_key, qs_key = self._event_key(event_id), self._qs_key(event_id)
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    # Watch before reading: whatever changes after a read makes EXEC fail.
                    await pipe.watch(event_key, qs_key)
                    raw = await pipe.get(event_key)
                    if raw is None:
                        raise EventNotFound()
                    event = TownHallEvent.from_dict(json.loads(raw))
                    ids = cast("list[str]", await pipe.zrange(qs_key, 0, -1))
                    questions: dict[str, Question] = {}
                    if ids:
                        keys = [self._q_key(i) for i in ids]
                        await pipe.watch(*keys)
                        for q_raw in await pipe.mget(keys):
                            if q_raw is not None:
                                q = Question.from_dict(json.loads(q_raw))
                                questions[q.id] = q
                    try:
                        new_event, new_questions, result = await fn(event, questions)
                    except WatchError:
                        raise
                    except Exception:
                        # The reads are not one snapshot: fn may have refused because of a question
                        # that another node changed after the event was read. If anything it read
                        # changed, run it again; otherwise its error stands.
                        pipe.multi()
                        await pipe.execute()  # raises WatchError if a watched key changed
                        raise
                    _check_decision(event_id, new_event, new_questions)
                    pipe.multi()
                    if new_event is not None:
                        pipe.set(event_key, _dumps(new_event.to_dict()))
                        pipe.zadd(self._events_key, {event_id: new_event.starts_at})
                    for q in new_questions:
                        pipe.set(self._q_key(q.id), _dumps(q.to_dict()))
                        if q.id not in questions:
                            pipe.zadd(qs_key, {q.id: q.created_at})
                    # Also when nothing is written: EXEC fails if what fn read changed, so its result
                    # never rests on an inconsistent view.
                    await pipe.execute()
                    return result
                except WatchError:
                    pass
            await asyncio.sleep(random.uniform(0, BACKOFF_SECONDS * min(attempt, 10)))
        log.warning("town-hall update gave up after %d conflicting attempts", UPDATE_ATTEMPTS)
        raise Conflict()

    # -- votes --
    async def vote(self, question_id: str, audience: str) -> bool:
        return int(await self._redis.sadd(self._votes_key(question_id), audience)) == 1  # type: ignore[misc]

    async def unvote(self, question_id: str, audience: str) -> bool:
        return int(await self._redis.srem(self._votes_key(question_id), audience)) == 1  # type: ignore[misc]

    async def merge_votes(self, duplicate_id: str, into_id: str) -> None:
        into = self._votes_key(into_id)
        await self._redis.sunionstore(into, [into, self._votes_key(duplicate_id)])

    async def vote_counts(self, question_ids: builtins.list[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(question_ids))
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for q in ids:
                pipe.scard(self._votes_key(q))
            counts = await pipe.execute()
        return {q: int(n) for q, n in zip(ids, counts, strict=True)}

    async def voted(self, question_ids: builtins.list[str], audience: str) -> set[str]:
        ids = list(dict.fromkeys(question_ids))
        if not ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for q in ids:
                pipe.sismember(self._votes_key(q), audience)
            found = await pipe.execute()
        return {q for q, yes in zip(ids, found, strict=True) if yes}

    # -- audience --
    async def join_audience(self, event_id: str, token_hash: str, audience: str, limit: int) -> str | None:
        value = await self._join(keys=[self._aud_key, self._members_key(event_id)],
                                 args=[token_hash, event_id, audience, int(limit)])
        if value is None:
            return None
        known_event, known_audience = _pair(str(value))
        if known_event != event_id:
            raise _other_event(event_id)
        return known_audience

    async def audience_for(self, token_hash: str) -> tuple[str, str] | None:
        value = cast("str | None", await self._redis.hget(self._aud_key, token_hash))  # type: ignore[misc]
        return _pair(value) if value is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


def make_townhall_store(redis_url: str | None, prefix: str, data_dir: Path) -> TownHallStore:
    """Redis when the server is configured with one (shared by every node), else the JSON file."""
    if redis_url:
        return RedisTownHallStore(redis_url, prefix)
    return MemoryTownHallStore(data_dir / "townhall.json")
