"""Town-hall Q&A over the live app: HTTP for events, audience and questions; socket.io for votes,
moderation, hands and the stage; every role checked (docs/protocol.md, "Town hall")."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from server.http.keys import AUTH

from .socket_clients import WAIT, Recorder, staff_socket

PASSWORD = "correct horse battery"


async def audience_socket(url: str, token: str) -> Recorder:
    r = Recorder()
    await r.client.connect(url, auth={"townhall": token}, transports=["websocket"], wait_timeout=WAIT)
    return r


async def staff_http(url: str, username: str) -> tuple[aiohttp.ClientSession, str]:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # cookies from 127.0.0.1
    resp = await http.post(f"{url}/api/session", json={"username": username, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return http, (await resp.json())["csrf"]


def iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat()


class Town:
    """A live server with a moderator (mona), a politician (paul), a clerk (carl) and one event."""

    def __init__(self, live_server: Any, clients: list[Recorder]) -> None:
        self.server, self.url, self.clients = live_server, live_server.url, clients
        self.sessions: list[aiohttp.ClientSession] = []

    async def setup(self, **event: Any) -> dict[str, Any]:
        auth = self.server.app[AUTH]
        await auth.add_staff("mona", "Mona Moderation", PASSWORD, [], ["moderator"])
        await auth.add_staff("paul", "Paul Politik", PASSWORD, [], ["clerk"])
        await auth.add_staff("carl", "Carl Clerk", PASSWORD, ["buergerbuero"], ["clerk"])
        self.mona_http, self.csrf = await staff_http(self.url, "mona")
        self.sessions.append(self.mona_http)
        now = time.time()
        body = {"title": "Bürgersprechstunde mit Paul", "description": "Fragen zum Haushalt", "politicians": ["paul"],
                "starts_at": iso(now + 3600), "ends_at": iso(now + 7200), "advance_questions": True,
                "audience_limit": 50} | event
        resp = await self.mona_http.post(f"{self.url}/api/townhall/events", json=body,
                                         headers={"X-CSRF-Token": self.csrf})
        assert resp.status == 201, await resp.text()
        self.event = (await resp.json())["event"]
        self.mona = await staff_socket(self.url, "mona", PASSWORD)
        self.clients.append(self.mona)
        return self.event

    async def audience(self) -> tuple[str, Recorder]:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{self.url}/api/townhall/events/{self.event['id']}/audience")
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["token"]
        socket = await audience_socket(self.url, token)
        self.clients.append(socket)
        await socket.wait_for("th_state")
        return token, socket

    async def ask(self, token: str, text: str, name: str = "", event: str | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{self.url}/api/townhall/events/{event or self.event['id']}/questions",
                                   json={"text": text, "name": name}, headers={"Authorization": f"Bearer {token}"})
            await resp.read()
            return resp

    async def status(self, question: str) -> str:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{self.url}/api/townhall/questions/{question}")
            return (await resp.json())["question"]["state"]

    async def moderate(self, socket: Recorder, action: str, **data: Any) -> dict[str, Any]:
        return await socket.call("th_moderate", {"event": self.event["id"], "action": action, **data})

    async def close(self) -> None:
        for http in self.sessions:
            await http.close()


async def asked(town: Town, token: str, text: str) -> str:
    resp = await town.ask(token, text)
    assert resp.status == 201
    return (await resp.json())["question"]["id"]


async def test_questions_are_moderated_voted_and_merged(live_server, clients) -> None:
    town = Town(live_server, clients)
    try:
        event = await town.setup()
        token_a, alice = await town.audience()
        token_b, bob = await town.audience()
        q1 = await asked(town, token_a, "Wann wird die Schule saniert?")
        q2 = await asked(town, token_b, "Wann kommt die Sanierung der Schule?")
        assert await town.status(q1) == "waiting"
        assert (await alice.call("th_vote", {"question": q1}))["error"]["code"] == "not_votable"  # pending

        assert event["speakers"] == ["Paul Politik"]  # the public sees display names, not usernames
        watched = await town.mona.call("th_watch", {"event": event["id"]})
        assert watched["moderator"] and [q["id"] for q in watched["moderation"]] == [q1, q2]
        # a second moderator sees the first one's actions live
        await live_server.app[AUTH].add_staff("moritz", "Moritz", PASSWORD, [], ["moderator"])
        moritz = await staff_socket(live_server.url, "moritz", PASSWORD)
        clients.append(moritz)
        assert (await moritz.call("th_watch", {"event": event["id"]}))["moderator"]
        assert watched["questions"] == []  # nothing published yet
        assert (await town.moderate(town.mona, "approve", question=q1, text="Wann wird die Grundschule saniert?"))["ok"]
        shown = await bob.wait_for("th_questions", lambda m: [q["id"] for q in m["questions"]] == [q1])
        assert shown["questions"][0]["text"] == "Wann wird die Grundschule saniert?"
        assert await town.status(q1) == "published"
        await moritz.wait_for("th_moderation", lambda m: any(q["id"] == q1 and q["state"] == "published"
                                                              for q in m["questions"]))

        assert await bob.call("th_vote", {"question": q1}) == {"ok": True}
        assert (await bob.call("th_vote", {"question": q1}))["error"]["code"] == "already_voted"
        await alice.wait_for("th_questions", lambda m: bool(m["questions"]) and m["questions"][0]["votes"] == 1)
        assert await alice.call("th_vote", {"question": q1}) == {"ok": True}
        assert await alice.call("th_unvote", {"question": q1}) == {"ok": True}
        assert (await alice.call("th_unvote", {"question": q1}))["error"]["code"] == "not_voted"

        # bob's duplicate is merged: his vote and his link follow the first question
        assert (await town.moderate(town.mona, "approve", question=q2))["ok"]
        assert await alice.call("th_vote", {"question": q2}) == {"ok": True}
        assert (await town.moderate(town.mona, "merge", question=q2, into=q1))["ok"]
        # bob on q1 + alice on q2, nobody twice
        await bob.wait_for("th_questions", lambda m: [(q["id"], q["votes"]) for q in m["questions"]] == [(q1, 2)])
        assert await town.status(q2) == "published"
        assert (await alice.call("th_vote", {"question": q2}))["error"]["code"] == "not_votable"  # merged

        q3 = await asked(town, token_a, "Eine ganz andere Frage")
        assert (await town.moderate(town.mona, "dismiss", question=q3))["ok"]
        assert await town.status(q3) == "not_taken"
        moderation = await town.mona.wait_for("th_moderation", lambda m: len(m["questions"]) == 3)
        assert {q["id"]: q["state"] for q in moderation["questions"]}[q3] == "dismissed"
        assert (await town.moderate(town.mona, "merge", question=q1, into=q1))["error"]["code"] == "illegal_transition"
        assert (await town.moderate(town.mona, "approve", question="nope"))["error"]["code"] == "question_not_found"
        assert (await town.moderate(town.mona, "explode", question=q1))["error"]["code"] == "invalid_input"
    finally:
        await town.close()


async def test_roles_are_checked_on_every_event(live_server, clients) -> None:
    town = Town(live_server, clients)
    try:
        event = await town.setup()
        token, alice = await town.audience()
        q = await asked(town, token, "Frage")
        carl = await staff_socket(live_server.url, "carl", PASSWORD)
        paul = await staff_socket(live_server.url, "paul", PASSWORD)
        clients += [carl, paul]
        assert (await carl.call("th_watch", {"event": event["id"]}))["error"]["code"] == "forbidden"
        watched = await paul.call("th_watch", {"event": event["id"]})
        assert watched["politician"] and not watched["moderator"] and "moderation" not in watched
        for socket in (carl, paul):
            assert (await town.moderate(socket, "approve", question=q))["error"]["code"] == "forbidden"
            assert (await socket.call("th_start", {"event": event["id"]}))["error"]["code"] == "forbidden"
        assert (await alice.call("th_moderate", {"event": event["id"], "action": "approve", "question": q}))[
            "error"]["code"] == "forbidden"  # an audience socket sends no staff events
        assert (await town.mona.call("th_vote", {"question": q}))["error"]["code"] == "forbidden"

        # creating events: moderators only, with a CSRF token
        carl_http, carl_csrf = await staff_http(live_server.url, "carl")
        town.sessions.append(carl_http)
        resp = await carl_http.post(f"{live_server.url}/api/townhall/events", json={"title": "x"},
                                    headers={"X-CSRF-Token": carl_csrf})
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
        resp = await town.mona_http.post(f"{live_server.url}/api/townhall/events", json={"title": "x"})
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "csrf"
        assert (await carl_http.get(f"{live_server.url}/townhall/{event['id']}/moderate")).status == 404
        assert (await town.mona_http.get(f"{live_server.url}/townhall/{event['id']}/moderate")).status == 200

        # an audience token of another event does not reach this one
        other = await town.mona_http.post(f"{live_server.url}/api/townhall/events", json={
            "title": "Andere", "politicians": ["paul"], "starts_at": iso(time.time() + 60),
            "ends_at": iso(time.time() + 120)}, headers={"X-CSRF-Token": town.csrf})
        other_id = (await other.json())["event"]["id"]
        assert (await town.ask(token, "Hierher?", event=other_id)).status == 401
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{live_server.url}/api/townhall/events/{other_id}/audience")
            other_token = (await resp.json())["token"]
        stranger = await audience_socket(live_server.url, other_token)
        clients.append(stranger)
        assert (await town.moderate(town.mona, "approve", question=q))["ok"]
        assert (await stranger.call("th_vote", {"question": q}))["error"]["code"] == "question_not_found"
    finally:
        await town.close()


async def test_bad_questions_change_nothing(live_server, clients) -> None:
    town = Town(live_server, clients)
    try:
        now = time.time()
        event = await town.setup(questions_until=iso(now + 1800))
        token, _ = await town.audience()
        for text, code in (("", "invalid_input"), ("   ", "invalid_input"), ("x" * 501, "invalid_input")):
            resp = await town.ask(token, text)
            assert resp.status == 400 and (await resp.json())["error"]["code"] == code
        resp = await town.ask(token, "ok", name="n" * 61)
        assert resp.status == 400
        # control characters, as at the check-in (found by probing: a BEL was stored, a bidi override shown)
        for text, name in (("a\u0007b", ""), ("ok", "a\u202eb"), ("a\x1fb", "")):
            resp = await town.ask(token, text, name=name)
            body = await resp.json()
            assert resp.status == 400 and "control character" in body["error"]["message"], (text, name)
        async with aiohttp.ClientSession() as http:
            # missing, unknown: one answer, as for another event's token (probing: 404 event_not_found here)
            for headers in ({}, {"Authorization": "Bearer " + "x" * 32}):
                resp = await http.post(f"{town.url}/api/townhall/events/{event['id']}/questions", json={"text": "x"},
                                       headers=headers)
                assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
        for i in range(5):
            assert (await town.ask(token, f"Frage {i}")).status == 201
        resp = await town.ask(token, "noch eine")
        body = await resp.json()
        assert resp.status == 429 and body["error"]["code"] == "rate_limited"
        assert 0 < int(resp.headers["Retry-After"]) <= 600 and body["error"]["retry_after"] == int(
            resp.headers["Retry-After"])  # when to try again (probing: neither was there)
        watched = await town.mona.call("th_watch", {"event": event["id"]})
        assert len(watched["moderation"]) == 5

        # past the deadline for advance questions
        closed = await town.mona_http.post(f"{town.url}/api/townhall/events", json={
            "title": "Vorbei", "politicians": ["paul"], "starts_at": iso(now + 3600), "ends_at": iso(now + 7200),
            "advance_questions": False}, headers={"X-CSRF-Token": town.csrf})
        closed_id = (await closed.json())["event"]["id"]
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{town.url}/api/townhall/events/{closed_id}/audience")
            closed_token = (await resp.json())["token"]
        resp = await town.ask(closed_token, "Zu früh", event=closed_id)
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "questions_closed"
    finally:
        await town.close()


async def test_live_event_answers_hands_and_stage(live_server, clients) -> None:
    town = Town(live_server, clients)
    try:
        event = await town.setup()
        token, alice = await town.audience()
        _, bob = await town.audience()
        q = await asked(town, token, "Was passiert mit dem Freibad?")
        await town.mona.call("th_watch", {"event": event["id"]})
        assert (await alice.call("th_hand", {"raised": True}))["error"]["code"] == "event_not_live"
        assert (await town.moderate(town.mona, "approve", question=q))["ok"]
        assert (await town.moderate(town.mona, "answering", question=q))["error"]["code"] == "event_not_live"
        assert (await town.mona.call("th_start", {"event": event["id"]}))["event"]["state"] == "live"
        await bob.wait_for("th_event", lambda e: e["state"] == "live")

        assert (await town.moderate(town.mona, "pin", question=q))["ok"]
        await bob.wait_for("th_event", lambda e: e["pinned"] == q)
        assert (await town.moderate(town.mona, "answering", question=q))["ok"]
        await bob.wait_for("th_event", lambda e: e["answering"] == q and e["pinned"] is None)
        assert await town.status(q) == "answering"
        assert (await town.moderate(town.mona, "answered", question=q))["ok"]
        assert await town.status(q) == "answered"
        assert (await bob.call("th_vote", {"question": q}))["error"]["code"] == "not_votable"

        # a raised hand, invited on stage, accepts; a stranger cannot accept
        assert (await bob.call("th_stage_accept", {}))["error"]["code"] == "not_invited"
        assert await alice.call("th_hand", {"raised": True}) == {"ok": True}
        staff_view = await town.mona.wait_for("th_staff_event", lambda e: len(e["hands"]) == 1)
        alice_id = staff_view["hands"][0]["audience"]
        assert (await town.mona.call("th_invite", {"event": event["id"], "audience": "nobody"}))["error"][
            "code"] == "not_invited"
        assert await town.mona.call("th_invite", {"event": event["id"], "audience": alice_id}) == {"ok": True}
        await alice.wait_for("th_invited")
        typed = await alice.call("th_stage_accept", {"publication_consent": "yes"})  # probing: was ok, no consent
        assert typed["error"]["code"] == "invalid_input"
        assert await alice.call("th_stage_accept", {"publication_consent": True}) == {"ok": True}
        on_stage = await bob.wait_for("th_event", lambda e: e["stage"] and e["stage"][0]["state"] == "on_stage")
        assert on_stage["stage"][0]["audience"] == alice_id and on_stage["hands"] == 0
        assert await town.mona.call("th_stage_end", {"event": event["id"], "audience": alice_id}) == {"ok": True}
        await alice.wait_for("th_stage_ended")

        assert (await town.mona.call("th_end", {"event": event["id"]}))["event"]["state"] == "ended"
        async with aiohttp.ClientSession() as http:  # no chapters for an event that was not recorded
            resp = await http.get(f"{town.url}/api/townhall/events/{event['id']}/recording")
            assert resp.status == 409 and (await resp.json())["error"]["code"] == "no_recording"
            assert (await http.get(f"{town.url}/townhall/{event['id']}/chapters.vtt")).status == 409
        assert (await town.mona.call("th_publish", {"event": event["id"]}))["error"]["code"] == "no_recording"
        resp = await town.ask(token, "Zu spät")
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "questions_closed"
        async with aiohttp.ClientSession() as http:
            listed = await (await http.get(f"{town.url}/api/townhall/events")).json()
        assert [e["id"] for e in listed["past"]] == [event["id"]] and listed["upcoming"] == []
    finally:
        await town.close()
