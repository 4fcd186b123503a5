"""Media signaling relayed to the node that holds the room (LiveKit's Redis router, in small).

Every node listens on one Redis pub/sub channel of its own, ``<prefix>media:relay:<node>``. A node whose socket
sends a media event for a ticket whose rooms live on another node (``server/media/registry.py``) publishes a
request there and waits for the reply on its own channel; the owner runs the event as if the socket were its
own and answers with the acknowledgement. What the owner sends to the socket meanwhile (layouts, ``media_end``,
joining and leaving socket.io rooms) reaches it through python-socketio's Redis manager like any other emit.

Faults answer clearly: a request nobody receives (PUBLISH counts no subscriber: the node died or stopped)
raises :class:`NodeGone` at once, so that the caller can take the room over; a request unanswered within
``timeout`` seconds (the node hangs) becomes ``media_error`` for the page.

Messages are JSON: ``{"k": "req", "id", "from", "op", "p"}`` (``id`` null: no reply wanted) and
``{"k": "rep", "id", "r"}``. Only nodes write to these channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import STORE_ERRORS, error_payload, is_store_unavailable, store_unavailable
from ..queue.errors import QueueError

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..media.registry import RoomRegistry
    from .media import MediaSignaling

log = logging.getLogger("sprechstunde.relay")

RELAY_TIMEOUT = 6.0
"""Seconds a relayed event waits for the owner's answer (an offer there gathers ICE candidates first)."""

RESUBSCRIBE_GRACE = 0.5
"""Seconds a node waits before taking over the room of a node that still heartbeats but did not receive the
request (its relay listener may be subscribing again): a second silence means it is gone."""
RESUBSCRIBE_DELAY = 0.1
"""Seconds between two attempts of a relay listener to subscribe again after Redis went away ..."""
RESUBSCRIBE_MAX_DELAY = 0.25
"""... doubled per failure up to this: below ``RESUBSCRIBE_GRACE``, the patience of a node whose message found
no listener before it takes the room over (a longer pause split consultations over two nodes after an
outage of Redis). The outage is logged once per 10 s whatever the number of attempts."""

HAND_OFF_RETRY_AFTER = 0.5
"""``retry_after`` for a page on another node whose media node stops: it reconnects after 0.5-1 s."""

Handle = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``handle(op, payload) -> result`` on the owning node."""


class MediaUnavailable(QueueError):
    """The server holding this video connection did not answer in time; please try again in a moment."""

    code = "media_error"
    status = 503


class NodeGone(Exception):
    """Nobody listens on the node's relay channel: it died or stopped."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


class Relay:
    def __init__(self, url: str, prefix: str, node_id: str, handle: Handle, *,
                 timeout: float = RELAY_TIMEOUT) -> None:

        from ..store.redis import redis_client

        self.node_id = node_id
        self.prefix = prefix
        self.timeout = timeout
        self._handle = handle
        self._url = url
        self._redis: Any = redis_client(url)  # publishes: fail fast
        self._listener: Any = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._running: set[asyncio.Task[None]] = set()

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}media:relay:{node_id}"

    # -- lifecycle --
    async def start(self) -> None:
        """Subscribe (done when this returns: requests to this node are received from now on) and listen."""
        try:
            await self._subscribe()
        except Exception as e:  # noqa: BLE001 - Redis down at the start: the listener subscribes later
            log.warning("media relay: subscribing failed (%s)", type(e).__name__)
            await self._unsubscribe()
        self._task = asyncio.create_task(self._listen(), name="media-relay")

    async def _subscribe(self) -> None:
        import redis.asyncio as aioredis

        # Listening blocks between messages: no socket timeout on this connection (redis-py's pub/sub reads).
        self._listener = aioredis.Redis.from_url(self._url, decode_responses=True, socket_connect_timeout=1.0)
        self._pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel(self.node_id))

    async def _unsubscribe(self) -> None:
        pubsub, listener, self._pubsub, self._listener = self._pubsub, self._listener, None, None
        for client in (pubsub, listener):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _listen(self) -> None:
        delay = RESUBSCRIBE_DELAY
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                async for message in self._pubsub.listen():
                    delay = RESUBSCRIBE_DELAY  # listening again
                    if message.get("type") == "message":
                        self._received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis went away: subscribe again
                if is_store_unavailable(e):
                    store_unavailable(e)  # an outage: logged once per 10 s with the rest, not per attempt
                else:
                    log.warning("media relay: listening failed (%s); subscribing again", type(e).__name__)
                await self._unsubscribe()
                await asyncio.sleep(delay)
                delay = min(RESUBSCRIBE_MAX_DELAY, delay * 2)  # while Redis is away: not ten attempts a second

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(MediaUnavailable("this server is stopping"))
        await self._unsubscribe()
        with contextlib.suppress(Exception):
            await self._redis.aclose(close_connection_pool=True)

    # -- asking another node --
    async def call(self, node_id: str, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run ``op`` on ``node_id`` and return its result. Raises NodeGone (nobody received it) or
        MediaUnavailable (no answer within ``timeout``); Redis errors pass through (``store_unavailable``)."""
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._publish(node_id, {"k": "req", "id": request_id, "from": self.node_id, "op": op,
                                          "p": payload})
            try:
                async with asyncio.timeout(self.timeout):
                    return await future
            except TimeoutError:
                log.warning("media relay: node %s did not answer %s in time", node_id, op)
                raise MediaUnavailable("the video server did not answer; please try again in a moment") from None
        finally:
            self._waiting.pop(request_id, None)

    async def tell(self, node_id: str, op: str, payload: dict[str, Any]) -> None:
        """Run ``op`` on ``node_id`` without waiting for it (NodeGone if nobody received it)."""
        await self._publish(node_id, {"k": "req", "id": None, "from": self.node_id, "op": op, "p": payload})

    async def _publish(self, node_id: str, message: dict[str, Any]) -> None:
        if not await self._redis.publish(self.channel(node_id), json.dumps(message, separators=(",", ":"))):
            raise NodeGone(node_id)

    # -- asked by another node --
    def _received(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            kind = message["k"]
        except (ValueError, KeyError, TypeError):
            log.warning("media relay: unreadable message ignored")
            return
        if kind == "rep":
            future = self._waiting.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message.get("r") or {})
        elif kind == "req":
            task = asyncio.create_task(self._serve(message))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        try:
            result = await self._handle(str(message["op"]), message.get("p") or {})
        except Exception as e:  # noqa: BLE001 - every refusal goes back as an acknowledgement
            result = error_payload(e)
        if message.get("id") is None or not message.get("from"):
            return
        try:
            await self._publish(message["from"], {"k": "rep", "id": message["id"], "r": result})
        except NodeGone:
            log.info("media relay: the asking node is gone")
        except Exception as e:  # noqa: BLE001 - the asker times out and tells its page
            log.warning("media relay: answering failed (%s)", type(e).__name__)


class MediaRouter:
    """Runs each media event of a socket where the ticket's rooms live: here, or relayed to their node.

    ``media_offer`` goes to the ticket's owner, claimed for this node if nobody holds it (or the holder is
    gone: nobody listens on its channel); events about a socket's connection (``media_leave``,
    ``media_stats``, ``media_check_done``, ``chat``, the recording consent events) follow the offer that
    connected it. Queue events (a call, a consultation's end) and a socket's disconnect are passed on to
    the owner. With one node (the memory store) there is no router at all.
    """

    LOCAL = frozenset({"media_config", "invite"})
    "Events that touch no media room (invitations are shared through the cluster)."
    BY_TICKET = frozenset({"media_offer"})

    def __init__(self, media: MediaSignaling, registry: RoomRegistry, url: str, prefix: str, *,
                 cluster: Cluster | None = None, timeout: float = RELAY_TIMEOUT) -> None:
        self.media = media
        self.registry = registry
        self.cluster = cluster
        """Whether a node whose channel nobody listens on still heartbeats (its listener reconnecting)."""
        self.node_id = registry.node_id
        self.relay = Relay(url, prefix, registry.node_id, self.serve, timeout=timeout)
        self._remote: dict[str, str] = {}
        """Sockets of this node whose media lives on another node: sid -> ticket."""
        self._claimed: set[str] = set()
        """Tickets this node claimed (released when their media ends here)."""

    async def start(self) -> None:
        await self.relay.start()

    async def close(self) -> None:
        await self.relay.close()
        try:
            await self.registry.drop_node(self.node_id)  # a clean stop: the rooms may be re-created elsewhere
        except Exception as e:  # noqa: BLE001 - Redis down: the others drop them when this node is reaped
            log.warning("releasing this node's media rooms failed: %s", type(e).__name__)
        await self.registry.close()
        self._remote.clear()
        self._claimed.clear()

    async def node_dead(self, node_id: str) -> None:
        """The cluster's dead-node listener (on one surviving node): the dead node's rooms are dropped, so
        that the pages offering again re-create them here or on another survivor."""
        dropped = await self.registry.drop_node(node_id)
        if dropped:
            log.warning("node %s is dead: its %d media rooms were dropped", node_id, len(dropped))

    # -- where --
    async def _owner(self, ticket_id: str, claim: bool) -> str | None:
        """The node holding the ticket's media; None: this one (or nobody, for ``claim=False``)."""
        owner = await (self.registry.claim(ticket_id) if claim else self.registry.owner(ticket_id))
        if owner == self.node_id:
            self._claimed.add(ticket_id)
        return None if owner is None or owner == self.node_id else owner

    # -- events from this node's sockets --
    async def route(self, name: str, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        handler = self.media.handlers[name]
        if name in self.LOCAL:
            return await handler(sid, data)
        if name in self.BY_TICKET:
            return await self._by_ticket(name, sid, data)
        ticket_id = self._remote.get(sid)
        if ticket_id is None or self.media.is_member(sid):
            return await handler(sid, data)
        node = await self._owner(ticket_id, claim=False)
        try:
            if node is None:
                raise NodeGone("")
            result = await self.relay.call(node, "event", {"name": name, "sid": sid, "data": data})
        except NodeGone:  # the room is gone with its node: this page has no media connection any more
            self._remote.pop(sid, None)
            return await handler(sid, data)
        if name == "media_leave":
            self._remote.pop(sid, None)
        return result

    async def _by_ticket(self, name: str, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        session = data["_session"]
        ticket_id = session.get("ticket") if session.get("role") == "citizen" else data.get("ticket")
        handler = self.media.handlers[name]
        if not isinstance(ticket_id, str) or not ticket_id or len(ticket_id) > 64:
            return await handler(sid, data)  # refused there, with its usual error
        previous = self._remote.get(sid)
        if previous is not None and previous != ticket_id:  # this socket's media moves to another ticket
            await self.disconnected(sid)
        node = await self._owner(ticket_id, claim=True)
        patient = True
        for _ in range(4):
            if node is None:
                break
            if self.media.is_member(sid):  # its connection here goes: one media participant per socket
                await self.media.disconnected(sid)
            try:
                result = await self.relay.call(node, "event", {"name": name, "sid": sid, "data": data})
            except NodeGone:  # the owner died or stopped: the room is re-created by whoever claims it now
                if patient and self.cluster is not None and await self.cluster.is_live(node):
                    patient = False  # it still heartbeats: its listener may be subscribing again after a
                    await asyncio.sleep(RESUBSCRIBE_GRACE)  # Redis hiccup; a killed node stays silent
                    continue
                log.warning("media of ticket %s: node %s is gone; taking the room over", ticket_id, node)
                owner = await self.registry.claim(ticket_id, replacing=node)
                if owner == self.node_id:
                    self._claimed.add(ticket_id)
                node = None if owner == self.node_id else owner
                continue
            if result.get("ok"):
                self._remote[sid] = ticket_id
                if not self.media.sio.manager.is_connected(sid, "/"):  # it went away while the owner answered
                    await self.disconnected(sid)
            return result
        else:
            raise MediaUnavailable("the video server did not answer; please try again in a moment")
        self._remote.pop(sid, None)
        try:
            return await handler(sid, data)
        except Exception:  # refused (not near the head, not this clerk's ticket, ...): claim nothing for it
            if not self.media.holds(ticket_id):
                with contextlib.suppress(*STORE_ERRORS):
                    await self.released(ticket_id)
            raise

    async def disconnected(self, sid: str) -> None:
        """A socket of this node whose media lives elsewhere went away (or moves to another ticket)."""
        ticket_id = self._remote.pop(sid, None)
        if ticket_id is None:
            return
        try:
            node = await self._owner(ticket_id, claim=False)
            if node is not None:
                await self.relay.tell(node, "disconnected", {"sid": sid})
        except NodeGone:
            pass
        except STORE_ERRORS as e:  # the owner's connection fails on its own (ICE consent) when the page is gone
            log.warning("media relay: a disconnect could not be passed on (%s)", type(e).__name__)

    async def follow(self, ticket_id: str, op: str, reason: str = "") -> bool:
        """A queue event of the ticket happened on this node: True if its media lives on another node (told
        there), False if it is to be followed here."""
        if self.media.holds(ticket_id):
            return False
        try:
            node = await self._owner(ticket_id, claim=False)
        except STORE_ERRORS:  # Redis does not answer: follow here (what this node holds)
            return False
        if node is None:
            return False
        try:
            await self.relay.tell(node, op, {"ticket": ticket_id, "reason": reason})
        except NodeGone:
            log.info("media of ticket %s: node %s is gone", ticket_id, node)
        return True

    def elsewhere(self, sid: str) -> bool:
        """Whether the socket is connected to another node (this one holds its media only)."""
        return not self.media.sio.manager.is_connected(sid, "/")

    async def hand_off(self, sid: str) -> None:
        """This node stops (SIGTERM) while holding the media of a socket on another node. Instead of
        ``media_end`` (after which a page would consider its video ended), the socket gets what a socket of a
        stopping node gets: ``server_stopping`` (with a short ``retry_after``) and a disconnect, made by its
        own node through the Redis manager. The page reconnects and offers again, as after any stop, and
        the node it reaches takes the room over (this one released its claim)."""
        await self.media.sio.emit("server_stopping", {"retry_after": HAND_OFF_RETRY_AFTER}, to=sid)
        await self.media.sio.disconnect(sid)

    async def released(self, ticket_id: str) -> None:
        """The ticket's media ended here: another node may claim it next time."""
        if ticket_id in self._claimed:
            self._claimed.discard(ticket_id)
            await self.registry.release(ticket_id)

    # -- asked by another node --
    async def serve(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        if op == "event":
            name = str(payload["name"])
            if name in self.LOCAL or name not in self.media.handlers:
                raise ValueError(f"event {name!r} is not relayed")
            return await self.media.handlers[name](str(payload["sid"]), payload["data"])
        if op == "called":
            await self.media.called(str(payload["ticket"]))
        elif op == "end":
            await self.media.end(str(payload["ticket"]), str(payload["reason"]))
        elif op == "disconnected":
            await self.media.disconnected(str(payload["sid"]))
        else:
            raise ValueError(f"unknown relay operation {op!r}")
        return {"ok": True}
