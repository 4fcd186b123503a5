"""socket.io events of town-hall events. They translate; ``server.townhalls`` and its core decide.

Audience sockets connect with ``auth: {"townhall": "<audience token>"}`` (no account) and are in the rooms
``th:<event>`` (everyone) and ``tha:<audience>`` (this browser). Staff sockets (cookie) join an event with
``th_watch``: moderators enter ``thm:<event>`` (moderation list with pending questions), the event's
politicians ``thp:<event>`` (presenter view), both also ``th:<event>``.

Votes and moderation do not send a message per change: they mark the event dirty, and a loop sends each
dirty event's question list once per ``TOWNHALL_INTERVAL`` (one encoded message to the whole audience).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ..http.auth import Auth
from ..media import MediaError, MediaHub
from ..queue.errors import InvalidInput, NotAuthorised, QueueError
from ..queue.model import Clerk
from ..settings import Settings
from ..tasks import stopping
from ..townhall import core
from ..townhall.errors import EventNotLive, NotInvited
from ..townhall.model import EventState, StageState, TownHallEvent
from ..townhalls import Audience, TownHallService, event_view, staff_event_view, stage_room
from .guard import guard
from .media import MediaBusy, NoMedia, browser_ice_servers

log = logging.getLogger("sprechstunde.townhall")

TOWNHALL_INTERVAL = 0.25
"""Seconds between two question lists of one event (votes in between are sent together)."""


def sends_media(sdp: str) -> bool:
    """Whether an offer sends audio or video: an audio/video section that is ``sendrecv`` (the default) or
    ``sendonly``. A viewer's offer holds ``recvonly`` sections only."""
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line.strip())
    for section in sections:
        if section[0][2:].split(" ", 1)[0] not in ("audio", "video"):
            continue
        directions = {"a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"} & set(section)
        if not directions or directions & {"a=sendrecv", "a=sendonly"}:
            return True
    return False


class StageMember:
    """A socket connected to an event's stage (a viewer or a publisher)."""

    __slots__ = ("sid", "event", "participant", "name", "role")

    def __init__(self, sid: str, event: str, participant: str, name: str, role: str) -> None:
        self.sid, self.event, self.participant, self.name, self.role = sid, event, participant, name, role


class TownHallSignaling:
    def __init__(self, sio: socketio.AsyncServer, service: TownHallService, auth: Auth,
                 settings: Settings | None = None) -> None:
        self.sio = sio
        self.service = service
        self.auth = auth
        self.settings = settings
        self._dirty: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._members: dict[str, StageMember] = {}
        self._stages: dict[str, dict[str, StageMember]] = {}
        """Per event: its stage members by participant id."""
        service.on_change(self._changed)
        media_events: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "th_media_offer": self._media_offer, "th_media_leave": self._media_leave,
            "th_media_config": self._media_config, "th_media_video": self._media_video,
        }
        for name, handler in media_events.items():
            sio.on(name, guard(sio, ("audience", "staff"), handler))
        audience_events: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "th_vote": self._vote,
            "th_unvote": self._unvote,
            "th_hand": self._hand,
            "th_stage_accept": self._accept,
            "th_stage_leave": self._leave,
        }
        for name, handler in audience_events.items():
            sio.on(name, guard(sio, ("audience",), handler))
        staff_events: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "th_watch": self._watch,
            "th_moderate": self._moderate,
            "th_start": self._start,
            "th_end": self._end,
            "th_invite": self._invite,
            "th_stage_end": self._stage_end,
            "th_publish": self._publish,
        }
        for name, handler in staff_events.items():
            sio.on(name, guard(sio, ("staff",), handler))

    # -- connect --
    async def connect(self, sid: str, token: object) -> None:
        """An audience socket: its token says which event and which audience member."""
        try:
            who = await self.service.audience(token)
            event = await self.service.event(who.event)
        except QueueError as e:
            raise socketio.exceptions.ConnectionRefusedError(e.code) from None
        await self.sio.save_session(sid, {"role": "audience", "event": who.event, "audience": who.audience})
        await self.sio.enter_room(sid, f"th:{who.event}")
        await self.sio.enter_room(sid, f"tha:{who.audience}")
        await self.sio.emit("th_state", {
            "event": event_view(event), "audience": who.audience,
            "questions": await self.service.public_questions(event.id),
            "my_votes": await self.service.my_votes(who),
            "hand_raised": any(h.audience == who.audience for h in event.hands),
        }, to=sid)

    @staticmethod
    def _who(data: dict[str, Any]) -> Audience:
        session = data["_session"]
        return Audience(session["event"], session["audience"])

    async def _clerk(self, data: dict[str, Any]) -> Clerk:
        return (await self.auth.session(data["_session"]["session"])).clerk

    # -- audience events --
    async def _vote(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await self.service.vote(self._who(data), data.get("question"))
        return {"ok": True}

    async def _unvote(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await self.service.unvote(self._who(data), data.get("question"))
        return {"ok": True}

    async def _hand(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await self.service.hand(self._who(data), data.get("raised"))
        return {"ok": True}

    async def _accept(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        who = self._who(data)
        await self.service.accept(who, data.get("publication_consent"))
        return {"ok": True}

    async def _leave(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        who = self._who(data)
        event = await self.service.leave_stage(who.event, who.audience)
        await self._off_stage(event, who.audience)
        return {"ok": True}

    # -- staff events --
    async def _watch(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        clerk = await self._clerk(data)
        event = await self.service.event(data.get("event"))
        moderator = "moderator" in clerk.roles
        politician = clerk.username in event.politicians
        if not moderator and not politician:
            raise NotAuthorised("only the event's politicians and moderators")
        await self.sio.enter_room(sid, f"th:{event.id}")
        if moderator:
            await self.sio.enter_room(sid, f"thm:{event.id}")
        if politician:
            await self.sio.enter_room(sid, f"thp:{event.id}")
        state: dict[str, Any] = {"event": staff_event_view(event),
                                 "questions": await self.service.public_questions(event.id)}
        if moderator:
            state["moderation"] = await self.service.moderation_questions(event.id)
        return {"ok": True, "moderator": moderator, "politician": politician, **state}

    async def _moderate(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        clerk = await self._clerk(data)
        q = await self.service.moderate(clerk, data.get("event"), data.get("action"), data)
        return {"ok": True, "question": q.id if q else None}

    async def _start(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        event = await self.service.start(await self._clerk(data), data.get("event"))
        return {"ok": True, "event": event_view(event)}

    async def _end(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        event = await self.service.end(await self._clerk(data), data.get("event"))  # stops the recording first
        await self._stage_closed(event)
        return {"ok": True, "event": event_view(event)}

    async def _invite(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        audience = data.get("audience")
        event = await self.service.invite(await self._clerk(data), data.get("event"), audience)
        await self.sio.emit("th_invited", {"event": event.id}, room=f"tha:{audience}")
        return {"ok": True}

    async def _stage_end(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        audience = data.get("audience")
        event = await self.service.leave_stage(data.get("event"), audience, await self._clerk(data))
        await self._off_stage(event, audience)
        await self.sio.emit("th_stage_ended", {"event": event.id}, room=f"tha:{audience}")
        return {"ok": True}

    # -- media on the stage --
    def _hub(self) -> MediaHub:
        hub = self.service.hub()
        if hub is None:
            raise MediaBusy("video is not available on this server now")
        if hub.on_viewer_audio_only is None:
            hub.on_viewer_audio_only = self._audio_only
        return hub

    async def _media_config(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        session = data["_session"]
        audience = session["role"] == "audience"
        participant = f"audience:{session['audience']}" if audience else f"staff:{session['clerk']}"
        servers = browser_ice_servers(self.settings, participant, time.time()) if self.settings else []
        return {"ok": True, "ice_servers": servers}

    async def _media_offer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        """Watch (audience) or publish (the event's politicians and moderators, a citizen on stage)."""
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise InvalidInput("sdp must be an SDP offer")
        session = data["_session"]
        if session["role"] == "audience":
            event = await self.service.event(session["event"])
            guest = event.guest(session["audience"])
            publisher = guest is not None and guest.state is StageState.ON_STAGE
            participant, name, role = f"audience:{session['audience']}", "", "guest"
            if not publisher and sends_media(sdp):
                raise NotInvited("only a citizen invited on stage may send video or sound")
        else:
            clerk = await self._clerk(data)
            event = await self.service.event(data.get("event"))
            if not core.may_publish(event, clerk):
                raise NotAuthorised("only the event's politicians and moderators publish")
            publisher = sends_media(sdp)  # a moderator may also just watch
            participant, name = f"staff:{clerk.username}", clerk.display_name
            role = "politician" if clerk.username in event.politicians else "moderator"
        if event.state is not EventState.LIVE:
            raise EventNotLive()
        hub = self._hub()
        room = stage_room(event.id)
        hub.create_stage(room)  # idempotent for a stage
        if publisher:
            hub.promote(room, participant)
        try:
            answer = await hub.handle_offer(room, participant, sdp, role="publisher" if publisher else "viewer")
        except (ValueError, MediaError) as e:
            raise NoMedia(f"the offer cannot be served: {e}") from None
        previous = self._members.get(sid)
        if previous is not None and previous.participant != participant:
            await self._drop(previous)
        member = StageMember(sid, event.id, participant, name, role)
        self._members[sid] = member
        replaced = self._stages.setdefault(event.id, {}).get(participant)
        if replaced is not None and replaced.sid != sid:
            self._members.pop(replaced.sid, None)
        self._stages[event.id][participant] = member
        await self._send_layouts(event.id)
        log.info("town-hall event %s: %s connected to the stage", event.id, "publisher" if publisher else "viewer")
        return {"ok": True, "sdp": answer, "role": "publisher" if publisher else "viewer"}

    async def _media_video(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        """A viewer switched to audio only asks for video again (judged afresh from now)."""
        member = self._members.get(sid)
        if member is None:
            raise NoMedia("this page is not connected to the stage")
        try:
            self._hub().restore_video(stage_room(member.event), member.participant)
        except MediaError:
            raise NoMedia("this page is not connected to the stage") from None
        return {"ok": True}

    async def _media_leave(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._members.get(sid)
        if member is not None:
            await self._drop(member)
        return {"ok": True}

    async def disconnected(self, sid: str) -> None:
        member = self._members.get(sid)
        if member is not None:
            await self._drop(member)

    async def _drop(self, member: StageMember) -> None:
        self._members.pop(member.sid, None)
        stage = self._stages.get(member.event, {})
        if stage.get(member.participant) is member:
            del stage[member.participant]
        hub = self.service.hub()
        if hub is not None:
            await hub.leave(stage_room(member.event), member.participant)
        await self._send_layouts(member.event)

    async def _send_layouts(self, event_id: str) -> None:
        hub = self.service.hub()
        if hub is None:
            return
        members = dict(self._stages.get(event_id, {}))
        for participant, member in members.items():
            try:
                layout = hub.stage_layout(stage_room(event_id), participant)
            except MediaError:
                continue
            slots = [{"participant": other, "name": members[other].name if other in members else "",
                      "role": members[other].role if other in members else "",
                      "audio_mid": remote.audio_mid, "video_mid": remote.video_mid}
                     for other, remote in layout.items()]
            await self.sio.emit("th_media_layout", {"event": event_id, "slots": slots}, to=member.sid)

    def _audio_only(self, room_id: str, participant_id: str) -> None:
        event_id = room_id.removeprefix("s:")
        member = self._stages.get(event_id, {}).get(participant_id)
        if member is not None:
            task = asyncio.ensure_future(self.sio.emit("th_audio_only", {"event": event_id}, to=member.sid))
            task.add_done_callback(lambda _: None)

    async def _off_stage(self, event: TownHallEvent, audience: object) -> None:
        """A guest's turn ended: their media no longer reaches anyone; their page re-offers as a viewer."""
        hub = self.service.hub()
        if hub is not None and isinstance(audience, str):
            try:
                hub.demote(stage_room(event.id), f"audience:{audience}")
            except MediaError:
                pass
        await self._send_layouts(event.id)

    async def _stage_closed(self, event: TownHallEvent) -> None:
        """The event ended: everyone's stage media goes."""
        for member in list(self._stages.pop(event.id, {}).values()):
            self._members.pop(member.sid, None)
            await self.sio.emit("th_media_end", {"event": event.id}, to=member.sid)
        hub = self.service.hub()
        if hub is not None:
            try:
                await hub.close_stage(stage_room(event.id))
            except MediaError:
                pass

    async def _publish(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        event = await self.service.publish(await self._clerk(data), data.get("event"), data.get("published", True))
        return {"ok": True, "event": event_view(event)}

    # -- coalesced broadcasts --
    async def _changed(self, event_id: str, kinds: set[str]) -> None:
        self._dirty.setdefault(event_id, set()).update(kinds)
        self._wake.set()

    async def broadcast(self) -> None:
        """Send what changed, per event, at most every TOWNHALL_INTERVAL (one list for many votes)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = loop.time()
            dirty, self._dirty = self._dirty, {}
            for event_id, kinds in dirty.items():
                try:
                    await self._send(event_id, kinds)
                except Exception:  # noqa: BLE001 - a failed broadcast must not end the loop
                    if stopping():
                        raise asyncio.CancelledError from None
                    log.exception("town-hall broadcast failed")
            await asyncio.sleep(max(0.0, TOWNHALL_INTERVAL - (loop.time() - started)))

    async def _send(self, event_id: str, kinds: set[str]) -> None:
        if "event" in kinds:
            event = await self.service.event(event_id)
            await self.sio.emit("th_event", event_view(event), room=f"th:{event_id}")
            staff = staff_event_view(event)
            await self.sio.emit("th_staff_event", staff, to=[f"thm:{event_id}", f"thp:{event_id}"])
        if kinds & {"questions", "event", "moderation"}:
            questions = await self.service.public_questions(event_id)
            await self.sio.emit("th_questions", {"event": event_id, "questions": questions}, room=f"th:{event_id}")
        if "moderation" in kinds or "questions" in kinds:
            await self.sio.emit("th_moderation", {"event": event_id,
                                                  "questions": await self.service.moderation_questions(event_id)},
                                room=f"thm:{event_id}")
