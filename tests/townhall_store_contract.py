"""What every town-hall store must do, written once: ``TownHallStoreContract`` runs on the
``townhall_store`` fixture (``tests/test_townhall_store.py``), the JSON-file store and then Redis.

Events and questions are built with the pure core (``server.townhall.core``), and moderation goes
through ``update`` with core moves, as the shell does it.
"""

from __future__ import annotations

import asyncio

import pytest

from server.queue.errors import Conflict, InvalidInput
from server.queue.model import Clerk
from server.store.townhall import TownHallStore
from server.townhall import core
from server.townhall.errors import EventNotFound
from server.townhall.model import Hand, Question, QuestionState, StageGuest, StageState, TownHallEvent

NOW = 1_800_000_000.0
HOUR = 3600.0
MIA = Clerk("mia", "Mia", frozenset(), frozenset({"moderator"}))
MAX = Clerk("max", "Max", frozenset(), frozenset({"moderator"}))


def make_event(event_id: str = "ev1", starts_at: float = NOW + HOUR, *, recorded: bool = True) -> TownHallEvent:
    return core.create_event(
        event_id=event_id, creator=MIA, title=f"Bürgersprechstunde {event_id}", description="Fragen Sie!",
        politicians=["paula", "peter"], starts_at=starts_at, ends_at=starts_at + HOUR, advance_questions=True,
        questions_until=None, recorded=recorded, recording_purpose="Veröffentlichung" if recorded else "",
        retention_days=90 if recorded else 0, audience_limit=500, now=NOW,
    )


def make_question(q_id: str, event: TownHallEvent, at: float = NOW + 1, text: str = "Wann kommt der Bus?",
                  author: str = "aud-1") -> Question:
    return core.submit(event, question_id=q_id, text=text, author_name="Erika", author=author, now=at)


def full_event() -> TownHallEvent:
    """An event with every field set: live, pinned, answering, hands, stage, recording."""
    return make_event("full").replace(
        state=core.EventState.LIVE, live_since=NOW + HOUR, moderators=("mia", "max"), pinned="q1",
        answering="q2", hands=(Hand("aud-3", NOW + HOUR + 5), Hand("aud-4", NOW + HOUR + 6)),
        stage=(StageGuest("aud-5", StageState.ON_STAGE, NOW + HOUR + 9, True),
               StageGuest("aud-6", StageState.INVITED, NOW + HOUR + 10)),
        recording="rec-1", published=True, questions_until=NOW + 30,
    )


async def setup(store: TownHallStore, n: int = 3) -> tuple[TownHallEvent, list[Question]]:
    event = make_event()
    await store.create_event(event)
    qs = [make_question(f"q{i}", event, NOW + 10 - i) for i in range(n)]  # q0 is the newest
    for q in qs:
        assert await store.add_question(q, 100)
    return event, qs


async def approve(store: TownHallStore, event_id: str, q_id: str, clerk: Clerk) -> None:
    async def fn(event: TownHallEvent, questions: dict[str, Question]) -> tuple[TownHallEvent, list[Question], None]:
        await asyncio.sleep(0)  # let the other moderators read the same state
        new_event, q = core.approve(event, questions[q_id], clerk)
        return new_event, [q], None

    await store.update(event_id, fn)


class TownHallStoreContract:
    # -- events and questions --
    async def test_event_round_trip_every_field(self, townhall_store: TownHallStore) -> None:
        plain, full = make_event(), full_event()
        await townhall_store.create_event(plain)
        await townhall_store.create_event(full)
        assert await townhall_store.get_event("ev1") == plain
        assert await townhall_store.get_event("full") == full
        assert await townhall_store.get_event("nope") is None

    async def test_list_events_by_start_earliest_first(self, townhall_store: TownHallStore) -> None:
        assert await townhall_store.list_events() == []
        later, earlier, tied = make_event("b", NOW + 3 * HOUR), make_event("c", NOW + HOUR), make_event("a", NOW + HOUR)
        for e in (later, earlier, tied):
            await townhall_store.create_event(e)
        assert [e.id for e in await townhall_store.list_events()] == ["a", "c", "b"]

    async def test_question_round_trip_and_oldest_first(self, townhall_store: TownHallStore) -> None:
        event, qs = await setup(townhall_store)
        assert await townhall_store.get_question("q1") == qs[1]
        assert await townhall_store.get_question("nope") is None
        assert await townhall_store.questions("ev1") == [qs[2], qs[1], qs[0]]
        assert await townhall_store.questions("other") == []
        edited = qs[1].replace(state=QuestionState.ANSWERED, merged_into=None, answer_started_at=NOW + 2 * HOUR,
                               answered_at=NOW + 2 * HOUR + 60, edited=True, text="Wann fährt der Bus?")

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[None, list[Question], str]:
            return None, [edited], "ok"

        assert await townhall_store.update("ev1", fn) == "ok"
        assert await townhall_store.get_question("q1") == edited
        other = make_event("ev2")
        await townhall_store.create_event(other)
        tied = [make_question(i, other, NOW + 5) for i in ("z", "m", "b")]
        for q in tied:
            assert await townhall_store.add_question(q, 100)
        assert [q.id for q in await townhall_store.questions("ev2")] == ["b", "m", "z"]  # same time: by id

    async def test_add_question_respects_the_cap_and_refuses_a_second_id(self, townhall_store: TownHallStore) -> None:
        event = make_event()
        await townhall_store.create_event(event)
        assert await townhall_store.add_question(make_question("q1", event), 2)
        assert await townhall_store.add_question(make_question("q1", event, text="Anders"), 2) is False
        assert (await townhall_store.get_question("q1")).text == "Wann kommt der Bus?"  # type: ignore[union-attr]
        assert await townhall_store.add_question(make_question("q2", event), 2)
        assert await townhall_store.add_question(make_question("q3", event), 2) is False
        assert await townhall_store.get_question("q3") is None
        assert [q.id for q in await townhall_store.questions("ev1")] == ["q1", "q2"]
        # The cap is per event.
        other = make_event("ev2")
        await townhall_store.create_event(other)
        assert await townhall_store.add_question(make_question("q4", other), 2)

    async def test_add_question_to_a_missing_event_raises(self, townhall_store: TownHallStore) -> None:
        with pytest.raises(EventNotFound):
            await townhall_store.add_question(make_question("q1", make_event("ghost")), 10)
        assert await townhall_store.get_question("q1") is None

    async def test_concurrent_adds_stop_exactly_at_the_cap(self, townhall_store: TownHallStore) -> None:
        event = make_event()
        await townhall_store.create_event(event)
        qs = [make_question(f"q{i:02d}", event, NOW + i) for i in range(20)]
        results = await asyncio.gather(*(townhall_store.add_question(q, 10) for q in qs))
        assert results.count(True) == 10
        stored = await townhall_store.questions("ev1")
        assert sorted(q.id for q in stored) == sorted(q.id for q, ok in zip(qs, results, strict=True) if ok)

    # -- update --
    async def test_update_writes_the_event_and_questions_together(self, townhall_store: TownHallStore) -> None:
        event, qs = await setup(townhall_store)
        seen: list[tuple[TownHallEvent, dict[str, Question]]] = []

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[TownHallEvent, list[Question], int]:
            seen.append((e, dict(questions)))
            e, q0 = core.approve(e, questions["q0"], MAX)
            e, q1 = core.dismiss(e, questions["q1"], MAX)
            new = make_question("q9", e, NOW + 20)  # a question the update adds itself
            return core.pin(e, q0, MAX), [q0, q1, new], 42

        assert await townhall_store.update("ev1", fn) == 42
        assert seen == [(event, {q.id: q for q in qs})]
        stored = await townhall_store.get_event("ev1")
        assert stored is not None and stored.moderators == ("mia", "max") and stored.pinned == "q0"
        states = {q.id: q.state for q in await townhall_store.questions("ev1")}
        assert states == {"q0": QuestionState.PUBLISHED, "q1": QuestionState.DISMISSED,
                          "q2": QuestionState.PENDING, "q9": QuestionState.PENDING}
        assert [q.id for q in await townhall_store.questions("ev1")][-1] == "q9"

    async def test_update_that_raises_writes_nothing(self, townhall_store: TownHallStore) -> None:
        event, qs = await setup(townhall_store)

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[TownHallEvent, list[Question], None]:
            e, q = core.approve(e, questions["q0"], MAX)
            core.pin(e, questions["q1"], MAX)  # pending: refused
            return e, [q], None

        with pytest.raises(core.IllegalQuestionMove):
            await townhall_store.update("ev1", fn)
        assert await townhall_store.get_event("ev1") == event
        assert await townhall_store.questions("ev1") == [qs[2], qs[1], qs[0]]

    async def test_update_of_a_missing_event_raises(self, townhall_store: TownHallStore) -> None:
        runs = 0

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[None, list[Question], None]:
            nonlocal runs
            runs += 1
            return None, [], None

        with pytest.raises(EventNotFound):
            await townhall_store.update("ghost", fn)
        assert runs == 0

    async def test_update_may_write_only_its_own_event(self, townhall_store: TownHallStore) -> None:
        event, qs = await setup(townhall_store)
        other = make_event("ev2")
        await townhall_store.create_event(other)

        async def foreign_question(e: TownHallEvent, questions: dict[str, Question]) -> tuple[
                None, list[Question], None]:
            return None, [make_question("x", other)], None

        async def foreign_event(e: TownHallEvent, questions: dict[str, Question]) -> tuple[
                TownHallEvent, list[Question], None]:
            return other.replace(title="Hijacked"), [], None

        for fn in (foreign_question, foreign_event):
            with pytest.raises(ValueError, match="an update of event ev1"):
                await townhall_store.update("ev1", fn)  # type: ignore[arg-type]
        assert await townhall_store.get_question("x") is None
        assert await townhall_store.get_event("ev2") == other

    async def test_concurrent_approvals_by_two_moderators_both_land(self, townhall_store: TownHallStore) -> None:
        await setup(townhall_store)
        await asyncio.gather(approve(townhall_store, "ev1", "q0", MAX),
                             approve(townhall_store, "ev1", "q1", Clerk("ina", "Ina", frozenset(),
                                                                        frozenset({"moderator"}))))
        states = {q.id: q.state for q in await townhall_store.questions("ev1")}
        assert states == {"q0": QuestionState.PUBLISHED, "q1": QuestionState.PUBLISHED, "q2": QuestionState.PENDING}
        stored = await townhall_store.get_event("ev1")
        assert stored is not None and sorted(stored.moderators) == ["ina", "max", "mia"]  # neither write was lost

    async def test_twenty_concurrent_updates_all_land(self, townhall_store: TownHallStore) -> None:
        await setup(townhall_store)

        def append(i: int):  # type: ignore[no-untyped-def]
            async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[
                    TownHallEvent, list[Question], int]:
                await asyncio.sleep(0)
                q = questions["q1"]
                return (e.replace(moderators=(*e.moderators, f"m{i:02d}")),
                        [q.replace(text=f"{q.text} {i:02d}")], len(e.moderators))
            return fn

        results = await asyncio.gather(*(townhall_store.update("ev1", append(i)) for i in range(20)))
        assert sorted(results) == list(range(1, 21))  # each saw the writes of those before it
        stored = await townhall_store.get_event("ev1")
        assert stored is not None and sorted(stored.moderators) == [f"m{i:02d}" for i in range(20)] + ["mia"]
        text = (await townhall_store.get_question("q1")).text  # type: ignore[union-attr]
        assert sorted(text.split()[4:]) == [f"{i:02d}" for i in range(20)]

    async def test_concurrent_updates_of_one_question_alone_all_land(self, townhall_store: TownHallStore) -> None:
        """No event write to collide on: the question itself must be watched."""
        await setup(townhall_store)

        def edit(i: int):  # type: ignore[no-untyped-def]
            async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[None, list[Question], None]:
                await asyncio.sleep(0)
                q = questions["q2"]
                return None, [q.replace(text=f"{q.text} {i:02d}")], None
            return fn

        await asyncio.gather(*(townhall_store.update("ev1", edit(i)) for i in range(20)))
        text = (await townhall_store.get_question("q2")).text  # type: ignore[union-attr]
        assert sorted(text.split()[4:]) == [f"{i:02d}" for i in range(20)]

    async def test_a_question_added_while_fn_runs_makes_it_run_again(self, townhall_store: TownHallStore) -> None:
        event, _ = await setup(townhall_store)
        seen: list[list[str]] = []

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[TownHallEvent, list[Question], int]:
            seen.append(sorted(questions))
            if len(seen) == 1:
                assert await townhall_store.add_question(make_question("late", e, NOW + 30), 100)
            return e.replace(title=f"{len(questions)} Fragen"), [], len(questions)

        assert await townhall_store.update("ev1", fn) == 4
        assert seen == [["q0", "q1", "q2"], ["late", "q0", "q1", "q2"]]
        assert (await townhall_store.get_event("ev1")).title == "4 Fragen"  # type: ignore[union-attr]

    async def test_endless_conflicts_give_up_with_conflict(self, townhall_store: TownHallStore) -> None:
        event, _ = await setup(townhall_store)
        runs = 0

        async def fn(e: TownHallEvent, questions: dict[str, Question]) -> tuple[TownHallEvent, list[Question], None]:
            nonlocal runs
            runs += 1
            assert await townhall_store.add_question(make_question(f"x{runs}", e, NOW + 30), 1000)
            return e.replace(title="never"), [], None

        with pytest.raises(Conflict):
            await townhall_store.update("ev1", fn)
        assert runs == 50
        assert (await townhall_store.get_event("ev1")) == event

    # -- votes --
    async def test_vote_and_unvote_are_idempotent(self, townhall_store: TownHallStore) -> None:
        assert await townhall_store.vote("q1", "a1") is True
        assert await townhall_store.vote("q1", "a1") is False
        assert await townhall_store.vote("q1", "a2") is True
        assert await townhall_store.vote("q2", "a1") is True
        assert await townhall_store.vote_counts(["q1", "q2", "q3"]) == {"q1": 2, "q2": 1, "q3": 0}
        assert await townhall_store.voted(["q1", "q2", "q3"], "a1") == {"q1", "q2"}
        assert await townhall_store.voted(["q1", "q2"], "a2") == {"q1"}
        assert await townhall_store.unvote("q1", "a1") is True
        assert await townhall_store.unvote("q1", "a1") is False
        assert await townhall_store.unvote("q3", "a1") is False
        assert await townhall_store.vote_counts(["q1", "q2"]) == {"q1": 1, "q2": 1}
        assert await townhall_store.voted(["q1", "q2"], "a1") == {"q2"}
        assert await townhall_store.vote("q1", "a1") is True  # changing one's mind again
        assert await townhall_store.vote_counts([]) == {}
        assert await townhall_store.voted([], "a1") == set()

    async def test_concurrent_votes_all_count_once(self, townhall_store: TownHallStore) -> None:
        results = await asyncio.gather(*(townhall_store.vote("q1", f"a{i % 25}") for i in range(100)))
        assert results.count(True) == 25
        assert await townhall_store.vote_counts(["q1"]) == {"q1": 25}

    async def test_merge_votes_is_a_union(self, townhall_store: TownHallStore) -> None:
        for aud in ("a1", "a2"):
            await townhall_store.vote("dup", aud)
        for aud in ("a2", "a3", "a4"):
            await townhall_store.vote("root", aud)
        await townhall_store.merge_votes("dup", "root")
        assert await townhall_store.vote_counts(["root", "dup"]) == {"root": 4, "dup": 2}
        assert await townhall_store.voted(["root"], "a1") == {"root"}
        assert await townhall_store.vote("root", "a1") is False  # counted once, also after the merge
        await townhall_store.merge_votes("none", "root")
        await townhall_store.merge_votes("dup", "fresh")
        assert await townhall_store.vote_counts(["root", "fresh"]) == {"root": 4, "fresh": 2}

    # -- audience --
    async def test_join_audience_keeps_one_id_per_token(self, townhall_store: TownHallStore) -> None:
        assert await townhall_store.audience_for("h1") is None
        assert await townhall_store.join_audience("ev1", "h1", "aud-1", 2) == "aud-1"
        assert await townhall_store.join_audience("ev1", "h1", "aud-other", 2) == "aud-1"
        assert await townhall_store.audience_for("h1") == ("ev1", "aud-1")
        assert await townhall_store.join_audience("ev1", "h2", "aud:2", 2) == "aud:2"
        assert await townhall_store.audience_for("h2") == ("ev1", "aud:2")
        assert await townhall_store.join_audience("ev1", "h3", "aud-3", 2) is None  # full
        assert await townhall_store.audience_for("h3") is None
        assert await townhall_store.join_audience("ev1", "h2", "aud-x", 2) == "aud:2"  # known ones still come in
        assert await townhall_store.join_audience("ev2", "h3", "aud-3", 2) == "aud-3"  # the limit is per event
        with pytest.raises(InvalidInput):
            await townhall_store.join_audience("ev2", "h1", "aud-9", 2)  # a token of another event
        assert await townhall_store.audience_for("h1") == ("ev1", "aud-1")

    async def test_audience_limit_holds_under_concurrent_joins(self, townhall_store: TownHallStore) -> None:
        results = await asyncio.gather(
            *(townhall_store.join_audience("ev1", f"h{i}", f"aud-{i}", 10) for i in range(30)))
        admitted = [r for r in results if r is not None]
        assert len(admitted) == 10 and len(set(admitted)) == 10
        for i, r in enumerate(results):
            assert await townhall_store.audience_for(f"h{i}") == (("ev1", r) if r is not None else None)
