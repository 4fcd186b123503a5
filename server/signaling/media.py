"""socket.io events of video consultations: offer/answer with the SFU, layouts, chat, invitations.

The queue decides who is in which consultation; this layer follows it. Media rooms are per ticket:
``w:<ticket>`` (the citizen alone while waiting: camera check, pre-warmed connection) and
``c:<ticket>`` (the consultation). Participants are ``citizen:<ticket>`` and ``staff:<username>``.
A socket is at most one media participant. The consultation's sockets are also in the socket.io room
``c:<ticket>`` (chat).

Authorisation: a citizen only ever joins the rooms of the ticket its socket was authenticated for
(no ticket id is taken from a citizen); a member of staff only the consultation of a ticket they hold
or were invited to by the clerk holding it. Handlers translate, they never decide: the ticket's state
comes from the store, the connection from the hub (``server.media``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import socketio
from aiortc import RTCIceServer

from ..cluster import Cluster, MemoryCluster
from ..http.auth import Auth
from ..locks import KeyedLocks
from ..media import MediaError, MediaHub, UnsupportedOffer
from ..media.registry import make_room_registry
from ..queue.errors import InvalidInput, NotAuthorised, NotYourTicket, QueueError, TicketNotFound
from ..queue.model import Clerk, Presence, Ticket, TicketEvent, TicketState
from ..settings import Settings
from ..waitingroom import WaitingRoom
from .guard import guard
from .relay import MediaRouter

if TYPE_CHECKING:
    from .recording import RecordingSignaling

log = logging.getLogger("sprechstunde.media")

ENDING = frozenset({"finished", "returned", "transferred", "no_show", "left", "expired"})
"""Ticket events that end a ticket's media: everybody in its rooms is disconnected."""
MAX_CHAT = 1000
SERVER_TURN_TTL = 10 * 365 * 86400.0
"""The SFU's own TURN credential is made once at start and must outlive the process."""

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class NotYet(QueueError):
    """Your connection opens when you are near the head of the queue."""

    code = "not_yet"
    status = 409


class NoMedia(QueueError):
    """The offer has no VP8 video or Opus audio, or does not bundle its media."""

    code = "no_media"
    status = 409


class NotInConsultation(QueueError):
    """There is no video connection for this ticket now."""

    code = "not_in_consultation"
    status = 409


class MediaBusy(QueueError):
    """The server has no room for another video connection now; please try again shortly."""

    code = "media_busy"
    status = 503


@dataclass(frozen=True)
class Member:
    """A socket that is a media participant."""

    sid: str
    participant: str
    "``citizen:<ticket>`` or ``staff:<username>``."
    ticket: str
    room: str
    "``w:<ticket>`` or ``c:<ticket>``."
    name: str
    "Shown to the other participants only, never logged."
    role: str
    "``citizen``, ``clerk`` (holds the ticket) or ``guest`` (an invited colleague or interpreter)."


def waiting_room(ticket_id: str) -> str:
    return f"w:{ticket_id}"


def consultation_room(ticket_id: str) -> str:
    return f"c:{ticket_id}"


def turn_credential(secret: str, participant: str, expires: float) -> tuple[str, str]:
    """coturn's REST scheme (``use-auth-secret``): username ``<expiry>:<participant>``, credential
    base64(HMAC-SHA1(secret, username))."""
    username = f"{int(expires)}:{participant}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def browser_ice_servers(settings: Settings, participant: str, now: float) -> list[dict[str, Any]]:
    """``RTCPeerConnection`` iceServers for a browser; empty unless TURN is configured."""
    if not settings.turn_urls:
        return []
    server: dict[str, Any] = {"urls": list(settings.turn_urls)}
    if settings.turn_secret:
        server["username"], server["credential"] = turn_credential(
            settings.turn_secret, participant, now + settings.turn_ttl_seconds
        )
    return [server]


def server_ice_servers(settings: Settings, now: float) -> list[RTCIceServer]:
    """The same TURN servers for the SFU's own connections (none by default: no public STUN)."""
    if not settings.turn_urls:
        return []
    if not settings.turn_secret:
        return [RTCIceServer(urls=list(settings.turn_urls))]
    username, credential = turn_credential(settings.turn_secret, "sprechstunde", now + SERVER_TURN_TTL)
    return [RTCIceServer(urls=list(settings.turn_urls), username=username, credential=credential)]


class MediaSignaling:
    """The media events on the application's socket.io server. ``hub`` is set by the app's lifecycle."""

    def __init__(self, settings: Settings, room: WaitingRoom, auth: Auth, sio: socketio.AsyncServer) -> None:
        self.settings = settings
        self.room = room
        self.auth = auth
        self.sio = sio
        self.hub: MediaHub | None = None
        self._by_sid: dict[str, Member] = {}
        self._rooms: dict[str, dict[str, Member]] = {}
        self.cluster: Cluster = MemoryCluster()
        """Invitations live here, shared by every node (server/cluster.py; the app sets its own)."""
        self._locks = KeyedLocks()
        self.recording: RecordingSignaling | None = None
        """Recording consent (server.signaling.recording): told who joins and leaves a consultation."""
        self.handlers: dict[str, Handler] = {}
        """Every media event's handler by name, as run where the ticket's rooms live (``routed``)."""
        self.router: MediaRouter | None = None
        """With several nodes (Redis): events for rooms on another node are relayed there (``use_nodes``)."""
        self._register()

    def start(self) -> MediaHub:
        self.hub = MediaHub(
            ice_servers=server_ice_servers(self.settings, time.time()),
            max_video_bitrate=self.settings.max_video_bitrate,
        )
        return self.hub

    def use_nodes(self, cluster: Cluster, settings: Settings) -> None:
        """With Redis: a ticket's rooms live on the node that claimed them; other nodes relay to it
        (server/media/registry.py, server/signaling/relay.py). A dead node's rooms are dropped."""
        if not settings.redis_url:
            return
        registry = make_room_registry(settings.redis_url, settings.redis_prefix, cluster.node_id)
        self.router = MediaRouter(self, registry, settings.redis_url, settings.redis_prefix, cluster=cluster)
        cluster.on_node_dead(self.router.node_dead)

    async def start_nodes(self) -> None:
        """Listen for events relayed from other nodes (before the first page can offer)."""
        if self.router is not None:
            await self.router.start()

    async def close(self) -> None:
        if self.router is not None:
            await self.router.close()
        hub, self.hub = self.hub, None
        self._by_sid.clear()
        self._rooms.clear()
        if hub is not None:
            await hub.close()

    # -- registration and authorisation --
    def _register(self) -> None:
        for name, handler in {
            "media_config": self._config,
            "media_offer": self._offer,
            "media_check_done": self._check_done,
            "media_leave": self._leave,
            "media_stats": self._stats,
            "chat": self._chat,
            "invite": self._invite,
        }.items():
            self.sio.on(name, self._guard(self.routed(name, handler)))

    def routed(self, name: str, handler: Handler) -> Handler:
        """``handler`` run where the ticket's media lives: here, or on its node (``MediaRouter``)."""
        self.handlers[name] = handler

        async def route(sid: str, data: dict[str, Any]) -> dict[str, Any]:
            if self.router is None:
                return await handler(sid, data)
            return await self.router.route(name, sid, data)

        return route

    def _guard(self, handler: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        return guard(self.sio, ("citizen", "staff"), handler)

    def _hub(self) -> MediaHub:
        if self.hub is None:
            raise MediaBusy("video is not available on this server now")
        return self.hub

    async def _clerk(self, data: dict[str, Any]) -> Clerk:
        return (await self.auth.session(data["_session"]["session"])).clerk

    @staticmethod
    def _participant_id(session: dict[str, Any]) -> str:
        if session["role"] == "citizen":
            return f"citizen:{session['ticket']}"
        return f"staff:{session['clerk']}"

    def _ticket_lock(self, ticket_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Offers and queue events of one ticket take turns (an offer awaits ICE gathering)."""
        return self._locks.hold(ticket_id)

    # -- events from clients --
    async def _config(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._participant_id(data["_session"])
        return {
            "ok": True,
            "ice_servers": browser_ice_servers(self.settings, participant, time.time()),
            "max_video_bitrate": self.settings.max_video_bitrate,
        }

    async def _offer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        session = data["_session"]
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise InvalidInput("sdp must be an SDP offer")
        if session["role"] == "citizen":
            if "ticket" in data:
                raise NotAuthorised("a citizen's connection is always for their own ticket")
            check = data.get("check", False)
            if not isinstance(check, bool):  # wrong types are invalid_input (probing: "yes" was taken for false)
                raise InvalidInput("check must be true or false")
            return await self._citizen_offer(sid, session["ticket"], sdp, check)
        clerk = await self._clerk(data)
        return await self._staff_offer(sid, clerk, data.get("ticket"), sdp)

    async def _citizen_offer(self, sid: str, ticket_id: str, sdp: str, check: bool) -> dict[str, Any]:
        async with self._ticket_lock(ticket_id):
            ticket = await self._ticket(ticket_id)
            if ticket.state.is_active:
                room_id = consultation_room(ticket_id)
            elif ticket.state is TicketState.WAITING:
                room_id = waiting_room(ticket_id)
                if not check and not await self._near_head(ticket):
                    raise NotYet()
            else:
                raise NotInConsultation("this ticket has ended")
            member = Member(sid, f"citizen:{ticket_id}", ticket_id, room_id, ticket.name, "citizen")
            answer = await self._join(member, sdp)
            if room_id == waiting_room(ticket_id) and check:
                self._hub().set_self_view(room_id, member.participant, True)
        await self._send_layouts(room_id)
        if room_id.startswith("c:") and self.recording is not None:
            await self.recording.joined(member)
        return {"ok": True, "sdp": answer, "room": "consultation" if room_id.startswith("c:") else "waiting"}

    async def _near_head(self, ticket: Ticket) -> bool:
        position = await self.room.store.position(ticket.department, ticket.id, ticket.seq)  # a rank look-up
        available = (await self.room.load(ticket.department)).available
        return position is not None and position <= 2 * available

    async def _staff_offer(self, sid: str, clerk: Clerk, ticket_id: Any, sdp: str) -> dict[str, Any]:
        if not isinstance(ticket_id, str) or not ticket_id:
            raise InvalidInput("ticket id missing")
        if len(ticket_id) > 64:  # malformed: the same answer as an unknown id
            raise TicketNotFound("ticket not found or expired")
        async with self._ticket_lock(ticket_id):
            ticket, role = await self._staff_access(clerk, ticket_id)
            room_id = consultation_room(ticket_id)
            member = Member(sid, f"staff:{clerk.username}", ticket_id, room_id, clerk.display_name, role)
            answer = await self._join(member, sdp)
        if role == "guest":  # a colleague or interpreter in a consultation is not free for the queue
            await self.room.set_presence(clerk, Presence.BUSY)
        await self._send_layouts(room_id)
        if self.recording is not None:
            await self.recording.joined(member)
        return {"ok": True, "sdp": answer, "room": "consultation"}

    async def _staff_access(self, clerk: Clerk, ticket_id: str) -> tuple[Ticket, str]:
        """The ticket and the clerk's role in its consultation, or a refusal."""
        ticket = await self.room.store.get_ticket(ticket_id)
        invited = await self.cluster.is_invited(ticket_id, clerk.username)  # possibly made on another node
        if ticket is None or (ticket.department not in clerk.departments and not invited):
            raise TicketNotFound("ticket not found or expired")  # a foreign ticket looks like a missing one
        if not ticket.state.is_active:
            raise NotInConsultation("this ticket is not in a consultation")
        if ticket.clerk == clerk.username:
            return ticket, "clerk"
        if invited:
            return ticket, "guest"
        raise NotYourTicket("another clerk is handling this ticket")

    async def _ticket(self, ticket_id: str) -> Ticket:
        ticket = await self.room.store.get_ticket(ticket_id)
        if ticket is None:
            raise TicketNotFound("ticket not found or expired")
        return ticket

    async def _join(self, member: Member, sdp: str) -> str:
        """Connect ``member``'s offer in its room: one participant per socket, rooms capped."""
        hub = self._hub()
        previous = self._by_sid.get(member.sid)
        if previous is not None and (previous.room, previous.participant) != (member.room, member.participant):
            await self._drop(previous)
        if member.room not in self._rooms and len(self._rooms) >= self.settings.max_media_rooms:
            raise MediaBusy()
        try:
            answer = await hub.handle_offer(member.room, member.participant, sdp)
        except (ValueError, MediaError) as e:  # UnsupportedOffer, or an offer aiortc cannot parse
            # a re-offer replaces the connection first: whatever this participant had is gone now
            stale = self._rooms.get(member.room, {}).get(member.participant)
            if stale is not None:
                self._forget(stale)
                await self.sio.leave_room(stale.sid, stale.room)
                await self._send_layouts(member.room)
            detail = str(e) if isinstance(e, UnsupportedOffer) else type(e).__name__
            raise NoMedia(f"the offer cannot be served: {detail}") from None
        replaced = self._rooms.get(member.room, {}).get(member.participant)
        if replaced is not None and replaced.sid != member.sid:  # another page of the same participant
            self._forget(replaced)
            await self.sio.leave_room(replaced.sid, replaced.room)
            await self.sio.emit("media_end", {"ticket": replaced.ticket, "reason": "replaced"}, to=replaced.sid)
        await self._remember(member)
        log.info("media room %s: %s joined", member.room, member.role)
        return answer

    async def _remember(self, member: Member) -> None:
        self._by_sid[member.sid] = member
        self._rooms.setdefault(member.room, {})[member.participant] = member
        await self.sio.enter_room(member.sid, member.room)

    def _forget(self, member: Member) -> None:
        if self._by_sid.get(member.sid) is member:
            del self._by_sid[member.sid]
        members = self._rooms.get(member.room, {})
        if members.get(member.participant) is member:
            del members[member.participant]
            if not members:
                del self._rooms[member.room]

    async def _drop(self, member: Member) -> None:
        """Disconnect one participant and tell the rest of its room."""
        self._forget(member)
        await self.sio.leave_room(member.sid, member.room)
        if self.hub is not None:
            await self.hub.leave(member.room, member.participant)
        await self._send_layouts(member.room)
        await self._guest_done(member)
        if member.room.startswith("c:") and self.recording is not None:
            await self.recording.left(member)

    async def _guest_done(self, member: Member) -> None:
        """An invited colleague left the consultation: free again (busy if they hold a ticket)."""
        if member.role != "guest":
            return
        account = await self.auth.store.get_staff(member.participant.removeprefix("staff:"))
        if account is not None:
            await self.room.choose_presence(self.auth.clerk_from_account(account), "available")

    async def _check_done(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid)
        if member.room.startswith("w:"):
            self._hub().set_self_view(member.room, member.participant, False)
            await self._send_layouts(member.room)
        return {"ok": True}

    async def _leave(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._by_sid.get(sid)
        if member is not None:
            async with self._ticket_lock(member.ticket):
                if self._by_sid.get(sid) is member:
                    if member.room.startswith("c:"):
                        # Hung up on purpose (not a dropped connection): the others are told who, before the
                        # layout without them, so that the citizen reads "… hat das Videogespräch beendet".
                        await self.sio.emit(
                            "media_left",
                            {"ticket": member.ticket, "participant": member.participant, "name": member.name,
                             "role": member.role},
                            room=member.room, skip_sid=sid,
                        )
                    await self._drop(member)
        return {"ok": True}

    async def _stats(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self._member(sid)
        try:
            stats = self._hub().stats(member.room, member.participant)
        except MediaError:
            raise NotInConsultation("the video connection is gone") from None
        return {"ok": True, "stats": dataclasses.asdict(stats)}

    async def _chat(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        text = data.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT:
            raise InvalidInput(f"text must be 1 to {MAX_CHAT} characters")
        member = self._member(sid)
        if not member.room.startswith("c:"):
            raise NotInConsultation("chat is open during the consultation")
        message = {"from": member.name, "role": member.role, "text": text, "at": round(time.time(), 3)}
        await self.sio.emit("chat", message, room=member.room, skip_sid=sid)
        return {"ok": True}

    async def _invite(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        if data["_session"]["role"] != "staff":
            raise NotAuthorised("only the clerk holding the ticket can invite")
        clerk = await self._clerk(data)
        ticket_id, username = data.get("ticket"), data.get("username")
        if not isinstance(ticket_id, str) or not ticket_id:
            raise InvalidInput("ticket id missing")
        if len(ticket_id) > 64:  # malformed: the same answer as an unknown id
            raise TicketNotFound("ticket not found or expired")
        if not isinstance(username, str) or not username or len(username) > 64 or username == clerk.username:
            raise InvalidInput("username of a colleague expected")
        ticket, role = await self._staff_access(clerk, ticket_id)
        if role != "clerk":
            raise NotYourTicket("only the clerk holding the ticket can invite")
        if await self.room.store.get_staff(username) is None:
            raise InvalidInput("no such colleague")
        await self.cluster.invite(ticket_id, username)
        log.info("ticket %s: a colleague was invited", ticket_id)
        await self.sio.emit(
            "invitation",
            {"ticket": ticket_id, "from": clerk.display_name, "department": ticket.department},
            room=f"u:{username}",
        )
        return {"ok": True}

    def is_member(self, sid: str) -> bool:
        return sid in self._by_sid

    def holds(self, ticket_id: str) -> bool:
        """Whether this process's hub has a room of the ticket."""
        return consultation_room(ticket_id) in self._rooms or waiting_room(ticket_id) in self._rooms

    def tickets(self) -> set[str]:
        """Tickets with a media connection on this process (waiting-room checks and consultations)."""
        return {member.ticket for member in self._by_sid.values()}

    def members(self, room_id: str) -> list[Member]:
        """The sockets that are media participants of a room."""
        return list(self._rooms.get(room_id, {}).values())

    def member_of(self, room_id: str, participant: str) -> Member | None:
        return self._rooms.get(room_id, {}).get(participant)

    def _member(self, sid: str) -> Member:
        member = self._by_sid.get(sid)
        if member is None:
            raise NotInConsultation("this page has no video connection")
        return member

    # -- layouts --
    async def _send_layouts(self, room_id: str) -> None:
        """Each participant of the room learns which remote is in which of its transceivers."""
        if self.hub is None:
            return
        members = dict(self._rooms.get(room_id, {}))
        kind = "consultation" if room_id.startswith("c:") else "waiting"
        for participant, member in members.items():
            try:
                layout = self.hub.layout(room_id, participant)
            except MediaError:  # the hub removed a connection that failed; the page offers again
                self._forget(member)
                continue
            slots = []
            for other, remote in layout.items():
                known = members.get(other)
                slots.append({
                    "participant": other,
                    "name": known.name if known else "",
                    "role": known.role if known else "",
                    "audio_mid": remote.audio_mid,
                    "video_mid": remote.video_mid,
                })
            await self.sio.emit("media_layout", {"room": kind, "slots": slots}, to=member.sid)

    # -- the queue decides, media follows --
    async def on_events(self, events: list[TicketEvent]) -> None:
        for e in events:
            try:
                if e.kind == "called":
                    if self.router is None or not await self.router.follow(e.ticket.id, "called"):
                        await self.called(e.ticket.id)
                elif e.kind in ENDING:
                    if self.router is None or not await self.router.follow(e.ticket.id, "end", e.kind):
                        await self.end(e.ticket.id, e.kind)
            except Exception:  # noqa: BLE001 - the queue's command is committed; media must not undo it
                log.exception("media: following ticket %s %s failed", e.ticket.id, e.kind)

    async def called(self, ticket_id: str) -> None:
        """A pre-warmed citizen's connection moves into the consultation: forwarding on, self view off."""
        if self.hub is None:
            return
        async with self._ticket_lock(ticket_id):
            waiting, consultation = waiting_room(ticket_id), consultation_room(ticket_id)
            member = self._rooms.get(waiting, {}).get(f"citizen:{ticket_id}")
            if member is None:
                return
            try:
                self.hub.set_self_view(waiting, member.participant, False)
                self.hub.move(member.participant, waiting, consultation)
            except MediaError:  # the connection failed meanwhile: the page offers again
                self._forget(member)
                return
            self.hub.set_forwarding(consultation, True)
            self._forget(member)
            await self.sio.leave_room(member.sid, waiting)
            await self._remember(dataclasses.replace(member, room=consultation))
            log.info("media room %s: citizen moved in", consultation)
        await self._send_layouts(consultation)
        moved = self._rooms.get(consultation, {}).get(f"citizen:{ticket_id}")
        if moved is not None and self.recording is not None:
            await self.recording.joined(moved)

    async def end(self, ticket_id: str, reason: str) -> None:
        """Disconnect everyone in the ticket's rooms and tell them why."""
        if self.recording is not None:  # stopped before anyone's media goes
            await self.recording.ended(ticket_id)
        async with self._ticket_lock(ticket_id):
            try:
                await self.cluster.clear_invitations(ticket_id)
            except Exception:  # noqa: BLE001 - the media must still end; the invitations lapse on their own
                log.warning("clearing the invitations of a ticket failed")
            for room_id in (consultation_room(ticket_id), waiting_room(ticket_id)):
                for member in list(self._rooms.get(room_id, {}).values()):
                    self._forget(member)
                    await self.sio.leave_room(member.sid, room_id)
                    if self.hub is not None:
                        await self.hub.leave(room_id, member.participant)
                    if reason == "server_stopping" and self.router is not None and self.router.elsewhere(member.sid):
                        await self.router.hand_off(member.sid)  # its page offers again, to a surviving node
                    else:
                        await self.sio.emit("media_end", {"ticket": ticket_id, "reason": reason}, to=member.sid)
                    await self._guest_done(member)
                if self.hub is not None:
                    for participant in self.hub.participants(room_id):  # connections no socket owns any more
                        await self.hub.leave(room_id, participant)
            if self.router is not None:  # another node may hold its media next time
                try:
                    await self.router.released(ticket_id)
                except Exception:  # noqa: BLE001 - the claim lapses, or is dropped with this node
                    log.warning("releasing the media room of a ticket failed")
        log.info("media of ticket %s ended: %s", ticket_id, reason)

    async def disconnected(self, sid: str) -> None:
        """A socket went away: its connection goes too (a reloaded page offers again)."""
        member = self._by_sid.get(sid)
        if member is None:
            if self.router is not None:  # its media may live on another node
                await self.router.disconnected(sid)
            return
        async with self._ticket_lock(member.ticket):
            if self._by_sid.get(sid) is member:
                await self._drop(member)
