"""socket.io events of recording consent. They translate; ``server.recordings`` and its core decide.

Who is who comes from the socket's media membership (``MediaSignaling``), never from the payload: a
participant answers only for themselves, a recording belongs to the consultation the socket is in.

Client -> server (acknowledged): ``recording_request`` (the clerk holding the consultation),
``recording_answer`` ``{recording, agree, sha256}`` (everyone, for themselves, naming the SHA-256 of the
text they were shown), ``recording_withdraw`` ``{recording}``, ``recording_stop`` ``{recording}`` (the clerk).
Server -> client: ``recording_consent`` (to one participant: the texts to show and answer),
``recording`` (to everyone in the consultation: the state, for the "Aufnahme läuft" indicator).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..queue.errors import InvalidInput, TicketNotFound
from ..recording.errors import NotAParticipant
from ..recording.model import RecordingEvent
from ..recordings import RecordingService, view
from .guard import guard

if TYPE_CHECKING:
    from .media import MediaSignaling, Member

log = logging.getLogger("sprechstunde.recording")


class RecordingSignaling:
    def __init__(self, media: MediaSignaling, service: RecordingService) -> None:
        self.media = media
        self.sio = media.sio
        self.service = service
        service.hub = lambda: media.hub
        service.on_events(self._on_events)
        for name, handler in {
            "recording_request": self._request,
            "recording_answer": self._answer,
            "recording_withdraw": self._withdraw,
            "recording_stop": self._stop,
        }.items():
            self.sio.on(name, self._guard(media.routed(name, handler)))  # where the consultation's media lives

    def _guard(self, handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Any:
        return guard(self.sio, ("citizen", "staff"), handler)

    def _member(self, sid: str, data: dict[str, Any]) -> Member:
        member = self.media._member(sid)
        if not member.room.startswith("c:"):
            raise NotAParticipant("recordings are made in a consultation")
        claimed = data.get("participant")
        if claimed is not None and claimed != member.participant:
            raise NotAParticipant("you can only answer for yourself")
        return member

    def _present(self, member: Member) -> list[tuple[str, str]]:
        return [(m.participant, m.role) for m in self.media.members(member.room)]

    # -- events from clients --
    async def _request(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid, data)
        ticket = await self.media.room.store.get_ticket(member.ticket)
        if ticket is None:
            raise TicketNotFound("ticket not found or expired")
        rec = await self.service.request(member.ticket, ticket.department, member.participant, member.role,
                                         self._present(member))
        return {"ok": True, "recording": view(rec, time.time())}

    async def _answer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid, data)
        agree = data.get("agree")
        if not isinstance(agree, bool):
            raise InvalidInput("agree must be true or false")
        if agree and not isinstance(data.get("sha256"), str):
            raise InvalidInput("sha256 of the consent text shown is needed to agree")
        rec = await self.service.answer(member.ticket, data.get("recording"), member.participant, agree,
                                        data.get("sha256"))
        return {"ok": True, "recording": view(rec, time.time())}

    async def _withdraw(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid, data)
        rec = await self.service.withdraw(member.ticket, data.get("recording"), member.participant)
        return {"ok": True, "recording": view(rec, time.time())}

    async def _stop(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid, data)
        rec = await self.service.stop(member.ticket, data.get("recording"), member.participant, member.role)
        return {"ok": True, "recording": view(rec, time.time())}

    # -- the consultation's comings and goings (called by MediaSignaling) --
    async def joined(self, member: Member) -> None:
        try:
            await self.service.joined(member.ticket, member.participant, member.role)
            rec = await self.service.current(member.ticket)
            if rec is not None:  # the newcomer learns that a recording is live (and is asked, see above)
                await self.sio.emit("recording", view(rec, time.time()), to=member.sid)
        except Exception:  # noqa: BLE001 - the consultation goes on; recording stops if it must
            log.exception("recording: following a join failed")

    async def left(self, member: Member) -> None:
        try:
            await self.service.left(member.ticket, member.participant)
        except Exception:  # noqa: BLE001
            log.exception("recording: following a leave failed")

    async def ended(self, ticket_id: str) -> None:
        try:
            await self.service.ended(ticket_id)
        except Exception:  # noqa: BLE001
            log.exception("recording: following the end of a consultation failed")

    # -- events from the service --
    async def _on_events(self, events: list[RecordingEvent]) -> None:
        now = time.time()
        for e in events:
            if e.kind == "asked" and e.participant is not None:
                member = self.media.member_of(f"c:{e.recording.ticket}", e.participant)
                if member is not None:
                    texts = self.service.texts(e.recording)
                    await self.sio.emit("recording_consent", {
                        "recording": e.recording.id,
                        "department": e.recording.department,
                        "purpose": e.recording.purpose,
                        "retention_days": e.recording.retention_days,
                        "texts": {lang: {"version": t.version, "sha256": t.sha256, "text": t.text}
                                  for lang, t in texts.items()},
                    }, to=member.sid)
        last = events[-1].recording
        await self.sio.emit("recording", view(last, now), room=f"c:{last.ticket}")
