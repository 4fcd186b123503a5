"""socket.io handlers. They authenticate at connect, authorise every event, call the service and
emit; they decide nothing. One function (``server.errors.error_payload``) shapes every refusal.

Rooms: ``t:<ticket>`` (a citizen's pages), ``d:<department>`` (every waiting page of a department),
``s:<department>`` (the dashboards of its clerks).

Position updates are coalesced: a change marks its department dirty and a loop sends one compact
``queue`` message per dirty department at most every ``position_interval`` seconds, each department at
its own phase of the interval. The called citizen is told at once through their own room.

A waiting page's connection coming and going is coalesced the same way for dashboards: one
``connectivity`` message per department and interval, with the latest state of each ticket that changed,
instead of a ``ticket`` event per page (a reconnect storm is two per waiting citizen).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any

import socketio

from ..cluster import Cluster, MemoryCluster
from ..errors import STORE_ERRORS, error_body, is_store_unavailable, store_unavailable
from ..http.auth import SESSION_COOKIE, Auth
from ..queue.errors import QueueError, UnknownDepartment
from ..queue.model import Clerk, Presence, TicketEvent, TicketState
from ..settings import Settings
from ..tasks import stopping
from ..waitingroom import CONNECTIVITY, PRESENCE_TTL, WaitingRoom, staff_view
from . import engineio_poll, engineio_ws
from .guard import Handler, guard
from .managers import ClosingRedisManager, FastManager, broadcast, deliver, encode_event
from .safejson import INVALID_EVENT, SafePacket

if TYPE_CHECKING:
    from .media import MediaSignaling
    from .townhall import TownHallSignaling

log = logging.getLogger("sprechstunde.signaling")

FRESH_SECONDS = 0.1
"""How old a department's update may be for a page connecting while the department changes: at most ten
computations a second per department, whatever the number of pages connecting (``_queue_update``)."""
AWAY_BATCH = 200
"""Pages settled together once their away period is over (``Signaling.settle_away``)."""
HELD_SECONDS = 10.0
"""How old a department's update may be for a page connecting when nothing changed since, on this node
(``_dirty``) nor on another (their broadcasts replace it, ``_heard_update``): a bound for a broadcast that
got lost. It was ``position_interval`` (1 s): a 10,000-page reconnect storm, in which nothing changes,
computed every department's update anew each second, 5-7 % of the storm's CPU."""
UNSETTLED_RETRY_SECONDS = 2.0
"""How often disconnects the store did not take are tried again (``Signaling.settle_unanswered``)."""
RETRY_AFTER = 5.0
"""Seconds a page told ``server_stopping`` waits (plus its own jitter) before reconnecting: a restart or
another node behind the proxy is ready by then."""
QUEUE_CHANGES = frozenset({"joined", "called", "returned", "transferred", "left", "expired", "rejoined",
                           "department_closed"})



def _same_but_time(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``queue`` updates say the same, whenever each was made."""
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "t")


def _library_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        # Errors only, as their own default: their info lines are per message, and their warnings too (one per
        # frame of a namespace a session never joined: anyone could fill the log, and forge lines with the
        # namespace's text).
        logger.setLevel(logging.ERROR)
    return logger


class Signaling:
    def __init__(self, settings: Settings, room: WaitingRoom, auth: Auth) -> None:
        self.settings = settings
        self.room = room
        self.auth = auth
        manager: FastManager | ClosingRedisManager = FastManager()
        if settings.redis_url:
            # Emits travel through Redis so that every node's sockets receive them.
            # Commands time out like the store's (a hung Redis must not block every emit); the listener reads
            # pub/sub messages without a timeout in redis-py, so it is not cut off by this.
            manager = ClosingRedisManager(settings.redis_url, channel=f"{settings.redis_prefix}socketio",
                                          redis_options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0})
        engineio_poll.install()
        origins: list[str] | None = list(settings.cors_origins) or None  # None: same origin only
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            client_manager=manager,
            cors_allowed_origins=origins,
            max_http_buffer_size=settings.max_socket_message_bytes,
            serializer=SafePacket,  # JSON nested too deeply becomes an "invalid_payload" event, answered below
            ping_interval=settings.ping_interval,
            # The libraries' own loggers in our hierarchy, errors only: with ``False`` they add a handler of
            # their own to stderr, and each of their errors (python-socketio's "Cannot receive from redis" in
            # a Redis outage) was printed twice, once without a timestamp.
            logger=_library_logger("sprechstunde.socketio"),
            engineio_logger=_library_logger("sprechstunde.engineio"),
        )
        engineio_ws.install(self.sio.eio)
        if isinstance(manager, ClosingRedisManager):  # other nodes' broadcasts refresh the cached update
            manager.on_queue = self._heard_update
        self._dirty: set[str] = set()
        self._citizen_sockets: Counter[str] = Counter()
        self._unsettled: dict[str, float | None] = {}
        """Tickets whose page closed while the store did not answer (or settling it failed: ``_page_gone``),
        with when that page closed if known."""
        self._away: dict[str, tuple[float, float]] = {}
        """Tickets whose last page on this node closed less than ``page_away_seconds`` ago, in the order they
        closed: when it is settled (loop time) and when it closed (wall clock). Still counted in the cluster
        as one page of this node (``settle_away``)."""
        self._noted_epoch = 0
        """Raised when the notes must all be written again (``_connections_restored``)."""
        self._noted: dict[str, float] = {}
        """Close times of pages away (and unsettled) as last noted in the cluster (``_note_closes``), so that a
        survivor of this node's death starts their grace periods from their close, as this node would have."""
        self._clerk_sockets: Counter[str] = Counter()
        self._clerks: dict[str, Clerk] = {}
        self._closing = False
        self._others_hear = isinstance(manager, ClosingRedisManager)
        """Emits reach other nodes' sockets too: what changes while this node stops (a grace period starting,
        a clerk going offline, a request still running) is still told, to theirs (``finish_stop``)."""
        self._stopping_settled = False
        """Stopping on a cluster that settles at its stop: pages and dashboards closing here leave their
        bookkeeping (grace periods, going offline) to ``Cluster.stop``, which does it for all at once."""
        self._connectivity: dict[str, dict[str, float | None]] = {}
        """Per department: tickets whose page connected or disconnected since the last ``connectivity``
        message, with their ``disconnected_at`` (None: connected again)."""
        self._told: dict[str, tuple[float, dict[str, Any]]] = {}
        """Per department: the latest ``queue`` update broadcast to every page (by this node or another, heard
        through Redis), and when (loop time)."""
        self._computing: dict[str, asyncio.Future[None]] = {}
        """Per department: a computation of its update under way for a connecting page (``_queue_update``)."""
        self._updates: dict[str, tuple[float, dict[str, Any], Any, frozenset[int]]] = {}
        """Per department: when its latest update was made, the update, and its encoded ``queue`` event."""
        self._opening: dict[str, tuple[bool, Any, str | None]] = {}
        """Per department: whether it was open, its next opening and closure message at the last look
        (``WaitingRoom.opening``): a change (opening hours ending, a lead closing it) is pushed unasked."""
        self.townhall: TownHallSignaling | None = None
        """Town-hall events (server.signaling.townhall): audience sockets connect through it."""
        self.media: MediaSignaling | None = None
        """Video consultations (server.signaling.media); it registers its own events on ``sio``."""
        self.cluster: Cluster = MemoryCluster()
        """Pages and dashboards are counted across nodes here (server/cluster.py; the app sets its own)."""
        self.use_cluster(self.cluster)
        self._register()
        room.on_events(self._on_events)
        room.on_presence(self._on_presence)
        room.directory.on_change(self._on_departments)

    def attach(self, app: Any) -> None:
        self.sio.attach(app)

    def use_cluster(self, cluster: Cluster) -> None:
        self.cluster = cluster
        cluster.on_connections_dropped(self._connections_dropped)
        cluster.on_connections_restored(self._connections_restored)

    def socket_counts(self) -> dict[str, int]:
        """This process's connected sockets by kind, for /metrics: waiting ``page``s, staff ``dashboard``s,
        ``other`` (town-hall audience, and pages between connecting and authenticating)."""
        pages = sum(self._citizen_sockets.values())
        dashboards = sum(self._clerk_sockets.values())
        total = len(self.sio.manager.rooms.get("/", {}).get(None, ()))
        return {"page": pages, "dashboard": dashboards, "other": max(0, total - pages - dashboards)}

    # -- connect / disconnect --
    def _register(self) -> None:
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on(INVALID_EVENT, self._invalid_payload)
        self.sio.on("*", self._unknown_event)  # every event no handler took (town hall and media register theirs)
        citizen_events: dict[str, Handler] = {
            "subscribe": self._subscribe,
            "answer": self._answer,
            "leave": self._leave,
            "rejoin": self._rejoin,
        }
        for name, handler in citizen_events.items():
            self.sio.on(name, self._guard("citizen", handler))
        staff_events: dict[str, Handler] = {
            "refresh": self._refresh,
            "call_next": self._call_next,
            "call": self._ticket_action("call"),
            "start": self._ticket_action("start"),
            "finish": self._ticket_action("finish"),
            "no_show": self._ticket_action("no_show"),
            "return": self._ticket_action("return_to_queue"),
            "transfer": self._transfer,
            "presence": self._presence,
        }
        for name, handler in staff_events.items():
            self.sio.on(name, self._guard("staff", handler))

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            await self._connect_as(sid, environ, auth)
        except STORE_ERRORS as e:  # Redis down or hung: a clear refusal, the page retries
            store_unavailable(e)  # logged once per outage, counted for /metrics
            raise socketio.exceptions.ConnectionRefusedError("store_unavailable") from None

    async def _connect_as(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        if isinstance(auth, dict) and "townhall" in auth and self.townhall is not None:
            await self.townhall.connect(sid, auth["townhall"])  # an audience member of a town-hall event
            return
        if isinstance(auth, dict) and "token" in auth:
            try:
                ticket = await self.room.ticket_for_token(auth.get("token"))
            except QueueError as e:
                raise socketio.exceptions.ConnectionRefusedError(e.code) from None
            await self.sio.save_session(sid, {"role": "citizen", "ticket": ticket.id})
            await self.sio.enter_room(sid, f"t:{ticket.id}")
            await self.sio.enter_room(sid, f"d:{ticket.department}")
            # Pages are counted across nodes; a page back within its away period takes the place the closed
            # one still holds in the count (nothing to write: the ticket never went away).
            away = self._away.pop(ticket.id, None)
            if away is None:
                await self.cluster.connected("ticket", ticket.id)
            self._citizen_sockets[ticket.id] += 1
            try:
                if ticket.disconnected_at is not None:
                    ticket = await self.room.citizen_connected(ticket.id)
                await self.sio.emit("ticket", await self.room.citizen_view(ticket), to=sid)
                seq = ticket.seq if ticket.state is TicketState.WAITING else None
                await deliver(self.sio.manager, (await self._queue_update(ticket.department, seq))[1], "/", sid)
            except BaseException:  # refused: the page does not count (socket.io runs no disconnect for it)
                with contextlib.suppress(Exception):
                    await self._page_closed(ticket.id, away)  # still away since the close it took over
                raise
            return
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        morsel = cookie.get(SESSION_COOKIE)
        try:
            session = await self.auth.session(morsel.value if morsel else None)
        except QueueError as e:
            raise socketio.exceptions.ConnectionRefusedError(e.code) from None
        clerk = session.clerk
        await self.sio.save_session(sid, {"role": "staff", "session": session.session_id, "clerk": clerk.username})
        for dep in clerk.departments:
            await self.sio.enter_room(sid, f"s:{dep}")
        await self.sio.enter_room(sid, f"u:{clerk.username}")  # invitations to a consultation
        await self.cluster.connected("clerk", clerk.username)  # dashboards are counted across nodes
        self._clerk_sockets[clerk.username] += 1
        self._clerks[clerk.username] = clerk
        try:
            await self.room.choose_presence(clerk, session.presence)  # busy instead while holding a ticket
            await self.sio.emit("dashboard", await self.room.dashboard(clerk), to=sid)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._dashboard_closed(clerk.username)
            raise

    async def _disconnect(self, sid: str, *args: Any) -> None:
        if self.townhall is not None:
            try:
                await self.townhall.disconnected(sid)  # its stage connection, if any
            except Exception:  # noqa: BLE001 - the bookkeeping below must still happen
                log.exception("town-hall disconnect failed")
        if self.media is not None:
            try:
                await self.media.disconnected(sid)
            except Exception:  # noqa: BLE001 - the queue's bookkeeping below must still happen
                log.exception("media disconnect failed")
        session = await self.sio.get_session(sid)
        if session.get("role") == "citizen":
            await self._page_closed(session["ticket"])
        elif session.get("role") == "staff":
            await self._dashboard_closed(session["clerk"])

    async def _page_closed(self, ticket_id: str, away: tuple[float, float] | None = None) -> None:
        """A page of the ticket closed on this node; the grace period starts when no node holds one. When the
        store does not answer, the ticket is settled again once it does (``settle_unanswered``): its grace
        period must not be lost with the disconnect."""
        self._citizen_sockets[ticket_id] -= 1
        last = self._citizen_sockets[ticket_id] <= 0
        if last:
            del self._citizen_sockets[ticket_id]
        if self._stopping_settled:
            return
        # Never longer than the grace period (an admin may shorten it at /admin/settings, to 0 even).
        period = min(self.settings.page_away_seconds, self.room.live("grace_seconds"))
        if last and period > 0 and not self._closing:  # it may be back in a moment (settle_away)
            # (``away``: a refused connect hands back the close it had taken over, due as it was.)
            self._away[ticket_id] = away or (asyncio.get_running_loop().time() + period, self.room.clock())
            return
        await self._page_gone(ticket_id, away[1] if away else None)

    async def _page_gone(self, ticket_id: str, closed_at: float | None = None) -> None:
        """One page of the ticket fewer on this node, in the cluster's count; with none left anywhere its grace
        period starts (from ``closed_at``, when the page closed, if given)."""
        try:
            if await self.cluster.disconnected("ticket", ticket_id) <= 0:
                await self._no_page_left(ticket_id, closed_at)
        except STORE_ERRORS as e:
            store_unavailable(e)  # logged once per outage, no traceback per page
            self._unsettled[ticket_id] = closed_at
        except Exception:  # noqa: BLE001 - e.g. Redis refusing a write (READONLY, OOM): settled again later
            log.exception("settling a closed page failed")
            self._unsettled[ticket_id] = closed_at

    async def settle_away(self) -> None:
        """Pages that closed and did not come back within ``page_away_seconds``: their tickets are settled as
        their close would have been at once (the grace period from the close), a batch at a time."""
        while not self._closing:
            await asyncio.sleep(max(0.05, min(1.0, self.settings.page_away_seconds / 4)))
            if self._closing:  # the stop settles them (``shutdown``)
                break
            try:
                await self._settle_away_due(asyncio.get_running_loop().time())
            except Exception:  # noqa: BLE001 - never expected (``_page_gone`` keeps what fails); the loop goes on
                if stopping():
                    raise asyncio.CancelledError from None
                log.exception("settling pages away failed")
            try:
                await self._note_closes()
            except Exception as e:  # noqa: BLE001 - the store is down: noted at a later round
                if stopping():
                    raise asyncio.CancelledError from None
                if not is_store_unavailable(e):
                    log.exception("noting closed pages failed")

    def _closes(self) -> dict[str, float]:
        """When the last page closed of each ticket this node still counts a page of (away, or its settling
        unanswered)."""
        closes = {t: closed_at for t, closed_at in self._unsettled.items() if closed_at is not None}
        closes.update((t, closed_at) for t, (_, closed_at) in self._away.items())
        return closes

    async def _note_closes(self) -> None:
        """Tell the cluster what changed in ``_closes`` since the last round: one write a round, whatever the
        number of pages (a write per close would cost what the away period saves)."""
        if not self.cluster.notes_closes:
            return
        closes = self._closes()
        new = {t: at for t, at in closes.items() if self._noted.get(t) != at}
        gone = [t for t in self._noted if t not in closes]
        if not new and not gone:
            return
        epoch = self._noted_epoch
        await self.cluster.note_closed("ticket", new, gone)
        if epoch != self._noted_epoch:  # restored meanwhile (the notes were dropped): all noted again next round
            return
        for t in gone:
            self._noted.pop(t, None)
        self._noted.update(new)

    async def _settle_away_due(self, now: float) -> None:
        due = []
        for ticket_id, (settle_at, closed_at) in self._away.items():  # in the order they closed
            if settle_at > now:
                break
            due.append((ticket_id, closed_at))
        for start in range(0, len(due), AWAY_BATCH):
            batch = due[start:start + AWAY_BATCH]
            for ticket_id, _ in batch:  # taken out a batch at a time: what is left stays if this one fails
                del self._away[ticket_id]
            await asyncio.gather(*(self._page_gone(t, closed_at) for t, closed_at in batch))

    async def settle_unanswered(self) -> None:
        """Tickets whose page closed while the store did not answer: once it answers, each whose last page is
        gone (on every node) starts its grace period, as its disconnect would have."""
        while not self._closing:
            await asyncio.sleep(UNSETTLED_RETRY_SECONDS)
            for ticket_id, closed_at in list(self._unsettled.items()):
                if self._citizen_sockets.get(ticket_id):  # a page came back here: nothing to settle
                    self._unsettled.pop(ticket_id, None)
                    continue
                try:
                    if await self.cluster.connections("ticket", ticket_id) <= 0:
                        await self._no_page_left(ticket_id, closed_at)
                except Exception as e:  # noqa: BLE001 - still unanswered: the next round tries again
                    if stopping():
                        raise asyncio.CancelledError from None
                    if not is_store_unavailable(e):
                        log.exception("settling a disconnect failed")
                    break
                self._unsettled.pop(ticket_id, None)

    async def _no_page_left(self, ticket_id: str, closed_at: float | None = None) -> None:
        try:
            await self.room.citizen_disconnected(ticket_id, closed_at)
            if await self.cluster.connections("ticket", ticket_id) > 0:  # a page came meanwhile, on another node
                await self.room.citizen_connected(ticket_id)
        except QueueError:
            pass

    async def _dashboard_closed(self, username: str) -> None:
        """A dashboard closed on this node; the clerk goes offline when no node holds one."""
        clerk = self._clerks.get(username)
        self._clerk_sockets[username] -= 1
        if self._clerk_sockets[username] <= 0:
            del self._clerk_sockets[username]
            self._clerks.pop(username, None)
        if self._stopping_settled:
            return
        if await self.cluster.disconnected("clerk", username) <= 0 and clerk is not None:
            await self.room.set_presence(clerk, Presence.OFFLINE)

    async def _connections_dropped(self, kind: str, ident: str, closed_at: float | None = None) -> None:
        """A dead (or stopping) node held the last page of a ticket, or the last dashboard of a clerk (this
        runs on the one node that claimed the dead node: server/cluster.py). A page that had closed there
        (``closed_at``, noted by that node; or known here: this node's own stop) starts the grace period
        from its close; one still open, from now."""
        if kind == "ticket":
            if closed_at is None:  # looked up directly: a stop drops thousands, one by one
                away = self._away.get(ident)
                closed_at = away[1] if away is not None else self._unsettled.get(ident)
            await self._no_page_left(ident, closed_at)
        elif kind == "clerk":
            account = await self.room.store.get_staff(ident)
            if account is not None and await self.cluster.connections("clerk", ident) <= 0:
                await self.room.set_presence(self.auth.clerk_from_account(account), Presence.OFFLINE)

    async def _connections_restored(self, kind: str, ident: str) -> None:
        """This node had been taken for dead and is back: its pages' tickets are connected again (its
        clerks' presence comes back with ``renew_presence``)."""
        self._noted.clear()  # the survivor that dropped this node's counts dropped its notes too: noted again
        self._noted_epoch += 1
        if kind == "ticket" and self._citizen_sockets.get(ident):
            with contextlib.suppress(QueueError):
                await self.room.citizen_connected(ident)

    @staticmethod
    async def _unknown_event(event: Any, sid: str, *args: Any) -> dict[str, Any]:
        """Every event is answered: one with no handler too (a client that mistyped a name does not wait for its
        own timeout). The name is not echoed: it is the client's text."""
        return error_body("unknown_event", "no such event")

    @staticmethod
    async def _invalid_payload(sid: str, *args: Any) -> dict[str, Any]:
        return error_body("invalid_input", "the message is nested too deeply to read")

    # -- authorisation of every event --
    def _guard(self, role: str, handler: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        return guard(self.sio, (role,), handler)

    async def _clerk(self, data: dict[str, Any]) -> Clerk:
        session = await self.auth.session(data["_session"]["session"])
        return session.clerk

    # -- citizen events --
    async def _subscribe(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        ticket = await self.room.store.get_ticket(data["_session"]["ticket"])
        if ticket is None:
            raise QueueError("ticket not found or expired")
        for room in self.sio.rooms(sid):
            if room.startswith("d:") and room != f"d:{ticket.department}":
                await self.sio.leave_room(sid, room)
        await self.sio.enter_room(sid, f"d:{ticket.department}")
        await self.sio.emit("queue", await self.room.queue_update(ticket.department), to=sid)
        return {"ok": True, "ticket": await self.room.citizen_view(ticket)}

    async def _citizen_ticket_command(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        ticket_id = data["_session"]["ticket"]
        command = {"answer": self.room.answer_ticket, "leave": self.room.leave_ticket,
                   "rejoin": self.room.rejoin_ticket}[name]
        ticket = await command(ticket_id)
        return {"ok": True, "ticket": await self.room.citizen_view(ticket)}

    async def _answer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._citizen_ticket_command(data, "answer")

    async def _leave(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._citizen_ticket_command(data, "leave")

    async def _rejoin(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._citizen_ticket_command(data, "rejoin")

    # -- staff events --
    async def _refresh(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        clerk = await self._clerk(data)
        await self.sio.emit("dashboard", await self.room.dashboard(clerk), to=sid)
        return {"ok": True}

    async def _call_next(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        # The session is checked alongside the command's first read (``WaitingRoom._ClerkGate``).
        ticket = await self.room.call_next(self._clerk(data), data.get("department"))  # type: ignore[arg-type]
        return {"ok": True, "ticket": staff_view(ticket)}

    def _ticket_action(self, name: str) -> Handler:
        async def action(sid: str, data: dict[str, Any]) -> dict[str, Any]:
            ticket = await getattr(self.room, name)(self._clerk(data), data.get("ticket"))
            return {"ok": True, "ticket": staff_view(ticket)}

        return action

    async def _transfer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        ticket = await self.room.transfer(self._clerk(data), data.get("ticket"), data.get("department"),
                                          data.get("note", ""), data.get("confirm_closed", False))
        return {"ok": True, "ticket": staff_view(ticket)}

    async def _presence(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        clerk = await self._clerk(data)
        status = await self.room.choose_presence(clerk, data.get("status"))
        await self.auth.remember_presence(data["_session"]["session"], data["status"])
        return {"ok": True, "status": status.value}

    # -- events from the service --
    async def _on_events(self, events: list[TicketEvent]) -> None:
        if self._closing and not self._others_hear:  # one node stopping: nobody is left to tell
            return
        for e in events:
            if e.kind in CONNECTIVITY:  # the dashboards hear of it with the department's next slot
                self._connectivity.setdefault(e.ticket.department, {})[e.ticket.id] = e.ticket.disconnected_at
                continue
            for d in e.departments:  # the full ticket below says it
                self._connectivity.get(d, {}).pop(e.ticket.id, None)
            view = await self.room.citizen_view(e.ticket)  # says ended_by/closed_message for a lead's closing
            await self.sio.emit("ticket", view, room=f"t:{e.ticket.id}")
            await self.sio.emit(
                "ticket",
                {"kind": e.kind, "ticket": staff_view(e.ticket), "previous_department": e.previous_department},
                to=[f"s:{d}" for d in sorted(e.departments)],
            )
            if e.kind in QUEUE_CHANGES:
                self._dirty.update(e.departments)
        if self.media is not None and not self._closing:
            await self.media.on_events(events)  # the queue decides who is in which consultation

    async def _queue_update(self, department: str, seq: int | None = None) -> tuple[dict[str, Any], Any]:
        """The department's latest update and its encoded ``queue`` event, for a (re)connecting page: the
        one held when nothing changed since (a reconnect storm of thousands of pages then costs one
        computation and one encoding per department, not one per page) and it is younger than
        ``HELD_SECONDS``, else a fresh one. While the department changes (check-ins, calls),
        pages connecting within ``FRESH_SECONDS`` of a fresh one share it. A waiting page (``seq``) is only
        given an update that lists its own seq, whatever ``_dirty`` says: with several nodes another node
        changes the department without this one's ``_dirty`` knowing (a citizen checks in over HTTP on
        node A and their page connects to node B), and an update from before the check-in would tell the
        page it is not waiting. The update reads the whole queue, and the next broadcast follows within one
        interval anyway."""
        now = asyncio.get_running_loop().time()
        cached = self._updates.get(department)
        fresh_for = max(self.settings.position_interval, HELD_SECONDS)
        if department in self._dirty:
            fresh_for = min(fresh_for, FRESH_SECONDS)
        if cached and now - cached[0] < fresh_for and (seq is None or seq in cached[3]):
            return cached[1], cached[2]
        computing = self._computing.get(department)
        if computing is not None:  # another page's computation is under way: share it (a storm's thousands)
            await asyncio.shield(computing)
            held = self._updates.get(department)
            if held is not None and held is not cached and (seq is None or seq in held[3]):
                return held[1], held[2]
        done = asyncio.get_running_loop().create_future()
        self._computing[department] = done
        try:
            return await self._fresh_update(department, cached, seq)
        finally:
            if self._computing.get(department) is done:
                del self._computing[department]
            done.set_result(None)

    async def _fresh_update(self, department: str, cached: Any, seq: int | None) -> tuple[dict[str, Any], Any]:
        update = await self.room.queue_update(department)
        held = self._updates.get(department)
        if held is not cached and held is not None and held[1].get("t", 0) >= update["t"] \
                and (seq is None or seq in held[3]):
            return held[1], held[2]  # a newer one came meanwhile (a broadcast, another node's): that one
        if cached and _same_but_time(cached[1], update):
            # Nothing changed since the update the department's pages hold: this page gets that one too (same
            # ``t``), not a copy with a later time that no other page of the department will ever get.
            return self._remember_update(department, cached[1], cached[2])
        return self._remember_update(department, update)

    def _remember_update(self, department: str, update: dict[str, Any], encoded: Any = None,
                         age: float = 0.0) -> tuple[dict[str, Any], Any]:
        """Keep ``update`` (made ``age`` seconds ago) as the department's latest, with its encoded event."""
        if encoded is None:
            encoded = encode_event(self.sio, "queue", update)
        seqs = frozenset(itertools.accumulate(update.get("w", ())))  # "w" is delta-encoded
        self._updates[department] = (asyncio.get_running_loop().time() - age, update, encoded, seqs)
        return update, encoded

    def _heard_update(self, department: str, update: dict[str, Any], encoded: Any) -> None:
        """A ``queue`` update that a node (this one too) broadcast through Redis: kept as the department's
        latest when it is newer (``t``) than the one held, aged by when it was made. A page connecting here
        then gets what the pages already here were just sent, not an update from before another node's
        change, and a broadcast of another node saves this one a computation."""
        t = update.get("t")
        cached = self._updates.get(department)
        if not isinstance(t, int | float):
            return
        if cached is not None and cached[1].get("t", 0) >= t:
            # Older by its time than the one held, yet saying something else: the one held may be the stale
            # one (read before the other node's change, stamped after it; or the clocks differ). Neither is
            # handed out: the next page connecting gets a fresh one.
            if not _same_but_time(cached[1], update):
                del self._updates[department]
            return
        self._remember_update(department, update, encoded, age=max(0.0, self.room.clock() - t))
        self._told[department] = (asyncio.get_running_loop().time(), update)  # every page was told it

    async def _on_presence(self, clerk: Clerk, presence: Presence) -> None:
        if self._closing and not self._others_hear:
            return
        await self.sio.emit(
            "presence",
            {"username": clerk.username, "display_name": clerk.display_name, "status": presence.value,
             "departments": sorted(clerk.departments)},
            to=[f"s:{d}" for d in sorted(clerk.departments)],
        )
        self._dirty.update(clerk.departments)

    # -- background loops --
    async def broadcast_positions(self) -> None:
        """Send one compact update per changed department, at most every ``position_interval``.

        Departments take turns: each owns one slot of the interval (the k-th of n departments at
        k/n of it) and sends at its slot if it changed, so a change waits at most one interval and the
        pages of all departments are not written to, and do not wake up, in one burst. With thousands of
        waiting pages that burst delayed a called citizen's message behind every other department's
        update (bench/queue_load.py)."""
        # Also ends on the stop flag: a cancellation can be lost inside redis-py's own timeout (Python 3.11's
        # asyncio.timeout may uncancel the task when both fire together), which hung the stop in CI.
        while not self._closing:
            configured = list(self.room.departments)  # the live directory: departments come and go at /admin
            slot = self.settings.position_interval / max(1, len(configured))
            # The slots follow the wall clock (not this node's loop): a department's slot is the same moment on
            # every node, and one node tells it (``_claim_slot``). A stalled loop skips to the next slot.
            now = time.time()
            k = math.floor(now / slot) + 1
            await asyncio.sleep(max(0.0, k * slot - now))
            dep = configured[k % len(configured)] if configured else None
            if dep is not None and self._opening_changed(dep):
                self._dirty.add(dep)
            mine = [dep] if dep in self._dirty else []
            mine += [d for d in self._dirty if d not in configured]  # not configured (any more): any slot
            for d in mine:
                try:
                    if d == dep and not await self._claim_slot(d, k, slot):
                        continue  # another node tells this slot; a change it read too early goes at our next
                    self._dirty.discard(d)
                    await self._send_department(d)
                except UnknownDepartment:  # removed meanwhile (at /admin): nobody left to tell, nothing to retry
                    if d not in self.room.departments:
                        self._updates.pop(d, None)
                        self._told.pop(d, None)
                        self._opening.pop(d, None)
                        continue
                    self._dirty.add(d)  # (added again since, under the same id: its next slot)
                except Exception as e:  # noqa: BLE001 - a failed broadcast must not end the loop
                    self._dirty.add(d)  # still to be told (and no held update is shared meanwhile)
                    if stopping() or self._closing:
                        raise asyncio.CancelledError from None
                    if is_store_unavailable(e):
                        log.warning("position broadcast skipped: the store is unavailable")
                    else:
                        log.exception("position broadcast failed")
            pages = [dep] if dep in self._connectivity else []
            pages += [d for d in self._connectivity if d not in configured]
            for d in pages:
                try:
                    await self._send_connectivity(d)
                except Exception:  # noqa: BLE001
                    if stopping():
                        raise asyncio.CancelledError from None
                    log.exception("connectivity broadcast failed")

    async def _claim_slot(self, department: str, k: int, slot: float) -> bool:
        """Whether this node tells the department at its ``k``-th slot: with several nodes, the first of those
        that changed it since their last slot (round 10: each told it, every page got an update per node and
        interval). The others keep it changed: the winner reads the queue after its claim, which is after their
        change unless that came within the claim's round trip, and then their next slot tells it (an update
        saying what every page was told is left out: ``_send_department``). One node: always."""
        if not self._others_hear:
            return True
        return await self.cluster.claim(f"bcast:{department}:{k}", 2 * slot * max(1, len(self.room.departments)))

    async def _send_department(self, d: str) -> None:
        """The department's queue update to its waiting pages, its load to its dashboards (every node's).

        The queue update is left out when every page was told the same within the last two intervals: with
        several nodes, check-ins land on one and calls on another, both have the department to tell, and
        each page got two updates per interval, the later one saying nothing new (two nodes spent half as
        much CPU again as one: docs/performance.md, round 10)."""
        update, load = await self.room.queue_update_and_load(d)
        told = self._told.get(d)
        now = asyncio.get_running_loop().time()
        if told is None or now - told[0] > 2 * self.settings.position_interval or not _same_but_time(told[1], update):
            self._remember_update(d, update)
            await self.sio.emit("queue", update, room=f"d:{d}")
            self._told[d] = (now, update)
        await self.sio.emit("load", load.to_public(), room=f"s:{d}")

    async def _send_connectivity(self, d: str) -> None:
        """The tickets of the department whose pages came or went since the last time, to its dashboards."""
        await self.sio.emit("connectivity", {"department": d, "tickets": self._connectivity.pop(d)}, room=f"s:{d}")

    async def _on_departments(self, changed: set[str], local: bool) -> None:
        """Departments were edited, closed or reopened (server/store/departments.py). Cached updates are
        dropped; a change made on this node goes out at once to the department's waiting pages and dashboards
        (through the Redis manager, on every node), not at the next coalescing slot."""
        for d in sorted(changed):
            self._updates.pop(d, None)
            self._told.pop(d, None)  # told again, whatever the update says
            if d not in self.room.departments or self._closing:
                self._opening.pop(d, None)
                continue
            self._opening[d] = self.room.opening(self.room.departments[d])  # the loop need not push it again
            if not local:
                continue
            try:
                await self._send_department(d)
            except Exception as e:  # noqa: BLE001 - the change stands; the loop's next slot tries again
                self._dirty.add(d)
                if not is_store_unavailable(e):
                    log.exception("pushing a department change failed")

    def _opening_changed(self, department: str) -> bool:
        """Whether the department opened or closed, or its next opening or closure message changed, since
        this loop last looked: the end of opening hours reaches every waiting page without anyone acting."""
        try:
            state = self.room.opening(self.room.department(department))
        except QueueError:
            return False
        previous = self._opening.get(department)
        self._opening[department] = state
        return previous is not None and previous != state

    async def renew_presence(self) -> None:
        """Keep connected clerks' presence alive; a crashed node's clerks lapse to offline."""
        while not self._closing:
            await asyncio.sleep(PRESENCE_TTL / 3)
            for username in list(self._clerk_sockets):
                clerk = self._clerks.get(username)
                if clerk is None:
                    continue
                try:
                    current = (await self.room.store.presences(next(iter(clerk.departments), ""))).get(username)
                    await self.room.store.set_presence(
                        username, sorted(clerk.departments), current or Presence.AVAILABLE, PRESENCE_TTL
                    )
                except Exception as e:  # noqa: BLE001 - one failure must not end the renewals for good
                    if stopping():
                        raise asyncio.CancelledError from None
                    if not is_store_unavailable(e):
                        log.exception("presence renewal failed")
                    break  # the store is down: try everyone again at the next round

    async def shutdown(self, retry_after: float = RETRY_AFTER) -> None:
        """Stop this process's sockets now (SIGTERM): media participants get ``media_end`` with reason
        ``server_stopping``, every page and dashboard on this node gets ``server_stopping`` with a
        ``retry_after`` hint and is disconnected at once, instead of noticing after its ping timeout.
        Only this node's sockets are told: with Redis, other nodes' pages stay."""
        self._closing = True  # events while stopping: told only to other nodes' sockets (``_on_events``)
        # With several nodes the cluster's stop, which follows, drops this node's counts and starts the grace
        # periods of tickets left with no page anywhere, side by side: page by page here, a node with 10,000
        # pages on Redis overran the stop's deadline. (One node: the bookkeeping is in memory and quick.)
        self._stopping_settled = self.cluster.settles_on_stop
        if self.media is not None:
            tickets = self.media.tickets()
            for ticket_id in sorted(tickets):
                try:
                    await self.media.end(ticket_id, "server_stopping")
                except Exception:  # noqa: BLE001 - the other consultations and the sockets still go
                    log.exception("ending media at shutdown failed")
        await broadcast(self.sio.manager, "server_stopping", {"retry_after": retry_after}, "/", None)
        local = [sid for sid, _ in self.sio.manager.get_participants("/", None)] if "/" in self.sio.manager.rooms \
            else []
        # Each disconnect sends socket.io's DISCONNECT and runs the page's bookkeeping (its ticket's grace
        # period starts, a clerk goes offline); concurrently, so thousands of pages do not queue up.
        results = await asyncio.gather(*(self.sio.disconnect(sid) for sid in local), return_exceptions=True)
        failed = sum(1 for r in results if isinstance(r, BaseException))
        log.info("shutdown: %d sockets told and disconnected (%d failed)", len(local), failed)
        # socket.io's DISCONNECT leaves the engine.io session (its websocket or long poll) open until the
        # client closes it, and aiohttp's stop waits for each open request's handler (then cancels it and
        # waits again): one page that did not hang up held the stop for two of those shares. Close them all
        # here; a websocket's handler then ends with its close handshake.
        sessions = list(self.sio.eio.sockets.values())
        await asyncio.gather(*(engineio_ws.close_now(s) for s in sessions), return_exceptions=True)
        # Pages that closed shortly before and have not come back: settled now, from when they closed (on a
        # cluster that settles at its stop, that stop does it with this node's other counts).
        if not self._stopping_settled:
            await self._settle_away_due(math.inf)
            self._away.clear()
        else:  # the latest closes noted too: should this node's stop fail, the survivor that reaps it has them
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._note_closes(), 1.0)
        # (Otherwise they stay in ``_away`` for the cluster's stop: ``_connections_dropped`` finds their close.)
        await self.sio.shutdown()  # several nodes: the Redis manager stays open for ``finish_stop``

    async def finish_stop(self) -> None:
        """After the cluster's stop (several nodes): tell the other nodes' dashboards and pages what this
        node's stop settled (grace periods started, clerks offline: the events arrived while ``_closing``)
        and what changed since, each department's once, then close the Redis manager. A survivor reaping a
        killed node tells them through its own loop; a stopping node has no loop left."""
        if not self._others_hear:
            return
        try:
            for d in sorted(self._dirty):
                self._dirty.discard(d)
                await self._guarded_send(self._send_department, d)
            for d in sorted(self._connectivity):
                await self._guarded_send(self._send_connectivity, d)
        finally:
            manager = self.sio.manager
            assert isinstance(manager, ClosingRedisManager)
            await manager.close()

    @staticmethod
    async def _guarded_send(send: Callable[[str], Awaitable[None]], department: str) -> None:
        try:
            await send(department)
        except Exception as e:  # noqa: BLE001 - the other departments still go; the others' loops follow up
            if not is_store_unavailable(e):
                log.exception("telling the other nodes at the stop failed")
