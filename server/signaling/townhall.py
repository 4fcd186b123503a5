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
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ..http.auth import Auth
from ..queue.errors import NotAuthorised, QueueError
from ..queue.model import Clerk
from ..townhalls import Audience, TownHallService, event_view, staff_event_view
from .guard import guard

log = logging.getLogger("sprechstunde.townhall")

TOWNHALL_INTERVAL = 0.25
"""Seconds between two question lists of one event (votes in between are sent together)."""


class TownHallSignaling:
    def __init__(self, sio: socketio.AsyncServer, service: TownHallService, auth: Auth) -> None:
        self.sio = sio
        self.service = service
        self.auth = auth
        self._dirty: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        service.on_change(self._changed)
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
        await self.service.leave_stage(who.event, who.audience)
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
        event = await self.service.end(await self._clerk(data), data.get("event"))
        return {"ok": True, "event": event_view(event)}

    async def _invite(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        audience = data.get("audience")
        event = await self.service.invite(await self._clerk(data), data.get("event"), audience)
        await self.sio.emit("th_invited", {"event": event.id}, room=f"tha:{audience}")
        return {"ok": True}

    async def _stage_end(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        audience = data.get("audience")
        event = await self.service.leave_stage(data.get("event"), audience, await self._clerk(data))
        await self.sio.emit("th_stage_ended", {"event": event.id}, room=f"tha:{audience}")
        return {"ok": True}

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
