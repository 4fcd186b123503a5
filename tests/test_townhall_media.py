"""The town hall's stage end to end: a politician publishes, receive-only audience peers watch, a raised
hand comes on stage, the event is recorded and published with a chapter per answered question. Real
socket.io clients, real aiortc peers through the SFU, real ffmpeg (docs/protocol.md, "Town hall")."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import av

from server.http.keys import TOWNHALL

from .media.peers import Client, consecutive, wait_for
from .socket_clients import Recorder, staff_socket
from .test_townhall_signaling import PASSWORD, Town, asked


async def stage_offer(socket: Recorder, peer: Client, **extra: Any) -> dict[str, Any]:
    ack = await socket.call("th_media_offer", {"sdp": await peer.offer(), **extra})
    assert ack.get("ok"), ack
    await peer.accept(ack["sdp"])
    return ack


def mid_of(layout: dict[str, Any], participant: str) -> str:
    return next(s["video_mid"] for s in layout["slots"] if s["participant"] == participant)


async def test_audience_watches_a_guest_comes_on_stage_and_the_recording_is_published(live_server, clients,
                                                                                         peers) -> None:
    town = Town(live_server, clients)
    try:
        event = await town.setup(recorded=True, recording_purpose="Veröffentlichung auf der Website",
                                 retention_days=30)
        paul = await staff_socket(live_server.url, "paul", PASSWORD)
        clients.append(paul)
        token, alice = await town.audience()
        viewers = [await town.audience() for _ in range(2)]
        question = await asked(town, token, "Wie geht es mit dem Freibad weiter?")
        await town.mona.call("th_watch", {"event": event["id"]})
        assert (await town.moderate(town.mona, "approve", question=question))["ok"]

        early = Client("early", slots=2, publish=False)
        peers.append(early)
        refused = await alice.call("th_media_offer", {"sdp": await early.offer()})
        assert refused["error"]["code"] == "event_not_live"
        assert (await town.mona.call("th_start", {"event": event["id"]}))["ok"]

        politician = Client("paul", slots=2)
        peers.append(politician)
        assert (await stage_offer(paul, politician, event=event["id"]))["role"] == "publisher"

        # a viewer that tries to publish without an invitation is refused; nothing is left behind
        cheeky = Client("cheeky", slots=2)
        peers.append(cheeky)
        assert (await alice.call("th_media_offer", {"sdp": await cheeky.offer()}))["error"]["code"] == "not_invited"

        watchers: list[tuple[Recorder, Client]] = []
        for i, (_, socket) in enumerate([("", alice), *viewers]):
            peer = Client(f"viewer{i}", slots=2, publish=False)
            peers.append(peer)
            assert (await stage_offer(socket, peer))["role"] == "viewer"
            watchers.append((socket, peer))
        for socket, peer in watchers:
            layout = await socket.wait_for("th_media_layout", lambda m: any(
                s["participant"] == "staff:paul" for s in m["slots"]))
            mid = mid_of(layout, "staff:paul")
            await wait_for(lambda p=peer, m=mid: len(p.frames_from(m)) >= 20, what="a viewer sees the politician")
            assert consecutive([n for n, _ in peer.frames_from(mid)])

        # the answer is being given while recorded: a chapter
        assert (await town.moderate(town.mona, "answering", question=question))["ok"]
        assert politician.video is not None
        sent = politician.video.count
        await wait_for(lambda: politician.video.count - sent >= 120, what="four seconds of the answer")
        assert (await town.moderate(town.mona, "answered", question=question))["ok"]

        # a raised hand comes on stage (no consent to publication), is seen by the others, and leaves
        assert await alice.call("th_hand", {"raised": True}) == {"ok": True}
        hands = await town.mona.wait_for("th_staff_event", lambda e: len(e["hands"]) == 1)
        alice_id = hands["hands"][0]["audience"]
        assert await town.mona.call("th_invite", {"event": event["id"], "audience": alice_id}) == {"ok": True}
        await alice.wait_for("th_invited")
        assert await alice.call("th_stage_accept", {"publication_consent": False}) == {"ok": True}
        guest = Client("alice", slots=2)
        peers.append(guest)
        assert (await stage_offer(alice, guest))["role"] == "publisher"
        other_socket, other_peer = watchers[1]
        layout = await other_socket.wait_for("th_media_layout", lambda m: any(
            s["participant"] == f"audience:{alice_id}" for s in m["slots"]))
        guest_mid = mid_of(layout, f"audience:{alice_id}")
        await wait_for(lambda: len(other_peer.frames_from(guest_mid)) >= 15, what="the audience sees the guest")
        assert await town.mona.call("th_stage_end", {"event": event["id"], "audience": alice_id}) == {"ok": True}
        await alice.wait_for("th_stage_ended")

        stats = live_server.app[TOWNHALL].hub().stage_stats(f"s:{event['id']}")
        assert stats.publishers == ("staff:paul",) and stats.viewers >= 2
        assert (await town.mona.call("th_end", {"event": event["id"]}))["ok"]
        await paul.wait_for("th_media_end")

        service = live_server.app[TOWNHALL]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while service._meta(event["id"]).get("composition") not in ("done", "failed"):
            assert loop.time() < deadline, "the recording was not composed"
            await asyncio.sleep(0.1)  # polling the job's metadata; it sends no event
        assert service._meta(event["id"])["composition"] == "done"
        made = [p for p in service.directory(event["id"]).rglob("*") if p.is_file()]
        assert made and all(p.stat().st_mode & 0o077 == 0 for p in made), [(p.name, oct(p.stat().st_mode))
                                                                           for p in made]  # probing: 0644
        async with aiohttp.ClientSession() as http:
            base = f"{live_server.url}/townhall/{event['id']}"
            assert (await http.get(f"{base}/recording.webm")).status == 409  # not published yet
        assert (await town.mona.call("th_publish", {"event": event["id"]}))["ok"]
        async with aiohttp.ClientSession() as http:
            info = await (await http.get(f"{live_server.url}/api/townhall/events/{event['id']}/recording")).json()
            titles = [c["title"] for c in info["chapters"]]
            assert "Wie geht es mit dem Freibad weiter?" in titles and titles[0] == "Begrüßung"
            answer = next(c for c in info["chapters"] if c["title"].startswith("Wie geht"))
            assert answer["end"] - answer["start"] >= 3.5
            vtt = await (await http.get(f"{base}/chapters.vtt")).text()
            assert vtt.startswith("WEBVTT") and "Wie geht es mit dem Freibad weiter?" in vtt
            part = await http.get(f"{base}/recording.webm", headers={"Range": "bytes=0-99"})
            assert part.status == 206 and len(await part.read()) == 100
            status = await (await http.get(f"{live_server.url}/api/townhall/questions/{question}")).json()
            assert status["question"]["recording_at"] is not None
            assert abs(status["question"]["recording_at"] - answer["start"]) < 1.0
        published = service.directory(event["id"]) / "recording.webm"
        with av.open(str(published)) as container:
            assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
            titles = [c["metadata"].get("title") for c in container.chapters()]
            assert titles[:2] == ["Begrüßung", "Wie geht es mit dem Freibad weiter?"]  # Matroska chapters
        everyone = json.loads((service.directory(event["id"]) / "tracks.all.json").read_text())
        shown = json.loads((service.directory(event["id"]) / "tracks.json").read_text())
        assert any(t["participant"] == f"audience:{alice_id}" for t in everyone["tracks"])
        assert not any(t["participant"].startswith("audience:") for t in shown["tracks"])  # no consent: left out
    finally:
        await town.close()
