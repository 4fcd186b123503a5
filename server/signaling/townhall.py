"""socket.io events of town-hall events. They translate; ``server.townhalls`` and its core decide.

Audience sockets connect with ``auth: {"townhall": "<audience token>"}`` (no account) and are in the rooms
``th:<event>`` (everyone) and ``tha:<audience>`` (this browser). Staff sockets (cookie) join an event with
``th_watch``: moderators enter ``thm:<event>`` (moderation list with pending questions), the event's
politicians ``thp:<event>`` (presenter view), both also ``th:<event>``.

Votes and moderation do not send a message per change: they mark the event dirty, and a loop sends each
dirty event's question list once per ``TOWNHALL_INTERVAL`` (one encoded message to the whole audience).

With Redis (several nodes) every node serves the stage members whose sockets it holds: a node with publishers
announces itself as an origin of the stage (server/media/stage_directory.py), a node with members takes one
relay of the stage from every other origin (server/media/stage_relay.py), whose publishers then appear on its
own stage; its viewers are sent the layout again when relayed publishers come or go.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ..cluster import new_node_id
from ..http.auth import Auth
from ..media import MediaError, MediaHub
from ..media.stage_directory import StageDirectory
from ..media.stage_relay import StageRelays
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
STAGE_RELAY_INTERVAL = 1.0
"""Seconds between two rounds of announcing this node as a stage's origin and looking for other origins."""


def advertised_host(host: str) -> str:
    """The address other nodes reach this node's stage relay at: the listening address, or for a wildcard
    listener the address the host name resolves to."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(socket.gethostname())
    return host


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
        self.node_id = new_node_id()
        """This process in the stage directory (only there: stage relays need no other node registry)."""
        self._directory: StageDirectory | None = None
        self._relays: StageRelays | None = None
        self._relay_address = ""
        self._relay_lock = asyncio.Lock()
        self._announced: set[str] = set()
        """Events this node announced itself as an origin of."""
        self._background: set[asyncio.Future[Any]] = set()
        self._syncing: set[str] = set()
        """Events whose stage relays are being synchronised right now."""
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
        consent = data.get("publication_consent", False)
        if not isinstance(consent, bool):  # (probing: "yes" was acknowledged and stored as no consent)
            raise InvalidInput("publication_consent must be true or false")
        await self.service.accept(who, consent)
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
        if publisher:
            hub.set_label(room, participant, {"name": name, "role": role})  # for the viewers on other nodes
        if event.id not in self._syncing:  # a join storm shares one look-up (the rounds repeat it every second)
            self._spawn(self._sync_stage(event.id))
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
            slots = [{"participant": other, **self._names(hub, event_id, members, other),
                      "audio_mid": remote.audio_mid, "video_mid": remote.video_mid}
                     for other, remote in layout.items()]
            await self.sio.emit("th_media_layout", {"event": event_id, "slots": slots}, to=member.sid)

    @staticmethod
    def _names(hub: MediaHub, event_id: str, members: dict[str, StageMember], other: str) -> dict[str, str]:
        """Name and role of a publisher shown: a member here, or one relayed from another node (its label)."""
        if other in members:
            return {"name": members[other].name, "role": members[other].role}
        label = hub.label(stage_room(event_id), other)
        return {"name": label.get("name", ""), "role": label.get("role", "")}

    # -- the stage across nodes --
    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stage_relays(self) -> StageRelays | None:
        """This node's stage relays (listener started on first use); None with one node (no Redis)."""
        settings = self.settings
        hub = self.service.hub()
        if settings is None or not settings.redis_url or hub is None:
            return None
        async with self._relay_lock:
            if self._relays is not None and self._relays.hub is hub:
                return self._relays
            if self._relays is not None:  # the hub was replaced (a restart of the media): start again
                await self._relays.close()
                self._relays = None
            if self._directory is None:
                self._directory = StageDirectory(settings.redis_url, settings.redis_prefix)
            key = await self._directory.relay_key()
            relays = StageRelays(hub, key, self.node_id, on_layout=self._relayed_layout)
            host = settings.stage_relay_host or settings.host
            _, port = await relays.serve(host, settings.stage_relay_port)
            self._relay_address = f"{await asyncio.to_thread(advertised_host, host)}:{port}"  # may ask the resolver
            self._relays = relays
            log.info("stage relays of this node listen on port %d", port)
            return relays

    async def _sync_stage(self, event_id: str) -> None:
        """Announce this node as an origin of the event's stage while it holds publishers; take a relay from
        every other origin while it holds members."""
        self._syncing.add(event_id)
        try:
            relays = await self._stage_relays()
            if relays is None or self._directory is None:
                return
            room = stage_room(event_id)
            if relays.hub.local_publishers(room):
                await self._directory.announce(room, self.node_id, self._relay_address)
                self._announced.add(event_id)
            elif event_id in self._announced:
                self._announced.discard(event_id)
                await self._directory.withdraw(room, self.node_id, self._relay_address)
            if not relays.hub.local_members(room) and relays.hub.recorder(room) is None:
                return  # nobody here to serve, nothing recorded here
            for node, address in (await self._directory.origins(room)).items():
                if node != self.node_id:
                    await relays.pull(room, node, address)
        except Exception as e:  # noqa: BLE001 - Redis away: the next round tries again
            if stopping():
                raise asyncio.CancelledError from None
            log.warning("town-hall event %s: stage relays not synchronised (%s)", event_id, type(e).__name__)
        finally:
            self._syncing.discard(event_id)

    async def _relay_rounds(self) -> None:
        while True:
            await asyncio.sleep(STAGE_RELAY_INTERVAL)
            hub = self.service.hub()
            recorded = [r.removeprefix("s:") for r in hub.recorded_rooms() if r.startswith("s:")] if hub else []
            for event_id in {*(e for e, members in self._stages.items() if members), *self._announced, *recorded}:
                if await self._ended_elsewhere(event_id):
                    continue
                await self._sync_stage(event_id)

    async def _ended_elsewhere(self, event_id: str) -> bool:
        """An event ended on another node (its ``th_end`` ran there): this node's stage members are told and
        its stage closes too, within a round."""
        if not self._stages.get(event_id):
            return False
        try:
            event = await self.service.event(event_id)
        except Exception as e:  # noqa: BLE001 - Redis away, or the event deleted: the next round decides
            if stopping():
                raise asyncio.CancelledError from None
            log.warning("town-hall event %s: state not read (%s)", event_id, type(e).__name__)
            return False
        if event.state is not EventState.ENDED:
            return False
        await self._stage_closed(event)
        return True

    def _relayed_layout(self, room_id: str) -> None:
        """Relayed publishers came or went: this node's members get their layouts again."""
        self._spawn(self._send_layouts(room_id.removeprefix("s:")))

    async def _close_relays(self) -> None:
        relays, directory, self._relays, self._directory = self._relays, self._directory, None, None
        for task in list(self._background):
            task.cancel()
        if relays is not None:
            await relays.close()
        if directory is not None:
            try:
                for event_id in self._announced:
                    await directory.withdraw(stage_room(event_id), self.node_id, self._relay_address)
            except Exception as e:  # noqa: BLE001 - Redis away at the stop: the announcements lapse alone
                log.warning("withdrawing stage announcements failed: %s", type(e).__name__)
            self._announced.clear()
            await directory.close()

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
        relaying = None
        if self.settings is not None and self.settings.redis_url:  # the stage across nodes: this task's lifetime
            relaying = asyncio.create_task(self._relay_rounds(), name="stage-relays")
        try:
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
        finally:
            if relaying is not None:
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
                await self._close_relays()

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
