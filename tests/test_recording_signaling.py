"""Recording consent end to end: the live app, real socket.io clients, real aiortc peers, real ffmpeg.

Every participant is asked in their own connection; nothing is recorded until everyone agreed; a late
joiner pauses it; withdrawal, leaving and the clerk stop it; leads and the recording clerk find the
result at /staff/recordings (range requests, access log), other staff get 404; retention deletes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from typing import Any

import aiohttp
import pytest

from server.http.keys import AUTH, RECORDINGS
from server.recording.model import Composition, RecordingState
from server.recordings import RecordingService

from .app_fixtures import add_staff
from .media.peers import Client, wait_for
from .socket_clients import Recorder, staff_socket
from .test_media_signaling import PASSWORD, Consultation, hub_of, offer, start_consultation

DAY = 86400.0


async def composed(service: RecordingService, rec_id: str, limit: float = 120.0) -> None:
    """Wait until the composition job has run (it runs in a separate, niced process)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        rec = await service.store.get(rec_id)
        if rec is not None and rec.composition is not Composition.PENDING:
            return
        assert loop.time() < deadline, f"recording {rec_id} not composed within {limit} s: {rec}"
        await asyncio.sleep(0.1)  # polling the store; the job sends no event


def service_of(live_server) -> RecordingService:
    return live_server.app[RECORDINGS]


def sha(offer_: dict[str, Any], lang: str = "de") -> str:
    return offer_["texts"][lang]["sha256"]


async def consent(socket: Recorder, recording: str, agree: bool = True) -> dict[str, Any]:
    """Answer the consent request this socket received, for the German text it was shown."""
    asked = await socket.wait_for("recording_consent", lambda m: m["recording"] == recording)
    return await socket.call("recording_answer", {"recording": recording, "agree": agree, "sha256": sha(asked)})


async def request(c: Consultation) -> str:
    ack = await c.clerk.call("recording_request", {})
    assert ack.get("ok"), ack
    assert ack["recording"]["state"] == "asking"
    return ack["recording"]["id"]


async def recording_everyone_agreed(live_server, c: Consultation) -> str:
    rec_id = await request(c)
    assert (await consent(c.citizen, rec_id))["recording"]["state"] == "asking"  # the clerk has not agreed
    assert hub_of(live_server).recorder(f"c:{c.ticket}") is None  # nothing recorded before every consent
    assert (await consent(c.clerk, rec_id))["recording"]["state"] == "recording"
    for s in (c.citizen, c.clerk):  # the indicator shows on both sides
        await s.wait_for("recording", lambda m: m["id"] == rec_id and m["state"] == "recording")
    recorder = hub_of(live_server).recorder(f"c:{c.ticket}")
    assert recorder is not None and recorder.recording
    return rec_id


async def test_recording_starts_only_after_every_consent_and_is_found_by_the_clerk(live_server, clients, peers):
    """Both are asked with purpose and retention; recording starts after the second "yes"; the clerk
    stops it; the composed file plays with range requests and every view is in the access log."""
    c = await start_consultation(live_server, clients, peers)
    rec_id = await request(c)
    asked = await c.citizen.wait_for("recording_consent")
    assert asked["purpose"] == "Schulung neuer Mitarbeitender" and asked["retention_days"] == 30
    assert "30 Tage" in asked["texts"]["de"]["text"] and "30 days" in asked["texts"]["en"]["text"]
    await c.clerk.wait_for("recording_consent")
    assert (await consent(c.citizen, rec_id))["recording"]["state"] == "asking"
    assert hub_of(live_server).recorder(f"c:{c.ticket}") is None
    assert (await consent(c.clerk, rec_id))["recording"]["state"] == "recording"
    await c.citizen.wait_for("recording", lambda m: m["state"] == "recording")
    recorder = hub_of(live_server).recorder(f"c:{c.ticket}")
    assert recorder is not None

    sent = c.clerk_peer.video.count
    await wait_for(lambda: c.clerk_peer.video.count - sent >= 60, what="two seconds of recorded video")
    stopped = await c.clerk.call("recording_stop", {"recording": rec_id})
    assert stopped["recording"]["state"] == "stopped" and stopped["recording"]["stop_reason"] == "stopped"
    await c.citizen.wait_for("recording", lambda m: m["state"] == "stopped")
    assert hub_of(live_server).counters().decoded_frames == 0

    service = service_of(live_server)
    await composed(service, rec_id)
    rec = await service.store.get(rec_id)
    assert rec is not None and rec.composition is Composition.DONE, rec
    assert rec.duration > 1.5
    directory = service.root / rec_id
    assert stat.S_IMODE(os.stat(service.root).st_mode) == 0o700
    assert not (directory / "tracks").exists()  # the parts go once the composition succeeded
    record = [(e.participant, e.action) for e in rec.consents]
    assert record == [(f"citizen:{c.ticket}", "asked"), ("staff:anna", "asked"),
                      (f"citizen:{c.ticket}", "agreed"), ("staff:anna", "agreed")]
    assert all(e.text_sha256 == rec.texts[0].sha256 for e in rec.consents if e.action == "agreed")

    async with aiohttp.ClientSession(cookies={"sps_session": c.clerk.cookie}) as http:
        listed = await (await http.get(f"{live_server.url}/api/staff/recordings")).json()
        assert [r["id"] for r in listed["recordings"]] == [rec_id]
        assert {p["role"] for p in listed["recordings"][0]["participants"]} == {"citizen", "clerk"}
        media = f"{live_server.url}/api/staff/recordings/{rec_id}/media"
        whole = await http.get(media)
        assert whole.status == 200 and whole.headers["Content-Type"] == "video/webm"
        body = await whole.read()
        assert len(body) == rec.size
        part = await http.get(media, headers={"Range": "bytes=100-199"})
        assert part.status == 206 and await part.read() == body[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{rec.size}"
        past = await http.get(media, headers={"Range": f"bytes={rec.size + 10}-"})
        assert past.status == 416 and (await past.json())["error"]["code"] == "range_not_satisfiable"
        assert past.headers["Content-Range"] == f"bytes */{rec.size}"
        bad = await http.get(media, headers={"Range": "bytes=abc"})
        assert bad.status == 416 and (await bad.json())["error"]["code"] == "range_not_satisfiable"
        tail = await http.get(media, headers={"Range": "bytes=-50"})  # the last 50 bytes (probing: was a 416)
        assert tail.status == 206 and await tail.read() == body[-50:]
        assert tail.headers["Content-Range"] == f"bytes {rec.size - 50}-{rec.size - 1}/{rec.size}"
        empty = await http.get(media, headers={"Range": "bytes=-0"})
        assert empty.status == 416 and (await empty.json())["error"]["code"] == "range_not_satisfiable"
        everything = await http.get(media, headers={"Range": f"bytes=-{rec.size + 100}"})  # the whole file: a view
        assert everything.status == 206 and await everything.read() == body  # (review: it was not in the log)
        download = await http.get(media + "?download=1")
        assert "attachment" in download.headers["Content-Disposition"]
        exported = await (await http.get(f"{live_server.url}/api/staff/recordings/{rec_id}/consent")).json()
        assert [x["action"] for x in exported["consents"]] == ["asked", "asked", "agreed", "agreed"]
        assert exported["texts"][0]["text"].startswith("Einwilligung")
        page = await http.get(f"{live_server.url}/staff/recordings")
        assert page.status == 200
        # anna is no lead: the access log is not for her
        log = await http.get(f"{live_server.url}/api/staff/recordings/access-log")
        assert log.status == 404
    entries = await service.store.access_log(["buergerbuero"])
    assert [e.action for e in reversed(entries)] == ["view", "view", "download", "export"]
    assert {e.actor for e in entries} == {"anna"}
    assert "Alex" not in json.dumps([e.to_dict() for e in entries])  # no names in the log


async def test_bad_requests_change_nothing(live_server, clients, peers):
    """A citizen cannot ask; asking twice, answering for someone else, with another text, or after the
    end is refused with a clear error; nothing is recorded meanwhile."""
    c = await start_consultation(live_server, clients, peers)
    assert (await c.citizen.call("recording_request", {}))["error"]["code"] == "forbidden"
    rec_id = await request(c)
    assert (await c.clerk.call("recording_request", {}))["error"]["code"] == "already_recording"
    asked = await c.citizen.wait_for("recording_consent")
    other = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": True, "sha256": sha(asked),
                                                       "participant": "staff:anna"})
    assert other["error"]["code"] == "not_a_participant"
    wrong = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": True, "sha256": "0" * 64})
    assert wrong["error"]["code"] == "consent_text_mismatch"
    unknown = await c.citizen.call("recording_answer", {"recording": "x" * 22, "agree": True, "sha256": sha(asked)})
    assert unknown["error"]["code"] == "recording_not_found"
    typed = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": "yes", "sha256": sha(asked)})
    assert typed["error"]["code"] == "invalid_input"
    unshown = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": True})  # no text named
    assert unshown["error"]["code"] == "invalid_input"  # (probing: was consent_text_mismatch)
    assert (await c.citizen.call("recording_stop", {"recording": rec_id}))["error"]["code"] == "forbidden"
    rec = await service_of(live_server).store.get(rec_id)
    assert rec is not None and rec.state is RecordingState.ASKING
    assert [e.action for e in rec.consents] == ["asked", "asked"]

    declined = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": False, "sha256": sha(asked)})
    assert declined["recording"]["state"] == "stopped" and declined["recording"]["stop_reason"] == "declined"
    again = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": True, "sha256": sha(asked)})
    assert again["error"]["code"] == "recording_ended"
    assert hub_of(live_server).recorder(f"c:{c.ticket}") is None
    rec = await service_of(live_server).store.get(rec_id)
    assert rec is not None and rec.composition is Composition.NONE


async def test_recording_is_off_in_departments_that_do_not_allow_it(live_server, clients, peers):
    c = await start_consultation(live_server, clients, peers, department="bauamt")
    assert (await c.clerk.call("recording_request", {}))["error"]["code"] == "recording_off"
    assert await service_of(live_server).store.live_for_ticket(c.ticket) is None


async def test_a_late_joiner_pauses_until_they_agree_and_withdrawal_stops(live_server, clients, peers):
    """An invited colleague joins a running recording: it pauses and they are asked; their "yes"
    resumes it. The citizen withdraws: it stops at once."""
    c = await start_consultation(live_server, clients, peers)
    rec_id = await recording_everyone_agreed(live_server, c)
    recorder = hub_of(live_server).recorder(f"c:{c.ticket}")
    assert recorder is not None

    await live_server.add_staff("ben", PASSWORD, ["bauamt"], "Ben Bau")
    ben = await staff_socket(live_server.url, "ben", PASSWORD)
    clients.append(ben)
    await ben.wait_for("dashboard")
    assert await c.clerk.call("invite", {"ticket": c.ticket, "username": "ben"}) == {"ok": True}
    ben_peer = Client("ben")
    peers.append(ben_peer)
    await offer(ben, ben_peer, ticket=c.ticket)
    await c.citizen.wait_for("recording", lambda m: m["state"] == "paused")
    assert not recorder.recording
    assert (await consent(ben, rec_id))["recording"]["state"] == "recording"
    await c.clerk.wait_for("recording", lambda m: m["state"] == "recording" and len(m["participants"]) == 3)
    assert recorder.recording

    withdrawn = await c.citizen.call("recording_withdraw", {"recording": rec_id})
    assert withdrawn["recording"]["state"] == "stopped" and withdrawn["recording"]["stop_reason"] == "withdrawn"
    await ben.wait_for("recording", lambda m: m["state"] == "stopped")
    assert hub_of(live_server).recorder(f"c:{c.ticket}") is None or not recorder.recording
    again = await c.citizen.call("recording_withdraw", {"recording": rec_id})
    assert again["error"]["code"] == "consent_withdrawn"
    answered = await c.citizen.call("recording_answer", {"recording": rec_id, "agree": True,
                                                          "sha256": (await service_of(live_server).store.get(rec_id))
                                                          .texts[0].sha256})
    assert answered["error"]["code"] == "consent_withdrawn"
    rec = await service_of(live_server).store.get(rec_id)
    assert rec is not None
    assert [e.action for e in rec.consents if e.participant == f"citizen:{c.ticket}"] == ["asked", "agreed",
                                                                                         "withdrawn"]
    assert [e.action for e in rec.consents if e.participant == "staff:ben"] == ["asked", "agreed"]


async def test_a_participant_leaving_stops_the_recording(live_server, clients, peers):
    c = await start_consultation(live_server, clients, peers)
    rec_id = await recording_everyone_agreed(live_server, c)
    await c.citizen.close()
    await c.clerk.wait_for("recording", lambda m: m["id"] == rec_id and m["state"] == "stopped")
    rec = await service_of(live_server).store.get(rec_id)
    assert rec is not None and rec.stop_reason == "left"


async def test_only_leads_and_the_recording_clerk_see_it_and_retention_deletes_it(live_server, clients, peers):
    """Another clerk of the department gets 404 everywhere (page, list, media, delete); a lead sees it and
    its access log; path tricks and other departments' ids are 404; the retention sweep deletes files
    and consent records (test clock) and logs it without names."""
    c = await start_consultation(live_server, clients, peers)
    rec_id = await recording_everyone_agreed(live_server, c)
    sent = c.citizen_peer.video.count
    await wait_for(lambda: c.citizen_peer.video.count - sent >= 30, what="a second of recorded video")
    assert (await c.clerk.call("finish", {"ticket": c.ticket}))["ok"]  # the consultation's end stops it
    service = service_of(live_server)
    await composed(service, rec_id)
    rec = await service.store.get(rec_id)
    assert rec is not None and rec.stop_reason == "ended"

    app = live_server.app
    await add_staff(app, "carl", PASSWORD, ["buergerbuero"])
    auth = app[AUTH]
    await auth.add_staff("lena", "Lena Leitung", PASSWORD, ["buergerbuero"], ["clerk", "lead"])
    await auth.add_staff("bert", "Bert Bau", PASSWORD, ["bauamt"], ["clerk", "lead"])

    async def session(username: str) -> aiohttp.ClientSession:
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # cookies from 127.0.0.1
        resp = await http.post(f"{live_server.url}/api/session", json={"username": username, "password": PASSWORD})
        assert resp.status == 200
        http.headers["X-CSRF-Token"] = (await resp.json())["csrf"]  # type: ignore[index]
        return http

    base = f"{live_server.url}/api/staff/recordings"
    carl, lena, bert = await session("carl"), await session("lena"), await session("bert")
    try:
        first = await (await carl.get(base)).json()
        assert first.get("recordings") == [], first
        for url in (f"{base}/{rec_id}", f"{base}/{rec_id}/media", f"{base}/{rec_id}/consent"):
            for who in (carl, bert):
                resp = await who.get(url)
                assert resp.status == 404 and (await resp.json())["error"]["code"] == "recording_not_found"
        assert (await carl.delete(f"{base}/{rec_id}")).status == 404
        assert (await carl.get(f"{live_server.url}/staff/recordings")).status == 404
        for trick in ("..%2F..%2Fstaff.json", "%2e%2e", "a" * 200, "abc"):
            resp = await lena.get(f"{base}/{trick}/media")
            assert resp.status == 404, trick
            assert (await resp.json())["error"]["code"] in ("recording_not_found", "not_found")
        listed = await (await lena.get(base)).json()
        assert [r["id"] for r in listed["recordings"]] == [rec_id] and listed["can_read_access_log"]
        assert (await lena.get(f"{base}/{rec_id}/media")).status == 200
        assert (await lena.get(f"{live_server.url}/staff/recordings")).status == 200
        log = await (await lena.get(f"{base}/access-log")).json()
        assert [(e["actor"], e["action"]) for e in log["entries"]] == [("lena", "view")]
        assert (await (await bert.get(f"{base}/access-log")).json())["entries"] == []
    finally:
        for http in (carl, lena, bert):
            await http.close()

    directory = service.root / rec_id
    assert directory.exists()
    assert await service.sweep(now=rec.created_at + 29 * DAY) == 0
    assert directory.exists()
    assert await service.sweep(now=rec.created_at + 30 * DAY + 1) == 1
    assert not directory.exists()
    assert await service.store.get(rec_id) is None
    entries = await service.store.access_log(["buergerbuero"])
    assert (entries[0].actor, entries[0].action, entries[0].recording) == ("system", "expired", rec_id)


async def test_deleting_a_recording_removes_files_and_consent(live_server, clients, peers):
    c = await start_consultation(live_server, clients, peers)
    rec_id = await recording_everyone_agreed(live_server, c)
    assert (await c.clerk.call("recording_stop", {"recording": rec_id}))["ok"]
    service = service_of(live_server)
    await composed(service, rec_id)
    async with aiohttp.ClientSession(cookies={"sps_session": c.clerk.cookie}) as http:
        csrf = (await (await http.get(f"{live_server.url}/api/session")).json())["csrf"]
        refused = await http.delete(f"{live_server.url}/api/staff/recordings/{rec_id}")
        assert refused.status == 403  # no CSRF token
        assert (service.root / rec_id).exists()
        resp = await http.delete(f"{live_server.url}/api/staff/recordings/{rec_id}", headers={"X-CSRF-Token": csrf})
        assert resp.status == 200
    assert not (service.root / rec_id).exists()
    assert await service.store.get(rec_id) is None
    assert (await service.store.access_log(["buergerbuero"]))[0].action == "delete"


@pytest.mark.parametrize("mode", ["off", "on_request"])
def test_configuration_requires_purpose_and_retention(mode: str) -> None:
    from server.settings import ConfigError, settings_from_dict

    raw = {"departments": [{"id": "a", "name": "A", "recording": mode}]}
    if mode == "off":
        assert not settings_from_dict(raw).departments[0].recording.allowed
        return
    with pytest.raises(ConfigError, match="recording_purpose"):
        settings_from_dict(raw)
    raw["departments"][0] |= {"recording_purpose": "Schulung", "recording_retention_days": 7}
    policy = settings_from_dict(raw).departments[0].recording
    assert policy.allowed and policy.retention_days == 7
